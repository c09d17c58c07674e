//! Every codec on its own: a 1 kHz tone in, the same tone out.

mod common;

use common::*;
use dialtone_codecs::{
    new_decoder, new_encoder, Codec, CodecError, Decoder, Encoder, OpusDecoder, OpusEncoder,
    SampleRate, MAX_FRAME_SAMPLES, MAX_PAYLOAD_LEN,
};

/// Frames per run (1 s), and how many to skip before measuring: codec
/// start-up and Opus/Speex adaptation.
const FRAMES: usize = 50;
const SETTLE_FRAMES: usize = 10;

fn level_range(codec: Codec) -> (f64, f64) {
    match codec {
        // Waveform codecs reproduce the level closely.
        Codec::Pcmu | Codec::Pcma | Codec::G722 | Codec::L16 => (-0.5, 0.5),
        // Parametric codecs may shift it a little.
        Codec::Opus | Codec::SpeexNarrow | Codec::SpeexWide => (-3.0, 1.5),
    }
}

fn round_trip(codec: Codec, lost_from: Option<usize>) -> Result<(Vec<i16>, Vec<i16>), CodecError> {
    let rate = codec.sample_rate();
    let frames = sine_frames(rate, TONE_HZ, TONE_AMPLITUDE, FRAMES);
    let mut encoder = new_encoder(codec)?;
    let mut decoder = new_decoder(codec)?;
    let payloads: Vec<Option<Vec<u8>>> = encode_all(encoder.as_mut(), &frames)?
        .into_iter()
        .enumerate()
        .map(|(index, payload)| match lost_from {
            Some(first) if is_lost(index, first) => None,
            _ => Some(payload),
        })
        .collect();
    let output = decode_all(decoder.as_mut(), &payloads)?;
    let skip = SETTLE_FRAMES * rate.frame_samples();
    let input: Vec<i16> = frames.concat();
    Ok((output[skip..].to_vec(), input[skip..].to_vec()))
}

#[test]
fn a_1khz_tone_survives_every_codec() {
    for codec in Codec::ALL {
        let (output, input) = round_trip(codec, None).unwrap();
        let (min_db, max_db) = level_range(codec);
        assert_tone(
            &codec.to_string(),
            &output,
            &input,
            codec.sample_rate(),
            min_db,
            max_db,
        );
    }
}

#[test]
fn a_1khz_tone_survives_every_codec_with_5_percent_of_frames_lost() {
    for codec in Codec::ALL {
        // Losses at frames 12, 32: both inside the measured stretch.
        let (output, input) = round_trip(codec, Some(SETTLE_FRAMES + 2)).unwrap();
        let (min_db, max_db) = level_range(codec);
        assert_tone(
            &format!("{codec} with loss"),
            &output,
            &input,
            codec.sample_rate(),
            min_db - 1.5,
            max_db,
        );
    }
}

#[test]
fn concealment_continues_the_tone_rather_than_going_silent() {
    for codec in Codec::ALL {
        let rate = codec.sample_rate();
        let frames = sine_frames(rate, TONE_HZ, TONE_AMPLITUDE, 20);
        let mut encoder = new_encoder(codec).unwrap();
        let mut decoder = new_decoder(codec).unwrap();
        let payloads = encode_all(encoder.as_mut(), &frames).unwrap();
        let mut pcm = vec![0i16; MAX_FRAME_SAMPLES];
        for payload in &payloads[..19] {
            decoder.decode(payload, &mut pcm).unwrap();
        }
        let written = decoder.conceal(&mut pcm).unwrap();
        assert_eq!(written, rate.frame_samples());
        let concealed = &pcm[..written];
        let gain = gain_db(concealed, &frames[19]);
        assert!(gain > -10.0, "{codec}: concealed frame at {gain:.1} dB");
    }
}

