//! RTP packets (RFC 3550 §5.1): parsing, writing, and the numbering of the
//! one outgoing stream a leg sends, whether its packets are generated here
//! (encoded audio, DTMF events) or forwarded from the other leg.

use thiserror::Error;

/// The only RTP version in use (RFC 3550).
pub const RTP_VERSION: u8 = 2;
/// Length of the fixed header, without CSRCs or extension.
pub const RTP_HEADER_LEN: usize = 12;

/// How far ahead a sequence number may jump and still belong to the same
/// stream (RFC 3550 A.1's MAX_DROPOUT); anything further is a restart.
pub(crate) const MAX_DROPOUT: u16 = 3000;
/// How far behind a sequence number may be and count as reordered rather
/// than a restart (RFC 3550 A.1's MAX_MISORDER).
pub(crate) const MAX_MISORDER: u16 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RtpError {
    #[error("{0} bytes is too short for an RTP header")]
    TooShort(usize),
    #[error("RTP version {0}, expected 2")]
    BadVersion(u8),
    #[error("the CSRC list or header extension runs past the end of the packet")]
    Truncated,
    #[error("padding count {0} is zero or longer than the packet body")]
    BadPadding(u8),
    #[error("payload type {0} does not fit in 7 bits")]
    BadPayloadType(u8),
    #[error("output buffer of {available} bytes is too small for {needed}")]
    BufferTooSmall { needed: usize, available: usize },
}

/// The fields of the fixed header that matter to a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

/// A header extension (RFC 3550 §5.3.1): the profile-defined 16 bits and
/// the extension words, still encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpExtension<'a> {
    pub profile: u16,
    pub data: &'a [u8],
}

/// A parsed packet borrowing the datagram it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    pub header: RtpHeader,
    pub extension: Option<RtpExtension<'a>>,
    /// Padding octets after the payload, the count octet included; 0 when
    /// the P bit is clear.
    pub padding_len: usize,
    pub payload: &'a [u8],
    csrc_bytes: &'a [u8],
}

impl<'a> RtpPacket<'a> {
    /// A packet another layer already took apart (SRTP, for one).
    pub fn from_parts(header: RtpHeader, payload: &'a [u8]) -> Self {
        RtpPacket {
            header,
            extension: None,
            padding_len: 0,
            payload,
            csrc_bytes: &[],
        }
    }

    /// Parses and validates one datagram. Never panics, whatever the bytes.
    pub fn parse(packet: &'a [u8]) -> Result<Self, RtpError> {
        let Layout {
            header,
            has_padding,
            csrc_bytes,
            extension,
            body_start,
        } = Layout::parse(packet)?;
        let body = packet.get(body_start..).ok_or(RtpError::Truncated)?;
        let padding_len = if has_padding {
            // The last octet counts the padding, itself included.
            let count = body.last().copied().ok_or(RtpError::BadPadding(0))?;
            if count == 0 || usize::from(count) > body.len() {
                return Err(RtpError::BadPadding(count));
            }
            usize::from(count)
        } else {
            0
        };
        Ok(Self {
            header,
            extension,
            padding_len,
            payload: &body[..body.len() - padding_len],
            csrc_bytes,
        })
    }

    pub fn csrc_count(&self) -> usize {
        self.csrc_bytes.len() / 4
    }

    /// The contributing sources, in packet order.
    pub fn csrcs(&self) -> impl Iterator<Item = u32> + 'a {
        self.csrc_bytes
            .chunks_exact(4)
            .map(|word| u32::from_be_bytes([word[0], word[1], word[2], word[3]]))
    }
}

/// Where a packet's header parts are.
struct Layout<'a> {
    header: RtpHeader,
    has_padding: bool,
    csrc_bytes: &'a [u8],
    extension: Option<RtpExtension<'a>>,
    /// Where the payload (or padding) starts.
    body_start: usize,
}

