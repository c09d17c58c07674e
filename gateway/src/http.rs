//! The one HTTP server: the client WebSocket at `/ws`, `/health`,
//! `/status`, `/metrics`, `POST /drain`, and the softphone web page at `/`
//! (with its `/app.js` and `/style.css`, built into the binary).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::header;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::response::{Html, IntoResponse, Json};
use axum::routing::{get, post};
use axum::Extension;
use axum::Router;
use dialtone_ws::{run_connection, ConnectionConfig};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, info_span, warn, Instrument};

use crate::connection::ClientConnection;
use crate::limits::{Admission, ConnectionGate};
use crate::metrics::Held;
use crate::session::new_id;
use crate::state::Gateway;

/// Beyond this a frame is not even read: the connection closes (1009).
/// Frames between the protocol limit and this get an ERROR reply instead.
const HARD_FRAME_LIMIT: usize = 1024 * 1024;

/// After a failed accept (out of descriptors, say), the listener waits
/// this long before the next: retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves HTTP until `stop` is cancelled. Each connection is admitted by
/// the gateway's caps (total and per source address: over them it is
/// closed on accept) and must send each request head within
/// `limits.header_timeout_ms`, which also ends an idle keep-alive
/// connection. A WebSocket keeps its connection's place while it lives.
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>, stop: CancellationToken) {
    let limits = &gateway.config.limits;
    let gate = ConnectionGate::new(
        "HTTP",
        limits.max_connections,
        limits.max_connections_per_ip,
    );
    let header_timeout = limits.header_timeout();
    let router = router(gateway.clone());
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, "HTTP accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let Ok(admission) = gate.admit(peer.ip()) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let admission = Arc::new(admission);
        let service = router.clone().map_request(
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request.extensions_mut().insert(admission.clone());
                request
            },
        );
        let stop = stop.clone();
        connections.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(
                    TokioIo::new(LingeringClose(Some(stream))),
                    TowerToHyperService::new(service),
                )
                .with_upgrades();
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                debug!(%error, %peer, "HTTP connection ended");
            }
        });
    }
    // Requests in flight are short (upgraded WebSockets are no longer
    // counted here), but a client must not hold the shutdown.
    connections.close();
    if tokio::time::timeout(header_timeout, connections.wait())
        .await
        .is_err()
    {
        debug!(
            left = connections.len(),
            "HTTP connections left at shutdown"
        );
    }
}

/// How long a closed connection's unread input is still read and dropped.
const LINGER: Duration = Duration::from_secs(2);

/// A connection that, once dropped, shuts its sending side and reads what
/// the client still sends for up to [`LINGER`] before closing: closing a
/// socket with unread input resets it, and a reset can destroy what was
/// sent just before (the close frame with 1009 to a client still sending
/// an oversized frame), as HTTP servers' lingering close avoids.
struct LingeringClose(Option<tokio::net::TcpStream>);

impl Drop for LingeringClose {
    fn drop(&mut self) {
        let (Some(mut stream), Ok(runtime)) =
            (self.0.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        runtime.spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = stream.shutdown().await;
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(LINGER, async {
                while matches!(stream.read(&mut sink).await, Ok(read) if read > 0) {}
            })
            .await;
        });
    }
}

impl LingeringClose {
    fn stream(self: std::pin::Pin<&mut Self>) -> std::pin::Pin<&mut tokio::net::TcpStream> {
        match &mut self.get_mut().0 {
            Some(stream) => std::pin::Pin::new(stream),
            // Taken only on drop.
            None => unreachable!("the stream is there until the connection is dropped"),
        }
    }
}

impl tokio::io::AsyncRead for LingeringClose {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.stream().poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for LingeringClose {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.stream().poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }
}

pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/", get(index_html))
        .route("/app.js", get(app_js))
        .route("/style.css", get(style_css))
        .route("/ws", get(upgrade))
        .route("/health", get(health))
        .route("/drain", post(drain))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/open/{version}", post(rtmpt))
        .route("/send/{tunnel}/{sequence}", post(rtmpt))
        .route("/idle/{tunnel}/{sequence}", post(rtmpt))
        .route("/close/{tunnel}/{sequence}", post(rtmpt))
        .with_state(gateway)
}

/// RTMPT (RTMP over HTTP), when RTMP is on.
async fn rtmpt(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    body: Bytes,
) -> Response {
    match &gateway.rtmpt {
        Some(rtmpt) => rtmpt.handle(&uri, &body, peer.ip()),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// 200 while the gateway takes new sessions; 503 once it drains, so a
/// balancer's health check takes it out of rotation.
async fn health(State(gateway): State<Arc<Gateway>>) -> Response {
    match gateway.is_draining() {
        true => (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response(),
        false => "ok\n".into_response(),
    }
}

/// Starts a drain, for a caller holding `http.admin_token` as a bearer
/// token. Without a configured token the endpoint does not exist.
async fn drain(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let Some(token) = &gateway.config.http.admin_token else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let offered = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !same_secret(offered.as_bytes(), token.as_bytes()) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a valid admin token is needed\n",
        )
            .into_response();
    }
    if !gateway.is_draining() {
        tracing::info!("drain requested over HTTP");
        gateway.draining.cancel();
    }
    (StatusCode::ACCEPTED, "draining\n").into_response()
}

/// Compares without stopping at the first difference, so the time taken
/// does not tell a guesser how much of the token was right.
fn same_secret(offered: &[u8], secret: &[u8]) -> bool {
    offered.len() == secret.len()
        && offered
            .iter()
            .zip(secret)
            .fold(0u8, |differences, (a, b)| differences | (a ^ b))
            == 0
}

async fn upgrade(
    State(gateway): State<Arc<Gateway>>,
    Extension(admission): Extension<Arc<Admission>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    // Refused before the upgrade, so a balancer can try another gateway
    // (nginx: proxy_next_upstream http_503).
    if gateway.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
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
                let _admission = admission;
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

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn only_the_whole_token_matches() {
        assert!(same_secret(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same_secret(b"0123456789abcdeX", b"0123456789abcdef"));
        assert!(!same_secret(b"0123456789abcde", b"0123456789abcdef"));
        assert!(!same_secret(b"", b"0123456789abcdef"));
    }
}
