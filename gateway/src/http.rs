//! The one HTTP server: the client WebSocket at `/ws`, `/health`,
//! `/status`, `/metrics`, `POST /drain`, and the softphone web page at `/`
//! (with its `/app.js` and `/style.css`, built into the binary). With a
//! certificate it speaks HTTPS (WSS) only.

use std::net::{IpAddr, SocketAddr};
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
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
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
/// How much a WebSocket reads from its socket at a time, and its read
/// buffer's first size. tungstenite's default, 128 KiB, was allocated up
/// front for every connection: 44 % of a relayed call's heap (heaptrack,
/// issue 15). Most of the protocol's messages are under 1 KiB; a larger one
/// (a WebRTC offer) grows the buffer to fit its frame and is read in
/// several reads.
const WS_READ_BUFFER: usize = 1024;

/// After a failed accept (out of descriptors, say), the listener waits
/// this long before the next: retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves HTTP until `stop` is cancelled. Each connection is admitted by
/// the gateway's caps (total and per source address: over them it is
/// closed on accept) and must send each request head within
/// `limits.header_timeout_ms`, which also ends an idle keep-alive
/// connection. A WebSocket keeps its connection's place while it lives.
/// With `tls`, the TLS handshake must also end within that time; a client
/// that does not speak TLS is closed.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    gateway: Arc<Gateway>,
    stop: CancellationToken,
) {
    let limits = &gateway.config.limits;
    let gate = ConnectionGate::behind_proxies(
        "HTTP",
        limits.max_connections,
        limits.max_connections_per_ip,
        gateway.config.http.trusted_proxies.clone(),
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
        let tls = tls.clone();
        connections.spawn(async move {
            let service = TowerToHyperService::new(service);
            let Some(tls) = tls else {
                return serve_connection(stream, service, header_timeout, stop, peer).await;
            };
            let handshake = tokio::select! {
                handshake = tokio::time::timeout(header_timeout, tls.accept(stream)) => handshake,
                _ = stop.cancelled() => return,
            };
            match handshake {
                Ok(Ok(stream)) => {
                    serve_connection(stream, service, header_timeout, stop, peer).await
                }
                // Plain HTTP on the HTTPS port ends here, as any other
                // client that does not speak TLS (or trust our certificate).
                Ok(Err(error)) => debug!(%error, %peer, "TLS handshake failed"),
                Err(_) => debug!(%peer, "TLS handshake timed out"),
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

/// Serves one connection's requests until it ends or `stop` (then
/// gracefully: requests in flight are answered).
async fn serve_connection<S, Svc>(
    stream: S,
    service: Svc,
    header_timeout: Duration,
    stop: CancellationToken,
    peer: SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Svc: hyper::service::Service<
            axum::http::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
        > + Send
        + 'static,
    Svc::Future: Send + 'static,
    Svc::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(LingeringClose(Some(stream))), service)
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
}

/// How long a closed connection's unread input is still read and dropped.
const LINGER: Duration = Duration::from_secs(2);

/// A connection that, once dropped, shuts its sending side and reads what
/// the client still sends for up to [`LINGER`] before closing: closing a
/// socket with unread input resets it, and a reset can destroy what was
/// sent just before (the close frame with 1009 to a client still sending
/// an oversized frame), as HTTP servers' lingering close avoids.
struct LingeringClose<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(Option<S>);

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for LingeringClose<S> {
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

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> LingeringClose<S> {
    fn stream(self: std::pin::Pin<&mut Self>) -> std::pin::Pin<&mut S> {
        match &mut self.get_mut().0 {
            Some(stream) => std::pin::Pin::new(stream),
            // Taken only on drop.
            None => unreachable!("the stream is there until the connection is dropped"),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for LingeringClose<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.stream().poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for LingeringClose<S> {
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
    if !bearer_is(&headers, [Some(token)]) {
        return unauthorized("a valid admin token is needed\n");
    }
    if !gateway.is_draining() {
        tracing::info!("drain requested over HTTP");
        gateway.draining.cancel();
    }
    (StatusCode::ACCEPTED, "draining\n").into_response()
}

/// Whether the request's bearer token is one of `tokens`.
fn bearer_is<'a>(
    headers: &HeaderMap,
    tokens: impl IntoIterator<Item = Option<&'a String>>,
) -> bool {
    let offered = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    tokens
        .into_iter()
        .flatten()
        .any(|token| same_secret(offered.as_bytes(), token.as_bytes()))
}

fn unauthorized(text: &'static str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        text,
    )
        .into_response()
}

/// With `http.status_token` set, `/status` and `/metrics` need it (or the
/// admin token, which may do more) as a bearer token.
fn status_refused(gateway: &Gateway, headers: &HeaderMap) -> Option<Response> {
    let http = &gateway.config.http;
    let token = http.status_token.as_ref()?;
    (!bearer_is(headers, [Some(token), http.admin_token.as_ref()]))
        .then(|| unauthorized("a valid status token is needed\n"))
}

/// Cross-site WebSocket hijacking: a page from another site must not
/// drive the gateway with the user's network position. Browsers always
/// send Origin on a WebSocket upgrade; native clients need not.
fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/');
    if allowed
        .iter()
        .any(|allowed| allowed == "*" || allowed.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .unwrap_or_default();
    same_origin(origin, host)
}

/// The Origin's `host:port` is the Host header's, default ports filled in
/// from the Origin's scheme on both sides (a proxy passing `$host` drops
/// the port).
fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => "80",
        "https" => "443",
        _ => return false,
    };
    let with_port = |authority: &str| {
        let authority = authority.to_ascii_lowercase();
        // `[::1]` has colons but no port; `[::1]:8080` and `a:8080` do.
        let has_port = authority
            .rsplit_once(':')
            .is_some_and(|(head, _)| !head.contains(':') || head.ends_with(']'));
        match has_port {
            true => authority,
            false => format!("{authority}:{default_port}"),
        }
    };
    !host.is_empty() && with_port(authority) == with_port(host)
}

/// The client's address: the peer's, or behind a trusted proxy the last
/// address of X-Forwarded-For (the one the proxy itself added).
fn client_ip(trusted_proxies: &[IpAddr], peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    if !trusted_proxies.contains(&peer) {
        return peer;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|address| address.trim().parse().ok())
        .next_back()
        .unwrap_or(peer)
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
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(admission): Extension<Arc<Admission>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !origin_allowed(&gateway.config.http.allowed_origins, &headers) {
        let origin = headers.get(header::ORIGIN);
        tracing::info!(?origin, %peer, "WebSocket from a foreign origin refused (http.allowed_origins)");
        return (StatusCode::FORBIDDEN, "this origin may not open /ws\n").into_response();
    }
    // Refused before the upgrade, so a balancer can try another gateway
    // (nginx: proxy_next_upstream http_503).
    if gateway.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    let source_ip = client_ip(&gateway.config.http.trusted_proxies, peer.ip(), &headers);
    let limit = HARD_FRAME_LIMIT.max(gateway.config.websocket.max_message_bytes);
    upgrade
        .read_buffer_size(WS_READ_BUFFER)
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
                    move |outbox| {
                        ClientConnection::new(handler_gateway, client_id, source_ip, outbox)
                    },
                    shutdown,
                )
                .await;
            };
            tasks.track_future(connection.instrument(span))
        })
}

