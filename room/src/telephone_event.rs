//! DTMF as RFC 4733 telephone-events: the 4-byte payload, a sender that
//! turns queued digits into correctly timed event packets, and a receiver
//! that turns the far end's packets into one start and one end per digit.
//!
//! Sending, for each digit (defaults: 8 kHz clock, 20 ms packets, 100 ms
//! event, 100 ms gap): one packet per packet interval, all carrying the RTP
//! timestamp of the event's start, the first with the marker bit, the
//! duration field growing by one interval each time (160, 320, 480, 640);
//! the last (at 800) has the E bit and is sent three times (RFC 4733
//! §2.5.1.4), the two repeats at the following intervals. The event's
//! packets stand in for audio frames, so audio pauses for the event's span
//! and resumes during the gap (while the repeats still go out), and the
//! audio clock skips the span, so the first audio packet after the event is
//! stamped start + span.
//!
//! Receiving: the timestamp identifies an event, so the repeats of its end
//! and any retransmissions collapse into a single start and a single end.
//! An event whose start was lost starts at its first packet; one whose end
//! was lost ends when a packet with a new timestamp arrives, or after
//! `end_timeout` without updates.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use thiserror::Error;

/// Length of one event block.
pub const TELEPHONE_EVENT_LEN: usize = 4;
/// The volume we send: -10 dBm0, a usual DTMF level.
pub const DEFAULT_VOLUME: u8 = 10;
/// The repeats of an event's end packet after the first (three in all).
const END_REPEATS: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TelephoneEventError {
    #[error("{0} bytes is too short for a telephone-event")]
    TooShort(usize),
    #[error("{0:?} is not a DTMF key")]
    UnknownDigit(char),
    #[error("the DTMF queue holds at most {0} digits")]
    QueueFull(usize),
}

/// The RFC 4733 event code of a DTMF key (`0`-`9`, `*`, `#`, `A`-`D` in
/// either case): 0-9, 10, 11, 12-15.
pub fn event_code(digit: char) -> Option<u8> {
    match digit.to_ascii_uppercase() {
        key @ '0'..='9' => Some(key as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        key @ 'A'..='D' => Some(key as u8 - b'A' + 12),
        _ => None,
    }
}

/// The DTMF key of an event code; `None` for the non-DTMF events (flash,
/// fax and modem tones...).
pub fn digit_for_event(code: u8) -> Option<char> {
    const KEYS: [char; 16] = [
        '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '*', '#', 'A', 'B', 'C', 'D',
    ];
    KEYS.get(usize::from(code)).copied()
}

/// One event block (RFC 4733 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    pub event: u8,
    pub end: bool,
    /// Power level in -dBm0, 0-63.
    pub volume: u8,
    /// Since the event's start, in timestamp units.
    pub duration: u16,
}

impl TelephoneEvent {
    /// Reads the first block of a payload (any further blocks are
    /// redundancy this leg does not need); the reserved bit is ignored.
    pub fn parse(payload: &[u8]) -> Result<Self, TelephoneEventError> {
        let block = payload
            .first_chunk::<TELEPHONE_EVENT_LEN>()
            .ok_or(TelephoneEventError::TooShort(payload.len()))?;
        Ok(Self {
            event: block[0],
            end: block[1] & 0x80 != 0,
            volume: block[1] & 0x3f,
            duration: u16::from_be_bytes([block[2], block[3]]),
        })
    }

