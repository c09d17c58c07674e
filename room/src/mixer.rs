//! N−1 mixing: what a point hears when it hears more than one other.
//!
//! Each speaking point that someone mixes (or that a recording takes)
//! gets a [`MixInput`]: its own jitter buffer, so every participant's clock
//! is played out at the room's 20 ms tick and a fast or slow far end only
//! ever gains or loses whole frames, then its decoder (with concealment and
//! Opus FEC) and a resampler to the room's mix rate. Each listener that
//! hears several points gets a [`MixOutput`]: a resampler from the mix rate
//! to its codec's rate and its encoder.
//!
//! On each tick the room sums every public speaker's frame once, and each
//! listener's frame is that sum minus its own voice plus whatever is
//! whispered to it only: O(N) per tick, not O(N²). The sum is kept in
//! `i32`; [`limit`] brings a frame that would clip back to full scale as a
//! whole rather than squaring off its peaks.
//!
//! The mix rate is the highest audio rate of the room's codecs (8, 16 or
//! 48 kHz), so a room of G.711 phones resamples nothing.

use dialtone_codecs::{
    new_decoder, new_encoder, Codec, CodecError, Decoder, Encoder, Resampler, SampleRate,
    MAX_FRAME_SAMPLES,
};

use crate::jitter::{JitterBuffer, JitterConfig, Playout};

/// What a point contributes to the room, and whom it is heard by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Heard by everyone, hears everyone else.
    #[default]
    Full,
    /// Hears everyone, heard by no one.
    ListenOnly,
    /// Hears everyone, heard only by the named point (a supervisor coaching
    /// an agent).
    Whisper(crate::PointId),
}

impl Role {
    /// Whether a point of this role is heard by `listener`.
    pub(crate) fn heard_by(self, listener: crate::PointId) -> bool {
        match self {
            Role::Full => true,
            Role::ListenOnly => false,
            Role::Whisper(target) => target == listener,
        }
    }
}

/// One speaker's audio on its way into the mix.
pub(crate) struct MixInput {
    jitter: JitterBuffer,
    decoder: Box<dyn Decoder>,
    resampler: Resampler,
    decoded: Vec<i16>,
    /// This tick's frame at the mix rate, when `active`.
    pub(crate) frame: Vec<i16>,
    /// Whether the speaker had audio (or a concealed frame) this tick.
    pub(crate) active: bool,
}

impl MixInput {
    pub(crate) fn new(codec: Codec, mix_rate: SampleRate) -> Result<MixInput, CodecError> {
        Ok(MixInput {
            jitter: JitterBuffer::new(JitterConfig::default()),
            decoder: new_decoder(codec)?,
            resampler: Resampler::new(codec.sample_rate(), mix_rate)?,
            decoded: vec![0; codec.frame_samples()],
            frame: vec![0; mix_rate.frame_samples()],
            active: false,
        })
    }

    /// Whether it decodes `codec` into a mix at `mix_rate`.
    pub(crate) fn fits(&self, codec: Codec, mix_rate: SampleRate) -> bool {
        self.decoder.codec() == codec && self.resampler.to_rate() == mix_rate
    }

    pub(crate) fn push(&mut self, sequence: u16, timestamp: u32, payload: &[u8]) {
        self.jitter.push(sequence, timestamp, payload);
    }

    /// Plays out this tick's frame into `frame`.
    pub(crate) fn tick(&mut self) {
        let decoded = match self.jitter.tick() {
            Playout::Frame { payload, .. } => self.decoder.decode(payload, &mut self.decoded),
            Playout::Lost {
                next_payload: Some(next),
            } => self.decoder.decode_fec(next, &mut self.decoded),
            Playout::Lost { next_payload: None } => self.decoder.conceal(&mut self.decoded),
            Playout::Empty => {
                self.active = false;
                return;
            }
        };
        self.active = decoded
            .and_then(|_| self.resampler.process(&self.decoded, &mut self.frame))
            .map_err(|error| tracing::debug!(%error, "frame not mixed"))
            .is_ok();
    }
}

/// One listener's way out of the mix: resampled to its codec, encoded.
pub(crate) struct MixOutput {
    resampler: Resampler,
    encoder: Box<dyn Encoder>,
    pcm: Vec<i16>,
}

impl MixOutput {
    pub(crate) fn new(codec: Codec, mix_rate: SampleRate) -> Result<MixOutput, CodecError> {
        Ok(MixOutput {
            resampler: Resampler::new(mix_rate, codec.sample_rate())?,
            encoder: new_encoder(codec)?,
            pcm: vec![0; codec.frame_samples()],
        })
    }

