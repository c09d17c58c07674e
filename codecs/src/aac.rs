//! AAC-LC decoding (ISO/IEC 14496-3) through Symphonia's pure-Rust decoder,
//! for the AAC that RTMP publishers (ffmpeg, encoders behind Flash Media
//! Live Encoder) send: one AudioSpecificConfig up front, then raw access
//! units of 1024 samples, mono or stereo.
//!
//! AAC frames are not 20 ms long (1024 samples is 21.3 ms at 48 kHz and
//! 23.2 ms at 44.1 kHz), so this is not a [`crate::Decoder`]: it appends
//! mono PCM at the stream's own rate, and [`crate::PcmFramer`] cuts that
//! into 20 ms frames of [`crate::Codec::L16`].

use symphonia_codec_aac::AacDecoder as SymphoniaAacDecoder;
use symphonia_core::audio::{Channels, Position};
use symphonia_core::codecs::audio::well_known::CODEC_ID_AAC;
use symphonia_core::codecs::audio::{AudioCodecParameters, AudioDecoder, AudioDecoderOptions};
use symphonia_core::packet::PacketRef;
use symphonia_core::units::{Duration, Timestamp};

use crate::framer::average_stereo;
use crate::CodecError;

/// Audio object type of AAC Low Complexity (ISO/IEC 14496-3 Table 1.17).
const OBJECT_TYPE_AAC_LC: u8 = 2;
/// Object type value that announces a 6-bit extended type after it.
const OBJECT_TYPE_ESCAPE: u8 = 31;
/// Sampling frequency index that announces an explicit 24-bit rate.
const EXPLICIT_RATE_INDEX: u8 = 15;
/// Rates of the sampling frequency indexes 0 to 12 (Table 1.18); 13 and 14
/// are reserved.
const SAMPLE_RATES: [u32; 13] = [
    96_000, 88_200, 64_000, 48_000, 44_100, 32_000, 24_000, 22_050, 16_000, 12_000, 11_025, 8_000,
    7_350,
];

/// What a 2-byte AAC-LC AudioSpecificConfig says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LcConfig {
    sample_rate: u32,
    channels: u8,
}

/// Reads the leading fields of an AudioSpecificConfig (ISO/IEC 14496-3
/// §1.6.2.1) and the GASpecificConfig flags after them, refusing anything
/// but AAC-LC in mono or stereo with 1024-sample frames. Bytes after the
/// LC config (a backward-compatible SBR or PS extension) are ignored, so
/// such a stream decodes as its AAC-LC core.
fn parse_lc_config(config: &[u8]) -> Result<LcConfig, CodecError> {
    let [first, second, ..] = *config else {
        return Err(CodecError::AacConfig(format!(
            "{} byte(s) long where at least 2 are needed",
            config.len()
        )));
    };
    let object_type = first >> 3;
    if object_type != OBJECT_TYPE_AAC_LC {
        let described = match object_type {
            0 => "none".to_owned(),
            1 => "AAC Main".to_owned(),
            3 => "AAC SSR".to_owned(),
            4 => "AAC LTP".to_owned(),
            5 => "SBR (HE-AAC)".to_owned(),
            29 => "PS (HE-AAC v2)".to_owned(),
            OBJECT_TYPE_ESCAPE => "an extended object type".to_owned(),
            other => format!("object type {other}"),
        };
        return Err(CodecError::AacConfig(format!(
            "{described} is not AAC-LC (object type {OBJECT_TYPE_AAC_LC})"
        )));
    }
    let rate_index = ((first & 0x07) << 1) | (second >> 7);
    if rate_index == EXPLICIT_RATE_INDEX {
        return Err(CodecError::AacConfig(
            "an explicit sampling rate is not supported".to_owned(),
        ));
    }
    let sample_rate = *SAMPLE_RATES.get(usize::from(rate_index)).ok_or_else(|| {
        CodecError::AacConfig(format!("reserved sampling frequency index {rate_index}"))
    })?;
    let channels = (second >> 3) & 0x0F;
    if !(1..=2).contains(&channels) {
        return Err(CodecError::AacConfig(format!(
            "channel configuration {channels} is not mono (1) or stereo (2)"
        )));
    }
    // The 960-sample variant is for DAB+; Symphonia decodes 1024 only.
    let frame_length_flag = second & 0x04 != 0;
    if frame_length_flag {
        return Err(CodecError::AacConfig(
            "960-sample frames are not supported".to_owned(),
        ));
    }
    Ok(LcConfig {
        sample_rate,
        channels,
    })
}

