//! The jitter buffer on the decode path: packets arrive whenever the
//! network delivers them, the decoder wants exactly one frame per 20 ms
//! playout tick.
//!
//! It is a fixed-depth buffer keyed by RTP sequence number (wrapping u16):
//! playout starts `target_depth` ticks after the first packet, then takes
//! one sequence number per tick. A missing packet is reported as
//! [`Playout::Lost`] (with the next packet, whose Opus in-band FEC can
//! rebuild it); a packet that arrives after its turn is dropped as late.
//! Memory is a fixed ring of slots whose byte buffers grow to the largest
//! payload each has held: a G.711 stream's ring holds 16 × 160 bytes, not
//! 16 × `max_payload`, and once every slot has held a packet, pushing and
//! playing allocate nothing.
//!
//! Resynchronisation rules:
//! - A sequence number far outside the window (ahead by the ring's size or
//!   more, or behind by more than RFC 3550's MAX_MISORDER) is a stream
//!   restart once the packet after it confirms the new numbering: the
//!   buffer is flushed and primes again. A single stray packet is ignored.
//! - After `max_concealment` ticks with nothing buffered the stream is
//!   taken to have stopped (silence suppression, DTX, hold): playout
//!   reports [`Playout::Empty`] and primes again on the next packet. A
//!   packet that arrives while the buffer is running dry, for a turn it
//!   already gave up on, restarts priming from that packet instead of
//!   being dropped, so a talkspurt after a pause is not clipped.
//! - More than `max_depth` frames buffered (a burst, or a far clock that
//!   runs fast) drops the oldest frame, one per tick, until the delay is
//!   back under the limit.

use super::rtp::MAX_MISORDER;

/// Sizes in 20 ms frames; see the module doc for what each one governs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterConfig {
    /// Ticks of delay before playout starts: the jitter the buffer absorbs.
    pub target_depth: u16,
    /// Buffered frames above which frames are dropped to cut the delay.
    pub max_depth: u16,
    /// Slots in the ring (rounded up to a power of two, at least
    /// `max_depth + 1`): how far ahead a packet may be kept.
    pub capacity: u16,
    /// Largest payload kept, bytes; each slot allocates this much once.
    pub max_payload: usize,
    /// Lost ticks with an empty buffer before the stream counts as stopped.
    pub max_concealment: u16,
}

impl Default for JitterConfig {
    /// 60 ms of delay, room for 16 frames of 1500 bytes (Opus at most
    /// 1275), 100 ms of concealment before assuming silence.
    fn default() -> Self {
        Self {
            target_depth: 3,
            max_depth: 6,
            capacity: 16,
            max_payload: 1500,
            max_concealment: 5,
        }
    }
}

/// What the decoder gets on one playout tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Playout<'a> {
    Frame {
        payload: &'a [u8],
        sequence: u16,
        timestamp: u32,
    },
    /// This tick's packet is missing: conceal it. `next_payload` is the
    /// packet of the next tick when it is already here, for codecs that
    /// can rebuild a lost frame from the next one (Opus FEC).
    Lost { next_payload: Option<&'a [u8]> },
    /// Nothing to play: not started yet, or the stream stopped.
    Empty,
}

/// What became of a pushed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    Stored,
    /// Stored as the first packet of a new run: the buffer flushed what it
    /// had and primes again.
    Resynced,
    Duplicate,
    /// Its turn has passed.
    Late,
    /// Far outside the window; kept in mind as a possible restart.
    OutOfWindow,
    /// Payload larger than `max_payload`.
    TooLarge,
}

/// Counters for diagnostics and the status endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    pub played: u64,
    pub lost: u64,
    pub late: u64,
    pub duplicates: u64,
    pub overflow_dropped: u64,
    pub too_large: u64,
    pub resyncs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    /// Waiting out the target depth; `highest` bounds the stored run.
    Priming {
        ticks: u16,
        highest: u16,
    },
    /// `dry_ticks` counts consecutive lost ticks with nothing buffered.
    Playing {
        dry_ticks: u16,
    },
}

