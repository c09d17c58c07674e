//! DTMF (ITU-T Q.23) tone generation, and detection with Goertzel filters,
//! on 20 ms frames.

use std::f64::consts::TAU;
use std::time::Duration;

use crate::{CodecError, SampleRate};

/// Low-group (row) and high-group (column) frequencies, ITU-T Q.23.
const ROW_HZ: [f64; 4] = [697.0, 770.0, 852.0, 941.0];
const COLUMN_HZ: [f64; 4] = [1209.0, 1336.0, 1477.0, 1633.0];

/// Level of each of the two tones relative to a full-scale sine. -10 dBFS
/// is about -7 dBm0 on a G.711 line, a usual sending level.
pub const DEFAULT_DTMF_LEVEL_DBFS: f64 = -10.0;
/// Highest level per tone at which the sum of the two cannot clip.
pub const MAX_DTMF_LEVEL_DBFS: f64 = -6.03;

const FULL_SCALE: f64 = 32_767.0;

/// A DTMF key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DtmfDigit {
    // Keypad order, row by row: the position gives the two frequencies.
    One,
    Two,
    Three,
    A,
    Four,
    Five,
    Six,
    B,
    Seven,
    Eight,
    Nine,
    C,
    Star,
    Zero,
    Pound,
    D,
}

impl DtmfDigit {
    /// All sixteen keys in keypad order (1 2 3 A / 4 5 6 B / 7 8 9 C / * 0 # D).
    pub const ALL: [DtmfDigit; 16] = [
        Self::One,
        Self::Two,
        Self::Three,
        Self::A,
        Self::Four,
        Self::Five,
        Self::Six,
        Self::B,
        Self::Seven,
        Self::Eight,
        Self::Nine,
        Self::C,
        Self::Star,
        Self::Zero,
        Self::Pound,
        Self::D,
    ];

    /// The key for `0`-`9`, `A`-`D` (either case), `*` or `#`.
    pub fn from_char(key: char) -> Option<Self> {
        let key = key.to_ascii_uppercase();
        Self::ALL.into_iter().find(|digit| digit.as_char() == key)
    }

    pub const fn as_char(self) -> char {
        match self {
            Self::One => '1',
            Self::Two => '2',
            Self::Three => '3',
            Self::A => 'A',
            Self::Four => '4',
            Self::Five => '5',
            Self::Six => '6',
            Self::B => 'B',
            Self::Seven => '7',
            Self::Eight => '8',
            Self::Nine => '9',
            Self::C => 'C',
            Self::Star => '*',
            Self::Zero => '0',
            Self::Pound => '#',
            Self::D => 'D',
        }
    }

    /// The (low, high) frequency pair in Hz.
    pub const fn frequencies(self) -> (f64, f64) {
        let (row, column) = self.position();
        (ROW_HZ[row], COLUMN_HZ[column])
    }

    const fn position(self) -> (usize, usize) {
        let index = self as usize;
        (index / 4, index % 4)
    }

    fn at(row: usize, column: usize) -> Self {
        Self::ALL[row * 4 + column]
    }
}

/// Produces one DTMF tone as a run of 20 ms frames.
pub struct DtmfGenerator {
    rate: SampleRate,
    low_radians_per_sample: f64,
    high_radians_per_sample: f64,
    amplitude: f64,
    tone_samples: usize,
    position: usize,
}

impl DtmfGenerator {
    /// A tone of `digit` lasting `duration`, each of its two frequencies at
    /// `level_dbfs` (at most [`MAX_DTMF_LEVEL_DBFS`]).
    pub fn new(
        rate: SampleRate,
        digit: DtmfDigit,
        duration: Duration,
        level_dbfs: f64,
    ) -> Result<Self, CodecError> {
        if !level_dbfs.is_finite() || level_dbfs > MAX_DTMF_LEVEL_DBFS {
            return Err(CodecError::DtmfLevel(level_dbfs));
        }
        let hz = f64::from(rate.hz());
        let (low, high) = digit.frequencies();
        Ok(Self {
            rate,
            low_radians_per_sample: TAU * low / hz,
            high_radians_per_sample: TAU * high / hz,
            amplitude: FULL_SCALE * 10f64.powf(level_dbfs / 20.0),
            tone_samples: (duration.as_secs_f64() * hz).round() as usize,
            position: 0,
        })
    }

    /// Whether the whole tone has been written.
    pub fn is_finished(&self) -> bool {
        self.position >= self.tone_samples
    }