/// Decodes raw AAC-LC access units to mono PCM at the stream's rate.
pub struct AacDecoder {
    inner: SymphoniaAacDecoder,
    /// Kept to rebuild `inner` after a bad frame (see `decode`).
    parameters: AudioCodecParameters,
    config: LcConfig,
    /// Decoded samples interleaved by channel, before the down-mix; kept to
    /// reuse its allocation.
    interleaved: Vec<i16>,
}

impl AacDecoder {
    /// Builds a decoder from the stream's AudioSpecificConfig (the FLV AAC
    /// sequence header's payload, or built from an ADTS header). Refuses
    /// anything but AAC-LC, mono or stereo, 1024-sample frames.
    pub fn new(audio_specific_config: &[u8]) -> Result<Self, CodecError> {
        let config = parse_lc_config(audio_specific_config)?;
        let positions = match config.channels {
            1 => Position::FRONT_CENTER,
            _ => Position::FRONT_LEFT | Position::FRONT_RIGHT,
        };
        // The fields are handed over already parsed rather than as extra
        // data, so that Symphonia decodes what was checked above.
        let mut parameters = AudioCodecParameters::new();
        parameters
            .for_codec(CODEC_ID_AAC)
            .with_sample_rate(config.sample_rate)
            .with_channels(Channels::Positioned(positions));
        let inner = SymphoniaAacDecoder::try_new(&parameters, &AudioDecoderOptions::default())?;
        Ok(Self {
            inner,
            parameters,
            config,
            interleaved: Vec::new(),
        })
    }

    /// Rate of the PCM [`AacDecoder::decode`] gives.
    pub fn sample_rate(&self) -> u32 {
        self.config.sample_rate
    }

    /// Decodes one raw access unit (no ADTS header) and appends its 1024
    /// samples to `out`, stereo averaged down to mono.
    pub fn decode(&mut self, raw_frame: &[u8], out: &mut Vec<i16>) -> Result<(), CodecError> {
        if raw_frame.is_empty() {
            return Err(CodecError::AacFrame("empty frame"));
        }
        // The AAC decoder reads only the packet's data; track and timing
        // are for demuxers.
        let packet = PacketRef::new(0, Timestamp::ZERO, Duration::ZERO, raw_frame);
        if let Err(error) = self.inner.decode_ref(&packet) {
            // Symphonia sets up its channel elements from the first frame
            // that names them and keeps them even when the frame then
            // fails, so one corrupt frame could make it refuse every good
            // one after; a fresh decoder starts clean.
            self.inner =
                SymphoniaAacDecoder::try_new(&self.parameters, &AudioDecoderOptions::default())?;
            return Err(error.into());
        }
        // The buffer has the channels handed to Symphonia in `new`.
        self.inner
            .last_decoded()
            .copy_to_vec_interleaved::<i16>(&mut self.interleaved);
        match self.config.channels {
            1 => out.extend_from_slice(&self.interleaved),
            _ => out.extend(
                self.interleaved
                    .as_chunks::<2>()
                    .0
                    .iter()
                    .map(|&[left, right]| average_stereo(left, right)),
            ),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_usual_lc_configs() {
        // 44.1 kHz stereo and 48 kHz mono, as ffmpeg writes them.
        assert_eq!(
            parse_lc_config(&[0x12, 0x10]).unwrap(),
            LcConfig {
                sample_rate: 44_100,
                channels: 2
            }
        );
        assert_eq!(
            parse_lc_config(&[0x11, 0x88]).unwrap(),
            LcConfig {
                sample_rate: 48_000,
                channels: 1
            }
        );
    }

    #[test]
    fn refuses_what_is_not_lc_mono_or_stereo() {
        for (config, expected) in [
            (&[0x12][..], "1 byte(s) long"),
            (&[0x2B, 0x92, 0x08, 0x00], "SBR (HE-AAC) is not AAC-LC"),
            (&[0xEB, 0x10], "PS (HE-AAC v2)"),
            (&[0x0A, 0x10], "AAC Main"),
            (&[0xF8, 0x00], "extended object type"),
            (&[0x17, 0x90], "explicit sampling rate"),
            (&[0x16, 0x90], "reserved sampling frequency index 13"),
            (&[0x12, 0x00], "channel configuration 0"),
            (&[0x12, 0x30], "channel configuration 6"),
            (&[0x12, 0x14], "960-sample"),
        ] {
            let error = AacDecoder::new(config).err().unwrap().to_string();
            assert!(error.contains(expected), "{config:02X?}: {error}");
        }
    }
}
