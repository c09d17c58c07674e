//! The room's RTMP point: frames from the client's publisher numbered like
//! RTP (AAC and linear PCM decoded and re-framed as 16 kHz L16), and the
//! room's packets to its players as FLV audio tags.

use dialtone_codecs::{linear_pcm_to_mono, AacDecoder, Codec, PcmFramer};
use dialtone_rtmp::{opus_head, AudioTag, AudioTagKind, Bytes, FlvAudioCodec};
use tracing::{debug, warn};

use crate::rtp::RtpHeader;

/// The payload type the room gives an RTMP client's frames; RTMP has none.
pub(crate) const RTMP_PAYLOAD_TYPE: u8 = 96;

/// An RTMP point: frames from its publisher are numbered like RTP for the
/// jitter buffer; the room's packets go to its players as FLV audio tags.
pub(crate) struct RtmpPoint {
    /// The FLV codec we send in.
    send: FlvAudioCodec,
    players: Vec<Player>,
    /// Where each outgoing tag is written before it is shared.
    tag: Vec<u8>,
    pub(crate) inbound: RtmpInbound,
}

struct Player {
    id: u64,
    /// Our RTP timestamp when it joined: its stream starts at 0 there.
    base: Option<u32>,
}

impl RtmpPoint {
    /// `None` for a codec FLV cannot carry.
    pub(crate) fn new(send: Codec) -> Option<RtmpPoint> {
        let send = match send {
            Codec::SpeexWide => FlvAudioCodec::Speex,
            Codec::Pcmu => FlvAudioCodec::G711MuLaw,
            Codec::Pcma => FlvAudioCodec::G711ALaw,
            Codec::Opus => FlvAudioCodec::Opus,
            _ => return None,
        };
        Some(RtmpPoint {
            send,
            players: Vec::new(),
            tag: Vec::new(),
            inbound: RtmpInbound {
                next_sequence: rand::random(),
                ..RtmpInbound::default()
            },
        })
    }

    /// A new player; what it must get first at timestamp 0 (Opus players
    /// need its sequence header).
    pub(crate) fn join(&mut self, player: u64) -> Option<Bytes> {
        self.players.push(Player {
            id: player,
            base: None,
        });
        if self.send != FlvAudioCodec::Opus {
            return None;
        }
        let head = opus_head(1, 0, 48_000);
        let header = AudioTag {
            codec: FlvAudioCodec::Opus,
            kind: AudioTagKind::SequenceHeader,
            payload: &head,
        };
        header.to_bytes().ok().map(Bytes::from)
    }

    pub(crate) fn leave(&mut self, player: u64) {
        self.players.retain(|joined| joined.id != player);
    }

    /// One of our packets as an FLV tag for every player: `emit` gets the
    /// player, its stream's timestamp (ms) and the tag, one buffer shared
    /// by all of them.
    pub(crate) fn send(
        &mut self,
        header: &RtpHeader,
        payload: &[u8],
        clock: u32,
        mut emit: impl FnMut(u64, u32, Bytes),
    ) {
        if self.players.is_empty() {
            return;
        }
        let tag = AudioTag {
            codec: self.send,
            kind: AudioTagKind::Frame,
            payload,
        };
        self.tag.clear();
        if tag.write_to(&mut self.tag).is_err() {
            return;
        }
        let data = Bytes::copy_from_slice(&self.tag);
        for player in &mut self.players {
            let base = *player.base.get_or_insert(header.timestamp);
            let units = u64::from(header.timestamp.wrapping_sub(base));
            let timestamp = (units * 1000 / u64::from(clock.max(1))) as u32;
            emit(player.id, timestamp, data.clone());
        }
    }
}

/// 20 ms of 16 kHz L16.
pub(crate) const L16_FRAME_BYTES: usize = 640;

/// Where a tag's 20 ms frames are.
#[derive(Clone, Copy)]
pub(crate) enum Payloads {
    /// In the tag, this many bytes each.
    Tag(usize),
    /// Decoded and re-framed, in [`RtmpInbound::decoded`].
    Decoded,
}

/// The 20 ms frames of one tag: their codec, where they are, and the RTP
/// numbering they get.
#[derive(Clone, Copy)]
pub(crate) struct InboundFrames {
    pub(crate) codec: Codec,
    pub(crate) payloads: Payloads,
    first_sequence: u16,
    first_timestamp: u32,
    units: u32,
}

impl InboundFrames {
    /// The header of frame `index` of the tag.
    pub(crate) fn header(&self, index: usize) -> RtpHeader {
        RtpHeader {
            marker: false,
            payload_type: RTMP_PAYLOAD_TYPE,
            sequence: self.first_sequence.wrapping_add(index as u16),
            timestamp: self
                .first_timestamp
                .wrapping_add(self.units.wrapping_mul(index as u32)),
            ssrc: 0,
        }
    }
}

