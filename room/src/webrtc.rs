//! The client's WebRTC point: str0m (ICE-lite, DTLS-SRTP, rtcp-mux,
//! BUNDLE) in RTP mode, so the media room sees plain RTP packets and keeps
//! its own numbering, jitter buffer and digit handling for this point as
//! for any other. This module turns SDP into a negotiated [`WebRtcPoint`]
//! and wraps str0m's poll loop in [`WebRtcTransport`]; the room owns the
//! socket and does the I/O.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use dialtone_codecs::Codec;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::config::DtlsCert;
use str0m::format::{Codec as RtcCodec, FormatParams};
use str0m::media::{Direction, Frequency, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpPacket, RtpWrite};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};
use tracing::{debug, info};

use crate::rtp::RtpHeader;

#[derive(Debug, thiserror::Error)]
pub enum WebRtcError {
    #[error("unreadable SDP: {0}")]
    Sdp(#[from] str0m::error::SdpError),
    #[error("the SDP has no audio the gateway can carry")]
    NoAudio,
    #[error("{0}")]
    Rtc(#[from] str0m::RtcError),
    #[error("no DTLS certificate could be made")]
    Certificate,
    #[error("bad local ICE candidate: {0}")]
    Candidate(String),
}

/// What every WebRTC point of the gateway shares.
#[derive(Clone)]
pub struct WebRtcSettings {
    /// The address in our ICE candidates.
    pub candidate_ip: IpAddr,
    /// One certificate for all points: making one per call costs a key
    /// generation, and the fingerprint in each SDP is what the browser
    /// checks.
    pub certificate: DtlsCert,
    pub timeouts: WebRtcTimeouts,
}

/// How long a point may take to connect, and be silent once connected.
#[derive(Debug, Clone, Copy)]
pub struct WebRtcTimeouts {
    pub connect: Duration,
    /// RFC 7675: a browser sends consent checks every few seconds; none
    /// (and no media) for this long means it is gone. ICE-lite does no
    /// checks of its own, so str0m would not notice.
    pub consent: Duration,
}

impl WebRtcSettings {
    pub fn new(candidate_ip: IpAddr, timeouts: WebRtcTimeouts) -> Result<Self, WebRtcError> {
        let provider = str0m::crypto::from_feature_flags();
        let certificate = provider
            .dtls_provider
            .generate_certificate()
            .ok_or(WebRtcError::Certificate)?;
        provider.install_process_default();
        Ok(WebRtcSettings {
            candidate_ip,
            certificate,
            timeouts,
        })
    }

    /// An `Rtc` of [`point_config`] with our certificate and a host
    /// candidate on `local`'s port.
    fn rtc(
        &self,
        now: Instant,
        local: SocketAddr,
        preferred: &[String],
    ) -> Result<Rtc, WebRtcError> {
        let mut rtc = point_config(preferred)
            .set_dtls_cert(self.certificate.clone())
            .build(now);
        let candidate_address = SocketAddr::new(self.candidate_ip, local.port());
        let candidate = Candidate::host(candidate_address, "udp")
            .map_err(|error| WebRtcError::Candidate(error.to_string()))?;
        rtc.add_local_candidate(candidate);
        Ok(rtc)
    }

    /// Our offer for a point on `local` (the client answers it).
    pub fn offer(
        &self,
        now: Instant,
        local: SocketAddr,
        preferred: &[String],
    ) -> Result<PendingOffer, WebRtcError> {
        let mut rtc = self.rtc(now, local, preferred)?;
        let mut change = rtc.sdp_api();
        let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let (offer, pending) = change.apply().ok_or(WebRtcError::NoAudio)?;
        Ok(PendingOffer {
            rtc,
            mid,
            pending,
            sdp: offer.to_sdp_string(),
            local,
            timeouts: self.timeouts,
        })
    }

    /// Answers the client's offer for a point on `local`: the point and
    /// our SDP answer.
    pub fn answer(
        &self,
        now: Instant,
        local: SocketAddr,
        preferred: &[String],
        offer: &str,
    ) -> Result<(WebRtcPoint, String), WebRtcError> {
        let mut rtc = self.rtc(now, local, preferred)?;
        let answer = rtc
            .sdp_api()
            .accept_offer(SdpOffer::from_sdp_string(offer)?)?;
        let answer = answer.to_sdp_string();
        let mid = audio_mid(&answer).ok_or(WebRtcError::NoAudio)?;
        let point = WebRtcPoint::negotiated(now, rtc, mid, local, self.timeouts)?;
        Ok((point, answer))
    }
}

/// How every WebRTC point is configured (the benchmark builds the same):
/// ICE-lite, RTP mode, the audio codecs the bridge carries, those the
/// client named in `preferred` first, and telephone-event at 48 and 8 kHz
/// (browsers send digits at their audio codec's clock).
pub fn point_config(preferred: &[String]) -> RtcConfig {
    let mut config = RtcConfig::new()
        .set_ice_lite(true)
        .set_rtp_mode(true)
        .set_stats_interval(None)
        .clear_codecs();
    let codecs = config.codec_config();
    for codec in codec_order(preferred) {
        match codec {
            RtcCodec::Opus => codecs.enable_opus(true, false),
            RtcCodec::PCMU => codecs.enable_pcmu(true, false),
            RtcCodec::PCMA => codecs.enable_pcma(true, false),
            _ => codecs.enable_g722(true, false),
        }
    }
    for (payload_type, clock) in [
        (110, Frequency::FORTY_EIGHT_KHZ),
        (101, Frequency::EIGHT_KHZ),
    ] {
        codecs.add_config(
            payload_type.into(),
            None,
            RtcCodec::Tele,
            clock,
            None,
            FormatParams::parse_line("0-15"),
        );
    }
    config
}

/// The `a=mid` of the first audio section of `sdp`.
pub fn audio_mid(sdp: &str) -> Option<Mid> {
    let mut in_audio = false;
    for line in sdp.lines() {
        if let Some(media) = line.strip_prefix("m=") {
            in_audio = media.starts_with("audio ");
        } else if let Some(mid) = line.strip_prefix("a=mid:").filter(|_| in_audio) {
            return Some(Mid::from(mid.trim()));
        }
    }
    None
}

/// The bridge's codecs in the order the client named them, the rest after.
fn codec_order(preferred: &[String]) -> Vec<RtcCodec> {
    let carried = [
        ("opus", RtcCodec::Opus),
        ("pcmu", RtcCodec::PCMU),
        ("pcma", RtcCodec::PCMA),
        ("g722", RtcCodec::G722),
    ];
    let mut order: Vec<RtcCodec> = preferred
        .iter()
        .filter_map(|label| {
            let name = label.split('/').next()?.to_ascii_lowercase();
            carried
                .iter()
                .find(|(known, _)| *known == name)
                .map(|(_, codec)| *codec)
        })
        .collect();
    for (_, codec) in carried {
        if !order.contains(&codec) {
            order.push(codec);
        }
    }
    order
}

/// Our offer, waiting for the client's answer.
pub struct PendingOffer {
    rtc: Rtc,
    mid: Mid,
    pending: SdpPendingOffer,
    pub sdp: String,
    local: SocketAddr,
    timeouts: WebRtcTimeouts,
}

impl PendingOffer {
    pub fn accept_answer(self, now: Instant, answer: &str) -> Result<WebRtcPoint, WebRtcError> {
        let PendingOffer {
            mut rtc,
            mid,
            pending,
            local,
            timeouts,
            ..
        } = self;
        rtc.sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(answer)?)?;
        WebRtcPoint::negotiated(now, rtc, mid, local, timeouts)
    }
}

/// A negotiated WebRTC point, ready to be driven by the room.
#[derive(Debug)]
pub struct WebRtcPoint {
    pub transport: Box<WebRtcTransport>,
    /// The audio payload type and codec we send, the client's first that
    /// the bridge carries.
    pub audio: (u8, Codec),
    /// The telephone-event payload types the client may send digits with,
    /// and their clocks.
    pub telephone_events: Vec<(u8, u32)>,
}

impl WebRtcPoint {
    fn negotiated(
        now: Instant,
        rtc: Rtc,
        mid: Mid,
        local: SocketAddr,
        timeouts: WebRtcTimeouts,
    ) -> Result<WebRtcPoint, WebRtcError> {
        let media = rtc.media(mid).ok_or(WebRtcError::NoAudio)?;
        let mut audio = None;
        let mut telephone_events = Vec::new();
        for payload_type in media.remote_pts() {
            let Some(params) = rtc.codec_config().find(|p| p.pt() == *payload_type) else {
                continue;
            };
            let spec = params.spec();
            let number = **payload_type;
            match spec.codec {
                RtcCodec::Tele => telephone_events.push((number, spec.clock_rate.get())),
                RtcCodec::Opus if audio.is_none() => audio = Some((number, Codec::Opus)),
                RtcCodec::PCMU if audio.is_none() => audio = Some((number, Codec::Pcmu)),
                RtcCodec::PCMA if audio.is_none() => audio = Some((number, Codec::Pcma)),
                RtcCodec::G722 if audio.is_none() => audio = Some((number, Codec::G722)),
                _ => {}
            }
        }
        let audio = audio.ok_or(WebRtcError::NoAudio)?;
        info!(?audio, ?telephone_events, "WebRTC point negotiated");
        Ok(WebRtcPoint {
            transport: Box::new(WebRtcTransport {
                rtc,
                mid,
                local,
                connect_deadline: now + timeouts.connect,
                timeouts,
                last_received: now,
                ice: IceConnectionState::New,
                connected: false,
                timeout: None,
                sequence_cycles: 0,
                last_sequence: None,
            }),
            audio,
            telephone_events,
        })
    }
}

/// What the transport has for the room.
// Returned and matched at once, never stored: boxing the packet would only
// add an allocation per packet.
#[allow(clippy::large_enum_variant)]
pub enum Polled {
    /// A datagram to send.
    Transmit {
        destination: SocketAddr,
        contents: Vec<u8>,
    },
    /// An RTP packet from the client, decrypted.
    Rtp(RtpPacket),
    /// The point cannot carry media: ICE or DTLS did not complete, or
    /// connectivity was lost. The text says which.
    Failed(String),
    /// Nothing until more input or the deadline.
    Idle,
}

/// str0m's state machine for one point, fed by the room.
#[derive(Debug)]
pub struct WebRtcTransport {
    rtc: Rtc,
    mid: Mid,
    local: SocketAddr,
    connect_deadline: Instant,
    timeouts: WebRtcTimeouts,
    /// When the client last sent anything (consent check, media).
    last_received: Instant,
    ice: IceConnectionState,
    /// ICE and DTLS are up: SRTP flows.
    connected: bool,
    /// str0m's next timer.
    timeout: Option<Instant>,
    /// Our RTP sequence numbers, extended for SRTP's rollover counter.
    sequence_cycles: u64,
    last_sequence: Option<u16>,
}

impl WebRtcTransport {
    /// A datagram that arrived on the point's socket.
    pub fn receive(&mut self, now: Instant, source: SocketAddr, datagram: &[u8]) {
        let Ok(contents) = datagram.try_into() else {
            debug!(%source, "datagram str0m does not take");
            return;
        };
        self.last_received = now;
        let input = Input::Receive(
            self.last_received,
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.local,
                contents,
            },
        );
        if let Err(error) = self.rtc.handle_input(input) {
            debug!(%error, %source, "datagram refused");
        }
    }

