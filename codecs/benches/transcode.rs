//! Cost of transcoding one 20 ms frame on the paths the gateway uses.
//!
//! Run with `cargo bench -p dialtone-codecs`.

use std::f64::consts::TAU;
use std::hint::black_box;
use std::time::Duration;

use criterion::Criterion;
use dialtone_codecs::{new_encoder, Codec, CodecError, Transcoder, MAX_PAYLOAD_LEN};

/// One second of payloads to cycle through.
const FRAMES: usize = 50;

/// A voice-like test signal: three harmonics with a slow syllable-rate
/// envelope plus a little noise, so Opus and Speex do realistic work
/// rather than coding a pure tone or silence.
fn voice_like_frames(codec: Codec) -> Vec<Vec<i16>> {
    let rate = f64::from(codec.sample_rate().hz());
    let mut noise_state: u32 = 0x1234_5678;
    (0..FRAMES * codec.frame_samples())
        .map(|n| {
            let t = n as f64 / rate;
            let envelope = 0.55 + 0.45 * (TAU * 4.0 * t).sin();
            let voice = [(220.0, 0.5), (660.0, 0.3), (1_760.0, 0.2)]
                .iter()
                .map(|&(frequency, weight)| weight * (TAU * frequency * t).sin())
                .sum::<f64>();
            noise_state ^= noise_state << 13;
            noise_state ^= noise_state >> 17;
            noise_state ^= noise_state << 5;
            let noise = f64::from(noise_state as i32) / f64::from(i32::MAX) * 0.02;
            ((envelope * voice + noise) * 12_000.0) as i16
        })
        .collect::<Vec<i16>>()
        .chunks(codec.frame_samples())
        .map(<[i16]>::to_vec)
        .collect()
}

fn payloads(codec: Codec) -> Result<Vec<Vec<u8>>, CodecError> {
    let mut encoder = new_encoder(codec)?;
    let mut buffer = [0u8; MAX_PAYLOAD_LEN];
    voice_like_frames(codec)
        .iter()
        .map(|frame| {
            let len = encoder.encode(frame, &mut buffer)?;
            Ok(buffer[..len].to_vec())
        })
        .collect()
}

fn bench_path(criterion: &mut Criterion, from: Codec, to: Codec) -> Result<(), CodecError> {
    let payloads = payloads(from)?;
    let mut transcoder = Transcoder::new(from, to)?;
    let mut out = [0u8; MAX_PAYLOAD_LEN];
    // One pass up front, so the timed loop cannot be timing error paths.
    for payload in &payloads {
        transcoder.transcode(payload, &mut out)?;
    }
    let mut next = payloads.iter().cycle();
    criterion.bench_function(&format!("transcode {from} -> {to}"), |bencher| {
        bencher.iter(|| {
            let payload = next.next().map_or(&[][..], Vec::as_slice);
            black_box(transcoder.transcode(black_box(payload), &mut out))
        });
    });
    Ok(())
}

fn bench_pass_through_copy(criterion: &mut Criterion) {
    let payload = [0xD5u8; 160];
    let mut out = [0u8; MAX_PAYLOAD_LEN];
    criterion.bench_function("pass-through copy of a 160-byte payload", |bencher| {
        bencher.iter(|| {
            out[..160].copy_from_slice(black_box(&payload));
            black_box(&out);
        });
    });
}

fn main() -> Result<(), CodecError> {
    let mut criterion = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    for (from, to) in [
        (Codec::Pcmu, Codec::Opus),
        (Codec::Opus, Codec::Pcmu),
        (Codec::Pcmu, Codec::G722),
        (Codec::G722, Codec::Pcmu),
        // Flash clients on the RTMP leg send and take Speex 16 kHz.
        (Codec::SpeexWide, Codec::Pcmu),
        (Codec::Pcmu, Codec::SpeexWide),
        (Codec::SpeexWide, Codec::Pcma),
        (Codec::Pcma, Codec::SpeexWide),
        (Codec::Pcmu, Codec::Pcma),
        (Codec::Pcma, Codec::Pcmu),
    ] {
        bench_path(&mut criterion, from, to)?;
    }
    bench_pass_through_copy(&mut criterion);
    criterion.final_summary();
    Ok(())
}
