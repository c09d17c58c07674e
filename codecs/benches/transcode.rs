//! Cost of transcoding one 20 ms frame on the paths the gateway uses.
//!
//! Run with `cargo bench -p dialtone-codecs`.

use std::hint::black_box;
use std::time::Duration;

use criterion::Criterion;
use dialtone_codecs::{
    new_encoder, voice_like_frames, Codec, CodecError, Transcoder, MAX_PAYLOAD_LEN,
};

/// One second of payloads to cycle through.
const FRAMES: usize = 50;

fn payloads(codec: Codec) -> Result<Vec<Vec<u8>>, CodecError> {
    let mut encoder = new_encoder(codec)?;
    let mut buffer = [0u8; MAX_PAYLOAD_LEN];
    voice_like_frames(codec, FRAMES)
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
