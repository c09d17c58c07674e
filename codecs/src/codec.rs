use std::fmt;

use crate::g711::{G711Decoder, G711Encoder, G711Law};
use crate::g722::{G722Decoder, G722Encoder};
use crate::l16::{L16Decoder, L16Encoder};
use crate::opus::{OpusDecoder, OpusEncoder};
use crate::speex::{SpeexDecoder, SpeexEncoder, SpeexMode};
use crate::{CodecError, SampleRate};

/// Largest payload any encoder here writes for one 20 ms frame (the Opus
/// limit for one frame, RFC 6716 §3.2.1). A buffer this long fits them all.
pub const MAX_PAYLOAD_LEN: usize = 1275;

/// The codecs the media bridge can decode and encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 µ-law.
    Pcmu,
    /// G.711 A-law.
    Pcma,
    /// G.722 at 64 kbit/s.
    G722,
    /// Opus, mono, 48 kHz.
    Opus,
    /// Speex narrowband (8 kHz).
    SpeexNarrow,
    /// Speex wideband (16 kHz).
    SpeexWide,
    /// 16-bit linear PCM, mono, 16 kHz, big-endian (RTP L16, RFC 3551
    /// §4.5.11): what AAC and FLV linear PCM become once decoded and cut
    /// into 20 ms frames.
    L16,
}

impl Codec {
    pub const ALL: [Codec; 7] = [
        Self::Pcmu,
        Self::Pcma,
        Self::G722,
        Self::Opus,
        Self::SpeexNarrow,
        Self::SpeexWide,
        Self::L16,
    ];

    /// Rate of the PCM the codec's encoder takes and its decoder gives.
    pub const fn sample_rate(self) -> SampleRate {
        match self {
            Self::Pcmu | Self::Pcma | Self::SpeexNarrow => SampleRate::Hz8000,
            Self::G722 | Self::SpeexWide | Self::L16 => SampleRate::Hz16000,
            Self::Opus => SampleRate::Hz48000,
        }
    }

    /// RTP timestamp clock rate. It equals the audio rate except for G.722,
    /// which RFC 3551 §4.5.2 fixes at 8000 for historical reasons although
    /// the audio is 16 kHz.
    pub const fn rtp_clock_rate(self) -> u32 {
        match self {
            Self::G722 => 8_000,
            other => other.sample_rate().hz(),
        }
    }

    /// Samples in one 20 ms PCM frame of this codec.
    pub const fn frame_samples(self) -> usize {
        self.sample_rate().frame_samples()
    }

    /// Whether the decoder conceals a lost frame from its own model of the
    /// signal (Opus, Speex) rather than by repeating and fading the last
    /// frame (G.711, G.722, L16).
    pub const fn has_native_concealment(self) -> bool {
        matches!(self, Self::Opus | Self::SpeexNarrow | Self::SpeexWide)
    }

    /// Largest payload this crate's encoder writes for one frame; encoders
    /// require an output buffer at least this long.
    pub const fn max_payload_len(self) -> usize {
        match self {
            // One byte per sample; G.722 packs two 16 kHz samples per byte.
            Self::Pcmu | Self::Pcma | Self::G722 => 160,
            Self::Opus => MAX_PAYLOAD_LEN,
            // Fixed-rate Speex at quality 8: 300 bits (15 kbit/s) and 556
            // bits (27.8 kbit/s) per frame, padded to whole bytes.
            Self::SpeexNarrow => 38,
            Self::SpeexWide => 70,
            // Two bytes per 16 kHz sample.
            Self::L16 => 640,
        }
    }

    /// The first `max_payload_len()` bytes of `out`, or an error.
    pub(crate) fn payload_out(self, out: &mut [u8]) -> Result<&mut [u8], CodecError> {
        let required = self.max_payload_len();
        let available = out.len();
        out.get_mut(..required).ok_or(CodecError::BufferTooSmall {
            required,
            available,
        })
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pcmu => "PCMU",
            Self::Pcma => "PCMA",
            Self::G722 => "G.722",
            Self::Opus => "Opus",
            Self::SpeexNarrow => "Speex narrowband",
            Self::SpeexWide => "Speex wideband",
            Self::L16 => "L16",
        })
    }
}

/// Turns one 20 ms PCM frame into one payload.
pub trait Encoder: Send {
    fn codec(&self) -> Codec;

    /// Encodes `pcm`, exactly `codec().frame_samples()` samples, into
    /// `payload`, which must hold at least `codec().max_payload_len()`
    /// bytes. Returns the payload length.
    fn encode(&mut self, pcm: &[i16], payload: &mut [u8]) -> Result<usize, CodecError>;

    /// How hard to work, 0-10, for the encoders that have a choice (Opus);
    /// the others ignore it.
    fn set_complexity(&mut self, _complexity: u8) {}
}

/// Turns one payload back into one 20 ms PCM frame, and stands in for lost
/// ones.
pub trait Decoder: Send {
    fn codec(&self) -> Codec;

    /// Decodes `payload` into `pcm`, which must hold at least
    /// `codec().frame_samples()` samples. Returns the samples written
    /// (always one frame).
    fn decode(&mut self, payload: &[u8], pcm: &mut [i16]) -> Result<usize, CodecError>;

    /// Writes one frame standing in for a lost payload. Opus and Speex
    /// extrapolate from their internal state; G.711, G.722 and L16 replay the
    /// last decoded frame, fading it out over three consecutive losses
    /// (60 ms) and giving silence after that.
    fn conceal(&mut self, pcm: &mut [i16]) -> Result<usize, CodecError>;

    /// Rebuilds the lost frame that preceded `next_payload` from the
    /// forward error correction data it carries. Only Opus carries any
    /// (in-band FEC); the other codecs conceal as [`Decoder::conceal`]. Call
    /// [`Decoder::decode`] with `next_payload` afterwards as usual.
    fn decode_fec(&mut self, _next_payload: &[u8], pcm: &mut [i16]) -> Result<usize, CodecError> {
        self.conceal(pcm)
    }
}

/// Builds the encoder for `codec`.
pub fn new_encoder(codec: Codec) -> Result<Box<dyn Encoder>, CodecError> {
    Ok(match codec {
        Codec::Pcmu => Box::new(G711Encoder::new(G711Law::MuLaw)),
        Codec::Pcma => Box::new(G711Encoder::new(G711Law::ALaw)),
        Codec::G722 => Box::new(G722Encoder::new()),
        Codec::Opus => Box::new(OpusEncoder::new()?),
        Codec::SpeexNarrow => Box::new(SpeexEncoder::new(SpeexMode::Narrowband)?),
        Codec::SpeexWide => Box::new(SpeexEncoder::new(SpeexMode::Wideband)?),
        Codec::L16 => Box::new(L16Encoder::new()),
    })
}

/// Builds the decoder for `codec`.
pub fn new_decoder(codec: Codec) -> Result<Box<dyn Decoder>, CodecError> {
    Ok(match codec {
        Codec::Pcmu => Box::new(G711Decoder::new(G711Law::MuLaw)),
        Codec::Pcma => Box::new(G711Decoder::new(G711Law::ALaw)),
        Codec::G722 => Box::new(G722Decoder::new()),
        Codec::Opus => Box::new(OpusDecoder::new()?),
        Codec::SpeexNarrow => Box::new(SpeexDecoder::new(SpeexMode::Narrowband)?),
        Codec::SpeexWide => Box::new(SpeexDecoder::new(SpeexMode::Wideband)?),
        Codec::L16 => Box::new(L16Decoder::new()),
    })
}
