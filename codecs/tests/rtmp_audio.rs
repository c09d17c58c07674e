//! Audio of the RTMP leg that does not come in 20 ms frames: AAC-LC and FLV
//! linear PCM, made by Debian's ffmpeg, decoded or unpacked to mono PCM and
//! re-framed into 20 ms L16 frames at 16 kHz.

mod common;

use std::f64::consts::TAU;
use std::io::ErrorKind;
use std::process::Command;

use common::*;
use dialtone_codecs::{
    linear_pcm_to_mono, new_decoder, AacDecoder, Codec, CodecError, PcmFramer, SampleRate,
};

/// ffmpeg's `sine` source plays at 1/8 of full scale.
const FFMPEG_SINE_RMS: f64 = 32_768.0 / 8.0 / std::f64::consts::SQRT_2;
/// ffmpeg spreads the mono source over two channels at its centre mix
/// level, -3 dB each, so the down-mix of its stereo is that much quieter.
const FFMPEG_STEREO_DB: f64 = -3.01;

/// One second of ffmpeg's 1 kHz `sine` source at `rate`, on `channels`
/// channels, encoded as `codec` into container `format`, read from its
/// standard output.
fn ffmpeg_tone(rate: u32, channels: u8, codec: &str, format: &str) -> Vec<u8> {
    let output = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i"])
        .arg(format!("sine=frequency=1000:sample_rate={rate}"))
        .args(["-t", "1", "-ac"])
        .arg(channels.to_string())
        .args(["-c:a", codec, "-f", format, "pipe:1"])
        .output();
    let output = match output {
        Ok(output) => output,
        Err(error) if error.kind() == ErrorKind::NotFound => panic!(
            "these tests need ffmpeg to make their audio: install it \
             (apt-get update && apt-get install -y ffmpeg)"
        ),
        Err(error) => panic!("cannot run ffmpeg: {error}"),
    };
    assert!(
        output.status.success(),
        "ffmpeg failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// An ADTS stream cut into its raw access units, with the 2-byte
/// AudioSpecificConfig its headers describe (ISO/IEC 14496-3 §1.A.2).
struct Adts {
    audio_specific_config: [u8; 2],
    frames: Vec<Vec<u8>>,
}

fn split_adts(mut stream: &[u8]) -> Adts {
    let mut config = None;
    let mut frames = Vec::new();
    while !stream.is_empty() {
        assert!(stream.len() >= 7, "truncated ADTS header");
        assert_eq!(stream[0], 0xFF, "ADTS sync");
        assert_eq!(stream[1] & 0xF0, 0xF0, "ADTS sync");
        let protection_absent = stream[1] & 0x01 != 0;
        let object_type = (stream[2] >> 6) + 1;
        let rate_index = (stream[2] >> 2) & 0x0F;
        let channels = ((stream[2] & 0x01) << 2) | (stream[3] >> 6);
        let frame_length = (usize::from(stream[3] & 0x03) << 11)
            | (usize::from(stream[4]) << 3)
            | usize::from(stream[5] >> 5);
        let raw_blocks = (stream[6] & 0x03) + 1;
        assert_eq!(raw_blocks, 1, "one access unit per ADTS frame");
        let header_length = if protection_absent { 7 } else { 9 };
        frames.push(stream[header_length..frame_length].to_vec());
        let this_config = [
            (object_type << 3) | (rate_index >> 1),
            ((rate_index & 0x01) << 7) | (channels << 3),
        ];
        assert_eq!(*config.get_or_insert(this_config), this_config);
        stream = &stream[frame_length..];
    }
    let Some(audio_specific_config) = config else {
        panic!("ffmpeg wrote no ADTS frame");
    };
    Adts {
        audio_specific_config,
        frames,
    }
}

fn decode_aac(adts: &Adts) -> Result<(AacDecoder, Vec<i16>), CodecError> {
    let mut decoder = AacDecoder::new(&adts.audio_specific_config)?;
    let mut pcm = Vec::new();
    for frame in &adts.frames {
        decoder.decode(frame, &mut pcm)?;
    }
    Ok((decoder, pcm))
}

/// Frequency from the rising zero crossings of `samples` (a clean tone).
fn zero_crossing_frequency(samples: &[i16], rate: u32) -> f64 {
    let rising: Vec<usize> = samples
        .windows(2)
        .enumerate()
        .filter(|(_, pair)| pair[0] < 0 && pair[1] >= 0)
        .map(|(index, _)| index)
        .collect();
    let (first, last) = (rising[0], rising[rising.len() - 1]);
    (rising.len() - 1) as f64 * f64::from(rate) / (last - first) as f64
}

/// Asserts `samples` (after 100 ms of start-up) are a 1 kHz tone at about
/// the level ffmpeg's sine source has on `channels` channels.
fn assert_ffmpeg_tone(what: &str, samples: &[i16], rate: u32, channels: u8) {
    let steady = &samples[rate as usize / 10..];
    let frequency = zero_crossing_frequency(steady, rate);
    assert!(
        (frequency - TONE_HZ).abs() < 2.0,
        "{what}: {frequency:.1} Hz"
    );
    let expected_db = if channels == 2 { FFMPEG_STEREO_DB } else { 0.0 };
    let level_db = 20.0 * (rms(steady) / FFMPEG_SINE_RMS).log10();
    assert!(
        (level_db - expected_db).abs() < 0.5,
        "{what}: level {level_db:.2} dB, {expected_db} dB expected"
    );
}

/// Pushes `pcm` in chunks of awkward sizes and collects the frames, each
/// decoded back from L16.
fn reframe(framer: &mut PcmFramer, pcm: &[i16]) -> Result<Vec<Vec<i16>>, CodecError> {
    let mut frames = Vec::new();
    let mut payload = [0u8; 640];
    let mut l16 = new_decoder(Codec::L16)?;
    let mut rest = pcm;
    for size in [1, 7, 441, 1000, 13, 2049, 319, 320, 321].iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, after) = rest.split_at((*size).min(rest.len()));
        rest = after;
        framer.push(chunk)?;
        while let Some(len) = framer.pop_frame(&mut payload) {
            assert_eq!(len, 640);
            let mut frame = vec![0i16; 320];
            assert_eq!(l16.decode(&payload[..len], &mut frame)?, 320);
            frames.push(frame);
        }
    }
    Ok(frames)
}