    /// Writes the next 20 ms into `frame` (one frame at the generator's
    /// rate): the tone while it lasts, silence after. Returns how many
    /// samples of tone it wrote.
    pub fn fill_frame(&mut self, frame: &mut [i16]) -> Result<usize, CodecError> {
        self.rate.check_frame(frame)?;
        let tone_len = self
            .tone_samples
            .saturating_sub(self.position)
            .min(frame.len());
        let (tone, silence) = frame.split_at_mut(tone_len);
        for (offset, sample) in tone.iter_mut().enumerate() {
            let n = (self.position + offset) as f64;
            let value =
                (self.low_radians_per_sample * n).sin() + (self.high_radians_per_sample * n).sin();
            *sample = (self.amplitude * value).round() as i16;
        }
        silence.fill(0);
        self.position += tone_len;
        Ok(tone_len)
    }
}

/// What [`DtmfDetector::process`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtmfEvent {
    /// A digit has been present long enough to count.
    Started(DtmfDigit),
    /// The digit has been absent long enough to end; `duration` is how long
    /// it was heard (to within about 15 ms).
    Ended {
        digit: DtmfDigit,
        duration: Duration,
    },
}

/// Analysis windows are one frame (20 ms) long and overlap by half, so
/// each frame completes two of them.
const WINDOWS_PER_FRAME: u32 = 2;
/// Consecutive windows that must show the same digit before it starts.
/// Every tone of 40 ms or more covers three windows at least 3/4 (and any
/// tone under about 28 ms cannot cover three windows 0.6 each).
const START_WINDOWS: u32 = 3;
/// Consecutive windows without the digit before it ends: drop-outs shorter
/// than about 20 ms are bridged, and a new digit needs this gap first.
const END_WINDOWS: u32 = 3;
// With both counts at least WINDOWS_PER_FRAME, a start and an end are always
// in different frames, so one frame reports at most one event.
const _: () = assert!(START_WINDOWS >= WINDOWS_PER_FRAME && END_WINDOWS >= WINDOWS_PER_FRAME);

/// Each tone must be at least this loud (relative to a full-scale sine).
const MIN_TONE_LEVEL_DBFS: f64 = -32.0;
/// How much louder the high tone may be than the low one (normal twist),
/// and the low than the high (reverse twist), Q.24-style.
const MAX_NORMAL_TWIST_DB: f64 = 8.0;
const MAX_REVERSE_TWIST_DB: f64 = 4.0;
/// Each tone must stand this far above the other frequencies of its group.
const MIN_PEAK_OVER_GROUP_DB: f64 = 6.0;
/// Share of the window's energy the two tones must hold: rejects noise,
/// speech and single tones, whose energy lies elsewhere.
const MIN_TONE_ENERGY_SHARE: f64 = 0.6;

fn db_to_power_ratio(db: f64) -> f64 {
    10f64.powf(db / 10.0)
}

struct ActiveDigit {
    digit: DtmfDigit,
    first_window: u64,
    last_window_heard: u64,
    windows_missed: u32,
}

struct Candidate {
    digit: DtmfDigit,
    first_window: u64,
    windows_heard: u32,
}

/// Finds DTMF digits in a stream of 20 ms frames at one sample rate.
///
/// Every 10 ms it runs Goertzel filters for the eight Q.23 frequencies over
/// the last 20 ms. A window shows a digit when one low and one high tone
/// are each loud enough, stand out in their group, are within the twist
/// limits, and together hold most of the window's energy. A digit starts
/// after three such windows in a row (tones from about 30-40 ms are
/// accepted, shorter ones rejected) and ends after three windows without it.
pub struct DtmfDetector {
    rate: SampleRate,
    row_coefficients: [f64; 4],
    column_coefficients: [f64; 4],
    /// Goertzel power of a tone at MIN_TONE_LEVEL_DBFS over one window.
    min_tone_power: f64,
    previous_half: Vec<i16>,
    window_index: u64,
    candidate: Option<Candidate>,
    active: Option<ActiveDigit>,
}

impl DtmfDetector {
    pub fn new(rate: SampleRate) -> Self {
        let hz = f64::from(rate.hz());
        let coefficient = |frequency: f64| 2.0 * (TAU * frequency / hz).cos();
        let window = rate.frame_samples() as f64;
        // A sine of amplitude a over n samples gives a Goertzel power of
        // (a·n/2)² at its own frequency.
        let min_amplitude = FULL_SCALE * 10f64.powf(MIN_TONE_LEVEL_DBFS / 20.0);
        Self {
            rate,
            row_coefficients: ROW_HZ.map(coefficient),
            column_coefficients: COLUMN_HZ.map(coefficient),
            min_tone_power: (min_amplitude * window / 2.0).powi(2),
            previous_half: vec![0; rate.frame_samples() / 2],
            window_index: 0,
            candidate: None,
            active: None,
        }
    }

