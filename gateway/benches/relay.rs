//! Pass-through relay cost per RTP packet: parse what arrived, renumber it
//! into the other side's stream (what the media room does when both sides
//! share a codec). Socket I/O is not included.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use dialtone_gateway::media::rtp::{RtpHeader, RtpPacket, RtpSender};

fn relay(c: &mut Criterion) {
    let mut incoming = [0u8; 172];
    let header = RtpHeader {
        marker: false,
        payload_type: 0,
        sequence: 1,
        timestamp: 160,
        ssrc: 0x1234_5678,
    };
    let payload = [0x55u8; 160];
    let length = header
        .write_packet(&payload, &mut incoming)
        .unwrap_or_default();
    let mut sender = RtpSender::new(0x0bad_cafe, 100, 1000);
    let mut out = [0u8; 1500];
    c.bench_function("pass-through relay, PCMU 20 ms packet", |b| {
        b.iter(|| {
            let packet = RtpPacket::parse(black_box(&incoming[..length])).ok();
            if let Some(packet) = packet {
                let _ = black_box(sender.next_packet(packet.payload, 160, false, 0, &mut out));
            }
        })
    });
}

criterion_group!(benches, relay);
criterion_main!(benches);
