//! A WebRTC client for tests that need no browser: str0m as a full ICE
//! agent answering the gateway's SDP_OFFER on 127.0.0.1. It sends a tone
//! as PCMU over SRTP and decodes what comes back. It can also misbehave
//! the way a broken client does: answer and then drop every DTLS record it
//! would send, so ICE completes and DTLS never does.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use dialtone_codecs::{new_decoder, new_encoder, MAX_PAYLOAD_LEN};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::{Codec, FormatParams};
use str0m::media::{Direction, Frequency, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;

use crate::rtp_peer::fill_tone;

/// PCMU's static payload type, which the gateway always offers.
const PCMU: u8 = 0;
/// telephone-event/8000 in the gateway's offer.
const TELEPHONE_EVENT: u8 = 101;
const DIGITS: &[u8; 16] = b"0123456789*#ABCD";

pub struct WebRtcPeer {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    mid: Mid,
    drop_dtls: bool,
    connected: bool,
    /// Tells [`WebRtcPeer::connection`]'s watchers when ICE and DTLS completed.
    connection: tokio::sync::watch::Sender<bool>,
}

/// What a peer saw while it ran.
#[derive(Debug, Default)]
pub struct PeerReport {
    /// ICE and DTLS completed.
    pub connected: bool,
    /// The audio it received, decoded (PCMU, 8 kHz).
    pub heard: Vec<i16>,
    /// The RFC 4733 digits it received, once each.
    pub digits: Vec<char>,
    /// The RTP timestamp of the last digit event, to count each digit once.
    last_event_timestamp: Option<u32>,
}

impl WebRtcPeer {
    /// Answers `offer` (the gateway's SDP_OFFER) with PCMU only; returns the
    /// peer and the SDP for SDP_ANSWER.
    pub async fn answer(offer: &str, drop_dtls: bool) -> anyhow::Result<(WebRtcPeer, String)> {
        let (mut rtc, socket, local) = new_rtc().await?;
        let answer = rtc
            .sdp_api()
            .accept_offer(SdpOffer::from_sdp_string(offer).context("gateway's offer")?)
            .context("accepting the gateway's offer")?;
        let answer = answer.to_sdp_string();
        let mid = audio_mid(&answer).context("the answer has no audio")?;
        let peer = WebRtcPeer {
            rtc,
            socket,
            local,
            mid,
            drop_dtls,
            connected: false,
            connection: tokio::sync::watch::channel(false).0,
        };
        Ok((peer, answer))
    }

    /// Offers instead of answering (the client-offer flow): the SDP for
    /// SDP_OFFER, and the peer that takes the gateway's SDP_ANSWER.
    pub async fn offer() -> anyhow::Result<(OfferingPeer, String)> {
        let (mut rtc, socket, local) = new_rtc().await?;
        let mut change = rtc.sdp_api();
        let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let (offer, pending) = change.apply().context("no offer")?;
        let peer = WebRtcPeer {
            rtc,
            socket,
            local,
            mid,
            drop_dtls: false,
            connected: false,
            connection: tokio::sync::watch::channel(false).0,
        };
        Ok((OfferingPeer { peer, pending }, offer.to_sdp_string()))
    }

    /// Turns true once ICE and DTLS completed, for a test that acts on the connection (an
    /// event, not a guess at a delay).
    pub fn connection(&self) -> tokio::sync::watch::Receiver<bool> {
        self.connection.subscribe()
    }

    /// Runs for `duration`: connects, then sends a `hz` tone (when given)
    /// every 20 ms and decodes what arrives.
    pub async fn run(mut self, duration: Duration, hz: Option<f64>) -> anyhow::Result<PeerReport> {
        let mut encoder = new_encoder(dialtone_codecs::Codec::Pcmu)?;
        let mut decoder = new_decoder(dialtone_codecs::Codec::Pcmu)?;
        let mut report = PeerReport::default();
        let end = Instant::now() + duration;
        let mut next_frame = Instant::now();
        let mut frame_index: u64 = 0;
        let mut buffer = vec![0u8; 2000];
        let mut pcm = [0i16; 960];
        while Instant::now() < end {
            let timeout = self.drain(&mut decoder, &mut report, &mut pcm).await?;
            if self.connected && hz.is_some() && Instant::now() >= next_frame {
                let mut tone = [0i16; 160];
                fill_tone(&mut tone, hz.unwrap_or_default(), 8000.0, frame_index * 160);
                let mut payload = [0u8; MAX_PAYLOAD_LEN];
                let length = encoder.encode(&tone, &mut payload)?;
                let mut api = self.rtc.direct_api();
                if let Some(stream) = api.stream_tx_by_mid(self.mid, None) {
                    stream.write_rtp(RtpWrite::new(
                        PCMU.into(),
                        (frame_index + 1).into(),
                        (frame_index * 160) as u32,
                        Instant::now(),
                        payload[..length].to_vec(),
                    ));
                }
                frame_index += 1;
                next_frame += Duration::from_millis(20);
                continue;
            }
            let wake = [timeout, end]
                .into_iter()
                .chain(self.connected.then_some(next_frame))
                .min()
                .unwrap_or(end);
            let wait = wake.saturating_duration_since(Instant::now());
            match tokio::time::timeout(wait, self.socket.recv_from(&mut buffer)).await {
                Ok(Ok((length, source))) => {
                    let Ok(contents) = buffer[..length].try_into() else {
                        continue;
                    };
                    let input = Input::Receive(
                        Instant::now(),
                        Receive {
                            proto: Protocol::Udp,
                            source,
                            destination: self.local,
                            contents,
                        },
                    );
                    if let Err(error) = self.rtc.handle_input(input) {
                        eprintln!("[webrtc peer] input refused: {error}");
                    }
                }
                Ok(Err(error)) => bail!("peer socket: {error}"),
                Err(_) => self.rtc.handle_input(Input::Timeout(Instant::now()))?,
            }
        }
        report.connected = self.connected;
        Ok(report)
    }

    /// Sends what str0m has to send and takes its events; returns its next
    /// timer.
    async fn drain(
        &mut self,
        decoder: &mut Box<dyn dialtone_codecs::Decoder>,
        report: &mut PeerReport,
        pcm: &mut [i16],
    ) -> anyhow::Result<Instant> {
        loop {
            match self.rtc.poll_output()? {
                Output::Timeout(at) => return Ok(at),
                Output::Transmit(transmit) => {
                    let first = transmit.contents.first().copied().unwrap_or(0);
                    // RFC 7983: first bytes 20..=63 are DTLS.
                    if self.drop_dtls && (20..=63).contains(&first) {
                        continue;
                    }
                    self.socket
                        .send_to(&transmit.contents, transmit.destination)
                        .await?;
                }
                Output::Event(Event::Connected) => {
                    self.connected = true;
                    self.connection.send_replace(true);
                }
                Output::Event(Event::RtpPacket(packet)) => match *packet.header.payload_type {
                    PCMU => {
                        let samples = decoder.decode(&packet.payload, pcm)?;
                        report.heard.extend_from_slice(&pcm[..samples]);
                    }
                    TELEPHONE_EVENT => {
                        let timestamp = packet.header.timestamp;
                        if report.last_event_timestamp != Some(timestamp) {
                            report.last_event_timestamp = Some(timestamp);
                            let event = packet.payload.first().copied().unwrap_or(u8::MAX);
                            if let Some(digit) = DIGITS.get(usize::from(event)) {
                                report.digits.push(char::from(*digit));
                            }
                        }
                    }
                    _ => {}
                },
                Output::Event(_) => {}
            }
        }
    }
}

/// A PCMU + telephone-event/8000 peer in RTP mode with a host candidate on
/// 127.0.0.1.
async fn new_rtc() -> anyhow::Result<(Rtc, UdpSocket, SocketAddr)> {
    str0m::crypto::from_feature_flags().install_process_default();
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let local = socket.local_addr()?;
    let mut config = RtcConfig::new()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_pcmu(true, false);
    config.codec_config().add_config(
        TELEPHONE_EVENT.into(),
        None,
        Codec::Tele,
        Frequency::EIGHT_KHZ,
        None,
        FormatParams::parse_line("0-15"),
    );
    let mut rtc = config.build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp")?);
    Ok((rtc, socket, local))
}

/// A peer whose offer is out, waiting for the gateway's answer.
pub struct OfferingPeer {
    peer: WebRtcPeer,
    pending: SdpPendingOffer,
}

impl OfferingPeer {
    pub fn accept_answer(mut self, answer: &str) -> anyhow::Result<WebRtcPeer> {
        let answer = SdpAnswer::from_sdp_string(answer).context("gateway's answer")?;
        self.peer
            .rtc
            .sdp_api()
            .accept_answer(self.pending, answer)?;
        Ok(self.peer)
    }
}

/// The `a=mid` of the first audio section of `sdp`.
fn audio_mid(sdp: &str) -> Option<Mid> {
    let section = sdp
        .split("m=")
        .find(|section| section.starts_with("audio "))?;
    let mid = section
        .lines()
        .find_map(|line| line.strip_prefix("a=mid:"))?;
    Some(Mid::from(mid.trim()))
}
