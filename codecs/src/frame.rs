use std::time::Duration;

use crate::CodecError;

/// Length of every PCM frame and every encoded payload handled by the crate.
pub const FRAME_DURATION: Duration = Duration::from_millis(20);

/// Samples in the largest frame (20 ms at 48 kHz), for sizing PCM buffers.
pub const MAX_FRAME_SAMPLES: usize = SampleRate::Hz48000.frame_samples();

const FRAMES_PER_SECOND: u32 = 50;

/// The sample rates the media bridge works with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SampleRate {
    Hz8000,
    Hz16000,
    Hz48000,
}

impl SampleRate {
    pub const ALL: [SampleRate; 3] = [Self::Hz8000, Self::Hz16000, Self::Hz48000];

    pub const fn hz(self) -> u32 {
        match self {
            Self::Hz8000 => 8_000,
            Self::Hz16000 => 16_000,
            Self::Hz48000 => 48_000,
        }
    }

    /// Samples in one 20 ms mono frame: 160, 320 or 960.
    pub const fn frame_samples(self) -> usize {
        (self.hz() / FRAMES_PER_SECOND) as usize
    }

    /// Checks that `pcm` is exactly one frame at this rate.
    pub fn check_frame(self, pcm: &[i16]) -> Result<(), CodecError> {
        let expected = self.frame_samples();
        if pcm.len() == expected {
            Ok(())
        } else {
            Err(CodecError::FrameLength {
                expected,
                actual: pcm.len(),
            })
        }
    }

    /// The first frame's worth of `out`, or an error if `out` is shorter.
    pub(crate) fn frame_out(self, out: &mut [i16]) -> Result<&mut [i16], CodecError> {
        let required = self.frame_samples();
        let available = out.len();
        out.get_mut(..required).ok_or(CodecError::BufferTooSmall {
            required,
            available,
        })
    }
}
