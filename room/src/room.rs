//! The room: any number of points, the routes between them, and the 20 ms
//! tick that transcodes, plays tones and sends digits. See the crate doc
//! for its inputs and outputs.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dialtone_codecs::{Codec, Resampler, SampleRate, MAX_PAYLOAD_LEN};
use dialtone_rtmp::{AudioTag, Bytes};
use tracing::{debug, info, warn};

use crate::inactivity::MediaTimeout;
use crate::jitter::Playout;
use crate::lines::Line;
use crate::mixer::{self, MixBuffers, MixInput, Role};
use crate::offload::{self, Offload, OffloadProgress};
use crate::point::{
    Point, PointConfig, PointId, PointUpdate, Route, Silence, Transport, DIGIT_TAIL_FRAMES,
};
use crate::rtcp;
use crate::rtmp_point::{Payloads, RtmpPoint, L16_FRAME_BYTES, RTMP_PAYLOAD_TYPE};
use crate::rtp::{RtpHeader, RtpPacket};
use crate::srtp::SrtpError;
use crate::stats::MediaStatsSnapshot;
use crate::symmetric::LatchDecision;
use crate::telephone_event::{
    DigitEvent, DtmfSenderConfig, TelephoneEventError, TelephoneEventSender,
};
use crate::tones::{ToneDetector, Tones};
use crate::webrtc::Polled;

/// The audio tick: transcoded frames, tones and digit packets go out at it.
pub const FRAME: Duration = Duration::from_millis(20);
/// How often a watched leg's statistics are reported.
const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);
/// Large enough for any RTP packet the room writes (header + payload),
/// and for any the room takes in.
const PACKET_BUFFER: usize = 1500;
/// A tick this late is not caught up frame by frame: the clock restarts.
const MAX_TICK_LAG: Duration = Duration::from_millis(200);
/// Recordings come out at this rate, whatever the room mixes at.
pub const RECORDING_RATE: SampleRate = SampleRate::Hz16000;

/// Something that happened to the room's I/O, at `now`.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// A datagram on a point's RTP socket (for WebRTC, anything: STUN,
    /// DTLS, SRTP).
    Datagram {
        point: PointId,
        source: SocketAddr,
        data: &'a [u8],
    },
    /// A datagram on a point's RTCP socket.
    Rtcp {
        point: PointId,
        data: &'a [u8],
    },
    /// An FLV audio tag body from an RTMP point's publisher, with its RTMP
    /// timestamp (ms).
    Flv {
        point: PointId,
        timestamp: u32,
        data: &'a [u8],
    },
    /// A player of an RTMP point's stream joined; its tags are addressed to
    /// `player`.
    PlayerJoined {
        point: PointId,
        player: u64,
    },
    PlayerLeft {
        point: PointId,
        player: u64,
    },
    /// The time [`Room::poll_timeout`] named has come.
    Timeout,
    /// What the forwarder of point `point`'s relay ([`Output::Offload`])
    /// has done since it took it; `ended`: the relay is back here. Reported
    /// before every [`Input::Timeout`] and at least every second, and ended
    /// before any command and before any datagram at `point`'s socket.
    Offloaded {
        point: PointId,
        progress: OffloadProgress,
        ended: bool,
    },
}

/// Which of a point's sockets a datagram goes out on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Socket {
    Rtp,
    Rtcp,
}

/// A datagram to send; `data` is valid until the next `poll_output`.
#[derive(Debug)]
pub struct Transmit<'a> {
    pub point: PointId,
    pub socket: Socket,
    pub destination: SocketAddr,
    pub data: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigitMethod {
    Rfc4733,
    Inband,
    Info,
}

impl DigitMethod {
    /// The protocol's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            DigitMethod::Rfc4733 => "RFC4733",
            DigitMethod::Inband => "INBAND",
            DigitMethod::Info => "INFO",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A point's far end sent a digit.
    Digit {
        point: PointId,
        digit: char,
        method: DigitMethod,
    },
    /// A digit for `point` that it takes no events for: its signalling may
    /// carry it (SIP INFO).
    DigitForSignalling { point: PointId, digit: char },
    /// A watched leg's far end went silent.
    MediaTimeout {
        point: PointId,
        timeout: MediaTimeout,
    },
    /// A WebRTC point could not connect or lost its peer.
    MediaFailed { point: PointId, problem: String },
    /// A watched leg's statistics, every second.
    Stats {
        point: PointId,
        snapshot: MediaStatsSnapshot,
    },
}