struct Slot {
    occupied: bool,
    sequence: u16,
    timestamp: u32,
    /// The payload; its capacity stays when it is replaced.
    data: Vec<u8>,
}

pub struct JitterBuffer {
    config: JitterConfig,
    slots: Vec<Slot>,
    state: State,
    /// The next sequence number to play (lowest buffered while priming).
    window_start: u16,
    buffered: usize,
    /// The sequence number that would confirm a restart (RFC 3550 A.1's
    /// bad_seq).
    restart_candidate: Option<u16>,
    stats: JitterStats,
}

impl JitterBuffer {
    /// The ring's slots are made empty; each allocates on its first
    /// payload (and on a longer one than it held).
    pub fn new(config: JitterConfig) -> Self {
        let target_depth = config.target_depth.max(1);
        let max_depth = config.max_depth.max(target_depth);
        let capacity = config
            .capacity
            .max(max_depth.saturating_add(1))
            .clamp(2, 1024)
            .next_power_of_two();
        let config = JitterConfig {
            target_depth,
            max_depth,
            capacity,
            ..config
        };
        let slots = (0..capacity)
            .map(|_| Slot {
                occupied: false,
                sequence: 0,
                timestamp: 0,
                data: Vec::new(),
            })
            .collect();
        Self {
            config,
            slots,
            state: State::Idle,
            window_start: 0,
            buffered: 0,
            restart_candidate: None,
            stats: JitterStats::default(),
        }
    }

    /// The configuration in effect, after rounding and bounds.
    pub fn config(&self) -> JitterConfig {
        self.config
    }

    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// Packets waiting to be played.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Whether playout has started (and not stopped for silence).
    pub fn is_playing(&self) -> bool {
        matches!(self.state, State::Playing { .. })
    }

    /// Offers one received packet's payload; copies it into a slot.
    pub fn push(&mut self, sequence: u16, timestamp: u32, payload: &[u8]) -> PushOutcome {
        if payload.len() > self.config.max_payload {
            self.stats.too_large += 1;
            return PushOutcome::TooLarge;
        }
        let capacity = self.slots.len();
        let offset = sequence.wrapping_sub(self.window_start) as i16;
        match self.state {
            State::Idle => {
                self.restart_from(sequence, timestamp, payload);
                PushOutcome::Stored
            }
            State::Priming { ticks, highest } => {
                let span_from_new = usize::from(highest.wrapping_sub(sequence)) + 1;
                if offset >= 0 && (offset as usize) < capacity {
                    let highest = if sequence.wrapping_sub(highest) as i16 > 0 {
                        sequence
                    } else {
                        highest
                    };
                    self.state = State::Priming { ticks, highest };
                    self.store(sequence, timestamp, payload)
                } else if offset < 0 && span_from_new <= capacity {
                    self.window_start = sequence;
                    self.store(sequence, timestamp, payload)
                } else {
                    self.far_packet(sequence, timestamp, payload)
                }
            }
            State::Playing { dry_ticks } => {
                if offset >= 0 && (offset as usize) < capacity {
                    self.store(sequence, timestamp, payload)
                } else if offset < 0 && offset.unsigned_abs() <= dry_ticks {
                    // We gave up on this one while running dry: the stream
                    // was paused, not lost. Start over from it.
                    self.stats.resyncs += 1;
                    self.restart_from(sequence, timestamp, payload);
                    PushOutcome::Resynced
                } else if offset < 0 && offset.unsigned_abs() <= MAX_MISORDER {
                    self.stats.late += 1;
                    PushOutcome::Late
                } else {
                    self.far_packet(sequence, timestamp, payload)
                }
            }
        }
    }