fn synthetic_tone(rate: u32, seconds: f64) -> Vec<i16> {
    let samples = (f64::from(rate) * seconds) as usize;
    (0..samples)
        .map(|n| {
            let t = n as f64 / f64::from(rate);
            (TONE_AMPLITUDE * (TAU * TONE_HZ * t).sin()).round() as i16
        })
        .collect()
}

#[test]
fn aac_lc_from_ffmpeg_decodes_to_a_1khz_tone() {
    for (rate, channels) in [(44_100, 1), (48_000, 2), (16_000, 1), (22_050, 2)] {
        let what = format!("AAC-LC {rate} Hz, {channels} channel(s)");
        let adts = split_adts(&ffmpeg_tone(rate, channels, "aac", "adts"));
        let (decoder, pcm) = decode_aac(&adts).unwrap();
        assert_eq!(decoder.sample_rate(), rate, "{what}");
        assert_eq!(pcm.len(), adts.frames.len() * 1024, "{what}");
        // ffmpeg pads one second out to whole frames, plus priming.
        assert!(pcm.len() >= rate as usize, "{what}: {} samples", pcm.len());
        assert_ffmpeg_tone(&what, &pcm[..rate as usize], rate, channels);
    }
}

#[test]
fn aac_reframed_into_l16_is_a_1khz_tone_at_16khz() {
    let adts = split_adts(&ffmpeg_tone(44_100, 2, "aac", "adts"));
    let (decoder, pcm) = decode_aac(&adts).unwrap();
    let mut framer = PcmFramer::new(decoder.sample_rate()).unwrap();
    let frames = reframe(&mut framer, &pcm).unwrap();
    let expected = pcm.len() * 16_000 / 44_100 / 320;
    assert!(
        frames.len().abs_diff(expected) <= 1,
        "{} frames, {expected} expected",
        frames.len()
    );
    let output = frames.concat();
    assert_ffmpeg_tone("AAC 44.1 kHz → L16", &output[..16_000], 16_000, 2);
}

