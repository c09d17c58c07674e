//! Fixed-ratio resampling of 20 ms frames between 8, 16 and 48 kHz.

use std::time::Duration;

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler as _};

use crate::{CodecError, SampleRate};

const MONO: usize = 1;
/// i16 full scale, for converting to and from rubato's ±1.0 floats.
const FULL_SCALE: f32 = 32_768.0;

/// Converts one 20 ms mono frame per call from one rate to another. Build
/// one per direction per call: it carries filter state from frame to frame.
///
/// Between different rates it is rubato's synchronous FFT resampler with
/// one FFT block per 20 ms frame. That delays the audio by half a frame,
/// 10 ms, whatever the pair of rates ([`Resampler::delay`]); smaller FFT
/// blocks would cut the delay but also pull the anti-aliasing cutoff down
/// into the telephone band (at 5 ms delay 3.4 kHz is already 10 dB down).
/// The passband is flat (within 0.2 dB) to 3.4 kHz when one side is 8 kHz
/// and to 7.5 kHz between 16 and 48 kHz; the anti-aliasing roll-off starts
/// just above (3.7 kHz is 10 dB down on 8 kHz sides). Between equal rates
/// it copies, with no delay.
pub struct Resampler {
    from: SampleRate,
    to: SampleRate,
    conversion: Conversion,
}

enum Conversion {
    Copy,
    Fft(Box<FftConversion>),
}

/// rubato's synchronous FFT resampler on one channel of `i16`, one fixed
/// chunk per call. [`crate::PcmFramer`] uses it too, for its other rates.
pub(crate) struct FftConversion {
    resampler: Fft<f32>,
    input: Vec<f32>,
    output: Vec<f32>,
}

impl Resampler {
    pub fn new(from: SampleRate, to: SampleRate) -> Result<Self, CodecError> {
        let conversion = if from == to {
            Conversion::Copy
        } else {
            let fft = FftConversion::new(from.hz(), to.hz(), from.frame_samples())?;
            // For these rates the chunks rubato derives are exactly one
            // frame each.
            if fft.input_frames() != from.frame_samples()
                || fft.output_frames() != to.frame_samples()
            {
                return Err(CodecError::FrameLength {
                    expected: to.frame_samples(),
                    actual: fft.output_frames(),
                });
            }
            Conversion::Fft(Box::new(fft))
        };
        Ok(Self {
            from,
            to,
            conversion,
        })
    }

    pub fn from_rate(&self) -> SampleRate {
        self.from
    }

    pub fn to_rate(&self) -> SampleRate {
        self.to
    }

    /// Delay the conversion adds, in output samples.
    pub fn delay_samples(&self) -> usize {
        match &self.conversion {
            Conversion::Copy => 0,
            Conversion::Fft(fft) => fft.resampler.output_delay(),
        }
    }

    /// Delay the conversion adds.
    pub fn delay(&self) -> Duration {
        let samples = self.delay_samples() as u64;
        Duration::from_micros(samples * 1_000_000 / u64::from(self.to.hz()))
    }

    /// Converts `input`, one frame at the source rate, into `output`, which
    /// must hold at least one frame at the target rate. Returns the samples
    /// written (one frame).
    pub fn process(&mut self, input: &[i16], output: &mut [i16]) -> Result<usize, CodecError> {
        self.from.check_frame(input)?;
        let output = self.to.frame_out(output)?;
        match &mut self.conversion {
            Conversion::Copy => output.copy_from_slice(input),
            Conversion::Fft(fft) => fft.process(input, output)?,
        }
        Ok(output.len())
    }
}

impl FftConversion {
    /// With both sides fixed rubato rounds `chunk_frames` up to whole FFT
    /// blocks, whose size follows from the ratio of the rates; the chunk
    /// sizes it picks are [`Self::input_frames`] and [`Self::output_frames`].
    pub(crate) fn new(from_hz: u32, to_hz: u32, chunk_frames: usize) -> Result<Self, CodecError> {
        let resampler = Fft::new(
            from_hz as usize,
            to_hz as usize,
            chunk_frames,
            MONO,
            FixedSync::Both,
        )?;
        Ok(Self {
            input: vec![0.0; resampler.input_frames_next()],
            output: vec![0.0; resampler.output_frames_next()],
            resampler,
        })
    }

    /// Samples each call takes.
    pub(crate) fn input_frames(&self) -> usize {
        self.input.len()
    }

    /// Samples each call gives.
    pub(crate) fn output_frames(&self) -> usize {
        self.output.len()
    }

    /// Converts `input`, [`Self::input_frames`] samples, into the first
    /// [`Self::output_frames`] samples of `output`.
    pub(crate) fn process(&mut self, input: &[i16], output: &mut [i16]) -> Result<(), CodecError> {
        for (float, &sample) in self.input.iter_mut().zip(input) {
            *float = f32::from(sample) / FULL_SCALE;
        }
        let input_frames = self.input.len();
        let output_frames = self.output.len();
        let adapter_in = InterleavedSlice::new(&self.input, MONO, input_frames)
            .map_err(|_| too_small(input_frames, self.input.len()))?;
        let mut adapter_out = InterleavedSlice::new_mut(&mut self.output, MONO, output_frames)
            .map_err(|_| too_small(output_frames, output_frames))?;
        self.resampler
            .process_into_buffer(&adapter_in, &mut adapter_out, None)?;
        for (sample, &float) in output.iter_mut().zip(&self.output) {
            // `as` saturates, so an overshooting filter output clips.
            *sample = (float * FULL_SCALE).round() as i16;
        }
        Ok(())
    }
}

/// The adapters wrap buffers sized in `Resampler::new`, so this cannot
/// happen; it is mapped rather than unwrapped all the same.
fn too_small(required: usize, available: usize) -> CodecError {
    CodecError::BufferTooSmall {
        required,
        available,
    }
}
