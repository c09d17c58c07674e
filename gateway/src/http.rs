//! The one HTTP server: the client WebSocket at `/ws`, `/health`,
//! `/status`, `/metrics`, and the softphone web page at `/` (with its
//! `/app.js` and `/style.css`, built into the binary).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::header;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use axum::response::{Html, IntoResponse, Json};
use axum::routing::{get, post};
use axum::Router;
use dialtone_ws::{run_connection, ConnectionConfig};
use tracing::{info_span, Instrument};

use crate::connection::ClientConnection;
use crate::metrics::Held;
use crate::session::new_id;
use crate::state::Gateway;

/// Beyond this a frame is not even read: the connection closes (1009).
/// Frames between the protocol limit and this get an ERROR reply instead.
const HARD_FRAME_LIMIT: usize = 1024 * 1024;

pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/", get(index_html))
        .route("/app.js", get(app_js))
        .route("/style.css", get(style_css))
        .route("/ws", get(upgrade))
        .route("/health", get(|| async { "ok\n" }))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/open/{version}", post(rtmpt))
        .route("/send/{tunnel}/{sequence}", post(rtmpt))
        .route("/idle/{tunnel}/{sequence}", post(rtmpt))
        .route("/close/{tunnel}/{sequence}", post(rtmpt))
        .with_state(gateway)
}

/// RTMPT (RTMP over HTTP), when RTMP is on.
async fn rtmpt(State(gateway): State<Arc<Gateway>>, uri: Uri, body: Bytes) -> Response {
    match &gateway.rtmpt {
        Some(rtmpt) => rtmpt.handle(&uri, &body),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn upgrade(
    State(gateway): State<Arc<Gateway>>,
    upgrade: WebSocketUpgrade,
) -> impl IntoResponse {
    let limit = HARD_FRAME_LIMIT.max(gateway.config.websocket.max_message_bytes);
    upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| {
            let client_id = new_id();
            let span = info_span!("client", client_id = %client_id);
            let config = ConnectionConfig {
                max_message_bytes: gateway.config.websocket.max_message_bytes,
                ping_interval: gateway.config.websocket.ping_interval(),
                ping_timeout: gateway.config.websocket.ping_timeout(),
            };
            let shutdown = gateway.shutdown.clone();
            let tasks = gateway.tasks.clone();
            let connection = async move {
                let _open = Held::new(&gateway.metrics.ws_connections);
                let handler_gateway = gateway.clone();
                run_connection(
                    socket,
                    config,
                    client_id.clone(),
                    move |outbox| ClientConnection::new(handler_gateway, client_id, outbox),
                    shutdown,
                )
                .await;
            };
            tasks.track_future(connection.instrument(span))
        })
}

async fn status(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    Json(gateway.status())
}

async fn metrics(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    gateway.status();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        gateway.metrics.encode(),
    )
}

async fn index_html() -> Html<&'static str> {
    Html(include_str!("web/index.html"))
}

async fn app_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("web/app.js"),
    )
}

async fn style_css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("web/style.css"),
    )
}
