//! The FLV audio tag header that starts the body of every RTMP audio message.
//!
//! Two layouts share the first byte's high nibble (SoundFormat):
//!
//! - legacy (FLV 10.1, E.4.2): `SoundFormat:4 SoundRate:2 SoundSize:1
//!   SoundType:1`, then for AAC one `AACPacketType` byte (0 = sequence header
//!   holding the AudioSpecificConfig, 1 = raw frame), then the codec payload;
//! - enhanced RTMP (SoundFormat 9 = ExHeader): the low nibble is the
//!   `AudioPacketType` (0 = SequenceStart, 1 = CodedFrames, 2 = SequenceEnd),
//!   then a FourCC naming the codec (`Opus`), then the payload. Opus's
//!   SequenceStart carries the `OpusHead` identification header (RFC 7845).
//!
//! # Sample rates
//!
//! The rate bits can only say 5.5, 11, 22 or 44 kHz, so several codecs carry
//! their rate elsewhere, and [`AudioTag::parse`] reports what the codec implies
//! rather than the bits:
//!
//! - G.711 is 8 kHz (the FLV spec fixes it; ffmpeg refuses other rates).
//! - Speex is 16 kHz wideband: the FLV spec fixes it and writers set the rate
//!   bits arbitrarily (Flash writes 0 = "5.5 kHz", ffmpeg 1 = "11 kHz"), so the
//!   bits are ignored. A publisher sending narrowband (8 kHz) Speex frames is
//!   still decodable as 16 kHz: Speex wideband is embedded, its frames are a
//!   narrowband frame plus a high-band layer, and the wideband decoder decodes
//!   a frame without that layer as band-limited 16 kHz audio. (ffmpeg 5.1
//!   refuses to put anything but 16 kHz Speex into FLV.)
//! - AAC's rate is in the AudioSpecificConfig of its sequence header, Opus's
//!   is 48 kHz (RFC 7587); both are the decoder's business.
//! - Linear PCM and Nellymoser do use the bits (Nellymoser's SoundFormats 4
//!   and 5 fix 16 and 8 kHz).

/// The codec of an FLV audio tag, with the format facts the tag header fixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlvAudioCodec {
    /// SoundFormat 3: little-endian signed (16-bit) or unsigned (8-bit) PCM.
    LinearPcm {
        sample_rate: u32,
        bits_per_sample: u8,
        channels: u8,
    },
    /// SoundFormats 4 (16 kHz), 5 (8 kHz) and 6 (rate from the rate bits), mono.
    Nellymoser { sample_rate: u32 },
    /// SoundFormat 7, 8 kHz mono.
    G711ALaw,
    /// SoundFormat 8, 8 kHz mono.
    G711MuLaw,
    /// SoundFormat 10 (or enhanced FourCC `mp4a`); rate and channels come
    /// from the AudioSpecificConfig in the sequence header.
    Aac,
    /// SoundFormat 11, 16 kHz wideband mono (see the module doc).
    Speex,
    /// Enhanced RTMP FourCC `Opus`, 48 kHz.
    Opus,
}

/// What an audio tag's payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioTagKind {
    /// Decoder configuration (AAC AudioSpecificConfig, Opus `OpusHead`): a
    /// player that joins late needs it before any frame.
    SequenceHeader,
    /// Coded audio.
    Frame,
    /// Enhanced RTMP's end of the sequence; the payload is empty.
    SequenceEnd,
}

/// A parsed (or to-be-built) FLV audio tag body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioTag<'a> {
    pub codec: FlvAudioCodec,
    pub kind: AudioTagKind,
    /// The codec payload after the tag header(s).
    pub payload: &'a [u8],
}

