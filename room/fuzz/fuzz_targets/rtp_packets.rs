//! The readers of what a media peer sends: RTP packets, compound RTCP (as
//! a watched leg's statistics take it), RFC 4733 event payloads (as the
//! receiver of digits takes them) and SIP INFO DTMF bodies. None may panic.
#![no_main]

use std::time::{Duration, Instant, SystemTime};

use dialtone_room::dtmf_relay::{parse_dtmf_info, DTMF_CONTENT_TYPE, DTMF_RELAY_CONTENT_TYPE};
use dialtone_room::rtcp::{self, RtcpPacket};
use dialtone_room::rtp::{RtpHeader, RtpPacket};
use dialtone_room::stats::{MediaStats, MediaStatsConfig, ReceiverStats};
use dialtone_room::telephone_event::{TelephoneEvent, TelephoneEventReceiver, DEFAULT_END_TIMEOUT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    rtp(data, now);
    rtcp(data, now);
    telephone_event(data, now);
    dtmf_info(data);
});

fn rtp(data: &[u8], now: Instant) {
    let Ok(packet) = RtpPacket::parse(data) else {
        return;
    };
    assert!(packet.payload.len() + packet.padding_len <= data.len());
    assert_eq!(packet.csrcs().count(), packet.csrc_count());
    if let Some(extension) = packet.extension {
        assert_eq!(extension.data.len() % 4, 0);
    }
    // What the room writes of it parses back to the same header.
    let mut out = vec![0u8; data.len() + 12];
    if let Ok(length) = packet.header.write_packet(packet.payload, &mut out) {
        let again = RtpPacket::parse(&out[..length]).map(|again| (again.header, again.payload));
        assert_eq!(again, Ok((packet.header, packet.payload)));
    }
    let mut receiver = ReceiverStats::new(8000, now, Some(101));
    receiver.on_packet(&packet.header, packet.payload.len(), now);
    let next = RtpHeader {
        sequence: packet.header.sequence.wrapping_add(1),
        timestamp: packet.header.timestamp.wrapping_add(160),
        ..packet.header
    };
    receiver.on_packet(&next, packet.payload.len(), now + Duration::from_millis(20));
    let _ = receiver.report_block();
    let _ = receiver.jitter_duration();
}

fn rtcp(data: &[u8], now: Instant) {
    let _ = rtcp::is_rtcp(data);
    for packet in rtcp::parse_compound(data) {
        match packet {
            Ok(RtcpPacket::SenderReport { reports, .. })
            | Ok(RtcpPacket::ReceiverReport { reports, .. }) => {
                reports.for_each(drop);
            }
            Ok(RtcpPacket::Bye { ssrcs }) => ssrcs.for_each(drop),
            Ok(RtcpPacket::Other { .. }) | Err(_) => {}
        }
    }
    // A watched leg's statistics, whose SSRC the report blocks may name
    // (the first block's SSRC field of an SR, at byte 28), after an SR of
    // ours went out so LSR echoes are checked.
    let ssrc = data
        .get(28..32)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let mut stats = MediaStats::new(
        MediaStatsConfig::new(ssrc, "fuzz".into(), 8000),
        now,
        SystemTime::UNIX_EPOCH,
    );
    let sent = dialtone_room::rtp::SenderCounters {
        packets: 1,
        octets: 160,
        ..Default::default()
    };
    let mut buffer = [0u8; 1500];
    let later = now + Duration::from_secs(3);
    let _ = stats.write_report(later, &sent, &mut buffer);
    let _ = stats.on_rtcp(data, later + Duration::from_millis(40));
    let _ = stats.snapshot(&sent);
    let _ = stats.write_bye(later + Duration::from_secs(1), &sent, &mut buffer);
}

fn telephone_event(data: &[u8], now: Instant) {
    if let Ok(event) = TelephoneEvent::parse(data) {
        assert_eq!(TelephoneEvent::parse(&event.to_bytes()), Ok(event));
    }
    // The payload as a stream of (timestamp, event) packets.
    let mut receiver = TelephoneEventReceiver::new(8000, DEFAULT_END_TIMEOUT);
    let mut at = now;
    for chunk in data.chunks(8) {
        let (timestamp, payload) = chunk.split_at(chunk.len().min(4));
        let mut word = [0u8; 4];
        word[..timestamp.len()].copy_from_slice(timestamp);
        if let Ok(events) = receiver.on_packet(u32::from_be_bytes(word), payload, at) {
            events.for_each(drop);
        }
        at += Duration::from_millis(u64::from(word[3]) * 4);
        while receiver.poll(at).is_some() {}
    }
}

fn dtmf_info(data: &[u8]) {
    let (selector, body) = data.split_first().unwrap_or((&0, &[]));
    let content_type = match selector % 4 {
        0 => DTMF_RELAY_CONTENT_TYPE,
        1 => DTMF_CONTENT_TYPE,
        2 => "Application/DTMF-Relay ; charset=utf-8",
        _ => std::str::from_utf8(body).unwrap_or("application/dtmf"),
    };
    let _ = parse_dtmf_info(content_type, body);
}
