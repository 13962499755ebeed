//! API errors as the real server reports them: a `kind: Status` body whose code, reason and
//! message texts match what client libraries (and people reading logs) expect.

use serde_json::{json, Map, Value};

use super::resources::ResourceDef;

/// One failed field of an `Invalid` error.
#[derive(Debug, Clone)]
pub struct FieldError {
    pub field: String,
    /// `FieldValueInvalid`, `FieldValueRequired`, ...
    pub cause: &'static str,
    /// The error body without the field, e.g. `Invalid value: "x": must be ...`.
    pub body: String,
}

impl FieldError {
    pub fn invalid(field: impl Into<String>, value: &str, detail: &str) -> FieldError {
        FieldError {
            field: field.into(),
            cause: "FieldValueInvalid",
            body: format!("Invalid value: {}: {detail}", go_quote(value)),
        }
    }

    pub fn required(field: impl Into<String>, detail: &str) -> FieldError {
        FieldError {
            field: field.into(),
            cause: "FieldValueRequired",
            body: if detail.is_empty() {
                "Required value".to_string()
            } else {
                format!("Required value: {detail}")
            },
        }
    }

    pub fn unsupported(field: impl Into<String>, value: &str, supported: &[&str]) -> FieldError {
        let list: Vec<String> = supported.iter().map(|s| go_quote(s)).collect();
        FieldError {
            field: field.into(),
            cause: "FieldValueNotSupported",
            body: format!(
                "Unsupported value: {}: supported values: {}",
                go_quote(value),
                list.join(", ")
            ),
        }
    }

    pub fn forbidden(field: impl Into<String>, detail: &str) -> FieldError {
        FieldError {
            field: field.into(),
            cause: "FieldValueForbidden",
            body: format!("Forbidden: {detail}"),
        }
    }

    pub fn too_long(field: impl Into<String>, max: usize) -> FieldError {
        FieldError {
            field: field.into(),
            cause: "FieldValueTooLong",
            body: format!("Too long: may not be more than {max} bytes"),
        }
    }
}

/// Go's `%q` for plain strings (what field errors print).
pub fn go_quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

/// An error answer: HTTP status plus the `Status` object.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
    pub retry_after: Option<u64>,
}

