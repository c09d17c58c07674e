//! A client's own media point and its negotiation, whether it belongs to a
//! call (`cc.mediaTransport` of START_CALL / ACCEPT_CALL) or stands alone
//! (CREATE_MEDIA_POINT): the gateway's offer (RTP, WebRTC or the Flash SDP
//! for RTMP), the client's answer or its own WebRTC offer, and what the
//! point is once negotiated: a room point with its sockets or streams.
//! Which room it joins is for the caller to say.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use dialtone_codecs::Codec;
use dialtone_room::symmetric::LatchConfig;
use dialtone_room::webrtc::PendingOffer;
use dialtone_room::PointConfig;
use dialtone_rtmp::{FlashMedia, FlashSdp};
use dialtone_sip::sdp::{self, Direction, LocalAudio};
use dialtone_ws::{Capabilities, ErrorCode, MediaTarget, Outbox, ProtocolError, ServerMessage};
use tracing::warn;

use crate::call::first_bridged;
use crate::call::telephone_event;
use crate::media_ports::PortLease;
use crate::media_room::PointIo;
use crate::rtmp_streams::{RoomStreams, StreamRegistration};
use crate::state::Gateway;

/// The client's own media point, as far as it got.
pub enum ClientPoint {
    /// `RTP`: our offer is out, for an endpoint the client runs itself.
    Rtp(PortLease),
    /// `SRTP` / `WEBRTC`: our WebRTC offer waits for the client's answer
    /// (or the client's own offer).
    WebRtcOffered {
        lease: PortLease,
        offer: Box<PendingOffer>,
    },
    /// Negotiated and handed to a room; the lease keeps its port.
    Negotiated { _lease: PortLease, webrtc: bool },
    /// `RTMP` / `RTMPT`: two stream names, registered while the point
    /// lasts; the room's ends wait for a room until [`ClientPoint::take_rtmp`].
    Rtmp {
        _names: StreamRegistration,
        waiting: Option<(RoomStreams, Codec)>,
    },
}

/// A negotiated point, ready to be added to a room.
pub type ReadyPoint = (PointConfig, PointIo);

impl ClientPoint {
    /// An RTMP point's room end, the first time it is asked for: an RTMP
    /// client needs no answer, it publishes and plays whenever it likes.
    pub fn take_rtmp(&mut self) -> Option<ReadyPoint> {
        let ClientPoint::Rtmp { waiting, .. } = self else {
            return None;
        };
        let (streams, send) = waiting.take()?;
        let io = PointIo {
            rtmp: Some(streams),
            ..PointIo::default()
        };
        Some((PointConfig::rtmp(send), io))
    }

    /// Whether it is a WebRTC point that a trickled candidate can reach.
    pub fn takes_candidates(&self) -> Option<bool> {
        match self {
            ClientPoint::Negotiated { webrtc: true, .. } => Some(true),
            ClientPoint::WebRtcOffered { .. } => Some(false),
            _ => None,
        }
    }
}

/// Negotiates one client point: its SDP messages go to `outbox`, named by
/// `target` (the call, or the point).
pub struct Negotiator<'a> {
    pub gateway: &'a Gateway,
    pub outbox: &'a Outbox,
    pub session_id: &'a str,
    pub target: MediaTarget,
}

