//! Scripted RTP streams and what arrives of them, for checking that the gateway relays a stream
//! faithfully: what a real sender emits (its own packet time, packets lost on the way, a pair
//! overtaking each other), every packet a receiver got with its header fields, and the checks a
//! far end's jitter buffer relies on. Sending and receiving over sockets is
//! [`crate::rtp_peer::RtpPeer`]'s; this module is plain data and checks.
//!
//! A stream's payloads are distinct per packet and per stream, so a receiver can tell from a
//! payload alone which packet it is, whatever the relay did to the headers.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};

/// What a sender emits: `packets` consecutive packets of `units_per_packet` timestamp units
/// each, paced `packet_time` apart, of which some never arrive (lost between the sender and the
/// gateway: their sequence numbers and timestamps are skipped, as a real sender's would be) and
/// one adjacent pair is sent in swapped order.
#[derive(Debug, Clone)]
pub struct ScriptedStream {
    pub payload_type: u8,
    pub ssrc: u32,
    pub first_sequence: u16,
    pub first_timestamp: u32,
    /// Timestamp units per packet: 240 for 30 ms of 8 kHz audio.
    pub units_per_packet: u32,
    pub packet_time: Duration,
    pub payload_len: usize,
    /// Packets in the stream, including the missing ones.
    pub packets: usize,
    /// Every `drop_every`-th packet (the 10th, 20th, ... for 10) is missing; 0: none.
    pub drop_every: usize,
    /// Packets `swap_at` and `swap_at + 1` are sent in reverse order.
    pub swap_at: Option<usize>,
}

impl ScriptedStream {
    /// PCMU at ptime 30 (240 samples, 240 bytes per packet), every 10th packet missing and
    /// one pair swapped early in the stream: what a client on a lossy network sends.
    pub fn pcmu_ptime_30(ssrc: u32, first_sequence: u16, first_timestamp: u32) -> Self {
        ScriptedStream {
            payload_type: 0,
            ssrc,
            first_sequence,
            first_timestamp,
            units_per_packet: 240,
            packet_time: Duration::from_millis(30),
            payload_len: 240,
            packets: 150,
            drop_every: 10,
            swap_at: Some(41),
        }
    }

    /// Whether packet `index` never leaves (lost on the way).
    pub fn is_missing(&self, index: usize) -> bool {
        self.drop_every != 0 && index % self.drop_every == self.drop_every - 1
    }

    /// Per pacing slot, the packet sent in it (`None`: its packet is missing, the slot passes
    /// in silence). The swapped pair trades slots.
    pub fn slots(&self) -> Vec<Option<usize>> {
        (0..self.packets)
            .map(|slot| {
                let index = match self.swap_at {
                    Some(at) if slot == at => at + 1,
                    Some(at) if slot == at + 1 => at,
                    _ => slot,
                };
                (!self.is_missing(index)).then_some(index)
            })
            .collect()
    }

    /// The packets that do leave, in sending order.
    pub fn sent_order(&self) -> Vec<usize> {
        self.slots().into_iter().flatten().collect()
    }

    pub fn sequence(&self, index: usize) -> u16 {
        self.first_sequence.wrapping_add(index as u16)
    }

    pub fn timestamp(&self, index: usize) -> u32 {
        self.first_timestamp
            .wrapping_add(self.units_per_packet.wrapping_mul(index as u32))
    }

