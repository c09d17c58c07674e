//! Packet-loss concealment for codecs that have none of their own.

/// Consecutive lost frames over which the replayed frame fades to silence.
const FADE_OUT_FRAMES: usize = 3;

/// Replays the last good frame for a lost one, fading it out linearly so
/// that a burst of losses ends in silence (after `FADE_OUT_FRAMES`, 60 ms)
/// instead of a looping buzz.
pub(crate) struct RepeatAndFade {
    last_frame: Vec<i16>,
    consecutive_losses: usize,
}

impl RepeatAndFade {
    pub(crate) fn new(frame_samples: usize) -> Self {
        Self {
            last_frame: vec![0; frame_samples],
            // Nothing decoded yet: a loss before the first frame is silence.
            consecutive_losses: FADE_OUT_FRAMES,
        }
    }

    /// Keeps a copy of a frame that was decoded from a real payload.
    pub(crate) fn remember(&mut self, frame: &[i16]) {
        self.last_frame.copy_from_slice(frame);
        self.consecutive_losses = 0;
    }

    /// Fills `out` (one frame) with the faded replay.
    pub(crate) fn conceal(&mut self, out: &mut [i16]) {
        let loss = self.consecutive_losses;
        self.consecutive_losses = loss.saturating_add(1);
        if loss >= FADE_OUT_FRAMES {
            out.fill(0);
            return;
        }
        // The gain falls from (1 - loss/N) to (1 - (loss+1)/N) across the
        // frame, so successive concealed frames join without a step.
        let total = (FADE_OUT_FRAMES * out.len()) as f32;
        let already_faded = (loss * out.len()) as f32;
        for (index, (sample, &last)) in out.iter_mut().zip(&self.last_frame).enumerate() {
            let gain = 1.0 - (already_faded + index as f32) / total;
            *sample = (f32::from(last) * gain) as i16;
        }
    }
}