    /// When the room must call [`Self::on_deadline`].
    pub fn deadline(&self) -> Option<Instant> {
        let liveness = if self.connected {
            self.last_received + self.timeouts.consent
        } else {
            self.connect_deadline
        };
        self.timeout.into_iter().chain([liveness]).min()
    }

    pub fn on_deadline(&mut self, now: Instant) {
        if let Err(error) = self.rtc.handle_input(Input::Timeout(now)) {
            debug!(%error, "WebRTC timer");
        }
    }

    /// A candidate the client trickled (`candidate:…`); an empty one ends
    /// its candidates, which ICE-lite does not need to know.
    pub fn add_remote_candidate(&mut self, candidate: &str) {
        let text = candidate.trim();
        if text.is_empty() {
            return;
        }
        match Candidate::from_sdp_string(text) {
            Ok(candidate) => self.rtc.add_remote_candidate(candidate),
            Err(error) => info!(%error, %text, "unusable ICE candidate"),
        }
    }

    /// Sends one RTP packet of ours (header and payload as built by the
    /// room's sender) through SRTP.
    pub fn send_rtp(&mut self, now: Instant, header: &RtpHeader, payload: &[u8]) {
        if !self.connected {
            return;
        }
        let wrapped = self
            .last_sequence
            .is_some_and(|last| header.sequence < last && last - header.sequence > u16::MAX / 2);
        if wrapped {
            self.sequence_cycles += 1;
        }
        self.last_sequence = Some(header.sequence);
        let sequence = (self.sequence_cycles << 16) | u64::from(header.sequence);
        let mut api = self.rtc.direct_api();
        let Some(stream) = api.stream_tx_by_mid(self.mid, None) else {
            return;
        };
        stream.write_rtp(
            RtpWrite::new(
                header.payload_type.into(),
                sequence.into(),
                header.timestamp,
                now,
                payload,
            )
            .marker(header.marker),
        );
    }

