//! One point of a room: what it is (its transport), what it sends and
//! takes, and the per-point state the room keeps for it (our outgoing RTP
//! stream, DTMF in and out, in-band tones, the route its audio comes by,
//! and for watched legs RTCP statistics and the inactivity timer).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use dialtone_codecs::{new_encoder, Codec, Transcoder, MAX_FRAME_SAMPLES, MAX_PAYLOAD_LEN};

use crate::inactivity::{InactivityConfig, InactivityTimer};
use crate::jitter::{JitterBuffer, JitterConfig};
use crate::lines::{Line, LinePoint};
use crate::mixer::{MixInput, MixOutput, Role};
use crate::offload::OffloadState;
use crate::rtmp_point::{RtmpPoint, RTMP_PAYLOAD_TYPE};
use crate::rtp::RtpSender;
use crate::srtp::{SrtpError, SrtpKeys, SrtpSession, MAX_OVERHEAD};
use crate::stats::{MediaStats, MediaStatsConfig};
use crate::symmetric::{LatchConfig, RtpLatch};
use crate::telephone_event::{
    DtmfSenderConfig, TelephoneEventReceiver, TelephoneEventSender, DEFAULT_END_TIMEOUT,
};
use crate::tones::{ToneDetector, Tones};
use crate::webrtc::{WebRtcPoint, WebRtcTransport};

/// A point's name in its room, chosen by whoever adds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PointId(pub u32);

impl std::fmt::Display for PointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "point {}", self.0)
    }
}

/// What a point is, and how its packets travel.
pub enum PointKind {
    /// Plain RTP to wherever its far end sends from (symmetric RTP),
    /// starting with the address its SDP gave.
    Rtp { remote: SocketAddr },
    /// A negotiated WebRTC peer (ICE-lite, DTLS-SRTP) on the point's socket.
    WebRtc(Box<WebRtcPoint>),
    /// An RTMP client: what it publishes comes in as FLV tags, what the
    /// room sends goes to its players as FLV tags in `send`.
    Rtmp { send: Codec },
    /// Recorded audio (at the codec's rate) played in a loop.
    Music(Arc<[i16]>),
    /// A built-in test line, inside the room.
    Line(Line),
}

/// How a point is added to a room.
pub struct PointConfig {
    pub kind: PointKind,
    /// The payload type and codec we send it (and it sends, but for RTMP).
    pub audio: Option<(u8, Codec)>,
    /// The payload type of the telephone-events it takes and sends.
    pub telephone_event: Option<u8>,
    /// Watch this leg: RTCP reports and statistics, and end it when its
    /// far end stays silent this long (while it is expected to send).
    pub watch: Option<WatchConfig>,
    /// Look for in-band DTMF in its audio.
    pub detect_tones: bool,
    /// How an RTP point learns where its far end is (strict source by
    /// default); other kinds ignore it.
    pub latch: LatchConfig,
    /// Who hears it.
    pub role: Role,
    /// SDES-SRTP keys of an RTP point: every packet out is protected,
    /// every packet in must authenticate.
    pub srtp: Option<SrtpKeys>,
}

#[derive(Debug, Clone, Copy)]
pub struct WatchConfig {
    pub rtp_timeout: Duration,
    /// Its far end sends media (its SDP is not `recvonly` / `inactive`).
    pub sends: bool,
    /// Send RTCP next to its RTP (RTP port + 1).
    pub rtcp: bool,
}

impl PointConfig {
    pub fn rtp(
        remote: SocketAddr,
        audio: Option<(u8, Codec)>,
        telephone_event: Option<u8>,
    ) -> Self {
        PointConfig {
            kind: PointKind::Rtp { remote },
            audio,
            telephone_event,
            watch: None,
            detect_tones: false,
            latch: LatchConfig::default(),
            role: Role::Full,
            srtp: None,
        }
    }

