//! Calls of a session: one task each, turning the SIP call's events into
//! CALL_* messages for the client and the client's HANGUP / ACCEPT / REJECT
//! into SIP. The task owns the call's media ports, so they come back when
//! it ends, however it ends.

use std::net::IpAddr;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use dialtone_codecs::Codec;
use dialtone_sip::refer::ReferTarget;
use dialtone_sip::sdp::{self, LocalAudio};
use dialtone_sip::{grammar, Call, CallEvent, IncomingCall, NegotiatedMedia};
use dialtone_ws::{
    CallFailReason, CallQuality, CallStage, Capabilities, ErrorCode, HoldNotice, HoldSide,
    MediaTarget, Outbox, ProtocolError, RejectReason, RoomMode, ServerMessage,
};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

mod machine;

use machine::{CallInput, CallMachine, CallOutput, CallSettings};

use crate::caller::{allowed_target, call_domain, Caller, Dialled};
use crate::client_point::{latch_config, local_audio, ClientPoint, Negotiator, ReadyPoint};
use crate::config::{InbandDetection, ReferPolicy, RingbackTone};
use crate::media_ports::PortLease;
use crate::media_room::{
    sleep_until, MediaRoom, PointIo, PointNews, PointSink, RoomHandle, StatsSlot,
};
use crate::metrics::Held;
use crate::rooms::{Membership, NewMember, RoomRegistration, SessionRef};
use crate::srtp;
use crate::state::Gateway;
use dialtone_room::dtmf_relay::{build_dtmf_relay, DTMF_RELAY_CONTENT_TYPE};
use dialtone_room::{Line, PointConfig, PointId, Ringback, WatchConfig};

/// A room a call goes into instead of its own (START_CALL or ACCEPT_CALL
/// with a roomId), already checked to be open to the session.
#[derive(Clone)]
pub struct RoomTarget {
    pub room_id: String,
    pub handle: RoomHandle,
}

/// Where a call's requests are sent. Each travels boxed: a channel
/// allocates 32 slots of its message at once (issue 15, memory per call).
pub type CallRequests = mpsc::UnboundedSender<Box<CallRequest>>;

/// What the client asks of one of its calls.
pub enum CallRequest {
    Hangup,
    Accept(Option<Capabilities>, Option<RoomTarget>),
    Reject(RejectReason),
    SendDtmf(String),
    /// The client's SDP answer for its point.
    SdpAnswer(String),
    /// The client offers its WebRTC point itself.
    SdpOffer(String),
    /// A trickled ICE candidate of the client's WebRTC point.
    IceCandidate(String),
    /// HOLD_CALL (`sendonly`, `inactive`) or RESUME_CALL (`sendrecv`).
    SetDirection(dialtone_sip::sdp::Direction),
    /// TRANSFER_CALL: REFER with this Refer-To.
    Transfer(String),
    /// TRANSFER_CALL with this call as `replacesCallId`: the Refer-To that
    /// replaces it goes to the transferred call's task as a `Transfer`.
    ReferToReplacing(CallRequests),
}

/// A far end's REFER the gateway follows: the new call, until it is
/// answered (it then takes the old one's place) or fails.
struct Referral {
    call: Call,
    /// The old far end hung up meanwhile (many do right after their 202):
    /// the client's call ends with it only if the new call fails.
    old_leg_end: Option<CallEvent>,
}

/// What a call holds for its media: its ports, the client's point, its
/// room, and what the room says of its points.
struct CallMedia {
    /// The SIP leg's ports (RTP, RTCP).
    lease: Option<PortLease>,
    client_point: Option<ClientPoint>,
    /// The call's own room, joinable by its callId, while the call lasts.
    room: Option<(MediaRoom, Option<RoomRegistration>)>,
    /// The room the call went into instead, and its place there.
    target: Option<RoomTarget>,
    membership: Option<Membership>,
    /// The SIP leg's id in whichever room it is in.
    sip_point: PointId,
    sink: PointSink,
    news: mpsc::UnboundedReceiver<Box<PointNews>>,
}

impl CallMedia {
    fn new() -> CallMedia {
        let (sink, news) = mpsc::unbounded_channel();
        CallMedia {
            lease: None,
            client_point: None,
            room: None,
            target: None,
            membership: None,
            sip_point: SIP_POINT,
            sink,
            news,
        }
    }
}

/// The names a call's messages carry.
#[derive(Clone)]
pub struct CallIds {
    pub session_id: String,
    pub call_id: String,
    pub client_call_id: Option<String>,
}