    /// Packet `index`'s payload: bytes derived from the SSRC and the index, so each packet of
    /// each stream is unique (any byte is a valid µ-law or A-law sample).
    pub fn payload(&self, index: usize) -> Vec<u8> {
        let mut state = (u64::from(self.ssrc) << 32) ^ (index as u64 + 1);
        (0..self.payload_len)
            .map(|_| {
                // xorshift64: cheap, deterministic, never stuck at zero for a non-zero seed.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    /// Packet `index` on the wire; the first packet starts the talkspurt (marker set).
    pub fn packet(&self, index: usize) -> Vec<u8> {
        let mut packet = Vec::with_capacity(12 + self.payload_len);
        let marker = if index == 0 { 0x80 } else { 0 };
        packet.extend_from_slice(&[0x80, marker | (self.payload_type & 0x7f)]);
        packet.extend_from_slice(&self.sequence(index).to_be_bytes());
        packet.extend_from_slice(&self.timestamp(index).to_be_bytes());
        packet.extend_from_slice(&self.ssrc.to_be_bytes());
        packet.extend_from_slice(&self.payload(index));
        packet
    }

    /// Which packet of this stream `payload` is, if it is one of them, intact.
    pub fn identify(&self, payload: &[u8]) -> Option<usize> {
        (0..self.packets).find(|&index| self.payload(index) == payload)
    }
}

/// One RTP packet as a receiver got it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedRtp {
    pub sequence: u16,
    pub timestamp: u32,
    pub marker: bool,
    pub ssrc: u32,
    pub payload_type: u8,
    pub payload: Vec<u8>,
}

impl ReceivedRtp {
    /// Parses an RTP datagram (version 2, CSRCs, header extension and padding skipped).
    /// RTCP (payload types 72-76 with the marker, i.e. packet types 200-204) is refused.
    pub fn parse(datagram: &[u8]) -> anyhow::Result<ReceivedRtp> {
        ensure!(
            datagram.len() >= 12,
            "{} bytes: too short for RTP",
            datagram.len()
        );
        ensure!(datagram[0] >> 6 == 2, "not RTP version 2");
        ensure!(!(200..=204).contains(&datagram[1]), "RTCP, not RTP");
        let csrcs = usize::from(datagram[0] & 0x0f);
        let mut start = 12 + 4 * csrcs;
        if datagram[0] & 0x10 != 0 {
            let words = datagram
                .get(start + 2..start + 4)
                .context("truncated header extension")?;
            start += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
        }
        let mut end = datagram.len();
        if datagram[0] & 0x20 != 0 {
            end = end.saturating_sub(usize::from(datagram[end - 1]));
        }
        if start > end {
            bail!("header longer than the packet");
        }
        let word = |at: usize| {
            u32::from_be_bytes([
                datagram[at],
                datagram[at + 1],
                datagram[at + 2],
                datagram[at + 3],
            ])
        };
        Ok(ReceivedRtp {
            sequence: u16::from_be_bytes([datagram[2], datagram[3]]),
            timestamp: word(4),
            marker: datagram[1] & 0x80 != 0,
            ssrc: word(8),
            payload_type: datagram[1] & 0x7f,
            payload: datagram[start..end].to_vec(),
        })
    }
}

/// How faithfully one direction of a relay carried a [`ScriptedStream`]: each check a far
/// end's jitter buffer relies on, with the counts observed. `Display` prints the counts and
/// the packets received, for the failure message.
#[derive(Debug, Clone)]
pub struct RelayReport {
    /// Packets the sender sent (missing ones excluded).
    pub sent: usize,
    /// Received packets of the stream's payload type, in arrival order, each with the index of
    /// the sent packet its payload is (`None`: not a payload that was sent, or altered).
    pub received: Vec<(ReceivedRtp, Option<usize>)>,
    pub units_per_packet: u32,
    pub swap_at: Option<usize>,
}

impl RelayReport {
    /// Compares what arrived with what `stream` sent.
    pub fn check(stream: &ScriptedStream, received: &[ReceivedRtp]) -> RelayReport {
        RelayReport {
            sent: stream.sent_order().len(),
            received: received
                .iter()
                .filter(|packet| packet.payload_type == stream.payload_type)
                .map(|packet| (packet.clone(), stream.identify(&packet.payload)))
                .collect(),
            units_per_packet: stream.units_per_packet,
            swap_at: stream.swap_at,
        }
    }

    /// Consecutive received pairs whose timestamp step is `units_per_packet` times their
    /// sequence step (gap k ⇒ 240·k; a step back by one ⇒ −240), and all pairs.
    pub fn timestamp_steps_matching_sequence(&self) -> (usize, usize) {
        let pairs = self.received.windows(2);
        let total = pairs.len();
        let good = pairs
            .filter(|pair| {
                let (a, b) = (&pair[0].0, &pair[1].0);
                let k = i64::from(b.sequence.wrapping_sub(a.sequence) as i16);
                let step = i64::from(b.timestamp.wrapping_sub(a.timestamp) as i32);
                step == k * i64::from(self.units_per_packet)
            })
            .count();
        (good, total)
    }

    /// Consecutive received pairs of identified packets whose sequence step equals the step
    /// between the packets sent (gaps where packets were missing, −1 across the swapped pair),
    /// and all such pairs: sequence numbers offset-mapped, not renumbered.
    pub fn sequence_steps_matching_sender(&self) -> (usize, usize) {
        let identified: Vec<(&ReceivedRtp, usize)> = self
            .received
            .iter()
            .filter_map(|(packet, index)| Some((packet, (*index)?)))
            .collect();
        let pairs = identified.windows(2);
        let total = pairs.len();
        let good = pairs
            .filter(|pair| {
                let ((a, from), (b, to)) = (pair[0], pair[1]);
                let sent_step = to as i64 - from as i64;
                i64::from(b.sequence.wrapping_sub(a.sequence) as i16) == sent_step
            })
            .count();
        (good, total)
    }

    /// The timestamp step of every consecutive pair whose sequence numbers differ by one:
    /// `units_per_packet` each for a faithful relay.
    pub fn steps_after_sequence_plus_one(&self) -> BTreeMap<i64, usize> {
        let mut steps = BTreeMap::new();
        for pair in self.received.windows(2) {
            let (a, b) = (&pair[0].0, &pair[1].0);
            if b.sequence == a.sequence.wrapping_add(1) {
                *steps
                    .entry(i64::from(b.timestamp.wrapping_sub(a.timestamp) as i32))
                    .or_default() += 1;
            }
        }
        steps
    }

    /// The sequence gaps seen (step → count), e.g. `{1: 120, 2: 13, -1: 1}` when every 10th
    /// of 150 packets is missing and one pair is swapped.
    pub fn sequence_steps(&self) -> BTreeMap<i64, usize> {
        let mut steps = BTreeMap::new();
        for pair in self.received.windows(2) {
            let step = pair[1].0.sequence.wrapping_sub(pair[0].0.sequence) as i16;
            *steps.entry(i64::from(step)).or_default() += 1;
        }
        steps
    }

    pub fn ssrcs(&self) -> BTreeSet<u32> {
        self.received
            .iter()
            .map(|(packet, _)| packet.ssrc)
            .collect()
    }

    /// Received packets whose payload is no sent payload (altered, cut, or foreign).
    pub fn unidentified(&self) -> usize {
        self.received
            .iter()
            .filter(|(_, index)| index.is_none())
            .count()
    }

    /// The swapped pair as received: (arrival position, sequence number) of each of its two
    /// packets, if both arrived.
    pub fn swapped_pair(&self) -> Option<((usize, u16), (usize, u16))> {
        let at = self.swap_at?;
        let find = |wanted: usize| {
            self.received
                .iter()
                .position(|(_, index)| *index == Some(wanted))
                .map(|position| (position, self.received[position].0.sequence))
        };
        Some((find(at)?, find(at + 1)?))
    }

    /// The swapped pair arrived in swapped order, numbered as sent: the later packet one
    /// sequence number above the earlier, whatever their arrival order.
    pub fn swap_kept(&self) -> bool {
        self.swapped_pair()
            .is_some_and(|((first_at, first_seq), (second_at, second_seq))| {
                second_at < first_at && second_seq == first_seq.wrapping_add(1)
            })
    }

    pub fn first_has_marker(&self) -> bool {
        self.received
            .first()
            .is_some_and(|(packet, _)| packet.marker)
    }

    /// Every check: all sent packets arrived intact, in one SSRC, the first with the marker,
    /// sequence numbers and timestamps moved only by the sender's own steps.
    pub fn is_faithful(&self) -> bool {
        let (ts_good, ts_total) = self.timestamp_steps_matching_sequence();
        let (seq_good, seq_total) = self.sequence_steps_matching_sender();
        self.received.len() == self.sent
            && self.unidentified() == 0
            && self.ssrcs().len() == 1
            && self.first_has_marker()
            && ts_good == ts_total
            && seq_good == seq_total
            && (self.swap_at.is_none() || self.swap_kept())
    }
}

impl fmt::Display for RelayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (ts_good, ts_total) = self.timestamp_steps_matching_sequence();
        let (seq_good, seq_total) = self.sequence_steps_matching_sender();
        writeln!(
            f,
            "  received {} of {} packets sent; {} with a payload not sent",
            self.received.len(),
            self.sent,
            self.unidentified()
        )?;
        writeln!(
            f,
            "  timestamp step = {}·(sequence step): {ts_good} of {ts_total} pairs",
            self.units_per_packet
        )?;
        writeln!(
            f,
            "  timestamp steps where the sequence number rose by 1 (step: count): {:?}",
            self.steps_after_sequence_plus_one()
        )?;
        writeln!(
            f,
            "  sequence step = sender's step (gaps kept, offset-mapped): {seq_good} of {seq_total} pairs"
        )?;
        writeln!(
            f,
            "  sequence steps seen (step: count): {:?}",
            self.sequence_steps()
        )?;
        writeln!(
            f,
            "  first packet has the marker: {}; SSRCs: {:x?}",
            self.first_has_marker(),
            self.ssrcs()
        )?;
        if let Some(at) = self.swap_at {
            writeln!(
                f,
                "  swapped pair {at},{} as received ((arrival position, sequence)): {:?}; kept: {}",
                at + 1,
                self.swapped_pair(),
                self.swap_kept()
            )?;
        }
        let mut rows = String::new();
        for (packet, index) in self.received.iter().take(48) {
            let index = index.map_or_else(|| "?".to_owned(), |i| i.to_string());
            let _ = write!(
                rows,
                " {index}:{}/{}{}",
                packet.sequence,
                packet.timestamp,
                if packet.marker { "M" } else { "" }
            );
        }
        writeln!(
            f,
            "  first packets as sent-index:sequence/timestamp(M = marker):{rows}"
        )
    }
}

