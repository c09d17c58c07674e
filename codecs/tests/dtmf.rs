//! DTMF generation and detection, alone and through G.711.

mod common;

use std::time::Duration;

use common::*;
use dialtone_codecs::{
    new_decoder, new_encoder, Codec, CodecError, DtmfDetector, DtmfDigit, DtmfEvent, DtmfGenerator,
    SampleRate, DEFAULT_DTMF_LEVEL_DBFS, MAX_DTMF_LEVEL_DBFS,
};

/// A keyed sequence: `tone` of each digit, then `gap` of silence.
fn keyed_frames(
    rate: SampleRate,
    digits: &[DtmfDigit],
    tone: Duration,
    gap: Duration,
) -> Result<Vec<Vec<i16>>, CodecError> {
    let mut frames = vec![vec![0i16; rate.frame_samples()]; 3];
    for &digit in digits {
        let mut generator = DtmfGenerator::new(rate, digit, tone, DEFAULT_DTMF_LEVEL_DBFS)?;
        let mut silence_left = gap.as_millis() as usize / 20;
        while !generator.is_finished() {
            let mut frame = vec![0i16; rate.frame_samples()];
            let tone_samples = generator.fill_frame(&mut frame)?;
            if tone_samples < frame.len() {
                // The tail of this frame is already part of the gap.
                silence_left = silence_left.saturating_sub(1);
            }
            frames.push(frame);
        }
        frames.extend(std::iter::repeat_n(
            vec![0i16; rate.frame_samples()],
            silence_left,
        ));
    }
    frames.extend(std::iter::repeat_n(vec![0i16; rate.frame_samples()], 5));
    Ok(frames)
}

fn detect(rate: SampleRate, frames: &[Vec<i16>]) -> Result<Vec<DtmfEvent>, CodecError> {
    let mut detector = DtmfDetector::new(rate);
    let mut events = Vec::new();
    for frame in frames {
        events.extend(detector.process(frame)?);
    }
    Ok(events)
}

/// The events a clean keyed sequence must produce: start and end of each
/// digit in order, each lasting about `tone`.
fn assert_detected(what: &str, events: &[DtmfEvent], digits: &[DtmfDigit], tone: Duration) {
    let starts: Vec<DtmfDigit> = events
        .iter()
        .filter_map(|event| match event {
            DtmfEvent::Started(digit) => Some(*digit),
            DtmfEvent::Ended { .. } => None,
        })
        .collect();
    assert_eq!(starts, digits, "{what}: {events:?}");
    assert_eq!(events.len(), 2 * digits.len(), "{what}: {events:?}");
    for (pair, &digit) in events.chunks(2).zip(digits) {
        assert_eq!(pair[0], DtmfEvent::Started(digit), "{what}");
        let DtmfEvent::Ended {
            digit: ended,
            duration,
        } = pair[1]
        else {
            panic!("{what}: expected the end of {digit:?}, got {:?}", pair[1]);
        };
        assert_eq!(ended, digit, "{what}");
        let error = duration.abs_diff(tone);
        assert!(
            error <= Duration::from_millis(15),
            "{what}: {digit:?} lasted {duration:?}"
        );
    }
}

fn through_g711(codec: Codec, frames: &[Vec<i16>]) -> Result<Vec<Vec<i16>>, CodecError> {
    let mut encoder = new_encoder(codec)?;
    let mut decoder = new_decoder(codec)?;
    encode_all(encoder.as_mut(), frames)?
        .into_iter()
        .map(|payload| {
            let mut frame = vec![0i16; 160];
            decoder.decode(&payload, &mut frame)?;
            Ok(frame)
        })
        .collect()
}

const TONE: Duration = Duration::from_millis(100);
const GAP: Duration = Duration::from_millis(100);

#[test]
fn all_16_digits_are_detected_in_order_at_8_and_16_khz() {
    for rate in [SampleRate::Hz8000, SampleRate::Hz16000] {
        let frames = keyed_frames(rate, &DtmfDigit::ALL, TONE, GAP).unwrap();
        assert_detected(
            &format!("{rate:?}"),
            &detect(rate, &frames).unwrap(),
            &DtmfDigit::ALL,
            TONE,
        );
    }
}

