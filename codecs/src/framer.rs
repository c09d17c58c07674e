//! Re-framing of PCM that does not come in 20 ms frames (decoded AAC, FLV
//! linear PCM) into 20 ms frames of [`Codec::L16`] for the media room.

use crate::l16::write_l16;
use crate::resample::FftConversion;
use crate::{Codec, CodecError, SampleRate};

const OUTPUT_RATE: SampleRate = SampleRate::Hz16000;

/// Cuts mono PCM of any length per push, at one of
/// [`PcmFramer::INPUT_RATES`], into 20 ms frames of 16 kHz L16, keeping
/// what does not fill a frame for the next push. Build one per stream.
///
/// Other rates go through rubato's synchronous FFT resampler, one block
/// at a time, which delays the audio by half a block. A block is 20 ms of
/// input at every rate but two whose ratio to 16 kHz allows no block that
/// short: 40 ms at 11.025 kHz and 125 ms at FLV's 5.5 kHz (5512 Hz). From
/// 16 kHz nothing is resampled.
pub struct PcmFramer {
    input_rate: u32,
    resampling: Option<Box<Resampling>>,
    /// 16 kHz samples not yet popped as a frame.
    pending_output: Vec<i16>,
}

/// The resampler with the input it has not had yet.
struct Resampling {
    fft: FftConversion,
    /// Input-rate samples short of a whole resampler chunk.
    pending_input: Vec<i16>,
    /// One chunk's output, before it joins `pending_output`.
    chunk_output: Vec<i16>,
}

impl PcmFramer {
    /// The rates FLV linear PCM (5.5, 11, 22 and 44 kHz, plus 8 and 16 kHz
    /// for Nellymoser-era tags) and AAC-LC (every sampling frequency index
    /// of ISO/IEC 14496-3 Table 1.18) come at.
    pub const INPUT_RATES: [u32; 14] = [
        5_512, 7_350, 8_000, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000,
        64_000, 88_200, 96_000,
    ];

    pub fn new(input_rate: u32) -> Result<Self, CodecError> {
        if !Self::INPUT_RATES.contains(&input_rate) {
            return Err(CodecError::FramerInputRate { hz: input_rate });
        }
        let resampling = if input_rate == OUTPUT_RATE.hz() {
            None
        } else {
            let twenty_ms = (input_rate / 50) as usize;
            let fft = FftConversion::new(input_rate, OUTPUT_RATE.hz(), twenty_ms)?;
            Some(Box::new(Resampling {
                pending_input: Vec::with_capacity(2 * fft.input_frames()),
                chunk_output: vec![0; fft.output_frames()],
                fft,
            }))
        };
        Ok(Self {
            input_rate,
            resampling,
            pending_output: Vec::with_capacity(4 * OUTPUT_RATE.frame_samples()),
        })
    }

    pub fn input_rate(&self) -> u32 {
        self.input_rate
    }

    /// Takes mono samples at the input rate, any number of them.
    pub fn push(&mut self, pcm: &[i16]) -> Result<(), CodecError> {
        let Some(resampling) = self.resampling.as_deref_mut() else {
            self.pending_output.extend_from_slice(pcm);
            return Ok(());
        };
        resampling.pending_input.extend_from_slice(pcm);
        let chunk = resampling.fft.input_frames();
        let mut consumed = 0;
        while let Some(input) = resampling.pending_input.get(consumed..consumed + chunk) {
            resampling
                .fft
                .process(input, &mut resampling.chunk_output)?;
            self.pending_output
                .extend_from_slice(&resampling.chunk_output);
            consumed += chunk;
        }
        // One move of the remainder per push rather than one per chunk.
        resampling.pending_input.drain(..consumed);
        Ok(())
    }

    /// Writes the next 20 ms frame as an L16 payload of 640 bytes into
    /// `out` and returns its length; `None` while less than a frame is
    /// buffered, or if `out` is shorter than 640 bytes (the frame then
    /// stays queued).
    pub fn pop_frame(&mut self, out: &mut [u8]) -> Option<usize> {
        let frame = self.pending_output.get(..OUTPUT_RATE.frame_samples())?;
        let out = out.get_mut(..Codec::L16.max_payload_len())?;
        let written = write_l16(frame, out);
        self.pending_output.drain(..OUTPUT_RATE.frame_samples());
        Some(written)
    }
}

/// Sample layouts of FLV linear PCM (SoundFormat 0 and 3): unsigned 8-bit
/// or signed little-endian 16-bit, mono or interleaved stereo.
#[derive(Clone, Copy)]
enum LinearPcmLayout {
    Unsigned8Mono,
    Unsigned8Stereo,
    Signed16Mono,
    Signed16Stereo,
}

impl LinearPcmLayout {
    fn new(bits_per_sample: u8, channels: u8) -> Result<Self, CodecError> {
        Ok(match (bits_per_sample, channels) {
            (8, 1) => Self::Unsigned8Mono,
            (8, 2) => Self::Unsigned8Stereo,
            (16, 1) => Self::Signed16Mono,
            (16, 2) => Self::Signed16Stereo,
            _ => {
                return Err(CodecError::LinearPcmFormat {
                    bits_per_sample,
                    channels,
                })
            }
        })
    }

    fn bytes_per_frame(self) -> usize {
        match self {
            Self::Unsigned8Mono => 1,
            Self::Unsigned8Stereo | Self::Signed16Mono => 2,
            Self::Signed16Stereo => 4,
        }
    }
}

