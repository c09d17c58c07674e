//! Opus through the system libopus (`audiopus`): mono, 20 ms, its PCM at
//! 48 kHz or, facing a narrower codec, at that codec's rate (libopus codes
//! at 8 and 16 kHz natively, so no resampler runs between them).

use audiopus::coder::{Decoder as InnerOpusDecoder, Encoder as InnerOpusEncoder};
use audiopus::{Application, Bandwidth, Bitrate, Channels, SampleRate as OpusRate};

use std::sync::OnceLock;

use crate::{Codec, CodecError, Decoder, Encoder, SampleRate};

/// libopus only spends bits on in-band FEC when told to expect loss.
const EXPECTED_LOSS_PERCENT: u8 = 10;

/// How hard the Opus encoder works and how many bits it spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusSettings {
    /// Encoder effort, 0-10. libopus's default, 9, takes about 265 µs per
    /// 20 ms frame (wideband) on the project's 2-core EPYC machines; 3
    /// (SILK's medium pitch search and noise shaping) takes about 60 µs
    /// for narrowband, which keeps Opus ↔ G.711 under the 100 µs per frame
    /// pair target, at a quality cost too small to matter for telephone
    /// audio (docs/performance.md measures both).
    pub complexity: u8,
    /// A typical wideband voice rate, the one WebRTC starts mono Opus at.
    pub bitrate_bps: i32,
}

impl Default for OpusSettings {
    fn default() -> Self {
        OpusSettings {
            complexity: 3,
            bitrate_bps: 32_000,
        }
    }
}

impl OpusSettings {
    pub const COMPLEXITY_RANGE: std::ops::RangeInclusive<u8> = 0..=10;
    /// What libopus accepts as a fixed rate.
    pub const BITRATE_RANGE: std::ops::RangeInclusive<i32> = 500..=512_000;
}

/// The settings every encoder of the process is made with.
static SETTINGS: OnceLock<OpusSettings> = OnceLock::new();

/// Sets the process's Opus encoder settings, once, before the first
/// encoder is made (the gateway does it from its configuration); later
/// calls change nothing and say so.
pub fn set_opus_settings(settings: OpusSettings) -> Result<(), OpusSettings> {
    SETTINGS.set(settings)
}

fn settings() -> OpusSettings {
    SETTINGS.get().copied().unwrap_or_default()
}
/// A valid Opus packet lasts at most 120 ms (RFC 6716 §3.2.5).
const MAX_PACKET_SAMPLES: usize = 5_760;

/// Opus encoder: VoIP application, in-band FEC on, complexity and rate
/// as [`set_opus_settings`] set them (complexity 3, 32 kbit/s unless set).
pub struct OpusEncoder {
    inner: InnerOpusEncoder,
    rate: SampleRate,
}

impl OpusEncoder {
    /// An encoder for full-band 48 kHz audio.
    pub fn new() -> Result<Self, CodecError> {
        Self::at_rate(SampleRate::Hz48000)
    }

    /// An encoder taking PCM at `rate`. The coded band is capped to what
    /// that rate holds: nothing is lost, and for 8 kHz the encoder's CPU
    /// time is about halved.
    pub fn at_rate(rate: SampleRate) -> Result<Self, CodecError> {
        Self::with_settings(rate, settings())
    }

    /// An encoder taking PCM at `rate`, with its own settings rather than
    /// the process's (to compare settings side by side).
    pub fn with_settings(rate: SampleRate, settings: OpusSettings) -> Result<Self, CodecError> {
        let mut inner = InnerOpusEncoder::new(opus_rate(rate), Channels::Mono, Application::Voip)?;
        inner.set_bitrate(Bitrate::BitsPerSecond(settings.bitrate_bps))?;
        inner.set_complexity(settings.complexity)?;
        inner.set_inband_fec(true)?;
        inner.set_packet_loss_perc(EXPECTED_LOSS_PERCENT)?;
        inner.set_max_bandwidth(match rate {
            SampleRate::Hz8000 => Bandwidth::Narrowband,
            SampleRate::Hz16000 => Bandwidth::Wideband,
            SampleRate::Hz48000 => Bandwidth::Fullband,
        })?;
        Ok(Self { inner, rate })
    }
}

