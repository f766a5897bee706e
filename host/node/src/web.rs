//! The browser face of a node: the lobby, the play page and the JavaScript
//! client, compiled into the binary so that a node needs no files beside it.

use axum::Router;
use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::error::NodeError;

/// `(name, content type, bytes)` of everything under `/web/`.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "baton.css",
        "text/css; charset=utf-8",
        include_str!("../web/baton.css"),
    ),
    ("lobby.js", JS, include_str!("../web/lobby.js")),
    ("play.js", JS, include_str!("../web/play.js")),
    (
        "baton-client.js",
        JS,
        include_str!("../web/client/baton-client.js"),
    ),
    (
        "baton-client.d.ts",
        "application/typescript; charset=utf-8",
        include_str!("../web/client/baton-client.d.ts"),
    ),
];
const JS: &str = "text/javascript; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

/// `/` (the lobby), `/play` (a session, from the link's fragment) and `/web/*`.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { page(include_str!("../web/index.html")) }),
        )
        .route(
            "/play",
            get(|| async { page(include_str!("../web/play.html")) }),
        )
        .route("/web/{name}", get(asset))
}

fn page(html: &'static str) -> Response {
    served(HTML, html)
}

/// A node serves its own version of the pages; revalidating keeps a browser
/// from mixing a cached page with a newer node's client after a deploy.
fn served(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn asset(Path(name): Path<String>) -> Result<Response, NodeError> {
    ASSETS
        .iter()
        .find(|(asset, _, _)| *asset == name)
        .map(|(_, content_type, body)| served(content_type, body))
        .ok_or_else(|| NodeError::NotFound(format!("no file /web/{name}")))
}
