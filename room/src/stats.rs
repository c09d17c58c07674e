//! Per-call media statistics: what we received (RFC 3550 A.1 sequence
//! accounting, A.3 loss, A.8 interarrival jitter), what the far end says it
//! received (its report blocks about us, and the round-trip time their
//! LSR/DLSR give), the RTCP reports we send, and a MOS estimate. A
//! [`MediaStatsSnapshot`] is what the status endpoint shows for a call.

use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::rtcp::{
    from_short_ntp, parse_compound, to_short_ntp, CompoundReport, NtpTimestamp, ReportBlock,
    RtcpError, RtcpPacket, SenderInfo,
};
use super::rtp::{RtpHeader, SenderCounters, MAX_DROPOUT, MAX_MISORDER};

/// Interarrival differences beyond this many seconds are a timing
/// discontinuity (a peer that reset its timestamps), not jitter: they
/// restart the estimate instead of spiking it.
const JITTER_DISCONTINUITY_SECS: u32 = 3;
/// RFC 3550 A.1's RTP_SEQ_MOD.
const SEQUENCE_MODULUS: u32 = 1 << 16;

/// Reception statistics of the stream one leg receives, following RFC 3550
/// A.1 (without the probation period: the first packet of a source
/// counts), A.3 and A.8. A new SSRC starts a new source; the loss of
/// earlier sources is kept in the totals.
/// Where a received stream's statistics stand ([`ReceiverStats::progress`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceivedProgress {
    pub ssrc: u32,
    /// Wraps times 65536 plus the highest sequence number.
    pub extended_highest_sequence: u32,
    /// RFC 3550 A.8's jitter, in timestamp units times 16.
    pub jitter_q4: u32,
}

#[derive(Debug, Clone)]
pub struct ReceiverStats {
    clock_rate: u32,
    epoch: Instant,
    jitter_excluded_payload_type: Option<u8>,
    source: Option<Source>,
    packets: u64,
    octets: u64,
    earlier_expected: u64,
    earlier_lost: i64,
}

#[derive(Debug, Clone)]
struct Source {
    ssrc: u32,
    base_sequence: u16,
    max_sequence: u16,
    /// Sequence number wraps seen.
    cycles: u64,
    /// The sequence number that confirms a restart (A.1's bad_seq).
    bad_sequence: Option<u16>,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    last_transit: Option<u32>,
    /// Jitter in timestamp units, times 16 (A.8's fixed point).
    jitter_q4: u32,
}

impl Source {
    fn new(ssrc: u32, sequence: u16) -> Self {
        Self {
            ssrc,
            base_sequence: sequence,
            max_sequence: sequence,
            cycles: 0,
            bad_sequence: None,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            last_transit: None,
            jitter_q4: 0,
        }
    }

    fn extended_max(&self) -> u64 {
        (self.cycles << 16) | u64::from(self.max_sequence)
    }

    fn expected(&self) -> u64 {
        self.extended_max() + 1 - u64::from(self.base_sequence)
    }

    fn lost(&self) -> i64 {
        self.expected() as i64 - self.received as i64
    }
}

impl ReceiverStats {
    /// `clock_rate` is the RTP clock of the stream (8000 for G.711 and
    /// G.722, 48000 for Opus); `epoch` any instant before the first packet.
    /// Packets of `jitter_excluded_payload_type` (telephone-event, whose
    /// packets all carry their event's start timestamp) count for loss but
    /// not for jitter.
    pub fn new(clock_rate: u32, epoch: Instant, jitter_excluded_payload_type: Option<u8>) -> Self {
        Self {
            clock_rate: clock_rate.max(1),
            epoch,
            jitter_excluded_payload_type,
            source: None,
            packets: 0,
            octets: 0,
            earlier_expected: 0,
            earlier_lost: 0,
        }
    }

    /// Accounts for one received packet. Returns false for a packet A.1
    /// does not count: the first of a sequence jump, until the next one
    /// confirms it.
    pub fn on_packet(&mut self, header: &RtpHeader, payload_len: usize, arrival: Instant) -> bool {
        self.packets += 1;
        self.octets += payload_len as u64;
        let source = match &mut self.source {
            Some(source) if source.ssrc == header.ssrc => source,
            _ => self.start_source(header.ssrc, header.sequence),
        };

        let sequence = header.sequence;
        let ahead = sequence.wrapping_sub(source.max_sequence);
        if ahead < MAX_DROPOUT {
            if sequence < source.max_sequence {
                source.cycles += 1;
            }
            source.max_sequence = sequence;
        } else if u32::from(ahead) <= SEQUENCE_MODULUS - u32::from(MAX_MISORDER) {
            if source.bad_sequence != Some(sequence) {
                source.bad_sequence = Some(sequence.wrapping_add(1));
                return false;
            }
            // Two sequential packets: the sender restarted its numbering.
            let ssrc = source.ssrc;
            self.start_source(ssrc, sequence);
        }
        // In order, restarted, or a duplicate or reordered packet: A.1
        // counts them all.
        if let Some(source) = &mut self.source {
            source.received += 1;
        }
        self.update_jitter(header, arrival);
        true
    }

