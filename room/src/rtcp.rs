//! RTCP packets (RFC 3550 §6): writing the compound report a leg sends
//! (SR or RR, SDES CNAME, optionally BYE) into a caller buffer, and parsing
//! the far end's compound packets without allocating.
//!
//! Parsing is lenient about what it does not use (SDES, APP, feedback and
//! XR packets are skipped, a compound need not start with SR/RR as RFC 5506
//! allows) and strict about framing: a length or padding that does not fit
//! is an error, never a panic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;

pub const PACKET_TYPE_SR: u8 = 200;
pub const PACKET_TYPE_RR: u8 = 201;
pub const PACKET_TYPE_SDES: u8 = 202;
pub const PACKET_TYPE_BYE: u8 = 203;

const VERSION: u8 = 2;
const HEADER_LEN: usize = 4;
const SENDER_INFO_LEN: usize = 20;
const REPORT_BLOCK_LEN: usize = 24;
/// The 5-bit count field limits report blocks per packet.
pub const MAX_REPORT_BLOCKS: usize = 31;
const SDES_CNAME: u8 = 1;
/// Seconds from the NTP era (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RtcpError {
    #[error("{0} bytes is too short for an RTCP header")]
    TooShort(usize),
    #[error("RTCP version {0}, expected 2")]
    BadVersion(u8),
    #[error("RTCP packet type {packet_type} does not fit its length or counts")]
    BadLength { packet_type: u8 },
    #[error("RTCP padding is zero, too long, or not on the last packet")]
    BadPadding,
    #[error("{0} report blocks, at most 31 fit in one packet")]
    TooManyReportBlocks(usize),
    #[error("CNAME of {0} bytes, at most 255")]
    CnameTooLong(usize),
    #[error("output buffer of {available} bytes is too small for {needed}")]
    BufferTooSmall { needed: usize, available: usize },
}

/// A 64-bit NTP timestamp: seconds since 1900 in the high half, the
/// fraction of a second in the low half.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NtpTimestamp(pub u64);

impl NtpTimestamp {
    /// Times before 1970 count as 1970: only a broken clock gives them.
    pub fn from_system_time(time: SystemTime) -> Self {
        let since_unix = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        Self::from_duration(Duration::from_secs(NTP_UNIX_OFFSET_SECS) + since_unix)
    }

    /// The middle 32 bits, the form LSR uses (RFC 3550 §6.4.1).
    pub fn middle_32(self) -> u32 {
        (self.0 >> 16) as u32
    }

    /// Later by `elapsed`, wrapping at the end of the NTP era like NTP.
    pub fn after(self, elapsed: Duration) -> Self {
        Self(self.0.wrapping_add(Self::from_duration(elapsed).0))
    }

    fn from_duration(duration: Duration) -> Self {
        let fraction = (u64::from(duration.subsec_nanos()) << 32) / 1_000_000_000;
        Self((duration.as_secs() << 32) | fraction)
    }
}

/// Converts a duration to the 1/65536 s units of DLSR, saturating.
pub fn to_short_ntp(duration: Duration) -> u32 {
    let units = duration.as_nanos().saturating_mul(65_536) / 1_000_000_000;
    u32::try_from(units).unwrap_or(u32::MAX)
}

/// Converts 1/65536 s units (DLSR, round-trip arithmetic) to a duration.
pub fn from_short_ntp(units: u32) -> Duration {
    Duration::from_nanos(u64::from(units) * 1_000_000_000 / 65_536)
}

/// The sender information of an SR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderInfo {
    pub ntp: NtpTimestamp,
    pub rtp_timestamp: u32,
    pub packet_count: u32,
    pub octet_count: u32,
}

/// One reception report block (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    /// The source this block reports on.
    pub ssrc: u32,
    /// Fraction lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative lost; signed 24 bits on the wire (duplicates can make it
    /// negative), clamped when written.
    pub cumulative_lost: i32,
    pub extended_highest_sequence: u32,
    /// Interarrival jitter in timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP time of the last SR received, 0 if none.
    pub last_sr: u32,
    /// Delay since that SR, in 1/65536 s.
    pub delay_since_last_sr: u32,
}

