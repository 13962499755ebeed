//! Response shapes Patroni uses: JSON, plain text, a bare status, and the stock HTML error page.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use serde::Serialize;

fn with_body(code: StatusCode, content_type: &'static str, body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub(crate) fn json<T: Serialize>(code: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => with_body(code, "application/json", bytes),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize REST reply");
            error_page(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
        }
    }
}

pub(crate) fn text(code: StatusCode, content_type: &'static str, body: String) -> Response {
    with_body(code, content_type, body)
}

/// Status code and nothing else, for load balancers and probes.
pub(crate) fn status_only(code: StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = code;
    response
}

/// The HTML error page Patroni's HTTP server sends for bare errors (501, 502, ...).
pub(crate) fn error_page(code: StatusCode, message: &str) -> Response {
    let explain = match code.as_u16() {
        501 => "Server does not support this operation",
        502 => "Invalid responses from another server/proxy",
        503 => "The server cannot process the request due to a high load",
        _ => code.canonical_reason().unwrap_or("Error"),
    };
    let body = format!(
        "<!DOCTYPE HTML>\n<html lang=\"en\">\n    <head>\n        <meta charset=\"utf-8\">\n        \
         <title>Error response</title>\n    </head>\n    <body>\n        <h1>Error response</h1>\n        \
         <p>Error code: {code}</p>\n        <p>Message: {message}.</p>\n        \
         <p>Error code explanation: {code} - {explain}.</p>\n    </body>\n</html>\n",
        code = code.as_u16(),
        message = html_escape(message),
    );
    with_body(code, "text/html;charset=utf-8", body)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
