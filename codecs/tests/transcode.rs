//! Transcoding between every pair of codecs, and the resampler under it.

mod common;

use std::time::Duration;

use common::*;
use dialtone_codecs::{
    new_decoder, new_encoder, Codec, CodecError, Resampler, SampleRate, Transcoder, MAX_PAYLOAD_LEN,
};

const FRAMES: usize = 50;
/// Skipped before measuring: codec start-up plus resampler delay.
const SETTLE_FRAMES: usize = 10;

/// Encodes a tone with `from`, transcodes to `to` (concealing the frames
/// `lose` picks), decodes with `to`; returns output and the matching input.
fn transcode_tone(
    from: Codec,
    to: Codec,
    lose: impl Fn(usize) -> bool,
) -> Result<(Vec<i16>, Vec<i16>), CodecError> {
    let input = sine_frames(from.sample_rate(), TONE_HZ, TONE_AMPLITUDE, FRAMES);
    let mut encoder = new_encoder(from)?;
    let mut transcoder = Transcoder::new(from, to)?;
    let mut out = vec![0u8; to.max_payload_len()];
    let mut transcoded = Vec::new();
    for (index, payload) in encode_all(encoder.as_mut(), &input)?.iter().enumerate() {
        let len = if lose(index) {
            transcoder.conceal_into(&mut out)?
        } else {
            transcoder.transcode(payload, &mut out)?
        };
        transcoded.push(Some(out[..len].to_vec()));
    }
    let mut decoder = new_decoder(to)?;
    let output = decode_all(decoder.as_mut(), &transcoded)?;
    // The reference is the same tone at the output rate.
    let reference = sine_frames(to.sample_rate(), TONE_HZ, TONE_AMPLITUDE, FRAMES).concat();
    let skip = SETTLE_FRAMES * to.frame_samples();
    Ok((output[skip..].to_vec(), reference[skip..].to_vec()))
}

fn pairs() -> impl Iterator<Item = (Codec, Codec)> {
    Codec::ALL
        .into_iter()
        .flat_map(|from| Codec::ALL.into_iter().map(move |to| (from, to)))
        .filter(|(from, to)| from != to)
}

#[test]
fn a_1khz_tone_survives_every_transcode_pair() {
    for (from, to) in pairs() {
        let (output, reference) = transcode_tone(from, to, |_| false).unwrap();
        assert_tone(
            &format!("{from} → {to}"),
            &output,
            &reference,
            to.sample_rate(),
            -3.0,
            1.0,
        );
    }
}

#[test]
fn a_1khz_tone_survives_every_transcode_pair_with_5_percent_of_frames_lost() {
    for (from, to) in pairs() {
        let (output, reference) =
            transcode_tone(from, to, |index| is_lost(index, SETTLE_FRAMES + 3)).unwrap();
        assert_tone(
            &format!("{from} → {to} with loss"),
            &output,
            &reference,
            to.sample_rate(),
            -4.0,
            1.0,
        );
    }
}

#[test]
fn opus_fec_recovery_through_a_transcoder() {
    let input = sine_frames(SampleRate::Hz48000, TONE_HZ, TONE_AMPLITUDE, FRAMES);
    let mut encoder = new_encoder(Codec::Opus).unwrap();
    let payloads = encode_all(encoder.as_mut(), &input).unwrap();
    let mut transcoder = Transcoder::new(Codec::Opus, Codec::Pcmu).unwrap();
    let mut out = [0u8; 160];
    let mut transcoded = Vec::new();
    for (index, payload) in payloads.iter().enumerate() {
        // Frame 25 never arrives; it is rebuilt when frame 26 does.
        let len = match index {
            25 => transcoder.recover_into(&payloads[26], &mut out).unwrap(),
            _ => transcoder.transcode(payload, &mut out).unwrap(),
        };
        transcoded.push(Some(out[..len].to_vec()));
    }
    let mut decoder = new_decoder(Codec::Pcmu).unwrap();
    let output = decode_all(decoder.as_mut(), &transcoded).unwrap();
    let reference = sine_frames(SampleRate::Hz8000, TONE_HZ, TONE_AMPLITUDE, FRAMES).concat();
    let skip = SETTLE_FRAMES * 160;
    assert_tone(
        "Opus → PCMU with FEC",
        &output[skip..],
        &reference[skip..],
        SampleRate::Hz8000,
        -3.0,
        1.0,
    );
    // The rebuilt frame itself carries the tone.
    let rebuilt = &output[25 * 160..26 * 160];
    assert!(gain_db(rebuilt, &reference[..160]) > -6.0);
}