impl ReportBlock {
    fn parse(bytes: &[u8; REPORT_BLOCK_LEN]) -> Self {
        let word = |at: usize| {
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        // Sign-extend the 24-bit count through the top of an i32.
        let cumulative_lost = (i32::from_be_bytes([bytes[5], bytes[6], bytes[7], 0])) >> 8;
        Self {
            ssrc: word(0),
            fraction_lost: bytes[4],
            cumulative_lost,
            extended_highest_sequence: word(8),
            jitter: word(12),
            last_sr: word(16),
            delay_since_last_sr: word(20),
        }
    }

    fn write(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.ssrc.to_be_bytes());
        out[4] = self.fraction_lost;
        let lost = self.cumulative_lost.clamp(-0x80_0000, 0x7f_ffff);
        out[5..8].copy_from_slice(&lost.to_be_bytes()[1..4]);
        out[8..12].copy_from_slice(&self.extended_highest_sequence.to_be_bytes());
        out[12..16].copy_from_slice(&self.jitter.to_be_bytes());
        out[16..20].copy_from_slice(&self.last_sr.to_be_bytes());
        out[20..24].copy_from_slice(&self.delay_since_last_sr.to_be_bytes());
    }
}

/// The report blocks of a parsed SR or RR, decoded as they are iterated.
#[derive(Debug, Clone)]
pub struct ReportBlocks<'a> {
    bytes: &'a [u8],
}

impl Iterator for ReportBlocks<'_> {
    type Item = ReportBlock;

    fn next(&mut self) -> Option<ReportBlock> {
        let (block, rest) = self.bytes.split_first_chunk::<REPORT_BLOCK_LEN>()?;
        self.bytes = rest;
        Some(ReportBlock::parse(block))
    }
}

/// The SSRC list of a BYE, decoded as it is iterated.
#[derive(Debug, Clone)]
pub struct Ssrcs<'a> {
    bytes: &'a [u8],
}

impl Iterator for Ssrcs<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        let (ssrc, rest) = self.bytes.split_first_chunk::<4>()?;
        self.bytes = rest;
        Some(u32::from_be_bytes(*ssrc))
    }
}

/// One packet of a compound RTCP packet.
#[derive(Debug, Clone)]
pub enum RtcpPacket<'a> {
    SenderReport {
        ssrc: u32,
        info: SenderInfo,
        reports: ReportBlocks<'a>,
    },
    ReceiverReport {
        ssrc: u32,
        reports: ReportBlocks<'a>,
    },
    /// The sources that are leaving.
    Bye { ssrcs: Ssrcs<'a> },
    /// SDES, APP, feedback, XR...: nothing a leg acts on.
    Other { packet_type: u8 },
}

/// Iterates the packets of a compound packet; stops after the first error.
#[derive(Debug, Clone)]
pub struct CompoundPackets<'a> {
    rest: &'a [u8],
}

/// Parses a compound RTCP packet lazily.
pub fn parse_compound(datagram: &[u8]) -> CompoundPackets<'_> {
    CompoundPackets { rest: datagram }
}

impl<'a> Iterator for CompoundPackets<'a> {
    type Item = Result<RtcpPacket<'a>, RtcpError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let result = self.parse_next();
        if result.is_err() {
            self.rest = &[];
        }
        Some(result)
    }
}

impl<'a> CompoundPackets<'a> {
    fn parse_next(&mut self) -> Result<RtcpPacket<'a>, RtcpError> {
        let buf = self.rest;
        let header = buf
            .first_chunk::<HEADER_LEN>()
            .ok_or(RtcpError::TooShort(buf.len()))?;
        let version = header[0] >> 6;
        if version != VERSION {
            return Err(RtcpError::BadVersion(version));
        }
        let has_padding = header[0] & 0x20 != 0;
        let count = usize::from(header[0] & 0x1f);
        let packet_type = header[1];
        let len = (usize::from(u16::from_be_bytes([header[2], header[3]])) + 1) * 4;
        let packet = buf.get(..len).ok_or(RtcpError::BadLength { packet_type })?;
        self.rest = &buf[len..];