#[test]
fn all_16_digits_survive_g711() {
    let frames = keyed_frames(SampleRate::Hz8000, &DtmfDigit::ALL, TONE, GAP).unwrap();
    for codec in [Codec::Pcmu, Codec::Pcma] {
        let decoded = through_g711(codec, &frames).unwrap();
        assert_detected(
            &codec.to_string(),
            &detect(SampleRate::Hz8000, &decoded).unwrap(),
            &DtmfDigit::ALL,
            TONE,
        );
    }
}

#[test]
fn fast_dialling_at_the_minimum_duration_and_gap_is_detected() {
    // 40 ms tones with 40 ms gaps, at every alignment against the frames.
    let digits = [
        DtmfDigit::Nine,
        DtmfDigit::One,
        DtmfDigit::One,
        DtmfDigit::Star,
    ];
    for offset_ms in [0, 5, 10, 15] {
        for rate in [SampleRate::Hz8000, SampleRate::Hz16000] {
            let samples_per_ms = rate.frame_samples() / 20;
            let mut stream = vec![0i16; (60 + offset_ms) * samples_per_ms];
            for &digit in &digits {
                let mut generator = DtmfGenerator::new(
                    rate,
                    digit,
                    Duration::from_millis(40),
                    DEFAULT_DTMF_LEVEL_DBFS,
                )
                .unwrap();
                let mut frame = vec![0i16; rate.frame_samples()];
                generator.fill_frame(&mut frame).unwrap();
                stream.extend_from_slice(&frame); // 20 ms of tone
                generator.fill_frame(&mut frame).unwrap();
                stream.extend_from_slice(&frame); // 20 ms more
                stream.extend(std::iter::repeat_n(0, 40 * samples_per_ms));
            }
            stream.resize(
                stream.len().next_multiple_of(rate.frame_samples()) + 3 * rate.frame_samples(),
                0,
            );
            let frames: Vec<Vec<i16>> = stream
                .chunks(rate.frame_samples())
                .map(<[i16]>::to_vec)
                .collect();
            let events = detect(rate, &frames).unwrap();
            let starts: Vec<DtmfEvent> = events
                .iter()
                .copied()
                .filter(|e| matches!(e, DtmfEvent::Started(_)))
                .collect();
            assert_eq!(
                starts,
                digits.map(DtmfEvent::Started),
                "{rate:?}, offset {offset_ms} ms: {events:?}"
            );
        }
    }
}

#[test]
fn tones_shorter_than_about_25_ms_are_ignored() {
    for rate in [SampleRate::Hz8000, SampleRate::Hz16000] {
        for offset_ms in [0, 5, 10, 15] {
            let samples_per_ms = rate.frame_samples() / 20;
            let mut stream = vec![0i16; (40 + offset_ms) * samples_per_ms];
            let mut generator = DtmfGenerator::new(
                rate,
                DtmfDigit::Five,
                Duration::from_millis(20),
                DEFAULT_DTMF_LEVEL_DBFS,
            )
            .unwrap();
            let mut frame = vec![0i16; rate.frame_samples()];
            generator.fill_frame(&mut frame).unwrap();
            stream.extend_from_slice(&frame);
            stream.resize(
                stream.len().next_multiple_of(rate.frame_samples()) + 5 * rate.frame_samples(),
                0,
            );
            let frames: Vec<Vec<i16>> = stream
                .chunks(rate.frame_samples())
                .map(<[i16]>::to_vec)
                .collect();
            assert_eq!(
                detect(rate, &frames).unwrap(),
                [],
                "{rate:?}, offset {offset_ms} ms"
            );
        }
    }
}

#[test]
fn no_digit_in_silence_a_steady_1khz_tone_or_white_noise() {
    for rate in [SampleRate::Hz8000, SampleRate::Hz16000] {
        let frames = 250; // 5 s each
        let silence = vec![vec![0i16; rate.frame_samples()]; frames];
        assert_eq!(detect(rate, &silence).unwrap(), [], "{rate:?} silence");

        for amplitude in [1_000.0, TONE_AMPLITUDE, 30_000.0] {
            let tone = sine_frames(rate, TONE_HZ, amplitude, frames);
            assert_eq!(
                detect(rate, &tone).unwrap(),
                [],
                "{rate:?} 1 kHz at {amplitude}"
            );
        }

        let mut random = Xorshift(0x5EED_1234_ABCD_0001);
        for noise_rms in [300.0, 3_000.0] {
            let noise: Vec<Vec<i16>> = (0..frames)
                .map(|_| random.noise_frame(rate.frame_samples(), noise_rms))
                .collect();
            assert_eq!(
                detect(rate, &noise).unwrap(),
                [],
                "{rate:?} noise at RMS {noise_rms}"
            );
        }
    }
}

