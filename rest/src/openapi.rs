//! The OpenAPI 3.0 description of the whole REST API, served at `GET /openapi.json`.
//!
//! Built in code rather than kept as a file so the health-check paths, which share their
//! parameters and answers, are listed once. The unit tests hold it to the dispatcher: every route
//! the dispatcher serves is described and every described route is served (see `tests`).

use std::sync::OnceLock;

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Map, Value};

use crate::reply;

/// Which rule decides a health check's answer, and so which query parameters it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HealthRule {
    /// Leader-type checks: the query string is ignored.
    Leader,
    /// Replica-type checks: `lag`, `replication_state` and `tag_*` filters.
    Replica,
    /// `/health`: `tag_*` filters only.
    Running,
}

/// Health-check paths (GET with the status JSON; HEAD and OPTIONS with the status line only).
const HEALTH_PATHS: &[(&str, HealthRule, &str)] = &[
    ("/", HealthRule::Leader, "Same as `/primary`."),
    (
        "/primary",
        HealthRule::Leader,
        "200 when this member holds the leader lock and the cluster is not a standby cluster.",
    ),
    ("/master", HealthRule::Leader, "Old name of `/primary`."),
    ("/read-write", HealthRule::Leader, "Same as `/primary`."),
    (
        "/leader",
        HealthRule::Leader,
        "200 when this member holds the leader lock (primary or standby leader).",
    ),
    (
        "/standby-leader",
        HealthRule::Leader,
        "200 when this member holds the leader lock of a standby cluster.",
    ),
    (
        "/standby_leader",
        HealthRule::Leader,
        "Same as `/standby-leader`.",
    ),
    (
        "/replica",
        HealthRule::Replica,
        "200 when Postgres runs as a replica, the member is not tagged `noloadbalance`, replays \
         within `lag` of the leader and matches every `tag_*` filter.",
    ),
    (
        "/read-only",
        HealthRule::Replica,
        "200 on the primary or standby leader, or by the `/replica` rule.",
    ),
    (
        "/synchronous",
        HealthRule::Replica,
        "The `/replica` rule, and this member is a synchronous standby.",
    ),
    ("/sync", HealthRule::Replica, "Same as `/synchronous`."),
    (
        "/asynchronous",
        HealthRule::Replica,
        "The `/replica` rule, and this member is neither a synchronous nor a quorum standby.",
    ),
    ("/async", HealthRule::Replica, "Same as `/asynchronous`."),
    (
        "/quorum",
        HealthRule::Replica,
        "The `/replica` rule, and this member is a quorum standby.",
    ),
    (
        "/read-only-quorum",
        HealthRule::Replica,
        "200 on the primary or standby leader, or on a quorum standby by the `/replica` rule.",
    ),
    (
        "/read-only-sync",
        HealthRule::Replica,
        "200 on the primary or standby leader, or on a synchronous standby by the `/replica` rule.",
    ),
    (
        "/read-only-synchronous",
        HealthRule::Replica,
        "Same as `/read-only-sync`.",
    ),
    (
        "/health",
        HealthRule::Running,
        "200 when Postgres is running, whatever its role.",
    ),
];

/// `GET /openapi.json`.
pub(crate) fn openapi() -> Response {
    // Built once: the document only changes with the binary.
    static TEXT: OnceLock<String> = OnceLock::new();
    let text = TEXT.get_or_init(|| document().to_string());
    reply::text(StatusCode::OK, "application/json", text.clone())
}

/// The document itself.
pub fn document() -> Value {
    let mut paths = Map::new();
    for (path, rule, description) in HEALTH_PATHS {
        paths.insert(path.to_string(), health_path(path, *rule, description));
    }
    paths.insert(
        "/liveness".into(),
        json!({"get": probe(
            "Liveness probe",
            "200 while paused, or while the HA loop's next cycle is not overdue by more than `ttl` \
             (running primary) or `2·ttl` (any other member).",
            json!([]),
        )}),
    );
    paths.insert(
        "/readiness".into(),
        json!({"get": probe(
            "Readiness probe",
            "200 when this member holds the leader lock, or when Postgres runs, streams, the DCS \
             view is valid and it is within `lag` of the leader.",
            json!([
                lag_parameter("Largest acceptable lag (default `maximum_lag_on_failover`)."),
                {"name": "mode", "in": "query", "required": false,
                 "description": "`write` measures received WAL, `apply` (default) replayed WAL.",
                 "schema": {"type": "string", "enum": ["apply", "write"]}}
            ]),
        )}),
    );
    insert_reads(&mut paths);
    insert_operations(&mut paths);

    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Regent REST API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Patroni-compatible REST API of a Regent member. Reads are open. \
                Requests that change something (POST, PUT, PATCH, DELETE) must come from an \
                address allowed by `restapi.allowlist` (else 403 `Access is denied`), carry a \
                client certificate when `restapi.verify_client` asks for one (else 403) and carry \
                the `restapi.authentication` credentials (else 401). Any GET on a path without a \
                dedicated handler is a health check answering 503; any other method or path \
                answers 501. Text answers are `text/html`, as Patroni sends them."
        },
        "paths": paths,
        "components": components(),
    })
}