#[test]
fn repeated_concealment_of_g711_g722_and_l16_fades_to_silence() {
    for codec in [Codec::Pcmu, Codec::Pcma, Codec::G722, Codec::L16] {
        let rate = codec.sample_rate();
        let frames = sine_frames(rate, TONE_HZ, TONE_AMPLITUDE, 5);
        let mut encoder = new_encoder(codec).unwrap();
        let mut decoder = new_decoder(codec).unwrap();
        let mut pcm = vec![0i16; rate.frame_samples()];
        for payload in encode_all(encoder.as_mut(), &frames).unwrap() {
            decoder.decode(&payload, &mut pcm).unwrap();
        }
        let levels: Vec<f64> = (0..4)
            .map(|_| {
                decoder.conceal(&mut pcm).unwrap();
                rms(&pcm)
            })
            .collect();
        assert!(
            levels[0] > levels[1] && levels[1] > levels[2],
            "{codec}: {levels:?}"
        );
        assert_eq!(levels[3], 0.0, "{codec}: silent after 60 ms of loss");
    }
}

/// Frames 0-19 of a 1 kHz tone, then 600 Hz from frame 20 on: frame 20 is
/// lost. Concealment can only extend the 1 kHz tone; FEC, carried in frame
/// 21, brings back the 600 Hz the sender actually sent.
fn opus_with_frame_20_lost(
    recover: impl Fn(&mut OpusDecoder, &[u8], &mut [i16]) -> Result<usize, CodecError>,
) -> Result<Vec<i16>, CodecError> {
    let rate = SampleRate::Hz48000;
    let mut frames = sine_frames(rate, TONE_HZ, TONE_AMPLITUDE, 20);
    frames.extend((20..30).map(|index| sine_frame(rate, 600.0, TONE_AMPLITUDE, index * 960)));
    let mut encoder = OpusEncoder::new()?;
    let payloads = encode_all(&mut encoder, &frames)?;
    let mut decoder = OpusDecoder::new()?;
    let mut pcm = vec![0i16; rate.frame_samples()];
    for payload in &payloads[..20] {
        decoder.decode(payload, &mut pcm)?;
    }
    assert_eq!(recover(&mut decoder, &payloads[21], &mut pcm)?, 960);
    Ok(pcm)
}

#[test]
fn opus_fec_rebuilds_a_lost_frame_from_the_next_payload() {
    let power = |pcm: &[i16], frequency: f64| {
        let samples: Vec<f64> = pcm.iter().map(|&s| f64::from(s)).collect();
        power_at(&samples, 48_000.0, frequency)
    };
    let fec = opus_with_frame_20_lost(|decoder, next, pcm| decoder.decode_fec(next, pcm)).unwrap();
    let concealed = opus_with_frame_20_lost(|decoder, _, pcm| decoder.conceal(pcm)).unwrap();
    // FEC data is coarser than the frame it stands for, and libopus blends
    // it with the state it had, so some 1 kHz remains.
    assert!(
        power(&fec, 600.0) > 2.0 * power(&fec, TONE_HZ),
        "FEC should give the 600 Hz that was sent"
    );
    assert!(power(&fec, 600.0) > 100.0 * power(&concealed, 600.0));
    assert!(
        power(&concealed, TONE_HZ) > 10.0 * power(&concealed, 600.0),
        "concealment can only extend the 1 kHz tone"
    );
}

#[test]
fn opus_treats_an_empty_payload_as_a_dtx_gap() {
    let mut decoder = OpusDecoder::new().unwrap();
    let mut pcm = vec![1i16; 960];
    assert_eq!(decoder.decode(&[], &mut pcm).unwrap(), 960);
    // Nothing decoded yet, so the gap is silent.
    assert!(rms(&pcm) < 10.0);
}

#[test]
fn opus_decodes_dtx_comfort_packets() {
    // A TOC byte alone (SILK wideband, 20 ms, one frame) is what a DTX
    // sender emits during silence: it decodes to a quiet 20 ms frame.
    let mut decoder = OpusDecoder::new().unwrap();
    let mut pcm = vec![0i16; 960];
    assert_eq!(decoder.decode(&[0x48], &mut pcm).unwrap(), 960);
    assert!(rms(&pcm) < 100.0);
}

#[test]
fn opus_rejects_packets_that_are_not_20_ms() {
    let mut decoder = OpusDecoder::new().unwrap();
    let mut pcm = vec![0i16; 960 * 3];
    // TOC config 11 (SILK wideband, 60 ms), code 0.
    let error = decoder.decode(&[11 << 3, 0, 0], &mut pcm).unwrap_err();
    assert!(
        matches!(error, CodecError::OpusFrameDuration { samples: 2880 }),
        "{error}"
    );
}