/// Appends FLV linear PCM (8-bit unsigned or 16-bit little-endian signed,
/// mono or stereo) to `out` as mono `i16`, stereo averaged. `payload` must
/// be whole sample frames.
pub fn linear_pcm_to_mono(
    payload: &[u8],
    bits_per_sample: u8,
    channels: u8,
    out: &mut Vec<i16>,
) -> Result<(), CodecError> {
    let layout = LinearPcmLayout::new(bits_per_sample, channels)?;
    let bytes_per_frame = layout.bytes_per_frame();
    if !payload.len().is_multiple_of(bytes_per_frame) {
        return Err(CodecError::LinearPcmLength {
            len: payload.len(),
            bytes_per_frame,
        });
    }
    match layout {
        LinearPcmLayout::Unsigned8Mono => out.extend(payload.iter().map(|&byte| widen_u8(byte))),
        LinearPcmLayout::Unsigned8Stereo => out.extend(
            payload
                .as_chunks::<2>()
                .0
                .iter()
                .map(|&[left, right]| average_stereo(widen_u8(left), widen_u8(right))),
        ),
        LinearPcmLayout::Signed16Mono => out.extend(
            payload
                .as_chunks::<2>()
                .0
                .iter()
                .map(|&bytes| i16::from_le_bytes(bytes)),
        ),
        LinearPcmLayout::Signed16Stereo => out.extend(payload.as_chunks::<4>().0.iter().map(
            |&[left_low, left_high, right_low, right_high]| {
                average_stereo(
                    i16::from_le_bytes([left_low, left_high]),
                    i16::from_le_bytes([right_low, right_high]),
                )
            },
        )),
    }
    Ok(())
}

/// 8-bit PCM is unsigned with silence at 128; shifted to 16-bit full scale.
fn widen_u8(sample: u8) -> i16 {
    (i16::from(sample) - 128) << 8
}

/// Down-mixes one stereo sample to mono.
pub(crate) fn average_stereo(left: i16, right: i16) -> i16 {
    // The mean of two i16 values is always an i16.
    ((i32::from(left) + i32::from(right)) / 2) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_pcm_layouts_become_mono_i16() {
        let mut out = Vec::new();
        linear_pcm_to_mono(&[0, 128, 255], 8, 1, &mut out).unwrap();
        assert_eq!(out, [-32768, 0, 32512]);

        out.clear();
        linear_pcm_to_mono(&[0, 255, 128, 128], 8, 2, &mut out).unwrap();
        assert_eq!(out, [-128, 0]);

        out.clear();
        linear_pcm_to_mono(&[0x34, 0x12, 0x00, 0x80], 16, 1, &mut out).unwrap();
        assert_eq!(out, [0x1234, i16::MIN]);

        out.clear();
        linear_pcm_to_mono(
            &[0xFF, 0x7F, 0xFF, 0x7F, 0x00, 0x80, 0x02, 0x00],
            16,
            2,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, [i16::MAX, -16383]);
    }

    #[test]
    fn unsupported_linear_pcm_is_an_error() {
        let mut out = Vec::new();
        for (bits, channels) in [(24, 1), (16, 0), (8, 3), (0, 2)] {
            assert!(matches!(
                linear_pcm_to_mono(&[0; 12], bits, channels, &mut out),
                Err(CodecError::LinearPcmFormat { .. })
            ));
        }
        for (payload, bits, channels) in [(&[0; 3][..], 16, 1), (&[0; 6], 16, 2), (&[0; 1], 8, 2)] {
            assert!(matches!(
                linear_pcm_to_mono(payload, bits, channels, &mut out),
                Err(CodecError::LinearPcmLength { .. })
            ));
        }
        assert!(out.is_empty());
    }

    #[test]
    fn sixteen_khz_passes_through_unchanged_in_whole_frames() {
        let mut framer = PcmFramer::new(16_000).unwrap();
        let pcm: Vec<i16> = (0..700).map(|n| n as i16).collect();
        framer.push(&pcm[..300]).unwrap();
        let mut out = [0u8; 640];
        assert_eq!(framer.pop_frame(&mut out), None);
        framer.push(&pcm[300..]).unwrap();
        assert_eq!(framer.pop_frame(&mut out[..639]), None, "short buffer");
        for frame in pcm.chunks_exact(320) {
            assert_eq!(framer.pop_frame(&mut out), Some(640));
            let decoded: Vec<i16> = out
                .as_chunks::<2>()
                .0
                .iter()
                .map(|&bytes| i16::from_be_bytes(bytes))
                .collect();
            assert_eq!(decoded, frame);
        }
        assert_eq!(framer.pop_frame(&mut out), None, "60 samples left");
    }

    #[test]
    fn resampling_blocks_are_20_ms_but_at_11025_and_5512_hz() {
        for rate in PcmFramer::INPUT_RATES {
            let framer = PcmFramer::new(rate).unwrap();
            let block_ms = framer.resampling.map_or(0, |resampling| {
                resampling.fft.input_frames() * 1000 / rate as usize
            });
            let expected = match rate {
                16_000 => 0,
                11_025 => 40,
                5_512 => 125,
                _ => 20,
            };
            assert_eq!(block_ms, expected, "{rate} Hz");
        }
    }

    #[test]
    fn other_rates_are_refused() {
        for hz in [0, 1, 44_101, 192_000] {
            assert!(matches!(
                PcmFramer::new(hz),
                Err(CodecError::FramerInputRate { hz: refused }) if refused == hz
            ));
        }
    }
}
