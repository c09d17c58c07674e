//! The RTMP listener: one task per TCP connection, driving the sans-IO
//! [`ServerSession`] with the connection's bytes and its [`RtmpClient`]
//! with the session's events. Bad input (garbage, a broken handshake, an
//! oversized chunk) closes that connection only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dialtone_rtmp::{ServerConfig, ServerSession};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, Instrument};

use crate::config::LimitsConfig;
use crate::limits::ConnectionGate;
use crate::rtmp_streams::{RtmpClient, RtmpStreams};

const READ_BUFFER: usize = 16 * 1024;
/// After a failed accept (out of descriptors, say), the listener waits
/// this long before the next: retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long a connection may take and stall (`[limits]`).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// The TLS handshake, then the RTMP handshake and `connect`, each.
    pub setup: Duration,
    /// Nothing read and nothing written.
    pub idle: Duration,
    /// One write (a player with a zero window).
    pub write: Duration,
}

impl From<&LimitsConfig> for Timeouts {
    fn from(limits: &LimitsConfig) -> Timeouts {
        Timeouts {
            setup: limits.header_timeout(),
            idle: limits.idle_timeout(),
            write: limits.rtmp_write_timeout(),
        }
    }
}

/// Accepts RTMP connections (RTMPS with `tls`) until `stop` is cancelled,
/// as many as `gate` admits.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    gate: Arc<ConnectionGate>,
    timeouts: Timeouts,
    streams: Arc<RtmpStreams>,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    debug!(%error, "RTMP accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let Ok(admission) = gate.admit(peer.ip()) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let streams = streams.clone();
        let stop = stop.clone();
        match tls.clone() {
            None => {
                let span = info_span!("rtmp", %peer);
                tasks.spawn(
                    async move {
                        let _admission = admission;
                        connection(stream, peer, timeouts, streams, stop).await;
                    }
                    .instrument(span),
                );
            }
            Some(tls) => {
                let span = info_span!("rtmps", %peer);
                tasks.spawn(
                    async move {
                        let _admission = admission;
                        match tokio::time::timeout(timeouts.setup, tls.accept(stream)).await {
                            Ok(Ok(stream)) => {
                                connection(stream, peer, timeouts, streams, stop).await;
                            }
                            Ok(Err(error)) => info!(%error, "RTMPS handshake failed"),
                            Err(_) => info!("RTMPS handshake timed out"),
                        }
                    }
                    .instrument(span),
                );
            }
        }
    }
}

/// Drives one connection until the client leaves, sends what cannot be
/// read, stalls, or every call it served has ended; says which.
pub async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    timeouts: Timeouts,
    streams: Arc<RtmpStreams>,
    stop: CancellationToken,
) -> String {
    info!(%peer, "RTMP client connected");
    let mut session = ServerSession::new(ServerConfig::default());
    let mut client = RtmpClient::new(streams);
    let mut buffer = vec![0u8; READ_BUFFER];
    let setup_deadline = tokio::time::sleep(timeouts.setup);
    tokio::pin!(setup_deadline);
    let idle_deadline = tokio::time::sleep(timeouts.idle);
    tokio::pin!(idle_deadline);
    let end = loop {
        tokio::select! {
            _ = &mut setup_deadline, if !session.is_connected() => {
                break format!("no handshake and connect within {:?}", timeouts.setup);
            }
            _ = &mut idle_deadline => {
                break format!("nothing read or written for {:?}", timeouts.idle);
            }
            read = stream.read(&mut buffer) => match read {
                Ok(0) => break "the client closed the connection".to_string(),
                Ok(length) => {
                    idle_deadline.as_mut().reset(tokio::time::Instant::now() + timeouts.idle);
                    let handled = session
                        .handle_input(&buffer[..length])
                        .and_then(|events| client.on_events(&mut session, events));
                    if let Err(error) = handled {
                        // What the session still has (an error status) goes out first.
                        let _ = tokio::time::timeout(
                            timeouts.write,
                            stream.write_all(&session.take_output()),
                        )
                        .await;
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
            match tokio::time::timeout(timeouts.write, stream.write_all(&output)).await {
                Ok(Ok(())) => {
                    idle_deadline
                        .as_mut()
                        .reset(tokio::time::Instant::now() + timeouts.idle);
                }
                Ok(Err(error)) => break format!("write failed: {error}"),
                Err(_) => {
                    break format!("the client took no data for {:?}", timeouts.write);
                }
            }
        }
        if client.is_done() {
            break "its calls have ended".to_string();
        }
    };
    let _ = tokio::time::timeout(timeouts.write, stream.shutdown()).await;
    info!(%end, "RTMP connection closed");
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A player with a zero window: the connection's writes stall, and the write timeout, not
    /// the (longer) idle or set-up timeout, ends the connection.
    #[tokio::test]
    async fn a_client_that_takes_no_data_is_dropped_at_the_write_timeout() {
        let (mut client, server) = tokio::io::duplex(2048);
        let timeouts = Timeouts {
            setup: Duration::from_secs(30),
            idle: Duration::from_secs(30),
            write: Duration::from_millis(200),
        };
        let peer = SocketAddr::from(([127, 0, 0, 1], 1935));
        let served = tokio::spawn(connection(
            server,
            peer,
            timeouts,
            RtmpStreams::new(4),
            CancellationToken::new(),
        ));
        // C0 and C1: the gateway answers S0, S1 and S2 (3 073 bytes), which this client never
        // reads.
        let mut hello = vec![0u8; 1537];
        hello[0] = 3;
        client.write_all(&hello).await.unwrap();
        let end = tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("the stalled connection was not dropped")
            .unwrap();
        assert!(end.contains("took no data"), "{end}");
    }
}
