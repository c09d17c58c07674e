//! A room driven as the gateway drives it, with simulated time, by a
//! sequence of inputs decoded from the fuzz data: RTP (audio and RFC 4733
//! events) and garbage from a few source addresses, RTCP, FLV audio tags of
//! every codec an RTMP publisher may send, players joining and leaving,
//! timeouts after a chosen wait, and the driver's commands (digits, tones,
//! re-INVITEs, points leaving and coming back, routes), and a forwarder's
//! reports on relays handed to it. Whatever comes in,
//! the room must not panic, and must not ask to be woken again and again
//! at one instant (a driver would spin).
#![no_main]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dialtone_codecs::Codec;
use dialtone_room::offload::OffloadProgress;
use dialtone_room::rtcp::{self, RtcpPacket};
use dialtone_room::rtp::{RtpHeader, RtpPacket};
use dialtone_room::telephone_event::TelephoneEvent;
use dialtone_room::{
    Input, Line, Output, PointConfig, PointId, PointUpdate, Role, Room, Socket, WatchConfig,
};
use dialtone_rtmp::{opus_head, AudioTag, AudioTagKind, FlvAudioCodec};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

/// The watched SIP leg.
const SIP: PointId = PointId(0);
const CLIENT: PointId = PointId(1);
const LINE: PointId = PointId(2);
const RTMP: PointId = PointId(3);
/// Never added: commands and inputs for it must be refused quietly.
const STRANGER: PointId = PointId(4);
const IDS: [PointId; 5] = [SIP, CLIENT, LINE, RTMP, STRANGER];

const EVENTS: u8 = 101;
const CODECS: [(u8, Codec); 7] = [
    (0, Codec::Pcmu),
    (8, Codec::Pcma),
    (9, Codec::G722),
    (111, Codec::Opus),
    (97, Codec::SpeexNarrow),
    (98, Codec::SpeexWide),
    (99, Codec::L16),
];
/// What an RTMP point may be asked to send (G.722 has no FLV form).
const RTMP_SEND: [Codec; 5] = [
    Codec::SpeexWide,
    Codec::Pcmu,
    Codec::Pcma,
    Codec::Opus,
    Codec::G722,
];
const LINES: [Line; 3] = [Line::Echo, Line::Tone, Line::Digits];
/// AudioSpecificConfigs: AAC-LC 44.1 kHz mono, 48 kHz mono, 16 kHz mono,
/// 44.1 kHz stereo, 8 kHz mono.
const AAC_CONFIGS: [[u8; 2]; 5] = [
    [0x12, 0x08],
    [0x11, 0x88],
    [0x14, 0x08],
    [0x12, 0x10],
    [0x15, 0x88],
];
/// The recordings a run may start are 0 to this.
const LAST_RECORDING: u32 = 2;
/// Longest simulated wait between inputs.
const MAX_WAIT_MS: u32 = 12_000;
/// Timeouts handled at one instant before the room counts as spinning; a
/// late tick catches up at most MAX_TICK_LAG / FRAME times.
const MAX_TIMEOUTS_AT_ONCE: u32 = 64;

fn address(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

const SIP_END: u16 = 40_000;
const CLIENT_END: u16 = 40_100;
/// Where datagrams come from: the two far ends, a stranger, a far end's
/// NAT-rebound port, and an IPv6 source.
fn sources() -> [SocketAddr; 5] {
    [
        address(SIP_END),
        address(CLIENT_END),
        address(50_000),
        address(SIP_END + 2),
        SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], SIP_END)),
    ]
}

/// What the harness saw of a point's outgoing streams, to write replies
/// that refer to them (RTCP report blocks on our SSRC, LSR echoes).
#[derive(Default, Clone, Copy)]
struct Seen {
    ssrc: u32,
    last_sr: u32,
}

/// A far end's stream toward one point, so consecutive packets look like
/// one (the fuzzer then only has to pick the deltas).
#[derive(Default, Clone, Copy)]
struct Stream {
    sequence: u16,
    timestamp: u32,
}

struct Harness {
    room: Room,
    now: Instant,
    seen: HashMap<PointId, Seen>,
    streams: HashMap<PointId, Stream>,
    flv_timestamp: u32,
    /// The codec each point was added or updated with.
    audio: HashMap<PointId, Option<(u8, Codec)>>,
}