    /// A WebRTC point; digits go to it at its audio's clock, as RFC 4733
    /// asks.
    pub fn webrtc(point: WebRtcPoint) -> Self {
        let clock = point.audio.1.rtp_clock_rate();
        let telephone_event = point
            .telephone_events
            .iter()
            .find(|(_, events_clock)| *events_clock == clock)
            .map(|(payload_type, _)| *payload_type);
        PointConfig {
            audio: Some(point.audio),
            telephone_event,
            kind: PointKind::WebRtc(Box::new(point)),
            watch: None,
            detect_tones: false,
            latch: LatchConfig::default(),
            role: Role::Full,
            srtp: None,
        }
    }

    pub fn rtmp(send: Codec) -> Self {
        PointConfig {
            kind: PointKind::Rtmp { send },
            audio: Some((RTMP_PAYLOAD_TYPE, send)),
            telephone_event: None,
            watch: None,
            detect_tones: false,
            latch: LatchConfig::default(),
            role: Role::Full,
            srtp: None,
        }
    }

    pub fn line(line: Line, audio: Option<(u8, Codec)>, telephone_event: Option<u8>) -> Self {
        PointConfig {
            kind: PointKind::Line(line),
            audio,
            telephone_event,
            watch: None,
            detect_tones: false,
            latch: LatchConfig::default(),
            role: Role::Full,
            srtp: None,
        }
    }

    /// Music on hold toward `listener` only: it is heard even by a deaf
    /// point (a held far end hears nobody else).
    pub fn music(recording: Arc<[i16]>, audio: (u8, Codec), listener: PointId) -> Self {
        PointConfig {
            kind: PointKind::Music(recording),
            ..PointConfig::line(Line::Music, Some(audio), None)
        }
        .with_role(Role::Whisper(listener))
    }

    pub fn watched(self, watch: WatchConfig) -> Self {
        PointConfig {
            watch: Some(watch),
            ..self
        }
    }

    pub fn detecting_tones(self, detect_tones: bool) -> Self {
        PointConfig {
            detect_tones,
            ..self
        }
    }

    pub fn latching(self, latch: LatchConfig) -> Self {
        PointConfig { latch, ..self }
    }

    pub fn with_role(self, role: Role) -> Self {
        PointConfig { role, ..self }
    }

    pub fn secured(self, keys: SrtpKeys) -> Self {
        PointConfig {
            srtp: Some(keys),
            ..self
        }
    }
}

/// A change of a point's far end (re-INVITE, UPDATE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointUpdate {
    pub remote: SocketAddr,
    pub audio: Option<(u8, Codec)>,
    pub telephone_event: Option<u8>,
    pub sends: bool,
}

pub(crate) enum Transport {
    Rtp(RtpLatch),
    WebRtc {
        transport: Box<WebRtcTransport>,
        /// It failed and was reported; nothing more is asked of it.
        failed: bool,
    },
    Rtmp(Box<RtmpPoint>),
    Line(Box<LinePoint>),
}

/// How audio reaches a point from the point it hears.
pub(crate) enum Route {
    /// Same codec: packets forwarded as they come, offset-mapped.
    Relay,
    /// Different codecs: through a jitter buffer, transcoded every 20 ms.
    Transcode {
        jitter: JitterBuffer,
        transcoder: Box<Transcoder>,
    },
    /// Several points heard at once: the room's mix, encoded for it.
    Mix(Box<MixOutput>),
}

/// RTCP statistics and the inactivity timer of a watched leg.
pub(crate) struct Watch {
    pub(crate) stats: MediaStats,
    pub(crate) inactivity: InactivityTimer,
    pub(crate) next_snapshot: Instant,
    pub(crate) rtcp: bool,
}

/// One encoded frame of silence in a point's codec, sent where the far end
/// needs a stream to play out what came before (the end of a digit).
pub(crate) struct Silence {
    payload: [u8; MAX_PAYLOAD_LEN],
    length: usize,
}