        let mut body = &packet[HEADER_LEN..];
        if has_padding {
            // Only the last packet of a compound may be padded.
            let padding = usize::from(body.last().copied().unwrap_or(0));
            if !self.rest.is_empty() || padding == 0 || padding > body.len() {
                return Err(RtcpError::BadPadding);
            }
            body = &body[..body.len() - padding];
        }
        let bad_length = RtcpError::BadLength { packet_type };
        let word = |at: usize| -> Result<u32, RtcpError> {
            body.get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or(bad_length)
        };
        match packet_type {
            PACKET_TYPE_SR => {
                let blocks_at = 4 + SENDER_INFO_LEN;
                let reports = body
                    .get(blocks_at..blocks_at + count * REPORT_BLOCK_LEN)
                    .ok_or(bad_length)?;
                Ok(RtcpPacket::SenderReport {
                    ssrc: word(0)?,
                    info: SenderInfo {
                        ntp: NtpTimestamp((u64::from(word(4)?) << 32) | u64::from(word(8)?)),
                        rtp_timestamp: word(12)?,
                        packet_count: word(16)?,
                        octet_count: word(20)?,
                    },
                    reports: ReportBlocks { bytes: reports },
                })
            }
            PACKET_TYPE_RR => {
                let reports = body
                    .get(4..4 + count * REPORT_BLOCK_LEN)
                    .ok_or(bad_length)?;
                Ok(RtcpPacket::ReceiverReport {
                    ssrc: word(0)?,
                    reports: ReportBlocks { bytes: reports },
                })
            }
            PACKET_TYPE_BYE => Ok(RtcpPacket::Bye {
                ssrcs: Ssrcs {
                    bytes: body.get(..count * 4).ok_or(bad_length)?,
                },
            }),
            _ => Ok(RtcpPacket::Other { packet_type }),
        }
    }
}

/// Whether a datagram on a port shared by RTP and RTCP (rtcp-mux) is RTCP:
/// RFC 5761 §4, its second octet is 192-223.
pub fn is_rtcp(datagram: &[u8]) -> bool {
    matches!(datagram, [first, second, ..] if first >> 6 == VERSION && (192..=223).contains(second))
}

/// What one compound report carries.
#[derive(Debug, Clone, Copy)]
pub struct CompoundReport<'a> {
    pub ssrc: u32,
    /// Present: an SR (we have sent media); absent: an RR.
    pub sender_info: Option<SenderInfo>,
    pub report_blocks: &'a [ReportBlock],
    pub cname: &'a str,
    /// Append a BYE: we are leaving the session.
    pub bye: bool,
}