/// One RFC 4733 telephone-event payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    pub event: u8,
    pub end: bool,
    pub volume: u8,
    pub duration: u16,
}

impl TelephoneEvent {
    pub fn parse(payload: &[u8]) -> anyhow::Result<TelephoneEvent> {
        let [event, flags, high, low] = payload
            .get(..4)
            .and_then(|bytes| <[u8; 4]>::try_from(bytes).ok())
            .context("telephone-event payload shorter than 4 bytes")?;
        Ok(TelephoneEvent {
            event,
            end: flags & 0x80 != 0,
            volume: flags & 0x3f,
            duration: u16::from_be_bytes([high, low]),
        })
    }
}

/// The RFC 4733 event code of a DTMF key.
pub fn event_code(key: char) -> Option<u8> {
    match key {
        '0'..='9' => Some(key as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => Some(key as u8 - b'A' + 12),
        _ => None,
    }
}

/// One digit as it arrived: its telephone-event packets, in arrival order.
#[derive(Debug, Clone)]
pub struct ReceivedDigit {
    pub packets: Vec<(ReceivedRtp, TelephoneEvent)>,
}

impl ReceivedDigit {
    /// What is wrong with this digit's packets as RFC 4733 wants them (empty: nothing): the
    /// marker on the first packet only, one timestamp, durations rising until the end,
    /// three end packets carrying the final duration.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let markers: Vec<bool> = self.packets.iter().map(|(p, _)| p.marker).collect();
        if markers.first() != Some(&true) || markers.iter().skip(1).any(|&m| m) {
            problems.push(format!("markers {markers:?} (want the first packet only)"));
        }
        let timestamps: BTreeSet<u32> = self.packets.iter().map(|(p, _)| p.timestamp).collect();
        if timestamps.len() != 1 {
            problems.push(format!("timestamps {timestamps:?} (want one)"));
        }
        let updates: Vec<u16> = self
            .packets
            .iter()
            .filter(|(_, e)| !e.end)
            .map(|(_, e)| e.duration)
            .collect();
        if updates.windows(2).any(|w| w[1] <= w[0]) {
            problems.push(format!("durations {updates:?} do not rise"));
        }
        let ends: Vec<u16> = self
            .packets
            .iter()
            .filter(|(_, e)| e.end)
            .map(|(_, e)| e.duration)
            .collect();
        if ends.len() != 3 {
            problems.push(format!("{} end packets (want 3)", ends.len()));
        }
        let last_update = updates.last().copied().unwrap_or(0);
        if ends
            .iter()
            .any(|&d| d < last_update || Some(&d) != ends.first())
        {
            problems.push(format!(
                "end durations {ends:?} (want all equal, at least {last_update})"
            ));
        }
        if self.packets.iter().any(|(_, e)| e.end)
            && !self.packets.last().is_some_and(|(_, e)| e.end)
        {
            problems.push("updates after the end".to_owned());
        }
        problems
    }
}

