//! The room's cost per packet, socket I/O excluded: the relay's numbering
//! alone (parse what arrived, offset-map it into the other point's
//! stream); the room's whole relay path for one datagram (parse, latch,
//! statistics, routing, relay, the transmit polled out); and the room's
//! transcoding path for one 20 ms frame (a PCMU datagram in, jitter buffer,
//! decode, resample, Opus encode on the tick, the transmit polled out);
//! and the mixer: 20 ms of a room of N G.711 phones that all speak (each
//! one's datagram in, the tick that decodes them, mixes N−1 for each and
//! encodes, every transmit polled out).

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use dialtone_codecs::{new_encoder, voice_like_frames, Codec};
use dialtone_room::rtp::{RtpHeader, RtpPacket, RtpSender};
use dialtone_room::{Input, Output, PointConfig, PointId, Room, WatchConfig};

const PCMU: Option<(u8, Codec)> = Some((0, Codec::Pcmu));

/// A PCMU stream whose next packet is written over an earlier one in
/// place, as a socket receive would: a few packets' payloads (one for the
/// relay, voice-like 20 ms frames for transcoding) and the numbering.
struct Stream {
    packets: Vec<[u8; 172]>,
    sequence: u16,
}

impl Stream {
    fn new(payloads: &[Vec<u8>]) -> Stream {
        let packets = payloads
            .iter()
            .map(|payload| {
                let mut packet = [0u8; 172];
                let header = RtpHeader {
                    marker: false,
                    payload_type: 0,
                    sequence: 0,
                    timestamp: 0,
                    ssrc: 0x1234_5678,
                };
                let _ = header.write_packet(payload, &mut packet);
                packet
            })
            .collect();
        Stream {
            packets,
            sequence: 0,
        }
    }

    fn next(&mut self) -> &[u8] {
        self.sequence = self.sequence.wrapping_add(1);
        let timestamp = u32::from(self.sequence).wrapping_mul(160);
        let index = usize::from(self.sequence) % self.packets.len().max(1);
        let Some(packet) = self.packets.get_mut(index) else {
            return &[];
        };
        packet[2..4].copy_from_slice(&self.sequence.to_be_bytes());
        packet[4..8].copy_from_slice(&timestamp.to_be_bytes());
        packet
    }
}

/// 20 ms PCMU frames of a voice-like signal, so the encoder does real work.
fn voice_payloads() -> Vec<Vec<u8>> {
    let Ok(mut encoder) = new_encoder(Codec::Pcmu) else {
        return vec![vec![0x55; 160]];
    };
    voice_like_frames(Codec::Pcmu, 50)
        .iter()
        .filter_map(|pcm| {
            let mut payload = vec![0u8; 160];
            let length = encoder.encode(pcm, &mut payload).ok()?;
            payload.truncate(length);
            Some(payload)
        })
        .collect()
}

/// Takes every output out, as a driver would.
fn drain(room: &mut Room) {
    while let Some(output) = room.poll_output() {
        if let Output::Transmit(transmit) = output {
            black_box(transmit.data.len());
        }
    }
}

fn relay(c: &mut Criterion) {
    let mut stream = Stream::new(&[vec![0x55; 160]]);
    let mut sender = RtpSender::new(0x0bad_cafe, 100, 1000);
    let mut out = [0u8; 1500];
    c.bench_function("relay numbering, PCMU 20 ms packet", |b| {
        b.iter(|| {
            if let Ok(packet) = RtpPacket::parse(black_box(stream.next())) {
                let _ = black_box(sender.relay(&packet.header, packet.payload, 0, &mut out));
            }
        })
    });

    let start = Instant::now();
    let client = SocketAddr::from(([127, 0, 0, 1], 40000));
    let far_end = SocketAddr::from(([127, 0, 0, 1], 40002));
    let mut room = Room::new();
    let watch = WatchConfig {
        rtp_timeout: Duration::from_secs(3600),
        sends: true,
        rtcp: true,
    };
    let sip = PointConfig::rtp(far_end, PCMU, Some(101)).watched(watch);
    let _ = room.add_point(start, PointId(0), sip);
    let _ = room.add_point(start, PointId(1), PointConfig::rtp(client, PCMU, Some(101)));
    let mut stream = Stream::new(&[vec![0x55; 160]]);
    c.bench_function(
        "room relay path, PCMU 20 ms datagram in, transmit out",
        |b| {
            b.iter(|| {
                let input = Input::Datagram {
                    point: PointId(1),
                    source: client,
                    data: stream.next(),
                };
                room.handle_input(start, input);
                drain(&mut room);
            })
        },
    );
}

fn transcode(c: &mut Criterion) {
    let start = Instant::now();
    let client = SocketAddr::from(([127, 0, 0, 1], 40000));
    let far_end = SocketAddr::from(([127, 0, 0, 1], 40002));
    let mut room = Room::new();
    let opus = Some((111, Codec::Opus));
    let _ = room.add_point(
        start,
        PointId(0),
        PointConfig::rtp(far_end, opus, Some(101)),
    );
    let _ = room.add_point(start, PointId(1), PointConfig::rtp(client, PCMU, Some(101)));
    let mut stream = Stream::new(&voice_payloads());
    let mut now = start;
    c.bench_function(
        "room transcode path, PCMU datagram in, Opus frame out",
        |b| {
            b.iter(|| {
                let input = Input::Datagram {
                    point: PointId(1),
                    source: client,
                    data: stream.next(),
                };
                room.handle_input(now, input);
                now += Duration::from_millis(20);
                room.handle_input(now, Input::Timeout);
                drain(&mut room);
            })
        },
    );
}

fn mix(c: &mut Criterion) {
    for parties in [3u16, 10] {
        let start = Instant::now();
        let mut room = Room::new();
        let mut phones = Vec::new();
        for index in 0..parties {
            let address = SocketAddr::from(([127, 0, 0, 1], 40000 + 2 * index));
            let id = PointId(u32::from(index));
            let _ = room.add_point(start, id, PointConfig::rtp(address, PCMU, Some(101)));
            phones.push((id, address, Stream::new(&voice_payloads())));
        }
        let mut now = start;
        c.bench_function(
            &format!("mixer, {parties} PCMU phones talking, 20 ms of the room"),
            |b| {
                b.iter(|| {
                    for (point, source, stream) in &mut phones {
                        let input = Input::Datagram {
                            point: *point,
                            source: *source,
                            data: stream.next(),
                        };
                        room.handle_input(now, input);
                    }
                    now += Duration::from_millis(20);
                    room.handle_input(now, Input::Timeout);
                    drain(&mut room);
                })
            },
        );
    }
}

criterion_group!(benches, relay, transcode, mix);
criterion_main!(benches);