impl Harness {
    fn drain(&mut self) {
        while let Some(output) = self.room.poll_output() {
            match output {
                Output::Transmit(transmit) => {
                    assert!(!transmit.data.is_empty(), "an empty datagram");
                    let seen = self.seen.entry(transmit.point).or_default();
                    match transmit.socket {
                        Socket::Rtp => {
                            if let Ok(packet) = RtpPacket::parse(transmit.data) {
                                seen.ssrc = packet.header.ssrc;
                            }
                        }
                        Socket::Rtcp => {
                            for packet in rtcp::parse_compound(transmit.data) {
                                match packet {
                                    Ok(RtcpPacket::SenderReport { ssrc, info, .. }) => {
                                        seen.ssrc = ssrc;
                                        seen.last_sr = info.ntp.middle_32();
                                    }
                                    Ok(_) => {}
                                    Err(error) => panic!("our own RTCP unreadable: {error}"),
                                }
                            }
                        }
                    }
                }
                Output::Flv { data, .. } => {
                    assert!(AudioTag::parse(&data).is_ok(), "our own FLV tag unreadable");
                }
                Output::Event(_) | Output::Recorded { .. } => {}
                Output::Offload(offload) => {
                    assert_ne!(offload.from, offload.to, "a relay to itself");
                }
                Output::Reclaim(_) => {}
            }
        }
    }

    fn input(&mut self, input: Input<'_>) {
        self.room.handle_input(self.now, input);
        self.drain();
    }

    /// The clock moves on by `wait`, every timeout on the way handled as a
    /// driver handles it.
    fn advance(&mut self, wait: Duration) {
        let until = self.now + wait;
        let mut at_once = 0;
        while let Some(at) = self.room.poll_timeout().filter(|at| *at <= until) {
            if at > self.now {
                self.now = at;
                at_once = 0;
            }
            at_once += 1;
            assert!(
                at_once <= MAX_TIMEOUTS_AT_ONCE,
                "the room asks for a timeout at the same instant again and again"
            );
            self.input(Input::Timeout);
        }
        self.now = until;
    }
}

fn point_id(u: &mut Unstructured) -> Result<PointId> {
    // Mostly points that exist.
    Ok(if u.ratio(1, 16)? {
        STRANGER
    } else {
        *u.choose(&IDS[..4])?
    })
}

fn audio(u: &mut Unstructured) -> Result<Option<(u8, Codec)>> {
    Ok(if u.ratio(3, 4)? {
        Some(CODECS[0])
    } else if u.ratio(1, 8)? {
        None
    } else {
        Some(*u.choose(&CODECS)?)
    })
}

fn text(u: &mut Unstructured) -> Result<String> {
    const KEYS: &[char] = &[
        '0', '1', '5', '9', '*', '#', 'A', 'D', 'x', ' ', ',', 'é', '\u{0}',
    ];
    let length = u.int_in_range(0..=12)?;
    (0..length).map(|_| u.choose(KEYS).copied()).collect()
}

fn config(
    u: &mut Unstructured,
    id: PointId,
    sip_audio: Option<(u8, Codec)>,
) -> Result<PointConfig> {
    Ok(match id {
        SIP => PointConfig::rtp(address(SIP_END), sip_audio, Some(EVENTS)).watched(WatchConfig {
            rtp_timeout: Duration::from_millis(u.int_in_range(100..=8_000)?),
            sends: u.ratio(7, 8)?,
            rtcp: u.ratio(7, 8)?,
        }),
        CLIENT => PointConfig::rtp(
            address(CLIENT_END),
            audio(u)?,
            u.ratio(7, 8)?.then_some(EVENTS),
        )
        .detecting_tones(u.arbitrary()?),
        LINE => PointConfig::line(*u.choose(&LINES)?, audio(u)?, Some(EVENTS)),
        _ => PointConfig::rtmp(*u.choose(&RTMP_SEND)?),
    })
}