impl<'a> Layout<'a> {
    fn parse(packet: &'a [u8]) -> Result<Self, RtpError> {
        let fixed = packet
            .get(..RTP_HEADER_LEN)
            .ok_or(RtpError::TooShort(packet.len()))?;
        let version = fixed[0] >> 6;
        if version != RTP_VERSION {
            return Err(RtpError::BadVersion(version));
        }
        let has_padding = fixed[0] & 0x20 != 0;
        let has_extension = fixed[0] & 0x10 != 0;
        let csrc_count = usize::from(fixed[0] & 0x0f);
        let header = RtpHeader {
            marker: fixed[1] & 0x80 != 0,
            payload_type: fixed[1] & 0x7f,
            sequence: u16::from_be_bytes([fixed[2], fixed[3]]),
            timestamp: u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
            ssrc: u32::from_be_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]),
        };

        let csrc_end = RTP_HEADER_LEN + 4 * csrc_count;
        let csrc_bytes = packet
            .get(RTP_HEADER_LEN..csrc_end)
            .ok_or(RtpError::Truncated)?;
        let mut body_start = csrc_end;
        let extension = if has_extension {
            let ext_header = packet
                .get(body_start..body_start + 4)
                .ok_or(RtpError::Truncated)?;
            let profile = u16::from_be_bytes([ext_header[0], ext_header[1]]);
            let words = usize::from(u16::from_be_bytes([ext_header[2], ext_header[3]]));
            let data_start = body_start + 4;
            let data_end = data_start + 4 * words;
            let data = packet
                .get(data_start..data_end)
                .ok_or(RtpError::Truncated)?;
            body_start = data_end;
            Some(RtpExtension { profile, data })
        } else {
            None
        };

        Ok(Layout {
            header,
            has_padding,
            csrc_bytes,
            extension,
            body_start,
        })
    }
}

/// Length of a packet's header: the fixed part, its CSRCs and its header
/// extension, checked against the packet's length. SRTP needs it without
/// looking at the (encrypted) body.
pub fn header_len(packet: &[u8]) -> Result<usize, RtpError> {
    Layout::parse(packet).map(|layout| layout.body_start)
}

impl RtpHeader {
    /// Writes the 12-byte fixed header (no padding, extension or CSRCs).
    pub fn write(&self, out: &mut [u8]) -> Result<usize, RtpError> {
        if self.payload_type > 0x7f {
            return Err(RtpError::BadPayloadType(self.payload_type));
        }
        let available = out.len();
        let header = out
            .get_mut(..RTP_HEADER_LEN)
            .ok_or(RtpError::BufferTooSmall {
                needed: RTP_HEADER_LEN,
                available,
            })?;
        header[0] = RTP_VERSION << 6;
        header[1] = (u8::from(self.marker) << 7) | self.payload_type;
        header[2..4].copy_from_slice(&self.sequence.to_be_bytes());
        header[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        header[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        Ok(RTP_HEADER_LEN)
    }

    /// Writes the header followed by `payload`; returns the packet length.
    pub fn write_packet(&self, payload: &[u8], out: &mut [u8]) -> Result<usize, RtpError> {
        let needed = RTP_HEADER_LEN + payload.len();
        if out.len() < needed {
            return Err(RtpError::BufferTooSmall {
                needed,
                available: out.len(),
            });
        }
        self.write(out)?;
        out[RTP_HEADER_LEN..needed].copy_from_slice(payload);
        Ok(needed)
    }
}

/// What a sender has put on the wire, for RTCP sender reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SenderCounters {
    pub packets: u64,
    /// Payload octets, headers and padding excluded (RFC 3550 §6.4.1).
    pub octets: u64,
    /// The RTP timestamp the stream has reached: that of the next packet.
    pub rtp_timestamp: u32,
}

/// A relayed stream's mapping onto ours ([`RtpSender::relay_mapping`]):
/// our sequence number is the foreign one plus `sequence_offset`, our
/// timestamp the foreign one plus `timestamp_offset`; foreign numbers
/// before `anchor_sequence` are not relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayMapping {
    pub ssrc: u32,
    pub sequence_offset: u16,
    pub timestamp_offset: u32,
    pub anchor_sequence: u16,
    pub highest_sequence: u16,
    pub highest_timestamp: u32,
}

/// Where a foreign stream relayed elsewhere has got to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayProgress {
    pub highest_sequence: u16,
    pub highest_timestamp: u32,
    pub anchor_sequence: u16,
}

