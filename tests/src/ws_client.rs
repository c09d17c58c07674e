//! WebSocket clients as a browser would be to the gateway: well-behaved, abrupt, or silent.
//!
//! Pings are answered by tungstenite while the client is reading (any `recv*` call); a client
//! that is not reading does not answer them. [`WsClient::into_silent`] makes that permanent.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{bail, Context as _};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Deadline for the TCP connect plus the WebSocket handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Deadline for the close handshake in [`WsClient::close`].
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Received messages remembered for error messages.
const HISTORY: usize = 10;

/// A WebSocket client for tests. Errors say what was received before the failure.
pub struct WsClient {
    ws: Stream,
    url: String,
    history: VecDeque<String>,
}

impl WsClient {
    /// Connects to `url` and starts a session for `username`; fails unless
    /// CONNECTED and SESSION_STARTED come. Returns the client and the
    /// sessionId.
    pub async fn start_session(
        url: &str,
        username: &str,
        password: &str,
    ) -> anyhow::Result<(WsClient, String)> {
        const REPLY: Duration = Duration::from_secs(10);
        let mut ws = WsClient::connect(url).await?;
        ws.recv_type("CONNECTED", REPLY).await?;
        ws.send_json(&serde_json::json!({
            "type": "START_SESSION", "username": username, "password": password,
        }))
        .await?;
        let started = ws.recv_type("SESSION_STARTED", REPLY).await?;
        let session_id = started["sessionId"]
            .as_str()
            .context("SESSION_STARTED without sessionId")?
            .to_string();
        Ok((ws, session_id))
    }

    /// Connects (TCP + WebSocket handshake) within [`CONNECT_TIMEOUT`].
    pub async fn connect(url: &str) -> anyhow::Result<WsClient> {
        WsClient::connect_with_headers(url, &[]).await
    }

    /// Like [`WsClient::connect`], with extra handshake headers (Origin, X-Forwarded-For, ...).
    pub async fn connect_with_headers(
        url: &str,
        headers: &[(&'static str, &str)],
    ) -> anyhow::Result<WsClient> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let mut request = url.into_client_request()?;
        for (name, value) in headers {
            request.headers_mut().append(*name, value.parse()?);
        }
        // Without Nagle, as browsers connect: a message written right after
        // another is not held for the gateway's delayed ACK.
        let connect = tokio_tungstenite::connect_async_with_config(request, None, true);
        let (ws, _response) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .with_context(|| format!("connecting to {url}: timed out after {CONNECT_TIMEOUT:?}"))?
            .with_context(|| format!("connecting to {url}"))?;
        Ok(WsClient {
            ws,
            url: url.to_owned(),
            history: VecDeque::new(),
        })
    }

    /// The URL connected to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Local address of the TCP connection (useful to find it in gateway logs).
    pub fn local_addr(&self) -> anyhow::Result<std::net::SocketAddr> {
        match self.ws.get_ref() {
            MaybeTlsStream::Plain(tcp) => Ok(tcp.local_addr()?),
            _ => bail!("not a plain TCP stream"),
        }
    }

    /// Sends `value` as one text frame.
    pub async fn send_json(&mut self, value: &Value) -> anyhow::Result<()> {
        self.send(Message::text(value.to_string())).await
    }

    /// Sends one text frame (need not be valid JSON: for malformed-input tests).
    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.send(Message::text(text)).await
    }

    /// Sends one binary frame.
    pub async fn send_binary(&mut self, data: Vec<u8>) -> anyhow::Result<()> {
        self.send(Message::binary(data)).await
    }

    /// Sends any message, raw frames included (`Message::Frame`: a text frame that is not
    /// UTF-8, say).
    pub async fn send_message(&mut self, msg: Message) -> anyhow::Result<()> {
        self.send(msg).await
    }

    async fn send(&mut self, msg: Message) -> anyhow::Result<()> {
        self.ws
            .send(msg)
            .await
            .with_context(|| format!("sending on {}", self.url))
    }

