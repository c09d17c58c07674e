//! Built-in test lines, answered by the gateway's own SIP user agent so a
//! call to them crosses the whole path (WebSocket → SIP → RTP and back):
//!
//! - `echo`: returns every audio packet it receives;
//! - `tone`: plays a 1 kHz tone in the negotiated codec;
//! - `digits`: sends back, as RFC 4733 events, each digit it receives, and
//!   logs it.
//!
//! A newcomer with no PBX dials `echo`, `tone` or `digits`; with a PBX
//! they are `sip:echo@<gateway SIP address>`.

use std::f64::consts::PI;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dialtone_codecs::{new_encoder, Codec, MAX_FRAME_SAMPLES, MAX_PAYLOAD_LEN};
use dialtone_sip::sdp::{self, Direction, LocalAudio};
use dialtone_sip::{CallEvent, IncomingCall, IncomingCalls};
use tokio::net::UdpSocket;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{info, info_span, warn, Instrument};

use crate::media::rtp::{RtpPacket, RtpSender};
use crate::media::telephone_event::{
    DigitEvent, DtmfSenderConfig, TelephoneEventReceiver, TelephoneEventSender, DEFAULT_END_TIMEOUT,
};
use crate::media_ports::PortLease;
use crate::state::Gateway;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    Echo,
    Tone,
    Digits,
}

impl Line {
    const ALL: [Line; 3] = [Line::Echo, Line::Tone, Line::Digits];

    fn name(self) -> &'static str {
        match self {
            Line::Echo => "echo",
            Line::Tone => "tone",
            Line::Digits => "digits",
        }
    }
}

const TONE_HZ: f64 = 1000.0;
/// A test line hangs up by itself after this, so a forgotten call ends.
const LONGEST_CALL: Duration = Duration::from_secs(600);

/// Answers calls to the test lines until the gateway stops. The listeners
/// live as long as the gateway and are not counted as tasks in /status;
/// each call they answer is.
pub fn serve(gateway: &Arc<Gateway>) {
    for line in Line::ALL {
        let calls = gateway.sip.incoming_calls(line.name());
        tokio::spawn(answer_calls(gateway.clone(), line, calls));
    }
}

async fn answer_calls(gateway: Arc<Gateway>, line: Line, mut calls: IncomingCalls) {
    loop {
        let call = tokio::select! {
            _ = gateway.shutdown.cancelled() => return,
            call = calls.next() => match call {
                Some(call) => call,
                None => return,
            },
        };
        let span = info_span!("test_line", line = line.name(), caller = %call.caller);
        gateway
            .tasks
            .spawn(answer(gateway.clone(), line, call).instrument(span));
    }
}

async fn answer(gateway: Arc<Gateway>, line: Line, incoming: IncomingCall) {
    let IncomingCall { offer, call, .. } = incoming;
    let control = call.control;
    let mut events = call.events;
    let Some(lease) = gateway.ports.lease() else {
        control.reject(503);
        return;
    };
    let negotiated = offer
        .as_deref()
        .ok_or_else(|| "no SDP offer".to_string())
        .and_then(|offer| sdp::parse_remote(offer).map_err(|e| e.to_string()))
        .and_then(|remote| {
            let ours = LocalAudio {
                address: gateway.sip.advertised_addr().ip(),
                port: lease.rtp_port(),
                codecs: sdp::sip_codecs(),
                direction: Direction::SendRecv,
                session_id: u64::from(lease.rtp_port()),
                version: 1,
            };
            let answer = sdp::answer(&remote, &ours).map_err(|e| e.to_string())?;
            Ok((remote, answer))
        });
    let (remote, answer) = match negotiated {
        Ok(negotiated) => negotiated,
        Err(problem) => {
            warn!(%problem, "test line cannot answer");
            control.reject(488);
            return;
        }
    };
    control.accept(answer.clone());
    info!("test line answered");
    let socket = match lease.rtp_socket() {
        Ok(socket) => socket,
        Err(error) => {
            warn!(%error, "test line has no RTP socket");
            control.hangup();
            return;
        }
    };
    let media = LineMedia::new(line, &remote, &answer, socket, &lease);
    let ended = async {
        while let Some(event) = events.recv().await {
            if matches!(event, CallEvent::Ended { .. } | CallEvent::Failed { .. }) {
                return;
            }
        }
    };
    tokio::select! {
        _ = ended => info!("test line call ended"),
        _ = media.run() => {}
        _ = tokio::time::sleep(LONGEST_CALL) => control.hangup(),
        _ = gateway.shutdown.cancelled() => control.hangup(),
    }
}