/// How the current foreign stream maps onto ours while forwarding.
#[derive(Debug, Clone, Copy)]
struct ForeignMapping {
    ssrc: u32,
    sequence_offset: u16,
    timestamp_offset: u32,
    /// First foreign sequence number under the current offsets; packets
    /// from before it were mapped differently, or not at all, and are
    /// dropped so they cannot collide with numbers already used.
    anchor_sequence: u16,
    highest_sequence: u16,
    highest_timestamp: u32,
    /// Set when we sent packets of our own since the last forwarded one,
    /// so the sequence offset must be renewed to stay gap-free.
    diverged: bool,
}

/// Numbering of one outgoing RTP stream: our SSRC, a continuous sequence
/// and a timestamp clock.
///
/// Generated packets take the clock's current value and move it on by the
/// time they cover. Forwarded packets ([`RtpSender::relay`]) keep their
/// own timing but are renumbered onto our stream, so the far end sees one
/// source without gaps even when the other leg changes or restarts its
/// stream, and when we interleave packets of our own (DTMF events).
#[derive(Debug, Clone)]
pub struct RtpSender {
    ssrc: u32,
    next_sequence: u16,
    next_timestamp: u32,
    /// Timestamp units of the last packet, the best guess for the next.
    last_step: u32,
    counters: SenderCounters,
    foreign: Option<ForeignMapping>,
}