/// An RTP packet of a far end's stream toward `point`.
fn rtp_packet(u: &mut Unstructured, harness: &mut Harness, point: PointId) -> Result<Vec<u8>> {
    let audio_type = harness
        .audio
        .get(&point)
        .copied()
        .flatten()
        .map_or(0, |(payload_type, _)| payload_type);
    let stream = harness.streams.entry(point).or_default();
    // Mostly in order, sometimes lost, late, repeated or restarted.
    let step: i16 = if u.ratio(7, 8)? { 1 } else { u.arbitrary()? };
    stream.sequence = stream.sequence.wrapping_add_signed(step);
    let events = u.ratio(1, 4)?;
    if !events || u.ratio(1, 4)? {
        let units: i32 = if u.ratio(7, 8)? { 160 } else { u.arbitrary()? };
        stream.timestamp = stream.timestamp.wrapping_add_signed(units);
    }
    let header = RtpHeader {
        marker: u.ratio(1, 8)?,
        payload_type: if u.ratio(15, 16)? {
            if events {
                EVENTS
            } else {
                audio_type
            }
        } else {
            u.int_in_range(0..=127)?
        },
        sequence: stream.sequence,
        timestamp: stream.timestamp,
        ssrc: if u.ratio(15, 16)? {
            0x5eed_0000 | point.0
        } else {
            u.arbitrary()?
        },
    };
    let payload = if events {
        TelephoneEvent {
            event: if u.ratio(7, 8)? {
                u.int_in_range(0..=15)?
            } else {
                u.arbitrary()?
            },
            end: u.arbitrary()?,
            volume: u.int_in_range(0..=63)?,
            duration: u.arbitrary()?,
        }
        .to_bytes()
        .to_vec()
    } else {
        let length = if u.ratio(3, 4)? {
            160
        } else {
            u.int_in_range(0..=1400)?
        };
        let mut payload = u.bytes(length.min(u.len()))?.to_vec();
        payload.resize(length, 0xff);
        payload
    };
    let mut packet = vec![0u8; 12 + payload.len()];
    let length = header
        .write_packet(&payload, &mut packet)
        .unwrap_or_default();
    packet.truncate(length);
    Ok(packet)
}

/// An RR or SR about `point`'s stream as its far end would write it, or
/// bytes.
fn rtcp_packet(u: &mut Unstructured, harness: &Harness, point: PointId) -> Result<Vec<u8>> {
    if u.ratio(1, 4)? {
        let length = u.int_in_range(0..=200)?;
        return Ok(u.bytes(length.min(u.len()))?.to_vec());
    }
    let seen = harness.seen.get(&point).copied().unwrap_or_default();
    let sender = u.arbitrary::<bool>()?;
    let mut packet = Vec::new();
    let blocks = u.int_in_range(0u8..=2)?;
    let words: u16 = 1 + if sender { 5 } else { 0 } + 6 * u16::from(blocks);
    packet.extend_from_slice(&[0x80 | blocks, if sender { 200 } else { 201 }]);
    packet.extend_from_slice(&words.to_be_bytes());
    packet.extend_from_slice(&0x5eed_0000u32.to_be_bytes());
    if sender {
        packet.extend_from_slice(u.bytes(20.min(u.len()))?);
        packet.resize(28, 0);
    }
    for _ in 0..blocks {
        let ssrc = if u.ratio(3, 4)? {
            seen.ssrc
        } else {
            u.arbitrary()?
        };
        let last_sr = if u.ratio(3, 4)? {
            seen.last_sr
        } else {
            u.arbitrary()?
        };
        packet.extend_from_slice(&ssrc.to_be_bytes());
        packet.extend_from_slice(&u.arbitrary::<[u8; 12]>()?);
        packet.extend_from_slice(&last_sr.to_be_bytes());
        packet.extend_from_slice(&u.arbitrary::<u32>()?.to_be_bytes());
    }
    if u.ratio(1, 4)? {
        // A BYE after it.
        packet.extend_from_slice(&[0x81, 203, 0, 1]);
        packet.extend_from_slice(&0x5eed_0000u32.to_be_bytes());
    }
    Ok(packet)
}

