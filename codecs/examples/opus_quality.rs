//! What the Opus encoder's complexity costs in quality on the gateway's
//! PCMU → Opus path: speech (8 kHz, 16-bit mono, raw) is coded as PCMU and
//! decoded, as a G.711 caller's audio reaches the room; that reference is
//! coded as Opus at 8 kHz (as the room does facing G.711) at each complexity
//! and decoded again. Per complexity it prints the mean payload size, the
//! encoder's time per 20 ms frame, and three distances from the reference:
//! waveform SNR and segmental SNR after the best alignment (Opus is not a
//! waveform coder, so these understate its quality), and the log-spectral
//! distance of 20 ms frames (256-point DFT, bins up to 3.4 kHz, frames
//! above -50 dBFS). Each decoded signal is also written next to the
//! reference, as raw 8 kHz s16le, for an external scorer (PESQ, ViSQOL).
//!
//! ```sh
//! espeak-ng -v en-us -s 150 -w /tmp/speech.wav "$(cat docs/speech.txt)"
//! sox /tmp/speech.wav -r 8000 -c 1 -b 16 -e signed-integer -t raw /tmp/speech8k.raw
//! cargo run --release -p dialtone-codecs --example opus_quality -- /tmp/speech8k.raw /tmp/opus-quality
//! ```

use std::error::Error;
use std::f64::consts::TAU;
use std::path::Path;
use std::time::Instant;

use dialtone_codecs::{
    linear_to_ulaw, ulaw_to_linear, Decoder as _, Encoder as _, OpusDecoder, OpusEncoder,
    OpusSettings, SampleRate,
};

const FRAME: usize = 160;
const DFT: usize = 256;
/// 3.4 kHz at 8 kHz sampling and 256 points.
const TOP_BIN: usize = 109;
/// The farthest alignment searched: Opus's look-ahead and more.
const MAX_LAG: usize = 400;

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(input), Some(out_dir)) = (args.next(), args.next()) else {
        return Err("usage: opus_quality <speech, 8 kHz s16le raw> <output folder>".into());
    };
    let bytes = std::fs::read(&input)?;
    let speech: Vec<i16> = bytes
        .chunks_exact(2)
        .map(|pair| i16::from_le_bytes([pair[0], pair[1]]))
        .collect();
    let frames = speech.len() / FRAME;
    if frames < 50 {
        return Err("need at least one second of speech".into());
    }
    let reference: Vec<i16> = speech[..frames * FRAME]
        .iter()
        .map(|&sample| ulaw_to_linear(linear_to_ulaw(sample)))
        .collect();
    let out_dir = Path::new(&out_dir);
    std::fs::create_dir_all(out_dir)?;
    write_raw(&out_dir.join("reference.raw"), &reference)?;
    println!(
        "{:.1} s of speech; PCMU-decoded reference against Opus at 8 kHz, 32 kbit/s\n",
        frames as f64 / 50.0
    );
    println!("| complexity | payload bytes | encode µs / frame | SNR dB | segmental SNR dB | log-spectral distance dB |");
    println!("|---|---|---|---|---|---|");
    for complexity in OpusSettings::COMPLEXITY_RANGE {
        let settings = OpusSettings {
            complexity,
            ..OpusSettings::default()
        };
        let mut encoder = OpusEncoder::with_settings(SampleRate::Hz8000, settings)?;
        let mut decoder = OpusDecoder::at_rate(SampleRate::Hz8000)?;
        let mut payload = [0u8; 1275];
        let mut pcm = [0i16; FRAME];
        let mut decoded = Vec::with_capacity(reference.len());
        let mut payload_bytes = 0usize;
        let mut encoding = std::time::Duration::ZERO;
        for frame in reference.chunks_exact(FRAME) {
            let started = Instant::now();
            let length = encoder.encode(frame, &mut payload)?;
            encoding += started.elapsed();
            payload_bytes += length;
            decoder.decode(&payload[..length], &mut pcm)?;
            decoded.extend_from_slice(&pcm);
        }
        write_raw(&out_dir.join(format!("opus_c{complexity}.raw")), &decoded)?;
        let lag = best_lag(&reference, &decoded);
        let aligned = &decoded[lag..];
        let reference = &reference[..aligned.len()];
        println!(
            "| {complexity} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} |",
            payload_bytes as f64 / frames as f64,
            encoding.as_secs_f64() * 1e6 / frames as f64,
            snr(reference, aligned),
            segmental_snr(reference, aligned),
            log_spectral_distance(reference, aligned),
        );
    }
    Ok(())
}

