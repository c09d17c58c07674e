//! Calls of a session: one task each, turning the SIP call's events into
//! CALL_* messages for the client and the client's HANGUP / ACCEPT / REJECT
//! into SIP. The task owns the call's media ports, so they come back when
//! it ends, however it ends.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use dialtone_codecs::Codec;
use dialtone_rtmp::{FlashMedia, FlashSdp};
use dialtone_sip::sdp::{self, Direction, LocalAudio};
use dialtone_sip::{Call, IncomingCall, NegotiatedMedia, OutgoingCall};
use dialtone_ws::{
    CallFailReason, CallQuality, CallStage, Capabilities, ErrorCode, Outbox, ProtocolError,
    RejectReason, SdpExchange, ServerMessage,
};
use tokio::sync::mpsc;
use tracing::{info, warn};

mod machine;

use machine::{CallInput, CallMachine, CallOutput, CallSettings};

use crate::config::InbandDetection;
use crate::media_ports::PortLease;
use crate::media_room::{sleep_until, MediaRoom, PointIo};
use crate::metrics::Held;
use crate::rtmp_streams::{RoomStreams, StreamRegistration};
use crate::state::{Gateway, MediaStatsWatch};
use dialtone_room::dtmf_relay::{build_dtmf_relay, DTMF_RELAY_CONTENT_TYPE};
use dialtone_room::symmetric::LatchConfig;
use dialtone_room::webrtc::PendingOffer;
use dialtone_room::{Event as RoomEvent, PointConfig, PointId, WatchConfig};

/// What the client asks of one of its calls.
#[derive(Debug)]
pub enum CallRequest {
    Hangup,
    Accept(Option<Capabilities>),
    Reject(RejectReason),
    SendDtmf(String),
    /// The client's SDP answer for its point.
    SdpAnswer(String),
    /// The client offers its WebRTC point itself.
    SdpOffer(String),
    /// A trickled ICE candidate of the client's WebRTC point.
    IceCandidate(String),
}

/// The client's own media point, when its `cc.mediaTransport` asks for one.
enum ClientPoint {
    /// `RTP`: our offer is out, for an endpoint the client runs itself.
    Rtp(PortLease),
    /// `SRTP` / `WEBRTC`: our WebRTC offer waits for the client's answer
    /// (or the client's own offer).
    WebRtcOffered {
        lease: PortLease,
        offer: Box<PendingOffer>,
    },
    /// Negotiated and in the room; the lease keeps its port.
    InRoom { _lease: PortLease, webrtc: bool },
    /// `RTMP` / `RTMPT`: two stream names, registered while the call
    /// lasts; the room's ends wait for the room.
    Rtmp {
        _names: StreamRegistration,
        waiting: Option<(RoomStreams, Codec)>,
    },
}

/// What a call holds for its media: its ports, the client's point, and
/// the room once started.
#[derive(Default)]
struct CallMedia {
    /// The SIP leg's ports (RTP, RTCP).
    lease: Option<PortLease>,
    client_point: Option<ClientPoint>,
    room: Option<MediaRoom>,
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
    outbox: Outbox,
    requests: mpsc::UnboundedReceiver<CallRequest>,
    /// The SIP side's media statistics once media flows; also listed in
    /// the gateway's /status while the call lasts.
    media_stats: Option<MediaStatsWatch>,
    _counted: Held,
}

impl Drop for CallTask {
    fn drop(&mut self) {
        if self.media_stats.is_some() {
            self.gateway
                .call_media
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&self.ids.call_id);
        }
    }
}

impl CallTask {
    pub fn new(
        gateway: Arc<Gateway>,
        ids: CallIds,
        outbox: Outbox,
        requests: mpsc::UnboundedReceiver<CallRequest>,
    ) -> CallTask {
        let counted = Held::new(&gateway.metrics.calls);
        CallTask {
            gateway,
            ids,
            outbox,
            requests,
            media_stats: None,
            _counted: counted,
        }
    }

