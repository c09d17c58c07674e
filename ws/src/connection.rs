//! One client's WebSocket: frames in, [`ClientMessage`]s to the handler,
//! [`ServerMessage`]s out, and the keepalive that notices a dead client.

use std::future::Future;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

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
            ConnectionEnd::PingTimeout => "ping_timeout",
            ConnectionEnd::ServerShutdown => "server_shutdown",
        }
    }
}

/// Where the handler (and the tasks it starts) put messages for the client.
/// Sending to a connection that has ended is a no-op.
#[derive(Debug, Clone)]
pub struct Outbox(mpsc::UnboundedSender<ServerMessage>);

impl Outbox {
    pub fn send(&self, message: ServerMessage) {
        // Signalling is a few messages per call, so an unbounded queue cannot
        // grow far; a closed one means the client is gone, which the
        // connection loop already handles.
        let _ = self.0.send(message);
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
                        break ConnectionEnd::Dropped;
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
                            Ok(ClientMessage::Disconnected(_)) => break ConnectionEnd::ClientLeft,
                            Ok(message) => handler.on_message(message).await,
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
                let _ = send_within(&mut socket, Message::Close(None), config.ping_timeout).await;
                break ConnectionEnd::ServerShutdown;
            }
        }
    };
    info!(end = end.as_str(), "WebSocket connection ended");
    handler.on_end(end).await;
    end
}

/// A client that stops reading must not stall the loop forever.
async fn send_within(socket: &mut WebSocket, message: Message, limit: Duration) -> bool {
    matches!(
        tokio::time::timeout(limit, socket.send(message)).await,
        Ok(Ok(()))
    )
}
