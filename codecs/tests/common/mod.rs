//! Signal helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::f64::consts::{PI, TAU};

use dialtone_codecs::{Codec, CodecError, Decoder, Encoder, SampleRate};

/// Test tone frequency and amplitude (-12 dBFS: loud, far from clipping).
pub const TONE_HZ: f64 = 1_000.0;
pub const TONE_AMPLITUDE: f64 = 8_192.0;

/// One frame of a sine, continuing from sample `start`.
pub fn sine_frame(rate: SampleRate, frequency: f64, amplitude: f64, start: usize) -> Vec<i16> {
    let hz = f64::from(rate.hz());
    (start..start + rate.frame_samples())
        .map(|n| (amplitude * (TAU * frequency * n as f64 / hz).sin()).round() as i16)
        .collect()
}

/// `count` consecutive frames of a sine.
pub fn sine_frames(
    rate: SampleRate,
    frequency: f64,
    amplitude: f64,
    count: usize,
) -> Vec<Vec<i16>> {
    (0..count)
        .map(|index| sine_frame(rate, frequency, amplitude, index * rate.frame_samples()))
        .collect()
}

pub fn rms(samples: &[i16]) -> f64 {
    let energy: f64 = samples.iter().map(|&s| f64::from(s).powi(2)).sum();
    (energy / samples.len() as f64).sqrt()
}

/// Level of `output` relative to `reference`, in dB.
pub fn gain_db(output: &[i16], reference: &[i16]) -> f64 {
    20.0 * (rms(output) / rms(reference)).log10()
}

/// |DFT|² of `samples` at `frequency` (Goertzel).
pub fn power_at(samples: &[f64], rate_hz: f64, frequency: f64) -> f64 {
    let coefficient = 2.0 * (TAU * frequency / rate_hz).cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &x in samples {
        let s0 = x + coefficient * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - coefficient * s1 * s2
}

fn hann_windowed(samples: &[i16]) -> Vec<f64> {
    let n = samples.len() as f64;
    samples
        .iter()
        .enumerate()
        .map(|(i, &s)| f64::from(s) * (0.5 - 0.5 * (2.0 * PI * i as f64 / n).cos()))
        .collect()
}

fn peak_in(samples: &[f64], rate_hz: f64, low: f64, high: f64, step: f64) -> f64 {
    let mut best = (low, f64::MIN);
    let mut frequency = low;
    while frequency <= high {
        let power = power_at(samples, rate_hz, frequency);
        if power > best.1 {
            best = (frequency, power);
        }
        frequency += step;
    }
    best.0
}

/// Frequency of the strongest component between 50 Hz and Nyquist: a
/// coarse scan over the first 100 ms, then a fine one around its peak over
/// all of `samples` (Hann-windowed, so about ±0.1 Hz for a clean tone).
pub fn dominant_frequency(samples: &[i16], rate: SampleRate) -> f64 {
    let rate_hz = f64::from(rate.hz());
    let short = hann_windowed(&samples[..(rate.hz() as usize / 10).min(samples.len())]);
    let coarse = peak_in(&short, rate_hz, 50.0, rate_hz / 2.0 - 50.0, 10.0);
    let long = hann_windowed(samples);
    peak_in(&long, rate_hz, coarse - 15.0, coarse + 15.0, 0.1)
}

/// Asserts that `output` is a tone at TONE_HZ (± 3 Hz) whose level is within
/// `min_db..=max_db` of `reference`.
pub fn assert_tone(
    what: &str,
    output: &[i16],
    reference: &[i16],
    rate: SampleRate,
    min_db: f64,
    max_db: f64,
) {
    let frequency = dominant_frequency(output, rate);
    let gain = gain_db(output, reference);
    assert!(
        (frequency - TONE_HZ).abs() <= 3.0,
        "{what}: dominant frequency {frequency:.1} Hz, gain {gain:.1} dB"
    );
    assert!(
        (min_db..=max_db).contains(&gain),
        "{what}: level {gain:.1} dB off the input (frequency {frequency:.1} Hz)"
    );
}

/// Frames to drop for "5 % loss": every twentieth, starting at `first`.
pub fn is_lost(frame_index: usize, first: usize) -> bool {
    frame_index >= first && (frame_index - first).is_multiple_of(20)
}

/// Encodes `frames` with `encoder` into payloads.
pub fn encode_all(
    encoder: &mut dyn Encoder,
    frames: &[Vec<i16>],
) -> Result<Vec<Vec<u8>>, CodecError> {
    let mut buffer = vec![0u8; encoder.codec().max_payload_len()];
    frames
        .iter()
        .map(|frame| {
            let len = encoder.encode(frame, &mut buffer)?;
            Ok(buffer[..len].to_vec())
        })
        .collect()
}

/// Decodes `payloads` (None = lost, concealed) into one PCM stream.
pub fn decode_all(
    decoder: &mut dyn Decoder,
    payloads: &[Option<Vec<u8>>],
) -> Result<Vec<i16>, CodecError> {
    let codec: Codec = decoder.codec();
    let mut frame = vec![0i16; codec.frame_samples()];
    let mut out = Vec::new();
    for payload in payloads {
        let written = match payload {
            Some(payload) => decoder.decode(payload, &mut frame)?,
            None => decoder.conceal(&mut frame)?,
        };
        assert_eq!(written, codec.frame_samples());
        out.extend_from_slice(&frame);
    }
    Ok(out)
}

/// A small deterministic xorshift generator for noise and garbage.
pub struct Xorshift(pub u64);

impl Xorshift {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }

    /// Roughly Gaussian noise (sum of uniforms) with the given RMS.
    pub fn noise_frame(&mut self, samples: usize, rms: f64) -> Vec<i16> {
        (0..samples)
            .map(|_| {
                let sum: f64 = (0..12)
                    .map(|_| (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
                    .sum();
                ((sum - 6.0) * rms).round().clamp(-32768.0, 32767.0) as i16
            })
            .collect()
    }
}
