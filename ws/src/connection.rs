//! One client's WebSocket: frames in, [`ClientMessage`]s to the handler,
//! [`ServerMessage`]s out, and the keepalive that notices a dead client.

use std::future::Future;
use std::time::Duration;

use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace};

use crate::decode::{decode_client_message, ProtocolError};
use crate::protocol::{ClientMessage, ErrorCode, ServerMessage};

#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Larger text frames get a TOO_LARGE error and are otherwise ignored.
    pub max_message_bytes: usize,
    /// How often the gateway pings the client.
    pub ping_interval: Duration,
    /// A client heard from (any frame, pongs included) less recently than
    /// this is taken for dead.
    pub ping_timeout: Duration,
}

/// How a connection ended; the handler cleans up the same way for all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// A close frame from the client.
    ClientClosed,
    /// The client sent DISCONNECTED.
    ClientLeft,
    /// The socket failed or ended without a close frame.
    Dropped,
    /// The client sent what the protocol cannot take (a frame over the
    /// hard limit, a text frame that is not UTF-8): closed with a code.
    Refused,
    /// No frame within the ping timeout.
    PingTimeout,
    ServerShutdown,
}

impl ConnectionEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionEnd::ClientClosed => "client_closed",
            ConnectionEnd::ClientLeft => "client_left",
            ConnectionEnd::Dropped => "dropped",
            ConnectionEnd::Refused => "refused",
            ConnectionEnd::PingTimeout => "ping_timeout",
            ConnectionEnd::ServerShutdown => "server_shutdown",
        }
    }
}

/// Where the handler (and the tasks it starts) put messages for the client.
/// Sending to a connection that has ended is a no-op. Messages travel boxed:
/// the channel allocates 32 slots of its message type at once, and a
/// message is over 100 bytes, which every connection would pay for.
#[derive(Debug, Clone)]
pub struct Outbox(mpsc::UnboundedSender<Box<ServerMessage>>);

impl Outbox {
    pub fn send(&self, message: ServerMessage) {
        // Signalling is a few messages per call, so an unbounded queue cannot
        // grow far; a closed one means the client is gone, which the
        // connection loop already handles.
        let _ = self.0.send(Box::new(message));
    }

    pub fn send_error(&self, error: ProtocolError) {
        self.send(error.into_reply());
    }
}

/// The gateway's side of a connection.
pub trait ConnectionHandler: Send {
    /// Must return quickly: long work (a registration) belongs in a task that
    /// reports through the [`Outbox`].
    fn on_message(&mut self, message: ClientMessage) -> impl Future<Output = ()> + Send;
    /// Called once, whatever ended the connection.
    fn on_end(self, end: ConnectionEnd) -> impl Future<Output = ()> + Send;
}

/// Drives one WebSocket until it ends, then lets the handler clean up.
pub async fn run_connection<H, F>(
    mut socket: WebSocket,
    config: ConnectionConfig,
    client_id: String,
    make_handler: F,
    shutdown: CancellationToken,
) -> ConnectionEnd
where
    H: ConnectionHandler,
    F: FnOnce(Outbox) -> H,
{
    let (sender, mut outgoing) = mpsc::unbounded_channel();
    let outbox = Outbox(sender);
    let mut handler = make_handler(outbox.clone());
    outbox.send(ServerMessage::Connected {
        client_id: client_id.clone(),
    });

    let mut pings = tokio::time::interval(config.ping_interval);
    pings.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let end = loop {
        tokio::select! {
            frame = socket.recv() => {
                let frame = match frame {
                    Some(Ok(frame)) => frame,
                    Some(Err(error)) => {
                        debug!(%error, "WebSocket read failed");
                        let Some(close) = close_for(error) else {
                            break ConnectionEnd::Dropped;
                        };
                        let _ = send_within(&mut socket, Message::Close(Some(close)), config.ping_timeout).await;
                        break ConnectionEnd::Refused;
                    }
                    None => break ConnectionEnd::Dropped,
                };
                last_heard = Instant::now();
                match frame {
                    Message::Text(text) => {
                        if text.len() > config.max_message_bytes {
                            outbox.send_error(ProtocolError::new(
                                ErrorCode::TooLarge,
                                format!(
                                    "message of {} bytes exceeds the limit of {} bytes",
                                    text.len(),
                                    config.max_message_bytes
                                ),
                            ));
                            continue;
                        }
                        match decode_client_message(text.as_str()) {
                            Ok(ClientMessage::Disconnected(_)) => {
                                let goodbye = CloseFrame { code: close_code::NORMAL, reason: "client left".into() };
                                let _ = send_within(&mut socket, Message::Close(Some(goodbye)), config.ping_timeout).await;
                                break ConnectionEnd::ClientLeft;
                            }
                            Ok(message) => {
                                // The type only: a frame's fields may hold a password.
                                trace!(message = message.type_name(), "client message");
                                handler.on_message(message).await
                            }
                            Err(error) => outbox.send_error(error),
                        }
                    }
                    Message::Binary(_) => outbox.send_error(ProtocolError::new(
                        ErrorCode::BinaryFrame,
                        "binary frames are not part of the protocol; send JSON text frames",
                    )),
                    Message::Close(_) => break ConnectionEnd::ClientClosed,
                    Message::Ping(_) | Message::Pong(_) => {}
                }
            }
            Some(message) = outgoing.recv() => {
                if !send_within(&mut socket, Message::Text(message.to_json().into()), config.ping_timeout).await {
                    break ConnectionEnd::Dropped;
                }
            }
            _ = pings.tick() => {
                if last_heard.elapsed() > config.ping_timeout {
                    break ConnectionEnd::PingTimeout;
                }
                if !send_within(&mut socket, Message::Ping(Default::default()), config.ping_timeout).await {
                    break ConnectionEnd::Dropped;
                }
            }
            _ = shutdown.cancelled() => {
                let goodbye = ServerMessage::Disconnected { client_id: client_id.clone() };
                let _ = send_within(&mut socket, Message::Text(goodbye.to_json().into()), config.ping_timeout).await;
                let away = CloseFrame { code: close_code::AWAY, reason: "the gateway is stopping".into() };
                let _ = send_within(&mut socket, Message::Close(Some(away)), config.ping_timeout).await;
                break ConnectionEnd::ServerShutdown;
            }
        }
    };
    info!(end = end.as_str(), "WebSocket connection ended");
    handler.on_end(end).await;
    end
}

/// The close frame for what the client sent, when a read failed on it
/// rather than on the socket: 1009 for a frame over the hard limit, 1007
/// for a text frame that is not UTF-8, 1002 for other protocol errors.
fn close_for(error: axum::Error) -> Option<CloseFrame> {
    let error = error.into_inner().downcast::<tungstenite::Error>().ok()?;
    let (code, reason) = match *error {
        tungstenite::Error::Capacity(_) => (close_code::SIZE, "frame too large"),
        tungstenite::Error::Utf8(_) => (close_code::INVALID, "text frame is not UTF-8"),
        tungstenite::Error::Protocol(_) => (close_code::PROTOCOL, "WebSocket protocol error"),
        _ => return None,
    };
    Some(CloseFrame {
        code,
        reason: reason.into(),
    })
}

/// A client that stops reading must not stall the loop forever.
async fn send_within(socket: &mut WebSocket, message: Message, limit: Duration) -> bool {
    matches!(
        tokio::time::timeout(limit, socket.send(message)).await,
        Ok(Ok(()))
    )
}
