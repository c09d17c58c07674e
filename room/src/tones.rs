//! In-band DTMF in the room: digits played as tones into the SIP side's
//! audio, and tones found in what it sends.

use std::collections::VecDeque;
use std::time::Duration;

use dialtone_codecs::{
    new_decoder, new_encoder, Codec, Decoder, DtmfDetector, DtmfDigit, DtmfEvent, DtmfGenerator,
    Encoder, Resampler, SampleRate, DEFAULT_DTMF_LEVEL_DBFS, MAX_FRAME_SAMPLES, MAX_PAYLOAD_LEN,
};

/// Digits played as tones into a point's audio, one after another.
pub(crate) struct Tones {
    encoder: Box<dyn Encoder>,
    rate: SampleRate,
    pub(crate) queue: VecDeque<char>,
    playing: Option<DtmfGenerator>,
    /// Frames of the gap still to wait before the next digit.
    gap_frames: u32,
    pcm: [i16; MAX_FRAME_SAMPLES],
    payload: [u8; MAX_PAYLOAD_LEN],
}

pub(crate) const TONE_DURATION: Duration = Duration::from_millis(100);
pub(crate) const TONE_GAP_FRAMES: u32 = 5;

impl Tones {
    pub(crate) fn new(codec: Codec) -> Option<Tones> {
        Some(Tones {
            encoder: new_encoder(codec).ok()?,
            rate: codec.sample_rate(),
            queue: VecDeque::new(),
            playing: None,
            gap_frames: 0,
            pcm: [0; MAX_FRAME_SAMPLES],
            payload: [0; MAX_PAYLOAD_LEN],
        })
    }

    pub(crate) fn is_busy(&self) -> bool {
        self.playing.is_some() || !self.queue.is_empty() || self.gap_frames > 0
    }

    /// The next 20 ms while digits are being played, encoded: tone, or the
    /// silence between and after digits (a far end without other audio
    /// from us still gets a continuous stream, which its jitter buffer
    /// needs to play the last digit out).
    pub(crate) fn next_frame(&mut self) -> Option<&[u8]> {
        let samples = self.rate.frame_samples();
        if self.playing.is_none() && self.gap_frames == 0 {
            let digit = DtmfDigit::from_char(self.queue.pop_front()?)?;
            self.playing =
                DtmfGenerator::new(self.rate, digit, TONE_DURATION, DEFAULT_DTMF_LEVEL_DBFS).ok();
        }
        match self.playing.as_mut() {
            Some(generator) => {
                generator.fill_frame(&mut self.pcm[..samples]).ok()?;
                if generator.is_finished() {
                    self.playing = None;
                    self.gap_frames = TONE_GAP_FRAMES;
                }
            }
            None => {
                self.gap_frames -= 1;
                self.pcm[..samples].fill(0);
            }
        }
        let length = self
            .encoder
            .encode(&self.pcm[..samples], &mut self.payload)
            .ok()?;
        Some(&self.payload[..length])
    }
}

/// Decodes a point's audio to find DTMF tones in it; 48 kHz audio (Opus)
/// is looked at in 8 kHz, which holds every DTMF frequency.
pub(crate) struct ToneDetector {
    decoder: Box<dyn Decoder>,
    downsampler: Option<Resampler>,
    detector: DtmfDetector,
    pcm: [i16; MAX_FRAME_SAMPLES],
    narrow: [i16; MAX_FRAME_SAMPLES],
}

impl ToneDetector {
    pub(crate) fn new(codec: Codec) -> Option<ToneDetector> {
        let rate = codec.sample_rate();
        let (downsampler, detector_rate) = if rate == SampleRate::Hz48000 {
            let downsampler = Resampler::new(rate, SampleRate::Hz8000).ok()?;
            (Some(downsampler), SampleRate::Hz8000)
        } else {
            (None, rate)
        };
        Some(ToneDetector {
            decoder: new_decoder(codec).ok()?,
            downsampler,
            detector: DtmfDetector::new(detector_rate),
            pcm: [0; MAX_FRAME_SAMPLES],
            narrow: [0; MAX_FRAME_SAMPLES],
        })
    }

    /// The digit that starts in this payload, if one does.
    pub(crate) fn digit_in(&mut self, payload: &[u8]) -> Option<char> {
        let samples = self.decoder.decode(payload, &mut self.pcm).ok()?;
        let audio = match self.downsampler.as_mut() {
            Some(downsampler) => {
                let narrow = downsampler
                    .process(&self.pcm[..samples], &mut self.narrow)
                    .ok()?;
                &self.narrow[..narrow]
            }
            None => &self.pcm[..samples],
        };
        match self.detector.process(audio).ok()?? {
            DtmfEvent::Started(digit) => Some(digit.as_char()),
            DtmfEvent::Ended { .. } => None,
        }
    }
}