/// One call of a session, seen from the session's task.
pub struct CallTask {
    gateway: Arc<Gateway>,
    ids: CallIds,
    session: SessionRef,
    /// Who the call's INVITEs (and a REFER's) come from.
    caller: Caller,
    outbox: Outbox,
    requests: mpsc::UnboundedReceiver<Box<CallRequest>>,
    /// The SIP side's media statistics, written by its room; also listed
    /// in the gateway's /status while the call lasts.
    stats: StatsSlot,
    _counted: Held,
}

impl Drop for CallTask {
    fn drop(&mut self) {
        self.gateway
            .call_media
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.ids.call_id);
    }
}

impl CallTask {
    pub fn new(
        gateway: Arc<Gateway>,
        ids: CallIds,
        session: SessionRef,
        caller: Caller,
        requests: mpsc::UnboundedReceiver<Box<CallRequest>>,
    ) -> CallTask {
        let counted = Held::new(&gateway.metrics.calls);
        let (stats, media_stats) = watch::channel(None);
        // Listed at once; /status shows a call once its room has reported.
        gateway
            .call_media
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(ids.call_id.clone(), media_stats);
        CallTask {
            gateway,
            ids,
            outbox: session.outbox.clone(),
            session,
            caller,
            requests,
            stats,
            _counted: counted,
        }
    }

    /// Places the call and follows it to its end; with a `target` its SIP
    /// leg joins that room.
    pub async fn run_outgoing(
        mut self,
        dialled: Dialled,
        cc: Option<Capabilities>,
        target: Option<RoomTarget>,
    ) {
        // The first CALL_STARTING goes out at once: it tells the client the
        // callId before anything else can happen.
        let mut machine = CallMachine::outgoing(Instant::now(), self.settings());
        let mut media = CallMedia::new();
        match target {
            Some(target) => self.enter(&mut media, target),
            None => self.start_own_room(&mut media),
        }
        self.carry_out(&mut machine, &mut media, None);
        let Some(lease) = self.gateway.ports.lease() else {
            self.fail(CallFailReason::MediaFailed, None, "no free media port");
            return;
        };
        let crypto = match srtp::our_crypto(self.gateway.config.media.srtp, true) {
            Ok(crypto) => crypto,
            Err(error) => {
                self.fail(CallFailReason::MediaFailed, None, &error.to_string());
                return;
            }
        };
        let offer = LocalAudio {
            crypto,
            ..local_audio(self.advertised_ip(), &lease, cc.as_ref())
        };
        let request = self.caller.call(dialled, offer);
        let client_point = match media.target {
            Some(_) => None,
            None => self.negotiator().offer(cc.as_ref()),
        };
        info!(target_uri = %request.target, "placing call");
        // Boxed, like a REFER's below: an async fn's state is as large as
        // its largest await, and the call lives on long after dialling.
        let call = match Box::pin(self.gateway.sip.dial(request)).await {
            Ok(call) => call,
            Err(error) => {
                self.fail(CallFailReason::Unavailable, None, &error.to_string());
                return;
            }
        };
        media.lease = Some(lease);
        media.client_point = client_point;
        self.follow(machine, call, media, None).await;
    }

    /// Offers an incoming call to the client and follows it to its end.
    pub async fn run_incoming(mut self, incoming: IncomingCall) {
        let IncomingCall {
            caller,
            caller_name,
            offer,
            call,
            ..
        } = incoming;
        self.outbox.send(ServerMessage::IncomingCall {
            session_id: self.ids.session_id.clone(),
            call_id: self.ids.call_id.clone(),
            a_uri: caller.clone(),
            a_display_name: caller_name,
            sdp: offer.clone().unwrap_or_default(),
        });
        info!(%caller, "incoming call offered to the client");
        let machine = CallMachine::incoming(Instant::now(), self.settings());
        let mut media = CallMedia::new();
        self.start_own_room(&mut media);
        self.follow(machine, call, media, Some(offer)).await;
    }

    /// What the call's machine needs to know of the configuration.
    fn settings(&self) -> CallSettings {
        let config = &self.gateway.config;
        CallSettings {
            dtmf_send: config.media.dtmf_send.clone(),
            detect_tones: match config.media.inband_detection {
                InbandDetection::Always => Some(true),
                InbandDetection::Never => Some(false),
                InbandDetection::Auto => None,
            },
            no_answer: Duration::from_millis(config.calls.no_answer_timeout_ms),
            decision: Duration::from_millis(config.calls.incoming_answer_timeout_ms),
            max_info_digits: config.limits.info_digit_queue,
            ringback: config.calls.ringback != RingbackTone::Off,
            hold_music: self.gateway.hold_music.is_some(),
        }
    }