    /// Next data or close message (text, binary or close), skipping ping/pong. Errors on
    /// timeout, on a transport error, or if the connection ended without a close frame.
    pub async fn recv(&mut self, timeout: Duration) -> anyhow::Result<Message> {
        let deadline = Instant::now() + timeout;
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(next) => next,
                Err(_) => bail!(
                    "no message within {timeout:?} on {}; {}",
                    self.url,
                    self.received()
                ),
            };
            let msg = match next {
                Some(Ok(msg)) => msg,
                Some(Err(e)) => bail!("connection error on {}: {e}; {}", self.url, self.received()),
                None => bail!(
                    "connection ended (no close frame) on {}; {}",
                    self.url,
                    self.received()
                ),
            };
            match msg {
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                msg => {
                    if self.history.len() == HISTORY {
                        self.history.pop_front();
                    }
                    self.history.push_back(summary(&msg));
                    return Ok(msg);
                }
            }
        }
    }

    /// Next message, which must be a JSON text frame. Errors on close, binary, invalid JSON,
    /// timeout; the error shows what was received.
    pub async fn recv_json(&mut self, timeout: Duration) -> anyhow::Result<Value> {
        let msg = self.recv(timeout).await?;
        match &msg {
            Message::Text(text) => serde_json::from_str(text.as_str())
                .with_context(|| format!("text frame is not JSON: {:?}", text.as_str())),
            other => bail!(
                "expected a JSON text frame on {}, got {}; {}",
                self.url,
                summary(other),
                self.received()
            ),
        }
    }

    /// Next message, which must be JSON with `"type": type_name` (strict: any other message
    /// first is an error that shows it).
    pub async fn recv_type(&mut self, type_name: &str, timeout: Duration) -> anyhow::Result<Value> {
        let value = self.recv_json(timeout).await?;
        if value.get("type").and_then(Value::as_str) != Some(type_name) {
            bail!("expected a {type_name:?} message, got {value}");
        }
        Ok(value)
    }

    /// Sends `start_call` (a START_CALL) and returns the callId of the first CALL_STARTING,
    /// which must be the next message.
    pub async fn start_call(
        &mut self,
        start_call: &Value,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        self.send_json(start_call).await?;
        let starting = self.recv_type("CALL_STARTING", timeout).await?;
        starting["callId"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("CALL_STARTING without callId: {starting}"))
    }

    /// The next message of `type_name`, passing over those of the `skipped` types (call
    /// progress, say); a message of any other type first is an error that shows it.
    pub async fn recv_type_skipping(
        &mut self,
        type_name: &str,
        skipped: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let value = self.recv_json(left).await?;
            let kind = value
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if kind == type_name {
                return Ok(value);
            }
            if !skipped.contains(&kind) {
                bail!("expected a {type_name:?} message, got {value}");
            }
        }
    }

    /// Waits for the server to close: `Some((code, reason))` for a close frame, `None` if the
    /// connection just ended. A data message first is an error.
    pub async fn recv_close(&mut self, timeout: Duration) -> anyhow::Result<Option<(u16, String)>> {
        let deadline = Instant::now() + timeout;
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(next) => next,
                Err(_) => bail!(
                    "connection not closed within {timeout:?} on {}; {}",
                    self.url,
                    self.received()
                ),
            };
            match next {
                None | Some(Err(_)) => return Ok(None),
                Some(Ok(Message::Close(frame))) => {
                    return Ok(frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned())))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(other)) => bail!(
                    "expected the connection to close, got {}; {}",
                    summary(&other),
                    self.received()
                ),
            }
        }
    }

    /// Asserts that no data message arrives within `window` (pings are answered meanwhile).
    pub async fn expect_no_message(&mut self, window: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + window;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Ok(()),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => continue,
                Ok(Some(Ok(msg))) => bail!("expected no message, got {}", summary(&msg)),
                Ok(Some(Err(e))) => bail!("expected no message, got connection error {e}"),
                Ok(None) => bail!("expected no message, but the connection ended"),
            }
        }
    }

    /// Clean close: sends a close frame (1000) and waits for the server's close reply or the
    /// end of the connection (up to 5 s). Messages still in flight are discarded.
    pub async fn close(mut self) -> anyhow::Result<()> {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        self.ws
            .close(Some(frame))
            .await
            .with_context(|| format!("sending close on {}", self.url))?;
        let drained = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while let Some(Ok(msg)) = self.ws.next().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
        if drained.is_err() {
            bail!("no close reply within {CLOSE_TIMEOUT:?} on {}", self.url);
        }
        Ok(())
    }

    /// Drops the TCP connection without a close frame (the peer sees FIN, like a killed tab).
    pub fn drop_abruptly(self) {
        drop(self.ws);
    }

    /// Drops the TCP connection with a RST (SO_LINGER 0), like a vanished network.
    pub fn reset(self) -> anyhow::Result<()> {
        match self.ws.into_inner() {
            MaybeTlsStream::Plain(tcp) => {
                tcp.set_zero_linger().context("SO_LINGER 0")?;
                drop(tcp);
                Ok(())
            }
            _ => bail!("not a plain TCP stream"),
        }
    }

    /// Turns this client into one that never reads again, so it never answers pings (a
    /// frozen peer). The TCP connection stays open until the [`SilentWs`] is dropped.
    pub fn into_silent(self) -> SilentWs {
        SilentWs {
            ws: self.ws,
            url: self.url,
        }
    }

    fn received(&self) -> String {
        if self.history.is_empty() {
            "nothing received before".to_owned()
        } else {
            let items: Vec<&str> = self.history.iter().map(String::as_str).collect();
            format!("last received: [{}]", items.join(", "))
        }
    }
}

/// A WebSocket connection whose client has gone silent: it holds the socket open and never
/// answers pings or sends anything. See [`WsClient::into_silent`].
pub struct SilentWs {
    /// Never polled as a WebSocket again; only its TCP stream is read raw.
    ws: Stream,
    url: String,
}