impl Silence {
    pub(crate) fn new(codec: Codec) -> Option<Silence> {
        let mut encoder = new_encoder(codec).ok()?;
        let pcm = [0i16; MAX_FRAME_SAMPLES];
        let mut payload = [0u8; MAX_PAYLOAD_LEN];
        let length = encoder
            .encode(&pcm[..codec.frame_samples()], &mut payload)
            .ok()?;
        Some(Silence { payload, length })
    }

    pub(crate) fn payload(&self) -> &[u8] {
        &self.payload[..self.length]
    }
}

/// Frames of silence after the last digit packet when no audio flows.
pub(crate) const DIGIT_TAIL_FRAMES: u32 = 10;

pub(crate) struct Point {
    pub(crate) id: PointId,
    pub(crate) transport: Transport,
    /// The payload type and codec we send this point.
    pub(crate) audio: Option<(u8, Codec)>,
    /// What its far end sends: the same, except for an RTMP publisher,
    /// whose codec is known from its first frame.
    pub(crate) receive: Option<(u8, Codec)>,
    /// The payload type of the events we send this point, if it takes them.
    pub(crate) telephone_event: Option<u8>,
    /// The payload types its events arrive with.
    pub(crate) received_events: Vec<u8>,
    /// Who hears it.
    pub(crate) role: Role,
    /// It hears nobody (its far end is on hold).
    pub(crate) deaf: bool,
    /// The points whose audio and digits this one gets.
    pub(crate) sources: Vec<PointId>,
    pub(crate) route: Option<Route>,
    /// Its audio on the way into the mix, while someone mixes it.
    pub(crate) mix_input: Option<MixInput>,
    pub(crate) sender: RtpSender,
    pub(crate) digits_in: TelephoneEventReceiver,
    pub(crate) digits_out: TelephoneEventSender,
    /// Whether an audio packet went to this point since the last tick, so
    /// the clock is not advanced twice.
    pub(crate) sent_audio: bool,
    /// Ticks left in which silence fills in for missing audio after digits.
    pub(crate) digit_tail: u32,
    // Boxed, like the two below: made only when needed, they would
    // otherwise take most of every point's room (about 9 KiB of 10).
    pub(crate) silence: Option<Box<Silence>>,
    /// In-band DTMF toward this point's far end, made on first use.
    pub(crate) tones: Option<Box<Tones>>,
    /// Detects in-band DTMF in this point's audio.
    pub(crate) detector: Option<Box<ToneDetector>>,
    pub(crate) watch: Option<Watch>,
    pub(crate) srtp: Option<Box<SrtpSession>>,
    /// Packets dropped for failing SRTP or SRTCP checks.
    pub(crate) srtp_rejected: u64,
    /// Its relay toward its listener, in the room or with a forwarder.
    pub(crate) offload: OffloadState,
}