    pub(crate) fn fits(&self, codec: Codec, mix_rate: SampleRate) -> bool {
        self.encoder.codec() == codec && self.resampler.from_rate() == mix_rate
    }

    pub(crate) fn set_complexity(&mut self, complexity: u8) {
        self.encoder.set_complexity(complexity);
    }

    /// Encodes one frame of the mix (at the mix rate) into `out`.
    pub(crate) fn encode(&mut self, mix: &[i16], out: &mut [u8]) -> Result<usize, CodecError> {
        self.resampler.process(mix, &mut self.pcm)?;
        self.encoder.encode(&self.pcm, out)
    }
}

/// Scratch space for one tick's mixing, allocated once per room.
pub(crate) struct MixBuffers {
    /// The sum of every public speaker's frame.
    pub(crate) total: [i32; MAX_FRAME_SAMPLES],
    /// One listener's frame, summed.
    pub(crate) listener: [i32; MAX_FRAME_SAMPLES],
    /// One listener's frame, limited to `i16`.
    pub(crate) limited: [i16; MAX_FRAME_SAMPLES],
}

impl Default for MixBuffers {
    fn default() -> Self {
        MixBuffers {
            total: [0; MAX_FRAME_SAMPLES],
            listener: [0; MAX_FRAME_SAMPLES],
            limited: [0; MAX_FRAME_SAMPLES],
        }
    }
}

/// Adds `frame` into `sum`, sample by sample.
pub(crate) fn add(sum: &mut [i32], frame: &[i16]) {
    for (total, sample) in sum.iter_mut().zip(frame) {
        *total += i32::from(*sample);
    }
}

/// Takes `frame` out of `sum` again.
pub(crate) fn subtract(sum: &mut [i32], frame: &[i16]) {
    for (total, sample) in sum.iter_mut().zip(frame) {
        *total -= i32::from(*sample);
    }
}

/// `sum` as 16-bit audio. A frame whose peak would clip is scaled down as a
/// whole so its loudest sample just reaches full scale: the voices stay
/// undistorted, only quieter for that frame.
pub(crate) fn limit(sum: &[i32], out: &mut [i16]) {
    let peak = sum
        .iter()
        .map(|sample| sample.unsigned_abs())
        .max()
        .unwrap_or(0);
    let full_scale = i16::MAX as u32;
    if peak <= full_scale {
        for (out, sample) in out.iter_mut().zip(sum) {
            // In range: the peak says so.
            *out = *sample as i16;
        }
        return;
    }
    for (out, sample) in out.iter_mut().zip(sum) {
        let scaled = i64::from(*sample) * i64::from(full_scale) / i64::from(peak);
        *out = scaled as i16;
    }
}

/// The mix rate for codecs: the highest of their audio rates.
pub(crate) fn mix_rate(codecs: impl Iterator<Item = Codec>) -> SampleRate {
    codecs
        .map(Codec::sample_rate)
        .max_by_key(|rate| rate.hz())
        .unwrap_or(SampleRate::Hz8000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sum_in_range_passes_unchanged_and_a_loud_one_is_scaled_not_clipped() {
        let mut out = [0i16; 4];
        limit(&[1, -2, 32_767, -32_767], &mut out);
        assert_eq!(out, [1, -2, 32_767, -32_767]);
        limit(&[65_534, -65_534, 32_767, 0], &mut out);
        assert_eq!(out, [32_767, -32_767, 16_383, 0]);
    }

    #[test]
    fn n_minus_one_is_the_total_without_the_listener() {
        let mut total = [0i32; 3];
        add(&mut total, &[100, 200, 300]);
        add(&mut total, &[1, 2, 3]);
        subtract(&mut total, &[100, 200, 300]);
        assert_eq!(total, [1, 2, 3]);
    }

    #[test]
    fn the_mix_rate_is_the_highest_codec_rate() {
        assert_eq!(
            mix_rate([Codec::Pcmu, Codec::Pcma].into_iter()),
            SampleRate::Hz8000
        );
        assert_eq!(
            mix_rate([Codec::Pcmu, Codec::G722].into_iter()),
            SampleRate::Hz16000
        );
        assert_eq!(
            mix_rate([Codec::Opus, Codec::G722].into_iter()),
            SampleRate::Hz48000
        );
    }
}