    /// The current source as a forwarder that counts its packets elsewhere
    /// starts from: its SSRC, extended highest sequence number and jitter
    /// (times 16).
    pub fn progress(&self) -> Option<ReceivedProgress> {
        let source = self.source.as_ref()?;
        Some(ReceivedProgress {
            ssrc: source.ssrc,
            extended_highest_sequence: source.extended_max() as u32,
            jitter_q4: source.jitter_q4,
        })
    }

    /// Takes in `packets` more packets (`octets` of payload) of the current
    /// source that were counted elsewhere, the source now at `progress`.
    /// The next packet seen here starts jitter afresh: the other counter's
    /// clock is not ours.
    pub fn received_elsewhere(&mut self, progress: ReceivedProgress, packets: u64, octets: u64) {
        let Some(source) = self
            .source
            .as_mut()
            .filter(|source| source.ssrc == progress.ssrc)
        else {
            return;
        };
        self.packets += packets;
        self.octets += octets;
        source.received += packets;
        source.cycles = u64::from(progress.extended_highest_sequence >> 16);
        source.max_sequence = progress.extended_highest_sequence as u16;
        source.jitter_q4 = progress.jitter_q4;
        source.last_transit = None;
    }

    /// Folds the current source into the totals and starts a new one.
    fn start_source(&mut self, ssrc: u32, sequence: u16) -> &mut Source {
        if let Some(old) = &self.source {
            self.earlier_expected += old.expected();
            self.earlier_lost += old.lost();
        }
        self.source.insert(Source::new(ssrc, sequence))
    }

    fn update_jitter(&mut self, header: &RtpHeader, arrival: Instant) {
        if self.jitter_excluded_payload_type == Some(header.payload_type) {
            return;
        }
        let elapsed = arrival.saturating_duration_since(self.epoch);
        // Arrival time in timestamp units; only differences matter, so the
        // wrap of u32 is harmless.
        let arrival_units =
            (elapsed.as_nanos() * u128::from(self.clock_rate) / 1_000_000_000) as u32;
        let transit = arrival_units.wrapping_sub(header.timestamp);
        let Some(source) = &mut self.source else {
            return;
        };
        if let Some(last) = source.last_transit {
            let difference = (transit.wrapping_sub(last) as i32).unsigned_abs();
            if difference > JITTER_DISCONTINUITY_SECS.saturating_mul(self.clock_rate) {
                source.jitter_q4 = 0;
            } else {
                // A.8: J += (|D| - J) / 16, in fixed point times 16.
                let decay = (source.jitter_q4 + 8) >> 4;
                source.jitter_q4 = source.jitter_q4.saturating_add(difference) - decay;
            }
        }
        source.last_transit = Some(transit);
    }

    /// The report block about the current source, if any, and the start
    /// of a new reporting interval (A.3). LSR/DLSR are left for the caller.
    pub fn report_block(&mut self) -> Option<ReportBlock> {
        let source = self.source.as_mut()?;
        let expected = source.expected();
        let expected_interval = expected - source.expected_prior;
        let received_interval = source.received - source.received_prior;
        source.expected_prior = expected;
        source.received_prior = source.received;
        let lost_interval = expected_interval as i64 - received_interval as i64;
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / expected_interval as i64).min(255) as u8
        };
        Some(ReportBlock {
            ssrc: source.ssrc,
            fraction_lost,
            cumulative_lost: source
                .lost()
                .clamp(i64::from(i32::MIN), i64::from(i32::MAX))
                as i32,
            extended_highest_sequence: source.extended_max() as u32,
            jitter: source.jitter_q4 >> 4,
            last_sr: 0,
            delay_since_last_sr: 0,
        })
    }

    /// All packets received, from every source, counted or not.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    pub fn octets(&self) -> u64 {
        self.octets
    }

    /// Packets expected over every source so far.
    pub fn expected(&self) -> u64 {
        self.earlier_expected + self.source.as_ref().map_or(0, Source::expected)
    }

    /// Cumulative lost over every source; negative when duplicates
    /// outnumber losses, as RFC 3550 allows.
    pub fn cumulative_lost(&self) -> i64 {
        self.earlier_lost + self.source.as_ref().map_or(0, Source::lost)
    }

    /// Interarrival jitter of the current source, timestamp units.
    pub fn jitter(&self) -> u32 {
        self.source
            .as_ref()
            .map_or(0, |source| source.jitter_q4 >> 4)
    }

    pub fn jitter_duration(&self) -> Duration {
        units_to_duration(self.jitter(), self.clock_rate)
    }
}

fn units_to_duration(units: u32, clock_rate: u32) -> Duration {
    Duration::from_nanos(u64::from(units) * 1_000_000_000 / u64::from(clock_rate.max(1)))
}

/// G.107's default basic signal-to-noise ratio less simultaneous
/// impairments (Ro − Is): the R of a perfect narrowband call.
const R_DEFAULT: f64 = 93.2;
/// G.113 Appendix I packet-loss robustness of G.711 with concealment.
const BPL_G711_PLC: f64 = 25.1;