    pub fn to_bytes(&self) -> [u8; TELEPHONE_EVENT_LEN] {
        let [high, low] = self.duration.to_be_bytes();
        [
            self.event,
            (u8::from(self.end) << 7) | (self.volume & 0x3f),
            high,
            low,
        ]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfSenderConfig {
    /// RTP clock of the telephone-event format, the audio's (8000 unless
    /// SDP said otherwise, e.g. 48000 alongside Opus).
    pub clock_rate: u32,
    /// How often updates go out: the audio packet time (1 ms-1 s).
    pub packet_interval: Duration,
    /// How long each digit lasts; at least one packet interval, at most
    /// what the 16-bit duration field holds at `clock_rate`.
    pub event_duration: Duration,
    /// Audio between digits. The end repeats take two intervals, so
    /// digits are never closer than that.
    pub inter_digit_gap: Duration,
    pub volume: u8,
    /// Digits waiting at most; more are refused.
    pub queue_limit: usize,
}

impl Default for DtmfSenderConfig {
    fn default() -> Self {
        Self {
            clock_rate: 8000,
            packet_interval: Duration::from_millis(20),
            event_duration: Duration::from_millis(100),
            inter_digit_gap: Duration::from_millis(100),
            volume: DEFAULT_VOLUME,
            queue_limit: 64,
        }
    }
}

/// One telephone-event packet to send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPacket {
    pub event: TelephoneEvent,
    pub marker: bool,
    /// The event's start: the audio timestamp passed when it began.
    pub timestamp: u32,
    /// The packet stands for this tick's audio frame: send no audio, and
    /// advance the audio clock by one packet interval instead.
    pub replaces_audio: bool,
}

#[derive(Debug, Clone, Copy)]
struct SendingEvent {
    code: u8,
    started_at: Instant,
    timestamp: u32,
    /// Index of the next packet: 0..span are updates (the last of them
    /// the first end packet), then the repeats.
    next_index: u32,
}

/// Sends queued digits as telephone-events; the caller drives it from its
/// audio tick:
///
/// ```text
/// let mut replaces_audio = false;
/// while let Some(packet) = dtmf.poll(now, rtp.next_timestamp()) {
///     rtp.packet_with_timestamp(&packet.event.to_bytes(), packet.timestamp,
///                               packet.marker, telephone_event_pt, &mut buf)?; // send
///     replaces_audio |= packet.replaces_audio;
/// }
/// if replaces_audio { rtp.skip(frame_units) } else { /* send the audio frame */ }
/// ```
#[derive(Debug, Clone)]
pub struct TelephoneEventSender {
    config: DtmfSenderConfig,
    units_per_packet: u32,
    /// Packets of an event's span (updates, the first end included).
    span_packets: u32,
    final_duration: u16,
    queue: VecDeque<u8>,
    sending: Option<SendingEvent>,
    /// When the next digit may start.
    next_start_at: Option<Instant>,
}

impl TelephoneEventSender {
    pub fn new(config: DtmfSenderConfig) -> Self {
        let clock_rate = config.clock_rate.max(1);
        let packet_interval = config
            .packet_interval
            .clamp(Duration::from_millis(1), Duration::from_secs(1));
        let units_per_packet = duration_to_units(packet_interval, clock_rate).clamp(1, 0xffff);
        let final_duration =
            duration_to_units(config.event_duration, clock_rate).clamp(units_per_packet, 0xffff);
        let config = DtmfSenderConfig {
            clock_rate,
            packet_interval,
            volume: config.volume.min(63),
            ..config
        };
        Self {
            config,
            units_per_packet,
            span_packets: final_duration.div_ceil(units_per_packet),
            final_duration: final_duration as u16,
            queue: VecDeque::new(),
            sending: None,
            next_start_at: None,
        }
    }

    /// Queues digits to send after those already queued. All or nothing:
    /// an unknown key or a full queue refuses the whole string.
    pub fn enqueue(&mut self, digits: &str, now: Instant) -> Result<(), TelephoneEventError> {
        if let Some(bad) = digits.chars().find(|&key| event_code(key).is_none()) {
            return Err(TelephoneEventError::UnknownDigit(bad));
        }
        if self.queue.len() + digits.chars().count() > self.config.queue_limit {
            return Err(TelephoneEventError::QueueFull(self.config.queue_limit));
        }
        self.queue.extend(digits.chars().filter_map(event_code));
        if self.sending.is_none() && self.next_start_at.is_none() {
            self.next_start_at = Some(now);
        }
        Ok(())
    }