impl Negotiator<'_> {
    /// For a client whose `cc.mediaTransport` asks for a point of its own
    /// (`SRTP` / `WEBRTC` for a browser, `RTP` for an endpoint it runs,
    /// `RTMP` / `RTMPT`): a port or stream names, and our SDP_OFFER with the
    /// codecs it named that the bridge can carry. `None` when it asks for
    /// none, or none can be had (said in the log).
    pub fn offer(&self, cc: Option<&Capabilities>) -> Option<ClientPoint> {
        let cc = cc?;
        let wants = |name: &str| {
            cc.media_transport
                .iter()
                .any(|t| t.eq_ignore_ascii_case(name))
        };
        let webrtc = wants("SRTP") || wants("WEBRTC");
        if !webrtc && (wants("RTMP") || wants("RTMPT")) {
            return self.offer_rtmp(cc);
        }
        if !webrtc && !wants("RTP") {
            return None;
        }
        // WebRTC muxes RTCP on the RTP port; a plain RTP client may send
        // RTCP to the next port, which must then be ours.
        let lease = match webrtc {
            true => self.gateway.ports.lease_muxed(),
            false => self.gateway.ports.lease(),
        };
        let Some(lease) = lease else {
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
        self.send_offer(sdp);
        Some(point)
    }

    /// Whether `cc` asks for a point the gateway can make at all.
    pub fn names_a_transport(cc: &Capabilities) -> bool {
        ["RTP", "SRTP", "WEBRTC", "RTMP", "RTMPT"]
            .iter()
            .any(|name| {
                cc.media_transport
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(name))
            })
    }

    /// For an RTMP client: two stream names and the adapted SDP of seed 000
    /// telling it where to publish and what to play.
    fn offer_rtmp(&self, cc: &Capabilities) -> Option<ClientPoint> {
        if self.gateway.rtmp_addr.is_none() {
            warn!("an RTMP client, but RTMP is off (rtmp.listen)");
            return None;
        }
        let send = flv_send_codec(&cc.audio_codecs);
        let (names, streams) = self.gateway.rtmp_streams.register();
        let session_name = match &self.target {
            MediaTarget::Call(id) | MediaTarget::Point(id) => id.clone(),
        };
        let sdp = FlashSdp {
            session_name,
            session_id: self.session_id.to_string(),
            endpoints: self.gateway.rtmp_urls.clone(),
            audio: Some(FlashMedia {
                codec: flash_codec_name(send).to_string(),
                publish_stream: names.publish_name.clone(),
                play_stream: names.play_name.clone(),
            }),
            video: None,
        };
        match sdp.render() {
            Ok(sdp) => self.send_offer(sdp),
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

    /// The client's SDP_ANSWER to our offer: the point, and what joins a
    /// room when the answer is good. A bad answer is refused and the offer
    /// stays open (for WebRTC, a fresh one).
    pub fn on_answer(
        &self,
        point: Option<ClientPoint>,
        answer: &str,
    ) -> (Option<ClientPoint>, Option<ReadyPoint>) {
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
                        return (Some(ClientPoint::Rtp(lease)), None);
                    }
                }
            }
            Some(ClientPoint::WebRtcOffered { lease, offer }) => {
                let socket = match lease.rtp_socket() {
                    Ok(socket) => socket,
                    Err(error) => {
                        self.refuse_field(&error.to_string(), "sdp");
                        return (Some(ClientPoint::WebRtcOffered { lease, offer }), None);
                    }
                };
                match offer.accept_answer(Instant::now(), answer) {
                    Ok(point) => (PointConfig::webrtc(point), socket, lease, true),
                    Err(error) => {
                        // str0m has used up the offer: the client may offer instead.
                        self.refuse_field(&format!("answer not usable: {error}"), "sdp");
                        return (self.offer_again(lease), None);
                    }
                }
            }
            other => {
                self.refuse_field("no client point waiting for an answer here", "sdp");
                return (other, None);
            }
        };
        let io = PointIo {
            rtp: Some(socket),
            ..PointIo::default()
        };
        let negotiated = ClientPoint::Negotiated {
            _lease: lease,
            webrtc,
        };
        (Some(negotiated), Some((config, io)))
    }

    /// After a refused answer, a fresh WebRTC offer on the same port.
    fn offer_again(&self, lease: PortLease) -> Option<ClientPoint> {
        match self
            .gateway
            .webrtc
            .offer(Instant::now(), lease.local_addr(), &[])
        {
            Ok(offer) => {
                self.send_offer(offer.sdp.clone());
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
    /// ours: we answer it with SDP_ANSWER.
    pub fn on_offer(
        &self,
        point: Option<ClientPoint>,
        offer: &str,
    ) -> (Option<ClientPoint>, Option<ReadyPoint>) {
        let Some(ClientPoint::WebRtcOffered { lease, offer: ours }) = point else {
            self.refuse_field(
                "a client offer is taken for a WebRTC point (cc.mediaTransport SRTP) before it is connected",
                "sdp",
            );
            return (point, None);
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
                self.outbox.send(ServerMessage::SdpAnswer(
                    self.target.sdp(self.session_id, answer),
                ));
                let io = PointIo {
                    rtp: Some(socket),
                    ..PointIo::default()
                };
                let negotiated = ClientPoint::Negotiated {
                    _lease: lease,
                    webrtc: true,
                };
                (Some(negotiated), Some((PointConfig::webrtc(point), io)))
            }
            Err(problem) => {
                self.refuse_field(&problem, "sdp");
                (
                    Some(ClientPoint::WebRtcOffered { lease, offer: ours }),
                    None,
                )
            }
        }
    }

    fn send_offer(&self, sdp: String) {
        self.outbox.send(ServerMessage::SdpOffer(
            self.target.sdp(self.session_id, sdp),
        ));
    }

    pub fn refuse_field(&self, message: &str, field: &str) {
        self.outbox.send_error(
            ProtocolError::new(ErrorCode::InvalidValue, message)
                .with_field(field)
                .with_session(self.session_id),
        );
    }

    /// How a client's plain RTP point learns its far end: strict source as
    /// configured.
    fn latch_config(&self) -> LatchConfig {
        latch_config(self.gateway)
    }

    fn advertised_ip(&self) -> IpAddr {
        self.gateway.sip.advertised_addr().ip()
    }
}

/// How the gateway's RTP points learn their far end.
pub fn latch_config(gateway: &Gateway) -> LatchConfig {
    LatchConfig::strict(gateway.config.media.strict_source)
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

/// Our side of the audio: every codec the gateway can carry, those the
/// client named first.
pub fn local_audio(ip: IpAddr, lease: &PortLease, cc: Option<&Capabilities>) -> LocalAudio {
    let client_codecs = cc.map(|c| c.audio_codecs.as_slice()).unwrap_or_default();
    LocalAudio {
        address: ip,
        port: lease.rtp_port(),
        codecs: sdp::prefer(sdp::sip_codecs(), client_codecs),
        direction: Direction::SendRecv,
        session_id: u64::from(lease.rtp_port()),
        version: 1,
        crypto: Vec::new(),
    }
}