fn details(res: &ResourceDef, name: &str) -> Value {
    let mut d = Map::new();
    if !name.is_empty() {
        d.insert("name".into(), json!(name));
    }
    if !res.group.is_empty() {
        d.insert("group".into(), json!(res.group));
    }
    d.insert("kind".into(), json!(res.plural));
    Value::Object(d)
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    pub fn not_found(res: &ResourceDef, name: &str) -> ApiError {
        ApiError {
            details: Some(details(res, name)),
            ..ApiError::new(
                404,
                "NotFound",
                format!("{} {} not found", res.qualified(), go_quote(name)),
            )
        }
    }

    /// What the namespace lifecycle check answers for objects in a missing namespace.
    pub fn namespace_not_found(namespace: &str) -> ApiError {
        ApiError {
            details: Some(json!({"name": namespace, "kind": "namespaces"})),
            ..ApiError::new(
                404,
                "NotFound",
                format!("namespaces {} not found", go_quote(namespace)),
            )
        }
    }

    pub fn already_exists(res: &ResourceDef, name: &str) -> ApiError {
        ApiError {
            details: Some(details(res, name)),
            ..ApiError::new(
                409,
                "AlreadyExists",
                format!("{} {} already exists", res.qualified(), go_quote(name)),
            )
        }
    }

    pub fn conflict(res: &ResourceDef, name: &str, why: &str) -> ApiError {
        ApiError {
            details: Some(details(res, name)),
            ..ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} {}: {why}",
                    res.qualified(),
                    go_quote(name)
                ),
            )
        }
    }

    /// The optimistic-concurrency failure of an update or patch.
    pub fn modified(res: &ResourceDef, name: &str) -> ApiError {
        ApiError::conflict(
            res,
            name,
            "the object has been modified; please apply your changes to the latest version and \
             try again",
        )
    }

    pub fn invalid(res: &ResourceDef, name: &str, errors: &[FieldError]) -> ApiError {
        let rendered: Vec<String> = errors
            .iter()
            .map(|e| {
                if e.field.is_empty() {
                    e.body.clone()
                } else {
                    format!("{}: {}", e.field, e.body)
                }
            })
            .collect();
        let aggregate = if rendered.len() == 1 {
            rendered[0].clone()
        } else {
            format!("[{}]", rendered.join(", "))
        };
        let causes: Vec<Value> = errors
            .iter()
            .map(|e| json!({"reason": e.cause, "message": e.body, "field": e.field}))
            .collect();
        let mut d = Map::new();
        d.insert("name".into(), json!(name));
        if !res.group.is_empty() {
            d.insert("group".into(), json!(res.group));
        }
        d.insert("kind".into(), json!(res.kind));
        d.insert("causes".into(), Value::Array(causes));
        ApiError {
            details: Some(Value::Object(d)),
            ..ApiError::new(
                422,
                "Invalid",
                format!("{} {} is invalid: {aggregate}", res.kind, go_quote(name)),
            )
        }
    }

    /// A patch that does not apply (e.g. a failed JSON patch `test`): the real server answers
    /// a generic 422 whose message does not say why (kubectl prints "The request is invalid:
    /// the server rejected our request due to an error in our request"); the reason is only in
    /// this server's log.
    pub fn patch_rejected(why: &str) -> ApiError {
        println!("patch rejected: {why}");
        ApiError::new(
            422,
            "Invalid",
            "the server rejected our request due to an error in our request",
        )
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn gone(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }

    pub fn method_not_allowed(method: &str, what: &str) -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported on {what}"),
        )
    }

    pub fn unknown_path() -> ApiError {
        ApiError {
            details: Some(json!({})),
            ..ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )
        }
    }

    pub fn unsupported_patch(content_type: &str) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types \
                 include: application/json-patch+json, application/merge-patch+json, \
                 application/strategic-merge-patch+json (got {content_type:?})"
            ),
        )
    }

    /// What the authorizer answers when no rule allows the request: `pods "x" is forbidden:
    /// User "system:serviceaccount:default:m" cannot patch resource "pods/status" in API group
    /// "" in the namespace "default"` (the qualified resource and the details without the
    /// subresource, the "cannot" part with it).
    pub fn forbidden(
        res: Option<&ResourceDef>,
        subresource: Option<&str>,
        verb: &str,
        namespace: &str,
        name: &str,
        user: &str,
    ) -> ApiError {
        let what = match res {
            Some(r) if name.is_empty() => r.qualified(),
            Some(r) => format!("{} {}", r.qualified(), go_quote(name)),
            None => "resource".to_string(),
        };
        let plural = res.map(|r| r.plural).unwrap_or("");
        let resource = match subresource {
            Some(sub) => format!("{plural}/{sub}"),
            None => plural.to_string(),
        };
        let group = res.map(|r| r.group).unwrap_or("");
        let scope = if namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace {}", go_quote(namespace))
        };
        ApiError {
            details: res.map(|r| details(r, name)),
            ..ApiError::new(
                403,
                "Forbidden",
                format!(
                    "{what} is forbidden: User {} cannot {verb} resource {} in API group {} \
                     {scope}",
                    go_quote(user),
                    go_quote(&resource),
                    go_quote(group),
                ),
            )
        }
    }

    /// An injected failure of an arbitrary status, worded as the real server words it.
    pub fn injected(
        code: u16,
        res: Option<&ResourceDef>,
        verb: &str,
        namespace: &str,
        name: &str,
        user: &str,
    ) -> ApiError {
        let (reason, message, details) = match code {
            401 => ("Unauthorized", "Unauthorized".to_string(), None),
            403 => {
                return ApiError::forbidden(
                    res,
                    None,
                    verb,
                    namespace,
                    name,
                    &super::rbac::user_of(user),
                )
            }
            404 => match res {
                Some(r) => {
                    return ApiError::not_found(r, name);
                }
                None => return ApiError::unknown_path(),
            },
            409 => match res {
                Some(r) => return ApiError::modified(r, name),
                None => ("Conflict", "conflict".to_string(), None),
            },
            429 => (
                "TooManyRequests",
                "Too many requests, please try again later.".to_string(),
                None,
            ),
            500 => (
                "InternalError",
                "Internal error occurred: injected fault".to_string(),
                Some(json!({"causes": [{"message": "injected fault"}]})),
            ),
            503 => (
                "ServiceUnavailable",
                "The server is currently unable to handle the request".to_string(),
                None,
            ),
            504 => (
                "Timeout",
                "Timeout: request did not complete within requested timeout - context deadline \
                 exceeded"
                    .to_string(),
                None,
            ),
            _ => (
                "Unknown",
                format!("the server responded with the status code {code} but did not return more information"),
                None,
            ),
        };
        ApiError {
            details,
            ..ApiError::new(code, reason, message)
        }
    }

    pub fn with_retry_after(mut self, seconds: Option<u64>) -> ApiError {
        if let Some(s) = seconds {
            self.retry_after = Some(s);
            let mut d = match self.details.take() {
                Some(Value::Object(m)) => m,
                _ => Map::new(),
            };
            d.insert("retryAfterSeconds".into(), json!(s));
            self.details = Some(Value::Object(d));
        }
        self
    }

    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        });
        if let Some(d) = &self.details {
            status["details"] = d.clone();
        }
        status["code"] = json!(self.code);
        status
    }
}
