//! Sessions: one authenticated client each, usually bound to a SIP
//! registration. A session task registers, refreshes and unregisters; the
//! connection that started it owns it and is the only one that may name it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dialtone_sip::{Account, RegisterError, Registration};
use dialtone_ws::{
    ClientMessage, ConnectionEnd, ConnectionHandler, ErrorCode, Outbox, ProtocolError,
    ServerMessage, SessionFailReason, StartSession,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::config::AuthMode;
use crate::metrics::{Held, ReasonLabel};
use crate::state::Gateway;

/// A refresh that fails is retried this soon at first, doubling up to the
/// cap, so a registrar restart costs the user little.
const REFRESH_RETRY_FIRST: Duration = Duration::from_secs(1);
const REFRESH_RETRY_CAP: Duration = Duration::from_secs(30);

/// The gateway's handler for one WebSocket.
pub struct ClientConnection {
    gateway: Arc<Gateway>,
    client_id: String,
    outbox: Outbox,
    sessions: HashMap<String, SessionHandle>,
    /// Sessions told to close, kept so the connection's end can wait for
    /// their unregistration.
    closing: Vec<JoinHandle<()>>,
}

struct SessionHandle {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl ClientConnection {
    pub fn new(gateway: Arc<Gateway>, client_id: String, outbox: Outbox) -> ClientConnection {
        ClientConnection {
            gateway,
            client_id,
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
        let session_id = new_id();
        let client_id = request
            .client_id
            .clone()
            .unwrap_or_else(|| self.client_id.clone());
        let stop = CancellationToken::new();
        let session = Session {
            gateway: self.gateway.clone(),
            session_id: session_id.clone(),
            client_id,
            outbox: self.outbox.clone(),
        };
        let span = info_span!("session", session_id = %session_id, user = %request.username);
        let task = self
            .gateway
            .tasks
            .spawn(session.run(request, stop.clone()).instrument(span));
        self.sessions
            .insert(session_id, SessionHandle { stop, task });
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
        if !self.sessions.contains_key(&session_id) {
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
        }
        match message {
            ClientMessage::CloseSession(_) => {
                if let Some(handle) = self.sessions.remove(&session_id) {
                    handle.stop.cancel();
                    self.closing.push(handle.task);
                }
            }
            other => self.refuse(
                ProtocolError::new(
                    ErrorCode::NotSupported,
                    format!("{} is not supported by this gateway yet", other.type_name()),
                )
                .for_request(other.type_name())
                .with_session(&session_id),
            ),
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

/// What a session task needs; it outlives nothing but its connection.
struct Session {
    gateway: Arc<Gateway>,
    session_id: String,
    client_id: String,
    outbox: Outbox,
}

impl Session {
    async fn run(self, request: StartSession, stop: CancellationToken) {
        let registration = match self.authenticate(request).await {
            Ok(registration) => registration,
            Err(failure) => {
                self.fail(failure);
                return;
            }
        };
        let registration =
            registration.map(|r| (r, Held::new(&self.gateway.metrics.registrations)));
        let _session = Held::new(&self.gateway.metrics.sessions);
        self.gateway.metrics.sessions_started.inc();
        info!("session started");
        self.outbox.send(ServerMessage::SessionStarted {
            session_id: self.session_id.clone(),
            client_id: self.client_id.clone(),
        });

        if let Some((mut registration, _held)) = registration {
            keep_registered(&mut registration, &stop).await;
            if let Err(error) = registration.unregister().await {
                warn!(%error, "unregistration failed; the binding will expire on its own");
            }
        } else {
            stop.cancelled().await;
        }
        info!("session closed");
        self.outbox.send(ServerMessage::SessionClosed {
            session_id: self.session_id.clone(),
            client_id: self.client_id.clone(),
        });
    }

    /// Checks the user the configured way; a registration comes back when
    /// the registrar decided.
    async fn authenticate(&self, request: StartSession) -> Result<Option<Registration>, Failure> {
        let config = &self.gateway.config;
        match config.auth_mode() {
            AuthMode::Open => Ok(None),
            AuthMode::Static => {
                let known = config
                    .users
                    .iter()
                    .any(|u| u.username == request.username && u.password == request.password);
                if known {
                    Ok(None)
                } else {
                    Err(Failure::forbidden(None, "unknown user or wrong password"))
                }
            }
            AuthMode::Registrar => {
                let Some(registrar) = &config.registrar else {
                    return Err(Failure::timeout("no registrar configured"));
                };
                let target = registrar
                    .target()
                    .map_err(|e| Failure::timeout(&e.to_string()))?;
                let account = Account {
                    username: request.username,
                    password: request.password,
                    auth_username: None,
                    domain: registrar.domain.clone(),
                    contact_user: format!("dt-{}", self.session_id),
                };
                // Not raced with the stop signal: a REGISTER abandoned in
                // flight could leave a binding behind. The timeout bounds it.
                self.gateway
                    .sip
                    .register(
                        &target,
                        account,
                        registrar.expires_secs,
                        registrar.timeout(),
                    )
                    .await
                    .map(Some)
                    .map_err(Failure::from)
            }
        }
    }

    fn fail(&self, failure: Failure) {
        let reason_label = failure
            .reason
            .map(|r| format!("{r:?}"))
            .unwrap_or_else(|| "other".into());
        self.gateway
            .metrics
            .sessions_failed
            .get_or_create(&ReasonLabel {
                reason: reason_label,
            })
            .inc();
        info!(reason = ?failure.reason, sip_status = ?failure.sip_status, detail = %failure.detail, "session failed");
        self.outbox.send(ServerMessage::SessionFailed {
            session_id: self.session_id.clone(),
            client_id: self.client_id.clone(),
            reason: failure.reason,
            sip_status: failure.sip_status,
            detail: Some(failure.detail),
        });
    }
}

/// Refreshes before each expiry until told to stop; a failed refresh is
/// retried with back-off while the session lives.
async fn keep_registered(registration: &mut Registration, stop: &CancellationToken) {
    let mut wait = registration.refresh_after();
    let mut retry = REFRESH_RETRY_FIRST;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match registration.refresh().await {
            Ok(()) => {
                wait = registration.refresh_after();
                retry = REFRESH_RETRY_FIRST;
            }
            Err(error) => {
                warn!(%error, retry_in = ?retry, "registration refresh failed");
                wait = retry;
                retry = (retry * 2).min(REFRESH_RETRY_CAP);
            }
        }
    }
}

struct Failure {
    reason: Option<SessionFailReason>,
    sip_status: Option<u16>,
    detail: String,
}

impl Failure {
    fn forbidden(sip_status: Option<u16>, detail: &str) -> Failure {
        Failure {
            reason: Some(SessionFailReason::Forbidden),
            sip_status,
            detail: detail.to_string(),
        }
    }

    fn timeout(detail: &str) -> Failure {
        Failure {
            reason: Some(SessionFailReason::Timeout),
            sip_status: None,
            detail: detail.to_string(),
        }
    }
}

impl From<RegisterError> for Failure {
    fn from(error: RegisterError) -> Failure {
        let detail = error.to_string();
        match error {
            // Credentials refused: the challenge was answered and answered
            // again, or the registrar refused outright.
            RegisterError::Rejected { status, .. } if matches!(status, 401 | 403 | 404 | 407) => {
                Failure::forbidden(Some(status), &detail)
            }
            RegisterError::Rejected { status, .. } => Failure {
                reason: None,
                sip_status: Some(status),
                detail,
            },
            RegisterError::NoAnswer(_)
            | RegisterError::Unreachable(_)
            | RegisterError::BadTarget(_) => Failure::timeout(&detail),
        }
    }
}

/// 128 random bits, hex: unguessable, so a session id is a capability.
pub fn new_id() -> String {
    let bits: u128 = rand::random();
    format!("{bits:032x}")
}