pub enum Output<'a> {
    Transmit(Transmit<'a>),
    /// An FLV audio tag for one player of an RTMP point.
    Flv {
        point: PointId,
        player: u64,
        timestamp: u32,
        data: Bytes,
    },
    Event(Event),
    /// 20 ms of a recording: the room's public mix, mono at
    /// [`RECORDING_RATE`], silence included, so its length is the time
    /// it ran.
    Recorded {
        recording: u32,
        samples: Vec<i16>,
    },
    /// A steady relay a forwarder may carry from now on (see
    /// [`crate::offload`]); the room takes its packets for forwarded
    /// until told otherwise ([`Input::Offloaded`]).
    Offload(Offload),
    /// The relay of this point is wanted back: end its offload.
    Reclaim(PointId),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    #[error("{0} is already in the room")]
    Duplicate(PointId),
    #[error("{0} is not in the room")]
    UnknownPoint(PointId),
    #[error("{0} takes no telephone-events")]
    NoEvents(PointId),
    #[error("{0} has no audio to play tones in")]
    NoAudio(PointId),
    #[error(transparent)]
    Digits(#[from] TelephoneEventError),
    #[error("recording {0} is already running")]
    DuplicateRecording(u32),
    #[error("no recording {0}")]
    UnknownRecording(u32),
    #[error(transparent)]
    Srtp(#[from] SrtpError),
}

enum Pending {
    Transmit {
        point: PointId,
        socket: Socket,
        destination: SocketAddr,
        data: Vec<u8>,
    },
    Flv {
        point: PointId,
        player: u64,
        timestamp: u32,
        data: Bytes,
    },
    Event(Event),
    Recorded {
        recording: u32,
        samples: Vec<i16>,
    },
    Offload(Box<Offload>),
    Reclaim(PointId),
}

/// The outputs waiting to be polled, and the packet buffers they are
/// written in, reused so a packet's way through the room allocates nothing.
#[derive(Default)]
struct Outputs {
    queue: VecDeque<Pending>,
    free: Vec<Vec<u8>>,
    /// The buffer of the transmit last polled, lent until the next poll.
    lent: Option<Vec<u8>>,
}

impl Outputs {
    fn buffer(&mut self) -> Vec<u8> {
        let mut buffer = self
            .free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(PACKET_BUFFER));
        buffer.resize(PACKET_BUFFER, 0);
        buffer
    }

    fn recycle(&mut self, buffer: Vec<u8>) {
        self.free.push(buffer);
    }

    fn transmit(&mut self, point: PointId, socket: Socket, destination: SocketAddr, data: Vec<u8>) {
        self.queue.push_back(Pending::Transmit {
            point,
            socket,
            destination,
            data,
        });
    }

    fn event(&mut self, event: Event) {
        self.queue.push_back(Pending::Event(event));
    }
}

/// A point taken out of a room with its transport, its RTP stream and
/// its statistics, to be put into another ([`Room::take_point`],
/// [`Room::insert_point`]): its far end sees one unbroken stream.
pub struct DetachedPoint(Box<Point>);

/// A media room of any number of points. Every point hears every other
/// point its [`Role`] lets it hear (its audio and digits): a point that
/// hears one other gets its packets relayed (or transcoded), one that hears
/// several gets the mix of them, never its own voice.
pub struct Room {
    points: Vec<Point>,
    outputs: Outputs,
    /// When the next 20 ms tick is due, while anything needs ticks.
    next_tick: Option<Instant>,
    /// Ticks fall on this instant plus whole frames, when set: rooms that
    /// share it tick together, so one wake-up serves them all.
    tick_origin: Option<Instant>,
    /// The effort of the room's encoders that have a choice (Opus), once
    /// the driver has set it; until then, what they were made with.
    encoder_complexity: Option<u8>,
    mix_rate: SampleRate,
    /// Whether steady relays are handed to a forwarder ([`crate::offload`]).
    offloading: bool,
    /// Made at the first mix: a relaying room never needs its 9.6 KB.
    mix: Option<Box<MixBuffers>>,
    recordings: Vec<u32>,
    /// From the mix rate to [`RECORDING_RATE`], while recording.
    recording_resampler: Option<Resampler>,
    /// Where SRTP and SRTCP datagrams are decrypted; empty until the first.
    scratch: Vec<u8>,
}

fn mix_buffers(mix: &mut Option<Box<MixBuffers>>) -> &mut MixBuffers {
    mix.get_or_insert_with(Box::default)
}

impl Default for Room {
    fn default() -> Self {
        Room::new()
    }
}

impl Room {
    /// A room whose ticks fall on `origin` plus whole 20 ms frames, so
    /// that rooms sharing an origin tick at the same instants.
    pub fn with_tick_origin(origin: Instant) -> Room {
        Room {
            tick_origin: Some(origin),
            ..Room::new()
        }
    }

    /// How hard the room's Opus encoders work from now on, 0-10: the
    /// driver lowers it when its CPU is busy and raises it when there is
    /// room (transcoders and mixes made later get it too).
    pub fn set_encoder_complexity(&mut self, complexity: u8) {
        self.encoder_complexity = Some(complexity);
        self.points
            .iter_mut()
            .for_each(|point| point.set_encoder_complexity(complexity));
    }

    /// From now on, steady relays come out as [`Output::Offload`] for the
    /// driver's forwarder to carry.
    pub fn enable_offload(&mut self) {
        self.offloading = true;
    }

    /// The first tick instant at or after `now`.
    fn tick_at_or_after(&self, now: Instant) -> Instant {
        let Some(origin) = self.tick_origin else {
            return now;
        };
        let since = now.saturating_duration_since(origin).as_nanos();
        let frame = FRAME.as_nanos();
        let frames = since.div_ceil(frame);
        let offset = u64::try_from(frames * frame).unwrap_or(u64::MAX);
        origin + Duration::from_nanos(offset)
    }

    pub fn new() -> Room {
        Room {
            points: Vec::new(),
            outputs: Outputs::default(),
            next_tick: None,
            tick_origin: None,
            encoder_complexity: None,
            offloading: false,
            mix_rate: SampleRate::Hz8000,
            mix: None,
            recordings: Vec::new(),
            recording_resampler: None,
            scratch: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    pub fn points(&self) -> impl Iterator<Item = PointId> + '_ {
        self.points.iter().map(|point| point.id)
    }

    /// Adds a point.
    pub fn add_point(
        &mut self,
        now: Instant,
        id: PointId,
        config: PointConfig,
    ) -> Result<(), RoomError> {
        if self.index(id).is_some() {
            return Err(RoomError::Duplicate(id));
        }
        self.insert_point(
            now,
            id,
            DetachedPoint(Box::new(Point::new(id, config, now)?)),
        )
    }

    /// Puts a point taken out of a room (this one or another) in, under
    /// the name `id`.
    pub fn insert_point(
        &mut self,
        now: Instant,
        id: PointId,
        point: DetachedPoint,
    ) -> Result<(), RoomError> {
        if self.index(id).is_some() {
            return Err(RoomError::Duplicate(id));
        }
        let mut point = point.0;
        point.id = id;
        info!(point = id.0, audio = ?point.audio, role = ?point.role, "point joins the room");
        // Exactly: a point is 1.3 KB, and most rooms hold two.
        self.points.reserve_exact(1);
        self.points.push(*point);
        self.reroute();
        self.after(now);
        Ok(())
    }

    /// Takes a point out, to end it or to put it into another room.
    pub fn take_point(&mut self, now: Instant, id: PointId) -> Result<DetachedPoint, RoomError> {
        let index = self.index(id).ok_or(RoomError::UnknownPoint(id))?;
        let mut point = self.points.remove(index);
        // What it heard here, it does not hear there.
        point.sources.clear();
        point.route = None;
        point.mix_input = None;
        info!(point = id.0, "point leaves the room");
        self.reroute();
        self.after(now);
        Ok(DetachedPoint(Box::new(point)))
    }

    /// Takes a point out and ends it.
    pub fn remove_point(&mut self, now: Instant, id: PointId) -> Result<(), RoomError> {
        self.take_point(now, id).map(drop)
    }

    /// Changes who hears point `id`.
    pub fn set_role(&mut self, now: Instant, id: PointId, role: Role) -> Result<(), RoomError> {
        if let Role::Whisper(target) = role {
            self.index(target).ok_or(RoomError::UnknownPoint(target))?;
        }
        let index = self.index(id).ok_or(RoomError::UnknownPoint(id))?;
        self.points[index].role = role;
        self.reroute();
        self.after(now);
        Ok(())
    }

    /// Makes point `id` hear nobody (its far end is put on hold), or
    /// everyone its place lets it hear again.
    pub fn set_deaf(&mut self, now: Instant, id: PointId, deaf: bool) -> Result<(), RoomError> {
        let index = self.index(id).ok_or(RoomError::UnknownPoint(id))?;
        self.points[index].deaf = deaf;
        self.reroute();
        self.after(now);
        Ok(())
    }

    /// Starts recording the room's public mix as [`Output::Recorded`].
    pub fn start_recording(&mut self, now: Instant, recording: u32) -> Result<(), RoomError> {
        if self.recordings.contains(&recording) {
            return Err(RoomError::DuplicateRecording(recording));
        }
        self.recordings.push(recording);
        self.reroute();
        self.after(now);
        Ok(())
    }

    pub fn stop_recording(&mut self, now: Instant, recording: u32) -> Result<(), RoomError> {
        let index = self
            .recordings
            .iter()
            .position(|running| *running == recording)
            .ok_or(RoomError::UnknownRecording(recording))?;
        self.recordings.remove(index);
        self.reroute();
        self.after(now);
        Ok(())
    }

    /// The far end of a point changed (re-INVITE, UPDATE): its address,
    /// codec, events and whether it sends at all (hold).
    pub fn update_point(
        &mut self,
        now: Instant,
        id: PointId,
        update: PointUpdate,
    ) -> Result<(), RoomError> {
        let index = self.index(id).ok_or(RoomError::UnknownPoint(id))?;
        let point = &mut self.points[index];
        if let Transport::Rtp(latch) = &mut point.transport {
            latch.update_signalled(Some(update.remote));
        }
        if let Some(watch) = point.watch.as_mut() {
            // A far end on hold sends nothing: not a dead one.
            watch.inactivity.set_expecting_media(update.sends, now);
        }
        if point.audio != update.audio {
            info!(point = id.0, from = ?point.audio, to = ?update.audio, "point changes codec");
            let clock = point.clock();
            point.audio = update.audio;
            point.receive = update.audio;
            if point.clock() != clock {
                // Events are timed at the audio's clock (RFC 4733); digits
                // still queued at the old one are dropped with it.
                point.digits_out = TelephoneEventSender::new(DtmfSenderConfig {
                    clock_rate: point.clock(),
                    ..DtmfSenderConfig::default()
                });
            }
            if point.tones.is_some() {
                point.tones = update
                    .audio
                    .and_then(|(_, codec)| Tones::new(codec))
                    .map(Box::new);
            }
            point.silence = None;
            if point.detector.is_some() {
                point.detector = update
                    .audio
                    .and_then(|(_, codec)| ToneDetector::new(codec))
                    .map(Box::new);
            }
        }
        point.telephone_event = update.telephone_event;
        point.received_events = update.telephone_event.into_iter().collect();
        self.reroute();
        self.after(now);
        Ok(())
    }

    /// An ICE candidate trickled for a WebRTC point.
    pub fn add_remote_candidate(&mut self, id: PointId, candidate: &str) -> Result<(), RoomError> {
        let index = self.index(id).ok_or(RoomError::UnknownPoint(id))?;
        if let Transport::WebRtc { transport, .. } = &mut self.points[index].transport {
            transport.add_remote_candidate(candidate);
        }
        Ok(())
    }

    /// Digits for a point's far end as RFC 4733 events.
    pub fn send_digits(
        &mut self,
        now: Instant,
        id: PointId,
        digits: &str,
    ) -> Result<(), RoomError> {
        let index = self.index(id).ok_or(RoomError::UnknownPoint(id))?;
        let point = &mut self.points[index];
        if point.telephone_event.is_none() {
            return Err(RoomError::NoEvents(id));
        }
        point.digits_out.enqueue(digits, now)?;
        self.after(now);
        Ok(())
    }

    /// Digits for a point's far end as in-band tones in its audio.
    pub fn send_tones(&mut self, now: Instant, id: PointId, digits: &str) -> Result<(), RoomError> {
        let index = self.index(id).ok_or(RoomError::UnknownPoint(id))?;
        let point = &mut self.points[index];
        if point.tones.is_none() && point.line().is_none() {
            point.tones = point
                .audio
                .and_then(|(_, codec)| Tones::new(codec))
                .map(Box::new);
        }
        let tones = point.tones.as_mut().ok_or(RoomError::NoAudio(id))?;
        tones.queue.extend(digits.chars());
        self.after(now);
        Ok(())
    }

    /// A digit a point's far end signalled outside its media (SIP INFO).
    pub fn digit_from(&mut self, now: Instant, id: PointId, digit: char) -> Result<(), RoomError> {
        let index = self.index(id).ok_or(RoomError::UnknownPoint(id))?;
        self.route_digit(now, index, digit, DigitMethod::Info, 0);
        self.after(now);
        Ok(())
    }

    /// A watched point's statistics now.
    pub fn stats(&self, id: PointId) -> Option<MediaStatsSnapshot> {
        let point = &self.points[self.index(id)?];
        let watch = point.watch.as_ref()?;
        Some(MediaStatsSnapshot {
            srtp_rejected: point.srtp_rejected,
            ..watch.stats.snapshot(&point.sender.counters())
        })
    }

    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        match input {
            Input::Datagram {
                point,
                source,
                data,
            } => {
                if let Some(index) = self.index(point) {
                    let mut scratch = std::mem::take(&mut self.scratch);
                    if let Some(data) = self.points[index].unprotect(data, &mut scratch, false) {
                        self.on_datagram(now, index, source, data);
                    }
                    self.scratch = scratch;
                }
            }
            Input::Rtcp { point, data } => {
                if let Some(point) = self.index(point).map(|index| &mut self.points[index]) {
                    let data = point.unprotect(data, &mut self.scratch, true);
                    if let (Some(data), Some(watch)) = (data, point.watch.as_mut()) {
                        if let Err(error) = watch.stats.on_rtcp(data, now) {
                            debug!(%error, "unreadable RTCP");
                        }
                    }
                }
            }
            Input::Flv {
                point,
                timestamp,
                data,
            } => {
                if let Some(index) = self.index(point) {
                    self.on_flv(now, index, timestamp, data);
                }
            }
            Input::PlayerJoined { point, player } => {
                if let Some(rtmp) = self.rtmp_point(point) {
                    if let Some(header) = rtmp.join(player) {
                        self.outputs.queue.push_back(Pending::Flv {
                            point,
                            player,
                            timestamp: 0,
                            data: header,
                        });
                    }
                }
            }
            Input::PlayerLeft { point, player } => {
                if let Some(rtmp) = self.rtmp_point(point) {
                    rtmp.leave(player);
                }
            }
            Input::Timeout => self.on_timeout(now),
            Input::Offloaded {
                point,
                progress,
                ended,
            } => offload::progressed(&mut self.points, now, point, progress, ended),
        }
        self.after(now);
    }

    /// The next output, if any. A transmit's data is lent until the next
    /// call.
    pub fn poll_output(&mut self) -> Option<Output<'_>> {
        if let Some(buffer) = self.outputs.lent.take() {
            self.outputs.recycle(buffer);
        }
        match self.outputs.queue.pop_front()? {
            Pending::Transmit {
                point,
                socket,
                destination,
                data,
            } => {
                let data = self.outputs.lent.insert(data);
                Some(Output::Transmit(Transmit {
                    point,
                    socket,
                    destination,
                    data,
                }))
            }
            Pending::Flv {
                point,
                player,
                timestamp,
                data,
            } => Some(Output::Flv {
                point,
                player,
                timestamp,
                data,
            }),
            Pending::Event(event) => Some(Output::Event(event)),
            Pending::Recorded { recording, samples } => {
                Some(Output::Recorded { recording, samples })
            }
            Pending::Offload(offload) => Some(Output::Offload(*offload)),
            Pending::Reclaim(point) => Some(Output::Reclaim(point)),
        }
    }

    /// When the room next needs [`Input::Timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        let points = self.points.iter().flat_map(|point| {
            let webrtc = match &point.transport {
                Transport::WebRtc {
                    transport,
                    failed: false,
                } => transport.deadline(),
                _ => None,
            };
            let watch = point.watch.iter().flat_map(|watch| {
                let report = watch.rtcp.then(|| watch.stats.next_report_deadline());
                [
                    watch.inactivity.next_deadline(),
                    report,
                    Some(watch.next_snapshot),
                ]
            });
            [point.digits_in.next_deadline(), webrtc]
                .into_iter()
                .chain(watch)
                .flatten()
        });
        points.chain(self.next_tick).min()
    }

    fn index(&self, id: PointId) -> Option<usize> {
        self.points.iter().position(|point| point.id == id)
    }

    fn rtmp_point(&mut self, id: PointId) -> Option<&mut RtmpPoint> {
        let index = self.index(id)?;
        match &mut self.points[index].transport {
            Transport::Rtmp(rtmp) => Some(rtmp),
            _ => None,
        }
    }

    /// Work every input ends with: WebRTC points drained, ticks armed.
    fn after(&mut self, now: Instant) {
        self.drain_webrtc(now);
        let ticking = !self.recordings.is_empty() || self.points.iter().any(Point::needs_ticks);
        self.next_tick = match (ticking, self.next_tick) {
            (false, _) => None,
            (true, None) => Some(self.tick_at_or_after(now)),
            (true, Some(at)) => Some(at),
        };
    }

    /// Sets who hears whom from the roles, every point's route (relay or
    /// transcode from its one audible source, else the mix) and the mix
    /// inputs of the speakers someone mixes or records.
    fn reroute(&mut self) {
        let speakers: Vec<(PointId, Role, Option<Codec>)> = self
            .points
            .iter()
            .map(|point| (point.id, point.role, point.receive.map(|(_, codec)| codec)))
            .collect();
        let codecs = self
            .points
            .iter()
            .flat_map(|point| [point.audio, point.receive])
            .flatten()
            .map(|(_, codec)| codec);
        let mix_rate = mixer::mix_rate(codecs);
        self.mix_rate = mix_rate;
        let mut mixed: Vec<PointId> = Vec::new();
        for point in &mut self.points {
            let listener = point.id;
            let deaf = point.deaf;
            point.sources = speakers
                .iter()
                // A deaf point (a held far end) still hears what is
                // whispered to it alone: its music on hold.
                .filter(|(id, role, _)| {
                    *id != listener
                        && role.heard_by(listener)
                        && (!deaf || *role == Role::Whisper(listener))
                })
                .map(|(id, ..)| *id)
                .collect();
            let audible: Vec<(PointId, Codec)> = speakers
                .iter()
                .filter(|(id, ..)| point.sources.contains(id))
                .filter_map(|(id, _, codec)| codec.map(|codec| (*id, codec)))
                .collect();
            match audible.as_slice() {
                [] => point.route_from(None),
                [(_, codec)] => point.route_from(Some(*codec)),
                several => {
                    point.route_mix(mix_rate);
                    mixed.extend(several.iter().map(|(id, _)| *id));
                }
            }
        }
        let recording = !self.recordings.is_empty();
        for point in &mut self.points {
            let wanted = point
                .receive
                .filter(|_| mixed.contains(&point.id) || (recording && point.role == Role::Full));
            point.mix_input = match (wanted, point.mix_input.take()) {
                (Some((_, codec)), Some(input)) if input.fits(codec, mix_rate) => Some(input),
                (Some((_, codec)), _) => MixInput::new(codec, mix_rate)
                    .map_err(|error| warn!(%error, %codec, "cannot mix this codec"))
                    .ok(),
                (None, _) => None,
            };
        }
        if let Some(complexity) = self.encoder_complexity {
            self.set_encoder_complexity(complexity);
        }
        self.recording_resampler = match self.recording_resampler.take() {
            _ if !recording => None,
            Some(resampler) if resampler.from_rate() == mix_rate => Some(resampler),
            _ => Resampler::new(mix_rate, RECORDING_RATE)
                .map_err(|error| warn!(%error, "cannot resample the recording"))
                .ok(),
        };
    }

    fn on_datagram(&mut self, now: Instant, index: usize, source: SocketAddr, data: &[u8]) {
        let point = &mut self.points[index];
        if let Transport::WebRtc {
            transport,
            failed: false,
        } = &mut point.transport
        {
            // Its RTP comes out decrypted when the room drains it.
            transport.receive(now, source, data);
            return;
        }
        // A plain RTP point is never offered rtcp-mux: RTCP here is stray
        // (another stream's report sent to port + 1 of a neighbour).
        if rtcp::is_rtcp(data) {
            return;
        }
        let Ok(packet) = RtpPacket::parse(data) else {
            return;
        };
        let negotiated = point.takes_payload_type(packet.header.payload_type);
        let Transport::Rtp(latch) = &mut point.transport else {
            return;
        };
        // Only the far end's negotiated media may latch. Other payload types
        // (comfort noise, say) are taken from the latched address alone.
        let decision = if negotiated {
            latch.on_packet(now, source, packet.header.ssrc)
        } else if latch.is_latched_to(source) {
            LatchDecision::Accept
        } else {
            LatchDecision::Reject
        };
        match decision {
            // Not logged: whoever sprays a port would fill the log.
            LatchDecision::Reject => return,
            LatchDecision::Latched {
                previous,
                destination,
            } => {
                debug!(point = point.id.0, ?previous, %destination, "media latched");
                // Relays toward it go to its new address from the room.
                let id = point.id;
                for from in offload::offloaded_to(&self.points, id) {
                    self.outputs.queue.push_back(Pending::Reclaim(from));
                }
            }
            LatchDecision::Accept => {}
        }
        let point = &mut self.points[index];
        if let Some(watch) = point.watch.as_mut() {
            watch.inactivity.on_packet(now);
            watch
                .stats
                .on_rtp(&packet.header, packet.payload.len(), now);
        }
        self.on_rtp(now, index, &packet.header, packet.payload);
        if self.offloading {
            if let Some(offload) =
                offload::consider(&mut self.points, index, source, &packet.header)
            {
                self.outputs
                    .queue
                    .push_back(Pending::Offload(Box::new(offload)));
            }
        }
    }

    /// One RTP packet from a point's far end: digits, or audio for the
    /// points that hear it.
    fn on_rtp(&mut self, now: Instant, index: usize, header: &RtpHeader, payload: &[u8]) {
        let point = &mut self.points[index];
        if point.received_events.contains(&header.payload_type) {
            let started = point
                .digits_in
                .on_packet(header.timestamp, payload, now)
                .ok()
                .and_then(|mut events| {
                    events.find_map(|event| match event {
                        DigitEvent::DigitStarted(digit) => Some(digit),
                        _ => None,
                    })
                });
            if let Some(digit) = started {
                self.route_digit(now, index, digit, DigitMethod::Rfc4733, 0);
            }
            return;
        }
        if point.receive.map(|(pt, _)| pt) != Some(header.payload_type) {
            return;
        }
        if let Some(digit) = point
            .detector
            .as_mut()
            .and_then(|detector| detector.digit_in(payload))
        {
            self.route_digit(now, index, digit, DigitMethod::Inband, 0);
        }
        self.route_audio(now, index, header, payload, 0);
    }

    /// Audio from point `from` to every point that hears it. `hops` stops
    /// an echo line from echoing what it sent.
    fn route_audio(
        &mut self,
        now: Instant,
        from: usize,
        header: &RtpHeader,
        payload: &[u8],
        hops: u8,
    ) {
        let source = self.points[from].id;
        if let Some(input) = self.points[from].mix_input.as_mut() {
            input.push(header.sequence, header.timestamp, payload);
        }
        for index in 0..self.points.len() {
            let sink = &mut self.points[index];
            if index == from || !sink.hears(source) {
                continue;
            }
            match sink.line() {
                Some(Line::Echo) if hops == 0 => {
                    self.route_audio(now, index, header, payload, 1);
                    continue;
                }
                Some(_) => continue,
                None => {}
            }
            // While digits play as tones toward it, they replace the audio.
            if sink.tones_busy() {
                continue;
            }
            match sink.route.as_mut() {
                Some(Route::Relay) => self.relay(now, index, header, payload),
                Some(Route::Transcode { jitter, .. }) => {
                    jitter.push(header.sequence, header.timestamp, payload);
                }
                Some(Route::Mix(_)) | None => {}
            }
        }
    }

    /// A packet forwarded as it is to point `index`, offset-mapped into
    /// its stream.
    fn relay(&mut self, now: Instant, index: usize, header: &RtpHeader, payload: &[u8]) {
        let Some((payload_type, _)) = self.points[index].audio else {
            return;
        };
        let mut buffer = self.outputs.buffer();
        match self.points[index]
            .sender
            .relay(header, payload, payload_type, &mut buffer)
        {
            Ok(Some(length)) => {
                buffer.truncate(length);
                self.points[index].sent_audio = true;
                self.deliver(now, index, buffer);
            }
            Ok(None) => self.outputs.recycle(buffer),
            Err(error) => {
                warn!(%error, "cannot relay RTP");
                self.outputs.recycle(buffer);
            }
        }
    }

    /// One generated audio frame in point `index`'s stream.
    fn send_audio(&mut self, now: Instant, index: usize, payload: &[u8]) {
        let point = &mut self.points[index];
        let Some((payload_type, _)) = point.audio else {
            return;
        };
        let units = point.frame_units();
        // The first packet of a stream, as after silence (RFC 3551 §4.1).
        let marker = point.sender.counters().packets == 0;
        let mut buffer = self.outputs.buffer();
        match self.points[index].sender.next_packet(
            payload,
            units,
            marker,
            payload_type,
            &mut buffer,
        ) {
            Ok(length) => {
                buffer.truncate(length);
                self.points[index].sent_audio = true;
                self.deliver(now, index, buffer);
            }
            Err(error) => {
                warn!(%error, "cannot build RTP");
                self.outputs.recycle(buffer);
            }
        }
    }

    /// Hands one RTP packet of ours to point `index`'s transport.
    fn deliver(&mut self, now: Instant, index: usize, packet: Vec<u8>) {
        let point = &mut self.points[index];
        let id = point.id;
        let clock = point.clock();
        match &mut point.transport {
            Transport::Rtp(latch) => {
                if let Some(destination) = latch.destination() {
                    let mut packet = packet;
                    if point.protect(&mut packet, false) {
                        self.outputs.transmit(id, Socket::Rtp, destination, packet);
                    } else {
                        self.outputs.recycle(packet);
                    }
                    return;
                }
            }
            Transport::WebRtc {
                transport,
                failed: false,
            } => {
                if let Ok(ours) = RtpPacket::parse(&packet) {
                    transport.send_rtp(now, &ours.header, ours.payload);
                }
            }
            Transport::Rtmp(rtmp) => {
                if let Ok(ours) = RtpPacket::parse(&packet) {
                    let queue = &mut self.outputs.queue;
                    rtmp.send(
                        &ours.header,
                        ours.payload,
                        clock,
                        |player, timestamp, data| {
                            queue.push_back(Pending::Flv {
                                point: id,
                                player,
                                timestamp,
                                data,
                            });
                        },
                    );
                }
            }
            _ => {}
        }
        self.outputs.recycle(packet);
    }

    /// A digit from point `from`: reported, and passed to every point that
    /// hears it, as an event where it takes them.
    fn route_digit(
        &mut self,
        now: Instant,
        from: usize,
        digit: char,
        method: DigitMethod,
        hops: u8,
    ) {
        let source = self.points[from].id;
        self.outputs.event(Event::Digit {
            point: source,
            digit,
            method,
        });
        for index in 0..self.points.len() {
            let sink = &mut self.points[index];
            if index == from || !sink.hears(source) {
                continue;
            }
            match sink.line() {
                Some(Line::Digits) if hops == 0 => {
                    info!(%digit, "digits line sends back a digit");
                    self.route_digit(now, index, digit, method, 1);
                    continue;
                }
                Some(_) => continue,
                None => {}
            }
            if sink.telephone_event.is_some() {
                let mut text = [0u8; 4];
                if let Err(error) = sink.digits_out.enqueue(digit.encode_utf8(&mut text), now) {
                    warn!(%error, "digit not forwarded");
                }
            } else {
                let sink = sink.id;
                self.outputs
                    .event(Event::DigitForSignalling { point: sink, digit });
            }
        }
    }

    fn on_flv(&mut self, now: Instant, index: usize, timestamp: u32, data: &[u8]) {
        let tag = match AudioTag::parse(data) {
            Ok(tag) => tag,
            Err(error) => {
                debug!(%error, "unreadable FLV audio");
                return;
            }
        };
        let point = &mut self.points[index];
        let Transport::Rtmp(rtmp) = &mut point.transport else {
            return;
        };
        let Some(frames) = rtmp.inbound.frames(&tag, timestamp) else {
            return;
        };
        // Taken out while the frames go through the room, given back after.
        let decoded = std::mem::take(&mut rtmp.inbound.decoded);
        let codec = frames.codec;
        if point.receive != Some((RTMP_PAYLOAD_TYPE, codec)) {
            info!(%codec, "RTMP client publishes");
            point.receive = Some((RTMP_PAYLOAD_TYPE, codec));
            self.reroute();
        }
        let (payloads, frame_bytes) = match frames.payloads {
            Payloads::Tag(frame_bytes) => (tag.payload, frame_bytes),
            Payloads::Decoded => (decoded.as_slice(), L16_FRAME_BYTES),
        };
        for (frame, chunk) in payloads.chunks(frame_bytes).enumerate() {
            self.on_rtp(now, index, &frames.header(frame), chunk);
        }
        if let Transport::Rtmp(rtmp) = &mut self.points[index].transport {
            rtmp.inbound.decoded = decoded;
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        if let Some(at) = self.next_tick.filter(|at| *at <= now) {
            self.tick(now);
            let next = at + FRAME;
            self.next_tick = Some(if next + MAX_TICK_LAG < now {
                self.tick_at_or_after(now + FRAME)
            } else {
                next
            });
        }
        for index in 0..self.points.len() {
            let point = &mut self.points[index];
            // Digits whose end packets were lost end here; only starts
            // are reported, so there is nothing more to do with them.
            while point.digits_in.poll(now).is_some() {}
            if let Transport::WebRtc {
                transport,
                failed: false,
            } = &mut point.transport
            {
                if transport.deadline().is_some_and(|at| at <= now) {
                    transport.on_deadline(now);
                }
            }
            self.watch(now, index);
        }
    }

    /// A watched leg's RTCP report, statistics and inactivity.
    fn watch(&mut self, now: Instant, index: usize) {
        let point = &mut self.points[index];
        let id = point.id;
        let destination = point.destination();
        let sent = point.sender.counters();
        let Some(watch) = point.watch.as_mut() else {
            return;
        };
        if watch.rtcp && watch.stats.report_due(now) {
            let mut buffer = self.outputs.buffer();
            match watch.stats.write_report(now, &sent, &mut buffer) {
                Ok(length) => match destination {
                    Some(rtp) => {
                        buffer.truncate(length);
                        let rtcp = SocketAddr::new(rtp.ip(), rtp.port().wrapping_add(1));
                        if point.protect(&mut buffer, true) {
                            self.outputs.transmit(id, Socket::Rtcp, rtcp, buffer);
                        } else {
                            self.outputs.recycle(buffer);
                        }
                    }
                    None => self.outputs.recycle(buffer),
                },
                Err(error) => {
                    warn!(%error, "cannot build RTCP");
                    self.outputs.recycle(buffer);
                }
            }
        }
        let point = &mut self.points[index];
        let srtp_rejected = point.srtp_rejected;
        let Some(watch) = point.watch.as_mut() else {
            return;
        };
        if now >= watch.next_snapshot {
            watch.next_snapshot = now + SNAPSHOT_INTERVAL;
            let snapshot = MediaStatsSnapshot {
                srtp_rejected,
                ..watch.stats.snapshot(&sent)
            };
            self.outputs.event(Event::Stats {
                point: id,
                snapshot,
            });
        }
        if let Some(timeout) = watch.inactivity.poll(now) {
            info!(point = id.0, ?timeout, "no RTP from the far end");
            self.outputs
                .event(Event::MediaTimeout { point: id, timeout });
        }
    }

    /// Every 20 ms while anything needs it: transcoded frames, tones, the
    /// tone line, digit packets, and the clocks of streams that sent
    /// nothing.
    fn tick(&mut self, now: Instant) {
        self.mix(now);
        let mut payload = [0u8; MAX_PAYLOAD_LEN];
        for index in 0..self.points.len() {
            if let Some(length) = self.transcoded_frame(index, &mut payload) {
                self.send_audio(now, index, &payload[..length]);
            }
            if let Some(frame) = self.points[index]
                .tones
                .as_mut()
                .and_then(|t| t.next_frame())
            {
                let length = frame.len();
                payload[..length].copy_from_slice(frame);
                self.send_audio(now, index, &payload[..length]);
            }
            if let Transport::Line(line) = &mut self.points[index].transport {
                if let Some((header, length)) = line.next_tone(&mut payload) {
                    self.route_audio(now, index, &header, &payload[..length], 0);
                }
            }
        }
        for index in 0..self.points.len() {
            let sent_digits = self.send_digit_packets(now, index);
            let point = &mut self.points[index];
            if point.sent_audio {
                point.sent_audio = false;
                continue;
            }
            if point.digit_tail > 0 && !sent_digits {
                // Keep a stream going after digits: a far end's jitter
                // buffer plays out the end of the last one only when more
                // packets follow it.
                point.digit_tail -= 1;
                if point.silence.is_none() {
                    point.silence = point
                        .audio
                        .and_then(|(_, codec)| Silence::new(codec))
                        .map(Box::new);
                }
                if let Some(silence) = point.silence.as_ref() {
                    let length = silence.payload().len();
                    payload[..length].copy_from_slice(silence.payload());
                    self.send_audio(now, index, &payload[..length]);
                    self.points[index].sent_audio = false;
                    continue;
                }
            }
            let point = &mut self.points[index];
            let units = point.frame_units();
            point.sender.skip(units);
        }
    }

    /// One tick of mixing: every mixed speaker's frame played out, the
    /// recordings' share, and each mixing listener's frame (everyone it
    /// hears, never itself).
    fn mix(&mut self, now: Instant) {
        if self.recordings.is_empty() && self.points.iter().all(|point| point.mix_input.is_none()) {
            return;
        }
        let samples = self.mix_rate.frame_samples();
        for point in &mut self.points {
            if let Some(input) = point.mix_input.as_mut() {
                input.tick();
            }
        }
        let buffers = mix_buffers(&mut self.mix);
        let total = &mut buffers.total[..samples];
        total.fill(0);
        let mut speaking = 0usize;
        for point in &self.points {
            if let Some(input) = point.mix_input.as_ref().filter(|input| input.active) {
                if point.role == Role::Full {
                    mixer::add(total, &input.frame);
                    speaking += 1;
                }
            }
        }
        self.record();
        let mut payload = [0u8; MAX_PAYLOAD_LEN];
        for index in 0..self.points.len() {
            let point = &self.points[index];
            if !matches!(point.route, Some(Route::Mix(_)))
                || point.line().is_some()
                || point.tones_busy()
            {
                continue;
            }
            let buffers = mix_buffers(&mut self.mix);
            let heard = &mut buffers.listener[..samples];
            heard.copy_from_slice(&buffers.total[..samples]);
            let mut voices = speaking;
            if let Some(own) = point.mix_input.as_ref().filter(|input| input.active) {
                if point.role == Role::Full {
                    mixer::subtract(heard, &own.frame);
                    voices -= 1;
                }
            }
            for other in &self.points {
                let whispers = other.role == Role::Whisper(point.id);
                if let Some(input) = other.mix_input.as_ref().filter(|input| input.active) {
                    if whispers {
                        mixer::add(heard, &input.frame);
                        voices += 1;
                    }
                }
            }
            if voices == 0 {
                continue;
            }
            let limited = &mut buffers.limited[..samples];
            mixer::limit(heard, limited);
            let Some(Route::Mix(output)) = self.points[index].route.as_mut() else {
                continue;
            };
            match output.encode(limited, &mut payload) {
                Ok(length) => self.send_audio(now, index, &payload[..length]),
                Err(error) => debug!(%error, "mix not encoded"),
            }
        }
    }

    /// This tick's public mix for every running recording.
    fn record(&mut self) {
        if self.recordings.is_empty() {
            return;
        }
        let samples = self.mix_rate.frame_samples();
        let buffers = mix_buffers(&mut self.mix);
        let limited = &mut buffers.limited[..samples];
        mixer::limit(&buffers.total[..samples], limited);
        let Some(resampler) = self.recording_resampler.as_mut() else {
            return;
        };
        let mut recorded = vec![0i16; RECORDING_RATE.frame_samples()];
        if let Err(error) = resampler.process(limited, &mut recorded) {
            debug!(%error, "recording frame lost");
            return;
        }
        for recording in &self.recordings {
            self.outputs.queue.push_back(Pending::Recorded {
                recording: *recording,
                samples: recorded.clone(),
            });
        }
    }

    /// Point `index`'s next 20 ms from the point it hears, transcoded.
    fn transcoded_frame(&mut self, index: usize, out: &mut [u8]) -> Option<usize> {
        let Some(Route::Transcode { jitter, transcoder }) = self.points[index].route.as_mut()
        else {
            return None;
        };
        let result = match jitter.tick() {
            Playout::Frame { payload, .. } => transcoder.transcode(payload, out),
            Playout::Lost {
                next_payload: Some(next),
            } => transcoder.recover_into(next, out),
            Playout::Lost { next_payload: None } => transcoder.conceal_into(out),
            Playout::Empty => return None,
        };
        match result {
            Ok(length) => Some(length),
            Err(error) => {
                debug!(%error, "frame not transcoded");
                None
            }
        }
    }

    /// The telephone-event packets due for point `index`; whether any
    /// went out.
    fn send_digit_packets(&mut self, now: Instant, index: usize) -> bool {
        let Some(payload_type) = self.points[index].telephone_event else {
            return false;
        };
        let mut sent = false;
        loop {
            let point = &mut self.points[index];
            let audio_timestamp = point.sender.next_timestamp();
            let Some(packet) = point.digits_out.poll(now, audio_timestamp) else {
                return sent;
            };
            sent = true;
            point.digit_tail = DIGIT_TAIL_FRAMES;
            let mut buffer = self.outputs.buffer();
            match self.points[index].sender.packet_with_timestamp(
                &packet.event.to_bytes(),
                packet.timestamp,
                packet.marker,
                payload_type,
                &mut buffer,
            ) {
                Ok(length) => {
                    buffer.truncate(length);
                    self.deliver(now, index, buffer);
                }
                Err(error) => {
                    warn!(%error, "cannot build telephone-event");
                    self.outputs.recycle(buffer);
                }
            }
        }
    }

    /// Everything str0m has ready: datagrams out, decrypted RTP in.
    fn drain_webrtc(&mut self, now: Instant) {
        // RTP from one WebRTC point may be sent to another: a few passes.
        for _ in 0..4 {
            let mut progressed = false;
            for index in 0..self.points.len() {
                progressed |= self.drain_point(now, index);
            }
            if !progressed {
                return;
            }
        }
    }

    /// Drains one WebRTC point; whether anything came out.
    fn drain_point(&mut self, now: Instant, index: usize) -> bool {
        let mut progressed = false;
        loop {
            let point = &mut self.points[index];
            let id = point.id;
            let Transport::WebRtc {
                transport,
                failed: failed @ false,
            } = &mut point.transport
            else {
                return progressed;
            };
            match transport.poll(now) {
                Polled::Idle => return progressed,
                Polled::Failed(problem) => {
                    info!(point = id.0, %problem, "WebRTC point failed");
                    *failed = true;
                    self.outputs
                        .event(Event::MediaFailed { point: id, problem });
                    return true;
                }
                Polled::Transmit {
                    destination,
                    contents,
                } => {
                    let mut buffer = self.outputs.buffer();
                    buffer.clear();
                    buffer.extend_from_slice(&contents);
                    self.outputs.transmit(id, Socket::Rtp, destination, buffer);
                }
                Polled::Rtp(packet) => {
                    let header = RtpHeader {
                        marker: packet.header.marker,
                        payload_type: *packet.header.payload_type,
                        sequence: packet.header.sequence_number,
                        timestamp: packet.header.timestamp,
                        ssrc: *packet.header.ssrc,
                    };
                    self.on_rtp(now, index, &header, &packet.payload);
                }
            }
            progressed = true;
        }
    }
}