impl Point {
    pub(crate) fn new(id: PointId, config: PointConfig, now: Instant) -> Result<Point, SrtpError> {
        let PointConfig {
            kind,
            audio,
            telephone_event,
            watch,
            detect_tones,
            latch,
            role,
            srtp,
        } = config;
        let srtp = srtp
            .map(|keys| SrtpSession::new(&keys).map(Box::new))
            .transpose()?;
        let mut received_events: Vec<u8> = telephone_event.into_iter().collect();
        let mut receive = audio;
        let transport = match kind {
            PointKind::Rtp { remote } => Transport::Rtp(RtpLatch::new(Some(remote), latch)),
            PointKind::WebRtc(point) => {
                let WebRtcPoint {
                    transport,
                    telephone_events,
                    ..
                } = *point;
                received_events = telephone_events.iter().map(|(pt, _)| *pt).collect();
                Transport::WebRtc {
                    transport,
                    failed: false,
                }
            }
            PointKind::Rtmp { send } => {
                receive = None;
                match RtmpPoint::new(send) {
                    Some(rtmp) => Transport::Rtmp(Box::new(rtmp)),
                    None => {
                        tracing::warn!(%send, "no FLV form for this codec; the RTMP client gets no audio");
                        Transport::Rtp(RtpLatch::new(None, latch))
                    }
                }
            }
            PointKind::Line(line) => Transport::Line(Box::new(LinePoint::new(line, audio))),
            PointKind::Music(recording) => {
                Transport::Line(Box::new(LinePoint::music(recording, audio)))
            }
        };
        let clock = audio.map_or(8000, |(_, codec)| codec.rtp_clock_rate());
        let sender = RtpSender::new(rand::random(), rand::random(), rand::random());
        let watch = watch.map(|config| {
            let mut stats_config = MediaStatsConfig::new(
                sender.ssrc(),
                format!("dialtone-{:08x}", sender.ssrc()),
                clock,
            );
            stats_config.telephone_event_payload_type = telephone_event;
            let mut inactivity = InactivityTimer::new(
                InactivityConfig {
                    start_timeout: config.rtp_timeout,
                    stop_timeout: config.rtp_timeout,
                },
                now,
            );
            inactivity.set_expecting_media(config.sends, now);
            Watch {
                stats: MediaStats::new(stats_config, now, SystemTime::now()),
                inactivity,
                next_snapshot: now,
                rtcp: config.rtcp,
            }
        });
        let codec = audio.map(|(_, codec)| codec);
        Ok(Point {
            id,
            transport,
            audio,
            receive,
            telephone_event,
            received_events,
            role,
            deaf: false,
            sources: Vec::new(),
            route: None,
            mix_input: None,
            sender,
            digits_in: TelephoneEventReceiver::new(8000, DEFAULT_END_TIMEOUT),
            digits_out: TelephoneEventSender::new(DtmfSenderConfig {
                clock_rate: clock,
                ..DtmfSenderConfig::default()
            }),
            sent_audio: false,
            digit_tail: 0,
            silence: None,
            tones: None,
            detector: codec
                .filter(|_| detect_tones)
                .and_then(ToneDetector::new)
                .map(Box::new),
            watch,
            srtp,
            srtp_rejected: 0,
            offload: OffloadState::default(),
        })
    }

    /// Protects one of our packets for an SRTP point, in place (the
    /// buffer's spare capacity takes the tag); false when it must not go.
    pub(crate) fn protect(&mut self, packet: &mut Vec<u8>, rtcp: bool) -> bool {
        let Some(srtp) = self.srtp.as_mut() else {
            return true;
        };
        let len = packet.len();
        packet.resize(len + MAX_OVERHEAD, 0);
        let protected = if rtcp {
            srtp.protect_rtcp(packet, len)
        } else {
            srtp.protect_rtp(packet, len)
        };
        match protected {
            Ok(len) => {
                packet.truncate(len);
                true
            }
            Err(error) => {
                tracing::warn!(point = self.id.0, %error, "cannot protect a packet");
                false
            }
        }
    }