    /// Feeds the machine what happens to the call until it is over, and
    /// carries out what it decides. `incoming_offer` is the caller's SDP
    /// offer of an incoming call.
    async fn follow(
        mut self,
        mut machine: CallMachine,
        mut call: Call,
        mut media: CallMedia,
        incoming_offer: Option<Option<String>>,
    ) {
        self.start_rtmp_point(&mut media);
        let mut referral: Option<Referral> = None;
        loop {
            self.carry_out(&mut machine, &mut media, Some(&call));
            if machine.is_over() {
                self.stop_taking_requests();
                // Dropping `call` leaves the SIP side to its driver, which
                // completes a BYE or CANCEL in flight (and ends a 200 that
                // crosses it) by itself; the ports and the room go now.
                return;
            }
            let input = tokio::select! {
                Some(news) = media.news.recv() => match *news {
                    PointNews::Event(event) => CallInput::Room(event),
                    // The room the call went into ended: so does the call.
                    PointNews::Evicted(moved) if media.target.is_some() && moved.id == media.sip_point => {
                        info!("the room the call was in ended");
                        CallInput::Hangup
                    }
                    PointNews::Evicted(_) => continue,
                },
                event = call.events.recv() => match event {
                    Some(CallEvent::Referred { target, referred_by }) => {
                        if referral.is_none() {
                            referral = Box::pin(self.follow_refer(&machine, &call, &media, target, referred_by)).await;
                        }
                        continue;
                    }
                    // The transferor leaves: the new call decides.
                    Some(end @ (CallEvent::Ended { .. } | CallEvent::Failed { .. })) if referral.is_some() => {
                        if let Some(referral) = referral.as_mut() {
                            referral.old_leg_end = Some(end);
                        }
                        continue;
                    }
                    event => event.map_or(CallInput::SipGone, CallInput::Sip),
                },
                event = referred_event(&mut referral), if referral.is_some() => {
                    match self.on_referred_event(event, &call, &mut referral) {
                        ReferralStep::Wait => continue,
                        ReferralStep::Failed(Some(end)) => CallInput::Sip(end),
                        ReferralStep::Failed(None) => continue,
                        ReferralStep::Answered(new_call, negotiated) => {
                            // Dropping the old call hangs it up (a BYE after
                            // our last NOTIFY), unless its far end already did.
                            call = new_call;
                            CallInput::FarEndReplaced(negotiated)
                        }
                    }
                }
                request = self.requests.recv() => match request.map_or(CallRequest::Hangup, |request| *request) {
                    CallRequest::Hangup => CallInput::Hangup,
                    CallRequest::Reject(reason) => CallInput::Reject(reason),
                    CallRequest::SendDtmf(digits) => CallInput::SendDtmf(digits),
                    CallRequest::SetDirection(direction) => CallInput::SetDirection(direction),
                    CallRequest::Transfer(target) => CallInput::Transfer(target),
                    CallRequest::ReferToReplacing(transferred) => {
                        self.refer_to_replacing(&call, transferred);
                        continue;
                    }
                    CallRequest::Accept(cc, target) if machine.is_offered() => {
                        if let Some(target) = target {
                            media.room = None;
                            self.enter(&mut media, target);
                        }
                        let offer = incoming_offer.clone().flatten();
                        self.accept(&call, offer.as_deref(), cc.as_ref(), &mut media)
                    }
                    CallRequest::Accept(..) => CallInput::Accepted,
                    request if machine.is_offered() => {
                        drop(request);
                        self.refuse("this applies once the call is accepted");
                        continue;
                    }
                    CallRequest::SdpAnswer(answer) => {
                        let (point, ready) = self.negotiator().on_answer(media.client_point.take(), &answer);
                        media.client_point = point;
                        self.add_client_point(&mut media, ready);
                        continue;
                    }
                    CallRequest::SdpOffer(offer) => {
                        let (point, ready) = self.negotiator().on_offer(media.client_point.take(), &offer);
                        media.client_point = point;
                        self.add_client_point(&mut media, ready);
                        continue;
                    }
                    CallRequest::IceCandidate(candidate) => {
                        self.on_candidate(&media, candidate);
                        continue;
                    }
                },
                _ = sleep_until(machine.poll_timeout()) => CallInput::Timeout,
            };
            machine.handle(Instant::now(), input);
        }
    }

    /// An attended transfer replaces this call: the transferred call's
    /// task gets the Refer-To naming it.
    fn refer_to_replacing(&self, call: &Call, transferred: CallRequests) {
        match call.replacing_refer_to() {
            Some(refer_to) => {
                if transferred
                    .send(Box::new(CallRequest::Transfer(refer_to)))
                    .is_err()
                {
                    self.refuse_transfer(
                        ErrorCode::UnknownCall,
                        "callId",
                        "the call to transfer ended",
                    );
                }
            }
            None => self.refuse_transfer(
                ErrorCode::InvalidState,
                "replacesCallId",
                "the call to replace is not started",
            ),
        }
    }