/// An FLV audio tag body as an RTMP publisher sends it, or bytes.
fn flv_tag(u: &mut Unstructured) -> Result<Vec<u8>> {
    let head = opus_head(1, 312, 48_000);
    let frame = |u: &mut Unstructured, typical: usize| -> Result<Vec<u8>> {
        let length = if u.ratio(3, 4)? {
            typical
        } else {
            u.int_in_range(0..=4096)?
        };
        let mut payload = u.bytes(length.min(u.len()))?.to_vec();
        payload.resize(length, 0x55);
        Ok(payload)
    };
    let tag = |codec, kind, payload: &[u8]| {
        AudioTag {
            codec,
            kind,
            payload,
        }
        .to_bytes()
        .unwrap_or_default()
    };
    Ok(match u.int_in_range(0..=8)? {
        0 => {
            let config = if u.ratio(7, 8)? {
                u.choose(&AAC_CONFIGS)?.to_vec()
            } else {
                frame(u, 2)?
            };
            tag(FlvAudioCodec::Aac, AudioTagKind::SequenceHeader, &config)
        }
        1 => tag(FlvAudioCodec::Aac, AudioTagKind::Frame, &frame(u, 200)?),
        2 => tag(FlvAudioCodec::Speex, AudioTagKind::Frame, &frame(u, 70)?),
        3 => {
            // Linear PCM with whatever rate, size and channel bits.
            let mut body = vec![0x30 | u.int_in_range(0..=15)?];
            body.extend(frame(u, 882)?);
            body
        }
        4 => tag(
            FlvAudioCodec::G711MuLaw,
            AudioTagKind::Frame,
            &frame(u, 160)?,
        ),
        5 => tag(
            FlvAudioCodec::G711ALaw,
            AudioTagKind::Frame,
            &frame(u, 320)?,
        ),
        6 => tag(FlvAudioCodec::Opus, AudioTagKind::SequenceHeader, &head),
        7 => tag(FlvAudioCodec::Opus, AudioTagKind::Frame, &frame(u, 60)?),
        _ => frame(u, 8)?,
    })
}