/// The E-model transmission rating R (ITU-T G.107), simplified for what a
/// gateway can measure, for a narrowband call with G.711-like codec
/// impairment:
///
/// - d = `one_way_delay` + 2 × `jitter` (ms): the mouth-to-ear delay, with
///   the playout delay needed to absorb the jitter.
/// - Id = 0.024·d + 0.11·(d − 177.3)·H(d − 177.3), H the step function: the
///   Cole–Rosenbluth fit of G.107's delay impairment at default settings.
/// - Ie,eff = Ie + (95 − Ie)·Ppl / (Ppl / BurstR + Bpl) (G.107 eq. 7-29),
///   Ppl = loss in percent, Ie = 0, Bpl = 25.1 (G.711 with PLC, G.113),
///   BurstR = 1 (random loss: bursts are not tracked).
/// - R = 93.2 − Id − Ie,eff.
pub fn r_factor(one_way_delay: Duration, jitter: Duration, loss_fraction: f64) -> f64 {
    let delay_ms = (one_way_delay.as_secs_f64() + 2.0 * jitter.as_secs_f64()) * 1000.0;
    let delay_impairment = 0.024 * delay_ms + 0.11 * (delay_ms - 177.3).max(0.0);
    // NaN or out-of-range loss counts as none / total.
    let loss_percent = if loss_fraction > 0.0 {
        loss_fraction.min(1.0) * 100.0
    } else {
        0.0
    };
    let equipment_impairment = 95.0 * loss_percent / (loss_percent + BPL_G711_PLC);
    R_DEFAULT - delay_impairment - equipment_impairment
}

/// MOS-CQE from R (G.107 Annex B), within 1.0-4.5.
pub fn mos_from_r(r: f64) -> f64 {
    if r <= 0.0 {
        1.0
    } else if r >= 100.0 {
        4.5
    } else {
        (1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6).clamp(1.0, 4.5)
    }
}

/// A MOS estimate from one-way delay, jitter and loss; see [`r_factor`].
pub fn mos_estimate(one_way_delay: Duration, jitter: Duration, loss_fraction: f64) -> f64 {
    mos_from_r(r_factor(one_way_delay, jitter, loss_fraction))
}

/// What a call leg's statistics need to know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaStatsConfig {
    /// Our SSRC: report blocks about it are the far end's view of us.
    pub ssrc: u32,
    /// The SDES CNAME we send (RFC 7022: random per session is fine).
    pub cname: String,
    /// RTP clock of the received stream.
    pub clock_rate: u32,
    pub telephone_event_payload_type: Option<u8>,
    /// The delay our receive path adds (jitter buffer depth plus one
    /// frame), for the MOS delay term.
    pub local_delay: Duration,
    /// Time between our reports: RFC 3550's 5 s minimum by default, the
    /// first after half of it. Not randomised: a two-party session cannot
    /// synchronise with other members.
    pub report_interval: Duration,
}

impl MediaStatsConfig {
    pub fn new(ssrc: u32, cname: String, clock_rate: u32) -> Self {
        Self {
            ssrc,
            cname,
            clock_rate,
            telephone_event_payload_type: None,
            local_delay: Duration::from_millis(80),
            report_interval: Duration::from_secs(5),
        }
    }
}

/// What an incoming RTCP packet told us beyond the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReceivedRtcp {
    /// The far end sent BYE: its stream has ended.
    pub bye: bool,
}

/// The status endpoint's view of one leg's media.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MediaStatsSnapshot {
    pub packets_sent: u64,
    pub packets_received: u64,
    pub octets_sent: u64,
    pub octets_received: u64,
    /// Cumulative packets lost on the way to us.
    pub lost: i64,
    /// Fraction lost on the way to us over the last report interval, 0-1.
    pub fraction_lost: f64,
    pub jitter_ms: f64,
    pub rtt_ms: Option<f64>,
    /// Estimated quality of what we receive, 1-4.5.
    pub mos: f64,
    /// The far end's report on our stream, once one arrived.
    pub remote_fraction_lost: Option<f64>,
    pub remote_jitter_ms: Option<f64>,
    /// Packets dropped for failing SRTP or SRTCP authentication or replay
    /// checks (the room fills it in).
    pub srtp_rejected: u64,
}

/// How many of our recent SRs a report block's LSR may refer to.
const SENT_SR_MEMORY: usize = 8;

/// One leg's statistics and RTCP: feed it every RTP and RTCP packet
/// received, ask it for a report when [`MediaStats::report_due`].
#[derive(Debug, Clone)]
pub struct MediaStats {
    config: MediaStatsConfig,
    receiver: ReceiverStats,
    /// Our NTP clock runs off `Instant`, so round trips come out right even
    /// if the wall clock steps.
    ntp_base: (Instant, NtpTimestamp),
    /// The far end's last SR: its LSR value and when it arrived.
    remote_sr: Option<(u32, Instant)>,
    /// LSR values of our last SRs, to recognise valid echoes.
    sent_srs: [Option<u32>; SENT_SR_MEMORY],
    sent_sr_count: usize,
    rtt: Option<Duration>,
    remote_view: Option<ReportBlock>,
    last_fraction_lost: Option<u8>,
    next_report_at: Instant,
}