    fn refuse_transfer(&self, code: ErrorCode, field: &str, message: &str) {
        self.outbox.send_error(
            ProtocolError::new(code, message)
                .for_request("TRANSFER_CALL")
                .with_field(field)
                .with_session(&self.ids.session_id),
        );
    }

    /// The far end's REFER: followed (202, then a new call to the target
    /// on the same media port) if `calls.incoming_refer` allows the target,
    /// refused (603) otherwise; the client is told either way.
    async fn follow_refer(
        &self,
        machine: &CallMachine,
        call: &Call,
        media: &CallMedia,
        target: ReferTarget,
        referred_by: Option<String>,
    ) -> Option<Referral> {
        let decision = match self.gateway.config.calls.incoming_refer {
            _ if !machine.is_established() => Err("the call is not started".to_string()),
            ReferPolicy::Deny => Err("calls.incoming_refer is deny".to_string()),
            ReferPolicy::Allow => grammar::request_uri(&target.uri, &call_domain(&self.gateway))
                .map_err(|error| error.to_string()),
            ReferPolicy::DialPlan => allowed_target(&self.gateway, &target.uri),
        };
        let lease = media.lease.as_ref();
        let decision = decision.and_then(|uri| {
            lease
                .map(|lease| (uri, lease))
                .ok_or_else(|| "the call has no media port".to_string())
        });
        self.outbox.send(ServerMessage::CallReferred {
            session_id: self.ids.session_id.clone(),
            call_id: self.ids.call_id.clone(),
            target: target.uri.clone(),
            attended: target.replaces.is_some(),
            accepted: decision.is_ok(),
            reason: decision.as_ref().err().cloned(),
        });
        let (uri, lease) = match decision {
            Ok(accepted) => accepted,
            Err(why) => {
                info!(target = %target.uri, %why, "not following the far end's REFER");
                call.control.answer_refer(false);
                return None;
            }
        };
        call.control.answer_refer(true);
        info!(target = %uri, "following the far end's REFER");
        // The new far end gets the port the old one had.
        let crypto = match srtp::our_crypto(self.gateway.config.media.srtp, true) {
            Ok(crypto) => crypto,
            Err(error) => {
                self.referral_failed(call, 500, &error.to_string());
                return None;
            }
        };
        let offer = LocalAudio {
            crypto,
            ..local_audio(self.advertised_ip(), lease, None)
        };
        let dialled = Dialled {
            replaces: target.replaces,
            referred_by,
            ..Dialled::to(uri)
        };
        match self
            .gateway
            .sip
            .dial(self.caller.call(dialled, offer))
            .await
        {
            Ok(new_call) => Some(Referral {
                call: new_call,
                old_leg_end: None,
            }),
            Err(error) => {
                self.referral_failed(call, 503, &error.to_string());
                None
            }
        }
    }

    /// What the call a REFER made us place did: the transferor is told by
    /// NOTIFY, the client by TRANSFER_PROGRESS `REFERRED_CALL`.
    fn on_referred_event(
        &self,
        event: Option<CallEvent>,
        call: &Call,
        referral: &mut Option<Referral>,
    ) -> ReferralStep {
        match event {
            Some(CallEvent::Progress { status, .. }) if status > 100 => {
                let reason = if status == 180 {
                    "Ringing"
                } else {
                    "Session Progress"
                };
                call.control.notify_refer(status, reason, false);
                self.referral_progress(status, reason);
                ReferralStep::Wait
            }
            Some(CallEvent::Established {
                media: Some(negotiated),
                ..
            }) => {
                call.control.notify_refer(200, "OK", true);
                call.control.hangup();
                self.referral_progress(200, "OK");
                info!("the referred call was answered: it replaces the old one");
                let Some(Referral { call: new_call, .. }) = referral.take() else {
                    return ReferralStep::Wait;
                };
                ReferralStep::Answered(new_call, negotiated)
            }
            Some(CallEvent::Established { media: None, .. }) => {
                if let Some(referral) = referral.as_ref() {
                    referral.call.control.hangup();
                }
                self.end_referral(call, referral, 488, "no usable media")
            }
            Some(CallEvent::Failed { status, reason }) => {
                self.end_referral(call, referral, status, &reason)
            }
            Some(CallEvent::Ended { .. }) | None => {
                self.end_referral(call, referral, 487, "Request Terminated")
            }
            Some(_) => ReferralStep::Wait,
        }
    }

