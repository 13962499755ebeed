//! Request routing: Kubernetes API paths to store operations, discovery, health and the
//! `/_test/` controls; request counting and fault injection happen here, before the store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use super::admin::{FaultRequest, RequestInfo};
use super::discovery;
use super::patch::PatchType;
use super::rbac::{self, Access, Policy};
use super::resources::{self, ResourceDef};
use super::selectors::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::store::{Filter, Preconditions};
use super::table;
use super::watch::{self, WatchParams};
use super::App;

const MAX_BODY: usize = 16 * 1024 * 1024;
const ENDPOINTS_WARNING: &str =
    "299 - \"v1 Endpoints is deprecated in v1.33+; use discovery.k8s.io/v1 EndpointSlice\"";

/// Decoded query string (repeated keys: the first wins, like Go's `Query().Get`).
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Query {
        let pairs = raw
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        Query(pairs)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean parameter, parsed like Go's `strconv.ParseBool` (Patroni sends `True`);
    /// absent is false, anything unparsable a 400.
    fn flag(&self, key: &str) -> Result<bool, ApiError> {
        match self.get(key) {
            None => Ok(false),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
            Some("" | "0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
            Some(other) => Err(ApiError::bad_request(format!(
                "invalid value for {key}: strconv.ParseBool: parsing {other:?}: invalid syntax"
            ))),
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a Kubernetes API path addresses.
#[derive(Debug)]
struct Target {
    res: &'static ResourceDef,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
    /// Legacy `/watch/` path.
    watch_path: bool,
}

enum Route {
    Json(Value),
    Resource(Target),
    NotFound,
}

fn route(path: &str, server_address: &str) -> Route {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["version"] => Route::Json(discovery::version()),
        ["api"] => Route::Json(discovery::api_versions(server_address)),
        ["api", "v1"] => discovery::resource_list("", "v1").map_or(Route::NotFound, Route::Json),
        ["apis"] => Route::Json(discovery::api_group_list()),
        ["apis", group] => discovery::api_group(group).map_or(Route::NotFound, Route::Json),
        ["apis", group, version] => {
            discovery::resource_list(group, version).map_or(Route::NotFound, Route::Json)
        }
        ["openapi", "v3"] => Route::Json(discovery::openapi_v3_index()),
        ["openapi", "v3", "api", version] => {
            discovery::openapi_v3_group("", version).map_or(Route::NotFound, Route::Json)
        }
        ["openapi", "v3", "apis", group, version] => {
            discovery::openapi_v3_group(group, version).map_or(Route::NotFound, Route::Json)
        }
        ["api", "v1", rest @ ..] => resource_route("", "v1", rest),
        ["apis", group, version, rest @ ..] => resource_route(group, version, rest),
        _ => Route::NotFound,
    }
}

fn resource_route(group: &str, version: &str, rest: &[&str]) -> Route {
    let (watch_path, rest) = match rest {
        ["watch", tail @ ..] => (true, tail),
        _ => (false, rest),
    };
    let find = |plural: &str| resources::find(group, version, plural);
    let owned = |s: &str| Some(s.to_string());
    let target = match rest {
        [plural] => find(plural).map(|res| Target {
            res,
            namespace: None,
            name: None,
            subresource: None,
            watch_path,
        }),
        ["namespaces", ns, plural] if find(plural).is_some_and(|r| r.namespaced) => find(plural)
            .map(|res| Target {
                res,
                namespace: owned(ns),
                name: None,
                subresource: None,
                watch_path,
            }),
        ["namespaces", ns, plural, name] if find(plural).is_some_and(|r| r.namespaced) => {
            find(plural).map(|res| Target {
                res,
                namespace: owned(ns),
                name: owned(name),
                subresource: None,
                watch_path,
            })
        }
        ["namespaces", ns, plural, name, sub] if find(plural).is_some_and(|r| r.namespaced) => {
            find(plural).map(|res| Target {
                res,
                namespace: owned(ns),
                name: owned(name),
                subresource: owned(sub),
                watch_path,
            })
        }
        [plural, name] => find(plural).filter(|r| !r.namespaced).map(|res| Target {
            res,
            namespace: None,
            name: owned(name),
            subresource: None,
            watch_path,
        }),
        [plural, name, sub] => find(plural).filter(|r| !r.namespaced).map(|res| Target {
            res,
            namespace: None,
            name: owned(name),
            subresource: owned(sub),
            watch_path,
        }),
        _ => None,
    };
    match target {
        Some(t) if t.name.as_deref() == Some("") => Route::NotFound,
        Some(t) => match t.subresource.as_deref() {
            None => Route::Resource(t),
            Some("status") if t.res.has_status => Route::Resource(t),
            Some(_) => Route::NotFound,
        },
        None => Route::NotFound,
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error_response(error: &ApiError) -> Response {
    let status = StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json_response(status, &error.status());
    if let Some(seconds) = error.retry_after {
        if let Ok(v) = HeaderValue::from_str(&seconds.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    response
}

fn plain(status: StatusCode, text: &str) -> Response {
    let mut response = Response::new(Body::from(text.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The bearer token of the request, else "anonymous".
fn client_of(headers: &HeaderMap) -> String {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "anonymous".to_string())
}

pub async fn handle(State(app): State<Arc<App>>, request: Request) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let uri = request.uri().clone();
    let client = client_of(request.headers());
    let path = uri.path().to_string();
    let response = if path.starts_with("/_test/") {
        admin_route(&app, request).await
    } else if matches!(path.as_str(), "/healthz" | "/readyz" | "/livez") {
        plain(StatusCode::OK, "ok")
    } else {
        api_request(&app, request, &client).await
    };
    if app.opts.log_requests {
        println!(
            "{} {} {} {} {}ms",
            client,
            method,
            uri,
            response.status().as_u16(),
            started.elapsed().as_millis()
        );
    }
    response
}

async fn admin_route(app: &App, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let body = match to_bytes(request.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return plain(StatusCode::BAD_REQUEST, &format!("reading the body: {e}")),
    };
    match (method, path.as_str()) {
        (Method::GET, "/_test/requests") => json_response(StatusCode::OK, &app.admin.counts()),
        (Method::DELETE, "/_test/requests") => {
            app.admin.reset_counts();
            json_response(StatusCode::OK, &json!({}))
        }
        (Method::GET, "/_test/faults") => json_response(StatusCode::OK, &app.admin.describe()),
        (Method::POST, "/_test/faults") => match serde_json::from_slice::<FaultRequest>(&body) {
            Ok(request) => {
                app.admin.apply(request);
                json_response(StatusCode::OK, &app.admin.describe())
            }
            Err(e) => plain(
                StatusCode::BAD_REQUEST,
                &format!("fault request is not valid: {e}"),
            ),
        },
        (Method::DELETE, "/_test/faults") => {
            app.admin.clear();
            json_response(StatusCode::OK, &app.admin.describe())
        }
        (Method::GET, "/_test/denied") => json_response(StatusCode::OK, &app.admin.denied()),
        (Method::DELETE, "/_test/denied") => {
            app.admin.reset_denied();
            json_response(StatusCode::OK, &json!([]))
        }
        (Method::GET, "/_test/rbac") => json_response(
            StatusCode::OK,
            &app.rbac().map_or(Value::Null, |p| p.describe()),
        ),
        (Method::POST, "/_test/rbac") => match serde_json::from_slice::<RbacRequest>(&body) {
            Ok(request) => match Policy::from_yaml(
                &request.yaml,
                request.source.as_deref().unwrap_or("POST /_test/rbac"),
                &request.roles,
                &request.admin_tokens,
            ) {
                Ok(policy) => {
                    let described = policy.describe();
                    app.set_rbac(Some(policy));
                    json_response(StatusCode::OK, &described)
                }
                Err(e) => plain(StatusCode::BAD_REQUEST, &e),
            },
            Err(e) => plain(
                StatusCode::BAD_REQUEST,
                &format!("RBAC request is not valid: {e}"),
            ),
        },
        (Method::DELETE, "/_test/rbac") => {
            app.set_rbac(None);
            json_response(StatusCode::OK, &Value::Null)
        }
        (Method::POST, "/_test/compact") => {
            let rv = app.store.compact();
            json_response(StatusCode::OK, &json!({"resourceVersion": rv.to_string()}))
        }
        _ => plain(StatusCode::NOT_FOUND, "unknown test control"),
    }
}

/// Body of `POST /_test/rbac`: the YAML text holding the Roles, which of them to bind (empty:
/// all) and extra tokens exempt from the rules.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RbacRequest {
    yaml: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    admin_tokens: Vec<String>,
    /// Shown in error messages and `GET /_test/rbac` (e.g. the file name).
    #[serde(default)]
    source: Option<String>,
}

/// The name the authorizer sees: the path's, or for list/watch one selected exactly with
/// `fieldSelector=metadata.name=X` (the real server does the same).
fn authorized_name(target: &Target, query: &Query, verb: &str) -> String {
    if let Some(name) = &target.name {
        return name.clone();
    }
    if matches!(verb, "list" | "watch") {
        if let Some(selector) = query.get("fieldSelector") {
            let selector = selector.trim();
            if !selector.contains(',') {
                for prefix in ["metadata.name==", "metadata.name="] {
                    if let Some(name) = selector.strip_prefix(prefix) {
                        return name.trim().to_string();
                    }
                }
            }
        }
    }
    String::new()
}

/// The 403 answer if the RBAC rules in force refuse the request (recorded for
/// `GET /_test/denied`).
fn authorize(
    app: &App,
    target: &Target,
    query: &Query,
    verb: &str,
    client: &str,
) -> Option<ApiError> {
    let policy = app.rbac()?;
    let name = authorized_name(target, query, verb);
    // `namespaces/NAME` is in the namespace NAME, as on the real server.
    let namespace = match (&target.namespace, target.res.is("namespaces")) {
        (Some(ns), _) => Some(ns.as_str()),
        (None, true) if target.name.is_some() => target.name.as_deref(),
        (None, _) => None,
    };
    let access = Access {
        client,
        verb,
        group: target.res.group,
        resource: target.res.plural,
        subresource: target.subresource.as_deref(),
        namespace,
        name: &name,
    };
    if policy.allows(&access) {
        return None;
    }
    let error = ApiError::forbidden(
        Some(target.res),
        target.subresource.as_deref(),
        verb,
        namespace.unwrap_or(""),
        &name,
        &rbac::user_of(client),
    );
    app.admin.record_denied(json!({
        "client": client,
        "verb": verb,
        "resource": match &target.subresource {
            Some(sub) => format!("{}/{sub}", target.res.plural),
            None => target.res.plural.to_string(),
        },
        "namespace": namespace,
        "name": name,
        "message": error.message,
    }));
    Some(error)
}

async fn api_request(app: &Arc<App>, request: Request, client: &str) -> Response {
    let route = route(request.uri().path(), &app.server_address);
    let target = match route {
        Route::Json(value) => {
            app.admin.stall().await;
            return json_response(StatusCode::OK, &value);
        }
        Route::NotFound => return error_response(&ApiError::unknown_path()),
        Route::Resource(t) => t,
    };
    let query = Query::parse(request.uri().query());
    let method = request.method().clone();
    let is_watch = match query.flag("watch") {
        Ok(flag) => target.watch_path || flag,
        Err(e) => return error_response(&e),
    };
    let verb = match (&method, target.name.is_some()) {
        (&Method::GET, _) if is_watch => "watch",
        (&Method::GET, true) => "get",
        (&Method::GET, false) => "list",
        (&Method::POST, false) => "create",
        (&Method::PUT, true) => "update",
        (&Method::PATCH, true) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => "",
    };
    let counted_resource = match &target.subresource {
        Some(sub) => format!("{}/{sub}", target.res.plural),
        None => target.res.plural.to_string(),
    };
    let mut response = if verb.is_empty() {
        error_response(&ApiError::method_not_allowed(
            method.as_str(),
            &counted_resource,
        ))
    } else {
        let name = target.name.clone().unwrap_or_default();
        let info = RequestInfo {
            client,
            verb,
            resource: &counted_resource,
            name: &name,
        };
        app.admin.count(&info);
        app.admin.stall().await;
        if let Some(denied) = authorize(app, &target, &query, verb, client) {
            error_response(&denied)
        } else {
            match app.admin.failure_for(&info) {
                Some((code, retry_after)) => error_response(
                    &ApiError::injected(
                        code,
                        Some(target.res),
                        verb,
                        target.namespace.as_deref().unwrap_or(""),
                        &name,
                        client,
                    )
                    .with_retry_after(retry_after),
                ),
                None => match serve_resource(app, request, &target, &query, verb).await {
                    Ok(r) => r,
                    Err(e) => error_response(&e),
                },
            }
        }
    };
    if target.res.is("endpoints") && target.res.group.is_empty() {
        response
            .headers_mut()
            .insert("warning", HeaderValue::from_static(ENDPOINTS_WARNING));
    }
    response
}

fn filter_from(query: &Query, target: &Target) -> Result<Filter, ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    let mut fields =
        FieldSelector::parse(query.get("fieldSelector").unwrap_or(""), target.res.plural)
            .map_err(ApiError::bad_request)?;
    if let Some(name) = &target.name {
        // GET .../watch/.../name: a watch of that one object.
        let by_name = FieldSelector::parse(&format!("metadata.name={name}"), target.res.plural)
            .map_err(ApiError::bad_request)?;
        fields = fields.and(by_name);
    }
    Ok(Filter {
        namespace: target.namespace.clone(),
        labels,
        fields,
    })
}

fn parse_rv(query: &Query) -> Result<Option<u64>, ApiError> {
    match query.get("resourceVersion") {
        None | Some("") | Some("0") => Ok(None),
        Some(rv) => rv.parse::<u64>().map(Some).map_err(|_| {
            ApiError::bad_request(format!(
                "invalid resource version {rv:?}: a resource version must be an unsigned integer"
            ))
        }),
    }
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| {
            accept
                .split(',')
                .next()
                .is_some_and(|first| first.contains("as=Table"))
        })
}

fn decode_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if content_type.contains("protobuf") {
        return super::protobuf::decode(body)
            .map_err(|why| ApiError::new(415, "UnsupportedMediaType", why));
    }
    if content_type.contains("cbor") {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types \
                 include: application/json, application/yaml, application/vnd.kubernetes.protobuf \
                 (got {content_type})"
            ),
        ));
    }
    if content_type.contains("yaml") {
        serde_yaml_ng::from_slice::<Value>(body)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid YAML: {e}")))
    } else {
        serde_json::from_slice::<Value>(body).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        })
    }
}