impl MediaStats {
    /// `wallclock` is the system time at `now`; it anchors the NTP
    /// timestamps of our SRs.
    pub fn new(config: MediaStatsConfig, now: Instant, wallclock: SystemTime) -> Self {
        let receiver =
            ReceiverStats::new(config.clock_rate, now, config.telephone_event_payload_type);
        let next_report_at = now.checked_add(config.report_interval / 2).unwrap_or(now);
        Self {
            config,
            receiver,
            ntp_base: (now, NtpTimestamp::from_system_time(wallclock)),
            remote_sr: None,
            sent_srs: [None; SENT_SR_MEMORY],
            sent_sr_count: 0,
            rtt: None,
            remote_view: None,
            last_fraction_lost: None,
            next_report_at,
        }
    }

    pub fn receiver_mut(&mut self) -> &mut ReceiverStats {
        &mut self.receiver
    }

    pub fn receiver(&self) -> &ReceiverStats {
        &self.receiver
    }

    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    pub fn on_rtp(&mut self, header: &RtpHeader, payload_len: usize, arrival: Instant) {
        self.receiver.on_packet(header, payload_len, arrival);
    }

    /// Takes in a compound RTCP packet from the far end.
    pub fn on_rtcp(
        &mut self,
        datagram: &[u8],
        arrival: Instant,
    ) -> Result<ReceivedRtcp, RtcpError> {
        let mut received = ReceivedRtcp::default();
        for packet in parse_compound(datagram) {
            match packet? {
                RtcpPacket::SenderReport { info, reports, .. } => {
                    self.remote_sr = Some((info.ntp.middle_32(), arrival));
                    reports.for_each(|block| self.on_report_block(&block, arrival));
                }
                RtcpPacket::ReceiverReport { reports, .. } => {
                    reports.for_each(|block| self.on_report_block(&block, arrival));
                }
                RtcpPacket::Bye { .. } => received.bye = true,
                RtcpPacket::Other { .. } => {}
            }
        }
        Ok(received)
    }

    /// RTT = A − LSR − DLSR (RFC 3550 §6.4.1), A being our NTP time at
    /// arrival; only for an LSR that is one of our own recent SRs.
    fn on_report_block(&mut self, block: &ReportBlock, arrival: Instant) {
        if block.ssrc != self.config.ssrc {
            return;
        }
        self.remote_view = Some(*block);
        if block.last_sr == 0 || !self.sent_srs.contains(&Some(block.last_sr)) {
            return;
        }
        let arrival_ntp = self.ntp_at(arrival).middle_32();
        let round_trip = arrival_ntp
            .wrapping_sub(block.last_sr)
            .wrapping_sub(block.delay_since_last_sr);
        // A DLSR longer than the time since our SR is a broken peer.
        if (round_trip as i32) >= 0 {
            self.rtt = Some(from_short_ntp(round_trip));
        }
    }

    pub fn next_report_deadline(&self) -> Instant {
        self.next_report_at
    }

    pub fn report_due(&self, now: Instant) -> bool {
        now >= self.next_report_at
    }

    /// Writes our compound report (SR once we have sent media, else RR,
    /// then SDES CNAME) and schedules the next one.
    pub fn write_report(
        &mut self,
        now: Instant,
        sent: &SenderCounters,
        out: &mut [u8],
    ) -> Result<usize, RtcpError> {
        self.write_compound(now, sent, false, out)
    }

    /// Writes the final report with BYE, for the end of the call.
    pub fn write_bye(
        &mut self,
        now: Instant,
        sent: &SenderCounters,
        out: &mut [u8],
    ) -> Result<usize, RtcpError> {
        self.write_compound(now, sent, true, out)
    }

    fn write_compound(
        &mut self,
        now: Instant,
        sent: &SenderCounters,
        bye: bool,
        out: &mut [u8],
    ) -> Result<usize, RtcpError> {
        let ntp = self.ntp_at(now);
        let sender_info = (sent.packets > 0).then_some(SenderInfo {
            ntp,
            rtp_timestamp: sent.rtp_timestamp,
            // Both counters wrap on the wire (RFC 3550 §6.4.1).
            packet_count: sent.packets as u32,
            octet_count: sent.octets as u32,
        });
        // Size check first: taking the report block starts a new loss
        // interval, which a too-small buffer must not throw away.
        let block_count = usize::from(self.receiver.source.is_some());
        let report = CompoundReport {
            ssrc: self.config.ssrc,
            sender_info,
            report_blocks: &[ReportBlock::default(); 1][..block_count],
            cname: &self.config.cname,
            bye,
        };
        let needed = report.encoded_len();
        if out.len() < needed {
            return Err(RtcpError::BufferTooSmall {
                needed,
                available: out.len(),
            });
        }
        let mut block = self.receiver.report_block();
        if let (Some(block), Some((last_sr, received_at))) = (&mut block, self.remote_sr) {
            block.last_sr = last_sr;
            block.delay_since_last_sr = to_short_ntp(now.saturating_duration_since(received_at));
        }
        if let Some(block) = &block {
            self.last_fraction_lost = Some(block.fraction_lost);
        }
        let blocks = block.as_slice();
        let len = CompoundReport {
            report_blocks: blocks,
            ..report
        }
        .write(out)?;
        if sender_info.is_some() {
            self.sent_srs[self.sent_sr_count % SENT_SR_MEMORY] = Some(ntp.middle_32());
            self.sent_sr_count += 1;
        }
        self.next_report_at = now.checked_add(self.config.report_interval).unwrap_or(now);
        Ok(len)
    }

