//! Test audio: tones made with sox, and recordings checked by frequency and level.
//!
//! Recordings are judged by their dominant frequency (a tone sent from one end must come out at
//! the other) rather than compared sample by sample, since codecs, jitter buffers and packet
//! timing change the samples but not the pitch. The analysis is `tests/rig/audio/analyze.py`
//! (compiled in, run with Debian's `/usr/bin/python3`, which has numpy).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context as _};

/// The analyzer script (committed at `tests/rig/audio/analyze.py`).
const ANALYZE_PY: &str = include_str!("../rig/audio/analyze.py");

/// Debian's python (package `python3-numpy` provides numpy for it; a pyenv or venv python on
/// `PATH` may lack numpy, hence the absolute path).
pub const PYTHON_BIN: &str = "/usr/bin/python3";

/// sox (Debian package `sox`).
pub const SOX_BIN: &str = "/usr/bin/sox";

/// Seconds of the start of a recording the analysis ignores (jitter buffer fill, silence
/// before the first packet).
pub const ANALYZE_SKIP_SECONDS: f64 = 0.5;

/// What [`analyze`] found in a WAV file.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioReport {
    /// Frequency with the most energy (FFT peak, resolution well under 1 Hz for a few seconds).
    pub dominant_hz: f64,
    /// RMS level in dBFS (a full-scale sine is about -3 dBFS; silence is very negative).
    pub rms_dbfs: f64,
    /// Share (0..=1) of the signal energy at the target frequency, averaged over 20 ms blocks
    /// (Goertzel, with the coarse bins of a 20 ms block: a tone within ~25 Hz of the target
    /// still scores high).
    pub target_share: f64,
    /// Seconds analysed (after the skipped start).
    pub duration_s: f64,
}

impl AudioReport {
    /// Whether the dominant frequency is within `tolerance_hz` of `hz`.
    pub fn dominant_near(&self, hz: f64, tolerance_hz: f64) -> bool {
        (self.dominant_hz - hz).abs() <= tolerance_hz
    }
}

