//! Decoder → resampler → encoder for one direction of a call.

use std::time::Duration;

use crate::{
    new_decoder, new_encoder, Codec, CodecError, Decoder, Encoder, OpusDecoder, OpusEncoder,
    Resampler,
};

/// Converts payloads of one codec into payloads of another, one 20 ms
/// frame per call. Build one per direction per call.
///
/// Pass-through is not its job: when both sides use the same codec the
/// caller forwards payloads untouched, and [`Transcoder::new`] refuses.
pub struct Transcoder {
    decoder: Box<dyn Decoder>,
    resampler: Resampler,
    encoder: Box<dyn Encoder>,
    decoded: Vec<i16>,
    resampled: Vec<i16>,
}

impl Transcoder {
    pub fn new(from: Codec, to: Codec) -> Result<Self, CodecError> {
        if from == to {
            return Err(CodecError::SameCodec(from));
        }
        // Opus is coded at the other side's rate: no resampler runs, and the
        // encoder spends nothing on a band the source never had.
        let decoded_rate = match from {
            Codec::Opus => to.sample_rate(),
            _ => from.sample_rate(),
        };
        let encoded_rate = match to {
            Codec::Opus => from.sample_rate(),
            _ => to.sample_rate(),
        };
        Ok(Self {
            decoder: match from {
                Codec::Opus => Box::new(OpusDecoder::at_rate(decoded_rate)?),
                _ => new_decoder(from)?,
            },
            resampler: Resampler::new(decoded_rate, encoded_rate)?,
            encoder: match to {
                Codec::Opus => Box::new(OpusEncoder::at_rate(encoded_rate)?),
                _ => new_encoder(to)?,
            },
            decoded: vec![0; decoded_rate.frame_samples()],
            resampled: vec![0; encoded_rate.frame_samples()],
        })
    }

    pub fn from_codec(&self) -> Codec {
        self.decoder.codec()
    }

    pub fn to_codec(&self) -> Codec {
        self.encoder.codec()
    }

    /// Delay added by resampling (0 or 10 ms); the codecs' own look-ahead
    /// comes on top.
    pub fn resampling_delay(&self) -> Duration {
        self.resampler.delay()
    }

    /// Transcodes one payload into `out`, which must hold at least
    /// `to_codec().max_payload_len()` bytes. Returns the payload length.
    pub fn transcode(&mut self, payload_in: &[u8], out: &mut [u8]) -> Result<usize, CodecError> {
        self.decoder.decode(payload_in, &mut self.decoded)?;
        self.encode_decoded(out)
    }

    /// Encodes the source decoder's concealment of a lost frame into `out`.
    pub fn conceal_into(&mut self, out: &mut [u8]) -> Result<usize, CodecError> {
        self.decoder.conceal(&mut self.decoded)?;
        self.encode_decoded(out)
    }

    /// Encodes the lost frame before `next_payload`, rebuilt from that
    /// payload's forward error correction where the source codec has it
    /// (Opus), concealed otherwise. Transcode `next_payload` itself next.
    pub fn recover_into(
        &mut self,
        next_payload: &[u8],
        out: &mut [u8],
    ) -> Result<usize, CodecError> {
        self.decoder.decode_fec(next_payload, &mut self.decoded)?;
        self.encode_decoded(out)
    }

    /// The encoder's effort from now on (Opus; others ignore it).
    pub fn set_complexity(&mut self, complexity: u8) {
        self.encoder.set_complexity(complexity);
    }

    fn encode_decoded(&mut self, out: &mut [u8]) -> Result<usize, CodecError> {
        self.resampler.process(&self.decoded, &mut self.resampled)?;
        self.encoder.encode(&self.resampled, out)
    }
}