#[test]
fn payloads_fit_the_advertised_maximum() {
    for codec in Codec::ALL {
        let frames = sine_frames(codec.sample_rate(), TONE_HZ, TONE_AMPLITUDE, 10);
        let mut encoder = new_encoder(codec).unwrap();
        for payload in encode_all(encoder.as_mut(), &frames).unwrap() {
            assert!(
                !payload.is_empty() && payload.len() <= codec.max_payload_len(),
                "{codec}: {}",
                payload.len()
            );
            assert!(payload.len() <= MAX_PAYLOAD_LEN);
        }
    }
    assert_eq!(
        Codec::ALL.map(|codec| codec.max_payload_len()),
        [160, 160, 160, 1275, 38, 70, 640]
    );
}

#[test]
fn codec_facts() {
    let rates = Codec::ALL.map(|codec| {
        (
            codec.sample_rate().hz(),
            codec.rtp_clock_rate(),
            codec.frame_samples(),
        )
    });
    assert_eq!(
        rates,
        [
            (8000, 8000, 160),
            (8000, 8000, 160),
            (16000, 8000, 320),
            (48000, 48000, 960),
            (8000, 8000, 160),
            (16000, 16000, 320),
            (16000, 16000, 320),
        ]
    );
    let native: Vec<Codec> = Codec::ALL
        .into_iter()
        .filter(|c| c.has_native_concealment())
        .collect();
    assert_eq!(native, [Codec::Opus, Codec::SpeexNarrow, Codec::SpeexWide]);
}

#[test]
fn wrong_frame_lengths_are_errors() {
    for codec in Codec::ALL {
        let mut encoder = new_encoder(codec).unwrap();
        let mut payload = vec![0u8; MAX_PAYLOAD_LEN];
        for len in [0, codec.frame_samples() - 1, codec.frame_samples() + 1] {
            let error = encoder.encode(&vec![0; len], &mut payload).unwrap_err();
            assert!(
                matches!(error, CodecError::FrameLength { .. }),
                "{codec}: {error}"
            );
        }
        let error = encoder
            .encode(
                &vec![0; codec.frame_samples()],
                &mut payload[..codec.max_payload_len() - 1],
            )
            .unwrap_err();
        assert!(
            matches!(error, CodecError::BufferTooSmall { .. }),
            "{codec}: {error}"
        );

        let mut decoder = new_decoder(codec).unwrap();
        let valid = encode_all(encoder.as_mut(), &[vec![0; codec.frame_samples()]])
            .unwrap()
            .remove(0);
        let mut short = vec![0i16; codec.frame_samples() - 1];
        let error = decoder.decode(&valid, &mut short).unwrap_err();
        assert!(
            matches!(error, CodecError::BufferTooSmall { .. }),
            "{codec}: {error}"
        );
        let error = decoder.conceal(&mut short).unwrap_err();
        assert!(
            matches!(error, CodecError::BufferTooSmall { .. }),
            "{codec}: {error}"
        );
    }
}

#[test]
fn codecs_can_move_between_threads() {
    fn assert_send<T: Send>(_: &T) {}
    for codec in Codec::ALL {
        let encoder: Box<dyn Encoder> = new_encoder(codec).unwrap();
        let decoder: Box<dyn Decoder> = new_decoder(codec).unwrap();
        assert_send(&encoder);
        assert_send(&decoder);
        std::thread::spawn(move || drop((encoder, decoder)))
            .join()
            .unwrap();
    }
}

/// The effort set on a live Opus encoder takes effect: the same speech-like
/// frames code differently at complexity 0 and 10 (0 skips the pitch search
/// and noise shaping that 10 does).
#[test]
fn opus_complexity_set_on_a_live_encoder_changes_how_it_codes() {
    let frames = dialtone_codecs::voice_like_frames(Codec::Opus, 25);
    let mut coded = Vec::new();
    for complexity in [0, 10] {
        let mut encoder = OpusEncoder::new().unwrap();
        encoder.set_complexity(complexity);
        coded.push(encode_all(&mut encoder, &frames).unwrap());
    }
    let differing = coded[0]
        .iter()
        .zip(&coded[1])
        .filter(|(a, b)| a != b)
        .count();
    assert!(differing > 20, "only {differing} of 25 frames differ");
}