    /// Called once per 20 ms playout tick.
    pub fn tick(&mut self) -> Playout<'_> {
        match self.state {
            State::Idle => Playout::Empty,
            State::Priming { ticks, highest } => {
                let ticks = ticks.saturating_add(1);
                if ticks < self.config.target_depth {
                    self.state = State::Priming { ticks, highest };
                    return Playout::Empty;
                }
                self.state = State::Playing { dry_ticks: 0 };
                self.play()
            }
            State::Playing { .. } => {
                if self.buffered > usize::from(self.config.max_depth) {
                    if self.take(self.window_start) {
                        self.stats.overflow_dropped += 1;
                    }
                    self.window_start = self.window_start.wrapping_add(1);
                }
                self.play()
            }
        }
    }

    fn play(&mut self) -> Playout<'_> {
        let sequence = self.window_start;
        self.window_start = sequence.wrapping_add(1);
        if self.take(sequence) {
            self.state = State::Playing { dry_ticks: 0 };
            self.stats.played += 1;
            let slot = &self.slots[self.index(sequence)];
            return Playout::Frame {
                payload: &slot.data,
                sequence: slot.sequence,
                timestamp: slot.timestamp,
            };
        }
        if self.buffered == 0 {
            let dry_ticks = match self.state {
                State::Playing { dry_ticks } => dry_ticks.saturating_add(1),
                _ => 1,
            };
            if dry_ticks > self.config.max_concealment {
                self.state = State::Idle;
                return Playout::Empty;
            }
            self.state = State::Playing { dry_ticks };
        } else {
            self.state = State::Playing { dry_ticks: 0 };
        }
        self.stats.lost += 1;
        let next = &self.slots[self.index(self.window_start)];
        let next_payload =
            (next.occupied && next.sequence == self.window_start).then_some(next.data.as_slice());
        Playout::Lost { next_payload }
    }

    /// Marks `sequence`'s slot free, leaving its bytes readable until the
    /// next store; true if it held that packet.
    fn take(&mut self, sequence: u16) -> bool {
        let index = self.index(sequence);
        let slot = &mut self.slots[index];
        if slot.occupied && slot.sequence == sequence {
            slot.occupied = false;
            self.buffered -= 1;
            true
        } else {
            false
        }
    }

    /// A packet far outside the window: remember it, and restart from it if
    /// it follows the previous far packet.
    fn far_packet(&mut self, sequence: u16, timestamp: u32, payload: &[u8]) -> PushOutcome {
        if self.restart_candidate == Some(sequence) {
            self.stats.resyncs += 1;
            self.restart_from(sequence, timestamp, payload);
            PushOutcome::Resynced
        } else {
            self.restart_candidate = Some(sequence.wrapping_add(1));
            PushOutcome::OutOfWindow
        }
    }

    fn restart_from(&mut self, sequence: u16, timestamp: u32, payload: &[u8]) {
        for slot in &mut self.slots {
            slot.occupied = false;
        }
        self.buffered = 0;
        self.restart_candidate = None;
        self.window_start = sequence;
        self.state = State::Priming {
            ticks: 0,
            highest: sequence,
        };
        self.store(sequence, timestamp, payload);
    }

    fn store(&mut self, sequence: u16, timestamp: u32, payload: &[u8]) -> PushOutcome {
        let index = self.index(sequence);
        let slot = &mut self.slots[index];
        if slot.occupied {
            if slot.sequence == sequence {
                self.stats.duplicates += 1;
                return PushOutcome::Duplicate;
            }
        } else {
            self.buffered += 1;
        }
        slot.occupied = true;
        slot.sequence = sequence;
        slot.timestamp = timestamp;
        slot.data.clear();
        slot.data.extend_from_slice(payload);
        PushOutcome::Stored
    }

    /// The ring's size is a power of two, so this is consistent across the
    /// u16 wrap.
    fn index(&self, sequence: u16) -> usize {
        usize::from(sequence) & (self.slots.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_seq(playout: Playout<'_>) -> Option<u16> {
        match playout {
            Playout::Frame { sequence, .. } => Some(sequence),
            _ => None,
        }
    }

    /// What a tick yields, compactly; `Lost` says whether the next packet
    /// came with it.
    #[derive(Debug, PartialEq, Eq)]
    enum Tick {
        F(u16),
        Lost(bool),
        Empty,
    }

    fn tick(buffer: &mut JitterBuffer) -> Tick {
        match buffer.tick() {
            Playout::Frame { sequence, .. } => Tick::F(sequence),
            Playout::Lost { next_payload } => Tick::Lost(next_payload.is_some()),
            Playout::Empty => Tick::Empty,
        }
    }

    fn push(buffer: &mut JitterBuffer, sequence: u16) -> PushOutcome {
        buffer.push(sequence, u32::from(sequence) * 160, &sequence.to_be_bytes())
    }

    #[test]
    fn empty_before_the_first_packet() {
        let mut buffer = JitterBuffer::new(JitterConfig::default());
        assert_eq!(tick(&mut buffer), Tick::Empty);
        assert_eq!(tick(&mut buffer), Tick::Empty);
        assert!(!buffer.is_playing());
    }

    #[test]
    fn primes_for_the_target_depth_then_plays_in_order() {
        let mut buffer = JitterBuffer::new(JitterConfig::default());
        assert_eq!(push(&mut buffer, 100), PushOutcome::Stored);
        assert_eq!(tick(&mut buffer), Tick::Empty);
        push(&mut buffer, 101);
        assert_eq!(tick(&mut buffer), Tick::Empty);
        push(&mut buffer, 102);
        let first = buffer.tick();
        assert_eq!(
            first,
            Playout::Frame {
                payload: &100u16.to_be_bytes(),
                sequence: 100,
                timestamp: 16_000
            }
        );
        assert!(buffer.is_playing());
        push(&mut buffer, 103);
        assert_eq!(tick(&mut buffer), Tick::F(101));
        assert_eq!(tick(&mut buffer), Tick::F(102));
        assert_eq!(tick(&mut buffer), Tick::F(103));
        assert_eq!(buffer.stats().played, 4);
    }

    #[test]
    fn reorders_and_reports_loss_with_the_next_packet_for_fec() {
        let mut buffer = JitterBuffer::new(JitterConfig::default());
        for seq in [1, 2, 5, 4, 6] {
            push(&mut buffer, seq);
        }
        let mut ticks = Vec::new();
        for _ in 0..8 {
            ticks.push(tick(&mut buffer));
        }
        assert_eq!(
            ticks,
            [
                Tick::Empty,
                Tick::Empty,
                Tick::F(1),
                Tick::F(2),
                Tick::Lost(true),
                Tick::F(4),
                Tick::F(5),
                Tick::F(6)
            ]
        );
        // The FEC candidate is exactly the next packet's payload.
        let mut buffer = JitterBuffer::new(JitterConfig {
            target_depth: 1,
            ..JitterConfig::default()
        });
        push(&mut buffer, 1);
        push(&mut buffer, 3);
        assert_eq!(tick(&mut buffer), Tick::F(1));
        assert_eq!(
            buffer.tick(),
            Playout::Lost {
                next_payload: Some(&3u16.to_be_bytes())
            }
        );
        assert_eq!(buffer.stats().lost, 1);
    }

    #[test]
    fn drops_late_and_duplicate_packets() {
        let mut buffer = JitterBuffer::new(JitterConfig {
            target_depth: 1,
            ..JitterConfig::default()
        });
        push(&mut buffer, 10);
        push(&mut buffer, 12);
        assert_eq!(push(&mut buffer, 12), PushOutcome::Duplicate);
        assert_eq!(tick(&mut buffer), Tick::F(10));
        assert_eq!(tick(&mut buffer), Tick::Lost(true));
        assert_eq!(push(&mut buffer, 11), PushOutcome::Late);
        assert_eq!(push(&mut buffer, 10), PushOutcome::Late);
        assert_eq!(tick(&mut buffer), Tick::F(12));
        let stats = buffer.stats();
        assert_eq!((stats.late, stats.duplicates), (2, 1));
    }

    #[test]
    fn handles_sequence_wrap_around() {
        let mut buffer = JitterBuffer::new(JitterConfig::default());
        for seq in [65533, 65534, 65535, 0, 1] {
            push(&mut buffer, seq);
        }
        let played: Vec<_> = (0..7).filter_map(|_| frame_seq(buffer.tick())).collect();
        assert_eq!(played, [65533, 65534, 65535, 0, 1]);
        // A packet that arrives before the run's first, while priming,
        // moves the start back across the wrap.
        let mut buffer = JitterBuffer::new(JitterConfig::default());
        push(&mut buffer, 1);
        push(&mut buffer, 65535);
        push(&mut buffer, 0);
        let played: Vec<_> = (0..5).filter_map(|_| frame_seq(buffer.tick())).collect();
        assert_eq!(played, [65535, 0, 1]);
    }

    #[test]
    fn resynchronises_on_a_confirmed_sequence_jump_only() {
        let mut buffer = JitterBuffer::new(JitterConfig {
            target_depth: 1,
            ..JitterConfig::default()
        });
        push(&mut buffer, 10);
        assert_eq!(tick(&mut buffer), Tick::F(10));
        // One stray packet far away is ignored.
        assert_eq!(push(&mut buffer, 30_000), PushOutcome::OutOfWindow);
        assert_eq!(push(&mut buffer, 11), PushOutcome::Stored);
        assert_eq!(tick(&mut buffer), Tick::F(11));
        // A restart: two consecutive packets in the new numbering.
        assert_eq!(push(&mut buffer, 5000), PushOutcome::OutOfWindow);
        assert_eq!(push(&mut buffer, 5001), PushOutcome::Resynced);
        assert_eq!(push(&mut buffer, 5002), PushOutcome::Stored);
        assert_eq!(tick(&mut buffer), Tick::F(5001));
        assert_eq!(tick(&mut buffer), Tick::F(5002));
        assert_eq!(buffer.stats().resyncs, 1);
        // A jump backwards beyond MAX_MISORDER is a restart too.
        assert_eq!(push(&mut buffer, 4000), PushOutcome::OutOfWindow);
        assert_eq!(push(&mut buffer, 4001), PushOutcome::Resynced);
    }

    #[test]
    fn packets_beyond_the_ring_are_not_stored() {
        let mut buffer = JitterBuffer::new(JitterConfig::default());
        push(&mut buffer, 0);
        assert_eq!(push(&mut buffer, 16), PushOutcome::OutOfWindow);
        assert_eq!(push(&mut buffer, 15), PushOutcome::Stored);
        assert_eq!(buffer.buffered(), 2);
    }

    #[test]
    fn stops_after_silence_and_reprimes_when_the_stream_resumes() {
        let config = JitterConfig {
            target_depth: 2,
            max_concealment: 3,
            ..JitterConfig::default()
        };
        let mut buffer = JitterBuffer::new(config);
        push(&mut buffer, 1);
        push(&mut buffer, 2);
        assert_eq!(tick(&mut buffer), Tick::Empty);
        assert_eq!(tick(&mut buffer), Tick::F(1));
        assert_eq!(tick(&mut buffer), Tick::F(2));
        // Silence: three concealed ticks, then Empty.
        assert_eq!(tick(&mut buffer), Tick::Lost(false));
        assert_eq!(tick(&mut buffer), Tick::Lost(false));
        assert_eq!(tick(&mut buffer), Tick::Lost(false));
        assert_eq!(tick(&mut buffer), Tick::Empty);
        assert!(!buffer.is_playing());
        assert_eq!(tick(&mut buffer), Tick::Empty);
        // The next talkspurt continues the numbering and primes again.
        assert_eq!(push(&mut buffer, 3), PushOutcome::Stored);
        assert_eq!(tick(&mut buffer), Tick::Empty);
        assert_eq!(tick(&mut buffer), Tick::F(3));
    }

    #[test]
    fn a_pause_shorter_than_the_concealment_does_not_clip_the_next_talkspurt() {
        let mut buffer = JitterBuffer::new(JitterConfig {
            target_depth: 1,
            ..JitterConfig::default()
        });
        push(&mut buffer, 1);
        assert_eq!(tick(&mut buffer), Tick::F(1));
        assert_eq!(tick(&mut buffer), Tick::Lost(false));
        assert_eq!(tick(&mut buffer), Tick::Lost(false));
        // Packet 2 was not lost, the sender paused: restart from it.
        assert_eq!(push(&mut buffer, 2), PushOutcome::Resynced);
        push(&mut buffer, 3);
        assert_eq!(tick(&mut buffer), Tick::F(2));
        assert_eq!(tick(&mut buffer), Tick::F(3));
    }

    #[test]
    fn a_burst_is_trimmed_back_to_the_maximum_depth() {
        let mut buffer = JitterBuffer::new(JitterConfig {
            target_depth: 2,
            max_depth: 4,
            ..JitterConfig::default()
        });
        for seq in 0..8 {
            push(&mut buffer, seq);
        }
        assert_eq!(tick(&mut buffer), Tick::Empty);
        // 8 buffered > 4: one frame dropped per tick until 4 remain.
        assert_eq!(tick(&mut buffer), Tick::F(0));
        assert_eq!(tick(&mut buffer), Tick::F(2));
        assert_eq!(tick(&mut buffer), Tick::F(4));
        assert_eq!(buffer.buffered(), 3);
        assert_eq!(tick(&mut buffer), Tick::F(5));
        assert_eq!(buffer.stats().overflow_dropped, 2);
    }

    #[test]
    fn oversized_payloads_are_refused() {
        let mut buffer = JitterBuffer::new(JitterConfig {
            max_payload: 4,
            ..JitterConfig::default()
        });
        assert_eq!(buffer.push(1, 0, &[0; 5]), PushOutcome::TooLarge);
        assert_eq!(buffer.push(1, 0, &[0; 4]), PushOutcome::Stored);
        assert_eq!(buffer.stats().too_large, 1);
    }

    #[test]
    fn config_is_normalised() {
        let buffer = JitterBuffer::new(JitterConfig {
            target_depth: 0,
            max_depth: 0,
            capacity: 5,
            max_payload: 10,
            max_concealment: 1,
        });
        let config = buffer.config();
        assert_eq!((config.target_depth, config.max_depth), (1, 1));
        assert_eq!(config.capacity, 8);
        let huge = JitterBuffer::new(JitterConfig {
            capacity: u16::MAX,
            max_payload: 1,
            ..JitterConfig::default()
        });
        assert_eq!(huge.config().capacity, 1024);
    }

    #[test]
    fn arbitrary_push_and_tick_sequences_keep_invariants() {
        let mut buffer = JitterBuffer::new(JitterConfig {
            max_payload: 8,
            ..JitterConfig::default()
        });
        let mut state = 7_u32;
        let mut next = || {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            state >> 8
        };
        let mut seq = 0_u16;
        for _ in 0..20_000 {
            let roll = next() % 10;
            if roll < 6 {
                let jitter = (next() % 9) as u16;
                let far = if next() % 200 == 0 { next() as u16 } else { 0 };
                let len = (next() % 10) as usize;
                buffer.push(
                    seq.wrapping_add(jitter).wrapping_add(far),
                    0,
                    &[0; 10][..len],
                );
                seq = seq.wrapping_add(1);
            } else {
                let _ = buffer.tick();
            }
            let occupied = buffer.slots.iter().filter(|slot| slot.occupied).count();
            assert_eq!(occupied, buffer.buffered());
            assert!(buffer.buffered() <= buffer.slots.len());
        }
    }
}