impl CompoundReport<'_> {
    /// The compound's length in bytes.
    pub fn encoded_len(&self) -> usize {
        let report = HEADER_LEN
            + 4
            + self.sender_info.map_or(0, |_| SENDER_INFO_LEN)
            + REPORT_BLOCK_LEN * self.report_blocks.len();
        report + sdes_len(self.cname) + if self.bye { HEADER_LEN + 4 } else { 0 }
    }

    /// Writes SR or RR, SDES with the CNAME, and BYE if asked (the order
    /// RFC 3550 §6.1 requires); returns the length written.
    pub fn write(&self, out: &mut [u8]) -> Result<usize, RtcpError> {
        if self.report_blocks.len() > MAX_REPORT_BLOCKS {
            return Err(RtcpError::TooManyReportBlocks(self.report_blocks.len()));
        }
        if self.cname.len() > 255 {
            return Err(RtcpError::CnameTooLong(self.cname.len()));
        }
        let needed = self.encoded_len();
        let available = out.len();
        let out = out
            .get_mut(..needed)
            .ok_or(RtcpError::BufferTooSmall { needed, available })?;

        let (packet_type, info_len) = match self.sender_info {
            Some(_) => (PACKET_TYPE_SR, SENDER_INFO_LEN),
            None => (PACKET_TYPE_RR, 0),
        };
        let report_len = HEADER_LEN + 4 + info_len + REPORT_BLOCK_LEN * self.report_blocks.len();
        write_header(out, self.report_blocks.len(), packet_type, report_len);
        out[4..8].copy_from_slice(&self.ssrc.to_be_bytes());
        let mut at = 8;
        if let Some(info) = self.sender_info {
            out[at..at + 8].copy_from_slice(&info.ntp.0.to_be_bytes());
            out[at + 8..at + 12].copy_from_slice(&info.rtp_timestamp.to_be_bytes());
            out[at + 12..at + 16].copy_from_slice(&info.packet_count.to_be_bytes());
            out[at + 16..at + 20].copy_from_slice(&info.octet_count.to_be_bytes());
            at += SENDER_INFO_LEN;
        }
        for block in self.report_blocks {
            block.write(&mut out[at..at + REPORT_BLOCK_LEN]);
            at += REPORT_BLOCK_LEN;
        }

        let sdes_len = sdes_len(self.cname);
        let sdes = &mut out[at..at + sdes_len];
        write_header(sdes, 1, PACKET_TYPE_SDES, sdes_len);
        sdes[4..8].copy_from_slice(&self.ssrc.to_be_bytes());
        sdes[8] = SDES_CNAME;
        sdes[9] = self.cname.len() as u8;
        let text_end = 10 + self.cname.len();
        sdes[10..text_end].copy_from_slice(self.cname.as_bytes());
        // The item list ends with a null octet, then zeros to a word.
        sdes[text_end..].fill(0);
        at += sdes_len;

        if self.bye {
            let bye = &mut out[at..at + HEADER_LEN + 4];
            write_header(bye, 1, PACKET_TYPE_BYE, HEADER_LEN + 4);
            bye[4..8].copy_from_slice(&self.ssrc.to_be_bytes());
            at += HEADER_LEN + 4;
        }
        Ok(at)
    }
}

/// SDES with one chunk: header, SSRC, CNAME item, at least one null octet,
/// padded to a 32-bit boundary.
fn sdes_len(cname: &str) -> usize {
    let chunk = 4 + 2 + cname.len() + 1;
    HEADER_LEN + chunk.div_ceil(4) * 4
}

