//! ITU-T G.722 at 64 kbit/s (mode 1), through the pure-Rust `audio-codec`
//! implementation: 320 samples at 16 kHz ↔ 160 bytes per frame.

use audio_codec::g722::{Bitrate, G722Decoder as Inner722Decoder, G722Encoder as Inner722Encoder};
use audio_codec::{Decoder as _, Encoder as _};

use crate::concealment::RepeatAndFade;
use crate::{Codec, CodecError, Decoder, Encoder, SampleRate};

/// RTP carries G.722 unpacked, one 8-bit code per pair of 16 kHz samples
/// (RFC 3551 §4.5.2); the 8 kHz option is for non-RTP uses.
const PACKED: bool = false;
const EIGHT_KHZ_IO: bool = false;

/// `audio-codec` fails only when its output buffer is too small, which the
/// length checks before each call rule out; it is mapped all the same.
fn too_small(required: usize, available: usize) -> CodecError {
    CodecError::BufferTooSmall {
        required,
        available,
    }
}

/// G.722 encoder.
pub struct G722Encoder {
    inner: Inner722Encoder,
}

impl G722Encoder {
    pub fn new() -> Self {
        Self {
            inner: Inner722Encoder::with_options(Bitrate::Mode1_64000, EIGHT_KHZ_IO, PACKED),
        }
    }
}

impl Default for G722Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder for G722Encoder {
    fn codec(&self) -> Codec {
        Codec::G722
    }

    fn encode(&mut self, pcm: &[i16], payload: &mut [u8]) -> Result<usize, CodecError> {
        SampleRate::Hz16000.check_frame(pcm)?;
        let out = Codec::G722.payload_out(payload)?;
        let available = out.len();
        self.inner
            .encode_into(pcm, out)
            .map_err(|_| too_small(Codec::G722.max_payload_len(), available))
    }
}

/// G.722 decoder; conceals losses by repeating and fading the last frame.
/// After a loss the ADPCM state no longer matches the far encoder's; it
/// re-converges within a few milliseconds of the next payload.
pub struct G722Decoder {
    inner: Inner722Decoder,
    concealment: RepeatAndFade,
}

impl G722Decoder {
    pub fn new() -> Self {
        Self {
            inner: Inner722Decoder::with_options(Bitrate::Mode1_64000, PACKED, EIGHT_KHZ_IO),
            concealment: RepeatAndFade::new(SampleRate::Hz16000.frame_samples()),
        }
    }
}

impl Default for G722Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder for G722Decoder {
    fn codec(&self) -> Codec {
        Codec::G722
    }

    fn decode(&mut self, payload: &[u8], pcm: &mut [i16]) -> Result<usize, CodecError> {
        let out = SampleRate::Hz16000.frame_out(pcm)?;
        if payload.is_empty() {
            return Err(CodecError::EmptyPayload { codec: Codec::G722 });
        }
        // Every byte is a valid pair of sub-band codes, so only the length
        // can be wrong.
        if payload.len() != Codec::G722.max_payload_len() {
            return Err(CodecError::PayloadLength {
                codec: Codec::G722,
                len: payload.len(),
            });
        }
        let available = out.len();
        let written = self
            .inner
            .decode_into(payload, out)
            .map_err(|_| too_small(Codec::G722.frame_samples(), available))?;
        self.concealment.remember(out);
        Ok(written)
    }

    fn conceal(&mut self, pcm: &mut [i16]) -> Result<usize, CodecError> {
        let out = SampleRate::Hz16000.frame_out(pcm)?;
        self.concealment.conceal(out);
        Ok(out.len())
    }
}
