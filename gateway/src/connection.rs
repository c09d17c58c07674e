//! The gateway's handler for one WebSocket: it starts sessions, checks that
//! every message names a session of this connection, and hands call
//! messages to the session they belong to.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use dialtone_sip::grammar;
use dialtone_sip::sdp::Direction;
use dialtone_ws::{
    ClientMessage, ConnectionEnd, ConnectionHandler, ErrorCode, HoldMode, Outbox, ProtocolError,
    StartSession,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::call::CallRequest;
use crate::call_slots::CallCount;
use crate::metrics::ReasonLabel;
use crate::session::{new_id, Session, SessionCommand};
use crate::state::Gateway;

pub struct ClientConnection {
    gateway: Arc<Gateway>,
    client_id: String,
    /// The client's address, for the per-source-IP login limits.
    source_ip: IpAddr,
    /// Calls of all this connection's sessions.
    calls_held: CallCount,
    outbox: Outbox,
    sessions: HashMap<String, SessionHandle>,
    /// Sessions told to close, kept so the connection's end can wait for
    /// their calls to end and their unregistration.
    closing: Vec<JoinHandle<()>>,
}

struct SessionHandle {
    stop: CancellationToken,
    /// Bounded (`limits.session_command_queue`): a client that sends
    /// faster than its session works is refused, not queued without end.
    commands: mpsc::Sender<Box<SessionCommand>>,
    task: JoinHandle<()>,
}

impl ClientConnection {
    pub fn new(
        gateway: Arc<Gateway>,
        client_id: String,
        source_ip: IpAddr,
        outbox: Outbox,
    ) -> ClientConnection {
        ClientConnection {
            calls_held: CallCount::new(gateway.config.calls.max_calls_per_connection),
            gateway,
            client_id,
            source_ip,
            outbox,
            sessions: HashMap::new(),
            closing: Vec::new(),
        }
    }

    fn refuse(&self, error: ProtocolError) {
        self.gateway
            .metrics
            .protocol_errors
            .get_or_create(&ReasonLabel {
                reason: format!("{:?}", error.code),
            })
            .inc();
        self.outbox.send_error(error);
    }

    /// Sessions that failed or closed on their own are forgotten here, so
    /// their ids become unknown.
    fn forget_ended_sessions(&mut self) {
        self.sessions.retain(|_, handle| !handle.task.is_finished());
        self.closing.retain(|task| !task.is_finished());
    }

    fn start_session(&mut self, request: StartSession) {
        // The user name goes into From (and To, Contact, the digest
        // username with a registrar) in every mode.
        if let Err(error) = grammar::check_user(&request.username) {
            self.refuse(
                ProtocolError::new(ErrorCode::InvalidValue, format!("username {error}"))
                    .for_request("START_SESSION")
                    .with_field("username"),
            );
            return;
        }
        if self.gateway.is_draining() {
            self.refuse(
                ProtocolError::new(
                    ErrorCode::Draining,
                    "this gateway is draining: reconnect to be placed on another one",
                )
                .for_request("START_SESSION"),
            );
            return;
        }
        let limit = self.gateway.config.websocket.max_sessions_per_connection;
        if self.sessions.len() >= limit {
            self.refuse(
                ProtocolError::new(
                    ErrorCode::SessionLimit,
                    format!("this connection already holds {limit} sessions"),
                )
                .for_request("START_SESSION"),
            );
            return;
        }
        let admitted = self
            .gateway
            .login_limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(&request.username, self.source_ip, Instant::now());
        if let Err(wait) = admitted {
            info!(source_ip = %self.source_ip, user = %request.username, ?wait, "START_SESSION rate-limited");
            self.refuse(
                ProtocolError::new(
                    ErrorCode::RateLimited,
                    "too many sessions started, or too many failed logins, for this user or address: try again later",
                )
                .for_request("START_SESSION")
                .retry_after(wait),
            );
            return;
        }
        let session_id = new_id();
        let client_id = request
            .client_id
            .clone()
            .unwrap_or_else(|| self.client_id.clone());
        let stop = CancellationToken::new();
        let (commands, command_receiver) =
            mpsc::channel(self.gateway.config.limits.session_command_queue);
        let session = Session::new(
            self.gateway.clone(),
            session_id.clone(),
            client_id,
            request.username.clone(),
            self.outbox.clone(),
            self.source_ip,
            self.calls_held.clone(),
        );
        let span = info_span!("session", session_id = %session_id, user = %request.username);
        let task = self.gateway.tasks.spawn(
            session
                .run(request, stop.clone(), command_receiver)
                .instrument(span),
        );
        self.sessions.insert(
            session_id,
            SessionHandle {
                stop,
                commands,
                task,
            },
        );
    }
}

impl ConnectionHandler for ClientConnection {
    async fn on_message(&mut self, message: ClientMessage) {
        self.forget_ended_sessions();
        if let ClientMessage::StartSession(request) = message {
            self.start_session(request);
            return;
        }
        let Some(session_id) = message.session_id().map(str::to_string) else {
            return;
        };
        let Some(session) = self.sessions.get(&session_id) else {
            // Whether the id exists on another connection is not revealed.
            self.refuse(
                ProtocolError::new(
                    ErrorCode::UnknownSession,
                    format!("no session {session_id:?} on this connection"),
                )
                .for_request(message.type_name())
                .with_field("sessionId")
                .with_session(&session_id),
            );
            return;
        };
        let request_type = message.type_name();
        let call = |call_id, request| SessionCommand::Call {
            call_id,
            request,
            request_type,
        };
        let command = match message {
            ClientMessage::CloseSession(_) => {
                if let Some(handle) = self.sessions.remove(&session_id) {
                    handle.stop.cancel();
                    self.closing.push(handle.task);
                }
                return;
            }
            ClientMessage::StartCall(request) => SessionCommand::StartCall(request),
            ClientMessage::HangupCall(m) => call(m.call_id, CallRequest::Hangup),
            ClientMessage::AcceptCall(m) => SessionCommand::AcceptCall(m),
            ClientMessage::SendDtmfSignal(m) => {
                let max = self.gateway.config.calls.max_dtmf_digits;
                if m.dtmf_string.chars().count() > max {
                    self.refuse(
                        ProtocolError::new(
                            ErrorCode::InvalidValue,
                            format!("dtmfString is longer than {max} digits"),
                        )
                        .for_request(request_type)
                        .with_field("dtmfString")
                        .with_session(&session_id),
                    );
                    return;
                }
                call(m.call_id, CallRequest::SendDtmf(m.dtmf_string))
            }
            ClientMessage::SdpAnswer(m) if m.point_id.is_none() => {
                call(m.call_id.unwrap_or_default(), CallRequest::SdpAnswer(m.sdp))
            }
            ClientMessage::SdpOffer(m) if m.point_id.is_none() => {
                call(m.call_id.unwrap_or_default(), CallRequest::SdpOffer(m.sdp))
            }
            ClientMessage::IceCandidate(m) if m.point_id.is_none() => call(
                m.call_id.unwrap_or_default(),
                CallRequest::IceCandidate(m.candidate),
            ),
            ClientMessage::RejectCall(m) => call(m.call_id, CallRequest::Reject(m.reason)),
            ClientMessage::HoldCall(m) => call(
                m.call_id,
                CallRequest::SetDirection(match m.mode {
                    HoldMode::Sendonly => Direction::SendOnly,
                    HoldMode::Inactive => Direction::Inactive,
                }),
            ),
            ClientMessage::TransferCall(m) => SessionCommand::Transfer {
                call_id: m.call_id,
                target: m.target,
                replaces_call_id: m.replaces_call_id,
            },
            ClientMessage::ResumeCall(m) => {
                call(m.call_id, CallRequest::SetDirection(Direction::SendRecv))
            }
            // Already handled above.
            ClientMessage::StartSession(_) | ClientMessage::Disconnected(_) => return,
            other => SessionCommand::Media(other),
        };
        // A session that ended between the check and now drops the command;
        // its end was already reported.
        if let Err(mpsc::error::TrySendError::Full(_)) =
            session.commands.try_send(Box::new(command))
        {
            self.refuse(
                ProtocolError::new(
                    ErrorCode::LimitReached,
                    "the session has too many requests waiting: send more slowly",
                )
                .for_request(request_type)
                .with_session(&session_id),
            );
        }
    }

    async fn on_end(self, end: ConnectionEnd) {
        info!(client_id = %self.client_id, end = end.as_str(), sessions = self.sessions.len(), "client gone; closing its sessions");
        let mut tasks = self.closing;
        for (_, handle) in self.sessions {
            handle.stop.cancel();
            tasks.push(handle.task);
        }
        for task in tasks {
            if let Err(error) = task.await {
                warn!(%error, "session task failed");
            }
        }
    }
}