fn run(u: &mut Unstructured) -> Result<()> {
    let mut harness = Harness {
        room: Room::new(),
        now: Instant::now(),
        seen: HashMap::new(),
        streams: HashMap::new(),
        flv_timestamp: 0,
        audio: HashMap::new(),
    };
    if u.arbitrary()? {
        harness.room.enable_offload();
    }
    let sip_audio = if u.ratio(3, 4)? {
        Some(CODECS[0])
    } else {
        audio(u)?
    };
    for id in [SIP, CLIENT, LINE, RTMP] {
        let config = config(u, id, sip_audio)?;
        harness.audio.insert(id, config.audio);
        harness
            .room
            .add_point(harness.now, id, config)
            .map_err(|_| libfuzzer_sys::arbitrary::Error::IncorrectFormat)?;
        harness.drain();
    }
    for _ in 0..512 {
        if u.is_empty() {
            break;
        }
        let now = harness.now;
        match u.int_in_range(0..=20)? {
            0..=3 => {
                let point = point_id(u)?;
                let source = *u.choose(&sources())?;
                let data = rtp_packet(u, &mut harness, point)?;
                harness.input(Input::Datagram {
                    point,
                    source,
                    data: &data,
                });
            }
            4 => {
                let point = point_id(u)?;
                let source = *u.choose(&sources())?;
                let length = u.int_in_range(0..=1500)?;
                let data = u.bytes(length.min(u.len()))?;
                harness.input(Input::Datagram {
                    point,
                    source,
                    data,
                });
            }
            5 => {
                let point = point_id(u)?;
                let data = rtcp_packet(u, &harness, point)?;
                harness.input(Input::Rtcp { point, data: &data });
            }
            6..=7 => {
                let point = if u.ratio(7, 8)? { RTMP } else { point_id(u)? };
                let step: u32 = if u.ratio(3, 4)? { 20 } else { u.arbitrary()? };
                harness.flv_timestamp = harness.flv_timestamp.wrapping_add(step);
                let data = flv_tag(u)?;
                harness.input(Input::Flv {
                    point,
                    timestamp: harness.flv_timestamp,
                    data: &data,
                });
            }
            8 => {
                let point = if u.ratio(7, 8)? { RTMP } else { point_id(u)? };
                let player = u.int_in_range(0..=3)?;
                harness.input(Input::PlayerJoined { point, player });
            }
            9 => {
                let point = if u.ratio(7, 8)? { RTMP } else { point_id(u)? };
                let player = u.int_in_range(0..=3)?;
                harness.input(Input::PlayerLeft { point, player });
            }
            10 => {
                let wait = if u.ratio(1, 2)? {
                    20
                } else {
                    u.int_in_range(0..=MAX_WAIT_MS)?
                };
                harness.advance(Duration::from_millis(u64::from(wait)));
            }
            11 => {
                // A driver woken late (or early): the clock jumps, then
                // one timeout.
                let wait = u.int_in_range(0..=MAX_WAIT_MS)?;
                harness.now += Duration::from_millis(u64::from(wait));
                harness.input(Input::Timeout);
            }
            12 => {
                let point = point_id(u)?;
                let digits = text(u)?;
                if u.arbitrary()? {
                    let _ = harness.room.send_digits(now, point, &digits);
                } else {
                    let _ = harness.room.send_tones(now, point, &digits);
                }
                harness.drain();
            }
            13 => {
                let point = point_id(u)?;
                let update = PointUpdate {
                    remote: *u.choose(&sources())?,
                    audio: audio(u)?,
                    telephone_event: if u.ratio(3, 4)? {
                        Some(EVENTS)
                    } else {
                        u.arbitrary()?
                    },
                    sends: u.ratio(3, 4)?,
                };
                if harness.room.update_point(now, point, update).is_ok() {
                    harness.audio.insert(point, update.audio);
                }
                harness.drain();
            }
            14 => {
                let point = point_id(u)?;
                let _ = harness.room.remove_point(now, point);
                harness.drain();
            }
            15 => {
                let point = point_id(u)?;
                let config = config(u, point, sip_audio)?;
                let audio = config.audio;
                if harness.room.add_point(now, point, config).is_ok() {
                    harness.audio.insert(point, audio);
                }
                harness.drain();
            }
            16 => {
                let point = point_id(u)?;
                let role = match u.int_in_range(0..=2u8)? {
                    0 => Role::Full,
                    1 => Role::ListenOnly,
                    _ => Role::Whisper(point_id(u)?),
                };
                let _ = harness.room.set_role(now, point, role);
                harness.drain();
            }
            17 => {
                let recording = u.int_in_range(0..=LAST_RECORDING)?;
                if u.ratio(1, 2)? {
                    let _ = harness.room.start_recording(now, recording);
                } else {
                    let _ = harness.room.stop_recording(now, recording);
                }
                harness.drain();
            }
            18 => {
                // Out and back in under another name: nothing may be left
                // pointing at the old one.
                let point = point_id(u)?;
                let renamed = point_id(u)?;
                if let Ok(detached) = harness.room.take_point(now, point) {
                    let audio = harness.audio.remove(&point);
                    if harness.room.insert_point(now, renamed, detached).is_ok() {
                        if let Some(audio) = audio {
                            harness.audio.insert(renamed, audio);
                        }
                    }
                }
                harness.drain();
            }
            19 => {
                // A forwarder's report, true or not.
                let point = point_id(u)?;
                let progress = OffloadProgress {
                    packets: u.arbitrary()?,
                    octets: u.arbitrary()?,
                    extended_highest_sequence: u.arbitrary()?,
                    highest_timestamp: u.arbitrary()?,
                    anchor_sequence: u.arbitrary()?,
                    jitter_q4: u.arbitrary()?,
                    last_arrival: u.arbitrary::<bool>()?.then_some(now),
                };
                let ended = u.arbitrary()?;
                harness.input(Input::Offloaded {
                    point,
                    progress,
                    ended,
                });
            }
            _ => {
                let point = point_id(u)?;
                let digit = text(u)?.chars().next().unwrap_or('5');
                let _ = harness.room.digit_from(now, point, digit);
                let _ = harness.room.stats(point);
                harness.drain();
            }
        }
    }
    // However it ended, the room winds down without trouble.
    harness.advance(Duration::from_secs(2));
    for id in IDS {
        let _ = harness.room.remove_point(harness.now, id);
        harness.drain();
    }
    // A running recording keeps the mix ticking on its own (a conference
    // recorded while its members come and go), so it is stopped too.
    for recording in 0..=LAST_RECORDING {
        let _ = harness.room.stop_recording(harness.now, recording);
        harness.drain();
    }
    assert!(harness.room.is_empty());
    assert_eq!(
        harness.room.poll_timeout(),
        None,
        "an empty room wants ticks"
    );
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