/// Why an FLV audio tag could not be parsed or built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlvError {
    #[error("the audio tag is shorter than its header")]
    Truncated,
    #[error("FLV SoundFormat {0} is not supported (ADPCM, MP3 and device-specific audio are not)")]
    UnsupportedSoundFormat(u8),
    #[error("enhanced RTMP audio FourCC {0:?} is not supported")]
    UnsupportedFourCc([u8; 4]),
    #[error(
        "enhanced RTMP AudioPacketType {0} is not supported (multichannel, multitrack, ModEx)"
    )]
    UnsupportedPacketType(u8),
    #[error("AACPacketType {0} is neither 0 (sequence header) nor 1 (raw)")]
    UnknownAacPacketType(u8),
    #[error("{0:?} is mono-only in FLV but the tag says stereo")]
    StereoNotAllowed(FlvAudioCodec),
    #[error("{codec:?} cannot be written as a {kind:?} tag")]
    KindNotAllowed {
        codec: FlvAudioCodec,
        kind: AudioTagKind,
    },
    #[error("{0:?} has no FLV encoding (the rate bits hold only 5512, 11025, 22050, 44100 Hz)")]
    UnencodableFormat(FlvAudioCodec),
}

const SOUND_FORMAT_LINEAR_PCM_LE: u8 = 3;
const SOUND_FORMAT_NELLYMOSER_16K: u8 = 4;
const SOUND_FORMAT_NELLYMOSER_8K: u8 = 5;
const SOUND_FORMAT_NELLYMOSER: u8 = 6;
const SOUND_FORMAT_G711_ALAW: u8 = 7;
const SOUND_FORMAT_G711_MULAW: u8 = 8;
const SOUND_FORMAT_EX_HEADER: u8 = 9;
const SOUND_FORMAT_AAC: u8 = 10;
const SOUND_FORMAT_SPEEX: u8 = 11;

/// The sample rates of the two-bit SoundRate field, in its order.
const SOUND_RATES: [u32; 4] = [5512, 11025, 22050, 44100];

const AAC_SEQUENCE_HEADER: u8 = 0;
const AAC_RAW: u8 = 1;

const EX_SEQUENCE_START: u8 = 0;
const EX_CODED_FRAMES: u8 = 1;
const EX_SEQUENCE_END: u8 = 2;

const FOURCC_OPUS: [u8; 4] = *b"Opus";
const FOURCC_AAC: [u8; 4] = *b"mp4a";

/// The rate/size/type bits ffmpeg and Flash write for codecs whose format
/// the FLV spec fixes: rate 0, 16-bit, mono. Readers ignore them.
const FIXED_FORMAT_BITS: u8 = 0b0010;
/// AAC's fixed bits: the spec requires "44 kHz, 16-bit, stereo" whatever
/// the AudioSpecificConfig says.
const AAC_FORMAT_BITS: u8 = 0b1111;

