//! The built-in test lines as points of a room: `echo` sends back every
//! audio packet it hears, `tone` plays a 1 kHz tone, `digits` sends back
//! each digit it hears as an RFC 4733 event; and the ringback a caller
//! hears while the far end rings without early media of its own, and the
//! music a held far end hears. The room routes to and from them like any
//! other point; only their source of audio differs.

use std::f64::consts::PI;
use std::sync::Arc;

use dialtone_codecs::{new_encoder, Codec, Encoder, MAX_FRAME_SAMPLES, MAX_PAYLOAD_LEN};

use crate::rtp::RtpHeader;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    Echo,
    Tone,
    Digits,
    /// Ringback in a country's cadence.
    Ringback(Ringback),
    /// Recorded audio played in a loop (music on hold).
    Music,
}

/// Ringback tones (ITU-T E.180): which frequencies, how long on, how long
/// the whole cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ringback {
    /// 440 + 480 Hz, 2 s on, 4 s off.
    Us,
    /// 425 Hz, 1 s on, 4 s off (CEPT).
    Europe,
}

impl Ringback {
    fn frequencies(self) -> &'static [f64] {
        match self {
            Ringback::Us => &[440.0, 480.0],
            Ringback::Europe => &[425.0],
        }
    }

    /// Frames of 20 ms on, and of the whole cycle.
    fn cadence(self) -> (u64, u64) {
        match self {
            Ringback::Us => (100, 300),
            Ringback::Europe => (50, 250),
        }
    }
}

impl Line {
    pub const ALL: [Line; 3] = [Line::Echo, Line::Tone, Line::Digits];

    pub fn name(self) -> &'static str {
        match self {
            Line::Echo => "echo",
            Line::Tone => "tone",
            Line::Digits => "digits",
            Line::Ringback(_) => "ringback",
            Line::Music => "music",
        }
    }
}

/// The tone line's frequency and level.
pub const TONE_HZ: f64 = 1000.0;
const TONE_AMPLITUDE: f64 = 8000.0;

pub(crate) struct LinePoint {
    pub(crate) line: Line,
    tone: Option<ToneSource>,
}

/// The tone line's stream: its tones and cadence, encoder, phase and RTP
/// numbering.
struct ToneSource {
    frequencies: &'static [f64],
    /// Samples at the codec's rate played in a loop instead of tones.
    recording: Option<Arc<[i16]>>,
    /// Frames on and frames per cycle; `None`: always on.
    cadence: Option<(u64, u64)>,
    frame: u64,
    encoder: Box<dyn Encoder>,
    codec: Codec,
    payload_type: u8,
    phase: u64,
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
    pcm: [i16; MAX_FRAME_SAMPLES],
}

impl LinePoint {
    pub(crate) fn new(line: Line, audio: Option<(u8, Codec)>) -> LinePoint {
        LinePoint::playing(line, audio, None)
    }

    /// A music line: `recording` (at `audio`'s sample rate) in a loop.
    pub(crate) fn music(recording: Arc<[i16]>, audio: Option<(u8, Codec)>) -> LinePoint {
        LinePoint::playing(
            Line::Music,
            audio,
            Some(recording).filter(|r| !r.is_empty()),
        )
    }

    fn playing(line: Line, audio: Option<(u8, Codec)>, recording: Option<Arc<[i16]>>) -> LinePoint {
        let (frequencies, cadence): (&'static [f64], _) = match line {
            Line::Tone => (&[TONE_HZ], None),
            Line::Ringback(ringback) => (ringback.frequencies(), Some(ringback.cadence())),
            Line::Echo | Line::Digits | Line::Music => (&[], None),
        };
        let tone = audio
            .filter(|_| !frequencies.is_empty() || recording.is_some())
            .and_then(|(payload_type, codec)| {
                Some(ToneSource {
                    frequencies,
                    recording,
                    cadence,
                    frame: 0,
                    encoder: new_encoder(codec).ok()?,
                    codec,
                    payload_type,
                    phase: 0,
                    ssrc: rand::random(),
                    sequence: rand::random(),
                    timestamp: rand::random(),
                    pcm: [0; MAX_FRAME_SAMPLES],
                })
            });
        LinePoint { line, tone }
    }

    /// The tone line's next 20 ms, encoded into `payload`: its header and
    /// length.
    pub(crate) fn next_tone(
        &mut self,
        payload: &mut [u8; MAX_PAYLOAD_LEN],
    ) -> Option<(RtpHeader, usize)> {
        let tone = self.tone.as_mut()?;
        let samples = tone.codec.frame_samples();
        let rate = f64::from(tone.codec.sample_rate().hz());
        let frame = tone.frame;
        tone.frame += 1;
        if let Some((on, cycle)) = tone.cadence {
            if frame % cycle >= on {
                // Silent part of the cadence: the stream's clock goes on.
                tone.phase += samples as u64;
                tone.timestamp = tone
                    .timestamp
                    .wrapping_add(tone.codec.rtp_clock_rate() / 50);
                return None;
            }
        }
        if let Some(recording) = &tone.recording {
            for sample in tone.pcm[..samples].iter_mut() {
                // `phase` counts samples played; the recording is not empty.
                let at = (tone.phase % recording.len() as u64) as usize;
                *sample = recording.get(at).copied().unwrap_or_default();
                tone.phase += 1;
            }
        }
        let amplitude = TONE_AMPLITUDE / tone.frequencies.len().max(1) as f64;
        for sample in tone.pcm[..samples]
            .iter_mut()
            .filter(|_| tone.recording.is_none())
        {
            let t = tone.phase as f64 / rate;
            let value: f64 = tone
                .frequencies
                .iter()
                .map(|hz| (2.0 * PI * hz * t).sin())
                .sum();
            *sample = (amplitude * value) as i16;
            tone.phase += 1;
        }
        let length = tone.encoder.encode(&tone.pcm[..samples], payload).ok()?;
        let header = RtpHeader {
            marker: false,
            payload_type: tone.payload_type,
            sequence: tone.sequence,
            timestamp: tone.timestamp,
            ssrc: tone.ssrc,
        };
        tone.sequence = tone.sequence.wrapping_add(1);
        tone.timestamp = tone
            .timestamp
            .wrapping_add(tone.codec.rtp_clock_rate() / 50);
        Some((header, length))
    }
}
