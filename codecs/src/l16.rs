//! L16: 16-bit linear PCM, mono, 16 kHz, as RTP carries it (RFC 3551
//! §4.5.11): each sample big-endian, 320 samples = 640 bytes per frame.
//!
//! This is how audio that does not come in 20 ms frames of a codec (AAC,
//! FLV linear PCM) enters the media room, once [`crate::PcmFramer`] has cut
//! it into 20 ms frames at 16 kHz.

use crate::concealment::RepeatAndFade;
use crate::{Codec, CodecError, Decoder, Encoder, SampleRate};

const BYTES_PER_SAMPLE: usize = 2;

/// Writes `pcm` into the start of `out` as big-endian L16. `out` must hold
/// at least `2 * pcm.len()` bytes (the callers check); returns the bytes
/// written.
pub(crate) fn write_l16(pcm: &[i16], out: &mut [u8]) -> usize {
    for (bytes, &sample) in out
        .as_chunks_mut::<BYTES_PER_SAMPLE>()
        .0
        .iter_mut()
        .zip(pcm)
    {
        *bytes = sample.to_be_bytes();
    }
    pcm.len() * BYTES_PER_SAMPLE
}

/// L16 encoder: 640 bytes per frame.
#[derive(Debug, Default)]
pub struct L16Encoder;

impl L16Encoder {
    pub fn new() -> Self {
        Self
    }
}

impl Encoder for L16Encoder {
    fn codec(&self) -> Codec {
        Codec::L16
    }

    fn encode(&mut self, pcm: &[i16], payload: &mut [u8]) -> Result<usize, CodecError> {
        SampleRate::Hz16000.check_frame(pcm)?;
        let out = Codec::L16.payload_out(payload)?;
        Ok(write_l16(pcm, out))
    }
}

/// L16 decoder; conceals losses by repeating and fading the last frame.
pub struct L16Decoder {
    concealment: RepeatAndFade,
}

impl L16Decoder {
    pub fn new() -> Self {
        Self {
            concealment: RepeatAndFade::new(SampleRate::Hz16000.frame_samples()),
        }
    }
}

impl Default for L16Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder for L16Decoder {
    fn codec(&self) -> Codec {
        Codec::L16
    }

    fn decode(&mut self, payload: &[u8], pcm: &mut [i16]) -> Result<usize, CodecError> {
        let out = SampleRate::Hz16000.frame_out(pcm)?;
        if payload.is_empty() {
            return Err(CodecError::EmptyPayload { codec: Codec::L16 });
        }
        // Every pair of bytes is a valid sample, so only the length can be
        // wrong.
        if payload.len() != Codec::L16.max_payload_len() {
            return Err(CodecError::PayloadLength {
                codec: Codec::L16,
                len: payload.len(),
            });
        }
        for (sample, &bytes) in out
            .iter_mut()
            .zip(payload.as_chunks::<BYTES_PER_SAMPLE>().0)
        {
            *sample = i16::from_be_bytes(bytes);
        }
        self.concealment.remember(out);
        Ok(out.len())
    }

    fn conceal(&mut self, pcm: &mut [i16]) -> Result<usize, CodecError> {
        let out = SampleRate::Hz16000.frame_out(pcm)?;
        self.concealment.conceal(out);
        Ok(out.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_big_endian_on_the_wire() {
        let mut pcm = vec![0i16; 320];
        pcm[0] = 0x1234;
        pcm[1] = -2;
        let mut payload = [0u8; 640];
        assert_eq!(L16Encoder::new().encode(&pcm, &mut payload).unwrap(), 640);
        assert_eq!(payload[..4], [0x12, 0x34, 0xFF, 0xFE]);

        let mut decoded = [0i16; 320];
        assert_eq!(
            L16Decoder::new().decode(&payload, &mut decoded).unwrap(),
            320
        );
        assert_eq!(decoded[..], pcm[..]);
    }
}