impl<'a> AudioTag<'a> {
    /// Parses the body of an RTMP audio message.
    pub fn parse(body: &'a [u8]) -> Result<AudioTag<'a>, FlvError> {
        let (&first, rest) = body.split_first().ok_or(FlvError::Truncated)?;
        let sound_format = first >> 4;
        let rate = SOUND_RATES[usize::from((first >> 2) & 0b11)];
        let bits_per_sample = if first & 0b10 != 0 { 16 } else { 8 };
        let stereo = first & 0b1 != 0;
        let frame = |codec| AudioTag {
            codec,
            kind: AudioTagKind::Frame,
            payload: rest,
        };
        let mono_frame = |codec| {
            if stereo {
                Err(FlvError::StereoNotAllowed(codec))
            } else {
                Ok(frame(codec))
            }
        };
        match sound_format {
            SOUND_FORMAT_LINEAR_PCM_LE => Ok(frame(FlvAudioCodec::LinearPcm {
                sample_rate: rate,
                bits_per_sample,
                channels: if stereo { 2 } else { 1 },
            })),
            SOUND_FORMAT_NELLYMOSER_16K => mono_frame(FlvAudioCodec::Nellymoser {
                sample_rate: 16_000,
            }),
            SOUND_FORMAT_NELLYMOSER_8K => {
                mono_frame(FlvAudioCodec::Nellymoser { sample_rate: 8_000 })
            }
            SOUND_FORMAT_NELLYMOSER => mono_frame(FlvAudioCodec::Nellymoser { sample_rate: rate }),
            SOUND_FORMAT_G711_ALAW => mono_frame(FlvAudioCodec::G711ALaw),
            SOUND_FORMAT_G711_MULAW => mono_frame(FlvAudioCodec::G711MuLaw),
            // Flash and ffmpeg both write Speex as mono; the type bit is not trusted.
            SOUND_FORMAT_SPEEX => Ok(frame(FlvAudioCodec::Speex)),
            SOUND_FORMAT_AAC => {
                let (&packet_type, payload) = rest.split_first().ok_or(FlvError::Truncated)?;
                Ok(AudioTag {
                    codec: FlvAudioCodec::Aac,
                    kind: aac_kind(packet_type)?,
                    payload,
                })
            }
            SOUND_FORMAT_EX_HEADER => parse_enhanced(first & 0x0f, rest),
            other => Err(FlvError::UnsupportedSoundFormat(other)),
        }
    }

    /// Builds the body of an RTMP audio message: the tag header(s) followed
    /// by the payload.
    pub fn to_bytes(&self) -> Result<Vec<u8>, FlvError> {
        let mut body = Vec::with_capacity(self.payload.len() + 5);
        self.write_to(&mut body)?;
        Ok(body)
    }

    /// Appends the message body to `body` (a buffer kept between frames);
    /// on an error nothing is appended.
    pub fn write_to(&self, body: &mut Vec<u8>) -> Result<(), FlvError> {
        let frame_only = |tag: &AudioTag| {
            if tag.kind == AudioTagKind::Frame {
                Ok(())
            } else {
                Err(FlvError::KindNotAllowed {
                    codec: tag.codec,
                    kind: tag.kind,
                })
            }
        };
        match self.codec {
            FlvAudioCodec::LinearPcm {
                sample_rate,
                bits_per_sample,
                channels,
            } => {
                frame_only(self)?;
                let unencodable = FlvError::UnencodableFormat(self.codec);
                let rate_bits = sound_rate_bits(sample_rate).ok_or(unencodable.clone())?;
                let size_bit = match bits_per_sample {
                    8 => 0,
                    16 => 1,
                    _ => return Err(unencodable),
                };
                let type_bit = match channels {
                    1 => 0,
                    2 => 1,
                    _ => return Err(unencodable),
                };
                body.push(
                    SOUND_FORMAT_LINEAR_PCM_LE << 4 | rate_bits << 2 | size_bit << 1 | type_bit,
                );
            }
            FlvAudioCodec::Nellymoser { sample_rate } => {
                frame_only(self)?;
                let first = match sample_rate {
                    16_000 => SOUND_FORMAT_NELLYMOSER_16K << 4 | FIXED_FORMAT_BITS,
                    8_000 => SOUND_FORMAT_NELLYMOSER_8K << 4 | FIXED_FORMAT_BITS,
                    rate => {
                        let rate_bits =
                            sound_rate_bits(rate).ok_or(FlvError::UnencodableFormat(self.codec))?;
                        SOUND_FORMAT_NELLYMOSER << 4 | rate_bits << 2 | FIXED_FORMAT_BITS
                    }
                };
                body.push(first);
            }
            FlvAudioCodec::G711ALaw => {
                frame_only(self)?;
                body.push(SOUND_FORMAT_G711_ALAW << 4 | FIXED_FORMAT_BITS);
            }
            FlvAudioCodec::G711MuLaw => {
                frame_only(self)?;
                body.push(SOUND_FORMAT_G711_MULAW << 4 | FIXED_FORMAT_BITS);
            }
            FlvAudioCodec::Speex => {
                frame_only(self)?;
                body.push(SOUND_FORMAT_SPEEX << 4 | FIXED_FORMAT_BITS);
            }
            FlvAudioCodec::Aac => {
                let packet_type = match self.kind {
                    AudioTagKind::SequenceHeader => AAC_SEQUENCE_HEADER,
                    AudioTagKind::Frame => AAC_RAW,
                    AudioTagKind::SequenceEnd => {
                        return Err(FlvError::KindNotAllowed {
                            codec: self.codec,
                            kind: self.kind,
                        })
                    }
                };
                body.extend_from_slice(&[SOUND_FORMAT_AAC << 4 | AAC_FORMAT_BITS, packet_type]);
            }
            FlvAudioCodec::Opus => {
                let packet_type = match self.kind {
                    AudioTagKind::SequenceHeader => EX_SEQUENCE_START,
                    AudioTagKind::Frame => EX_CODED_FRAMES,
                    AudioTagKind::SequenceEnd => EX_SEQUENCE_END,
                };
                body.push(SOUND_FORMAT_EX_HEADER << 4 | packet_type);
                body.extend_from_slice(&FOURCC_OPUS);
            }
        }
        body.extend_from_slice(self.payload);
        Ok(())
    }
}

/// The SoundRate field value for a rate, if the field can say it.
fn sound_rate_bits(sample_rate: u32) -> Option<u8> {
    let index = SOUND_RATES.iter().position(|&rate| rate == sample_rate)?;
    u8::try_from(index).ok()
}

fn aac_kind(packet_type: u8) -> Result<AudioTagKind, FlvError> {
    match packet_type {
        AAC_SEQUENCE_HEADER => Ok(AudioTagKind::SequenceHeader),
        AAC_RAW => Ok(AudioTagKind::Frame),
        other => Err(FlvError::UnknownAacPacketType(other)),
    }
}

/// The rest of an enhanced RTMP (ExHeader) audio tag after its first byte.
fn parse_enhanced(packet_type: u8, rest: &[u8]) -> Result<AudioTag<'_>, FlvError> {
    let kind = match packet_type {
        EX_SEQUENCE_START => AudioTagKind::SequenceHeader,
        EX_CODED_FRAMES => AudioTagKind::Frame,
        EX_SEQUENCE_END => AudioTagKind::SequenceEnd,
        other => return Err(FlvError::UnsupportedPacketType(other)),
    };
    let (fourcc, payload) = rest.split_first_chunk::<4>().ok_or(FlvError::Truncated)?;
    let codec = match *fourcc {
        FOURCC_OPUS => FlvAudioCodec::Opus,
        FOURCC_AAC => FlvAudioCodec::Aac,
        other => return Err(FlvError::UnsupportedFourCc(other)),
    };
    Ok(AudioTag {
        codec,
        kind,
        payload,
    })
}

