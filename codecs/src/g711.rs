//! ITU-T G.711 µ-law and A-law, from the bit layout in the Recommendation
//! (the same logic as the classic Sun reference `g711.c`).

use crate::concealment::RepeatAndFade;
use crate::{Codec, CodecError, Decoder, Encoder, SampleRate};

/// µ-law encodes |x| + BIAS so that every segment boundary is a power of two.
const ULAW_BIAS: i32 = 0x84;
/// Largest magnitude µ-law represents once the bias is added (0x7FFF).
const ULAW_CLIP: i32 = 0x7FFF - ULAW_BIAS;

const ULAW_DECODE: [i16; 256] = {
    let mut table = [0; 256];
    let mut code = 0;
    while code < 256 {
        table[code] = ulaw_to_linear_const(code as u8);
        code += 1;
    }
    table
};

const ALAW_DECODE: [i16; 256] = {
    let mut table = [0; 256];
    let mut code = 0;
    while code < 256 {
        table[code] = alaw_to_linear_const(code as u8);
        code += 1;
    }
    table
};

/// Encodes a 16-bit linear sample as a G.711 µ-law code.
pub const fn linear_to_ulaw(sample: i16) -> u8 {
    let sign = if sample < 0 { 0x80 } else { 0x00 };
    let mut magnitude = (sample as i32).abs();
    if magnitude > ULAW_CLIP {
        magnitude = ULAW_CLIP;
    }
    magnitude += ULAW_BIAS;
    // With the bias, magnitude is in 0x84..=0x7FFF: its top set bit is bit
    // 7..=14, which is segment 0..=7.
    let segment = (31 - (magnitude as u32).leading_zeros()) as i32 - 7;
    let mantissa = (magnitude >> (segment + 3)) & 0x0F;
    // µ-law codes are transmitted inverted (so that silence is 0xFF).
    !((sign | (segment << 4) | mantissa) as u8)
}

/// Decodes a G.711 µ-law code to a 16-bit linear sample.
pub fn ulaw_to_linear(code: u8) -> i16 {
    ULAW_DECODE[usize::from(code)]
}

const fn ulaw_to_linear_const(code: u8) -> i16 {
    let code = !code;
    let segment = ((code >> 4) & 0x07) as i32;
    let mantissa = (code & 0x0F) as i32;
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << segment) - ULAW_BIAS;
    (if code & 0x80 != 0 {
        -magnitude
    } else {
        magnitude
    }) as i16
}

/// Encodes a 16-bit linear sample as a G.711 A-law code.
pub const fn linear_to_alaw(sample: i16) -> u8 {
    // A-law works on 13-bit samples.
    let value = (sample as i32) >> 3;
    // Even bits are inverted on the line (0x55) and the sign bit is set for
    // positive values, hence the two masks.
    let (mask, magnitude): (i32, i32) = if value >= 0 {
        (0xD5, value)
    } else {
        (0x55, -value - 1)
    };
    if magnitude > 0xFFF {
        return (0x7F ^ mask) as u8;
    }
    // Segment 0 and 1 share the step size; above, each doubles it.
    let segment = if magnitude < 0x20 {
        0
    } else {
        (31 - (magnitude as u32).leading_zeros()) as i32 - 4
    };
    let mantissa = if segment < 2 {
        (magnitude >> 1) & 0x0F
    } else {
        (magnitude >> segment) & 0x0F
    };
    (((segment << 4) | mantissa) ^ mask) as u8
}

/// Decodes a G.711 A-law code to a 16-bit linear sample.
pub fn alaw_to_linear(code: u8) -> i16 {
    ALAW_DECODE[usize::from(code)]
}

const fn alaw_to_linear_const(code: u8) -> i16 {
    let code = code ^ 0x55;
    let segment = ((code & 0x70) >> 4) as i32;
    let mut magnitude = ((code & 0x0F) as i32) << 4;
    // Reconstruct at the middle of the quantisation interval.
    magnitude += if segment == 0 { 0x08 } else { 0x108 };
    if segment > 1 {
        magnitude <<= segment - 1;
    }
    (if code & 0x80 != 0 {
        magnitude
    } else {
        -magnitude
    }) as i16
}

/// Which G.711 companding law.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum G711Law {
    /// µ-law (PCMU), used in North America and Japan.
    MuLaw,
    /// A-law (PCMA), used elsewhere.
    ALaw,
}

impl G711Law {
    fn codec(self) -> Codec {
        match self {
            Self::MuLaw => Codec::Pcmu,
            Self::ALaw => Codec::Pcma,
        }
    }
}

/// G.711 encoder: one code per 8 kHz sample, 160 bytes per frame.
pub struct G711Encoder {
    law: G711Law,
}

impl G711Encoder {
    pub fn new(law: G711Law) -> Self {
        Self { law }
    }
}

impl Encoder for G711Encoder {
    fn codec(&self) -> Codec {
        self.law.codec()
    }

    fn encode(&mut self, pcm: &[i16], payload: &mut [u8]) -> Result<usize, CodecError> {
        SampleRate::Hz8000.check_frame(pcm)?;
        let out = self.codec().payload_out(payload)?;
        let encode_sample = match self.law {
            G711Law::MuLaw => linear_to_ulaw,
            G711Law::ALaw => linear_to_alaw,
        };
        for (code, &sample) in out.iter_mut().zip(pcm) {
            *code = encode_sample(sample);
        }
        Ok(out.len())
    }
}