    fn end_referral(
        &self,
        call: &Call,
        referral: &mut Option<Referral>,
        status: u16,
        reason: &str,
    ) -> ReferralStep {
        self.referral_failed(call, status, reason);
        ReferralStep::Failed(referral.take().and_then(|referral| referral.old_leg_end))
    }

    fn referral_failed(&self, call: &Call, status: u16, reason: &str) {
        info!(status, %reason, "the referred call failed");
        call.control.notify_refer(status, reason, true);
        self.referral_progress(status, reason);
    }

    fn referral_progress(&self, status: u16, reason: &str) {
        self.outbox.send(ServerMessage::TransferProgress {
            session_id: self.ids.session_id.clone(),
            call_id: self.ids.call_id.clone(),
            stage: "REFERRED_CALL",
            sip_status: status,
            sip_reason: reason.to_string(),
        });
    }

    /// ACCEPT_CALL: our answer on fresh ports, and the client's own point
    /// (none when the call goes into a room).
    fn accept(
        &mut self,
        call: &Call,
        offer: Option<&str>,
        cc: Option<&Capabilities>,
        media: &mut CallMedia,
    ) -> CallInput {
        match self.answer(offer, cc) {
            Ok((answer, lease)) => {
                call.control.accept(answer);
                media.lease = Some(lease);
                if media.target.is_none() {
                    media.client_point = self.negotiator().offer(cc);
                    self.start_rtmp_point(media);
                }
                CallInput::Accepted
            }
            Err(problem) => CallInput::AcceptFailed(problem),
        }
    }

    /// Ringback toward the client's point, as a line of the call's own room
    /// (never into a room the call went into).
    fn ringback(&self, media: &CallMedia, on: bool) {
        let Some((room, _)) = media.room.as_ref().filter(|_| media.target.is_none()) else {
            return;
        };
        if !on {
            room.remove_point(RINGBACK_POINT);
            return;
        }
        let ringback = match self.gateway.config.calls.ringback {
            RingbackTone::Off => return,
            RingbackTone::Us => Ringback::Us,
            RingbackTone::Europe => Ringback::Europe,
        };
        // Made in G.711; the room transcodes it to the client's codec.
        let line = PointConfig::line(Line::Ringback(ringback), Some((0, Codec::Pcmu)), None);
        room.add_point(RINGBACK_POINT, line, PointIo::default(), media.sink.clone());
    }

    /// Music on hold toward the SIP leg, as a line of the call's own room
    /// whispering to it alone (never into a room the call went into).
    fn hold_music(&self, media: &CallMedia, on: bool) {
        let Some((room, _)) = media.room.as_ref().filter(|_| media.target.is_none()) else {
            return;
        };
        match (&self.gateway.hold_music, on) {
            (Some(recording), true) => {
                let line = PointConfig::music(recording.clone(), (0, Codec::Pcmu), media.sip_point);
                room.add_point(
                    HOLD_MUSIC_POINT,
                    line,
                    PointIo::default(),
                    media.sink.clone(),
                );
            }
            _ => room.remove_point(HOLD_MUSIC_POINT),
        }
    }

    /// The call's own room, joinable by its callId.
    fn start_own_room(&mut self, media: &mut CallMedia) {
        let room = MediaRoom::start(&self.gateway.media);
        let registration = self.gateway.rooms.register(
            &self.ids.call_id,
            room.handle(),
            self.session.clone(),
            false,
        );
        media.room = Some((room, registration));
    }

    /// The call goes into another room: its SIP leg is a member there.
    fn enter(&mut self, media: &mut CallMedia, target: RoomTarget) {
        info!(room_id = %target.room_id, "the call goes into a room");
        media.sip_point = self.gateway.rooms.new_point_id();
        media.target = Some(target);
    }

    /// The room the call's points are in.
    fn room_handle(&self, media: &CallMedia) -> Option<RoomHandle> {
        match (&media.target, &media.room) {
            (Some(target), _) => Some(target.handle.clone()),
            (None, Some((room, _))) => Some(room.handle()),
            (None, None) => None,
        }
    }

