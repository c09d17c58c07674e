//! A voice-like test signal, for benchmarks and tests that need codecs to
//! do realistic work rather than code a pure tone or silence.

use std::f64::consts::TAU;

use crate::Codec;

/// `frames` 20 ms frames of `codec`'s rate: three harmonics with a
/// syllable-rate envelope, plus a little noise (deterministic).
pub fn voice_like_frames(codec: Codec, frames: usize) -> Vec<Vec<i16>> {
    let rate = f64::from(codec.sample_rate().hz());
    let mut noise_state: u32 = 0x1234_5678;
    (0..frames * codec.frame_samples())
        .map(|n| {
            let t = n as f64 / rate;
            let envelope = 0.55 + 0.45 * (TAU * 4.0 * t).sin();
            let voice = [(220.0, 0.5), (660.0, 0.3), (1_760.0, 0.2)]
                .iter()
                .map(|&(frequency, weight)| weight * (TAU * frequency * t).sin())
                .sum::<f64>();
            noise_state ^= noise_state << 13;
            noise_state ^= noise_state >> 17;
            noise_state ^= noise_state << 5;
            let noise = f64::from(noise_state as i32) / f64::from(i32::MAX) * 0.02;
            ((envelope * voice + noise) * 12_000.0) as i16
        })
        .collect::<Vec<i16>>()
        .chunks(codec.frame_samples())
        .map(<[i16]>::to_vec)
        .collect()
}