fn check_kind(res: &ResourceDef, object: &Value) -> Result<(), ApiError> {
    match object.get("kind").and_then(Value::as_str) {
        Some(kind) if !kind.is_empty() && kind != res.kind => Err(ApiError::bad_request(format!(
            "the object provided is unrecognized (must be of type {}): kind {kind:?} does not \
             match the resource {}",
            res.kind,
            res.qualified()
        ))),
        _ => Ok(()),
    }
}

fn list_json(res: &ResourceDef, items: Vec<Value>, rv: u64) -> Value {
    json!({
        "kind": res.list_kind(),
        "apiVersion": res.api_version(),
        "metadata": {"resourceVersion": rv.to_string()},
        "items": items,
    })
}

async fn serve_resource(
    app: &Arc<App>,
    request: Request,
    target: &Target,
    query: &Query,
    verb: &str,
) -> Result<Response, ApiError> {
    let res = target.res;
    let ns = target.namespace.clone().unwrap_or_default();
    let name = target.name.clone().unwrap_or_default();
    let dry_run = query.get("dryRun").is_some_and(|v| !v.is_empty());
    let headers = request.headers().clone();
    let body = to_bytes(request.into_body(), MAX_BODY)
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
    let subresource = target.subresource.as_deref();
    let ok = |v: Value| Ok(json_response(StatusCode::OK, &v));
    match verb {
        "get" => {
            let object = app.store.get(res, &ns, &name)?;
            if wants_table(&headers) {
                return ok(table::table(
                    res,
                    &[object],
                    None,
                    query.get("includeObject").unwrap_or("Metadata"),
                ));
            }
            ok(object)
        }
        "list" => {
            let filter = filter_from(query, target)?;
            let (items, rv) = app.store.list(res, &filter);
            if wants_table(&headers) {
                return ok(table::table(
                    res,
                    &items,
                    Some(rv),
                    query.get("includeObject").unwrap_or("Metadata"),
                ));
            }
            ok(list_json(res, items, rv))
        }
        "watch" => {
            let filter = filter_from(query, target)?;
            let params = WatchParams {
                resource_version: if query.flag("sendInitialEvents")? {
                    None
                } else {
                    parse_rv(query)?
                },
                allow_bookmarks: query.flag("allowWatchBookmarks")?,
                timeout: query
                    .get("timeoutSeconds")
                    .and_then(|t| t.parse::<u64>().ok())
                    .filter(|t| *t > 0)
                    .map(Duration::from_secs),
                send_initial_events: query.flag("sendInitialEvents")?,
                table: wants_table(&headers)
                    .then(|| query.get("includeObject").unwrap_or("Metadata").to_string()),
            };
            Ok(watch::serve(app.clone(), res, filter, params))
        }
        "create" => {
            let object = decode_body(&headers, &body)?;
            check_kind(res, &object)?;
            let created = app.store.create(res, &ns, object, dry_run)?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        "update" => {
            let object = decode_body(&headers, &body)?;
            check_kind(res, &object)?;
            let (object, created) =
                app.store
                    .update(res, &ns, &name, subresource, object, dry_run)?;
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(json_response(status, &object))
        }
        "patch" => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let Some(patch_type) = PatchType::from_content_type(content_type) else {
                return Err(ApiError::unsupported_patch(content_type));
            };
            let patch: Value = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?;
            ok(app
                .store
                .patch(res, &ns, &name, subresource, &patch, patch_type, dry_run)?)
        }
        "delete" => {
            let options = if body.iter().all(u8::is_ascii_whitespace) {
                Value::Null
            } else {
                decode_body(&headers, &body)?
            };
            let preconditions = Preconditions {
                uid: options["preconditions"]["uid"].as_str().map(String::from),
                resource_version: options["preconditions"]["resourceVersion"]
                    .as_str()
                    .map(String::from),
            };
            let dry_run = dry_run || options["dryRun"].as_array().is_some_and(|a| !a.is_empty());
            let deleted = app.store.delete(res, &ns, &name, &preconditions, dry_run)?;
            if res.returns_deleted_object {
                return ok(deleted);
            }
            let mut details = json!({"name": name, "kind": res.plural});
            if !res.group.is_empty() {
                details["group"] = json!(res.group);
            }
            details["uid"] = deleted["metadata"]["uid"].clone();
            ok(json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": details,
            }))
        }
        "deletecollection" => {
            let filter = filter_from(query, target)?;
            let (items, rv) = app.store.delete_collection(res, &filter, dry_run)?;
            let items = items
                .into_iter()
                .map(|mut o| {
                    if let Value::Object(m) = &mut o {
                        m.remove("kind");
                        m.remove("apiVersion");
                    }
                    o
                })
                .collect();
            ok(list_json(res, items, rv))
        }
        _ => Err(ApiError::method_not_allowed("request", res.plural)),
    }
}