fn write_raw(path: &Path, samples: &[i16]) -> std::io::Result<()> {
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    std::fs::write(path, bytes)
}

/// The delay of `decoded` behind `reference` that correlates best.
fn best_lag(reference: &[i16], decoded: &[i16]) -> usize {
    let span = reference.len().saturating_sub(MAX_LAG);
    (0..MAX_LAG.min(decoded.len()))
        .max_by_key(|&lag| {
            let sum: f64 = (0..span.min(decoded.len() - lag))
                .map(|n| f64::from(reference[n]) * f64::from(decoded[n + lag]))
                .sum();
            sum as i64
        })
        .unwrap_or(0)
}

fn snr(reference: &[i16], decoded: &[i16]) -> f64 {
    let (signal, noise) =
        reference
            .iter()
            .zip(decoded)
            .fold((0.0, 0.0), |(signal, noise), (&r, &d)| {
                let (r, d) = (f64::from(r), f64::from(d));
                (signal + r * r, noise + (r - d) * (r - d))
            });
    10.0 * (signal / noise.max(1.0)).log10()
}

/// Mean of the frames' SNRs, each held to -10..35 dB, over frames with
/// speech in them (the usual definition; silence would weigh nothing).
fn segmental_snr(reference: &[i16], decoded: &[i16]) -> f64 {
    let values: Vec<f64> = reference
        .chunks_exact(FRAME)
        .zip(decoded.chunks_exact(FRAME))
        .filter(|(r, _)| level_dbfs(r) > -50.0)
        .map(|(r, d)| snr(r, d).clamp(-10.0, 35.0))
        .collect();
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

fn level_dbfs(frame: &[i16]) -> f64 {
    let power = frame.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / frame.len() as f64;
    10.0 * (power.max(1e-9) / f64::from(i16::MAX).powi(2)).log10()
}

/// Root mean square difference of the two log power spectra, averaged
/// over frames with speech in them.
fn log_spectral_distance(reference: &[i16], decoded: &[i16]) -> f64 {
    let window: Vec<f64> = (0..FRAME)
        .map(|n| 0.5 - 0.5 * (TAU * n as f64 / (FRAME - 1) as f64).cos())
        .collect();
    let spectrum = |frame: &[i16]| -> Vec<f64> {
        (1..TOP_BIN)
            .map(|bin| {
                let (mut re, mut im) = (0.0, 0.0);
                for (n, (&sample, w)) in frame.iter().zip(&window).enumerate() {
                    let phase = TAU * (bin * n) as f64 / DFT as f64;
                    re += f64::from(sample) * w * phase.cos();
                    im -= f64::from(sample) * w * phase.sin();
                }
                10.0 * (re * re + im * im + 1.0).log10()
            })
            .collect()
    };
    let distances: Vec<f64> = reference
        .chunks_exact(FRAME)
        .zip(decoded.chunks_exact(FRAME))
        .filter(|(r, _)| level_dbfs(r) > -50.0)
        .map(|(r, d)| {
            let (a, b) = (spectrum(r), spectrum(d));
            let mean = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / a.len() as f64;
            mean.sqrt()
        })
        .collect();
    distances.iter().sum::<f64>() / distances.len().max(1) as f64
}
