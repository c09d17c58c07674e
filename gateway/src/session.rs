//! Sessions: one authenticated client each, usually bound to a SIP
//! registration. A session task registers, refreshes and unregisters, places
//! and receives the session's calls, and when told to stop ends every call
//! before it unregisters.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use dialtone_sip::{Account, IncomingCall, IncomingCalls, RegisterError, Registration};
use dialtone_ws::{
    AcceptCall, ClientMessage, ErrorCode, MediaTarget, Outbox, ProtocolError, ServerMessage,
    SessionFailReason, StartCall, StartSession,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::call::{CallIds, CallRequest, CallRequests, CallTask, RoomTarget};
use crate::call_slots::{CallCount, CallSlot, CapReached};
use crate::caller::{allowed_target, Caller, Dialled};
use crate::config::AuthMode;
use crate::media_points::SessionMedia;
use crate::metrics::{Held, ReasonLabel};
use crate::rate_limit::TokenBucket;
use crate::rooms::{refusal, SessionRef};
use crate::state::Gateway;

/// A refresh that fails is retried this soon at first, doubling up to the
/// cap, so a registrar restart costs the user little.
const REFRESH_RETRY_FIRST: Duration = Duration::from_secs(1);
const REFRESH_RETRY_CAP: Duration = Duration::from_secs(30);

/// What the connection asks of one of its sessions. Commands travel boxed:
/// the session's queue allocates its blocks 32 commands at a time (issue 15,
/// memory per call).
pub enum SessionCommand {
    StartCall(StartCall),
    AcceptCall(AcceptCall),
    /// TRANSFER_CALL: the target is expanded as START_CALL's bUri is; or
    /// the call to replace (attended).
    Transfer {
        call_id: String,
        target: Option<String>,
        replaces_call_id: Option<String>,
    },
    /// A media point or room message (CREATE_MEDIA_POINT, JOIN_ROOM, an
    /// SDP or ICE message naming a pointId, ...).
    Media(ClientMessage),
    Call {
        call_id: String,
        request: CallRequest,
        request_type: &'static str,
    },
}

/// A call of the session, seen from the session.
struct ActiveCall {
    requests: CallRequests,
    task: JoinHandle<()>,
}

pub struct Session {
    gateway: Arc<Gateway>,
    session_id: String,
    client_id: String,
    outbox: Outbox,
    /// The session's user, as rooms see it.
    me: SessionRef,
    media: SessionMedia,
    calls: HashMap<String, ActiveCall>,
    /// Call tasks report their id here as they end.
    ended_calls: (
        mpsc::UnboundedSender<String>,
        mpsc::UnboundedReceiver<String>,
    ),
    /// The client's address, for the login limits.
    source_ip: IpAddr,
    /// The connection's calls, against `calls.max_calls_per_connection`.
    connection_calls: CallCount,
    /// START_CALL rate.
    call_starts: TokenBucket,
}

impl Session {
    pub fn new(
        gateway: Arc<Gateway>,
        session_id: String,
        client_id: String,
        username: String,
        outbox: Outbox,
        source_ip: IpAddr,
        connection_calls: CallCount,
    ) -> Session {
        let calls = &gateway.config.calls;
        let call_starts = TokenBucket::new(
            calls.start_burst,
            calls.starts_per_minute,
            std::time::Instant::now(),
        );
        let me = SessionRef {
            session_id: session_id.clone(),
            username,
            outbox: outbox.clone(),
        };
        Session {
            media: SessionMedia::new(gateway.clone(), me.clone()),
            me,
            gateway,
            session_id,
            client_id,
            outbox,
            calls: HashMap::new(),
            ended_calls: mpsc::unbounded_channel(),
            source_ip,
            connection_calls,
            call_starts,
        }
    }

    pub async fn run(
        mut self,
        request: StartSession,
        stop: CancellationToken,
        mut commands: mpsc::Receiver<Box<SessionCommand>>,
    ) {
        let registers = self.gateway.config.auth_mode() == AuthMode::Registrar;
        // Listen before registering, so an INVITE right after the 200 finds us.
        let mut incoming = registers.then(|| self.gateway.sip.incoming_calls(&self.contact_user()));
        let credentials = (request.username.clone(), request.password.clone());
        let identity = (request.display_name.clone(), request.caller_number.clone());
        let caller = Caller::new(&self.gateway, &credentials, self.contact_user(), identity);
        // The session's caller number goes on every call it places, a
        // REFER's included: checked once, before anything is registered.
        if let Err(number) = caller.claimed_number(&self.gateway, &Dialled::to(String::new())) {
            self.fail(Failure::forbidden(
                None,
                &format!("callerNumber {number:?} is not one this user may claim"),
            ));
            return;
        }
        // Boxed: registering needs a large future, which would otherwise
        // stay part of the session's for its whole life.
        let authenticated = Box::pin(self.authenticate(request)).await;
        self.count_login(&credentials.0, &authenticated);
        let registration = match authenticated {
            Ok(registration) => registration,
            Err(failure) => {
                self.fail(failure);
                return;
            }
        };
        let mut registered = registration
            .as_ref()
            .map(|_| Held::new(&self.gateway.metrics.registrations));
        let mut binding = Binding::new(registration.as_ref());
        let mut registration = registration;
        // A refresh runs as a task of its own (up to `registrar.timeout_ms`)
        // and hands the registration back: commands, incoming calls and the
        // stop signal are served meanwhile.
        let mut refreshing: Option<JoinHandle<(Registration, Result<(), RegisterError>)>> = None;
        let _session = Held::new(&self.gateway.metrics.sessions);
        self.gateway.metrics.sessions_started.inc();
        info!("session started");
        self.outbox.send(ServerMessage::SessionStarted {
            session_id: self.session_id.clone(),
            client_id: self.client_id.clone(),
            ice_servers: self.gateway.config.webrtc.ice_servers.clone(),
        });

        let mut refresh = Refresh::new(registration.as_ref().map(Registration::refresh_after));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = refresh.due(), if refreshing.is_none() => {
                    match registration.take() {
                        Some(taken) => refreshing = Some(self.gateway.tasks.spawn(taken.refreshed())),
                        None => refresh.at = None,
                    }
                }
                outcome = finished(&mut refreshing), if refreshing.is_some() => {
                    refreshing = None;
                    match outcome {
                        Ok((back, outcome)) => {
                            match &outcome {
                                Ok(()) => {
                                    if binding.renewed(&back) {
                                        self.registration_restored();
                                        registered = Some(Held::new(&self.gateway.metrics.registrations));
                                    }
                                }
                                Err(error) => binding.last_failure = Some(Failure::from(error)),
                            }
                            refresh.after(outcome, back.refresh_after());
                            registration = Some(back);
                        }
                        // Only a panic gets here; the binding expires on its own.
                        Err(error) => {
                            warn!(%error, "registration refresh task failed; no more refreshes");
                            refresh.at = None;
                        }
                    }
                }
                command = commands.recv() => match command {
                    Some(command) => self.on_command(*command, &caller).await,
                    None => break,
                },
                Some(news) = self.media.news.recv() => self.media.on_news(*news),
                Some(call) = next_incoming(&mut incoming) => self.take_incoming(call, &caller),
                Some(call_id) = self.ended_calls.1.recv() => {
                    self.calls.remove(&call_id);
                }
                _ = binding.lapses() => {
                    self.registration_lost(binding.lost());
                    // /status counts bindings the registrar holds.
                    registered = None;
                }
            }
        }

        drop(incoming);
        self.end_calls().await;
        // Its points leave their rooms and give back their ports; its
        // conference rooms end.
        self.media = SessionMedia::new(self.gateway.clone(), self.me.clone());
        // A refresh in flight is let finish (bounded by its timeout), so the
        // binding it may create is the one we remove.
        let mut bound = !binding.is_lost();
        if let Some(in_flight) = refreshing {
            match in_flight.await {
                Ok((back, outcome)) => {
                    bound |= outcome.is_ok();
                    registration = Some(back);
                }
                Err(error) => warn!(%error, "registration refresh task failed"),
            }
        }
        // A binding that lapsed is gone from the registrar, which is most
        // likely unreachable too: no REGISTER to remove it, and no wait of
        // `registrar.timeout_ms` before SESSION_CLOSED.
        if let Some(registration) = registration.filter(|_| bound) {
            if let Err(error) = Box::pin(registration.unregister()).await {
                warn!(%error, "unregistration failed; the binding will expire on its own");
            }
        }
        drop(registered);
        info!("session closed");
        self.outbox.send(ServerMessage::SessionClosed {
            session_id: self.session_id.clone(),
            client_id: self.client_id.clone(),
        });
    }

    /// Tells the login limiter how the check went: refused credentials
    /// count toward a lockout; a registrar that did not answer does not.
    fn count_login(&self, user: &str, outcome: &Result<Option<Registration>, Failure>) {
        let mut limiter = self
            .gateway
            .login_limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match outcome {
            Ok(_) => limiter.succeeded(user),
            Err(failure) if failure.reason == Some(SessionFailReason::Forbidden) => {
                limiter.failed(user, self.source_ip, std::time::Instant::now())
            }
            Err(_) => {}
        }
    }

    /// A place for one more call in the session's, the connection's and
    /// the gateway's counts.
    fn call_slot(&self) -> Result<CallSlot, CapReached> {
        let max = self.gateway.config.calls.max_calls_per_session;
        if self.calls.len() >= max {
            return Err(CapReached::Session(max));
        }
        CallSlot::take(&self.connection_calls, &self.gateway.calls_held)
    }

    /// START_CALL refused before anything is sent.
    fn refuse_call(&self, error: ProtocolError) {
        self.outbox.send_error(
            error
                .for_request("START_CALL")
                .with_session(&self.session_id),
        );
    }

    /// Our Contact's user part: it names this session to the registrar and
    /// to callers.
    fn contact_user(&self) -> String {
        format!("dt-{}", self.session_id)
    }

    async fn on_command(&mut self, command: SessionCommand, caller: &Caller) {
        match command {
            SessionCommand::StartCall(request) => self.start_call(request, caller),
            SessionCommand::AcceptCall(request) => {
                let target = match request.room_id.as_deref() {
                    Some(room_id) => match self.room_target(room_id, "ACCEPT_CALL") {
                        Some(target) => Some(target),
                        None => return,
                    },
                    None => None,
                };
                self.to_call(
                    request.call_id,
                    CallRequest::Accept(request.cc, target),
                    "ACCEPT_CALL",
                );
            }
            // Boxed: the largest await of every session's long-lived state.
            SessionCommand::Media(message) => Box::pin(self.on_media(message)).await,
            SessionCommand::Transfer {
                call_id,
                target: Some(target),
                ..
            } => {
                // A transfer has the far end call the target on our account:
                // the same rules as START_CALL's bUri.
                if let Some(target) = self.checked_target(&target, ("TRANSFER_CALL", "target")) {
                    let refer_to = format!("<{target}>");
                    self.to_call(call_id, CallRequest::Transfer(refer_to), "TRANSFER_CALL");
                }
            }
            SessionCommand::Transfer {
                call_id,
                replaces_call_id: Some(replaced),
                ..
            } => self.transfer_replacing(call_id, replaced),
            // The decoder lets through only one of the two.
            SessionCommand::Transfer { .. } => {}
            SessionCommand::Call {
                call_id,
                request,
                request_type,
            } => self.to_call(call_id, request, request_type),
        }
    }

    /// An attended transfer: the far end of `call_id` is to replace the
    /// client in `replaced`, whose task makes the Refer-To and hands it to
    /// the first call's.
    fn transfer_replacing(&self, call_id: String, replaced: String) {
        let Some(transferred) = self.calls.get(&call_id) else {
            self.to_call(call_id, CallRequest::Hangup, "TRANSFER_CALL");
            return;
        };
        if replaced == call_id {
            self.outbox.send_error(
                ProtocolError::new(ErrorCode::InvalidValue, "a call cannot replace itself")
                    .for_request("TRANSFER_CALL")
                    .with_field("replacesCallId")
                    .with_session(&self.session_id),
            );
            return;
        }
        match self.calls.get(&replaced) {
            Some(call) => {
                let asked = CallRequest::ReferToReplacing(transferred.requests.clone());
                let _ = call.requests.send(Box::new(asked));
            }
            None => self.outbox.send_error(
                ProtocolError::new(
                    ErrorCode::UnknownCall,
                    format!("no call {replaced:?} in this session"),
                )
                .for_request("TRANSFER_CALL")
                .with_field("replacesCallId")
                .with_session(&self.session_id),
            ),
        }
    }

    fn to_call(&self, call_id: String, request: CallRequest, request_type: &str) {
        match self.calls.get(&call_id) {
            Some(call) if call.requests.send(Box::new(request)).is_ok() => {}
            _ => self.outbox.send_error(
                ProtocolError::new(
                    ErrorCode::UnknownCall,
                    format!("no call {call_id:?} in this session"),
                )
                .for_request(request_type)
                .with_field("callId")
                .with_session(&self.session_id),
            ),
        }
    }

    /// Where a client asks a call to go (START_CALL's bUri, TRANSFER_CALL's
    /// target) as a SIP URI, if the SIP grammar and the dial plan allow it;
    /// refused with an ERROR naming `field` otherwise.
    fn checked_target(&self, given: &str, (request_type, field): (&str, &str)) -> Option<String> {
        match allowed_target(&self.gateway, given) {
            Ok(target) => Some(target),
            Err(why) => {
                self.outbox.send_error(
                    ProtocolError::new(ErrorCode::InvalidValue, format!("{field} {why}"))
                        .for_request(request_type)
                        .with_field(field)
                        .with_session(&self.session_id),
                );
                None
            }
        }
    }

    /// Media point and room messages.
    async fn on_media(&mut self, message: ClientMessage) {
        let media = &mut self.media;
        match message {
            ClientMessage::CreateMediaPoint(m) => media.create_point(m),
            ClientMessage::RemoveMediaPoint(m) => media.remove_point(&m.point_id),
            ClientMessage::SdpAnswer(m) => {
                if let MediaTarget::Point(point_id) = MediaTarget::of(&m.call_id, &m.point_id) {
                    media.on_sdp(&point_id, &m.sdp, false);
                }
            }
            ClientMessage::SdpOffer(m) => {
                if let MediaTarget::Point(point_id) = MediaTarget::of(&m.call_id, &m.point_id) {
                    media.on_sdp(&point_id, &m.sdp, true);
                }
            }
            ClientMessage::IceCandidate(m) => {
                if let MediaTarget::Point(point_id) = MediaTarget::of(&m.call_id, &m.point_id) {
                    media.on_candidate(&point_id, m.candidate);
                }
            }
            ClientMessage::JoinRoom(m) => media.join(m).await,
            ClientMessage::LeaveRoom(m) => media.leave(m).await,
            ClientMessage::CreateRoom(_) => media.create_room(),
            ClientMessage::CloseRoom(m) => media.close_room(&m.room_id),
            ClientMessage::InviteToRoom(m) => media.invite(&m.room_id, &m.username),
            ClientMessage::StartRecording(m) => media.start_recording(&m.room_id),
            ClientMessage::StopRecording(m) => media.stop_recording(m),
            other => warn!(message = other.type_name(), "not a media message"),
        }
    }

    /// The room a call is to go into, if the session may use it; refused
    /// with a reply otherwise.
    fn room_target(&self, room_id: &str, request_type: &str) -> Option<RoomTarget> {
        let config = &self.gateway.config.rooms;
        match self
            .gateway
            .rooms
            .admit(room_id, &self.me, config.join_policy, config.max_members)
        {
            Ok(handle) => Some(RoomTarget {
                room_id: room_id.to_string(),
                handle,
            }),
            Err(code) => {
                self.outbox.send_error(
                    refusal(code, room_id)
                        .for_request(request_type)
                        .with_session(&self.session_id),
                );
                None
            }
        }
    }

    fn start_call(&mut self, request: StartCall, caller: &Caller) {
        if let Err(wait) = self.call_starts.take(std::time::Instant::now()) {
            self.refuse_call(
                ProtocolError::new(
                    ErrorCode::RateLimited,
                    "too many calls started: try again later",
                )
                .retry_after(wait),
            );
            return;
        }
        let slot = match self.call_slot() {
            Ok(slot) => slot,
            Err(cap) => {
                self.refuse_call(ProtocolError::new(ErrorCode::LimitReached, cap.to_string()));
                return;
            }
        };
        let room = match request.room_id.as_deref() {
            Some(room_id) => match self.room_target(room_id, "START_CALL") {
                Some(room) => Some(room),
                None => return,
            },
            None => None,
        };
        let Some(target) = self.checked_target(&request.b_uri, ("START_CALL", "bUri")) else {
            return;
        };
        let dialled = Dialled {
            display_name: request.display_name.clone(),
            caller_number: request.caller_number.clone(),
            ..Dialled::to(target)
        };
        if let Err(number) = caller.claimed_number(&self.gateway, &dialled) {
            info!(%number, "refused caller number");
            self.refuse_call(
                ProtocolError::new(
                    ErrorCode::InvalidValue,
                    format!("callerNumber {number:?} is not one this user may claim (calls.caller_numbers)"),
                )
                .with_field("callerNumber"),
            );
            return;
        }
        let cc = request.cc;
        self.launch_call(slot, request.client_call_id, caller, move |task| {
            task.run_outgoing(dialled, cc, room)
        });
    }

    fn take_incoming(&mut self, call: IncomingCall, caller: &Caller) {
        match self.call_slot() {
            Ok(slot) => self.launch_call(slot, None, caller, move |task| task.run_incoming(call)),
            Err(cap) => {
                info!(caller = %call.caller, %cap, "incoming call refused: busy");
                call.call.control.reject(486);
            }
        }
    }

    /// Starts a call task; the session keeps its request channel until the
    /// task reports that it ended.
    fn launch_call<F, Run>(
        &mut self,
        slot: CallSlot,
        client_call_id: Option<String>,
        caller: &Caller,
        run: F,
    ) where
        F: FnOnce(CallTask) -> Run,
        Run: Future<Output = ()> + Send + 'static,
    {
        let ids = CallIds {
            session_id: self.session_id.clone(),
            call_id: new_id(),
            client_call_id,
        };
        let (requests, request_receiver) = mpsc::unbounded_channel();
        let call_task = CallTask::new(
            self.gateway.clone(),
            ids.clone(),
            self.me.clone(),
            caller.clone(),
            request_receiver,
        );
        let ended = self.ended_calls.0.clone();
        let call_id = ids.call_id.clone();
        let span = info_span!("call", call_id = %ids.call_id);
        // Boxed: an async block holds a captured future twice (as captured
        // and as awaited), for as long as the call lasts.
        let run = Box::pin(run(call_task));
        let task = self.gateway.tasks.spawn(
            async move {
                run.await;
                drop(slot);
                let _ = ended.send(call_id);
            }
            .instrument(span),
        );
        self.calls
            .insert(ids.call_id, ActiveCall { requests, task });
    }

    /// Hangs up every call and waits until each has ended.
    async fn end_calls(&mut self) {
        let calls: Vec<ActiveCall> = self.calls.drain().map(|(_, call)| call).collect();
        for call in &calls {
            let _ = call.requests.send(Box::new(CallRequest::Hangup));
        }
        for call in calls {
            if let Err(error) = call.task.await {
                warn!(%error, "call task failed");
            }
        }
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
                    contact_user: self.contact_user(),
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
                    .map_err(|error| Failure::from(&error))
            }
        }
    }

    /// REGISTRATION_LOST: the binding's granted time passed without a
    /// successful refresh. The session stays: its calls go on and the
    /// refreshes go on being retried.
    fn registration_lost(&self, failure: Failure) {
        warn!(reason = ?failure.reason, sip_status = ?failure.sip_status, detail = %failure.detail, "registration lapsed");
        self.outbox.send(ServerMessage::RegistrationLost {
            session_id: self.session_id.clone(),
            client_id: self.client_id.clone(),
            reason: failure.reason,
            sip_status: failure.sip_status,
            detail: Some(failure.detail),
        });
    }

    fn registration_restored(&self) {
        info!("registration restored");
        self.outbox.send(ServerMessage::RegistrationRestored {
            session_id: self.session_id.clone(),
            client_id: self.client_id.clone(),
        });
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

/// When the registration is refreshed next: at three quarters of the
/// granted time, or after a back-off when the last refresh failed.
struct Refresh {
    /// `None` for sessions without a registration.
    at: Option<Instant>,
    retry: Duration,
}

impl Refresh {
    fn new(first: Option<Duration>) -> Refresh {
        Refresh {
            at: first.map(|wait| Instant::now() + wait),
            retry: REFRESH_RETRY_FIRST,
        }
    }

    async fn due(&self) {
        match self.at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    fn after(&mut self, outcome: Result<(), RegisterError>, granted: Duration) {
        let wait = match outcome {
            Ok(()) => {
                self.retry = REFRESH_RETRY_FIRST;
                granted
            }
            Err(error) => {
                warn!(%error, retry_in = ?self.retry, "registration refresh failed");
                let wait = self.retry;
                self.retry = (self.retry * 2).min(REFRESH_RETRY_CAP);
                wait
            }
        };
        self.at = Some(Instant::now() + wait);
    }
}

/// Whether the registrar still holds our binding, as far as the gateway
/// can tell: a binding lapses when the time its last 2xx granted passes
/// without a successful refresh (a refresh is due at three quarters of
/// it, then retried), and the client is told once, when it does.
struct Binding {
    /// When the binding of the last successful REGISTER lapses; `None`
    /// without a registration, or once lapsed.
    until: Option<Instant>,
    lost: bool,
    /// Why the last refresh failed.
    last_failure: Option<Failure>,
}

impl Binding {
    fn new(registration: Option<&Registration>) -> Binding {
        Binding {
            until: registration.and_then(Binding::lifetime_from_now),
            lost: false,
            last_failure: None,
        }
    }

    /// Counted from the 2xx's arrival, a little after the registrar
    /// started its own count: we never call a binding lost too early.
    fn lifetime_from_now(registration: &Registration) -> Option<Instant> {
        Instant::now().checked_add(Duration::from_secs(u64::from(
            registration.granted_expires(),
        )))
    }

    /// A refresh succeeded; true when the binding had lapsed before.
    fn renewed(&mut self, registration: &Registration) -> bool {
        self.until = Binding::lifetime_from_now(registration);
        self.last_failure = None;
        std::mem::replace(&mut self.lost, false)
    }

    /// Resolves when the binding lapses (never once it has, until renewed).
    async fn lapses(&self) {
        match self.until {
            Some(at) if !self.lost => tokio::time::sleep_until(at).await,
            _ => std::future::pending().await,
        }
    }

    /// Marks the binding lost; what the client is told of why.
    fn lost(&mut self) -> Failure {
        self.lost = true;
        self.until = None;
        self.last_failure.take().unwrap_or_else(|| {
            Failure::timeout("no answer to the refresh before the binding expired")
        })
    }

    fn is_lost(&self) -> bool {
        self.lost
    }
}

async fn finished<T>(task: &mut Option<JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    match task {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

async fn next_incoming(incoming: &mut Option<IncomingCalls>) -> Option<IncomingCall> {
    match incoming {
        Some(incoming) => incoming.next().await,
        None => std::future::pending().await,
    }
}

#[derive(Debug)]
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

impl From<&RegisterError> for Failure {
    fn from(error: &RegisterError) -> Failure {
        let detail = error.to_string();
        match *error {
            // Credentials refused: the challenge was answered and answered
            // again, or the registrar refused outright.
            RegisterError::Rejected { status, .. } if matches!(status, 401 | 403 | 404 | 407) => {
                Failure::forbidden(Some(status), &detail)
            }
            RegisterError::BadUser(_) => Failure::forbidden(None, &detail),
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