    /// The plain packet of an SRTP point's datagram, decrypted into
    /// `scratch`; the datagram itself for a point without SRTP. None (and
    /// counted) when it fails authentication or replay checks.
    pub(crate) fn unprotect<'a>(
        &mut self,
        data: &'a [u8],
        scratch: &'a mut Vec<u8>,
        rtcp: bool,
    ) -> Option<&'a [u8]> {
        let Some(srtp) = self.srtp.as_mut() else {
            return Some(data);
        };
        if scratch.len() < data.len() {
            scratch.resize(data.len(), 0);
        }
        let result = match scratch.get_mut(..data.len()) {
            Some(packet) => {
                packet.copy_from_slice(data);
                if rtcp {
                    srtp.unprotect_rtcp(packet)
                } else {
                    srtp.unprotect_rtp(packet)
                }
            }
            None => Err(SrtpError::TooShort(data.len())),
        };
        match result {
            Ok(len) => Some(&scratch[..len]),
            Err(error) => {
                self.srtp_rejected += 1;
                // The first says keys or peer are wrong; the rest would
                // only fill the log.
                if self.srtp_rejected == 1 {
                    tracing::info!(point = self.id.0, %error, rtcp, "SRTP packet rejected");
                }
                None
            }
        }
    }

    /// Whether RTP of `payload_type` is media this point negotiated to take
    /// (its audio codec or telephone-event).
    pub(crate) fn takes_payload_type(&self, payload_type: u8) -> bool {
        self.receive.map(|(pt, _)| pt) == Some(payload_type)
            || self.received_events.contains(&payload_type)
    }

    /// RTP clock of the audio we send it.
    pub(crate) fn clock(&self) -> u32 {
        self.audio.map_or(8000, |(_, codec)| codec.rtp_clock_rate())
    }

    /// RTP timestamp units of one 20 ms frame of its audio.
    pub(crate) fn frame_units(&self) -> u32 {
        self.clock() / 50
    }

    /// Where its far end is, for RTP points.
    pub(crate) fn destination(&self) -> Option<SocketAddr> {
        match &self.transport {
            Transport::Rtp(latch) => latch.destination(),
            _ => None,
        }
    }

    pub(crate) fn line(&self) -> Option<Line> {
        match &self.transport {
            Transport::Line(line) => Some(line.line),
            _ => None,
        }
    }

    pub(crate) fn tones_busy(&self) -> bool {
        self.tones.as_deref().is_some_and(Tones::is_busy)
    }

    /// Whether the room must tick for this point.
    pub(crate) fn needs_ticks(&self) -> bool {
        matches!(self.route, Some(Route::Transcode { .. } | Route::Mix(_)))
            || self.mix_input.is_some()
            || !self.digits_out.is_idle()
            || self.digit_tail > 0
            || self.tones_busy()
            || matches!(
                self.line(),
                Some(Line::Tone | Line::Ringback(_) | Line::Music)
            )
    }

    /// Whether it hears `source`.
    pub(crate) fn hears(&self, source: PointId) -> bool {
        self.sources.contains(&source)
    }

    /// Sets the route of a point that hears several others: the mix at
    /// `mix_rate`, in its codec.
    pub(crate) fn route_mix(&mut self, mix_rate: dialtone_codecs::SampleRate) {
        let Some((_, codec)) = self.audio else {
            self.route = None;
            return;
        };
        if let Some(Route::Mix(output)) = &self.route {
            if output.fits(codec, mix_rate) {
                return;
            }
        }
        self.route = match MixOutput::new(codec, mix_rate) {
            Ok(output) => Some(Route::Mix(Box::new(output))),
            Err(error) => {
                tracing::warn!(%error, %codec, "cannot mix for this codec");
                None
            }
        };
    }

    /// The effort of this point's encoder, where it transcodes or mixes.
    pub(crate) fn set_encoder_complexity(&mut self, complexity: u8) {
        match &mut self.route {
            Some(Route::Transcode { transcoder, .. }) => transcoder.set_complexity(complexity),
            Some(Route::Mix(output)) => output.set_complexity(complexity),
            Some(Route::Relay) | None => {}
        }
    }

    /// Sets the route from `source`'s codec to ours, keeping a transcoder
    /// that already does it.
    pub(crate) fn route_from(&mut self, source: Option<Codec>) {
        let to = self.audio.map(|(_, codec)| codec);
        self.route = match (source, to) {
            (Some(from), Some(to)) if from == to => Some(Route::Relay),
            (Some(from), Some(to)) => match self.route.take() {
                Some(Route::Transcode { jitter, transcoder })
                    if transcoder.from_codec() == from && transcoder.to_codec() == to =>
                {
                    Some(Route::Transcode { jitter, transcoder })
                }
                _ => match Transcoder::new(from, to) {
                    Ok(transcoder) => {
                        tracing::info!(point = self.id.0, %from, %to, "transcoding");
                        Some(Route::Transcode {
                            jitter: JitterBuffer::new(JitterConfig::default()),
                            transcoder: Box::new(transcoder),
                        })
                    }
                    Err(error) => {
                        tracing::warn!(%error, %from, %to, "no transcoder");
                        None
                    }
                },
            },
            _ => None,
        };
    }
}