    /// Places the call and follows it to its end.
    pub async fn run_outgoing(
        mut self,
        with_offer: impl FnOnce(LocalAudio) -> OutgoingCall,
        cc: Option<Capabilities>,
    ) {
        // The first CALL_STARTING goes out at once: it tells the client the
        // callId before anything else can happen.
        let mut machine = CallMachine::outgoing(Instant::now(), self.settings());
        let mut media = CallMedia::default();
        self.carry_out(&mut machine, &mut media, None);
        let Some(lease) = self.gateway.ports.lease() else {
            self.fail(CallFailReason::MediaFailed, None, "no free media port");
            return;
        };
        let request = with_offer(local_audio(self.advertised_ip(), &lease, cc.as_ref()));
        let client_point = self.offer_client_point(cc.as_ref());
        info!(target_uri = %request.target, "placing call");
        let call = match self.gateway.sip.dial(request).await {
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
    pub async fn run_incoming(self, incoming: IncomingCall) {
        let IncomingCall {
            caller,
            offer,
            call,
            ..
        } = incoming;
        self.outbox.send(ServerMessage::IncomingCall {
            session_id: self.ids.session_id.clone(),
            call_id: self.ids.call_id.clone(),
            a_uri: caller.clone(),
            sdp: offer.clone().unwrap_or_default(),
        });
        info!(%caller, "incoming call offered to the client");
        let machine = CallMachine::incoming(Instant::now(), self.settings());
        self.follow(machine, call, CallMedia::default(), Some(offer))
            .await;
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
                Some(event) = room_event(&mut media.room) => CallInput::Room(event),
                event = call.events.recv() => event.map_or(CallInput::SipGone, CallInput::Sip),
                request = self.requests.recv() => match request.unwrap_or(CallRequest::Hangup) {
                    CallRequest::Hangup => CallInput::Hangup,
                    CallRequest::Reject(reason) => CallInput::Reject(reason),
                    CallRequest::SendDtmf(digits) => CallInput::SendDtmf(digits),
                    CallRequest::Accept(cc) if machine.is_offered() => {
                        let offer = incoming_offer.clone().flatten();
                        self.accept(&call, offer.as_deref(), cc.as_ref(), &mut media)
                    }
                    CallRequest::Accept(_) => CallInput::Accepted,
                    request if machine.is_offered() => {
                        drop(request);
                        self.refuse("this applies once the call is accepted");
                        continue;
                    }
                    CallRequest::SdpAnswer(answer) => {
                        media.client_point = self.on_client_answer(media.client_point.take(), &answer, &mut media.room);
                        continue;
                    }
                    CallRequest::SdpOffer(offer) => {
                        media.client_point = self.on_client_offer(media.client_point.take(), &offer, &mut media.room);
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

    /// ACCEPT_CALL: our answer on fresh ports, and the client's own point.
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
                media.client_point = self.offer_client_point(cc);
                self.start_rtmp_point(media);
                CallInput::Accepted
            }
            Err(problem) => CallInput::AcceptFailed(problem),
        }
    }

    /// An RTMP client needs no answer: it connects and publishes or plays
    /// whenever it likes, before or after the far end answers.
    fn start_rtmp_point(&mut self, media: &mut CallMedia) {
        if let Some(ClientPoint::Rtmp { waiting, .. }) = media.client_point.as_mut() {
            if let Some((streams, send)) = waiting.take() {
                let io = PointIo {
                    rtmp: Some(streams),
                    ..PointIo::default()
                };
                self.room(&mut media.room)
                    .add_point(CLIENT_POINT, PointConfig::rtmp(send), io);
            }
        }
    }

    fn on_candidate(&self, media: &CallMedia, candidate: String) {
        match (&media.client_point, &media.room) {
            (Some(ClientPoint::InRoom { webrtc: true, .. }), Some(room)) => {
                room.add_remote_candidate(CLIENT_POINT, candidate);
            }
            // Before the answer: ICE-lite learns the client's address from
            // its checks anyway.
            (Some(ClientPoint::WebRtcOffered { .. }), _) => {}
            _ => self.refuse_field("this call has no WebRTC point", "candidate"),
        }
    }

    /// Carries out what the machine decided.
    fn carry_out(&mut self, machine: &mut CallMachine, media: &mut CallMedia, call: Option<&Call>) {
        let CallMedia { lease, room, .. } = media;
        while let Some(output) = machine.poll_output() {
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
                CallOutput::Digit { digit, method } => self.report_digit(digit, method),
                CallOutput::DigitByInfo(digit) => match room.as_ref() {
                    // The room reports it and passes it on to the client's point.
                    Some(room) => room.digit_from(SIP_POINT, digit),
                    None => self.report_digit(digit, "INFO"),
                },
                CallOutput::AddSipPoint {
                    media: negotiated,
                    detect_tones,
                } => {
                    let point = lease
                        .as_ref()
                        .and_then(|lease| self.sip_point(lease, &negotiated));
                    if let Some((config, io)) = point {
                        self.room(room).add_point(
                            SIP_POINT,
                            config.detecting_tones(detect_tones),
                            io,
                        );
                    }
                }
                CallOutput::UpdateSipPoint(update) => {
                    if let Some(room) = room.as_ref() {
                        room.update_point(SIP_POINT, update);
                    }
                }
                CallOutput::SendEvents(digits) => {
                    if let Some(room) = room.as_ref() {
                        room.send_digits(SIP_POINT, &digits);
                    }
                }
                CallOutput::SendTones(digits) => {
                    if let Some(room) = room.as_ref() {
                        room.send_tones(SIP_POINT, &digits);
                    }
                }
                CallOutput::StopMedia => *room = None,
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

    /// The call's media room, started on first use; /status lists its
    /// statistics from then on.
    fn room<'r>(&mut self, room: &'r mut Option<MediaRoom>) -> &'r mut MediaRoom {
        let room_now = match room.take() {
            Some(existing) => existing,
            None => {
                let started = MediaRoom::start(SIP_POINT, &self.gateway.tasks);
                self.watch_media(started.stats.clone());
                started
            }
        };
        room.insert(room_now)
    }

    /// For a client whose `cc.mediaTransport` asks for a point of its own
    /// (`SRTP` / `WEBRTC` for a browser, `RTP` for an endpoint it runs): a
    /// port, and an SDP_OFFER with the codecs it named that the bridge can
    /// carry.
    fn offer_client_point(&self, cc: Option<&Capabilities>) -> Option<ClientPoint> {
        let cc = cc?;
        let wants = |name: &str| {
            cc.media_transport
                .iter()
                .any(|t| t.eq_ignore_ascii_case(name))
        };
        let webrtc = wants("SRTP") || wants("WEBRTC");
        if !webrtc && (wants("RTMP") || wants("RTMPT")) {
            return self.offer_rtmp_point(cc);
        }
        if !webrtc && !wants("RTP") {
            return None;
        }
        let Some(lease) = self.gateway.ports.lease() else {
            warn!("no free media port for the client's point");
            return None;
        };
        let (sdp, point) = if webrtc {
            match self
                .gateway
                .webrtc
                .offer(Instant::now(), lease.local_addr(), &cc.audio_codecs)
            {
                Ok(offer) => (
                    offer.sdp.clone(),
                    ClientPoint::WebRtcOffered {
                        lease,
                        offer: Box::new(offer),
                    },
                ),
                Err(error) => {
                    warn!(%error, "no WebRTC offer");
                    return None;
                }
            }
        } else {
            let offer = LocalAudio {
                codecs: client_codecs(&cc.audio_codecs),
                ..local_audio(self.advertised_ip(), &lease, None)
            };
            (offer.render(), ClientPoint::Rtp(lease))
        };
        self.outbox.send(ServerMessage::SdpOffer(SdpExchange {
            session_id: self.ids.session_id.clone(),
            call_id: self.ids.call_id.clone(),
            sdp,
        }));
        Some(point)
    }

    /// For an RTMP client: two stream names for the call and the adapted
    /// SDP of seed 000 telling it where to publish and what to play.
    fn offer_rtmp_point(&self, cc: &Capabilities) -> Option<ClientPoint> {
        if self.gateway.rtmp_addr.is_none() {
            warn!("an RTMP client, but RTMP is off (rtmp.listen)");
            return None;
        }
        let send = flv_send_codec(&cc.audio_codecs);
        let (names, streams) = self.gateway.rtmp_streams.register();
        let endpoints = self.gateway.rtmp_urls.clone();
        let sdp = FlashSdp {
            session_name: self.ids.call_id.clone(),
            session_id: self.ids.session_id.clone(),
            endpoints,
            audio: Some(FlashMedia {
                codec: flash_codec_name(send).to_string(),
                publish_stream: names.publish_name.clone(),
                play_stream: names.play_name.clone(),
            }),
            video: None,
        };
        match sdp.render() {
            Ok(sdp) => self.outbox.send(ServerMessage::SdpOffer(SdpExchange {
                session_id: self.ids.session_id.clone(),
                call_id: self.ids.call_id.clone(),
                sdp,
            })),
            Err(error) => {
                warn!(%error, "no Flash SDP");
                return None;
            }
        }
        Some(ClientPoint::Rtmp {
            _names: names,
            waiting: Some((streams, send)),
        })
    }

    /// The client's SDP_ANSWER to our offer for its point: the point joins
    /// the room. A bad answer is refused and the offer stays open.
    fn on_client_answer(
        &mut self,
        point: Option<ClientPoint>,
        answer: &str,
        room: &mut Option<MediaRoom>,
    ) -> Option<ClientPoint> {
        let (config, socket, lease, webrtc) = match point {
            Some(ClientPoint::Rtp(lease)) => {
                let setup = sdp::parse_remote(answer)
                    .map_err(|e| e.to_string())
                    .and_then(|remote| {
                        let socket = lease.rtp_socket().map_err(|e| e.to_string())?;
                        Ok((rtp_point(&remote).latching(self.latch_config()), socket))
                    });
                match setup {
                    Ok((config, socket)) => (config, socket, lease, false),
                    Err(problem) => {
                        self.refuse_field(&problem, "sdp");
                        return Some(ClientPoint::Rtp(lease));
                    }
                }
            }
            Some(ClientPoint::WebRtcOffered { lease, offer }) => {
                let socket = match lease.rtp_socket() {
                    Ok(socket) => socket,
                    Err(error) => {
                        self.refuse_field(&error.to_string(), "sdp");
                        return Some(ClientPoint::WebRtcOffered { lease, offer });
                    }
                };
                match offer.accept_answer(Instant::now(), answer) {
                    Ok(point) => (PointConfig::webrtc(point), socket, lease, true),
                    Err(error) => {
                        // str0m has used up the offer: the client may offer instead.
                        self.refuse_field(&format!("answer not usable: {error}"), "sdp");
                        return self.offer_again(lease);
                    }
                }
            }
            other => {
                self.refuse_field("this call has no client point waiting for an answer", "sdp");
                return other;
            }
        };
        let io = PointIo {
            rtp: Some(socket),
            ..PointIo::default()
        };
        self.room(room).add_point(CLIENT_POINT, config, io);
        Some(ClientPoint::InRoom {
            _lease: lease,
            webrtc,
        })
    }

    /// After a refused answer, a fresh WebRTC offer on the same port.
    fn offer_again(&self, lease: PortLease) -> Option<ClientPoint> {
        match self
            .gateway
            .webrtc
            .offer(Instant::now(), lease.local_addr(), &[])
        {
            Ok(offer) => {
                self.outbox.send(ServerMessage::SdpOffer(SdpExchange {
                    session_id: self.ids.session_id.clone(),
                    call_id: self.ids.call_id.clone(),
                    sdp: offer.sdp.clone(),
                }));
                Some(ClientPoint::WebRtcOffered {
                    lease,
                    offer: Box::new(offer),
                })
            }
            Err(error) => {
                warn!(%error, "no WebRTC offer");
                None
            }
        }
    }

    /// The client's own offer for its WebRTC point, instead of answering
    /// ours: we answer it with SDP_ANSWER and the point joins the room.
    fn on_client_offer(
        &mut self,
        point: Option<ClientPoint>,
        offer: &str,
        room: &mut Option<MediaRoom>,
    ) -> Option<ClientPoint> {
        let Some(ClientPoint::WebRtcOffered { lease, offer: ours }) = point else {
            self.refuse_field(
                "a client offer is taken for a WebRTC point (cc.mediaTransport SRTP) before it is connected",
                "sdp",
            );
            return point;
        };
        let accepted = lease
            .rtp_socket()
            .map_err(|e| e.to_string())
            .and_then(|socket| {
                let (point, answer) = self
                    .gateway
                    .webrtc
                    .answer(Instant::now(), lease.local_addr(), &[], offer)
                    .map_err(|e| format!("offer not usable: {e}"))?;
                Ok((point, answer, socket))
            });
        match accepted {
            Ok((point, answer, socket)) => {
                self.outbox.send(ServerMessage::SdpAnswer(SdpExchange {
                    session_id: self.ids.session_id.clone(),
                    call_id: self.ids.call_id.clone(),
                    sdp: answer,
                }));
                let io = PointIo {
                    rtp: Some(socket),
                    ..PointIo::default()
                };
                self.room(room)
                    .add_point(CLIENT_POINT, PointConfig::webrtc(point), io);
                Some(ClientPoint::InRoom {
                    _lease: lease,
                    webrtc: true,
                })
            }
            Err(problem) => {
                self.refuse_field(&problem, "sdp");
                Some(ClientPoint::WebRtcOffered { lease, offer: ours })
            }
        }
    }

    fn watch_media(&mut self, stats: MediaStatsWatch) {
        self.gateway
            .call_media
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(self.ids.call_id.clone(), stats.clone());
        self.media_stats = Some(stats);
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
        let ours = local_audio(self.advertised_ip(), &lease, cc);
        let answer = match offer {
            Some(offer) => sdp::parse_remote(offer)
                .and_then(|remote| sdp::answer(&remote, &ours))
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
        let config = PointConfig::rtp(media.remote, bridged(&media.codec), media.telephone_event)
            .latching(self.latch_config());
        let watch = WatchConfig {
            rtp_timeout: Duration::from_millis(self.gateway.config.media.rtp_timeout_ms),
            sends: media.remote_sends(),
            rtcp: true,
        };
        let io = PointIo {
            rtp: Some(rtp),
            rtcp: Some(rtcp),
            rtmp: None,
        };
        Some((config.watched(watch), io))
    }

    /// How the call's RTP points (the SIP leg, a client's plain RTP point)
    /// learn their far end: strict source as configured.
    fn latch_config(&self) -> LatchConfig {
        LatchConfig::strict(self.gateway.config.media.strict_source)
    }

    fn advertised_ip(&self) -> IpAddr {
        self.gateway.sip.advertised_addr().ip()
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
        let quality = self
            .media_stats
            .as_ref()
            .and_then(|stats| *stats.borrow())
            .map(|s| CallQuality {
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

/// A client RTP point from its SDP: the first codec the bridge can carry,
/// and telephone-event at 8 kHz if present.
fn rtp_point(remote: &sdp::RemoteAudio) -> PointConfig {
    PointConfig::rtp(
        SocketAddr::new(remote.address, remote.port),
        first_bridged(&remote.codecs),
        telephone_event(&remote.codecs),
    )
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

/// What a client's RTP point is offered: the codecs it named that the
/// bridge carries, in its order (all of them when it named none), and
/// telephone-event.
fn client_codecs(named: &[String]) -> Vec<sdp::Codec> {
    let mut carried = sdp::sip_codecs();
    carried.push(sdp::Codec {
        payload_type: 97,
        name: "speex".into(),
        clock_rate: 8000,
        channels: 1,
    });
    carried.push(sdp::Codec {
        payload_type: 98,
        name: "speex".into(),
        clock_rate: 16000,
        channels: 1,
    });
    let ordered = sdp::prefer(carried, named);
    let wanted = |codec: &sdp::Codec| {
        codec.is_telephone_event()
            || named.is_empty()
            || named
                .iter()
                .any(|label| label.eq_ignore_ascii_case(&codec.label()))
    };
    ordered.into_iter().filter(wanted).collect()
}

/// What an RTMP client's players get: the first the client names of
/// Speex 16 kHz (Flash's own), G.711, then Opus (enhanced RTMP); Speex when
/// it names none of them.
fn flv_send_codec(named: &[String]) -> Codec {
    let preference = [
        ("speex/16000", Codec::SpeexWide),
        ("pcmu/8000", Codec::Pcmu),
        ("pcma/8000", Codec::Pcma),
        ("opus/48000", Codec::Opus),
    ];
    preference
        .iter()
        .find(|(label, _)| {
            named
                .iter()
                .any(|name| name.to_ascii_lowercase().starts_with(label))
        })
        .map_or(Codec::SpeexWide, |(_, codec)| *codec)
}

/// The codec's name in the Flash SDP's `m=` line.
fn flash_codec_name(codec: Codec) -> &'static str {
    match codec {
        Codec::Pcmu => "PCMU",
        Codec::Pcma => "PCMA",
        Codec::Opus => "Opus",
        _ => "Speex",
    }
}

/// The call's points in its room: the SIP leg, and the client's own.
pub(crate) const SIP_POINT: PointId = PointId(0);
const CLIENT_POINT: PointId = PointId(1);

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

async fn room_event(room: &mut Option<MediaRoom>) -> Option<RoomEvent> {
    match room {
        Some(room) => room.events.recv().await,
        None => std::future::pending().await,
    }
}

/// Our side of the audio: every codec the gateway can carry, those the
/// client named first.
fn local_audio(ip: IpAddr, lease: &PortLease, cc: Option<&Capabilities>) -> LocalAudio {
    let client_codecs = cc.map(|c| c.audio_codecs.as_slice()).unwrap_or_default();
    LocalAudio {
        address: ip,
        port: lease.rtp_port(),
        codecs: sdp::prefer(sdp::sip_codecs(), client_codecs),
        direction: Direction::SendRecv,
        session_id: u64::from(lease.rtp_port()),
        version: 1,
    }
}