    /// Nothing queued and nothing being sent.
    pub fn is_idle(&self) -> bool {
        self.sending.is_none() && self.queue.is_empty()
    }

    /// When the next packet is due, if any is.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.sending {
            Some(event) => event
                .started_at
                .checked_add(self.config.packet_interval * event.next_index),
            None if self.queue.is_empty() => None,
            None => self.next_start_at,
        }
    }

    /// The next packet due at `now`, if any; call until `None`.
    /// `audio_timestamp` is the audio clock now ([`super::rtp::RtpSender::next_timestamp`]):
    /// a digit that starts takes it as its timestamp.
    ///
    /// A packet counts as due from half an interval before its time, so a
    /// caller ticking every interval with some timer jitter gets exactly
    /// one per tick. A late caller gets the latest update (skipping stale
    /// ones) but every end packet.
    pub fn poll(&mut self, now: Instant, audio_timestamp: u32) -> Option<EventPacket> {
        let half_interval = self.config.packet_interval / 2;
        if self.sending.is_none() {
            let start_at = self.next_start_at?;
            if start_at.saturating_duration_since(now) > half_interval {
                return None;
            }
            let code = self.queue.pop_front()?;
            self.sending = Some(SendingEvent {
                code,
                started_at: now,
                timestamp: audio_timestamp,
                next_index: 0,
            });
        }
        let mut event = self.sending?;
        let elapsed = now
            .saturating_duration_since(event.started_at)
            .saturating_add(half_interval);
        let due_index = u32::try_from(elapsed.as_nanos() / self.config.packet_interval.as_nanos())
            .unwrap_or(u32::MAX);
        if event.next_index > due_index {
            return None;
        }
        let last_update = self.span_packets - 1;
        let index = if event.next_index < last_update {
            due_index.min(last_update)
        } else {
            event.next_index
        };
        let end = index >= last_update;
        let duration = if end {
            self.final_duration
        } else {
            ((index + 1) * self.units_per_packet) as u16
        };
        let packet = EventPacket {
            event: TelephoneEvent {
                event: event.code,
                end,
                volume: self.config.volume,
                duration,
            },
            marker: index == 0,
            timestamp: event.timestamp,
            replaces_audio: index <= last_update,
        };
        event.next_index = index + 1;
        if index >= last_update + END_REPEATS {
            self.sending = None;
            let span_end = event
                .started_at
                .checked_add(self.config.packet_interval * self.span_packets);
            self.next_start_at =
                span_end.and_then(|end| end.checked_add(self.config.inter_digit_gap));
        } else {
            self.sending = Some(event);
        }
        Some(packet)
    }
}

fn duration_to_units(duration: Duration, clock_rate: u32) -> u32 {
    let units = duration.as_nanos() * u128::from(clock_rate) / 1_000_000_000;
    u32::try_from(units).unwrap_or(u32::MAX)
}

fn units_to_duration(units: u16, clock_rate: u32) -> Duration {
    Duration::from_nanos(u64::from(units) * 1_000_000_000 / u64::from(clock_rate.max(1)))
}

/// A digit from the far end, reported once each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigitEvent {
    DigitStarted(char),
    DigitEnded { digit: char, duration: Duration },
}

/// The digit events one packet produced: at most an end (of an event
/// whose end was lost), a start, and that digit's own end.
#[derive(Debug, Clone, Default)]
pub struct DigitEvents {
    events: [Option<DigitEvent>; 3],
    next: usize,
}

impl DigitEvents {
    fn push(&mut self, event: DigitEvent) {
        if let Some(slot) = self.events.iter_mut().find(|slot| slot.is_none()) {
            *slot = Some(event);
        }
    }
}

impl Iterator for DigitEvents {
    type Item = DigitEvent;