/// The Opus identification header (RFC 7845 §5.1, channel mapping family 0)
/// that an enhanced RTMP Opus SequenceStart carries.
///
/// `pre_skip` is the encoder's look-ahead in 48 kHz samples (libopus reports
/// it as `OPUS_GET_LOOKAHEAD`, 312 at 48 kHz); `input_sample_rate` is
/// informational, the rate the audio had before encoding.
pub fn opus_head(channels: u8, pre_skip: u16, input_sample_rate: u32) -> [u8; 19] {
    const MAGIC: &[u8; 8] = b"OpusHead";
    const VERSION: u8 = 1;
    const OUTPUT_GAIN: [u8; 2] = [0, 0];
    const MAPPING_FAMILY_MONO_STEREO: u8 = 0;
    let mut head = [0_u8; 19];
    head[..8].copy_from_slice(MAGIC);
    head[8] = VERSION;
    head[9] = channels;
    head[10..12].copy_from_slice(&pre_skip.to_le_bytes());
    head[12..16].copy_from_slice(&input_sample_rate.to_le_bytes());
    head[16..18].copy_from_slice(&OUTPUT_GAIN);
    head[18] = MAPPING_FAMILY_MONO_STEREO;
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(codec: FlvAudioCodec, payload: &[u8]) -> AudioTag<'_> {
        AudioTag {
            codec,
            kind: AudioTagKind::Frame,
            payload,
        }
    }

    #[test]
    fn parses_what_ffmpeg_and_flash_write_for_speex() {
        // ffmpeg's flvenc: 0xB6 (rate bits "11 kHz"); Flash Player: 0xB2.
        for first in [0xB6, 0xB2] {
            let body = [first, 0x1d, 0xde];
            let tag = AudioTag::parse(&body).unwrap();
            assert_eq!(tag, frame(FlvAudioCodec::Speex, &[0x1d, 0xde]));
        }
        assert_eq!(
            frame(FlvAudioCodec::Speex, &[0x1d]).to_bytes().unwrap(),
            [0xB2, 0x1d]
        );
    }

    #[test]
    fn parses_and_builds_g711() {
        assert_eq!(
            AudioTag::parse(&[0x82, 0xff, 0x7f]).unwrap(),
            frame(FlvAudioCodec::G711MuLaw, &[0xff, 0x7f])
        );
        assert_eq!(
            AudioTag::parse(&[0x72, 0xd5]).unwrap(),
            frame(FlvAudioCodec::G711ALaw, &[0xd5])
        );
        assert_eq!(
            frame(FlvAudioCodec::G711MuLaw, &[1, 2]).to_bytes().unwrap(),
            [0x82, 1, 2]
        );
        assert_eq!(
            frame(FlvAudioCodec::G711ALaw, &[3]).to_bytes().unwrap(),
            [0x72, 3]
        );
        assert_eq!(
            AudioTag::parse(&[0x83, 0xff]),
            Err(FlvError::StereoNotAllowed(FlvAudioCodec::G711MuLaw))
        );
    }

    #[test]
    fn parses_aac_sequence_header_and_raw_frames() {
        // 0xAF = AAC, 44 kHz, 16-bit, stereo; AudioSpecificConfig 0x1208 =
        // AAC-LC, 44.1 kHz, mono (what ffmpeg's `aac -ar 44100 -ac 1` sends).
        let header = AudioTag::parse(&[0xAF, 0x00, 0x12, 0x08]).unwrap();
        assert_eq!(header.codec, FlvAudioCodec::Aac);
        assert_eq!(header.kind, AudioTagKind::SequenceHeader);
        assert_eq!(header.payload, [0x12, 0x08]);
        let raw = AudioTag::parse(&[0xAF, 0x01, 0x21, 0x10]).unwrap();
        assert_eq!(raw.kind, AudioTagKind::Frame);
        assert_eq!(raw.payload, [0x21, 0x10]);
        assert_eq!(raw.to_bytes().unwrap(), [0xAF, 0x01, 0x21, 0x10]);
        assert_eq!(
            AudioTag::parse(&[0xAF, 0x02]),
            Err(FlvError::UnknownAacPacketType(2))
        );
        assert_eq!(AudioTag::parse(&[0xAF]), Err(FlvError::Truncated));
    }

    #[test]
    fn parses_linear_pcm_and_nellymoser_rates() {
        // 0x3E = PCM LE, 44 kHz, 16-bit, mono.
        assert_eq!(
            AudioTag::parse(&[0x3E, 0, 0]).unwrap().codec,
            FlvAudioCodec::LinearPcm {
                sample_rate: 44_100,
                bits_per_sample: 16,
                channels: 1
            }
        );
        let stereo_8bit_11k = AudioTag::parse(&[0x35]).unwrap();
        assert_eq!(
            stereo_8bit_11k.codec,
            FlvAudioCodec::LinearPcm {
                sample_rate: 11_025,
                bits_per_sample: 8,
                channels: 2
            }
        );
        assert_eq!(stereo_8bit_11k.to_bytes().unwrap(), [0x35]);
        assert_eq!(
            AudioTag::parse(&[0x42]).unwrap().codec,
            FlvAudioCodec::Nellymoser {
                sample_rate: 16_000
            }
        );
        assert_eq!(
            AudioTag::parse(&[0x52]).unwrap().codec,
            FlvAudioCodec::Nellymoser { sample_rate: 8_000 }
        );
        assert_eq!(
            AudioTag::parse(&[0x6A]).unwrap().codec,
            FlvAudioCodec::Nellymoser {
                sample_rate: 22_050
            }
        );
        for codec in [
            FlvAudioCodec::Nellymoser {
                sample_rate: 16_000,
            },
            FlvAudioCodec::Nellymoser { sample_rate: 8_000 },
            FlvAudioCodec::Nellymoser {
                sample_rate: 44_100,
            },
        ] {
            let bytes = frame(codec, &[9]).to_bytes().unwrap();
            assert_eq!(AudioTag::parse(&bytes).unwrap().codec, codec);
        }
        let unencodable = FlvAudioCodec::LinearPcm {
            sample_rate: 16_000,
            bits_per_sample: 16,
            channels: 1,
        };
        assert_eq!(
            frame(unencodable, &[]).to_bytes(),
            Err(FlvError::UnencodableFormat(unencodable))
        );
    }

    #[test]
    fn parses_and_builds_enhanced_opus() {
        let head = opus_head(1, 312, 48_000);
        assert_eq!(
            head,
            [
                b'O', b'p', b'u', b's', b'H', b'e', b'a', b'd', 1, 1, 0x38, 0x01, 0x80, 0xBB, 0, 0,
                0, 0, 0
            ]
        );
        let start = AudioTag {
            codec: FlvAudioCodec::Opus,
            kind: AudioTagKind::SequenceHeader,
            payload: &head,
        };
        let bytes = start.to_bytes().unwrap();
        assert_eq!(bytes[..5], [0x90, b'O', b'p', b'u', b's']);
        assert_eq!(AudioTag::parse(&bytes).unwrap(), start);

        let coded = AudioTag::parse(&[0x91, b'O', b'p', b'u', b's', 0xf8, 0xff]).unwrap();
        assert_eq!(coded, frame(FlvAudioCodec::Opus, &[0xf8, 0xff]));
        assert_eq!(
            coded.to_bytes().unwrap(),
            [0x91, b'O', b'p', b'u', b's', 0xf8, 0xff]
        );

        let end = AudioTag::parse(&[0x92, b'O', b'p', b'u', b's']).unwrap();
        assert_eq!(end.kind, AudioTagKind::SequenceEnd);
        assert!(end.payload.is_empty());
    }

    #[test]
    fn enhanced_mp4a_is_aac() {
        let tag = AudioTag::parse(&[0x90, b'm', b'p', b'4', b'a', 0x12, 0x08]).unwrap();
        assert_eq!(tag.codec, FlvAudioCodec::Aac);
        assert_eq!(tag.kind, AudioTagKind::SequenceHeader);
    }

    #[test]
    fn refuses_what_it_does_not_carry() {
        assert_eq!(AudioTag::parse(&[]), Err(FlvError::Truncated));
        assert_eq!(
            AudioTag::parse(&[0x2F, 0xff]),
            Err(FlvError::UnsupportedSoundFormat(2))
        );
        assert_eq!(
            AudioTag::parse(&[0x91, b'f', b'L', b'a', b'C']),
            Err(FlvError::UnsupportedFourCc(*b"fLaC"))
        );
        assert_eq!(
            AudioTag::parse(&[0x95, b'O', b'p', b'u', b's']),
            Err(FlvError::UnsupportedPacketType(5))
        );
        assert_eq!(
            AudioTag::parse(&[0x91, b'O', b'p']),
            Err(FlvError::Truncated)
        );
        let speex_header = AudioTag {
            codec: FlvAudioCodec::Speex,
            kind: AudioTagKind::SequenceHeader,
            payload: &[],
        };
        assert!(matches!(
            speex_header.to_bytes(),
            Err(FlvError::KindNotAllowed { .. })
        ));
    }

    #[test]
    fn every_short_body_parses_or_errs() {
        for first in 0..=u8::MAX {
            for len in 0..6 {
                let mut body = vec![first];
                body.extend(std::iter::repeat_n(b'O', len));
                let _ = AudioTag::parse(&body);
            }
        }
    }
}