/// G.711 decoder; conceals losses by repeating and fading the last frame.
pub struct G711Decoder {
    law: G711Law,
    concealment: RepeatAndFade,
}

impl G711Decoder {
    pub fn new(law: G711Law) -> Self {
        Self {
            law,
            concealment: RepeatAndFade::new(SampleRate::Hz8000.frame_samples()),
        }
    }
}

impl Decoder for G711Decoder {
    fn codec(&self) -> Codec {
        self.law.codec()
    }

    fn decode(&mut self, payload: &[u8], pcm: &mut [i16]) -> Result<usize, CodecError> {
        let codec = self.codec();
        let out = SampleRate::Hz8000.frame_out(pcm)?;
        if payload.is_empty() {
            return Err(CodecError::EmptyPayload { codec });
        }
        // Every byte is a valid code, so the length is the only thing a
        // damaged G.711 payload can get wrong.
        if payload.len() != out.len() {
            return Err(CodecError::PayloadLength {
                codec,
                len: payload.len(),
            });
        }
        let table = match self.law {
            G711Law::MuLaw => &ULAW_DECODE,
            G711Law::ALaw => &ALAW_DECODE,
        };
        for (sample, &code) in out.iter_mut().zip(payload) {
            *sample = table[usize::from(code)];
        }
        self.concealment.remember(out);
        Ok(out.len())
    }

    fn conceal(&mut self, pcm: &mut [i16]) -> Result<usize, CodecError> {
        let out = SampleRate::Hz8000.frame_out(pcm)?;
        self.concealment.conceal(out);
        Ok(out.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ulaw_code_survives_decode_then_encode() {
        for code in 0..=255u8 {
            let back = linear_to_ulaw(ulaw_to_linear(code));
            // 0x7F is µ-law's "negative zero": it decodes to 0, which
            // encodes as the positive zero 0xFF.
            let expected = if code == 0x7F { 0xFF } else { code };
            assert_eq!(back, expected, "µ-law code {code:#04x}");
        }
    }

    #[test]
    fn every_alaw_code_survives_decode_then_encode() {
        for code in 0..=255u8 {
            assert_eq!(
                linear_to_alaw(alaw_to_linear(code)),
                code,
                "A-law code {code:#04x}"
            );
        }
    }

    #[test]
    fn ulaw_matches_reference_values() {
        // Values from the G.711 µ-law decoding table.
        let decoded = [
            (0xFF, 0),
            (0x7F, 0),
            (0xFE, 8),
            (0x7E, -8),
            (0xF0, 120),
            (0xEF, 132),
            (0x80, 32124),
            (0x00, -32124),
            (0xC0, 1884),
            (0x40, -1884),
        ];
        for (code, linear) in decoded {
            assert_eq!(ulaw_to_linear(code), linear, "µ-law code {code:#04x}");
        }
        let encoded = [
            (0, 0xFF),
            (-1, 0x7F),
            (i16::MAX, 0x80),
            (i16::MIN, 0x00),
            (1000, 0xCE),
            (-1000, 0x4E),
        ];
        for (linear, code) in encoded {
            assert_eq!(linear_to_ulaw(linear), code, "linear {linear}");
        }
    }

    #[test]
    fn alaw_matches_reference_values() {
        let decoded = [
            (0xD5, 8),
            (0x55, -8),
            (0xAA, 32256),
            (0x2A, -32256),
            (0xD4, 24),
            (0xC5, 264),
            (0x80, 5504),
        ];
        for (code, linear) in decoded {
            assert_eq!(alaw_to_linear(code), linear, "A-law code {code:#04x}");
        }
        let encoded = [
            (0, 0xD5),
            (-1, 0x55),
            (i16::MAX, 0xAA),
            (i16::MIN, 0x2A),
            (1000, 0xFA),
            (-1000, 0x7A),
        ];
        for (linear, code) in encoded {
            assert_eq!(linear_to_alaw(linear), code, "linear {linear}");
        }
    }

    /// Half the quantisation step of the segment a code belongs to, in
    /// 16-bit units: steps double from segment to segment.
    fn half_step(segment: u8) -> i32 {
        4 << segment
    }

    #[test]
    fn every_linear_sample_decodes_within_half_a_step() {
        // Exhaustive over all 65536 inputs: each decodes to the middle of
        // its quantisation interval, except beyond the largest level, where
        // the law clips.
        for sample in i16::MIN..=i16::MAX {
            let sample_value = i32::from(sample);

            let ulaw = linear_to_ulaw(sample);
            let decoded = i32::from(ulaw_to_linear(ulaw));
            let allowed = half_step((!ulaw >> 4) & 7).max(sample_value.abs() - 32124);
            assert!((decoded - sample_value).abs() <= allowed, "µ-law {sample}");

            let alaw = linear_to_alaw(sample);
            let decoded = i32::from(alaw_to_linear(alaw));
            let segment = ((alaw ^ 0x55) >> 4) & 7;
            // A-law's first two segments share one step size.
            let allowed = half_step(segment.max(1));
            assert!((decoded - sample_value).abs() <= allowed, "A-law {sample}");
        }
    }
}