#[test]
fn garbage_aac_is_refused_without_panicking_and_the_decoder_recovers() {
    let mut random = Xorshift(0x0AAC_0AAC_0AAC_0AAC);
    for len in [0, 1, 2, 5, 64] {
        // Random configs that parse as LC may be accepted; the rest must
        // be errors, and none may panic.
        let _ = AacDecoder::new(&random.bytes(len));
    }
    let adts = split_adts(&ffmpeg_tone(44_100, 2, "aac", "adts"));
    let mut decoder = AacDecoder::new(&adts.audio_specific_config).unwrap();
    let mut pcm = Vec::new();
    assert!(decoder.decode(&[], &mut pcm).is_err());
    let mut errors = 0;
    for round in 0..2_000 {
        let len = match round % 4 {
            0 => 1 + (random.next_u64() % 8) as usize,
            _ => (random.next_u64() % 800) as usize,
        };
        let before = pcm.len();
        match decoder.decode(&random.bytes(len), &mut pcm) {
            Ok(()) => assert_eq!(pcm.len() - before, 1024, "a whole frame or nothing"),
            Err(_) => {
                errors += 1;
                assert_eq!(pcm.len(), before, "nothing appended on error");
            }
        }
    }
    assert!(
        errors > 1_000,
        "only {errors} of 2000 garbage frames refused"
    );
    // Truncated real frames are garbage too.
    for frame in &adts.frames[5..25] {
        let _ = decoder.decode(&frame[..frame.len() / 2], &mut pcm);
    }
    pcm.clear();
    for frame in &adts.frames {
        decoder.decode(frame, &mut pcm).unwrap();
    }
    assert_ffmpeg_tone("AAC after garbage", &pcm[..44_100], 44_100, 2);
}

#[test]
fn flv_linear_pcm_from_ffmpeg_reframes_into_a_1khz_tone() {
    // FLV's linear PCM: 16-bit little-endian signed or 8-bit unsigned, at
    // its 5.5, 11, 22 and 44 kHz rates, mono or stereo.
    for (rate, channels, bits, codec) in [
        (44_100, 2, 16, "pcm_s16le"),
        (22_050, 1, 16, "pcm_s16le"),
        (11_025, 2, 8, "pcm_u8"),
        (5_512, 1, 8, "pcm_u8"),
    ] {
        let what = format!("{bits}-bit {rate} Hz, {channels} channel(s)");
        let format = &codec[4..];
        let payload = ffmpeg_tone(rate, channels, codec, format);
        let mut pcm = Vec::new();
        linear_pcm_to_mono(&payload, bits, channels, &mut pcm).unwrap();
        assert_eq!(pcm.len(), rate as usize, "{what}");
        // 8-bit quantisation noise is far below the tone, so the level
        // holds for both.
        assert_ffmpeg_tone(&what, &pcm, rate, channels);

        let mut framer = PcmFramer::new(rate).unwrap();
        let output = reframe(&mut framer, &pcm).unwrap().concat();
        // What is left over is less than one resampling block.
        assert!(output.len() > 12_000, "{what}: {} samples", output.len());
        assert_ffmpeg_tone(&format!("{what} → L16"), &output, 16_000, channels);
    }
}

#[test]
fn a_44khz_tone_in_odd_chunks_comes_out_as_whole_16khz_frames() {
    let input = synthetic_tone(44_100, 2.0);
    let mut framer = PcmFramer::new(44_100).unwrap();
    let frames = reframe(&mut framer, &input).unwrap();
    // 2 s at 16 kHz is 100 frames; the resampler works in 20 ms blocks, so
    // at most one is still inside it.
    assert!(
        (99..=100).contains(&frames.len()),
        "{} frames",
        frames.len()
    );
    let output = frames.concat();
    // Skip the resampler's 10 ms delay and start-up.
    let skip = 10 * 320;
    let reference = synthetic_tone(16_000, 2.0);
    assert_tone(
        "44.1 kHz → L16",
        &output[skip..],
        &reference[skip..output.len()],
        SampleRate::Hz16000,
        -0.5,
        0.5,
    );
}

#[test]
fn every_input_rate_reframes_a_tone_with_the_right_sample_count() {
    for rate in PcmFramer::INPUT_RATES {
        let input = synthetic_tone(rate, 2.0);
        let mut framer = PcmFramer::new(rate).unwrap();
        let output = reframe(&mut framer, &input).unwrap().concat();
        // Short of 32 000 by at most one resampling block (125 ms at
        // 5512 Hz) plus one partial frame.
        assert!(
            (29_600..=32_000).contains(&output.len()),
            "{rate} Hz: {} samples",
            output.len()
        );
        let skip = 10 * 320;
        let reference = synthetic_tone(16_000, 2.0);
        assert_tone(
            &format!("{rate} Hz → L16"),
            &output[skip..],
            &reference[skip..output.len()],
            SampleRate::Hz16000,
            -0.5,
            0.5,
        );
    }
}

#[test]
fn the_aac_decoder_and_framer_can_move_between_threads() {
    fn assert_send<T: Send>() {}
    assert_send::<AacDecoder>();
    assert_send::<PcmFramer>();
}