/// The digits in `received`'s telephone-event packets (`payload_type`), in arrival order. A
/// new digit starts where the event code changes or a non-end packet follows an end packet.
pub fn received_digits(received: &[ReceivedRtp], payload_type: u8) -> Vec<ReceivedDigit> {
    let mut digits: Vec<ReceivedDigit> = Vec::new();
    for packet in received.iter().filter(|p| p.payload_type == payload_type) {
        let Ok(event) = TelephoneEvent::parse(&packet.payload) else {
            continue;
        };
        let continues = digits
            .last()
            .and_then(|d| d.packets.last())
            .is_some_and(|(_, last)| last.event == event.event && (event.end || !last.end));
        if continues {
            if let Some(digit) = digits.last_mut() {
                digit.packets.push((packet.clone(), event));
            }
        } else {
            digits.push(ReceivedDigit {
                packets: vec![(packet.clone(), event)],
            });
        }
    }
    digits
}

/// Checks the telephone-event packets a far end received for `keys` (e.g. `"1234#*"`):
/// every key, in order, each with correct packets ([`ReceivedDigit::problems`]), rising
/// timestamps from digit to digit, and one SSRC whose sequence numbers run without gaps
/// (the gateway sends them all; loopback loses none). Returns every problem found with the
/// packets as received.
pub fn check_telephone_events(
    received: &[ReceivedRtp],
    payload_type: u8,
    keys: &str,
) -> Result<(), String> {
    let digits = received_digits(received, payload_type);
    let mut problems = Vec::new();
    let codes: Vec<u8> = digits.iter().map(|d| d.packets[0].1.event).collect();
    let wanted: Vec<u8> = keys.chars().filter_map(event_code).collect();
    if codes != wanted {
        problems.push(format!("event codes {codes:?}, want {wanted:?}"));
    }
    for (digit, index) in digits.iter().zip(0..) {
        for problem in digit.problems() {
            problems.push(format!(
                "digit {index} (event {}): {problem}",
                digit.packets[0].1.event
            ));
        }
    }
    let starts: Vec<u32> = digits.iter().map(|d| d.packets[0].0.timestamp).collect();
    if starts
        .windows(2)
        .any(|w| w[1].wrapping_sub(w[0]) as i32 <= 0)
    {
        problems.push(format!("digit timestamps {starts:?} do not rise"));
    }
    let ssrcs: BTreeSet<u32> = received.iter().map(|p| p.ssrc).collect();
    if ssrcs.len() != 1 {
        problems.push(format!("SSRCs {ssrcs:x?} (want one)"));
    }
    let gaps: Vec<(u16, u16)> = received
        .windows(2)
        .filter(|w| w[1].sequence != w[0].sequence.wrapping_add(1))
        .map(|w| (w[0].sequence, w[1].sequence))
        .collect();
    if !gaps.is_empty() {
        problems.push(format!("sequence numbers jump at {gaps:?}"));
    }
    if problems.is_empty() {
        return Ok(());
    }
    let mut text = problems.join("\n  ");
    text.push_str("\n  packets (pt seq ts M event E duration):");
    for packet in received {
        let event = TelephoneEvent::parse(&packet.payload).ok();
        let _ = write!(
            text,
            "\n    {} {} {} {} {}",
            packet.payload_type,
            packet.sequence,
            packet.timestamp,
            if packet.marker { "M" } else { "-" },
            event.map_or_else(
                || format!("({} bytes)", packet.payload.len()),
                |e| format!(
                    "{} {} {}",
                    e.event,
                    if e.end { "E" } else { "-" },
                    e.duration
                )
            ),
        );
    }
    Err(format!("  {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> ScriptedStream {
        ScriptedStream::pcmu_ptime_30(0x1234, 65_500, u32::MAX - 1000)
    }

    /// What a faithful relay delivers: the sent packets, in sending order, with sequence
    /// numbers and timestamps moved by one offset each (and its own SSRC).
    fn relayed_faithfully(stream: &ScriptedStream) -> Vec<ReceivedRtp> {
        stream
            .sent_order()
            .into_iter()
            .map(|index| {
                let sent = ReceivedRtp::parse(&stream.packet(index)).expect("our packets parse");
                ReceivedRtp {
                    sequence: sent.sequence.wrapping_add(1000),
                    timestamp: sent.timestamp.wrapping_add(77_777),
                    ssrc: 0xfeed,
                    ..sent
                }
            })
            .collect()
    }

    #[test]
    fn stream_skips_every_tenth_and_swaps_one_pair() {
        let stream = stream();
        let order = stream.sent_order();
        assert_eq!(order.len(), 135);
        assert_eq!(&order[..12], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12]);
        let at = order.iter().position(|&i| i == 42).expect("42 sent");
        assert_eq!(order[at + 1], 41);
        assert_ne!(stream.payload(3), stream.payload(4));
        assert_eq!(stream.identify(&stream.payload(77)), Some(77));
        let first = ReceivedRtp::parse(&stream.packet(0)).expect("parses");
        assert!(first.marker && first.payload.len() == 240 && first.sequence == 65_500);
    }

    #[test]
    fn faithful_relay_passes_and_wraps_are_fine() {
        let stream = stream();
        let report = RelayReport::check(&stream, &relayed_faithfully(&stream));
        assert!(report.is_faithful(), "{report}");
        assert_eq!(
            report.steps_after_sequence_plus_one(),
            BTreeMap::from([(240, 117)])
        );
    }

    #[test]
    fn contiguous_renumbering_at_20_ms_fails_every_check() {
        let stream = stream();
        // What the gateway did: arrival order numbered 0, 1, 2, ... in 160-unit steps, no marker.
        let received: Vec<ReceivedRtp> = relayed_faithfully(&stream)
            .into_iter()
            .enumerate()
            .map(|(n, packet)| ReceivedRtp {
                sequence: n as u16,
                timestamp: 160 * n as u32,
                marker: false,
                ..packet
            })
            .collect();
        let report = RelayReport::check(&stream, &received);
        assert!(!report.is_faithful());
        assert_eq!(report.timestamp_steps_matching_sequence().0, 0);
        assert!(!report.first_has_marker() && !report.swap_kept());
        let (good, total) = report.sequence_steps_matching_sender();
        assert!(good < total, "{good} of {total}");
        assert!(report.to_string().contains("{160: 134}"), "{report}");
    }

    #[test]
    fn telephone_events_are_checked() {
        let packet =
            |sequence: u16, timestamp: u32, marker: bool, event: u8, end: bool, duration: u16| {
                ReceivedRtp {
                    sequence,
                    timestamp,
                    marker,
                    ssrc: 1,
                    payload_type: 101,
                    payload: vec![
                        event,
                        if end { 0x8a } else { 0x0a },
                        (duration >> 8) as u8,
                        duration as u8,
                    ],
                }
            };
        let mut good = Vec::new();
        let mut sequence = 10;
        for (digit, timestamp) in [(1u8, 1000u32), (10, 5000)] {
            for (n, duration) in [160u16, 320, 480, 640].into_iter().enumerate() {
                good.push(packet(sequence, timestamp, n == 0, digit, false, duration));
                sequence += 1;
            }
            for _ in 0..3 {
                good.push(packet(sequence, timestamp, false, digit, true, 800));
                sequence += 1;
            }
        }
        assert_eq!(check_telephone_events(&good, 101, "1*"), Ok(()));
        let unended: Vec<ReceivedRtp> = good.iter().take(11).cloned().collect();
        let error =
            check_telephone_events(&unended, 101, "1*").expect_err("the last digit has no end");
        assert!(
            error.contains("digit 1 (event 10): 0 end packets"),
            "{error}"
        );
    }
}