struct LineMedia<'a> {
    line: Line,
    socket: UdpSocket,
    destination: SocketAddr,
    audio: Option<(u8, Codec)>,
    telephone_event: Option<u8>,
    _lease: &'a PortLease,
}

impl<'a> LineMedia<'a> {
    fn new(
        line: Line,
        remote: &sdp::RemoteAudio,
        answer: &LocalAudio,
        socket: UdpSocket,
        lease: &'a PortLease,
    ) -> LineMedia<'a> {
        let audio = answer.codecs.iter().find_map(|codec| {
            crate::call::bridge_codec(codec).map(|bridged| (codec.payload_type, bridged))
        });
        let telephone_event = answer
            .codecs
            .iter()
            .find(|codec| codec.is_telephone_event())
            .map(|codec| codec.payload_type);
        LineMedia {
            line,
            socket,
            destination: SocketAddr::new(remote.address, remote.port),
            audio,
            telephone_event,
            _lease: lease,
        }
    }

    async fn run(mut self) {
        let mut sender = RtpSender::new(rand::random(), rand::random(), rand::random());
        let mut digits_in = TelephoneEventReceiver::new(8000, DEFAULT_END_TIMEOUT);
        let mut digits_out = TelephoneEventSender::new(DtmfSenderConfig::default());
        let mut tone = self.audio.and_then(|(pt, codec)| {
            (self.line == Line::Tone)
                .then(|| new_encoder(codec).ok().map(|encoder| (pt, codec, encoder)))
                .flatten()
        });
        let mut phase = 0u64;
        let mut pcm = [0i16; MAX_FRAME_SAMPLES];
        let mut payload = [0u8; MAX_PAYLOAD_LEN];
        let mut incoming = [0u8; 1500];
        let mut out = [0u8; 1500];
        let mut ticks = tokio::time::interval(Duration::from_millis(20));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let frame_units = self
            .audio
            .map_or(160, |(_, codec)| codec.rtp_clock_rate() / 50);
        loop {
            tokio::select! {
                received = self.socket.recv_from(&mut incoming) => {
                    let Ok((length, source)) = received else { continue };
                    let Ok(packet) = RtpPacket::parse(&incoming[..length]) else { continue };
                    // Symmetric RTP: answer where the caller sends from.
                    self.destination = source;
                    let payload_type = packet.header.payload_type;
                    if Some(payload_type) == self.telephone_event {
                        let now = Instant::now().into_std();
                        if let Ok(events) = digits_in.on_packet(packet.header.timestamp, packet.payload, now) {
                            for event in events {
                                if let DigitEvent::DigitStarted(digit) = event {
                                    info!(%digit, "digits line received");
                                    if self.line == Line::Digits {
                                        let mut text = [0u8; 4];
                                        let _ = digits_out.enqueue(digit.encode_utf8(&mut text), now);
                                    }
                                }
                            }
                        }
                    } else if self.line == Line::Echo && self.audio.map(|(pt, _)| pt) == Some(payload_type) {
                        if let Ok(length) = sender.next_packet(packet.payload, frame_units, false, payload_type, &mut out) {
                            let _ = self.socket.send_to(&out[..length], self.destination).await;
                        }
                    }
                }
                _ = ticks.tick() => {
                    let now = Instant::now().into_std();
                    let mut sent_audio = false;
                    if let Some((payload_type, codec, encoder)) = tone.as_mut() {
                        let samples = codec.frame_samples();
                        let rate = f64::from(codec.sample_rate().hz());
                        for sample in pcm[..samples].iter_mut() {
                            *sample = (8000.0 * (2.0 * PI * TONE_HZ * phase as f64 / rate).sin()) as i16;
                            phase += 1;
                        }
                        if let Ok(length) = encoder.encode(&pcm[..samples], &mut payload) {
                            if let Ok(length) = sender.next_packet(&payload[..length], frame_units, false, *payload_type, &mut out) {
                                let _ = self.socket.send_to(&out[..length], self.destination).await;
                                sent_audio = true;
                            }
                        }
                    }
                    if let Some(payload_type) = self.telephone_event {
                        while let Some(packet) = digits_out.poll(now, sender.next_timestamp()) {
                            if let Ok(length) = sender.packet_with_timestamp(&packet.event.to_bytes(), packet.timestamp, packet.marker, payload_type, &mut out) {
                                let _ = self.socket.send_to(&out[..length], self.destination).await;
                            }
                        }
                    }
                    if !sent_audio && self.line != Line::Echo {
                        sender.skip(frame_units);
                    }
                }
            }
        }
    }
}