    fn negotiator(&self) -> Negotiator<'_> {
        Negotiator {
            gateway: &self.gateway,
            outbox: &self.outbox,
            session_id: &self.ids.session_id,
            target: MediaTarget::Call(self.ids.call_id.clone()),
        }
    }

    fn add_client_point(&mut self, media: &mut CallMedia, ready: Option<ReadyPoint>) {
        if let (Some((config, io)), Some(room)) = (ready, self.room_handle(media)) {
            room.add_point(CLIENT_POINT, config, io, media.sink.clone());
        }
    }

    /// An RTMP client needs no answer: it connects and publishes or plays
    /// whenever it likes, before or after the far end answers.
    fn start_rtmp_point(&mut self, media: &mut CallMedia) {
        let ready = media.client_point.as_mut().and_then(ClientPoint::take_rtmp);
        self.add_client_point(media, ready);
    }

    fn on_candidate(&self, media: &CallMedia, candidate: String) {
        let takes = media
            .client_point
            .as_ref()
            .and_then(ClientPoint::takes_candidates);
        match (takes, self.room_handle(media)) {
            (Some(true), Some(room)) => room.add_remote_candidate(CLIENT_POINT, candidate),
            // Before the answer: ICE-lite learns the client's address from
            // its checks anyway.
            (Some(_), _) => {}
            _ => self.refuse_field("this call has no WebRTC point", "candidate"),
        }
    }

    /// Carries out what the machine decided.
    fn carry_out(&mut self, machine: &mut CallMachine, media: &mut CallMedia, call: Option<&Call>) {
        while let Some(output) = machine.poll_output() {
            let room = self.room_handle(media);
            let sip_point = media.sip_point;
            match output {
                CallOutput::Stage(stage) => self.send_stage(stage),
                CallOutput::Started => self.outbox.send(ServerMessage::CallStarted {
                    session_id: self.ids.session_id.clone(),
                    call_id: self.ids.call_id.clone(),
                    client_call_id: self.ids.client_call_id.clone(),
                }),
                CallOutput::Failed {
                    reason,
                    sip_status,
                    detail,
                } => self.fail(reason, sip_status, &detail),
                CallOutput::Finished => self.finish(),
                CallOutput::Refused(message) => self.refuse(message),
                CallOutput::OverLimit(message) => self.outbox.send_error(
                    ProtocolError::new(ErrorCode::LimitReached, message)
                        .for_request("SEND_DTMF_SIGNAL")
                        .with_field("dtmfString")
                        .with_session(&self.ids.session_id),
                ),
                CallOutput::Digit { digit, method } => self.report_digit(digit, method),
                CallOutput::DigitByInfo(digit) => match room {
                    // The room reports it and passes it on to whoever hears
                    // the SIP leg.
                    Some(room) => room.digit_from(sip_point, digit),
                    None => self.report_digit(digit, "INFO"),
                },
                CallOutput::AddSipPoint {
                    media: negotiated,
                    detect_tones,
                    early,
                } => {
                    let point = media
                        .lease
                        .as_ref()
                        .and_then(|lease| self.sip_point(lease, &negotiated, early));
                    if let (Some((config, io)), Some(room)) = (point, room) {
                        let config = config.detecting_tones(detect_tones);
                        room.add_point(sip_point, config, io, media.sink.clone());
                        self.join_target(media);
                    }
                }
                CallOutput::RemoveSipPoint => {
                    if let Some(room) = room {
                        room.remove_point(sip_point);
                    }
                }
                CallOutput::UpdateSipPoint(update) => {
                    if let Some(room) = room {
                        room.update_point(sip_point, update);
                    }
                }
                CallOutput::SendEvents(digits) => {
                    if let Some(room) = room {
                        room.send_digits(sip_point, &digits);
                    }
                }
                CallOutput::SendTones(digits) => {
                    if let Some(room) = room {
                        room.send_tones(sip_point, &digits);
                    }
                }
                CallOutput::SetDirection(direction) => {
                    if let Some(call) = call {
                        call.control.set_direction(direction);
                    }
                }
                CallOutput::Transfer(refer_to) => {
                    if let Some(call) = call {
                        call.control.transfer(refer_to);
                    }
                }
                CallOutput::TransferProgress {
                    stage,
                    status,
                    reason,
                } => self.outbox.send(ServerMessage::TransferProgress {
                    session_id: self.ids.session_id.clone(),
                    call_id: self.ids.call_id.clone(),
                    stage,
                    sip_status: status,
                    sip_reason: reason,
                }),
                CallOutput::Ringback(on) => self.ringback(media, on),
                CallOutput::HoldMusic(on) => self.hold_music(media, on),
                CallOutput::Deaf(deaf) => {
                    if let Some(room) = room {
                        room.set_deaf(sip_point, deaf);
                    }
                }
                CallOutput::Held(by) => self
                    .outbox
                    .send(ServerMessage::CallHeld(self.hold_notice(by))),
                CallOutput::Resumed(by) => self
                    .outbox
                    .send(ServerMessage::CallResumed(self.hold_notice(by))),
                CallOutput::DirectionRefused(message) => self.outbox.send_error(
                    ProtocolError::new(ErrorCode::InvalidState, message)
                        .with_session(&self.ids.session_id),
                ),
                CallOutput::StopMedia => {
                    media.room = None;
                    media.membership = None;
                    media.target = None;
                }
                CallOutput::Ring => {
                    if let Some(call) = call {
                        call.control.ring();
                    }
                }
                CallOutput::Reject(status) => {
                    if let Some(call) = call {
                        call.control.reject(status);
                    }
                }
                CallOutput::Hangup => {
                    if let Some(call) = call {
                        call.control.hangup();
                    }
                }
                CallOutput::SendInfo(digits) => {
                    if let Some(call) = call {
                        send_digits_by_info(&digits, call);
                    }
                }
            }
        }
    }

    /// A call placed or accepted into a room is a member there once its SIP
    /// leg is in it: the room's other sessions are told.
    fn join_target(&mut self, media: &mut CallMedia) {
        let Some(target) = media.target.clone() else {
            return;
        };
        if media.membership.is_some() {
            return;
        }
        let joining = NewMember {
            point: media.sip_point,
            session: self.session.clone(),
            kind: "CALL",
            mode: RoomMode::Full,
        };
        let (membership, _) = self
            .gateway
            .rooms
            .join(&target.room_id, target.handle, joining);
        media.membership = Some(membership);
    }

    fn report_digit(&self, digit: char, method: &'static str) {
        info!(%digit, method, "digit from the far end");
        self.outbox.send(ServerMessage::DtmfReceived {
            session_id: self.ids.session_id.clone(),
            call_id: self.ids.call_id.clone(),
            digit: digit.to_string(),
            method,
        });
    }

    /// The answer to an incoming offer (or our own offer when the INVITE
    /// had none), on freshly leased ports.
    fn answer(
        &self,
        offer: Option<&str>,
        cc: Option<&Capabilities>,
    ) -> Result<(LocalAudio, PortLease), String> {
        let lease = self
            .gateway
            .ports
            .lease()
            .ok_or_else(|| "no free media port".to_string())?;
        let policy = self.gateway.config.media.srtp;
        let ours = LocalAudio {
            crypto: srtp::our_crypto(policy, offer.is_none()).map_err(|e| e.to_string())?,
            ..local_audio(self.advertised_ip(), &lease, cc)
        };
        let answer = match offer {
            Some(offer) => sdp::parse_remote(offer)
                .and_then(|remote| {
                    srtp::check_offer(policy, &remote)?;
                    sdp::answer(&remote, &ours)
                })
                .map_err(|e| e.to_string())?,
            None => ours,
        };
        Ok((answer, lease))
    }

    /// The SIP leg's point on the call's ports, toward the far end's SDP:
    /// watched (RTCP, statistics, RTP timeout); whether to look for in-band
    /// DTMF is the call machine's decision.
    fn sip_point(
        &self,
        lease: &PortLease,
        media: &NegotiatedMedia,
        early: bool,
    ) -> Option<(PointConfig, PointIo)> {
        let sockets = lease
            .rtp_socket()
            .and_then(|rtp| Ok((rtp, lease.rtcp_socket()?)));
        let (rtp, rtcp) = match sockets {
            Ok(sockets) => sockets,
            Err(error) => {
                warn!(%error, "cannot use the RTP sockets");
                return None;
            }
        };
        let mut config =
            PointConfig::rtp(media.remote, bridged(&media.codec), media.telephone_event)
                .latching(self.latch_config());
        if let Some(agreement) = &media.srtp {
            match srtp::point_keys(agreement) {
                Ok(keys) => config = config.secured(keys),
                Err(error) => {
                    warn!(%error, "unusable SRTP keys");
                    return None;
                }
            }
        }
        let watch = WatchConfig {
            rtp_timeout: Duration::from_millis(self.gateway.config.media.rtp_timeout_ms),
            // Early media may stop at any time; the answer restarts the watch.
            sends: media.remote_sends() && !early,
            rtcp: true,
        };
        let io = PointIo {
            rtp: Some(rtp),
            rtcp: Some(rtcp),
            rtmp: None,
            stats: Some(self.stats.clone()),
        };
        Some((config.watched(watch), io))
    }

    /// How the SIP leg learns its far end: strict source as configured.
    fn latch_config(&self) -> dialtone_room::symmetric::LatchConfig {
        latch_config(&self.gateway)
    }

    fn advertised_ip(&self) -> IpAddr {
        self.gateway.sip.advertised_addr().ip()
    }

    fn hold_notice(&self, by: HoldSide) -> HoldNotice {
        HoldNotice {
            session_id: self.ids.session_id.clone(),
            call_id: self.ids.call_id.clone(),
            by,
            client_call_id: self.ids.client_call_id.clone(),
        }
    }

    fn send_stage(&self, stage: CallStage) {
        self.outbox.send(ServerMessage::CallStarting {
            session_id: self.ids.session_id.clone(),
            call_id: self.ids.call_id.clone(),
            stage,
            client_call_id: self.ids.client_call_id.clone(),
        });
    }

    /// No request is taken once the call's last message is out: a request
    /// sent after it gets UNKNOWN_CALL instead of vanishing.
    fn stop_taking_requests(&mut self) {
        self.requests.close();
    }

    fn fail(&mut self, reason: CallFailReason, sip_status: Option<u16>, detail: &str) {
        self.stop_taking_requests();
        info!(?reason, ?sip_status, %detail, "call failed");
        self.outbox.send(ServerMessage::CallFailed {
            session_id: self.ids.session_id.clone(),
            call_id: self.ids.call_id.clone(),
            reason,
            sip_status,
            sip_reason: Some(detail.to_string()),
            client_call_id: self.ids.client_call_id.clone(),
        });
    }

    fn finish(&mut self) {
        self.stop_taking_requests();
        let quality = self.stats.borrow().map(|s| CallQuality {
            packets_sent: s.packets_sent,
            packets_received: s.packets_received,
            packets_lost: s.lost,
            jitter_ms: s.jitter_ms,
            rtt_ms: s.rtt_ms,
            mos: s.mos,
        });
        self.outbox.send(ServerMessage::CallFinished {
            session_id: self.ids.session_id.clone(),
            call_id: self.ids.call_id.clone(),
            client_call_id: self.ids.client_call_id.clone(),
            quality,
        });
    }

    fn refuse_field(&self, message: &str, field: &str) {
        self.outbox.send_error(
            ProtocolError::new(ErrorCode::InvalidValue, message)
                .with_field(field)
                .with_session(&self.ids.session_id),
        );
    }

    fn refuse(&self, message: &str) {
        warn!(%message, "call request refused");
        self.outbox.send_error(
            ProtocolError::new(ErrorCode::InvalidState, message).with_session(&self.ids.session_id),
        );
    }
}