fn lag_parameter(description: &str) -> Value {
    json!({
        "name": "lag", "in": "query", "required": false,
        "description": format!(
            "{description} Bytes, or a number with a unit (`16kB`, `64MB`, `1GB`; 1 kB = 1024 B); \
             an unparsable value means no limit."
        ),
        "schema": {"type": "string"},
        "example": "16MB"
    })
}

fn tag_filters_parameter() -> Value {
    json!({
        "name": "tag_filters", "in": "query", "required": false,
        "style": "form", "explode": true,
        "description": "`tag_<name>=<value>` pairs: each must equal this member's tag `<name>` \
            (non-string tags compare as lowercase text; a missing tag fails the check). Other \
            parameters are ignored.",
        "schema": {"type": "object", "additionalProperties": {"type": "string"}},
        "example": {"tag_zone": "a"}
    })
}

fn health_parameters(rule: HealthRule) -> Value {
    let replication_state = json!({
        "name": "replication_state", "in": "query", "required": false,
        "description": "Only a replica in this replication state passes.",
        "schema": {"type": "string"},
        "example": "streaming"
    });
    match rule {
        HealthRule::Leader => json!([]),
        HealthRule::Replica => json!([
            lag_parameter("Largest acceptable replay lag behind the leader."),
            replication_state,
            tag_filters_parameter()
        ]),
        HealthRule::Running => json!([tag_filters_parameter()]),
    }
}