#[test]
fn opus_from_a_transcoder_codes_only_the_source_band() {
    // Resampled G.711 holds nothing above 4 kHz, G.722 nothing above 8 kHz:
    // the transcoder caps Opus to narrowband and wideband to match.
    for (from, band) in [
        (Codec::Pcmu, audiopus::Bandwidth::Narrowband),
        (Codec::G722, audiopus::Bandwidth::Wideband),
    ] {
        let input = sine_frames(from.sample_rate(), TONE_HZ, TONE_AMPLITUDE, 10);
        let mut encoder = new_encoder(from).unwrap();
        let mut transcoder = Transcoder::new(from, Codec::Opus).unwrap();
        let mut out = [0u8; MAX_PAYLOAD_LEN];
        for payload in encode_all(encoder.as_mut(), &input).unwrap() {
            let len = transcoder.transcode(&payload, &mut out).unwrap();
            assert_eq!(
                audiopus::packet::bandwidth(&out[..len]).unwrap(),
                band,
                "{from}"
            );
        }
    }
}

#[test]
fn a_transcoder_refuses_pass_through() {
    for codec in Codec::ALL {
        assert!(
            matches!(Transcoder::new(codec, codec), Err(CodecError::SameCodec(c)) if c == codec)
        );
    }
}

#[test]
fn a_transcoder_reports_its_codecs_and_delay() {
    let transcoder = Transcoder::new(Codec::Opus, Codec::Pcmu).unwrap();
    assert_eq!(
        (transcoder.from_codec(), transcoder.to_codec()),
        (Codec::Opus, Codec::Pcmu)
    );
    // libopus decodes and encodes at the other side's rate: no resampler.
    for (from, to) in [
        (Codec::Opus, Codec::Pcmu),
        (Codec::Pcma, Codec::Opus),
        (Codec::Opus, Codec::G722),
        (Codec::Pcma, Codec::Pcmu),
    ] {
        let transcoder = Transcoder::new(from, to).unwrap();
        assert_eq!(
            transcoder.resampling_delay(),
            Duration::ZERO,
            "{from:?} → {to:?}"
        );
    }
    let transcoder = Transcoder::new(Codec::G722, Codec::Pcmu).unwrap();
    assert_eq!(transcoder.resampling_delay(), Duration::from_millis(10));
}

#[test]
fn the_resampler_keeps_a_tone_and_its_level_between_all_rates() {
    for from in SampleRate::ALL {
        for to in SampleRate::ALL {
            let mut resampler = Resampler::new(from, to).unwrap();
            assert_eq!((resampler.from_rate(), resampler.to_rate()), (from, to));
            let mut output = Vec::new();
            let mut frame = vec![0i16; to.frame_samples()];
            for input in sine_frames(from, TONE_HZ, TONE_AMPLITUDE, 20) {
                assert_eq!(
                    resampler.process(&input, &mut frame).unwrap(),
                    to.frame_samples()
                );
                output.extend_from_slice(&frame);
            }
            let skip = 2 * to.frame_samples();
            let reference = sine_frames(to, TONE_HZ, TONE_AMPLITUDE, 20).concat();
            assert_tone(
                &format!("{from:?} → {to:?}"),
                &output[skip..],
                &reference[skip..],
                to,
                -0.1,
                0.1,
            );
        }
    }
}

#[test]
fn the_resampler_delays_by_half_a_frame() {
    for from in SampleRate::ALL {
        for to in SampleRate::ALL {
            let mut resampler = Resampler::new(from, to).unwrap();
            let expected = if from == to {
                0
            } else {
                to.frame_samples() / 2
            };
            assert_eq!(resampler.delay_samples(), expected, "{from:?} → {to:?}");
            // A click in the first frame comes out `delay_samples` late.
            let mut click = vec![0i16; from.frame_samples()];
            click[0] = 20_000;
            let mut output = vec![0i16; to.frame_samples()];
            let mut stream = Vec::new();
            for input in [click, vec![0; from.frame_samples()]] {
                resampler.process(&input, &mut output).unwrap();
                stream.extend_from_slice(&output);
            }
            let peak = (0..stream.len())
                .max_by_key(|&i| stream[i].unsigned_abs())
                .unwrap();
            assert!(
                peak.abs_diff(expected) <= 1,
                "{from:?} → {to:?}: peak at {peak}, expected {expected}"
            );
        }
    }
}

#[test]
fn the_resampler_checks_frame_lengths() {
    let mut resampler = Resampler::new(SampleRate::Hz8000, SampleRate::Hz48000).unwrap();
    let mut output = vec![0i16; 960];
    assert!(matches!(
        resampler.process(&[0; 159], &mut output),
        Err(CodecError::FrameLength {
            expected: 160,
            actual: 159
        })
    ));
    assert!(matches!(
        resampler.process(&[0; 160], &mut output[..959]),
        Err(CodecError::BufferTooSmall {
            required: 960,
            available: 959
        })
    ));
}