async fn status(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Some(refused) = status_refused(&gateway, &headers) {
        return refused;
    }
    Json(gateway.status()).into_response()
}

async fn metrics(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Some(refused) = status_refused(&gateway, &headers) {
        return refused;
    }
    gateway.status();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        gateway.metrics.encode(),
    )
        .into_response()
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
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn only_same_origin_or_listed_origins_may_open_the_websocket() {
        let none: &[String] = &[];
        let page = |origin, host| headers(&[("origin", origin), ("host", host)]);
        assert!(origin_allowed(none, &headers(&[("host", "gw:8080")])));
        assert!(origin_allowed(none, &page("http://gw:8080", "gw:8080")));
        assert!(origin_allowed(
            none,
            &page("https://GW.example", "gw.example")
        ));
        assert!(origin_allowed(
            none,
            &page("https://gw.example", "gw.example:443")
        ));
        assert!(origin_allowed(
            none,
            &page("http://[::1]:8080", "[::1]:8080")
        ));
        assert!(!origin_allowed(
            none,
            &page("http://evil.example", "gw:8080")
        ));
        assert!(!origin_allowed(none, &page("http://gw:8081", "gw:8080")));
        assert!(!origin_allowed(
            none,
            &page("https://gw.example", "gw.example:80")
        ));
        assert!(!origin_allowed(none, &page("null", "gw:8080")));
        let listed = ["https://app.example/".to_string()];
        assert!(origin_allowed(
            &listed,
            &page("https://app.example", "gw:8080")
        ));
        assert!(!origin_allowed(
            &listed,
            &page("https://other.example", "gw:8080")
        ));
        assert!(origin_allowed(&["*".to_string()], &page("null", "gw:8080")));
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let proxy: IpAddr = [127, 0, 0, 1].into();
        let forwarded = headers(&[("x-forwarded-for", "10.9.9.9, 192.0.2.7")]);
        assert_eq!(
            client_ip(&[proxy], proxy, &forwarded),
            IpAddr::from([192, 0, 2, 7])
        );
        assert_eq!(client_ip(&[], proxy, &forwarded), proxy);
        assert_eq!(client_ip(&[proxy], proxy, &HeaderMap::new()), proxy);
    }

    #[test]
    fn only_the_whole_token_matches() {
        assert!(same_secret(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same_secret(b"0123456789abcdeX", b"0123456789abcdef"));
        assert!(!same_secret(b"0123456789abcde", b"0123456789abcdef"));
        assert!(!same_secret(b"", b"0123456789abcdef"));
    }
}