impl RtpSender {
    /// The starting sequence number and timestamp should be random
    /// (RFC 3550 §5.1); the caller supplies them so this stays deterministic.
    pub fn new(ssrc: u32, first_sequence: u16, first_timestamp: u32) -> Self {
        Self {
            ssrc,
            next_sequence: first_sequence,
            next_timestamp: first_timestamp,
            last_step: 0,
            counters: SenderCounters::default(),
            foreign: None,
        }
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    pub fn next_sequence(&self) -> u16 {
        self.next_sequence
    }

    /// The timestamp the next generated packet will carry.
    pub fn next_timestamp(&self) -> u32 {
        self.next_timestamp
    }

    /// Packets and octets sent so far, generated and forwarded alike.
    pub fn counters(&self) -> SenderCounters {
        SenderCounters {
            rtp_timestamp: self.next_timestamp,
            ..self.counters
        }
    }

    /// Writes a generated packet stamped with the clock, then advances the
    /// clock by `timestamp_advance` (the samples the payload covers).
    pub fn next_packet(
        &mut self,
        payload: &[u8],
        timestamp_advance: u32,
        marker: bool,
        payload_type: u8,
        out: &mut [u8],
    ) -> Result<usize, RtpError> {
        let len =
            self.packet_with_timestamp(payload, self.next_timestamp, marker, payload_type, out)?;
        self.skip(timestamp_advance);
        Ok(len)
    }

    /// Writes a generated packet with an explicit timestamp, leaving the
    /// clock alone: every packet of an RFC 4733 event carries the event's
    /// start timestamp while the clock moves on underneath.
    pub fn packet_with_timestamp(
        &mut self,
        payload: &[u8],
        timestamp: u32,
        marker: bool,
        payload_type: u8,
        out: &mut [u8],
    ) -> Result<usize, RtpError> {
        let header = RtpHeader {
            marker,
            payload_type,
            sequence: self.next_sequence,
            timestamp,
            ssrc: self.ssrc,
        };
        let len = header.write_packet(payload, out)?;
        self.next_sequence = self.next_sequence.wrapping_add(1);
        if let Some(mapping) = &mut self.foreign {
            mapping.diverged = true;
        }
        self.count(payload.len());
        Ok(len)
    }

    /// Advances the clock over a slot that sends no audio packet (an RFC
    /// 4733 event's span, silence), so later packets keep real time.
    pub fn skip(&mut self, timestamp_units: u32) {
        self.next_timestamp = self.next_timestamp.wrapping_add(timestamp_units);
        if timestamp_units > 0 {
            self.last_step = timestamp_units;
        }
    }

    /// Forwards a packet from another point (same codec, pass-through):
    /// writes it into `out` with our SSRC, `payload_type`, and its sequence
    /// number and timestamp mapped onto our stream by offsets, so gaps,
    /// reordering and the sender's own packet times (any ptime, DTX pauses)
    /// reach our receiver as they were; marker and payload are kept. Returns
    /// `None` for a packet that must be dropped: a straggler from before the
    /// current mapping.
    ///
    /// A new foreign SSRC, or a sequence jump beyond RFC 3550's
    /// MAX_DROPOUT / MAX_MISORDER, starts a new mapping: its first packet
    /// continues our sequence without a gap (so our receiver sees no loss),
    /// continues our clock, and carries the marker bit to flag the timing
    /// discontinuity.
    pub fn relay(
        &mut self,
        foreign: &RtpHeader,
        payload: &[u8],
        payload_type: u8,
        out: &mut [u8],
    ) -> Result<Option<usize>, RtpError> {
        let needed = RTP_HEADER_LEN + payload.len();
        if out.len() < needed {
            return Err(RtpError::BufferTooSmall {
                needed,
                available: out.len(),
            });
        }
        let foreign = *foreign;
        let mut marker = foreign.marker;
        let mapping = match self.foreign {
            Some(mapping) if mapping.ssrc == foreign.ssrc => {
                let ahead = foreign.sequence.wrapping_sub(mapping.highest_sequence);
                let behind = mapping.highest_sequence.wrapping_sub(foreign.sequence);
                if ahead != 0 && ahead < MAX_DROPOUT {
                    if mapping.diverged {
                        self.resume_mapping(mapping, &foreign)
                    } else {
                        mapping
                    }
                } else if ahead == 0 || behind <= MAX_MISORDER {
                    if (foreign.sequence.wrapping_sub(mapping.anchor_sequence) as i16) < 0 {
                        return Ok(None);
                    }
                    mapping
                } else {
                    marker = true;
                    self.new_mapping(&foreign)
                }
            }
            _ => {
                marker = true;
                self.new_mapping(&foreign)
            }
        };

        let sequence = foreign.sequence.wrapping_add(mapping.sequence_offset);
        let timestamp = foreign.timestamp.wrapping_add(mapping.timestamp_offset);
        let header = RtpHeader {
            marker,
            payload_type,
            sequence,
            timestamp,
            ssrc: self.ssrc,
        };
        let len = header.write_packet(payload, out)?;

        let mut mapping = mapping;
        let ahead = foreign.sequence.wrapping_sub(mapping.highest_sequence);
        if ahead != 0 && ahead < MAX_DROPOUT {
            let step = foreign.timestamp.wrapping_sub(mapping.highest_timestamp);
            // Only a packet right after the previous one shows a frame's
            // length; a step over lost packets would overestimate it.
            if ahead == 1 && step != 0 && (step as i32) > 0 {
                self.last_step = step;
            }
            mapping.highest_sequence = foreign.sequence;
            mapping.highest_timestamp = foreign.timestamp;
            // Only the last MAX_MISORDER numbers may still come: the anchor
            // stays among them, so the signed distance to it never wraps.
            if foreign.sequence.wrapping_sub(mapping.anchor_sequence) > MAX_MISORDER {
                mapping.anchor_sequence = foreign.sequence.wrapping_sub(MAX_MISORDER);
            }
        }
        self.relayed_up_to(sequence, timestamp);
        self.foreign = Some(mapping);
        self.count(payload.len());
        Ok(Some(len))
    }

    /// How the foreign stream being relayed maps onto ours, for a forwarder
    /// that carries it on elsewhere ([`crate::offload`]); `None` when no
    /// stream is relayed, or our own packets came between (the next relayed
    /// packet renews the mapping).
    pub fn relay_mapping(&self) -> Option<RelayMapping> {
        let mapping = self.foreign.filter(|mapping| !mapping.diverged)?;
        Some(RelayMapping {
            ssrc: mapping.ssrc,
            sequence_offset: mapping.sequence_offset,
            timestamp_offset: mapping.timestamp_offset,
            anchor_sequence: mapping.anchor_sequence,
            highest_sequence: mapping.highest_sequence,
            highest_timestamp: mapping.highest_timestamp,
        })
    }

    /// Takes in what a forwarder relayed under [`RtpSender::relay_mapping`]
    /// since it was last heard from: `packets` more packets of `octets`
    /// payload, the foreign stream now at `progress`. The stream goes on
    /// from there as if this sender had relayed them.
    pub fn relayed_elsewhere(&mut self, progress: RelayProgress, packets: u64, octets: u64) {
        let Some(mapping) = self.foreign.as_mut() else {
            return;
        };
        mapping.highest_sequence = progress.highest_sequence;
        mapping.highest_timestamp = progress.highest_timestamp;
        mapping.anchor_sequence = progress.anchor_sequence;
        let sequence = progress
            .highest_sequence
            .wrapping_add(mapping.sequence_offset);
        let timestamp = progress
            .highest_timestamp
            .wrapping_add(mapping.timestamp_offset);
        self.relayed_up_to(sequence, timestamp);
        self.counters.packets += packets;
        self.counters.octets += octets;
    }

    /// Our stream has reached `sequence` and `timestamp` (ours, mapped): a
    /// generated packet goes on after them, unless a later one was sent.
    fn relayed_up_to(&mut self, sequence: u16, timestamp: u32) {
        if (sequence.wrapping_sub(self.next_sequence) as i16) >= 0 {
            self.next_sequence = sequence.wrapping_add(1);
            self.next_timestamp = timestamp.wrapping_add(self.last_step);
        }
    }

    /// Maps `foreign`'s stream so its first packet continues ours.
    fn new_mapping(&self, foreign: &RtpHeader) -> ForeignMapping {
        ForeignMapping {
            ssrc: foreign.ssrc,
            sequence_offset: self.next_sequence.wrapping_sub(foreign.sequence),
            timestamp_offset: self.next_timestamp.wrapping_sub(foreign.timestamp),
            anchor_sequence: foreign.sequence,
            // Counts as "not ahead" for the first packet of the mapping.
            highest_sequence: foreign.sequence,
            highest_timestamp: foreign.timestamp,
            diverged: false,
        }
    }

    /// The same foreign stream after we sent packets of our own: renew the
    /// sequence offset, and keep its timing unless that would step back
    /// into time our own packets already covered.
    fn resume_mapping(&self, old: ForeignMapping, foreign: &RtpHeader) -> ForeignMapping {
        let mapped = foreign.timestamp.wrapping_add(old.timestamp_offset);
        let timestamp_offset = if (mapped.wrapping_sub(self.next_timestamp) as i32) < 0 {
            self.next_timestamp.wrapping_sub(foreign.timestamp)
        } else {
            old.timestamp_offset
        };
        ForeignMapping {
            sequence_offset: self.next_sequence.wrapping_sub(foreign.sequence),
            timestamp_offset,
            anchor_sequence: foreign.sequence,
            diverged: false,
            ..old
        }
    }

    fn count(&mut self, payload_len: usize) {
        self.counters.packets += 1;
        self.counters.octets += payload_len as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(marker: bool, pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0; RTP_HEADER_LEN + payload.len()];
        let header = RtpHeader {
            marker,
            payload_type: pt,
            sequence: seq,
            timestamp: ts,
            ssrc,
        };
        header.write_packet(payload, &mut out).unwrap();
        out
    }

    #[test]
    fn parses_fixed_header_fields() {
        let bytes = [
            0x80, 0xe0, 0x12, 0x34, 0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04, 0xaa, 0xbb,
        ];
        let parsed = RtpPacket::parse(&bytes).unwrap();
        assert_eq!(
            parsed.header,
            RtpHeader {
                marker: true,
                payload_type: 96,
                sequence: 0x1234,
                timestamp: 0xdead_beef,
                ssrc: 0x0102_0304,
            }
        );
        assert_eq!(parsed.payload, &[0xaa, 0xbb]);
        assert_eq!(parsed.csrc_count(), 0);
        assert_eq!(parsed.extension, None);
        assert_eq!(parsed.padding_len, 0);
    }

    #[test]
    fn parses_csrcs_extension_and_padding() {
        let mut bytes = vec![0xb2, 0x00, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        bytes.extend_from_slice(&[0, 0, 0, 10, 0, 0, 0, 11]); // two CSRCs
        bytes.extend_from_slice(&[0xbe, 0xde, 0, 1, 1, 2, 3, 4]); // extension, 1 word
        bytes.extend_from_slice(&[9, 9, 9]); // payload
        bytes.extend_from_slice(&[0, 0, 3]); // 3 octets of padding
        let parsed = RtpPacket::parse(&bytes).unwrap();
        assert_eq!(parsed.csrcs().collect::<Vec<_>>(), vec![10, 11]);
        assert_eq!(
            parsed.extension,
            Some(RtpExtension {
                profile: 0xbede,
                data: &[1, 2, 3, 4]
            })
        );
        assert_eq!(parsed.padding_len, 3);
        assert_eq!(parsed.payload, &[9, 9, 9]);
    }

    #[test]
    fn rejects_malformed_packets() {
        assert_eq!(RtpPacket::parse(&[]), Err(RtpError::TooShort(0)));
        assert_eq!(RtpPacket::parse(&[0x80; 11]), Err(RtpError::TooShort(11)));
        let mut v1 = packet(false, 0, 1, 1, 1, &[1]);
        v1[0] = 0x40;
        assert_eq!(RtpPacket::parse(&v1), Err(RtpError::BadVersion(1)));
        // CSRC count 2 but no CSRC words.
        let mut csrc = packet(false, 0, 1, 1, 1, &[1, 2, 3]);
        csrc[0] |= 0x02;
        assert_eq!(RtpPacket::parse(&csrc), Err(RtpError::Truncated));
        // Extension header claims 4 words, has none.
        let mut ext = packet(false, 0, 1, 1, 1, &[0xbe, 0xde, 0, 4]);
        ext[0] |= 0x10;
        assert_eq!(RtpPacket::parse(&ext), Err(RtpError::Truncated));
        // Extension header itself cut short.
        let mut ext_short = packet(false, 0, 1, 1, 1, &[0xbe]);
        ext_short[0] |= 0x10;
        assert_eq!(RtpPacket::parse(&ext_short), Err(RtpError::Truncated));
        // Padding count zero, and longer than the body.
        let mut pad_zero = packet(false, 0, 1, 1, 1, &[1, 0]);
        pad_zero[0] |= 0x20;
        assert_eq!(RtpPacket::parse(&pad_zero), Err(RtpError::BadPadding(0)));
        let mut pad_long = packet(false, 0, 1, 1, 1, &[1, 5]);
        pad_long[0] |= 0x20;
        assert_eq!(RtpPacket::parse(&pad_long), Err(RtpError::BadPadding(5)));
        // Padding bit with no body at all.
        let mut pad_empty = packet(false, 0, 1, 1, 1, &[]);
        pad_empty[0] |= 0x20;
        assert_eq!(RtpPacket::parse(&pad_empty), Err(RtpError::BadPadding(0)));
    }

    #[test]
    fn padding_may_fill_the_whole_body() {
        let mut bytes = packet(false, 0, 1, 1, 1, &[0, 0, 0, 4]);
        bytes[0] |= 0x20;
        let parsed = RtpPacket::parse(&bytes).unwrap();
        assert!(parsed.payload.is_empty());
    }

    #[test]
    fn parse_never_panics_on_arbitrary_bytes() {
        // A cheap deterministic fuzz: every prefix of many pseudo-random
        // buffers, with the version forced to 2 half of the time.
        let mut state = 0x1234_5678_u32;
        for round in 0..2000 {
            let mut buf = [0u8; 64];
            for byte in &mut buf {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *byte = (state >> 24) as u8;
            }
            if round % 2 == 0 {
                buf[0] = (buf[0] & 0x3f) | 0x80;
            }
            for len in 0..buf.len() {
                let _ = RtpPacket::parse(&buf[..len]);
            }
        }
    }

    #[test]
    fn write_round_trips_and_checks_buffer_and_payload_type() {
        let header = RtpHeader {
            marker: true,
            payload_type: 101,
            sequence: 65535,
            timestamp: u32::MAX,
            ssrc: 42,
        };
        let mut out = [0u8; 16];
        let len = header.write_packet(&[1, 2, 3, 4], &mut out).unwrap();
        assert_eq!(len, 16);
        let parsed = RtpPacket::parse(&out).unwrap();
        assert_eq!(parsed.header, header);
        assert_eq!(parsed.payload, &[1, 2, 3, 4]);
        assert_eq!(
            header.write_packet(&[1, 2, 3, 4, 5], &mut out),
            Err(RtpError::BufferTooSmall {
                needed: 17,
                available: 16
            })
        );
        let bad = RtpHeader {
            payload_type: 128,
            ..header
        };
        assert_eq!(bad.write(&mut out), Err(RtpError::BadPayloadType(128)));
    }

    #[test]
    fn sender_numbers_generated_packets_and_wraps() {
        let mut sender = RtpSender::new(7, 65534, u32::MAX - 100);
        let mut out = [0u8; 64];
        let mut seen = Vec::new();
        for i in 0..3 {
            let len = sender
                .next_packet(&[0; 160][..20], 160, i == 0, 0, &mut out)
                .unwrap();
            let parsed = RtpPacket::parse(&out[..len]).unwrap();
            seen.push(parsed.header);
        }
        assert_eq!(
            seen.iter().map(|h| h.sequence).collect::<Vec<_>>(),
            [65534, 65535, 0]
        );
        assert_eq!(
            seen.iter().map(|h| h.timestamp).collect::<Vec<_>>(),
            [u32::MAX - 100, 59, 219]
        );
        assert!(seen[0].marker && !seen[1].marker);
        assert!(seen.iter().all(|h| h.ssrc == 7));
        assert_eq!(
            sender.counters(),
            SenderCounters {
                packets: 3,
                octets: 60,
                rtp_timestamp: 379
            }
        );
    }

    #[test]
    fn explicit_timestamp_and_skip_leave_a_consistent_clock() {
        let mut sender = RtpSender::new(1, 10, 1000);
        let mut out = [0u8; 32];
        sender
            .packet_with_timestamp(&[0; 4], 1000, true, 101, &mut out)
            .unwrap();
        sender.skip(160);
        sender
            .packet_with_timestamp(&[0; 4], 1000, false, 101, &mut out)
            .unwrap();
        sender.skip(160);
        let len = sender
            .next_packet(&[0; 4], 160, false, 0, &mut out)
            .unwrap();
        let parsed = RtpPacket::parse(&out[..len]).unwrap();
        assert_eq!(parsed.header.sequence, 12);
        assert_eq!(parsed.header.timestamp, 1320);
    }

    fn rewrite(sender: &mut RtpSender, incoming: &[u8]) -> Option<RtpHeader> {
        let mut out = [0u8; 256];
        let packet = RtpPacket::parse(incoming).unwrap();
        sender
            .relay(
                &packet.header,
                packet.payload,
                packet.header.payload_type,
                &mut out,
            )
            .unwrap()
            .map(|len| RtpPacket::parse(&out[..len]).unwrap().header)
    }

    #[test]
    fn rewrite_maps_foreign_stream_onto_ours() {
        let mut sender = RtpSender::new(0xabcd, 500, 90_000);
        let mut out = [0u8; 64];
        sender
            .next_packet(&[0; 10], 160, true, 0, &mut out)
            .unwrap();

        let first = rewrite(&mut sender, &packet(false, 0, 40_000, 7, 99, &[1; 10])).unwrap();
        assert_eq!(first.ssrc, 0xabcd);
        assert_eq!(first.sequence, 501);
        assert_eq!(first.timestamp, 90_160);
        assert!(first.marker, "a new mapping flags the discontinuity");

        let second = rewrite(&mut sender, &packet(false, 0, 40_001, 167, 99, &[1; 10])).unwrap();
        assert_eq!((second.sequence, second.timestamp), (502, 90_320));
        assert!(!second.marker);
        // A foreign gap is real loss and passes through as a gap.
        let after_gap = rewrite(&mut sender, &packet(false, 0, 40_003, 487, 99, &[1; 10])).unwrap();
        assert_eq!((after_gap.sequence, after_gap.timestamp), (504, 90_640));
        // The reordered packet fills it.
        let late = rewrite(&mut sender, &packet(false, 0, 40_002, 327, 99, &[1; 10])).unwrap();
        assert_eq!((late.sequence, late.timestamp), (503, 90_480));
        assert_eq!(sender.next_sequence(), 505);
        assert_eq!(sender.next_timestamp(), 90_800);
        assert_eq!(sender.counters().packets, 5);
    }

    #[test]
    fn rewrite_continues_without_gap_when_the_far_side_restarts() {
        let mut sender = RtpSender::new(1, 0, 0);
        for i in 0..3u16 {
            rewrite(
                &mut sender,
                &packet(false, 8, 100 + i, 1000 + 160 * u32::from(i), 5, &[0; 160]),
            );
        }
        // New SSRC with unrelated numbering.
        let restarted = rewrite(&mut sender, &packet(false, 8, 9, 777_777, 6, &[0; 160])).unwrap();
        assert_eq!(restarted.sequence, 3);
        assert_eq!(restarted.timestamp, 480);
        assert!(restarted.marker);
        // Same SSRC but a jump past MAX_DROPOUT is a restart too.
        let jumped = rewrite(&mut sender, &packet(false, 8, 9000, 5, 6, &[0; 160])).unwrap();
        assert_eq!((jumped.sequence, jumped.timestamp), (4, 640));
        // A big jump backwards as well.
        let back = rewrite(&mut sender, &packet(false, 8, 1000, 5, 6, &[0; 160])).unwrap();
        assert_eq!(back.sequence, 5);
    }

    #[test]
    fn rewrite_renumbers_after_our_own_packets_and_drops_stragglers() {
        let mut sender = RtpSender::new(1, 0, 0);
        let mut out = [0u8; 64];
        rewrite(&mut sender, &packet(false, 0, 10, 0, 5, &[0; 4]));
        rewrite(&mut sender, &packet(false, 0, 11, 160, 5, &[0; 4]));
        // Two DTMF packets of our own at the event timestamp, clock skipped.
        let event_ts = sender.next_timestamp();
        for _ in 0..2 {
            sender
                .packet_with_timestamp(&[0; 4], event_ts, false, 101, &mut out)
                .unwrap();
            sender.skip(160);
        }
        // Foreign 12 and 13 were discarded by the bridge during the event.
        let resumed = rewrite(&mut sender, &packet(false, 0, 14, 640, 5, &[0; 4])).unwrap();
        assert_eq!(resumed.sequence, 4, "continues after our own packets");
        assert_eq!(resumed.timestamp, 640, "foreign timing kept");
        // A straggler from before the renumbering would collide: dropped.
        assert_eq!(
            rewrite(&mut sender, &packet(false, 0, 13, 480, 5, &[0; 4])),
            None
        );
        let next = rewrite(&mut sender, &packet(false, 0, 15, 800, 5, &[0; 4])).unwrap();
        assert_eq!((next.sequence, next.timestamp), (5, 800));
    }

    #[test]
    fn a_reordered_packet_is_relayed_however_long_the_stream_has_run() {
        // 40 000 packets (13 minutes of 20 ms audio) into the mapping, past
        // half the sequence space, a reordered packet is still relayed.
        let mut sender = RtpSender::new(1, 0, 0);
        for index in 0..40_000u16 {
            rewrite(
                &mut sender,
                &packet(false, 0, index, 160 * u32::from(index), 5, &[0; 4]),
            );
        }
        rewrite(
            &mut sender,
            &packet(false, 0, 40_001, 160 * 40_001, 5, &[0; 4]),
        );
        let late = rewrite(
            &mut sender,
            &packet(false, 0, 40_000, 160 * 40_000, 5, &[0; 4]),
        );
        assert_eq!(late.map(|header| header.sequence), Some(40_000));
    }

    #[test]
    fn rewrite_never_steps_back_into_time_we_covered() {
        let mut sender = RtpSender::new(1, 0, 0);
        let mut out = [0u8; 64];
        rewrite(&mut sender, &packet(false, 0, 10, 0, 5, &[0; 4]));
        // We generate 100 ms of our own audio while the foreign stream,
        // whose clock runs slow, only advanced 20 ms.
        for _ in 0..5 {
            sender
                .next_packet(&[0; 4], 160, false, 0, &mut out)
                .unwrap();
        }
        let resumed = rewrite(&mut sender, &packet(false, 0, 11, 160, 5, &[0; 4])).unwrap();
        assert_eq!(resumed.sequence, 6);
        assert_eq!(resumed.timestamp, 800, "continues our clock");
    }

    #[test]
    fn relay_refuses_small_buffers_without_state_change() {
        let mut sender = RtpSender::new(1, 0, 0);
        let mut out = [0u8; 13];
        let incoming = packet(false, 0, 1, 1, 1, &[0; 4]);
        let parsed = RtpPacket::parse(&incoming).unwrap();
        assert_eq!(
            sender.relay(&parsed.header, parsed.payload, 0, &mut out),
            Err(RtpError::BufferTooSmall {
                needed: 16,
                available: 13
            })
        );
        assert_eq!(sender.next_sequence(), 0);
        assert_eq!(sender.counters().packets, 0);
    }
}