fn opus_rate(rate: SampleRate) -> OpusRate {
    match rate {
        SampleRate::Hz8000 => OpusRate::Hz8000,
        SampleRate::Hz16000 => OpusRate::Hz16000,
        SampleRate::Hz48000 => OpusRate::Hz48000,
    }
}

impl Encoder for OpusEncoder {
    fn codec(&self) -> Codec {
        Codec::Opus
    }

    fn encode(&mut self, pcm: &[i16], payload: &mut [u8]) -> Result<usize, CodecError> {
        self.rate.check_frame(pcm)?;
        let out = Codec::Opus.payload_out(payload)?;
        Ok(self.inner.encode(pcm, out)?)
    }

    fn set_complexity(&mut self, complexity: u8) {
        // Out of range is the only failure; the encoder keeps its setting.
        let _ = self
            .inner
            .set_complexity(complexity.min(*OpusSettings::COMPLEXITY_RANGE.end()));
    }
}

/// Opus decoder with libopus's own concealment and FEC recovery.
///
/// An empty payload is taken as a DTX gap rather than an error: libopus
/// fills it with its concealment, which decays into comfort noise. The 1–2
/// byte packets a DTX sender emits during silence decode as comfort noise
/// in the ordinary way.
pub struct OpusDecoder {
    inner: InnerOpusDecoder,
    rate: SampleRate,
}

impl OpusDecoder {
    /// A decoder giving 48 kHz PCM.
    pub fn new() -> Result<Self, CodecError> {
        Self::at_rate(SampleRate::Hz48000)
    }

    /// A decoder giving PCM at `rate` (libopus decodes any Opus packet at
    /// any of its rates).
    pub fn at_rate(rate: SampleRate) -> Result<Self, CodecError> {
        Ok(Self {
            inner: InnerOpusDecoder::new(opus_rate(rate), Channels::Mono)?,
            rate,
        })
    }

    /// Rejects packets that are not one 20 ms frame, before libopus would
    /// fail on them less clearly (a 60 ms packet needs a bigger buffer).
    fn check_duration(payload: &[u8]) -> Result<(), CodecError> {
        let samples = audiopus::packet::nb_samples(payload, OpusRate::Hz48000)?;
        // libopus returns a negative error code for an invalid packet,
        // which the binding passes on as a huge count.
        if samples > MAX_PACKET_SAMPLES {
            return Err(CodecError::MalformedPayload { codec: Codec::Opus });
        }
        if samples != Codec::Opus.frame_samples() {
            return Err(CodecError::OpusFrameDuration { samples });
        }
        Ok(())
    }
}

impl Decoder for OpusDecoder {
    fn codec(&self) -> Codec {
        Codec::Opus
    }

    fn decode(&mut self, payload: &[u8], pcm: &mut [i16]) -> Result<usize, CodecError> {
        if payload.is_empty() {
            return self.conceal(pcm);
        }
        let out = self.rate.frame_out(pcm)?;
        Self::check_duration(payload)?;
        Ok(self.inner.decode(Some(payload), out, false)?)
    }

    fn conceal(&mut self, pcm: &mut [i16]) -> Result<usize, CodecError> {
        let out = self.rate.frame_out(pcm)?;
        // The output length tells libopus how much audio was lost.
        Ok(self.inner.decode(None::<&[u8]>, out, false)?)
    }

    fn decode_fec(&mut self, next_payload: &[u8], pcm: &mut [i16]) -> Result<usize, CodecError> {
        if next_payload.is_empty() {
            return self.conceal(pcm);
        }
        let out = self.rate.frame_out(pcm)?;
        Self::check_duration(next_payload)?;
        // Without FEC data in `next_payload` libopus falls back to plain
        // concealment by itself.
        Ok(self.inner.decode(Some(next_payload), out, true)?)
    }
}