#[test]
fn a_digit_under_moderate_noise_is_still_detected() {
    let rate = SampleRate::Hz8000;
    let digits = [DtmfDigit::Four, DtmfDigit::Two];
    let mut random = Xorshift(42);
    let frames: Vec<Vec<i16>> = keyed_frames(rate, &digits, TONE, GAP)
        .unwrap()
        .into_iter()
        .map(|frame| {
            // Noise 20 dB below each tone.
            let noise = random.noise_frame(frame.len(), 230.0);
            frame
                .iter()
                .zip(noise)
                .map(|(&s, n)| s.saturating_add(n))
                .collect()
        })
        .collect();
    assert_detected("noisy", &detect(rate, &frames).unwrap(), &digits, TONE);
}

#[test]
fn digits_map_to_their_keys_and_q23_frequencies() {
    let keys: String = DtmfDigit::ALL.iter().map(|d| d.as_char()).collect();
    assert_eq!(keys, "123A456B789C*0#D");
    for digit in DtmfDigit::ALL {
        assert_eq!(DtmfDigit::from_char(digit.as_char()), Some(digit));
    }
    assert_eq!(DtmfDigit::from_char('b'), Some(DtmfDigit::B));
    assert_eq!(DtmfDigit::from_char('E'), None);
    assert_eq!(DtmfDigit::Zero.frequencies(), (941.0, 1336.0));
    assert_eq!(DtmfDigit::One.frequencies(), (697.0, 1209.0));
    assert_eq!(DtmfDigit::D.frequencies(), (941.0, 1633.0));
    assert_eq!(DtmfDigit::Six.frequencies(), (770.0, 1477.0));
}

#[test]
fn the_generator_writes_the_requested_tone() {
    let rate = SampleRate::Hz8000;
    let mut generator =
        DtmfGenerator::new(rate, DtmfDigit::Eight, Duration::from_millis(50), -10.0).unwrap();
    let mut frames = Vec::new();
    let mut tone_samples = Vec::new();
    while !generator.is_finished() {
        let mut frame = vec![0i16; 160];
        tone_samples.push(generator.fill_frame(&mut frame).unwrap());
        frames.push(frame);
    }
    // 50 ms = 400 samples: two whole frames and half of a third.
    assert_eq!(tone_samples, [160, 160, 80]);
    assert!(frames[2][80..].iter().all(|&s| s == 0));
    let tone: Vec<i16> = frames.concat()[..400].to_vec();
    // Two tones at -10 dBFS each: RMS = 32767 · 10^(-10/20) (√2/2 each, summed in power).
    let expected_rms = 32_767.0 * 10f64.powf(-0.5);
    assert!(
        (rms(&tone) / expected_rms - 1.0).abs() < 0.02,
        "rms {}",
        rms(&tone)
    );
    let samples: Vec<f64> = tone.iter().map(|&s| f64::from(s)).collect();
    let at = |f: f64| power_at(&samples, 8_000.0, f);
    assert!(at(852.0) > 100.0 * at(770.0) && at(1336.0) > 100.0 * at(1209.0));
}

#[test]
fn bad_generator_and_detector_input_is_an_error() {
    let too_loud = DtmfGenerator::new(
        SampleRate::Hz8000,
        DtmfDigit::One,
        Duration::from_millis(100),
        MAX_DTMF_LEVEL_DBFS + 0.1,
    );
    assert!(matches!(too_loud, Err(CodecError::DtmfLevel(_))));
    assert!(DtmfGenerator::new(
        SampleRate::Hz8000,
        DtmfDigit::One,
        Duration::from_millis(100),
        f64::NAN
    )
    .is_err());
    let mut generator = DtmfGenerator::new(
        SampleRate::Hz16000,
        DtmfDigit::One,
        Duration::from_millis(100),
        -10.0,
    )
    .unwrap();
    assert!(matches!(
        generator.fill_frame(&mut [0; 160]),
        Err(CodecError::FrameLength {
            expected: 320,
            actual: 160
        })
    ));
    let mut detector = DtmfDetector::new(SampleRate::Hz8000);
    assert!(matches!(
        detector.process(&[0; 320]),
        Err(CodecError::FrameLength {
            expected: 160,
            actual: 320
        })
    ));
}
