//! Decoder → resampler → encoder for one direction of a call.

use std::time::Duration;

use crate::{
    new_decoder, new_encoder, Codec, CodecError, Decoder, Encoder, OpusEncoder, Resampler,
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
        Ok(Self {
            decoder: new_decoder(from)?,
            resampler: Resampler::new(from.sample_rate(), to.sample_rate())?,
            encoder: match to {
                // Resampled audio holds nothing above the source's band.
                Codec::Opus => Box::new(OpusEncoder::for_source_rate(from.sample_rate())?),
                _ => new_encoder(to)?,
            },
            decoded: vec![0; from.frame_samples()],
            resampled: vec![0; to.frame_samples()],
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

    fn encode_decoded(&mut self, out: &mut [u8]) -> Result<usize, CodecError> {
        self.resampler.process(&self.decoded, &mut self.resampled)?;
        self.encoder.encode(&self.resampled, out)
    }
}