/// GET with the status JSON, HEAD and OPTIONS with the status line only.
fn health_path(path: &str, rule: HealthRule, description: &str) -> Value {
    let parameters = health_parameters(rule);
    let id = operation_id_part(path);
    let status = json!({"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}});
    let get = json!({
        "tags": ["health"],
        "operationId": format!("health_{id}"),
        "summary": format!("Health check {path}"),
        "description": description,
        "parameters": parameters,
        "responses": {
            "200": merge(json!({"description": "The check passes."}), &status),
            "503": merge(json!({"description": "The check fails."}), &status),
        }
    });
    let bare = |method: &str| {
        json!({
            "tags": ["health"],
            "operationId": format!("health_{id}_{method}"),
            "summary": format!("Health check {path}, status line only"),
            "description": format!("{description} No body (load balancers, HAProxy)."),
            "parameters": parameters,
            "responses": {
                "200": {"description": "The check passes."},
                "503": {"description": "The check fails."}
            }
        })
    };
    json!({"get": get, "head": bare("head"), "options": bare("options")})
}

fn operation_id_part(path: &str) -> String {
    match path.trim_start_matches('/') {
        "" => "root".to_string(),
        // `-` kept: `/standby-leader` and `/standby_leader` are distinct operations.
        p => p.replace(['.', '/'], "_"),
    }
}

fn merge(mut base: Value, extra: &Value) -> Value {
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    base
}

/// `/liveness` and `/readiness`: status line only.
fn probe(summary: &str, description: &str, parameters: Value) -> Value {
    json!({
        "tags": ["probes"],
        "operationId": summary.to_lowercase().replace(' ', "_"),
        "summary": summary,
        "description": description,
        "parameters": parameters,
        "responses": {
            "200": {"description": "Live / ready."},
            "503": {"description": "Not live / not ready."}
        }
    })
}

fn json_response(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

fn text_response(description: &str) -> Value {
    json!({"description": description, "content": {"text/html": {"schema": {"type": "string"}}}})
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn response_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/responses/{name}")})
}

/// GETs with a dedicated handler.
fn insert_reads(paths: &mut Map<String, Value>) {
    let read = |id: &str, summary: &str, responses: Value| {
        json!({"get": {
            "tags": ["status"],
            "operationId": id,
            "summary": summary,
            "responses": responses
        }})
    };
    paths.insert(
        "/patroni".into(),
        read(
            "get_status",
            "This member's status (what peers read in the leader race)",
            json!({"200": json_response("Status.", schema_ref("Status"))}),
        ),
    );
    paths.insert(
        "/cluster".into(),
        read(
            "get_cluster",
            "Every member as the last DCS read shows them",
            json!({
                "200": json_response("The cluster.", schema_ref("Cluster")),
                "503": text_response("No DCS view yet.")
            }),
        ),
    );
    paths.insert(
        "/history".into(),
        read(
            "get_history",
            "Timeline history",
            json!({"200": json_response("Rows `[timeline, lsn, reason, timestamp?, new_leader?]`.",
                schema_ref("History"))}),
        ),
    );
    let mut config = read(
        "get_config",
        "The dynamic configuration",
        json!({
            "200": json_response("The `config` object of the DCS.", json!({"type": "object"})),
            "502": text_response("The DCS holds no configuration.")
        }),
    );
    let (patch, put) = config_writes();
    config["patch"] = patch;
    config["put"] = put;
    paths.insert("/config".into(), config);
    let mut failsafe = read(
        "get_failsafe",
        "Failsafe topology",
        json!({
            "200": json_response("`{member name: api_url}`.",
                json!({"type": "object", "additionalProperties": {"type": "string"}})),
            "502": text_response("Failsafe mode is off.")
        }),
    );
    failsafe["post"] = unsafe_op(
        "post_failsafe",
        "The primary, without the DCS, asks to be accepted as the leader",
        Some((schema_ref("FailsafeCall"), true)),
        json!({
            "200": text_response("`Accepted`: the sender counts as the leader for `ttl`."),
            "400": text_response("The body is not valid (the page names the field)."),
            "500": text_response("`Running as a leader`: this member is a running primary."),
            "502": text_response("Failsafe mode is off.")
        }),
    );
    paths.insert("/failsafe".into(), failsafe);
    paths.insert(
        "/metrics".into(),
        read(
            "get_metrics",
            "Prometheus metrics",
            json!({"200": {"description": "Prometheus text exposition format.",
                "content": {"text/plain": {"schema": {"type": "string"}}}}}),
        ),
    );
    paths.insert(
        "/openapi.json".into(),
        read(
            "get_openapi",
            "This document",
            json!({"200": json_response("OpenAPI 3.0 document.", json!({"type": "object"}))}),
        ),
    );
}

/// An unsafe operation: basic auth, and the refusals every one of them can answer.
fn unsafe_op(id: &str, summary: &str, body: Option<(Value, bool)>, responses: Value) -> Value {
    let mut all = json!({
        "401": response_ref("Unauthorized"),
        "403": response_ref("Forbidden"),
        "503": text_response("Refused, failed, or the HA loop did not answer in time.")
    });
    if body.is_some() {
        all["400"] = text_response("The body is not a JSON object or a field is invalid.");
        all["411"] = text_response("No `Content-Length`.");
    }
    for (code, response) in responses.as_object().into_iter().flatten() {
        all[code.as_str()] = response.clone();
    }
    let mut op = json!({
        "tags": ["operations"],
        "operationId": id,
        "summary": summary,
        "security": [{"basicAuth": []}],
        "responses": all
    });
    if let Some((schema, required)) = body {
        op["requestBody"] = json!({
            "required": required,
            "content": {"application/json": {"schema": schema}}
        });
    }
    op
}

fn config_writes() -> (Value, Value) {
    let patch = unsafe_op(
        "patch_config",
        "Merge into the dynamic configuration (`null` deletes a key)",
        Some((json!({"type": "object", "minProperties": 1}), true)),
        json!({
            "200": json_response("The merged configuration.", json!({"type": "object"})),
            "409": text_response("Another change won the compare-and-set."),
            "502": text_response("The DCS write failed."),
            "503": text_response("No configuration in the DCS, or the HA loop did not answer.")
        }),
    );
    let put = unsafe_op(
        "put_config",
        "Replace the dynamic configuration",
        Some((json!({"type": "object", "minProperties": 1}), true)),
        json!({
            "200": json_response("The new configuration.", json!({"type": "object"})),
            "502": text_response("The DCS write failed.")
        }),
    );
    (patch, put)
}

/// POST/DELETE endpoints.
fn insert_operations(paths: &mut Map<String, Value>) {
    let switch_answers = json!({
        "200": text_response("`Successfully switched over to \"<name>\"` (or failed over)."),
        "412": text_response("Not possible: unknown members, no healthy candidate, ..."),
        "422": text_response("`scheduled_at` is unparsable or in the past."),
        "503": text_response("The switchover failed, its outcome is unknown, or the DCS write failed.")
    });
    let mut switchover_answers = switch_answers.clone();
    switchover_answers["202"] = text_response("`Switchover scheduled`.");
    paths.insert(
        "/switchover".into(),
        json!({
            "post": unsafe_op(
                "switchover",
                "Switch over from the leader (to a candidate), now or at `scheduled_at`",
                Some((schema_ref("SwitchoverRequest"), true)),
                switchover_answers,
            ),
            "delete": unsafe_op(
                "cancel_switchover",
                "Cancel a scheduled switchover",
                None,
                json!({
                    "200": text_response("`scheduled switchover deleted`."),
                    "404": text_response("No switchover is scheduled."),
                    "409": text_response("The failover object changed meanwhile.")
                }),
            )
        }),
    );
    paths.insert(
        "/failover".into(),
        json!({"post": unsafe_op(
            "failover",
            "Fail over to a candidate (with `leader`, a switchover)",
            Some((schema_ref("FailoverRequest"), true)),
            switch_answers,
        )}),
    );
    paths.insert(
        "/restart".into(),
        json!({
            "post": unsafe_op(
                "restart",
                "Restart Postgres, now or at `schedule`, if the filters match",
                Some((schema_ref("RestartRequest"), false)),
                json!({
                    "200": text_response("`restarted successfully`."),
                    "202": text_response("`Restart scheduled`."),
                    "409": text_response("Another restart is already scheduled."),
                    "422": text_response("`schedule` is unparsable or in the past."),
                    "500": text_response("A restart cannot be scheduled in the paused state (Patroni's answer)."),
                    "503": text_response("The restart failed or its conditions are not met.")
                }),
            ),
            "delete": unsafe_op(
                "cancel_restart",
                "Cancel a scheduled restart",
                None,
                json!({
                    "200": text_response("`scheduled restart deleted`."),
                    "404": text_response("No restart is scheduled.")
                }),
            )
        }),
    );
    paths.insert(
        "/reload".into(),
        json!({"post": unsafe_op(
            "reload",
            "Read the configuration file again and reload Postgres",
            None,
            json!({"202": text_response("`reload scheduled`.")}),
        )}),
    );
    paths.insert(
        "/reinitialize".into(),
        json!({"post": unsafe_op(
            "reinitialize",
            "Rebuild this replica from the leader",
            Some((schema_ref("ReinitializeRequest"), false)),
            json!({
                "200": text_response("`reinitialize started`."),
                "503": text_response("This member is the leader, or the cluster has no leader.")
            }),
        )}),
    );
    let citus = |id: &str, summary: &str| {
        json!({"post": unsafe_op(
            id,
            summary,
            Some((schema_ref("CitusEvent"), true)),
            json!({"200": text_response("`OK`: the event is accepted (acted on only by the coordinator's leader).")}),
        )})
    };
    paths.insert(
        "/citus".into(),
        citus(
            "citus_event",
            "A Citus worker group's primary announces a demotion or promotion",
        ),
    );
    paths.insert(
        "/mpp".into(),
        citus("mpp_event", "Patroni 4's name of `POST /citus`"),
    );
}

fn components() -> Value {
    json!({
        "securitySchemes": {
            "basicAuth": {
                "type": "http",
                "scheme": "basic",
                "description": "`restapi.authentication` username and password."
            }
        },
        "responses": {
            "Unauthorized": {
                "description": "Missing or wrong credentials.",
                "headers": {"WWW-Authenticate": {"schema": {"type": "string"},
                    "description": "`Basic realm=\"Patroni\"`."}},
                "content": {"text/html": {"schema": {"type": "string"}}}
            },
            "Forbidden": {
                "description": "`Access is denied` (allowlist) or `client certificate required`.",
                "content": {"text/html": {"schema": {"type": "string"}}}
            }
        },
        "schemas": schemas()
    })
}

fn schemas() -> Value {
    let nullable_string = json!({"type": "string", "nullable": true});
    json!({
        "Status": {
            "type": "object",
            "required": ["state", "role", "dcs_last_seen", "patroni"],
            "properties": {
                "state": {"type": "string", "example": "running"},
                "postmaster_start_time": nullable_string,
                "role": {"type": "string", "example": "primary"},
                "server_version": {"type": "integer"},
                "xlog": {"type": "object", "properties": {
                    "location": {"type": "integer"},
                    "received_location": {"type": "integer", "nullable": true},
                    "replayed_location": {"type": "integer", "nullable": true},
                    "replayed_timestamp": nullable_string,
                    "paused": {"type": "boolean"}
                }},
                "sync_standby": {"type": "boolean"},
                "quorum_standby": {"type": "boolean"},
                "timeline": {"type": "integer", "nullable": true},
                "replication_state": {"type": "string"},
                "replication": {"type": "array", "items": {"type": "object", "properties": {
                    "usename": {"type": "string"},
                    "application_name": {"type": "string"},
                    "client_addr": nullable_string,
                    "state": {"type": "string"},
                    "sync_state": {"type": "string"},
                    "sync_priority": {"type": "integer"}
                }}},
                "pause": {"type": "boolean"},
                "cluster_unlocked": {"type": "boolean"},
                "failsafe_mode_is_active": {"type": "boolean"},
                "dcs_last_seen": {"type": "integer"},
                "tags": {"type": "object"},
                "database_system_identifier": {"type": "string"},
                "pending_restart": {"type": "boolean"},
                "pending_restart_reason": {"type": "object", "additionalProperties": {
                    "type": "object", "properties": {
                        "old_value": {"type": "string"}, "new_value": {"type": "string"}}}},
                "patroni": {"type": "object", "required": ["version", "scope", "name"], "properties": {
                    "version": {"type": "string"},
                    "scope": {"type": "string"},
                    "name": {"type": "string"}
                }},
                "scheduled_restart": {"type": "object"},
                "watchdog_failed": {"type": "boolean"}
            }
        },
        "Cluster": {
            "type": "object",
            "required": ["members", "scope"],
            "properties": {
                "members": {"type": "array", "items": schema_ref("ClusterMember")},
                "scope": {"type": "string"},
                "pause": {"type": "boolean"},
                "scheduled_switchover": {"type": "object", "properties": {
                    "at": {"type": "string"}, "from": {"type": "string"}, "to": {"type": "string"}}}
            }
        },
        "ClusterMember": {
            "type": "object",
            "required": ["name", "role", "state"],
            "properties": {
                "name": {"type": "string"},
                "role": {"type": "string",
                    "enum": ["leader", "standby_leader", "sync_standby", "quorum_standby", "replica"]},
                "state": {"type": "string"},
                "api_url": nullable_string,
                "host": {"type": "string"},
                "port": {"type": "integer"},
                "timeline": {"type": "integer"},
                "pending_restart": {"type": "boolean"},
                "pending_restart_reason": {"type": "object"},
                "scheduled_restart": {"type": "object"},
                "tags": {"type": "object"},
                "lsn": schema_ref("LsnOrUnknown"),
                "lag": schema_ref("LagOrUnknown"),
                "receive_lsn": schema_ref("LsnOrUnknown"),
                "receive_lag": schema_ref("LagOrUnknown"),
                "replay_lsn": schema_ref("LsnOrUnknown"),
                "replay_lag": schema_ref("LagOrUnknown")
            }
        },
        "LsnOrUnknown": {"type": "string", "description": "`0/3000060`, or `unknown`."},
        "LagOrUnknown": {
            "description": "Bytes behind the leader, or `unknown`.",
            "oneOf": [{"type": "integer"}, {"type": "string", "enum": ["unknown"]}]
        },
        "History": {
            "type": "array",
            "items": {
                "type": "array", "minItems": 3, "maxItems": 5,
                "items": {"oneOf": [{"type": "integer"}, {"type": "string"}]}
            }
        },
        "SwitchoverRequest": {
            "type": "object",
            "required": ["leader"],
            "properties": {
                "leader": {"type": "string", "minLength": 1, "description": "The current leader's name."},
                "candidate": {"type": "string", "nullable": true,
                    "description": "The member to promote (required while paused)."},
                "member": {"type": "string", "nullable": true, "description": "Old name of `candidate`."},
                "scheduled_at": {"type": "string", "nullable": true,
                    "description": "ISO 8601 time with a timezone.", "example": "2030-01-01T12:00:00+00:00"}
            }
        },
        "FailoverRequest": {
            "type": "object",
            "description": "`candidate` (or its old name `member`) is required.",
            "anyOf": [{"required": ["candidate"]}, {"required": ["member"]}],
            "properties": {
                "candidate": {"type": "string", "minLength": 1, "description": "The member to promote."},
                "member": {"type": "string", "minLength": 1, "description": "Old name of `candidate`."},
                "leader": {"type": "string", "nullable": true,
                    "description": "With a leader the request is a switchover."}
            }
        },
        "RestartRequest": {
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "schedule": {"type": "string", "description": "ISO 8601 time with a timezone."},
                "role": {"type": "string", "enum": ["primary", "master", "standby_leader", "replica"],
                    "description": "Restart only if this member has this role."},
                "postgres_version": {"type": "string", "pattern": "^[0-9]+\\.[0-9]+(\\.[0-9]+)?$",
                    "description": "Restart only if the running version is older."},
                "timeout": {"type": "number", "exclusiveMinimum": true, "minimum": 0,
                    "description": "Seconds to wait for the restart."},
                "restart_pending": {"type": "boolean",
                    "description": "Restart only if a restart is pending."}
            }
        },
        "ReinitializeRequest": {
            "type": "object",
            "properties": {
                "force": {"type": "boolean", "description": "Cancel a running reinitialization."}
            }
        },
        "FailsafeCall": {
            "type": "object",
            "required": ["name"],
            "description": "Unknown fields are ignored.",
            "properties": {
                "name": {"type": "string", "minLength": 1, "description": "The sender's member name."},
                "conn_url": {"type": "string", "nullable": true},
                "api_url": {"type": "string", "nullable": true},
                "slots": {"type": "object", "nullable": true,
                    "additionalProperties": {"type": "integer", "minimum": 0},
                    "description": "Permanent slot positions on the sender."}
            }
        },
        "CitusEvent": {
            "type": "object",
            "required": ["type", "group", "leader"],
            "description": "Unknown fields are ignored.",
            "properties": {
                "type": {"type": "string", "enum": ["before_demote", "before_promote", "after_promote"]},
                "group": {"type": "integer", "minimum": 0, "maximum": 2_147_483_647_i64,
                    "description": "The sender's Citus group."},
                "leader": {"type": "string", "minLength": 1, "description": "The sender's member name."},
                // Bounds and defaults as the agent's event parser applies them.
                "timeout": {"type": "number", "nullable": true, "minimum": 0, "exclusiveMinimum": true,
                    "maximum": 3600, "default": 30,
                    "description": "Seconds a `before_demote` transaction may stay open (sender's `ttl`)."},
                "cooldown": {"type": "number", "nullable": true, "minimum": 0, "maximum": 3600,
                    "default": 10,
                    "description": "Seconds `citus_update_node` waits before cancelling blockers (sender's `retry_timeout`)."}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{header, Method, Request};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::security::{guard, Security, SecuritySettings};
    use crate::{router, ApiState, PostgresStatus, Snapshot, Wal};

    const METHODS: &[&str] = &["get", "head", "options", "post", "put", "patch", "delete"];

    /// (METHOD, path) of every operation in the document.
    fn documented() -> BTreeSet<(String, String)> {
        let doc = document();
        let paths = doc["paths"].as_object().expect("paths is an object");
        let mut out = BTreeSet::new();
        for (path, item) in paths {
            for (method, _) in item.as_object().expect("path item is an object") {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
        out
    }

    /// The `(&Method::X, pattern)` arms of `dispatch` in lib.rs, as (METHOD, segment) with `_`
    /// for the catch-all arms.
    fn dispatcher_arms() -> BTreeSet<(String, String)> {
        let source = include_str!("lib.rs");
        let start = source
            .find("async fn dispatch(")
            .expect("lib.rs has fn dispatch");
        let body = &source[start..];
        let body = &body[..body.find("\n}\n").expect("dispatch ends")];
        let mut arms = BTreeSet::new();
        for piece in body.split("(&Method::").skip(1) {
            let arm = &piece[..piece.find(')').expect("arm closes")];
            let (method, pattern) = arm.split_once(", ").expect("arm is (method, pattern)");
            for segment in pattern.split('|') {
                arms.insert((
                    method.to_string(),
                    segment.trim().trim_matches('"').to_string(),
                ));
            }
        }
        arms
    }

    fn health_paths() -> BTreeSet<String> {
        HEALTH_PATHS.iter().map(|(p, _, _)| p.to_string()).collect()
    }

    type Routes = BTreeSet<(String, String)>;

    /// Differences between the dispatcher's arms and the documented operations.
    fn drift(arms: &Routes, documented: &Routes) -> Vec<String> {
        let health = health_paths();
        let mut problems = Vec::new();
        for (method, segment) in arms {
            if segment == "_" {
                // Catch-alls: GET without a handler, HEAD and OPTIONS are health checks.
                if !matches!(method.as_str(), "GET" | "HEAD" | "OPTIONS") {
                    problems.push(format!("unexpected catch-all arm for {method}"));
                }
                continue;
            }
            if !documented.contains(&(method.clone(), format!("/{segment}"))) {
                problems.push(format!("{method} /{segment} is served but not documented"));
            }
        }
        for (method, path) in documented {
            let segment = path.trim_start_matches('/').split('/').next().unwrap_or("");
            let dedicated = arms.contains(&(method.clone(), segment.to_string()));
            let health_check =
                health.contains(path) && arms.contains(&(method.clone(), "_".to_string()));
            // Probes have dedicated GET arms and are not health-checked by HEAD/OPTIONS.
            if !dedicated && !health_check {
                problems.push(format!("{method} {path} is documented but not served"));
            }
            if dedicated && health.contains(path) {
                problems.push(format!(
                    "{method} {path} is a health check in the document but has its own handler"
                ));
            }
        }
        problems
    }

    #[test]
    fn every_dispatched_route_is_documented_and_every_documented_route_dispatched() {
        let arms = dispatcher_arms();
        assert!(
            arms.contains(&("GET".into(), "patroni".into()))
                && arms.contains(&("HEAD".into(), "_".into())),
            "the arm parser found nothing sensible: {arms:?}"
        );
        let problems = drift(&arms, &documented());
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    /// The drift check notices a served route missing from the document, a documented route
    /// nobody serves, and a health path given its own handler.
    #[test]
    fn drift_is_noticed() {
        let arms = dispatcher_arms();
        let mut documented = documented();
        documented.remove(&("GET".to_string(), "/metrics".to_string()));
        documented.insert(("POST".to_string(), "/nowhere".to_string()));
        let mut with_health_arm = arms.clone();
        with_health_arm.insert(("GET".to_string(), "replica".to_string()));
        assert_eq!(
            drift(&with_health_arm, &documented),
            vec![
                "GET /metrics is served but not documented",
                "GET /replica is a health check in the document but has its own handler",
                "POST /nowhere is documented but not served",
            ],
        );
    }

    /// The words `health_check` recognises in a path, and the documented health paths, agree:
    /// each word appears in some documented path, each documented path (but `/`) holds a word.
    #[test]
    fn health_paths_match_the_words_the_health_check_knows() {
        let source = include_str!("health.rs");
        let start = source
            .find("pub(crate) fn health_check(")
            .expect("health.rs has fn health_check");
        let body = &source[start..];
        let body = &body[..body.find("\n}\n").expect("health_check ends")];
        let words: BTreeSet<String> = body
            .split('"')
            .skip(1)
            .step_by(2)
            .map(|w| w.trim_start_matches('/').to_string())
            .filter(|w| !w.is_empty())
            .collect();
        assert!(words.contains("replica"), "literal parser: {words:?}");
        let paths = health_paths();
        for word in &words {
            assert!(
                paths.iter().any(|p| p.contains(word.as_str())),
                "health_check knows '{word}' but no documented health path contains it"
            );
        }
        for path in paths.iter().filter(|p| p.as_str() != "/") {
            assert!(
                words.iter().any(|w| path.contains(w.as_str())),
                "{path} is documented as a health check but health_check knows no word in it"
            );
        }
    }

    fn collect_refs(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(m) => {
                for (k, v) in m {
                    if k == "$ref" {
                        out.push(v.as_str().unwrap_or_default().to_string());
                    }
                    collect_refs(v, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn document_is_well_formed() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.0.3");
        let mut ids = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            assert!(path.starts_with('/'), "{path}");
            let item = item.as_object().expect("path item");
            assert!(!item.is_empty(), "{path} has no operation");
            for (method, op) in item {
                assert!(METHODS.contains(&method.as_str()), "{method} {path}");
                let id = op["operationId"].as_str().expect("operationId");
                assert!(ids.insert(id.to_string()), "duplicate operationId {id}");
                let responses = op["responses"].as_object().expect("responses");
                assert!(!responses.is_empty(), "{method} {path} has no responses");
                for code in responses.keys() {
                    assert!(
                        code.len() == 3 && code.parse::<u16>().is_ok(),
                        "{method} {path}: response key {code}"
                    );
                }
                // Unsafe methods need the credentials, reads are open.
                let secured = op.get("security").is_some();
                let is_unsafe = matches!(method.as_str(), "post" | "put" | "patch" | "delete");
                assert_eq!(secured, is_unsafe, "{method} {path}: security");
                if is_unsafe {
                    assert!(responses.contains_key("401"), "{method} {path}: 401");
                }
            }
        }
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(!refs.is_empty());
        for r in refs {
            let pointer = r.strip_prefix('#').expect("local $ref");
            assert!(doc.pointer(pointer).is_some(), "unresolved $ref {r}");
        }
        // The Citus event body as the brief of POST /citus says.
        let event = &doc["components"]["schemas"]["CitusEvent"]["properties"];
        assert_eq!(
            event["type"]["enum"],
            json!(["before_demote", "before_promote", "after_promote"])
        );
        assert_eq!(event["group"]["minimum"], 0);
    }

    fn running_primary() -> Snapshot {
        Snapshot {
            scope: "demo".into(),
            name: "pg-0".into(),
            version: "4.1.5".into(),
            cluster: Some(model::Cluster {
                leader: Some(model::Leader {
                    name: "pg-0".into(),
                    version: None,
                }),
                ..Default::default()
            }),
            dcs_last_seen: Some(1_717_236_310),
            has_lock: true,
            ttl: 30,
            loop_wait: 10,
            last_cycle_unix_ms: Some(chrono::Utc::now().timestamp_millis()),
            dynamic_config: Some(json!({"ttl": 30})),
            postgres: PostgresStatus {
                state: "running".into(),
                role: model::Role::Primary,
                timeline: Some(1),
                wal: Wal::Primary { location: 1 << 24 },
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// A body the operation's schema accepts, so the handler gets past validation.
    fn valid_body(path: &str) -> Option<&'static str> {
        match path {
            "/switchover" => Some(r#"{"leader": "pg-0", "candidate": "pg-1"}"#),
            "/failover" => Some(r#"{"candidate": "pg-1"}"#),
            "/config" => Some(r#"{"ttl": 31}"#),
            "/restart" => Some(r#"{"restart_pending": true}"#),
            "/reinitialize" => Some(r#"{"force": false}"#),
            "/failsafe" => Some(r#"{"name": "pg-0", "api_url": "http://127.0.0.1:8008/patroni"}"#),
            "/citus" | "/mpp" => Some(
                r#"{"type": "after_promote", "group": 1, "leader": "w1", "timeout": 30, "cooldown": 10}"#,
            ),
            _ => None,
        }
    }

    /// Every documented operation, sent to the real router (behind access control with
    /// credentials configured), answers a code the document lists for it: without credentials
    /// (unsafe methods: 401), with them (the HA loop is absent, so commands answer 503), and in
    /// both a healthy-primary and an empty snapshot.
    #[tokio::test]
    async fn every_operation_answers_a_documented_code() {
        let doc = document();
        let credentials = crate::security::basic_credentials("admin", "secret");
        let mut problems = Vec::new();
        let mut checked = 0;
        for snapshot in [running_primary(), Snapshot::default()] {
            let (_publisher, receiver) = tokio::sync::watch::channel(snapshot);
            let settings = SecuritySettings {
                authentication: Some(("admin".into(), "secret".into())),
                ..Default::default()
            };
            let security = Arc::new(Security::new(&settings, receiver.clone()).expect("security"));
            // No HA loop: its inbox is dropped, so every command answers 503 at once.
            let (commands, _) = tokio::sync::mpsc::channel(1);
            let app = guard(
                router(ApiState {
                    snapshot: receiver,
                    commands,
                    citus: None,
                    failsafe: Default::default(),
                }),
                security,
            );
            for (path, item) in doc["paths"].as_object().expect("paths") {
                for (method, op) in item.as_object().expect("path item") {
                    let documented_codes: Vec<&String> = op["responses"]
                        .as_object()
                        .expect("responses")
                        .keys()
                        .collect();
                    for with_credentials in [false, true] {
                        let mut request = Request::builder()
                            .method(method.to_uppercase().as_str())
                            .uri(path.as_str());
                        if with_credentials {
                            request = request.header(header::AUTHORIZATION, credentials.as_str());
                        }
                        let body = valid_body(path).filter(|_| op.get("requestBody").is_some());
                        if let Some(b) = body {
                            request = request
                                .header(header::CONTENT_LENGTH, b.len())
                                .header(header::CONTENT_TYPE, "application/json");
                        }
                        let request = request
                            .body(body.map(Body::from).unwrap_or_else(Body::empty))
                            .expect("valid request");
                        let response = app.clone().oneshot(request).await.expect("infallible");
                        let code = response.status().as_u16().to_string();
                        let content_type = response
                            .headers()
                            .get(header::CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .map(|v| v.split(';').next().unwrap_or_default().to_string());
                        let bytes = response
                            .into_body()
                            .collect()
                            .await
                            .expect("body")
                            .to_bytes();
                        checked += 1;
                        let label = format!(
                            "{} {path} (credentials: {with_credentials})",
                            method.to_uppercase()
                        );
                        if !documented_codes.contains(&&code) {
                            problems.push(format!(
                                "{label}: {code} not in {documented_codes:?}: {}",
                                String::from_utf8_lossy(&bytes)
                            ));
                            continue;
                        }
                        let mut response_doc = &op["responses"][code.as_str()];
                        if let Some(target) = response_doc["$ref"].as_str() {
                            response_doc = doc
                                .pointer(target.trim_start_matches('#'))
                                .expect("$ref resolves");
                        }
                        let declared: Vec<&String> = response_doc["content"]
                            .as_object()
                            .map(|c| c.keys().collect())
                            .unwrap_or_default();
                        match (&content_type, declared.is_empty()) {
                            (None, true) => {}
                            (Some(t), false) if declared.contains(&t) => {}
                            _ => problems.push(format!(
                                "{label}: {code} content type {content_type:?}, documented {declared:?}"
                            )),
                        }
                    }
                }
            }
        }
        assert!(checked > 100, "only {checked} requests checked");
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[tokio::test]
    async fn served_document_is_the_document() {
        let (_publisher, receiver) = tokio::sync::watch::channel(Snapshot::default());
        let (commands, _) = tokio::sync::mpsc::channel(1);
        let app = router(ApiState {
            snapshot: receiver,
            commands,
            citus: None,
            failsafe: Default::default(),
        });
        let request = Request::builder()
            .method(Method::GET)
            .uri("/openapi.json")
            .body(Body::empty())
            .expect("request");
        let response = app.oneshot(request).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response
                .headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let served: Value = serde_json::from_slice(&bytes).expect("valid JSON");
        assert_eq!(served, document());
        assert!(served["paths"]["/openapi.json"]["get"].is_object());
    }
}