/// What a referred call's event means for the client's call.
enum ReferralStep {
    Wait,
    /// The new call failed; the old leg's end, if it came meanwhile.
    Failed(Option<CallEvent>),
    /// The new call takes the old one's place with this media.
    Answered(Call, NegotiatedMedia),
}

/// The next event of a referred call; never ready without one.
async fn referred_event(referral: &mut Option<Referral>) -> Option<CallEvent> {
    match referral {
        Some(referral) => referral.call.events.recv().await,
        None => std::future::pending().await,
    }
}

pub(crate) fn bridged(codec: &sdp::Codec) -> Option<(u8, Codec)> {
    bridge_codec(codec).map(|bridged| (codec.payload_type, bridged))
}

pub(crate) fn first_bridged(codecs: &[sdp::Codec]) -> Option<(u8, Codec)> {
    codecs.iter().find_map(bridged)
}

pub(crate) fn telephone_event(codecs: &[sdp::Codec]) -> Option<u8> {
    codecs
        .iter()
        .find(|codec| codec.is_telephone_event() && codec.clock_rate == 8000)
        .map(|codec| codec.payload_type)
}

/// The bridge's codec for an SDP codec.
pub(crate) fn bridge_codec(codec: &sdp::Codec) -> Option<Codec> {
    let name = codec.name.to_ascii_lowercase();
    Some(match (name.as_str(), codec.clock_rate) {
        ("pcmu", 8000) => Codec::Pcmu,
        ("pcma", 8000) => Codec::Pcma,
        ("g722", 8000) => Codec::G722,
        ("opus", 48000) => Codec::Opus,
        ("speex", 8000) => Codec::SpeexNarrow,
        ("speex", 16000) => Codec::SpeexWide,
        _ => return None,
    })
}

/// The call's points in its room: the SIP leg, and the client's own.
pub(crate) const SIP_POINT: PointId = PointId(0);
const CLIENT_POINT: PointId = PointId(1);
const RINGBACK_POINT: PointId = PointId(2);
const HOLD_MUSIC_POINT: PointId = PointId(3);

/// One SIP INFO (dtmf-relay) per digit.
fn send_digits_by_info(digits: &str, call: &Call) {
    for digit in digits.chars() {
        match build_dtmf_relay(digit, DTMF_INFO_DURATION) {
            Ok(body) => call.control.send_info(DTMF_RELAY_CONTENT_TYPE, body),
            Err(error) => warn!(%error, %digit, "digit not sendable"),
        }
    }
}

/// How long each digit sent by SIP INFO says it lasts.
const DTMF_INFO_DURATION: Duration = Duration::from_millis(160);
