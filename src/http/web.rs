//! The demo chat page (`web/`), embedded in the binary and served at `/`.

use poem::http::header;
use poem::{handler, Response};

/// One embedded file: its bytes and content type.
fn asset(body: &'static str, content_type: &'static str) -> Response {
    Response::builder()
        .content_type(content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
}

#[handler]
pub fn index() -> Response {
    asset(
        include_str!("../../web/index.html"),
        "text/html; charset=utf-8",
    )
}

#[handler]
pub fn script() -> Response {
    asset(
        include_str!("../../web/app.js"),
        "text/javascript; charset=utf-8",
    )
}

#[handler]
pub fn style() -> Response {
    asset(
        include_str!("../../web/style.css"),
        "text/css; charset=utf-8",
    )
}