/// Writes a mono 16-bit PCM WAV with a sine tone at half full scale (sox `synth`): the format
/// baresip's `aufile` source needs.
pub fn tone_wav(path: &Path, hz: f64, seconds: f64, rate: u32) -> anyhow::Result<()> {
    if !(hz > 0.0 && seconds > 0.0 && rate > 0) {
        bail!("tone_wav: bad parameters hz={hz} seconds={seconds} rate={rate}");
    }
    let out = Command::new(SOX_BIN)
        .args([
            "-n",
            "-r",
            &rate.to_string(),
            "-c",
            "1",
            "-b",
            "16",
            "-e",
            "signed",
        ])
        .arg(path)
        .args([
            "synth",
            &seconds.to_string(),
            "sine",
            &hz.to_string(),
            "vol",
            "0.5",
        ])
        .output()
        .with_context(|| format!("running {SOX_BIN} (apt-get install sox)"))?;
    if !out.status.success() {
        bail!(
            "sox failed ({}) writing {}: {}",
            out.status,
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Analyses a 16-bit PCM WAV file: dominant frequency, RMS level and the share of energy at
/// `target_hz`, ignoring the first [`ANALYZE_SKIP_SECONDS`].
pub fn analyze(path: &Path, target_hz: f64) -> anyhow::Result<AudioReport> {
    let out = Command::new(PYTHON_BIN)
        .arg("-c")
        .arg(ANALYZE_PY)
        .arg(path)
        .arg(target_hz.to_string())
        .arg(ANALYZE_SKIP_SECONDS.to_string())
        .output()
        .with_context(|| format!("running {PYTHON_BIN} (apt-get install python3-numpy)"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "analyze.py failed ({}) on {}: {}{}",
            out.status,
            path.display(),
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_report(&stdout).with_context(|| format!("analyze.py output for {}", path.display()))
}

/// Parses `file=F sr=8000 ch=1 dur=4.90s rms=-9.0dBFS dominant=1000.0Hz
/// goertzel_1000Hz_energy_ratio=1.00`.
fn parse_report(out: &str) -> anyhow::Result<AudioReport> {
    let field = |prefix: &str, suffix: &str| -> anyhow::Result<f64> {
        let token = out
            .split_whitespace()
            .find(|t| t.starts_with(prefix))
            .with_context(|| format!("no {prefix}… in {out:?}"))?;
        let value = token
            .split_once('=')
            .map(|(_, v)| v.trim_end_matches(suffix))
            .unwrap_or_default();
        value
            .parse()
            .with_context(|| format!("bad number in {token:?}"))
    };
    Ok(AudioReport {
        dominant_hz: field("dominant=", "Hz")?,
        rms_dbfs: field("rms=", "dBFS")?,
        target_share: field("goertzel_", "")?,
        duration_s: field("dur=", "s")?,
    })
}

/// Length in bytes of the audio data of a canonical PCM WAV file, if its RIFF header is
/// complete and agrees with the file length. libsndfile (baresip's `sndfile` module) fixes
/// the sizes in the header when it closes the file, so this tells a finished recording from
/// one still being written.
pub fn finished_wav_data_len(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let riff_len = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    if bytes.get(0..4)? != b"RIFF" || u64::from(riff_len) + 8 != bytes.len() as u64 {
        return None;
    }
    // Walk the chunks to the data chunk.
    let mut pos = 12usize;
    while pos + 8 <= bytes.len() {
        let id = bytes.get(pos..pos + 4)?;
        let len = u32::from_le_bytes(bytes.get(pos + 4..pos + 8)?.try_into().ok()?);
        if id == b"data" {
            return Some(u64::from(len));
        }
        pos = pos
            .checked_add(8)?
            .checked_add(usize::try_from(len).ok()?)?;
        pos += pos % 2;
    }
    None
}

/// The share (0..=1) of `pcm`'s energy at each of `tones` (Goertzel over 20 ms blocks, as
/// [`AudioReport::target_share`]), after the first [`ANALYZE_SKIP_SECONDS`]: a lone tone
/// scores about 1, each of two equal tones about 0.5, a tone that is not there about 0.
pub fn tone_shares(pcm: &[i16], rate: u32, tones: &[f64]) -> Vec<f64> {
    let block = (rate / 50) as usize;
    let skip = (ANALYZE_SKIP_SECONDS * f64::from(rate)) as usize;
    let blocks: Vec<&[i16]> = pcm
        .get(skip..)
        .unwrap_or_default()
        .chunks_exact(block)
        .collect();
    let energy: f64 = blocks
        .iter()
        .flat_map(|b| b.iter())
        .map(|s| f64::from(*s) * f64::from(*s))
        .sum();
    if energy <= 0.0 {
        return vec![0.0; tones.len()];
    }
    tones
        .iter()
        .map(|hz| {
            let coefficient = 2.0 * (std::f64::consts::TAU * hz / f64::from(rate)).cos();
            let power: f64 = blocks
                .iter()
                .map(|samples| {
                    let (mut previous, mut before) = (0.0f64, 0.0f64);
                    for sample in *samples {
                        let current = f64::from(*sample) + coefficient * previous - before;
                        before = previous;
                        previous = current;
                    }
                    previous * previous + before * before - coefficient * previous * before
                })
                .sum();
            2.0 * power / (block as f64 * energy)
        })
        .collect()
}

/// A 16-bit mono PCM WAV file's rate and samples.
pub fn read_wav(path: &Path) -> anyhow::Result<(u32, Vec<i16>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE",
        "{} is not a WAV file",
        path.display()
    );
    let mut at = 12;
    let mut rate = None;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let size = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]])
            as usize;
        let body = &bytes[at + 8..(at + 8 + size).min(bytes.len())];
        if id == b"fmt " && body.len() >= 16 {
            let channels = u16::from_le_bytes([body[2], body[3]]);
            let bits = u16::from_le_bytes([body[14], body[15]]);
            ensure!(
                channels == 1 && bits == 16,
                "{}: not 16-bit mono",
                path.display()
            );
            rate = Some(u32::from_le_bytes([body[4], body[5], body[6], body[7]]));
        } else if id == b"data" {
            let rate = rate.with_context(|| format!("{}: data before fmt", path.display()))?;
            let samples = body
                .chunks_exact(2)
                .map(|pair| i16::from_le_bytes([pair[0], pair[1]]))
                .collect();
            return Ok((rate, samples));
        }
        at += 8 + size + (size & 1);
    }
    bail!("{}: no data chunk", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_report_line() -> anyhow::Result<()> {
        let r = parse_report(
            "file=/tmp/x y.wav sr=8000 ch=1 dur=4.90s rms=-9.0dBFS dominant=1000.0Hz \
             goertzel_1000Hz_energy_ratio=0.97\n",
        )?;
        assert_eq!(r.dominant_hz, 1000.0);
        assert_eq!(r.rms_dbfs, -9.0);
        assert_eq!(r.target_share, 0.97);
        assert_eq!(r.duration_s, 4.9);
        assert!(r.dominant_near(1003.0, 5.0));
        assert!(parse_report("garbage").is_err());
        Ok(())
    }

    #[test]
    fn tone_round_trip() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let wav = dir.path().join("t.wav");
        tone_wav(&wav, 700.0, 1.5, 8000)?;
        assert_eq!(finished_wav_data_len(&wav), Some(24_000));
        let r = analyze(&wav, 700.0)?;
        assert!(r.dominant_near(700.0, 2.0), "{r:?}");
        assert!(r.target_share > 0.9, "{r:?}");
        assert!((r.rms_dbfs - -9.0).abs() < 1.0, "{r:?}");
        assert!((r.duration_s - 1.0).abs() < 0.01, "{r:?}");
        Ok(())
    }
}
