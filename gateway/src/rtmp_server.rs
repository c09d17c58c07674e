//! The RTMP listener: one task per TCP connection, driving the sans-IO
//! [`ServerSession`] with the connection's bytes and its [`RtmpClient`]
//! with the session's events. Bad input (garbage, a broken handshake, an
//! oversized chunk) closes that connection only.

use std::net::SocketAddr;
use std::sync::Arc;

use dialtone_rtmp::{ServerConfig, ServerSession};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, Instrument};

use crate::rtmp_streams::{RtmpClient, RtmpStreams};

const READ_BUFFER: usize = 16 * 1024;

/// Accepts RTMP connections until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    streams: Arc<RtmpStreams>,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let span = info_span!("rtmp", %peer);
                    tasks.spawn(connection(stream, peer, streams.clone(), stop.clone()).instrument(span));
                }
                Err(error) => debug!(%error, "RTMP accept failed"),
            },
            _ = stop.cancelled() => return,
        }
    }
}

/// Drives one connection until the client leaves, sends what cannot be
/// read, or every call it served has ended.
pub async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    streams: Arc<RtmpStreams>,
    stop: CancellationToken,
) {
    info!(%peer, "RTMP client connected");
    let mut session = ServerSession::new(ServerConfig::default());
    let mut client = RtmpClient::new(streams);
    let mut buffer = vec![0u8; READ_BUFFER];
    let end = loop {
        tokio::select! {
            read = stream.read(&mut buffer) => match read {
                Ok(0) => break "the client closed the connection".to_string(),
                Ok(length) => {
                    let handled = session
                        .handle_input(&buffer[..length])
                        .and_then(|events| client.on_events(&mut session, events));
                    if let Err(error) = handled {
                        // What the session still has (an error status) goes out first.
                        let _ = stream.write_all(&session.take_output()).await;
                        break format!("unusable input: {error}");
                    }
                }
                Err(error) => break format!("read failed: {error}"),
            },
            Some(message) = client.next_for_players() => client.deliver(&mut session, message),
            _ = stop.cancelled() => break "the gateway is stopping".to_string(),
        }
        let output = session.take_output();
        if !output.is_empty() {
            if let Err(error) = stream.write_all(&output).await {
                break format!("write failed: {error}");
            }
        }
        if client.is_done() {
            break "its calls have ended".to_string();
        }
    };
    let _ = stream.shutdown().await;
    info!(%end, "RTMP connection closed");
}
