//! Dialtone's native client protocol (seed 000): the JSON messages a web
//! client and the gateway exchange over a WebSocket, their validation, the
//! error replies, and the per-connection loop (keepalive, size limits,
//! frame kinds).
//!
//! It knows nothing of SIP, media or how sessions are kept: a connection
//! hands each valid message to a [`ConnectionHandler`] supplied by the
//! gateway, and sends whatever the handler puts in its [`Outbox`].

mod connection;
mod decode;
mod protocol;

pub use connection::{run_connection, ConnectionConfig, ConnectionEnd, ConnectionHandler, Outbox};
pub use decode::{decode_client_message, ProtocolError};
pub use protocol::*;