    fn next(&mut self) -> Option<DigitEvent> {
        let event = self.events.get_mut(self.next)?.take();
        self.next += 1;
        event
    }
}

#[derive(Debug, Clone, Copy)]
struct ReceivingEvent {
    digit: char,
    timestamp: u32,
    longest: u16,
    last_packet_at: Instant,
    ended: bool,
}

/// Turns the far end's telephone-event packets into digit starts and ends.
#[derive(Debug, Clone)]
pub struct TelephoneEventReceiver {
    clock_rate: u32,
    end_timeout: Duration,
    current: Option<ReceivingEvent>,
}

/// Default wait for a lost end: updates come every 20-50 ms, so half a
/// second without one means the end packets are not coming.
pub const DEFAULT_END_TIMEOUT: Duration = Duration::from_millis(500);

impl TelephoneEventReceiver {
    pub fn new(clock_rate: u32, end_timeout: Duration) -> Self {
        Self {
            clock_rate: clock_rate.max(1),
            end_timeout,
            current: None,
        }
    }

    /// Takes one telephone-event packet's RTP timestamp and payload.
    /// Non-DTMF events are ignored.
    pub fn on_packet(
        &mut self,
        timestamp: u32,
        payload: &[u8],
        now: Instant,
    ) -> Result<DigitEvents, TelephoneEventError> {
        let packet = TelephoneEvent::parse(payload)?;
        let mut events = DigitEvents::default();
        let Some(digit) = digit_for_event(packet.event) else {
            return Ok(events);
        };
        if let Some(current) = &mut self.current {
            if current.timestamp == timestamp && current.digit == digit {
                if current.ended {
                    return Ok(events); // a repeat of the end, or a straggler
                }
                current.longest = current.longest.max(packet.duration);
                current.last_packet_at = now;
                if packet.end {
                    current.ended = true;
                    events.push(DigitEvent::DigitEnded {
                        digit,
                        duration: units_to_duration(current.longest, self.clock_rate),
                    });
                }
                return Ok(events);
            }
            let behind = current.timestamp.wrapping_sub(timestamp);
            // Up to 10 s older: a late packet of an earlier event. Further
            // back is more likely a sender that reset its timestamps.
            if behind != 0 && u64::from(behind) <= 10 * u64::from(self.clock_rate) {
                return Ok(events);
            }
            if !current.ended {
                events.push(DigitEvent::DigitEnded {
                    digit: current.digit,
                    duration: units_to_duration(current.longest, self.clock_rate),
                });
            }
        }
        events.push(DigitEvent::DigitStarted(digit));
        if packet.end {
            events.push(DigitEvent::DigitEnded {
                digit,
                duration: units_to_duration(packet.duration, self.clock_rate),
            });
        }
        self.current = Some(ReceivingEvent {
            digit,
            timestamp,
            longest: packet.duration,
            last_packet_at: now,
            ended: packet.end,
        });
        Ok(events)
    }

    /// When [`Self::poll`] must run to end a digit whose end was lost.
    pub fn next_deadline(&self) -> Option<Instant> {
        let current = self.current.filter(|current| !current.ended)?;
        current.last_packet_at.checked_add(self.end_timeout)
    }

