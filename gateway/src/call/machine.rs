//! A call's state, sans-IO: what the SIP side reported, what the client
//! asked, what the room saw and the call's timers go in with `now`; what
//! to tell the client, to do in SIP and to ask of the room comes out. The
//! call's task ([`super::CallTask`]) owns the SIP call, the room and the
//! ports and carries the outputs out; nothing here awaits or reads the
//! clock, so every path is unit-tested with simulated time.
//!
//! When the gateway decides to end a call (the client hung up, nobody
//! answered in time, the media failed) the client is told at once: the
//! BYE or CANCEL is handed to the SIP call's driver, which outlives the
//! call's task and completes it on its own, so a far end that no longer
//! answers costs the client nothing (up to 64 × T1 before). What SIP
//! reports afterwards is of no interest to the client any more.
//!
//! The SDP of the SIP leg is negotiated in one place, `dialtone_sip`'s
//! `Negotiation` (it answers re-INVITEs with the codec in use); this
//! machine turns what it negotiated into the room's SIP point.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use dialtone_room::{Event as RoomEvent, PointUpdate};
use dialtone_sip::sdp::Direction as SdpDirection;
use dialtone_sip::{CallEvent, EndReason, NegotiatedMedia};
use dialtone_ws::{CallFailReason, CallStage, HoldSide, RejectReason};
use tracing::info;

use super::{bridged, SIP_POINT};
use crate::config::DtmfMethod;

/// What the machine is told.
#[derive(Debug)]
pub(crate) enum CallInput {
    Sip(CallEvent),
    /// The SIP call's events ended without a last event.
    SipGone,
    Hangup,
    Reject(RejectReason),
    /// Incoming: the client accepted, and our answer went out.
    Accepted,
    /// Incoming: the client accepted, but no answer could be made.
    AcceptFailed(String),
    SendDtmf(String),
    /// HOLD_CALL (`sendonly` or `inactive`) or RESUME_CALL (`sendrecv`).
    SetDirection(SdpDirection),
    /// TRANSFER_CALL: REFER with this Refer-To.
    Transfer(String),
    /// A far end's REFER was followed: the call the gateway placed was
    /// answered with this media and takes the old SIP leg's place.
    FarEndReplaced(NegotiatedMedia),
    Room(RoomEvent),
    /// The time [`CallMachine::poll_timeout`] named has come.
    Timeout,
}