impl SilentWs {
    /// Waits until the server ends the connection, reading raw bytes and discarding them
    /// (nothing is parsed or answered, so pings stay unanswered). Returns how long it took.
    pub async fn wait_closed_by_peer(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let deadline = start + timeout;
        let MaybeTlsStream::Plain(tcp) = self.ws.get_mut() else {
            bail!("not a plain TCP stream");
        };
        let mut buf = vec![0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
                Err(_) => bail!(
                    "server did not close the silent connection to {} within {timeout:?}",
                    self.url
                ),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(start.elapsed()),
                Ok(Ok(_)) => continue,
            }
        }
    }
}

fn summary(msg: &Message) -> String {
    match msg {
        Message::Text(text) => {
            let text = text.as_str();
            if text.len() > 300 {
                let cut = (0..=300)
                    .rev()
                    .find(|i| text.is_char_boundary(*i))
                    .unwrap_or(0);
                format!("text {}…", &text[..cut])
            } else {
                format!("text {text}")
            }
        }
        Message::Binary(data) => format!("binary ({} bytes)", data.len()),
        Message::Close(Some(frame)) => {
            format!(
                "close ({} {:?})",
                u16::from(frame.code),
                frame.reason.as_str()
            )
        }
        Message::Close(None) => "close (no frame)".to_owned(),
        Message::Ping(_) => "ping".to_owned(),
        Message::Pong(_) => "pong".to_owned(),
        Message::Frame(_) => "raw frame".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A tiny echo server that pings first, to exercise the client without a gateway.
    async fn echo_server() -> anyhow::Result<String> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    let _ = ws.send(Message::Ping(vec![1, 2].into())).await;
                    while let Some(Ok(msg)) = ws.next().await {
                        match msg {
                            Message::Text(t) if t.as_str() == "bye" => {
                                let _ = ws
                                    .close(Some(CloseFrame {
                                        code: CloseCode::Policy,
                                        reason: "bye".into(),
                                    }))
                                    .await;
                            }
                            Message::Text(_) | Message::Binary(_) => {
                                let _ = ws.send(msg).await;
                            }
                            _ => {}
                        }
                    }
                });
            }
        });
        Ok(format!("ws://{addr}/ws"))
    }

    /// Pings each client once; says "pong-ok" if it answers within 500 ms, else hangs up.
    async fn pinging_server() -> anyhow::Result<String> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    let _ = ws.send(Message::Ping(vec![7].into())).await;
                    let wait = Duration::from_millis(500);
                    while let Ok(Some(Ok(msg))) = tokio::time::timeout(wait, ws.next()).await {
                        if matches!(msg, Message::Pong(_)) {
                            let _ = ws.send(Message::text("pong-ok")).await;
                            let _ = ws.next().await;
                            return;
                        }
                    }
                    // Dropping `ws` closes the TCP connection without a close frame.
                });
            }
        });
        Ok(format!("ws://{addr}/ws"))
    }

    #[tokio::test]
    async fn reading_answers_pings_and_silent_does_not() -> anyhow::Result<()> {
        let url = pinging_server().await?;
        let mut live = WsClient::connect(&url).await?;
        let msg = live.recv(Duration::from_secs(5)).await?;
        assert_eq!(msg, Message::text("pong-ok"));
        let mut silent = WsClient::connect(&url).await?.into_silent();
        let took = silent.wait_closed_by_peer(Duration::from_secs(5)).await?;
        assert!(took >= Duration::from_millis(400), "{took:?}");
        Ok(())
    }

    #[tokio::test]
    async fn echo_roundtrip_and_errors() -> anyhow::Result<()> {
        let url = echo_server().await?;
        let mut ws = WsClient::connect(&url).await?;
        let t = Duration::from_secs(5);
        ws.send_json(&serde_json::json!({"type": "hello", "n": 1}))
            .await?;
        assert_eq!(ws.recv_type("hello", t).await?["n"], 1);
        ws.send_json(&serde_json::json!({"type": "other"})).await?;
        let err = ws.recv_type("hello", t).await.err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("other")));
        ws.send_binary(vec![9; 3]).await?;
        let err = ws.recv_json(t).await.err().map(|e| format!("{e:#}"));
        assert!(err.is_some_and(|e| e.contains("binary (3 bytes)")));
        ws.expect_no_message(Duration::from_millis(100)).await?;
        let err = ws
            .recv_json(Duration::from_millis(100))
            .await
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("last received")));
        ws.send_text("bye").await?;
        assert_eq!(ws.recv_close(t).await?, Some((1008, "bye".to_owned())));

        let ws = WsClient::connect(&url).await?;
        ws.close().await?;
        WsClient::connect(&url).await?.drop_abruptly();
        WsClient::connect(&url).await?.reset()?;
        Ok(())
    }
}