    /// Feeds one 20 ms frame; returns the start or end of a digit if one
    /// happened in it.
    pub fn process(&mut self, frame: &[i16]) -> Result<Option<DtmfEvent>, CodecError> {
        self.rate.check_frame(frame)?;
        let (first_half, second_half) = frame.split_at(frame.len() / 2);
        let straddling = self.classify([&self.previous_half, first_half]);
        let straddling_event = self.advance(straddling);
        let whole = self.classify([first_half, second_half]);
        let whole_event = self.advance(whole);
        self.previous_half.copy_from_slice(second_half);
        // At most one of the two is set (see START_WINDOWS and END_WINDOWS).
        Ok(straddling_event.or(whole_event))
    }

    /// The digit a window shows, if any. The window is two slices that
    /// together hold one frame's worth of samples.
    fn classify(&self, window: [&[i16]; 2]) -> Option<DtmfDigit> {
        let samples = || {
            window
                .iter()
                .flat_map(|part| part.iter())
                .map(|&s| f64::from(s))
        };
        let rows = self.row_coefficients.map(|c| goertzel_power(c, samples()));
        let columns = self
            .column_coefficients
            .map(|c| goertzel_power(c, samples()));
        let (row, row_power) = strongest(&rows)?;
        let (column, column_power) = strongest(&columns)?;

        if row_power < self.min_tone_power || column_power < self.min_tone_power {
            return None;
        }
        let twist = column_power / row_power;
        if twist > db_to_power_ratio(MAX_NORMAL_TWIST_DB)
            || twist < db_to_power_ratio(-MAX_REVERSE_TWIST_DB)
        {
            return None;
        }
        let peak_ratio = db_to_power_ratio(MIN_PEAK_OVER_GROUP_DB);
        let stands_out = |powers: &[f64; 4], peak: usize, peak_power: f64| {
            powers
                .iter()
                .enumerate()
                .all(|(index, &power)| index == peak || power * peak_ratio <= peak_power)
        };
        if !stands_out(&rows, row, row_power) || !stands_out(&columns, column, column_power) {
            return None;
        }
        // A tone's Goertzel power P over n samples stands for 2P/n of
        // signal energy.
        let window_len = self.rate.frame_samples() as f64;
        let tone_energy = 2.0 * (row_power + column_power) / window_len;
        let total_energy: f64 = samples().map(|s| s * s).sum();
        if tone_energy < MIN_TONE_ENERGY_SHARE * total_energy {
            return None;
        }
        Some(DtmfDigit::at(row, column))
    }

    /// Moves the start/end state machine on by one window.
    fn advance(&mut self, heard: Option<DtmfDigit>) -> Option<DtmfEvent> {
        let window = self.window_index;
        self.window_index += 1;

        if let Some(active) = &mut self.active {
            if heard == Some(active.digit) {
                active.last_window_heard = window;
                active.windows_missed = 0;
                return None;
            }
            active.windows_missed += 1;
            if active.windows_missed < END_WINDOWS {
                return None;
            }
            let digit = active.digit;
            let span_windows = (active.last_window_heard - active.first_window) as usize;
            let span_samples =
                span_windows * self.rate.frame_samples() / 2 + self.rate.frame_samples();
            let duration = Duration::from_secs_f64(span_samples as f64 / f64::from(self.rate.hz()));
            self.active = None;
            self.candidate = None;
            return Some(DtmfEvent::Ended { digit, duration });
        }

        let Some(digit) = heard else {
            self.candidate = None;
            return None;
        };
        let candidate = match self.candidate.take() {
            Some(mut candidate) if candidate.digit == digit => {
                candidate.windows_heard += 1;
                candidate
            }
            _ => Candidate {
                digit,
                first_window: window,
                windows_heard: 1,
            },
        };
        if candidate.windows_heard < START_WINDOWS {
            self.candidate = Some(candidate);
            return None;
        }
        self.active = Some(ActiveDigit {
            digit,
            first_window: candidate.first_window,
            last_window_heard: window,
            windows_missed: 0,
        });
        Some(DtmfEvent::Started(digit))
    }
}

/// Squared magnitude of the DFT of `samples` at the frequency whose
/// Goertzel coefficient (2·cos ω) is `coefficient`.
fn goertzel_power(coefficient: f64, samples: impl Iterator<Item = f64>) -> f64 {
    let (mut previous, mut before_previous) = (0.0, 0.0);
    for sample in samples {
        let current = sample + coefficient * previous - before_previous;
        before_previous = previous;
        previous = current;
    }
    previous * previous + before_previous * before_previous
        - coefficient * previous * before_previous
}

/// Index and power of the largest of four powers.
fn strongest(powers: &[f64; 4]) -> Option<(usize, f64)> {
    powers
        .iter()
        .copied()
        .enumerate()
        .max_by(|(_, a), (_, b)| a.total_cmp(b))
}