    /// The next thing for the room; call until [`Polled::Idle`].
    pub fn poll(&mut self, now: Instant) -> Polled {
        if !self.connected && now >= self.connect_deadline {
            return Polled::Failed(self.connect_failure());
        }
        if self.connected && now >= self.last_received + self.timeouts.consent {
            return Polled::Failed(format!(
                "ICE: the client's consent checks stopped (nothing for {:?})",
                self.timeouts.consent
            ));
        }
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(at)) => {
                    self.timeout = Some(at);
                    return Polled::Idle;
                }
                Ok(Output::Transmit(transmit)) => {
                    return Polled::Transmit {
                        destination: transmit.destination,
                        contents: transmit.contents.into(),
                    }
                }
                Ok(Output::Event(event)) => match event {
                    Event::RtpPacket(packet) => return Polled::Rtp(packet),
                    Event::Connected => {
                        info!("WebRTC point connected (ICE and DTLS-SRTP up)");
                        self.connected = true;
                    }
                    Event::IceConnectionStateChange(state) => {
                        debug!(?state, "ICE state");
                        self.ice = state;
                    }
                    Event::Closed => {
                        return Polled::Failed(
                            "DTLS: the browser closed the connection".to_string(),
                        )
                    }
                    _ => {}
                },
                Err(error) => return Polled::Failed(format!("WebRTC: {error}")),
            }
        }
    }

    fn connect_failure(&self) -> String {
        let waited = self.timeouts.connect;
        match self.ice {
            IceConnectionState::New => {
                format!("ICE: no connectivity check from the client within {waited:?}")
            }
            IceConnectionState::Checking => {
                format!("ICE: connectivity checks did not succeed within {waited:?}")
            }
            _ => format!("DTLS: handshake not completed within {waited:?} of ICE connecting"),
        }
    }
}
