//! The built-in test lines as points of a room: `echo` sends back every
//! audio packet it hears, `tone` plays a 1 kHz tone, `digits` sends back
//! each digit it hears as an RFC 4733 event. The room routes to and from
//! them like any other point; only their source of audio differs.

use std::f64::consts::PI;

use dialtone_codecs::{new_encoder, Codec, Encoder, MAX_FRAME_SAMPLES, MAX_PAYLOAD_LEN};

use crate::rtp::RtpHeader;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    Echo,
    Tone,
    Digits,
}

impl Line {
    pub const ALL: [Line; 3] = [Line::Echo, Line::Tone, Line::Digits];

    pub fn name(self) -> &'static str {
        match self {
            Line::Echo => "echo",
            Line::Tone => "tone",
            Line::Digits => "digits",
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

/// The tone line's stream: its encoder, phase and RTP numbering.
struct ToneSource {
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
        let tone = audio
            .filter(|_| line == Line::Tone)
            .and_then(|(payload_type, codec)| {
                Some(ToneSource {
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
        for sample in tone.pcm[..samples].iter_mut() {
            *sample =
                (TONE_AMPLITUDE * (2.0 * PI * TONE_HZ * tone.phase as f64 / rate).sin()) as i16;
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
