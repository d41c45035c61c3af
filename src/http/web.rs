//! The demo chat page (`web/`), embedded in the binary and served at `/`,
//! and the `@confab/client` SDK it runs on (`web/sdk/`, the compiled ES
//! modules `npm run build:web` copies from `clients/js`), served at
//! `/sdk/<file>.js`.

use poem::http::{header, StatusCode};
use poem::web::Path;
use poem::{handler, IntoResponse, Response};

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

/// The SDK's modules, by file name: every file of `web/sdk/` (a test checks
/// that none is missing, so a module added to the SDK fails here, not in a
/// browser).
macro_rules! sdk_files {
    ($($name:literal),* $(,)?) => {
        const SDK: &[(&str, &str)] = &[
            $(($name, include_str!(concat!("../../web/sdk/", $name))),)*
        ];
    };
}

sdk_files![
    "client.js",
    "connection.js",
    "conversation.js",
    "emitter.js",
    "errors.js",
    "http.js",
    "index.js",
    "log.js",
    "outbox.js",
    "rest.js",
    "streams.js",
    "timers.js",
    "token.js",
    "transport.js",
    "types.js",
    "util.js",
    "websocket.js",
];

/// `GET /sdk/{file}`: one of the SDK's modules; 404 for anything else.
#[handler]
pub fn sdk(Path(file): Path<String>) -> Response {
    match SDK.iter().find(|(name, _)| *name == file) {
        Some((_, body)) => asset(body, "text/javascript; charset=utf-8"),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::SDK;

    #[test]
    fn every_file_of_web_sdk_is_served() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web/sdk");
        let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".js"))
            .collect();
        let listed: BTreeSet<String> = SDK.iter().map(|(name, _)| (*name).to_owned()).collect();
        assert_eq!(
            listed, on_disk,
            "src/http/web.rs must list every .js file of web/sdk (and nothing else)"
        );
        assert!(listed.contains("index.js"), "the SDK's entry point");
    }
}
