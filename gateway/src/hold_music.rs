//! Music on hold (`calls.hold_music`): a WAV file read once at start, played
//! in a loop to a far end the client holds with `sendonly`.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};

/// The rate the music is played at: it goes out as G.711 and the room
/// transcodes it to the far end's codec.
const RATE: u32 = 8000;

/// Reads a 16-bit PCM mono WAV at 8 kHz; anything else is refused with
/// how to convert it, rather than resampled behind the user's back.
pub fn load(path: &Path) -> anyhow::Result<Arc<[i16]>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("calls.hold_music {}", path.display()))?;
    parse(&bytes).with_context(|| {
        format!(
            "calls.hold_music {}: needs 16-bit PCM mono WAV at 8 kHz \
             (sox in.wav -r 8000 -c 1 -b 16 out.wav)",
            path.display()
        )
    })
}

fn parse(bytes: &[u8]) -> anyhow::Result<Arc<[i16]>> {
    if bytes.get(..4) != Some(b"RIFF") || bytes.get(8..12) != Some(b"WAVE") {
        bail!("not a RIFF/WAVE file");
    }
    let mut format = None;
    let mut rest = bytes.get(12..).unwrap_or_default();
    while rest.len() >= 8 {
        let (id, size) = (
            &rest[..4],
            u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]),
        );
        let size = usize::try_from(size)?;
        let body = rest.get(8..8 + size).context("a chunk runs past the end")?;
        match id {
            b"fmt " => {
                let field = |at: usize| -> anyhow::Result<u16> {
                    let pair = body.get(at..at + 2).context("fmt chunk too short")?;
                    Ok(u16::from_le_bytes([pair[0], pair[1]]))
                };
                let rate = body.get(4..8).context("fmt chunk too short")?;
                let rate = u32::from_le_bytes([rate[0], rate[1], rate[2], rate[3]]);
                format = Some((field(0)?, field(2)?, rate, field(14)?));
            }
            b"data" => {
                match format {
                    Some((1, 1, RATE, 16)) => {}
                    Some((format, channels, rate, bits)) => {
                        bail!("format {format}, {channels} channel(s), {rate} Hz, {bits} bits")
                    }
                    None => bail!("no fmt chunk before the data"),
                }
                let samples: Arc<[i16]> = body
                    .chunks_exact(2)
                    .map(|pair| i16::from_le_bytes([pair[0], pair[1]]))
                    .collect();
                if samples.is_empty() {
                    bail!("no audio in it");
                }
                return Ok(samples);
            }
            _ => {}
        }
        // Chunks are padded to an even length.
        rest = rest.get(8 + size + size % 2..).unwrap_or_default();
    }
    bail!("no data chunk")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(channels: u16, rate: u32, samples: &[i16]) -> Vec<u8> {
        let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let mut out = b"RIFF".to_vec();
        out.extend((36 + data.len() as u32).to_le_bytes());
        out.extend(b"WAVEfmt ");
        out.extend(16u32.to_le_bytes());
        out.extend(1u16.to_le_bytes());
        out.extend(channels.to_le_bytes());
        out.extend(rate.to_le_bytes());
        out.extend((rate * 2 * u32::from(channels)).to_le_bytes());
        out.extend((2 * channels).to_le_bytes());
        out.extend(16u16.to_le_bytes());
        out.extend(b"LIST");
        out.extend(3u32.to_le_bytes());
        out.extend([1, 2, 3, 0]);
        out.extend(b"data");
        out.extend((data.len() as u32).to_le_bytes());
        out.extend(data);
        out
    }

    #[test]
    fn an_8_khz_mono_wav_is_read_past_other_chunks() {
        let samples = [1, -2, 300, i16::MIN];
        assert_eq!(&*parse(&wav(1, 8000, &samples)).unwrap(), &samples);
    }

    #[test]
    fn other_formats_and_broken_files_are_refused() {
        assert!(parse(&wav(2, 8000, &[1, 2])).is_err());
        assert!(parse(&wav(1, 44100, &[1, 2])).is_err());
        assert!(parse(&wav(1, 8000, &[])).is_err());
        let whole = wav(1, 8000, &[1, 2, 3]);
        for end in 0..whole.len() - 2 {
            assert!(parse(&whole[..end]).is_err(), "cut at {end}");
        }
    }
}