    fn ntp_at(&self, now: Instant) -> NtpTimestamp {
        let (base_instant, base_ntp) = self.ntp_base;
        base_ntp.after(now.saturating_duration_since(base_instant))
    }

    /// The numbers for the status endpoint. MOS uses the loss of the last
    /// report interval once there is one (so it follows the call's current
    /// state), the call's cumulative loss before that; delay is half the
    /// RTT (0 until known) plus `local_delay`.
    pub fn snapshot(&self, sent: &SenderCounters) -> MediaStatsSnapshot {
        let receiver = &self.receiver;
        let cumulative_fraction = match receiver.expected() {
            0 => 0.0,
            expected => receiver.cumulative_lost().max(0) as f64 / expected as f64,
        };
        let fraction_lost = self
            .last_fraction_lost
            .map_or(0.0, |fraction| f64::from(fraction) / 256.0);
        let loss_for_mos = if self.last_fraction_lost.is_some() {
            fraction_lost
        } else {
            cumulative_fraction
        };
        let jitter = receiver.jitter_duration();
        let one_way = self.rtt.unwrap_or_default() / 2 + self.config.local_delay;
        MediaStatsSnapshot {
            packets_sent: sent.packets,
            packets_received: receiver.packets(),
            octets_sent: sent.octets,
            octets_received: receiver.octets(),
            lost: receiver.cumulative_lost(),
            fraction_lost,
            jitter_ms: round2(millis(jitter)),
            rtt_ms: self.rtt.map(|rtt| round2(millis(rtt))),
            mos: round2(mos_estimate(one_way, jitter, loss_for_mos)),
            remote_fraction_lost: self
                .remote_view
                .map(|block| f64::from(block.fraction_lost) / 256.0),
            remote_jitter_ms: self.remote_view.map(|block| {
                round2(millis(units_to_duration(
                    block.jitter,
                    self.config.clock_rate,
                )))
            }),
            srtp_rejected: 0,
        }
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(sequence: u16, timestamp: u32) -> RtpHeader {
        RtpHeader {
            marker: false,
            payload_type: 0,
            sequence,
            timestamp,
            ssrc: 0x5555,
        }
    }

    /// Feeds `sequences` at a steady 20 ms with matching timestamps.
    fn feed(stats: &mut ReceiverStats, start: Instant, sequences: impl IntoIterator<Item = u16>) {
        for (i, sequence) in sequences.into_iter().enumerate() {
            let arrival = start + Duration::from_millis(20 * i as u64);
            stats.on_packet(&header(sequence, 160 * i as u32), 160, arrival);
        }
    }

    #[test]
    fn counts_expected_lost_and_fraction_per_interval() {
        let start = Instant::now();
        let mut stats = ReceiverStats::new(8000, start, None);
        // 10..=29 with 15 and 16 missing: 20 expected, 18 received.
        feed(&mut stats, start, (10..30).filter(|s| *s != 15 && *s != 16));
        assert_eq!(stats.expected(), 20);
        assert_eq!(stats.cumulative_lost(), 2);
        let block = stats.report_block().unwrap();
        assert_eq!(block.ssrc, 0x5555);
        assert_eq!(block.extended_highest_sequence, 29);
        assert_eq!(block.cumulative_lost, 2);
        // 2/20 in 1/256 units, truncated: 25.
        assert_eq!(block.fraction_lost, 25);
        // Next interval: nothing lost.
        feed(&mut stats, start + Duration::from_secs(1), 30..40);
        let block = stats.report_block().unwrap();
        assert_eq!(block.fraction_lost, 0);
        assert_eq!(block.cumulative_lost, 2);
        // And an empty interval reports 0, not a division by zero.
        assert_eq!(stats.report_block().unwrap().fraction_lost, 0);
    }

    #[test]
    fn extended_sequence_counts_wraps_and_reordering() {
        let start = Instant::now();
        let mut stats = ReceiverStats::new(8000, start, None);
        feed(&mut stats, start, [65534, 65535, 1, 0, 2]);
        let block = stats.report_block().unwrap();
        assert_eq!(block.extended_highest_sequence, 0x0001_0002);
        assert_eq!(block.cumulative_lost, 0);
        assert_eq!(stats.expected(), 5);
    }

    #[test]
    fn duplicates_make_lost_negative() {
        let start = Instant::now();
        let mut stats = ReceiverStats::new(8000, start, None);
        feed(&mut stats, start, [1, 2, 2, 3, 3]);
        assert_eq!(stats.cumulative_lost(), -2);
        assert_eq!(stats.report_block().unwrap().fraction_lost, 0);
    }

    #[test]
    fn sequence_jump_needs_confirmation_then_restarts() {
        let start = Instant::now();
        let mut stats = ReceiverStats::new(8000, start, None);
        feed(&mut stats, start, 0..10);
        assert!(!stats.on_packet(&header(40_000, 0), 160, start));
        assert!(stats.on_packet(&header(10, 1600), 160, start));
        assert!(!stats.on_packet(&header(30_000, 0), 160, start));
        assert!(stats.on_packet(&header(30_001, 160), 160, start));
        // The first source's 11 packets were all received; the new run has 1.
        assert_eq!(stats.expected(), 12);
        assert_eq!(stats.cumulative_lost(), 0);
        assert_eq!(stats.packets(), 14);
    }

    #[test]
    fn new_ssrc_starts_a_new_source_and_keeps_earlier_loss() {
        let start = Instant::now();
        let mut stats = ReceiverStats::new(8000, start, None);
        feed(&mut stats, start, [0, 1, 3]);
        let other = RtpHeader {
            ssrc: 0x6666,
            ..header(500, 0)
        };
        stats.on_packet(&other, 160, start);
        assert_eq!(stats.cumulative_lost(), 1);
        assert_eq!(stats.expected(), 5);
        assert_eq!(stats.report_block().unwrap().ssrc, 0x6666);
    }

    #[test]
    fn jitter_is_zero_for_perfect_timing_and_follows_a8() {
        let start = Instant::now();
        let mut stats = ReceiverStats::new(8000, start, None);
        feed(&mut stats, start, 0..50);
        assert_eq!(stats.jitter(), 0);

        // Arrivals alternately on time and 20 ms late: |D| = 160 units
        // from the second packet on; J converges towards 160.
        let mut stats = ReceiverStats::new(8000, start, None);
        let mut expected_q4: u32 = 0;
        for i in 0..200u32 {
            let offset_ms = if i % 2 == 0 { 0 } else { 20 };
            let arrival = start + Duration::from_millis(u64::from(20 * i + offset_ms));
            stats.on_packet(&header(i as u16, 160 * i), 160, arrival);
            if i > 0 {
                expected_q4 = expected_q4 + 160 - ((expected_q4 + 8) >> 4);
            }
        }
        assert_eq!(stats.jitter(), expected_q4 >> 4);
        assert!((150..=160).contains(&stats.jitter()), "{}", stats.jitter());
        let ms = stats.jitter_duration().as_secs_f64() * 1000.0;
        assert!((18.7..=20.0).contains(&ms), "{ms}");
    }

    #[test]
    fn telephone_events_do_not_count_as_jitter() {
        let start = Instant::now();
        let mut stats = ReceiverStats::new(8000, start, Some(101));
        for i in 0..10u32 {
            let event = RtpHeader {
                payload_type: 101,
                ..header(i as u16, 0) // every event packet: the same timestamp
            };
            stats.on_packet(&event, 4, start + Duration::from_millis(u64::from(20 * i)));
        }
        assert_eq!(stats.jitter(), 0);
        assert_eq!(stats.expected(), 10);
    }

    #[test]
    fn a_timestamp_reset_does_not_spike_jitter() {
        let start = Instant::now();
        let mut stats = ReceiverStats::new(8000, start, None);
        feed(&mut stats, start, 0..10);
        stats.on_packet(
            &header(10, 4_000_000),
            160,
            start + Duration::from_millis(200),
        );
        assert_eq!(stats.jitter(), 0);
    }

    #[test]
    fn r_factor_and_mos_follow_the_documented_formula() {
        let none = Duration::ZERO;
        assert!((r_factor(none, none, 0.0) - 93.2).abs() < 1e-9);
        assert!((mos_from_r(93.2) - 4.41).abs() < 0.01);
        // R = 80 → 1 + 2.8 + 80·20·20·7e-6 = 4.024.
        assert!((mos_from_r(80.0) - 4.024).abs() < 1e-9);
        assert_eq!(mos_from_r(-5.0), 1.0);
        assert_eq!(mos_from_r(120.0), 4.5);
        assert!(mos_from_r(3.0) >= 1.0);
        // 100 ms: Id = 2.4.
        let r = r_factor(Duration::from_millis(100), none, 0.0);
        assert!((r - 90.8).abs() < 1e-9);
        // 200 ms: Id = 4.8 + 0.11·22.7.
        let r = r_factor(Duration::from_millis(200), none, 0.0);
        assert!((r - (93.2 - 4.8 - 0.11 * 22.7)).abs() < 1e-9);
        // Jitter counts twice: 50 ms of it equals 100 ms of delay.
        assert_eq!(
            r_factor(none, Duration::from_millis(50), 0.0),
            r_factor(Duration::from_millis(100), none, 0.0)
        );
        // 5 % loss: Ie,eff = 95·5/30.1.
        let r = r_factor(none, none, 0.05);
        assert!((r - (93.2 - 95.0 * 5.0 / 30.1)).abs() < 1e-9);
        // Garbage loss values stay in range.
        assert!((r_factor(none, none, f64::NAN) - 93.2).abs() < 1e-9);
        assert!(mos_estimate(none, none, 7.0) >= 1.0);
        // Quality only goes down as things get worse.
        let mut last = 5.0;
        for loss in [0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5] {
            let mos = mos_estimate(Duration::from_millis(80), Duration::from_millis(5), loss);
            assert!(mos < last);
            last = mos;
        }
    }

    fn stats_at(now: Instant) -> MediaStats {
        let mut config = MediaStatsConfig::new(0x1111, "gw@dialtone".into(), 8000);
        config.local_delay = Duration::ZERO;
        MediaStats::new(
            config,
            now,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        )
    }

    #[test]
    fn first_report_is_due_after_half_the_interval_then_every_interval() {
        let start = Instant::now();
        let mut stats = stats_at(start);
        assert_eq!(
            stats.next_report_deadline(),
            start + Duration::from_millis(2500)
        );
        assert!(!stats.report_due(start + Duration::from_millis(2499)));
        let at = start + Duration::from_millis(2500);
        assert!(stats.report_due(at));
        let mut out = [0u8; 256];
        stats
            .write_report(at, &SenderCounters::default(), &mut out)
            .unwrap();
        assert_eq!(stats.next_report_deadline(), at + Duration::from_secs(5));
    }

    #[test]
    fn writes_rr_before_sending_and_sr_after() {
        let start = Instant::now();
        let mut stats = stats_at(start);
        let mut out = [0u8; 256];
        let len = stats
            .write_report(start, &SenderCounters::default(), &mut out)
            .unwrap();
        let first = parse_compound(&out[..len]).next().unwrap().unwrap();
        assert!(
            matches!(first, RtcpPacket::ReceiverReport { ssrc: 0x1111, reports } if reports.clone().count() == 0)
        );

        stats.on_rtp(&header(1, 0), 160, start);
        let sent = SenderCounters {
            packets: 3,
            octets: 480,
            rtp_timestamp: 480,
        };
        let len = stats.write_report(start, &sent, &mut out).unwrap();
        match parse_compound(&out[..len]).next().unwrap().unwrap() {
            RtcpPacket::SenderReport {
                ssrc,
                info,
                mut reports,
            } => {
                assert_eq!(ssrc, 0x1111);
                assert_eq!((info.packet_count, info.octet_count), (3, 480));
                assert_eq!(info.rtp_timestamp, 480);
                assert_eq!(
                    info.ntp,
                    NtpTimestamp::from_system_time(
                        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
                    )
                );
                let block = reports.next().unwrap();
                assert_eq!(block.ssrc, 0x5555);
                assert_eq!(block.last_sr, 0, "no SR from the far end yet");
            }
            other => panic!("expected SR, got {other:?}"),
        }
    }

    #[test]
    fn too_small_buffer_keeps_the_interval() {
        let start = Instant::now();
        let mut stats = stats_at(start);
        feed(&mut stats.receiver, start, [1, 3]);
        let mut small = [0u8; 8];
        assert!(matches!(
            stats.write_report(start, &SenderCounters::default(), &mut small),
            Err(RtcpError::BufferTooSmall { .. })
        ));
        let mut out = [0u8; 256];
        let len = stats
            .write_report(start, &SenderCounters::default(), &mut out)
            .unwrap();
        match parse_compound(&out[..len]).next().unwrap().unwrap() {
            RtcpPacket::ReceiverReport { mut reports, .. } => {
                assert_eq!(reports.next().unwrap().fraction_lost, 85); // 256 / 3
            }
            other => panic!("expected RR, got {other:?}"),
        }
    }

    /// Builds the far end's compound: an SR with one block about us.
    fn far_end_report(ntp: NtpTimestamp, block: ReportBlock) -> Vec<u8> {
        let report = CompoundReport {
            ssrc: 0x5555,
            sender_info: Some(SenderInfo {
                ntp,
                rtp_timestamp: 0,
                packet_count: 10,
                octet_count: 1600,
            }),
            report_blocks: &[block],
            cname: "far",
            bye: false,
        };
        let mut out = vec![0u8; report.encoded_len()];
        report.write(&mut out).unwrap();
        out
    }

    #[test]
    fn round_trip_time_from_lsr_and_dlsr() {
        let start = Instant::now();
        let mut stats = stats_at(start);
        let mut out = [0u8; 256];
        let sent = SenderCounters {
            packets: 1,
            octets: 160,
            rtp_timestamp: 0,
        };
        let sr_at = start + Duration::from_secs(1);
        let len = stats.write_report(sr_at, &sent, &mut out).unwrap();
        let Some(Ok(RtcpPacket::SenderReport { info, .. })) = parse_compound(&out[..len]).next()
        else {
            panic!("expected our SR");
        };
        // The far end held our SR for 250 ms; the network took 2 × 40 ms.
        let block = ReportBlock {
            ssrc: 0x1111,
            fraction_lost: 13,
            cumulative_lost: 4,
            extended_highest_sequence: 100,
            jitter: 240,
            last_sr: info.ntp.middle_32(),
            delay_since_last_sr: to_short_ntp(Duration::from_millis(250)),
        };
        let arrival = sr_at + Duration::from_millis(330);
        let report = far_end_report(NtpTimestamp(0xaaaa_bbbb_cccc_dddd), block);
        assert_eq!(
            stats.on_rtcp(&report, arrival),
            Ok(ReceivedRtcp { bye: false })
        );
        let rtt = stats.rtt().unwrap();
        assert!(
            rtt.abs_diff(Duration::from_millis(80)) < Duration::from_micros(100),
            "{rtt:?}"
        );

        let snapshot = stats.snapshot(&sent);
        assert_eq!(snapshot.remote_fraction_lost, Some(13.0 / 256.0));
        assert_eq!(snapshot.remote_jitter_ms, Some(30.0));
        let rtt_ms = snapshot.rtt_ms.unwrap();
        assert!((rtt_ms - 80.0).abs() < 0.05, "{rtt_ms}");

        // Our next report echoes the far end's SR: LSR its NTP middle, DLSR
        // the time we held it.
        let later = arrival + Duration::from_millis(500);
        stats.on_rtp(&header(1, 0), 160, later);
        let len = stats.write_report(later, &sent, &mut out).unwrap();
        let Some(Ok(RtcpPacket::SenderReport { mut reports, .. })) =
            parse_compound(&out[..len]).next()
        else {
            panic!("expected our SR");
        };
        let echoed = reports.next().unwrap();
        assert_eq!(echoed.last_sr, 0xbbbb_cccc);
        assert_eq!(echoed.delay_since_last_sr, 32_768);
    }

    #[test]
    fn unknown_lsr_or_foreign_blocks_do_not_set_rtt() {
        let start = Instant::now();
        let mut stats = stats_at(start);
        let block = ReportBlock {
            ssrc: 0x1111,
            last_sr: 0x1234_5678,
            ..ReportBlock::default()
        };
        stats
            .on_rtcp(&far_end_report(NtpTimestamp(1), block), start)
            .unwrap();
        assert_eq!(stats.rtt(), None);
        let about_someone_else = ReportBlock {
            ssrc: 0x9999,
            ..ReportBlock::default()
        };
        let mut fresh = stats_at(start);
        fresh
            .on_rtcp(&far_end_report(NtpTimestamp(1), about_someone_else), start)
            .unwrap();
        assert_eq!(
            fresh
                .snapshot(&SenderCounters::default())
                .remote_fraction_lost,
            None
        );
    }

    #[test]
    fn bye_and_garbage_rtcp() {
        let start = Instant::now();
        let mut stats = stats_at(start);
        let bye = CompoundReport {
            ssrc: 0x5555,
            sender_info: None,
            report_blocks: &[],
            cname: "far",
            bye: true,
        };
        let mut out = [0u8; 64];
        let len = bye.write(&mut out).unwrap();
        assert_eq!(
            stats.on_rtcp(&out[..len], start),
            Ok(ReceivedRtcp { bye: true })
        );
        assert!(stats.on_rtcp(&[0xff; 7], start).is_err());
    }

    #[test]
    fn snapshot_serialises_in_camel_case_with_a_mos() {
        let start = Instant::now();
        let mut stats = stats_at(start);
        feed(&mut stats.receiver, start, (0..100).filter(|s| s % 10 != 5));
        let sent = SenderCounters {
            packets: 100,
            octets: 16_000,
            rtp_timestamp: 16_000,
        };
        let snapshot = stats.snapshot(&sent);
        assert_eq!(snapshot.lost, 10);
        // Before any report the MOS uses the cumulative 10 % loss.
        assert_eq!(snapshot.fraction_lost, 0.0);
        let expected = round2(mos_estimate(Duration::ZERO, Duration::ZERO, 10.0 / 100.0));
        assert_eq!(snapshot.mos, expected);
        let json = serde_json::to_value(snapshot).unwrap();
        for key in [
            "packetsSent",
            "packetsReceived",
            "octetsSent",
            "octetsReceived",
            "lost",
            "fractionLost",
            "jitterMs",
            "rttMs",
            "mos",
            "remoteFractionLost",
            "remoteJitterMs",
        ] {
            assert!(json.get(key).is_some(), "missing {key} in {json}");
        }
        assert_eq!(json["packetsSent"], 100);
        assert_eq!(json["rttMs"], serde_json::Value::Null);

        // After a report, fractionLost and the MOS follow the interval.
        let mut out = [0u8; 256];
        stats.write_report(start, &sent, &mut out).unwrap();
        let after = stats.snapshot(&sent);
        assert_eq!(after.fraction_lost, f64::from((10u32 << 8) / 100) / 256.0);
    }
}