/// What the call's task is to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CallOutput {
    /// CALL_STARTING with this stage.
    Stage(CallStage),
    /// CALL_STARTED.
    Started,
    /// CALL_FAILED; the call is over.
    Failed {
        reason: CallFailReason,
        sip_status: Option<u16>,
        detail: String,
    },
    /// CALL_FINISHED; the call is over.
    Finished,
    /// The client's request does not apply now (INVALID_STATE).
    Refused(&'static str),
    /// The request would pass a configured limit (LIMIT_REACHED).
    OverLimit(&'static str),
    /// DTMF_RECEIVED: a digit from the SIP far end.
    Digit { digit: char, method: &'static str },
    /// SIP: 180 Ringing to an incoming call.
    Ring,
    /// SIP: a final error response to an incoming call.
    Reject(u16),
    /// SIP: CANCEL or BYE, however far the call got; the SIP side
    /// completes it without the call's task.
    Hangup,
    /// SIP: these digits by INFO, one each.
    SendInfo(String),
    /// The room: the SIP leg's point, as negotiated; look for in-band
    /// DTMF in its audio when `detect_tones`. `early`: early media (a 18x
    /// with SDP), which a far end may stop at any time without being dead.
    AddSipPoint {
        media: NegotiatedMedia,
        detect_tones: bool,
        early: bool,
    },
    /// The room: the SIP far end changed (re-INVITE, UPDATE).
    UpdateSipPoint(PointUpdate),
    /// The room: the SIP leg's point goes (another far end replaces it).
    RemoveSipPoint,
    /// The room: digits to the SIP far end as RFC 4733 events.
    SendEvents(String),
    /// The room: digits to the SIP far end as in-band tones.
    SendTones(String),
    /// The room: a digit the SIP far end sent by INFO, for the client's
    /// point; reported to the client by the room, or here when there is
    /// no room.
    DigitByInfo(char),
    /// The room is of no more use: its media failed.
    StopMedia,
    /// SIP: a re-INVITE with our media in this direction (hold, resume).
    SetDirection(SdpDirection),
    /// The room: the SIP leg hears nobody (its far end is on hold), or
    /// hears again.
    Deaf(bool),
    /// CALL_HELD: by the client, or by the far end.
    Held(HoldSide),
    /// CALL_RESUMED.
    Resumed(HoldSide),
    /// ERROR for HOLD_CALL / RESUME_CALL: the far end refused it.
    DirectionRefused(String),
    /// The room: ringback toward the client starts, or stops.
    Ringback(bool),
    /// The room: music on hold toward the SIP far end starts, or stops.
    HoldMusic(bool),
    /// SIP: REFER the far end to this URI.
    Transfer(String),
    /// TRANSFER_PROGRESS (`stage` `REFER` or `CALL`).
    TransferProgress {
        stage: &'static str,
        status: u16,
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Outgoing,
    Incoming,
}

/// How the machine decides what it is not told.
#[derive(Debug, Clone)]
pub(crate) struct CallSettings {
    /// Digits go by the first of these the call can use.
    pub(crate) dtmf_send: Vec<DtmfMethod>,
    /// Look for in-band DTMF in the SIP leg's audio when it has no
    /// telephone-event (`None`: never; `Some(true)`: always).
    pub(crate) detect_tones: Option<bool>,
    /// Outgoing: cancelled when not answered in this time.
    pub(crate) no_answer: Duration,
    /// Incoming: rejected with 480 when the client has not decided in this
    /// time.
    pub(crate) decision: Duration,
    /// Digits one SEND_DTMF_SIGNAL may send as SIP INFO, one transaction
    /// each (`limits.info_digit_queue`).
    pub(crate) max_info_digits: usize,
    /// Play ringback to the client while the far end rings silently.
    pub(crate) ringback: bool,
    /// Play music to a far end the client holds (`sendonly`).
    pub(crate) hold_music: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// Incoming, offered to the client, not yet accepted.
    Offered,
    /// Outgoing before an answer, or incoming accepted before the ACK.
    Setup,
    Established,
    /// CALL_FAILED or CALL_FINISHED went out. There is no phase between
    /// asking SIP to end the call and this one: the client is told at once.
    Over,
}

/// Why the gateway ends a call itself.
#[derive(Debug, Clone, PartialEq)]
enum Ending {
    ClientHangup,
    NoAnswer,
    MediaFailed(String),
}

pub(crate) struct CallMachine {
    direction: Direction,
    settings: CallSettings,
    phase: Phase,
    /// Outgoing: when to give up without an answer. Incoming: when the
    /// client's decision is due.
    deadline: Option<Instant>,
    /// The room has the SIP leg's point.
    sip_point: bool,
    /// The SIP far end takes telephone-events.
    sip_events: bool,
    /// Our direction toward the far end as last agreed (`sendrecv` unless
    /// the client holds the call) and as asked for, while a re-INVITE is out.
    local_direction: SdpDirection,
    asked_direction: Option<SdpDirection>,
    /// The far end holds the call (its SDP says it sends nothing to us).
    remote_held: bool,
    /// Ringback plays toward the client.
    ringing: bool,
    outputs: VecDeque<CallOutput>,
}

impl CallMachine {
    /// An outgoing call whose INVITE is out: CALL_STARTING TRYING first.
    pub(crate) fn outgoing(now: Instant, settings: CallSettings) -> CallMachine {
        let mut machine = CallMachine::new(Direction::Outgoing, settings, Phase::Setup);
        machine.deadline = now.checked_add(machine.settings.no_answer);
        machine.emit(CallOutput::Stage(CallStage::Trying));
        machine
    }

    /// An incoming call offered to the client (INCOMING_CALL is out): the
    /// caller hears ringing.
    pub(crate) fn incoming(now: Instant, settings: CallSettings) -> CallMachine {
        let mut machine = CallMachine::new(Direction::Incoming, settings, Phase::Offered);
        machine.deadline = now.checked_add(machine.settings.decision);
        machine.emit(CallOutput::Ring);
        machine
    }

    fn new(direction: Direction, settings: CallSettings, phase: Phase) -> CallMachine {
        CallMachine {
            direction,
            settings,
            phase,
            deadline: None,
            sip_point: false,
            sip_events: false,
            local_direction: SdpDirection::SendRecv,
            asked_direction: None,
            remote_held: false,
            ringing: false,
            outputs: VecDeque::new(),
        }
    }

    /// Whether the client has yet to accept or reject the call.
    pub(crate) fn is_offered(&self) -> bool {
        self.phase == Phase::Offered
    }

    pub(crate) fn is_established(&self) -> bool {
        self.phase == Phase::Established
    }

    pub(crate) fn is_over(&self) -> bool {
        self.phase == Phase::Over
    }

    pub(crate) fn poll_output(&mut self) -> Option<CallOutput> {
        self.outputs.pop_front()
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Offered => self.deadline,
            Phase::Setup if self.direction == Direction::Outgoing => self.deadline,
            _ => None,
        }
    }

    pub(crate) fn handle(&mut self, now: Instant, input: CallInput) {
        if self.phase == Phase::Over {
            return;
        }
        if self.phase == Phase::Offered {
            self.offered(now, input);
            return;
        }
        match input {
            CallInput::Sip(event) => self.on_sip(event),
            CallInput::SipGone => self.finish(),
            CallInput::Hangup => self.end(Ending::ClientHangup),
            CallInput::Reject(_) | CallInput::Accepted | CallInput::AcceptFailed(_) => self
                .refuse("ACCEPT_CALL and REJECT_CALL apply to an incoming call not yet answered"),
            CallInput::SendDtmf(digits) => self.send_digits(digits),
            CallInput::SetDirection(direction) => self.set_direction(direction),
            CallInput::Transfer(target) => {
                if self.phase == Phase::Established {
                    info!(%target, "transferring the far end");
                    self.emit(CallOutput::Transfer(target));
                } else {
                    self.refuse("a transfer applies to a started call");
                }
            }
            CallInput::FarEndReplaced(media) => self.far_end_replaced(media),
            CallInput::Room(event) => self.on_room(event),
            CallInput::Timeout => {
                let due = self.poll_timeout().is_some_and(|at| at <= now);
                if due {
                    info!("no answer in time; hanging up");
                    self.end(Ending::NoAnswer);
                }
            }
        }
    }

    /// Before the client decides on an incoming call.
    fn offered(&mut self, now: Instant, input: CallInput) {
        match input {
            CallInput::Accepted => {
                self.phase = Phase::Setup;
                self.deadline = None;
            }
            CallInput::AcceptFailed(problem) => {
                self.emit(CallOutput::Reject(488));
                self.fail(CallFailReason::MediaFailed, Some(488), problem);
            }
            CallInput::Reject(reason) => {
                self.emit(CallOutput::Reject(reject_status(reason)));
                self.finish();
            }
            CallInput::Hangup => {
                self.emit(CallOutput::Reject(480));
                self.finish();
            }
            CallInput::SendDtmf(_) | CallInput::SetDirection(_) | CallInput::Transfer(_) => {
                self.refuse("this applies once the call is accepted")
            }
            // Before an answer only the caller giving up can happen.
            CallInput::SipGone
            | CallInput::Sip(CallEvent::Ended { .. } | CallEvent::Failed { .. }) => self.finish(),
            CallInput::Sip(_) | CallInput::Room(_) | CallInput::FarEndReplaced(_) => {}
            CallInput::Timeout => {
                if self.deadline.is_some_and(|at| at <= now) {
                    self.emit(CallOutput::Reject(480));
                    self.fail(
                        CallFailReason::Unavailable,
                        Some(480),
                        "the client did not answer in time".to_string(),
                    );
                }
            }
        }
    }

    fn on_sip(&mut self, event: CallEvent) {
        let outgoing = self.direction == Direction::Outgoing;
        match event {
            CallEvent::Progress {
                status: 180, media, ..
            } if outgoing => {
                self.emit(CallOutput::Stage(CallStage::Ringing));
                match media {
                    Some(media) if self.phase == Phase::Setup => self.sip_media(media, true),
                    // Silence while the far end rings: ringback, when configured.
                    _ if self.settings.ringback && !self.sip_point && !self.ringing => {
                        self.ringing = true;
                        self.emit(CallOutput::Ringback(true));
                    }
                    _ => {}
                }
            }
            CallEvent::Progress {
                status: 181..=183,
                media,
                ..
            } if outgoing => {
                self.emit(CallOutput::Stage(CallStage::SessionProgress));
                if let Some(media) = media.filter(|_| self.phase == Phase::Setup) {
                    info!("early media");
                    self.sip_media(media, true);
                }
            }
            CallEvent::Progress { .. } => {}
            CallEvent::Established { media, .. } => {
                if self.phase == Phase::Setup {
                    self.phase = Phase::Established;
                }
                info!("call established");
                self.stop_ringback();
                if let Some(media) = media {
                    self.sip_media(media, false);
                }
                self.emit(CallOutput::Started);
            }
            CallEvent::MediaChanged { media, changes, .. } => {
                info!(?changes, "far end changed the media");
                let held = matches!(
                    media.remote_direction,
                    SdpDirection::SendOnly | SdpDirection::Inactive
                );
                if held != self.remote_held {
                    self.remote_held = held;
                    self.emit(if held {
                        CallOutput::Held(HoldSide::Remote)
                    } else {
                        CallOutput::Resumed(HoldSide::Remote)
                    });
                }
                self.sip_events = media.telephone_event.is_some();
                self.update_sip_point(&media);
            }
            CallEvent::Info { content_type, body } => {
                match dialtone_room::dtmf_relay::parse_dtmf_info(&content_type, body.as_bytes()) {
                    Ok(info) => self.emit(CallOutput::DigitByInfo(info.digit)),
                    Err(error) => info!(%content_type, %error, "INFO without a digit"),
                }
            }
            CallEvent::DirectionChanged { direction, media } => {
                self.asked_direction = None;
                self.local_direction = direction;
                info!(?direction, "our direction changed");
                self.update_sip_point(&media);
                let held = direction != SdpDirection::SendRecv;
                self.emit(CallOutput::Deaf(held));
                // `inactive` sends nothing at all: music only with `sendonly`.
                if self.settings.hold_music {
                    self.emit(CallOutput::HoldMusic(direction == SdpDirection::SendOnly));
                }
                self.emit(if held {
                    CallOutput::Held(HoldSide::Local)
                } else {
                    CallOutput::Resumed(HoldSide::Local)
                });
            }
            CallEvent::DirectionRefused {
                direction,
                status,
                reason,
            } => {
                self.asked_direction = None;
                info!(?direction, ?status, %reason, "the far end refused our direction");
                self.emit(CallOutput::Deaf(
                    self.local_direction != SdpDirection::SendRecv,
                ));
                let status = status.map(|s| format!("{s} ")).unwrap_or_default();
                self.emit(CallOutput::DirectionRefused(format!(
                    "the far end refused: {status}{reason}"
                )));
            }
            CallEvent::TransferProgress {
                status,
                reason,
                notified,
            } => {
                let stage = if notified { "CALL" } else { "REFER" };
                self.emit(CallOutput::TransferProgress {
                    stage,
                    status,
                    reason,
                });
                // The far end reached the target: our part of the call is done.
                if notified && (200..300).contains(&status) {
                    info!("transfer succeeded; hanging up");
                    self.end(Ending::ClientHangup);
                }
            }
            CallEvent::Failed { status, reason } => self.fail(
                CallFailReason::from_sip_status(status),
                Some(status),
                reason,
            ),
            CallEvent::Ended { reason } => self.ended(reason),
            // The call's task follows a REFER (it places the new call); the
            // machine hears of the new far end as a change of media.
            CallEvent::Referred { .. } => {}
        }
    }

    /// HOLD_CALL / RESUME_CALL: a re-INVITE in that direction. The far end
    /// stops hearing the client at once on hold; it hears it again once
    /// the resume is answered.
    fn set_direction(&mut self, direction: SdpDirection) {
        if self.phase != Phase::Established {
            self.refuse("hold and resume apply to a started call");
            return;
        }
        let current = self.asked_direction.unwrap_or(self.local_direction);
        if direction == current {
            self.refuse(if direction == SdpDirection::SendRecv {
                "the call is not on hold"
            } else {
                "the call is on hold already"
            });
            return;
        }
        self.asked_direction = Some(direction);
        if direction != SdpDirection::SendRecv {
            self.emit(CallOutput::Deaf(true));
        }
        self.emit(CallOutput::SetDirection(direction));
    }

    /// The SIP leg's point brought up to date with `media`.
    fn update_sip_point(&mut self, media: &NegotiatedMedia) {
        if self.sip_point {
            self.emit(CallOutput::UpdateSipPoint(PointUpdate {
                remote: media.remote,
                audio: bridged(&media.codec),
                telephone_event: media.telephone_event,
                sends: media.remote_sends(),
            }));
        }
    }

    /// The SIP leg's media, early or final: the point is added, or (the
    /// 2xx after early media) brought up to date with what the answer says.
    fn sip_media(&mut self, media: NegotiatedMedia, early: bool) {
        self.stop_ringback();
        self.sip_events = media.telephone_event.is_some();
        if self.sip_point {
            self.update_sip_point(&media);
            return;
        }
        self.sip_point = true;
        let detect_tones = self.settings.detect_tones.unwrap_or(!self.sip_events);
        self.emit(CallOutput::AddSipPoint {
            media,
            detect_tones,
            early,
        });
    }

    /// Another far end in the old one's place (a REFER followed): a fresh
    /// SIP point (its codec, address and keys may all differ), and the
    /// holds of the old call are over, the new one was offered sendrecv.
    fn far_end_replaced(&mut self, media: NegotiatedMedia) {
        if self.phase != Phase::Established {
            return;
        }
        info!("a new far end takes the call's place");
        if std::mem::take(&mut self.sip_point) {
            self.emit(CallOutput::RemoveSipPoint);
        }
        if std::mem::take(&mut self.remote_held) {
            self.emit(CallOutput::Resumed(HoldSide::Remote));
        }
        self.asked_direction = None;
        if self.local_direction != SdpDirection::SendRecv {
            self.local_direction = SdpDirection::SendRecv;
            if self.settings.hold_music {
                self.emit(CallOutput::HoldMusic(false));
            }
            self.emit(CallOutput::Resumed(HoldSide::Local));
        }
        self.sip_media(media, false);
    }

    /// The far end's own audio (or the call's end) takes over from ringback.
    fn stop_ringback(&mut self) {
        if std::mem::take(&mut self.ringing) {
            self.emit(CallOutput::Ringback(false));
        }
    }

    /// SIP ended a call the gateway had not decided to end.
    fn ended(&mut self, reason: EndReason) {
        if reason == EndReason::Timeout && self.phase != Phase::Established {
            self.fail(
                CallFailReason::Unavailable,
                Some(408),
                "the far end stopped answering".to_string(),
            );
        } else {
            info!(?reason, "call ended");
            self.finish();
        }
    }

    fn on_room(&mut self, event: RoomEvent) {
        match event {
            RoomEvent::Digit {
                point: SIP_POINT,
                digit,
                method,
            } => self.emit(CallOutput::Digit {
                digit,
                method: method.as_str(),
            }),
            RoomEvent::DigitForSignalling {
                point: SIP_POINT,
                digit,
            } if self.phase == Phase::Established => {
                self.emit(CallOutput::SendInfo(digit.to_string()));
            }
            RoomEvent::MediaTimeout { timeout, .. } => {
                let problem = format!("no RTP from the far end for {:?}", timeout.silent_for);
                self.media_failed(problem);
            }
            RoomEvent::MediaFailed { problem, .. } => self.media_failed(problem),
            RoomEvent::Digit { .. }
            | RoomEvent::DigitForSignalling { .. }
            | RoomEvent::Stats { .. } => {}
        }
    }

    fn media_failed(&mut self, problem: String) {
        // The room is of no more use, and the client hears of the failure
        // now rather than after the BYE to a far end that may be dead.
        self.emit(CallOutput::StopMedia);
        self.end(Ending::MediaFailed(problem));
    }

    /// SEND_DTMF_SIGNAL: the first configured method the call can use.
    fn send_digits(&mut self, digits: String) {
        if self.phase != Phase::Established {
            self.refuse("digits can be sent once the call is started");
            return;
        }
        let methods = self.settings.dtmf_send.clone();
        for method in methods {
            match method {
                DtmfMethod::Rfc4733 if self.sip_point && self.sip_events => {
                    self.emit(CallOutput::SendEvents(digits));
                    return;
                }
                DtmfMethod::Info if digits.chars().count() > self.settings.max_info_digits => {
                    self.emit(CallOutput::OverLimit(
                        "too many digits to send as SIP INFO (limits.info_digit_queue)",
                    ));
                    return;
                }
                DtmfMethod::Info => {
                    self.emit(CallOutput::SendInfo(digits));
                    return;
                }
                DtmfMethod::Inband if self.sip_point => {
                    self.emit(CallOutput::SendTones(digits));
                    return;
                }
                _ => {}
            }
        }
        self.refuse("no configured DTMF method (media.dtmf_send) applies to this call");
    }

    /// The gateway ends the call: SIP is asked to hang up, and the client
    /// is told at once, without waiting for the BYE or CANCEL transaction
    /// (the SIP side completes it on its own, a 200 crossing our CANCEL
    /// included).
    fn end(&mut self, why: Ending) {
        self.emit(CallOutput::Hangup);
        match why {
            Ending::ClientHangup => self.finish(),
            Ending::NoAnswer => self.fail(
                CallFailReason::Unavailable,
                Some(408),
                "no answer".to_string(),
            ),
            Ending::MediaFailed(problem) => {
                self.fail(CallFailReason::MediaFailed, None, problem);
            }
        }
    }

    fn fail(&mut self, reason: CallFailReason, sip_status: Option<u16>, detail: String) {
        info!(?reason, ?sip_status, %detail, "call failed");
        self.phase = Phase::Over;
        self.emit(CallOutput::Failed {
            reason,
            sip_status,
            detail,
        });
    }

    fn finish(&mut self) {
        self.phase = Phase::Over;
        self.emit(CallOutput::Finished);
    }

    fn refuse(&mut self, message: &'static str) {
        self.emit(CallOutput::Refused(message));
    }

    fn emit(&mut self, output: CallOutput) {
        self.outputs.push_back(output);
    }
}

fn reject_status(reason: RejectReason) -> u16 {
    match reason {
        RejectReason::Busy => 486,
        RejectReason::Decline => 603,
        RejectReason::Unavailable => 480,
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use dialtone_codecs::Codec;
    use dialtone_room::inactivity::{MediaTimeout, MediaTimeoutReason};
    use dialtone_room::{DigitMethod, PointId};
    use dialtone_sip::sdp::{self, Direction as SdpDirection};
    use dialtone_sip::MediaChanges;

    use super::*;

    const NO_ANSWER: Duration = Duration::from_secs(30);
    const DECISION: Duration = Duration::from_secs(60);

    fn settings(dtmf_send: Vec<DtmfMethod>) -> CallSettings {
        CallSettings {
            dtmf_send,
            detect_tones: None,
            no_answer: NO_ANSWER,
            decision: DECISION,
            max_info_digits: 4,
            ringback: false,
            hold_music: true,
        }
    }

    fn media(name: &str, payload_type: u8, telephone_event: Option<u8>) -> NegotiatedMedia {
        NegotiatedMedia {
            remote: SocketAddr::from(([127, 0, 0, 1], 4000)),
            codec: sdp::Codec {
                payload_type,
                name: name.to_string(),
                clock_rate: 8000,
                channels: 1,
            },
            telephone_event,
            remote_direction: SdpDirection::SendRecv,
            local_direction: SdpDirection::SendRecv,
            srtp: None,
        }
    }

    fn established(media: Option<NegotiatedMedia>) -> CallInput {
        CallInput::Sip(CallEvent::Established { media, sdp: None })
    }

    fn outputs(machine: &mut CallMachine) -> Vec<CallOutput> {
        std::iter::from_fn(|| machine.poll_output()).collect()
    }

    /// An outgoing call, answered with PCMU and telephone-event.
    fn answered(start: Instant, dtmf_send: Vec<DtmfMethod>) -> CallMachine {
        let mut machine = CallMachine::outgoing(start, settings(dtmf_send));
        machine.handle(start, established(Some(media("PCMU", 0, Some(101)))));
        outputs(&mut machine);
        machine
    }

    #[test]
    fn an_outgoing_call_reports_its_progress_and_its_answer() {
        let start = Instant::now();
        let mut machine = CallMachine::outgoing(start, settings(vec![DtmfMethod::Rfc4733]));
        assert_eq!(
            outputs(&mut machine),
            [CallOutput::Stage(CallStage::Trying)]
        );
        for status in [100, 180, 183] {
            let progress = CallEvent::Progress {
                status,
                sdp: None,
                media: None,
            };
            machine.handle(start, CallInput::Sip(progress));
        }
        assert_eq!(
            outputs(&mut machine),
            [
                CallOutput::Stage(CallStage::Ringing),
                CallOutput::Stage(CallStage::SessionProgress)
            ]
        );
        let pcmu = media("PCMU", 0, Some(101));
        machine.handle(start, established(Some(pcmu.clone())));
        assert_eq!(
            outputs(&mut machine),
            [
                CallOutput::AddSipPoint {
                    media: pcmu,
                    detect_tones: false,
                    early: false,
                },
                CallOutput::Started
            ]
        );
        assert_eq!(machine.poll_timeout(), None, "no setup timer once answered");
    }

    fn ended(reason: EndReason) -> CallInput {
        CallInput::Sip(CallEvent::Ended { reason })
    }

    fn silent_for(silent_for: Duration) -> CallInput {
        CallInput::Room(RoomEvent::MediaTimeout {
            point: SIP_POINT,
            timeout: MediaTimeout {
                reason: MediaTimeoutReason::Stopped,
                silent_for,
            },
        })
    }

    /// 64 × T1 with the default T1: how long a BYE or CANCEL to a far end
    /// that no longer answers takes to time out.
    const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(32);

    #[test]
    fn an_unanswered_call_is_given_up_once_and_fails_with_408_at_once() {
        let start = Instant::now();
        let mut machine = CallMachine::outgoing(start, settings(vec![]));
        outputs(&mut machine);
        assert_eq!(machine.poll_timeout(), Some(start + NO_ANSWER));
        machine.handle(start + NO_ANSWER / 2, CallInput::Timeout);
        assert!(outputs(&mut machine).is_empty(), "not yet");
        machine.handle(start + NO_ANSWER, CallInput::Timeout);
        // The CANCEL goes out and the client hears at once: a callee (or a
        // proxy) that never answers the CANCEL does not delay CALL_FAILED.
        assert_eq!(
            outputs(&mut machine),
            [
                CallOutput::Hangup,
                CallOutput::Failed {
                    reason: CallFailReason::Unavailable,
                    sip_status: Some(408),
                    detail: "no answer".to_string()
                }
            ]
        );
        assert!(machine.is_over());
        assert_eq!(machine.poll_timeout(), None);
        // What SIP reports later is nobody's business any more.
        let later = start + NO_ANSWER + TRANSACTION_TIMEOUT;
        machine.handle(later, ended(EndReason::Local));
        machine.handle(later, CallInput::Hangup);
        machine.handle(later, established(Some(media("PCMU", 0, None))));
        assert!(outputs(&mut machine).is_empty(), "nothing after the end");
    }

    #[test]
    fn sip_failures_and_ends_map_to_what_the_client_is_told() {
        let start = Instant::now();
        let mut machine = CallMachine::outgoing(start, settings(vec![]));
        let busy = CallEvent::Failed {
            status: 486,
            reason: "Busy Here".to_string(),
        };
        machine.handle(start, CallInput::Sip(busy));
        assert_eq!(
            outputs(&mut machine).last(),
            Some(&CallOutput::Failed {
                reason: CallFailReason::Busy,
                sip_status: Some(486),
                detail: "Busy Here".to_string()
            })
        );

        let mut machine = CallMachine::outgoing(start, settings(vec![]));
        machine.handle(start, ended(EndReason::Timeout));
        assert_eq!(
            outputs(&mut machine).last(),
            Some(&CallOutput::Failed {
                reason: CallFailReason::Unavailable,
                sip_status: Some(408),
                detail: "the far end stopped answering".to_string()
            })
        );

        // The keepalive found the far end gone: the driver hangs up itself.
        let mut machine = answered(start, vec![]);
        machine.handle(start, ended(EndReason::Timeout));
        assert_eq!(outputs(&mut machine), [CallOutput::Finished]);

        let mut machine = answered(start, vec![]);
        machine.handle(start, ended(EndReason::Remote));
        assert_eq!(outputs(&mut machine), [CallOutput::Finished]);
    }

    #[test]
    fn a_dead_far_end_is_reported_when_the_media_timeout_fires_not_after_the_bye() {
        let start = Instant::now();
        let rtp_timeout = Duration::from_secs(30);
        let mut machine = answered(start, vec![]);
        let fired = start + rtp_timeout;
        machine.handle(fired, silent_for(rtp_timeout));
        assert_eq!(
            outputs(&mut machine),
            [
                CallOutput::StopMedia,
                CallOutput::Hangup,
                CallOutput::Failed {
                    reason: CallFailReason::MediaFailed,
                    sip_status: None,
                    detail: "no RTP from the far end for 30s".to_string()
                }
            ],
            "the client hears when the timeout fires, the BYE goes out beside it"
        );
        assert!(machine.is_over());
        // The room may still report before it is dropped, and the BYE to
        // the dead far end ends 64 × T1 later: neither says anything more.
        machine.handle(fired, silent_for(rtp_timeout));
        machine.handle(fired + TRANSACTION_TIMEOUT, ended(EndReason::Local));
        assert!(outputs(&mut machine).is_empty());
    }

    #[test]
    fn hanging_up_toward_a_far_end_that_stopped_answering_finishes_at_once() {
        let start = Instant::now();
        let mut machine = answered(start, vec![]);
        let hangup = start + Duration::from_secs(5);
        machine.handle(hangup, CallInput::Hangup);
        assert_eq!(
            outputs(&mut machine),
            [CallOutput::Hangup, CallOutput::Finished]
        );
        // Before, the call waited for the BYE's end, and the media timeout
        // firing meanwhile turned CALL_FINISHED into CALL_FAILED.
        machine.handle(
            hangup + Duration::from_secs(30),
            silent_for(Duration::from_secs(30)),
        );
        machine.handle(hangup + TRANSACTION_TIMEOUT, ended(EndReason::Timeout));
        assert!(outputs(&mut machine).is_empty());
        machine.handle(hangup, CallInput::Hangup);
        assert!(
            outputs(&mut machine).is_empty(),
            "a second HANGUP finds no call"
        );
    }

    #[test]
    fn hanging_up_before_the_answer_finishes_at_once_whatever_sip_answers_later() {
        let start = Instant::now();
        let mut machine = CallMachine::outgoing(start, settings(vec![]));
        let progress = CallEvent::Progress {
            status: 180,
            sdp: None,
            media: None,
        };
        machine.handle(start, CallInput::Sip(progress));
        outputs(&mut machine);
        machine.handle(start, CallInput::Hangup);
        assert_eq!(
            outputs(&mut machine),
            [CallOutput::Hangup, CallOutput::Finished]
        );
        assert_eq!(machine.poll_timeout(), None, "no no-answer timer left");
        // A 200 crossing the CANCEL: the SIP side ACKs and BYEs it; the
        // client, told already, hears of no start and no failure.
        machine.handle(start, established(Some(media("PCMU", 0, None))));
        machine.handle(start + NO_ANSWER, CallInput::Timeout);
        machine.handle(start, ended(EndReason::Local));
        assert!(outputs(&mut machine).is_empty());

        // Incoming, accepted, hung up before the caller's ACK.
        let mut machine = CallMachine::incoming(start, settings(vec![]));
        machine.handle(start, CallInput::Accepted);
        outputs(&mut machine);
        machine.handle(start, CallInput::Hangup);
        assert_eq!(
            outputs(&mut machine),
            [CallOutput::Hangup, CallOutput::Finished]
        );
    }

    #[test]
    fn a_media_failure_before_the_answer_cancels_and_fails_at_once() {
        let start = Instant::now();
        let mut machine = CallMachine::outgoing(start, settings(vec![]));
        outputs(&mut machine);
        let failed = RoomEvent::MediaFailed {
            point: PointId(1),
            problem: "DTLS: closed".to_string(),
        };
        machine.handle(start, CallInput::Room(failed));
        assert_eq!(
            outputs(&mut machine),
            [
                CallOutput::StopMedia,
                CallOutput::Hangup,
                CallOutput::Failed {
                    reason: CallFailReason::MediaFailed,
                    sip_status: None,
                    detail: "DTLS: closed".to_string()
                }
            ]
        );
        machine.handle(start, ended(EndReason::Local));
        assert!(outputs(&mut machine).is_empty());
    }

    #[test]
    fn digits_go_by_the_first_configured_method_the_call_can_use() {
        let start = Instant::now();
        let order = vec![DtmfMethod::Rfc4733, DtmfMethod::Info];
        let mut machine = CallMachine::outgoing(start, settings(order.clone()));
        outputs(&mut machine);
        machine.handle(start, CallInput::SendDtmf("1".to_string()));
        assert_eq!(
            outputs(&mut machine),
            [CallOutput::Refused(
                "digits can be sent once the call is started"
            )]
        );
        let mut machine = answered(start, order.clone());
        machine.handle(start, CallInput::SendDtmf("12#".to_string()));
        assert_eq!(
            outputs(&mut machine),
            [CallOutput::SendEvents("12#".to_string())]
        );
        // A re-INVITE without telephone-event: digits go by INFO from then on.
        let changed = CallEvent::MediaChanged {
            media: media("PCMA", 8, None),
            changes: MediaChanges::default(),
            sdp: String::new(),
        };
        machine.handle(start, CallInput::Sip(changed));
        machine.handle(start, CallInput::SendDtmf("3".to_string()));
        let out = outputs(&mut machine);
        assert_eq!(out.last(), Some(&CallOutput::SendInfo("3".to_string())));
        // Each INFO is a transaction: a string longer than the queue is refused whole.
        machine.handle(start, CallInput::SendDtmf("12345".to_string()));
        assert!(matches!(
            outputs(&mut machine).as_slice(),
            [CallOutput::OverLimit(_)]
        ));

        let mut machine = answered(start, vec![DtmfMethod::Inband]);
        machine.handle(start, CallInput::SendDtmf("4".to_string()));
        assert_eq!(
            outputs(&mut machine),
            [CallOutput::SendTones("4".to_string())]
        );

        let mut machine = CallMachine::outgoing(start, settings(vec![DtmfMethod::Rfc4733]));
        machine.handle(start, established(None));
        outputs(&mut machine);
        machine.handle(start, CallInput::SendDtmf("5".to_string()));
        assert_eq!(
            outputs(&mut machine),
            [CallOutput::Refused(
                "no configured DTMF method (media.dtmf_send) applies to this call"
            )]
        );
    }

    #[test]
    fn a_re_invite_reconfigures_the_sip_point_as_negotiated() {
        let start = Instant::now();
        let mut machine = answered(start, vec![]);
        let mut held = media("G722", 9, Some(101));
        held.remote_direction = SdpDirection::Inactive;
        held.remote = SocketAddr::from(([127, 0, 0, 1], 5000));
        let changed = CallEvent::MediaChanged {
            media: held,
            changes: MediaChanges::default(),
            sdp: String::new(),
        };
        machine.handle(start, CallInput::Sip(changed));
        assert_eq!(
            outputs(&mut machine),
            [
                CallOutput::Held(HoldSide::Remote),
                CallOutput::UpdateSipPoint(PointUpdate {
                    remote: SocketAddr::from(([127, 0, 0, 1], 5000)),
                    audio: Some((9, Codec::G722)),
                    telephone_event: Some(101),
                    sends: false,
                })
            ]
        );
    }

    #[test]
    fn digits_from_the_far_end_reach_the_client_and_the_client_point() {
        let start = Instant::now();
        let mut machine = answered(start, vec![]);
        let digit = RoomEvent::Digit {
            point: SIP_POINT,
            digit: '7',
            method: DigitMethod::Rfc4733,
        };
        let from_client = RoomEvent::Digit {
            point: PointId(1),
            digit: '8',
            method: DigitMethod::Rfc4733,
        };
        let for_info = RoomEvent::DigitForSignalling {
            point: SIP_POINT,
            digit: '9',
        };
        for event in [digit, from_client, for_info] {
            machine.handle(start, CallInput::Room(event));
        }
        let info = CallEvent::Info {
            content_type: "application/dtmf-relay".to_string(),
            body: "Signal=5\r\nDuration=160\r\n".to_string(),
        };
        machine.handle(start, CallInput::Sip(info));
        assert_eq!(
            outputs(&mut machine),
            [
                CallOutput::Digit {
                    digit: '7',
                    method: "RFC4733"
                },
                CallOutput::SendInfo("9".to_string()),
                CallOutput::DigitByInfo('5'),
            ]
        );
    }

    #[test]
    fn an_incoming_call_waits_for_the_client_then_runs_like_any_other() {
        let start = Instant::now();
        let mut machine = CallMachine::incoming(start, settings(vec![]));
        assert_eq!(outputs(&mut machine), [CallOutput::Ring]);
        assert!(machine.is_offered());
        machine.handle(start, CallInput::SendDtmf("1".to_string()));
        assert_eq!(
            outputs(&mut machine),
            [CallOutput::Refused(
                "this applies once the call is accepted"
            )]
        );
        machine.handle(start + DECISION, CallInput::Timeout);
        assert_eq!(
            outputs(&mut machine),
            [
                CallOutput::Reject(480),
                CallOutput::Failed {
                    reason: CallFailReason::Unavailable,
                    sip_status: Some(480),
                    detail: "the client did not answer in time".to_string()
                }
            ]
        );

        for (reason, status) in [(RejectReason::Busy, 486), (RejectReason::Decline, 603)] {
            let mut machine = CallMachine::incoming(start, settings(vec![]));
            machine.handle(start, CallInput::Reject(reason));
            let out = outputs(&mut machine);
            assert_eq!(
                &out[1..],
                [CallOutput::Reject(status), CallOutput::Finished]
            );
        }

        let mut machine = CallMachine::incoming(start, settings(vec![]));
        machine.handle(
            start,
            CallInput::AcceptFailed("no free media port".to_string()),
        );
        let out = outputs(&mut machine);
        assert_eq!(out[1], CallOutput::Reject(488));

        let mut machine = CallMachine::incoming(start, settings(vec![]));
        let cancelled = CallEvent::Ended {
            reason: EndReason::CallerCancelled,
        };
        machine.handle(start, CallInput::Sip(cancelled));
        assert_eq!(outputs(&mut machine).last(), Some(&CallOutput::Finished));

        let mut machine = CallMachine::incoming(start, settings(vec![]));
        machine.handle(start, CallInput::Accepted);
        assert_eq!(machine.poll_timeout(), None, "no timer once accepted");
        machine.handle(start, established(Some(media("PCMU", 0, None))));
        let out = outputs(&mut machine);
        assert!(out.contains(&CallOutput::AddSipPoint {
            media: media("PCMU", 0, None),
            detect_tones: true,
            early: false,
        }));
        assert_eq!(out.last(), Some(&CallOutput::Started));
        machine.handle(start, CallInput::Reject(RejectReason::Busy));
        assert_eq!(
            outputs(&mut machine),
            [CallOutput::Refused(
                "ACCEPT_CALL and REJECT_CALL apply to an incoming call not yet answered"
            )]
        );
    }

    #[test]
    fn early_media_joins_the_room_and_the_answer_takes_over() {
        let start = Instant::now();
        let mut machine = CallMachine::outgoing(start, settings(vec![]));
        outputs(&mut machine);
        let early = media("PCMU", 0, Some(101));
        let progress = CallEvent::Progress {
            status: 183,
            sdp: None,
            media: Some(early.clone()),
        };
        machine.handle(start, CallInput::Sip(progress));
        assert_eq!(
            outputs(&mut machine),
            [
                CallOutput::Stage(CallStage::SessionProgress),
                CallOutput::AddSipPoint {
                    media: early,
                    detect_tones: false,
                    early: true,
                },
            ],
            "the client hears the far end before the answer; silence then is no failure"
        );
        let answered = media("PCMA", 8, None);
        machine.handle(start, established(Some(answered.clone())));
        assert_eq!(
            outputs(&mut machine),
            [
                CallOutput::UpdateSipPoint(PointUpdate {
                    remote: answered.remote,
                    audio: bridged(&answered.codec),
                    telephone_event: None,
                    sends: true,
                }),
                CallOutput::Started
            ],
            "one point, brought up to date by the 2xx's answer"
        );
    }

    #[test]
    fn hold_and_resume_by_the_client_and_by_the_far_end() {
        let start = Instant::now();
        let mut machine = CallMachine::outgoing(start, settings(vec![]));
        machine.handle(start, CallInput::SetDirection(SdpDirection::SendOnly));
        assert!(
            matches!(outputs(&mut machine).last(), Some(CallOutput::Refused(_))),
            "no hold before the answer"
        );
        machine.handle(start, established(Some(media("PCMU", 0, Some(101)))));
        outputs(&mut machine);

        machine.handle(start, CallInput::SetDirection(SdpDirection::SendOnly));
        assert_eq!(
            outputs(&mut machine),
            [
                CallOutput::Deaf(true),
                CallOutput::SetDirection(SdpDirection::SendOnly)
            ],
            "the far end stops hearing the client at once"
        );
        machine.handle(start, CallInput::SetDirection(SdpDirection::SendOnly));
        assert!(matches!(
            outputs(&mut machine)[..],
            [CallOutput::Refused(_)]
        ));
        let held = NegotiatedMedia {
            remote_direction: SdpDirection::RecvOnly,
            local_direction: SdpDirection::SendOnly,
            ..media("PCMU", 0, Some(101))
        };
        let changed = CallEvent::DirectionChanged {
            direction: SdpDirection::SendOnly,
            media: held.clone(),
        };
        machine.handle(start, CallInput::Sip(changed));
        assert_eq!(
            outputs(&mut machine),
            [
                CallOutput::UpdateSipPoint(PointUpdate {
                    remote: held.remote,
                    audio: bridged(&held.codec),
                    telephone_event: Some(101),
                    sends: false,
                }),
                CallOutput::Deaf(true),
                CallOutput::HoldMusic(true),
                CallOutput::Held(HoldSide::Local)
            ]
        );
        // A refused resume leaves the call on hold.
        machine.handle(start, CallInput::SetDirection(SdpDirection::SendRecv));
        assert_eq!(
            outputs(&mut machine),
            [CallOutput::SetDirection(SdpDirection::SendRecv)]
        );
        let refused = CallEvent::DirectionRefused {
            direction: SdpDirection::SendRecv,
            status: Some(488),
            reason: "Not Acceptable Here".to_string(),
        };
        machine.handle(start, CallInput::Sip(refused));
        let out = outputs(&mut machine);
        assert_eq!(out[0], CallOutput::Deaf(true));
        assert!(
            matches!(&out[1], CallOutput::DirectionRefused(message) if message.contains("488"))
        );

        // The far end holds us, then resumes.
        for (direction, expected) in [
            (SdpDirection::SendOnly, CallOutput::Held(HoldSide::Remote)),
            (
                SdpDirection::SendRecv,
                CallOutput::Resumed(HoldSide::Remote),
            ),
        ] {
            let changed = CallEvent::MediaChanged {
                media: NegotiatedMedia {
                    remote_direction: direction,
                    ..media("PCMU", 0, Some(101))
                },
                changes: MediaChanges::default(),
                sdp: String::new(),
            };
            machine.handle(start, CallInput::Sip(changed));
            assert_eq!(outputs(&mut machine)[0], expected);
        }
    }

    #[test]
    fn a_followed_refer_gives_the_call_a_fresh_sip_point_and_ends_the_old_holds() {
        let start = Instant::now();
        let mut machine = answered(start, vec![DtmfMethod::Rfc4733]);
        let held = CallEvent::MediaChanged {
            media: NegotiatedMedia {
                remote_direction: SdpDirection::SendOnly,
                ..media("PCMU", 0, Some(101))
            },
            changes: MediaChanges::default(),
            sdp: String::new(),
        };
        machine.handle(start, CallInput::Sip(held));
        outputs(&mut machine);
        let new_far_end = media("G722", 9, None);
        machine.handle(start, CallInput::FarEndReplaced(new_far_end.clone()));
        assert_eq!(
            outputs(&mut machine),
            [
                CallOutput::RemoveSipPoint,
                CallOutput::Resumed(HoldSide::Remote),
                CallOutput::AddSipPoint {
                    media: new_far_end,
                    detect_tones: true,
                    early: false,
                },
            ]
        );
        // No telephone-event on the new leg: RFC 4733, the only method allowed, no longer applies.
        machine.handle(start, CallInput::SendDtmf("1".to_string()));
        assert!(matches!(
            outputs(&mut machine)[..],
            [CallOutput::Refused(_)]
        ));
    }
}