fn write_header(out: &mut [u8], count: usize, packet_type: u8, len: usize) {
    out[0] = (VERSION << 6) | (count as u8 & 0x1f);
    out[1] = packet_type;
    let words = (len / 4 - 1) as u16;
    out[2..4].copy_from_slice(&words.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(ssrc: u32) -> ReportBlock {
        ReportBlock {
            ssrc,
            fraction_lost: 64,
            cumulative_lost: -3,
            extended_highest_sequence: 0x0001_0005,
            jitter: 80,
            last_sr: 0x1234_5678,
            delay_since_last_sr: 65_536,
        }
    }

    #[test]
    fn ntp_timestamps_follow_rfc_5905() {
        let unix_epoch = NtpTimestamp::from_system_time(UNIX_EPOCH);
        assert_eq!(unix_epoch.0 >> 32, NTP_UNIX_OFFSET_SECS);
        let half = NtpTimestamp::from_system_time(UNIX_EPOCH + Duration::from_millis(1500));
        assert_eq!(half.0, ((NTP_UNIX_OFFSET_SECS + 1) << 32) | 0x8000_0000);
        assert_eq!(
            half.middle_32(),
            (((NTP_UNIX_OFFSET_SECS + 1) as u32) << 16) | 0x8000
        );
        assert_eq!(unix_epoch.after(Duration::from_millis(1500)), half);
        assert_eq!(to_short_ntp(Duration::from_millis(500)), 32_768);
        assert_eq!(from_short_ntp(32_768), Duration::from_millis(500));
        assert_eq!(to_short_ntp(Duration::from_secs(1 << 20)), u32::MAX);
    }

    #[test]
    fn writes_sr_with_sdes_in_rfc_layout() {
        let info = SenderInfo {
            ntp: NtpTimestamp(0x0102_0304_0506_0708),
            rtp_timestamp: 160,
            packet_count: 5,
            octet_count: 800,
        };
        let report = CompoundReport {
            ssrc: 0xaabb_ccdd,
            sender_info: Some(info),
            report_blocks: &[block(9)],
            cname: "dialtone",
            bye: false,
        };
        let mut out = [0u8; 200];
        let len = report.write(&mut out).unwrap();
        // SR: 4 + 4 + 20 + 24 = 52; SDES: 4 + (4 + 2 + 8 + 1 → 16) = 20.
        assert_eq!(len, 72);
        assert_eq!(len, report.encoded_len());
        assert_eq!(&out[..4], &[0x81, 200, 0, 12]);
        assert_eq!(&out[52..56], &[0x81, 202, 0, 4]);
        assert_eq!(&out[56..60], &0xaabb_ccdd_u32.to_be_bytes());
        assert_eq!(out[60], 1);
        assert_eq!(out[61], 8);
        assert_eq!(&out[62..70], b"dialtone");
        assert_eq!(&out[70..72], &[0, 0]);

        let mut packets = parse_compound(&out[..len]);
        match packets.next() {
            Some(Ok(RtcpPacket::SenderReport {
                ssrc,
                info: parsed,
                reports,
            })) => {
                assert_eq!(ssrc, 0xaabb_ccdd);
                assert_eq!(parsed, info);
                assert_eq!(reports.collect::<Vec<_>>(), vec![block(9)]);
            }
            other => panic!("expected SR, got {other:?}"),
        }
        assert!(matches!(
            packets.next(),
            Some(Ok(RtcpPacket::Other { packet_type: 202 }))
        ));
        assert!(packets.next().is_none());
    }

    #[test]
    fn writes_rr_and_bye() {
        let report = CompoundReport {
            ssrc: 1,
            sender_info: None,
            report_blocks: &[],
            cname: "abc",
            bye: true,
        };
        let mut out = [0u8; 64];
        let len = report.write(&mut out).unwrap();
        // RR 8, SDES 4 + (4 + 2 + 3 + 1 → 12) = 16, BYE 8.
        assert_eq!(len, 32);
        assert_eq!(&out[..4], &[0x80, 201, 0, 1]);
        let kinds: Vec<_> = parse_compound(&out[..len])
            .map(|packet| match packet.unwrap() {
                RtcpPacket::ReceiverReport { ssrc, reports } => {
                    assert_eq!((ssrc, reports.count()), (1, 0));
                    201
                }
                RtcpPacket::Bye { ssrcs } => {
                    assert_eq!(ssrcs.collect::<Vec<_>>(), vec![1]);
                    203
                }
                RtcpPacket::Other { packet_type } => packet_type,
                RtcpPacket::SenderReport { .. } => 200,
            })
            .collect();
        assert_eq!(kinds, [201, 202, 203]);
    }

    #[test]
    fn cname_length_multiple_of_four_still_gets_a_null_word() {
        // 4 + 2 + 2 = 8 octets of chunk: the terminating null needs a new word.
        assert_eq!(sdes_len("ab"), HEADER_LEN + 12);
    }

    #[test]
    fn cumulative_lost_is_signed_24_bit_and_clamped() {
        let mut out = [0u8; REPORT_BLOCK_LEN];
        let mut value = block(1);
        value.cumulative_lost = -1;
        value.write(&mut out);
        assert_eq!(&out[5..8], &[0xff, 0xff, 0xff]);
        assert_eq!(ReportBlock::parse(&out).cumulative_lost, -1);
        value.cumulative_lost = 10_000_000;
        value.write(&mut out);
        assert_eq!(ReportBlock::parse(&out).cumulative_lost, 0x7f_ffff);
        value.cumulative_lost = -10_000_000;
        value.write(&mut out);
        assert_eq!(ReportBlock::parse(&out).cumulative_lost, -0x80_0000);
    }

    #[test]
    fn write_checks_limits_and_buffer() {
        let blocks = [ReportBlock::default(); 32];
        let too_many = CompoundReport {
            ssrc: 1,
            sender_info: None,
            report_blocks: &blocks,
            cname: "x",
            bye: false,
        };
        let mut out = [0u8; 2000];
        assert_eq!(
            too_many.write(&mut out),
            Err(RtcpError::TooManyReportBlocks(32))
        );
        let long_name = "x".repeat(256);
        let long = CompoundReport {
            report_blocks: &[],
            cname: &long_name,
            ..too_many
        };
        assert_eq!(long.write(&mut out), Err(RtcpError::CnameTooLong(256)));
        let fine = CompoundReport {
            report_blocks: &[],
            ..too_many
        };
        let mut small = [0u8; 10];
        assert_eq!(
            fine.write(&mut small),
            Err(RtcpError::BufferTooSmall {
                needed: 20,
                available: 10
            })
        );
    }

    #[test]
    fn parse_rejects_bad_framing() {
        let mut packets = parse_compound(&[0x80, 201, 0]);
        assert_eq!(packets.next().unwrap().unwrap_err(), RtcpError::TooShort(3));
        assert!(packets.next().is_none(), "stops after an error");
        assert_eq!(
            parse_compound(&[0x40, 201, 0, 1, 0, 0, 0, 1])
                .next()
                .unwrap()
                .unwrap_err(),
            RtcpError::BadVersion(1)
        );
        // Length says 3 words follow, only 1 does.
        assert_eq!(
            parse_compound(&[0x80, 201, 0, 3, 0, 0, 0, 1])
                .next()
                .unwrap()
                .unwrap_err(),
            RtcpError::BadLength { packet_type: 201 }
        );
        // RR claiming one report block but carrying none.
        assert_eq!(
            parse_compound(&[0x81, 201, 0, 1, 0, 0, 0, 1])
                .next()
                .unwrap()
                .unwrap_err(),
            RtcpError::BadLength { packet_type: 201 }
        );
        // SR too short for its sender info.
        assert_eq!(
            parse_compound(&[0x80, 200, 0, 1, 0, 0, 0, 1])
                .next()
                .unwrap()
                .unwrap_err(),
            RtcpError::BadLength { packet_type: 200 }
        );
        // Padding on a packet that is not the last.
        let mut padded_first = vec![0xa0, 201, 0, 1, 0, 0, 0, 4];
        padded_first.extend_from_slice(&[0x80, 201, 0, 1, 0, 0, 0, 2]);
        assert_eq!(
            parse_compound(&padded_first).next().unwrap().unwrap_err(),
            RtcpError::BadPadding
        );
        // Padding count zero.
        assert_eq!(
            parse_compound(&[0xa0, 201, 0, 1, 0, 0, 0, 0])
                .next()
                .unwrap()
                .unwrap_err(),
            RtcpError::BadPadding
        );
    }

    #[test]
    fn parse_accepts_padding_on_the_last_packet() {
        // RR with its SSRC, then 4 octets of padding.
        let bytes = [0xa0, 201, 0, 2, 0, 0, 0, 7, 0, 0, 0, 4];
        match parse_compound(&bytes).next() {
            Some(Ok(RtcpPacket::ReceiverReport { ssrc, .. })) => assert_eq!(ssrc, 7),
            other => panic!("expected RR, got {other:?}"),
        }
    }

    #[test]
    fn parse_never_panics_on_arbitrary_bytes() {
        let mut state = 99_u32;
        for round in 0..3000 {
            let mut buf = [0u8; 96];
            for byte in &mut buf {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *byte = (state >> 24) as u8;
            }
            if round % 2 == 0 {
                buf[0] = (buf[0] & 0x3f) | 0x80;
                buf[1] = 200 + (buf[1] % 4);
                buf[2] = 0;
                buf[3] %= 24;
            }
            for len in 0..buf.len() {
                for packet in parse_compound(&buf[..len]) {
                    if let Ok(
                        RtcpPacket::SenderReport { reports, .. }
                        | RtcpPacket::ReceiverReport { reports, .. },
                    ) = packet
                    {
                        reports.for_each(drop);
                    }
                }
            }
        }
    }

    #[test]
    fn demultiplexes_rtcp_from_rtp() {
        assert!(is_rtcp(&[0x80, 200, 0, 6]));
        assert!(is_rtcp(&[0x81, 201, 0, 7]));
        assert!(!is_rtcp(&[0x80, 0x00, 0, 1])); // PCMU
        assert!(!is_rtcp(&[0x80, 0xe5, 0, 1])); // marker + PT 101
        assert!(!is_rtcp(&[0x80]));
        assert!(!is_rtcp(&[0x00, 200]));
    }
}