/// The publisher's side of an RTMP point: decoders for what does not come
/// in 20 ms frames, and the numbering the jitter buffer needs.
#[derive(Default)]
pub(crate) struct RtmpInbound {
    next_sequence: u16,
    aac: Option<AacDecoder>,
    framer: Option<PcmFramer>,
    /// RTP time of the next re-framed L16 frame.
    next_l16_timestamp: Option<u32>,
    pcm: Vec<i16>,
    /// The L16 frames the last tag completed, back to back; kept between
    /// tags so decoding allocates nothing once it runs.
    pub(crate) decoded: Vec<u8>,
}

impl RtmpInbound {
    /// The 20 ms frames in one tag (decoded ones in [`Self::decoded`]);
    /// `None` for headers, codecs the bridge does not take, and tags that
    /// do not complete a frame.
    pub(crate) fn frames(
        &mut self,
        tag: &AudioTag<'_>,
        timestamp_ms: u32,
    ) -> Option<InboundFrames> {
        if tag.codec == FlvAudioCodec::Aac && tag.kind == AudioTagKind::SequenceHeader {
            self.start_aac(tag.payload);
            return None;
        }
        if tag.kind != AudioTagKind::Frame {
            return None;
        }
        let whole = Payloads::Tag(tag.payload.len().max(1));
        let (codec, payloads) = match tag.codec {
            FlvAudioCodec::Speex => (Codec::SpeexWide, whole),
            FlvAudioCodec::G711MuLaw => (Codec::Pcmu, Payloads::Tag(160)),
            FlvAudioCodec::G711ALaw => (Codec::Pcma, Payloads::Tag(160)),
            FlvAudioCodec::Opus => (Codec::Opus, whole),
            FlvAudioCodec::Aac => {
                self.decode_aac(tag.payload)?;
                (Codec::L16, Payloads::Decoded)
            }
            FlvAudioCodec::LinearPcm {
                sample_rate,
                bits_per_sample,
                channels,
            } => {
                self.decode_pcm(tag.payload, sample_rate, bits_per_sample, channels)?;
                (Codec::L16, Payloads::Decoded)
            }
            // Refused where the publish is taken (rtmp_streams.rs).
            FlvAudioCodec::Nellymoser { .. } => return None,
        };
        let clock = codec.rtp_clock_rate();
        let units = clock / 50;
        let from_tag = (u64::from(timestamp_ms) * u64::from(clock) / 1000) as u32;
        let (count, first_timestamp) = match payloads {
            Payloads::Tag(frame_bytes) => (tag.payload.len().div_ceil(frame_bytes), from_tag),
            Payloads::Decoded => {
                let first = *self.next_l16_timestamp.get_or_insert(from_tag);
                let count = self.decoded.len() / L16_FRAME_BYTES;
                self.next_l16_timestamp = Some(first.wrapping_add(units * count as u32));
                (count, first)
            }
        };
        if count == 0 {
            return None;
        }
        let first_sequence = self.next_sequence;
        self.next_sequence = first_sequence.wrapping_add(count as u16);
        Some(InboundFrames {
            codec,
            payloads,
            first_sequence,
            first_timestamp,
            units,
        })
    }

    fn start_aac(&mut self, config: &[u8]) {
        match AacDecoder::new(config) {
            Ok(decoder) => {
                self.framer = PcmFramer::new(decoder.sample_rate()).ok();
                self.aac = Some(decoder);
            }
            Err(error) => warn!(%error, "the RTMP client's AAC cannot be decoded"),
        }
    }

    fn decode_aac(&mut self, frame: &[u8]) -> Option<()> {
        self.pcm.clear();
        if let Err(error) = self.aac.as_mut()?.decode(frame, &mut self.pcm) {
            debug!(%error, "AAC frame not decoded");
            return None;
        }
        self.reframe()
    }

    fn decode_pcm(&mut self, payload: &[u8], rate: u32, bits: u8, channels: u8) -> Option<()> {
        if self.framer.as_ref().map(PcmFramer::input_rate) != Some(rate) {
            self.framer = PcmFramer::new(rate).ok();
        }
        self.pcm.clear();
        if let Err(error) = linear_pcm_to_mono(payload, bits, channels, &mut self.pcm) {
            debug!(%error, "linear PCM not taken");
            return None;
        }
        self.reframe()
    }

    /// Puts the whole 20 ms L16 frames the decoded PCM completes in
    /// [`Self::decoded`].
    fn reframe(&mut self) -> Option<()> {
        let framer = self.framer.as_mut()?;
        framer.push(&self.pcm).ok()?;
        self.decoded.clear();
        let mut frame = [0u8; L16_FRAME_BYTES];
        while let Some(length) = framer.pop_frame(&mut frame) {
            self.decoded.extend_from_slice(&frame[..length]);
        }
        Some(())
    }
}