    /// Ends a digit that has had no update for `end_timeout`.
    pub fn poll(&mut self, now: Instant) -> Option<DigitEvent> {
        let deadline = self.next_deadline()?;
        let current = self.current.as_mut()?;
        if now < deadline {
            return None;
        }
        current.ended = true;
        Some(DigitEvent::DigitEnded {
            digit: current.digit,
            duration: units_to_duration(current.longest, self.clock_rate),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::{RtpPacket, RtpSender};

    const TICK: Duration = Duration::from_millis(20);

    #[test]
    fn maps_all_sixteen_keys_both_ways() {
        let keys = "0123456789*#ABCD";
        for (code, key) in keys.chars().enumerate() {
            assert_eq!(event_code(key), Some(code as u8));
            assert_eq!(digit_for_event(code as u8), Some(key));
        }
        assert_eq!(event_code('b'), Some(13));
        assert_eq!(event_code('E'), None);
        assert_eq!(event_code(' '), None);
        assert_eq!(digit_for_event(16), None);
        assert_eq!(digit_for_event(255), None);
    }

    #[test]
    fn payload_round_trips_in_rfc_layout() {
        let event = TelephoneEvent {
            event: 11,
            end: true,
            volume: 10,
            duration: 800,
        };
        assert_eq!(event.to_bytes(), [11, 0x8a, 0x03, 0x20]);
        assert_eq!(TelephoneEvent::parse(&event.to_bytes()), Ok(event));
        // The reserved bit is ignored; extra blocks are tolerated.
        assert_eq!(
            TelephoneEvent::parse(&[5, 0x4a, 0, 160, 9, 9, 9, 9]),
            Ok(TelephoneEvent {
                event: 5,
                end: false,
                volume: 10,
                duration: 160
            })
        );
        assert_eq!(
            TelephoneEvent::parse(&[1, 2, 3]),
            Err(TelephoneEventError::TooShort(3))
        );
    }

    /// Runs the documented caller loop for `ticks` ticks; returns every
    /// packet sent as (payload type, marker, timestamp, payload).
    fn run(
        sender: &mut TelephoneEventSender,
        rtp: &mut RtpSender,
        start: Instant,
        ticks: u32,
        frame_units: u32,
    ) -> Vec<(u8, bool, u32, Vec<u8>)> {
        let mut sent = Vec::new();
        let mut buf = [0u8; 64];
        for tick in 0..ticks {
            let now = start + TICK * tick;
            let mut replaces_audio = false;
            while let Some(packet) = sender.poll(now, rtp.next_timestamp()) {
                let len = rtp
                    .packet_with_timestamp(
                        &packet.event.to_bytes(),
                        packet.timestamp,
                        packet.marker,
                        101,
                        &mut buf,
                    )
                    .unwrap();
                let parsed = RtpPacket::parse(&buf[..len]).unwrap();
                sent.push((
                    101,
                    parsed.header.marker,
                    parsed.header.timestamp,
                    parsed.payload.to_vec(),
                ));
                replaces_audio |= packet.replaces_audio;
            }
            if replaces_audio {
                rtp.skip(frame_units);
            } else {
                let len = rtp
                    .next_packet(&[0xff; 4], frame_units, false, 0, &mut buf)
                    .unwrap();
                let parsed = RtpPacket::parse(&buf[..len]).unwrap();
                sent.push((0, false, parsed.header.timestamp, Vec::new()));
            }
        }
        sent
    }

    #[test]
    fn sends_rfc_4733_packets_interleaved_with_audio() {
        let start = Instant::now();
        let mut sender = TelephoneEventSender::new(DtmfSenderConfig::default());
        let mut rtp = RtpSender::new(1, 0, 10_000);
        sender.enqueue("1#", start).unwrap();
        let sent = run(&mut sender, &mut rtp, start, 22, 160);
        let ev = |code: u8, end: bool, duration: u16| {
            TelephoneEvent {
                event: code,
                end,
                volume: 10,
                duration,
            }
            .to_bytes()
            .to_vec()
        };
        let t0 = 10_000;
        let t1 = t0 + 1600;
        let expected: Vec<(u8, bool, u32, Vec<u8>)> = vec![
            (101, true, t0, ev(1, false, 160)),
            (101, false, t0, ev(1, false, 320)),
            (101, false, t0, ev(1, false, 480)),
            (101, false, t0, ev(1, false, 640)),
            (101, false, t0, ev(1, true, 800)),
            // Audio resumes at start + span; the end repeats ride along.
            (101, false, t0, ev(1, true, 800)),
            (0, false, t0 + 800, vec![]),
            (101, false, t0, ev(1, true, 800)),
            (0, false, t0 + 960, vec![]),
            (0, false, t0 + 1120, vec![]),
            (0, false, t0 + 1280, vec![]),
            (0, false, t0 + 1440, vec![]),
            // Second digit 200 ms after the first.
            (101, true, t1, ev(11, false, 160)),
            (101, false, t1, ev(11, false, 320)),
            (101, false, t1, ev(11, false, 480)),
            (101, false, t1, ev(11, false, 640)),
            (101, false, t1, ev(11, true, 800)),
            (101, false, t1, ev(11, true, 800)),
            (0, false, t1 + 800, vec![]),
            (101, false, t1, ev(11, true, 800)),
            (0, false, t1 + 960, vec![]),
            (0, false, t1 + 1120, vec![]),
            (0, false, t1 + 1280, vec![]),
            (0, false, t1 + 1440, vec![]),
            (0, false, t1 + 1600, vec![]),
            (0, false, t1 + 1760, vec![]),
        ];
        assert_eq!(sent, expected);
        assert!(sender.is_idle());
        // Every packet took the next sequence number, without gaps.
        assert_eq!(rtp.next_sequence(), sent.len() as u16);
    }

    #[test]
    fn durations_use_the_event_clock_rate() {
        let start = Instant::now();
        let mut sender = TelephoneEventSender::new(DtmfSenderConfig {
            clock_rate: 48_000,
            event_duration: Duration::from_millis(90),
            ..DtmfSenderConfig::default()
        });
        sender.enqueue("5", start).unwrap();
        let durations: Vec<_> = (0..7)
            .filter_map(|tick| sender.poll(start + TICK * tick, 0))
            .map(|packet| (packet.event.duration, packet.event.end))
            .collect();
        // 90 ms is not a multiple of 20: the last update carries 4320.
        assert_eq!(
            durations,
            [
                (960, false),
                (1920, false),
                (2880, false),
                (3840, false),
                (4320, true),
                (4320, true),
                (4320, true)
            ]
        );
    }

    #[test]
    fn a_late_caller_gets_the_latest_update_and_every_end() {
        let start = Instant::now();
        let mut sender = TelephoneEventSender::new(DtmfSenderConfig::default());
        sender.enqueue("9", start).unwrap();
        assert_eq!(sender.poll(start, 0).map(|p| p.event.duration), Some(160));
        // The caller sleeps 50 ms: updates 320 and 480 are stale.
        let late = start + Duration::from_millis(50);
        assert_eq!(sender.poll(late, 0).map(|p| p.event.duration), Some(640));
        assert_eq!(sender.poll(late, 0), None);
        // And then 100 ms more: all three end packets, none skipped.
        let later = late + Duration::from_millis(100);
        let ends: Vec<_> = std::iter::from_fn(|| sender.poll(later, 0)).collect();
        assert_eq!(ends.len(), 3);
        assert!(ends.iter().all(|p| p.event.end && p.event.duration == 800));
        assert_eq!(ends.iter().filter(|p| p.replaces_audio).count(), 1);
    }

    #[test]
    fn timer_jitter_of_the_caller_does_not_change_the_schedule() {
        let start = Instant::now();
        let mut sender = TelephoneEventSender::new(DtmfSenderConfig::default());
        sender.enqueue("2", start).unwrap();
        let mut durations = Vec::new();
        for tick in 0..7u32 {
            // Alternately 3 ms early and 3 ms late.
            let now = start + TICK * tick + Duration::from_millis(3);
            let now = if tick % 2 == 1 {
                now - Duration::from_millis(6)
            } else {
                now
            };
            while let Some(packet) = sender.poll(now, 0) {
                durations.push(packet.event.duration);
            }
        }
        assert_eq!(durations, [160, 320, 480, 640, 800, 800, 800]);
    }

    #[test]
    fn deadlines_and_queue_limits() {
        let start = Instant::now();
        let mut sender = TelephoneEventSender::new(DtmfSenderConfig {
            queue_limit: 3,
            ..DtmfSenderConfig::default()
        });
        assert_eq!(sender.next_deadline(), None);
        assert_eq!(
            sender.enqueue("12x", start),
            Err(TelephoneEventError::UnknownDigit('x'))
        );
        assert_eq!(
            sender.enqueue("1234", start),
            Err(TelephoneEventError::QueueFull(3))
        );
        assert!(sender.is_idle(), "a refused string queues nothing");
        sender.enqueue("12", start).unwrap();
        assert_eq!(sender.next_deadline(), Some(start));
        sender.poll(start, 0).unwrap();
        assert_eq!(sender.next_deadline(), Some(start + TICK));
        for tick in 1..7 {
            sender.poll(start + TICK * tick, 0);
        }
        // Digit 2 starts 200 ms after digit 1.
        assert_eq!(
            sender.next_deadline(),
            Some(start + Duration::from_millis(200))
        );
        assert_eq!(sender.poll(start + Duration::from_millis(180), 0), None);
        let second = sender
            .poll(start + Duration::from_millis(200), 4242)
            .unwrap();
        assert!(second.marker);
        assert_eq!((second.event.event, second.timestamp), (2, 4242));
    }

    #[test]
    fn config_is_clamped_to_what_the_wire_can_carry() {
        let start = Instant::now();
        let mut sender = TelephoneEventSender::new(DtmfSenderConfig {
            clock_rate: 48_000,
            event_duration: Duration::from_secs(10),
            volume: 200,
            ..DtmfSenderConfig::default()
        });
        sender.enqueue("0", start).unwrap();
        let packets: Vec<_> = (0..100)
            .filter_map(|tick| sender.poll(start + TICK * tick, 0))
            .collect();
        let last = packets.last().unwrap();
        assert_eq!(last.event.duration, 0xffff);
        assert_eq!(last.event.volume, 63);
        // A zero duration still sends one update and its repeats.
        let mut short = TelephoneEventSender::new(DtmfSenderConfig {
            event_duration: Duration::ZERO,
            ..DtmfSenderConfig::default()
        });
        short.enqueue("0", start).unwrap();
        let packet = short.poll(start, 0).unwrap();
        assert!(packet.marker && packet.event.end && packet.replaces_audio);
        assert_eq!(packet.event.duration, 160);
    }

    fn payload(code: u8, end: bool, duration: u16) -> [u8; 4] {
        TelephoneEvent {
            event: code,
            end,
            volume: 10,
            duration,
        }
        .to_bytes()
    }

    fn receive(
        receiver: &mut TelephoneEventReceiver,
        timestamp: u32,
        bytes: [u8; 4],
        now: Instant,
    ) -> Vec<DigitEvent> {
        receiver
            .on_packet(timestamp, &bytes, now)
            .unwrap()
            .collect()
    }

    fn ended(digit: char, millis: u64) -> DigitEvent {
        DigitEvent::DigitEnded {
            digit,
            duration: Duration::from_millis(millis),
        }
    }

    #[test]
    fn reports_one_start_and_one_end_per_event() {
        let now = Instant::now();
        let mut receiver = TelephoneEventReceiver::new(8000, DEFAULT_END_TIMEOUT);
        assert_eq!(
            receive(&mut receiver, 1000, payload(5, false, 160), now),
            [DigitEvent::DigitStarted('5')]
        );
        // Retransmitted start, updates: nothing new.
        assert!(receive(&mut receiver, 1000, payload(5, false, 160), now).is_empty());
        assert!(receive(&mut receiver, 1000, payload(5, false, 320), now).is_empty());
        assert_eq!(
            receive(&mut receiver, 1000, payload(5, true, 800), now),
            [ended('5', 100)]
        );
        // The two repeats of the end.
        assert!(receive(&mut receiver, 1000, payload(5, true, 800), now).is_empty());
        assert!(receive(&mut receiver, 1000, payload(5, true, 800), now).is_empty());
        assert_eq!(receiver.next_deadline(), None);
        // The same digit again is a new event: new timestamp.
        assert_eq!(
            receive(&mut receiver, 2600, payload(5, false, 160), now),
            [DigitEvent::DigitStarted('5')]
        );
    }

    #[test]
    fn a_lost_start_still_starts_the_digit() {
        let now = Instant::now();
        let mut receiver = TelephoneEventReceiver::new(8000, DEFAULT_END_TIMEOUT);
        assert_eq!(
            receive(&mut receiver, 0, payload(10, false, 480), now),
            [DigitEvent::DigitStarted('*')]
        );
        // Everything but the ends lost: start and end at once.
        assert_eq!(
            receive(&mut receiver, 1600, payload(11, true, 960), now),
            [
                ended('*', 60),
                DigitEvent::DigitStarted('#'),
                ended('#', 120)
            ]
        );
    }

    #[test]
    fn a_lost_end_ends_at_the_next_event_or_after_the_timeout() {
        let start = Instant::now();
        let mut receiver = TelephoneEventReceiver::new(8000, Duration::from_millis(300));
        receive(&mut receiver, 0, payload(1, false, 160), start);
        receive(&mut receiver, 0, payload(1, false, 320), start + TICK);
        assert_eq!(
            receive(
                &mut receiver,
                1600,
                payload(2, false, 160),
                start + TICK * 10
            ),
            [ended('1', 40), DigitEvent::DigitStarted('2')]
        );
        let last_update = start + TICK * 11;
        receive(&mut receiver, 1600, payload(2, false, 400), last_update);
        assert_eq!(
            receiver.next_deadline(),
            Some(last_update + Duration::from_millis(300))
        );
        assert_eq!(
            receiver.poll(last_update + Duration::from_millis(299)),
            None
        );
        assert_eq!(
            receiver.poll(last_update + Duration::from_millis(300)),
            Some(ended('2', 50))
        );
        assert_eq!(receiver.poll(last_update + Duration::from_secs(1)), None);
        // The end packets arriving after the timeout change nothing.
        assert!(receive(&mut receiver, 1600, payload(2, true, 800), last_update).is_empty());
    }

    #[test]
    fn stragglers_of_earlier_events_are_ignored() {
        let now = Instant::now();
        let mut receiver = TelephoneEventReceiver::new(8000, DEFAULT_END_TIMEOUT);
        receive(&mut receiver, 5000, payload(3, true, 800), now);
        receive(&mut receiver, 6600, payload(4, false, 160), now);
        assert!(receive(&mut receiver, 5000, payload(3, true, 800), now).is_empty());
        // A sender that reset its timestamps far back starts anew.
        assert_eq!(
            receive(
                &mut receiver,
                6600u32.wrapping_sub(8000 * 60),
                payload(7, false, 160),
                now
            ),
            [ended('4', 20), DigitEvent::DigitStarted('7')]
        );
        // Across the u32 wrap, newer is newer.
        let mut wrapping = TelephoneEventReceiver::new(8000, DEFAULT_END_TIMEOUT);
        receive(&mut wrapping, u32::MAX - 100, payload(1, true, 800), now);
        assert_eq!(
            receive(&mut wrapping, 1500, payload(2, false, 160), now),
            [DigitEvent::DigitStarted('2')]
        );
    }

    #[test]
    fn non_dtmf_events_and_garbage() {
        let now = Instant::now();
        let mut receiver = TelephoneEventReceiver::new(8000, DEFAULT_END_TIMEOUT);
        // Event 16 (flash) is not a digit.
        assert!(receive(&mut receiver, 0, payload(16, false, 160), now).is_empty());
        assert!(matches!(
            receiver.on_packet(0, &[1, 2], now),
            Err(TelephoneEventError::TooShort(2))
        ));
        assert_eq!(receiver.next_deadline(), None);
    }
}
