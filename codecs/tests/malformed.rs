//! Damaged payloads give errors, never panics, and leave decoders usable.

mod common;

use common::*;
use dialtone_codecs::{
    new_decoder, new_encoder, Codec, CodecError, Transcoder, MAX_FRAME_SAMPLES, MAX_PAYLOAD_LEN,
};

fn valid_payload(codec: Codec) -> Result<Vec<u8>, CodecError> {
    let frames = sine_frames(codec.sample_rate(), TONE_HZ, TONE_AMPLITUDE, 1);
    let mut encoder = new_encoder(codec)?;
    Ok(encode_all(encoder.as_mut(), &frames)?.remove(0))
}

#[test]
fn empty_payloads_are_errors_except_opus_dtx() {
    for codec in Codec::ALL {
        let mut decoder = new_decoder(codec).unwrap();
        let mut pcm = [0i16; MAX_FRAME_SAMPLES];
        let result = decoder.decode(&[], &mut pcm);
        if codec == Codec::Opus {
            // An Opus gap is DTX, filled with comfort noise.
            assert_eq!(result.unwrap(), 960);
        } else {
            assert!(
                matches!(result, Err(CodecError::EmptyPayload { codec: c }) if c == codec),
                "{codec}: {result:?}"
            );
        }
    }
}

#[test]
fn truncated_payloads_are_errors() {
    for codec in Codec::ALL {
        let payload = valid_payload(codec).unwrap();
        let mut pcm = [0i16; MAX_FRAME_SAMPLES];
        for len in [1, payload.len() / 2, payload.len() - 1] {
            let mut decoder = new_decoder(codec).unwrap();
            let result = decoder.decode(&payload[..len], &mut pcm);
            if codec == Codec::Opus {
                // Opus frames are variable-length: a cut packet is usually
                // still a valid, shorter one. All that is promised is no
                // panic and, on success, exactly one frame.
                if let Ok(samples) = result {
                    assert_eq!(samples, 960);
                }
                continue;
            }
            assert!(
                matches!(
                    result,
                    Err(CodecError::PayloadLength { .. } | CodecError::MalformedPayload { .. })
                ),
                "{codec}, {len} of {} bytes: {result:?}",
                payload.len()
            );
        }
    }
}

#[test]
fn oversized_fixed_length_payloads_are_errors() {
    for codec in [Codec::Pcmu, Codec::Pcma, Codec::G722, Codec::L16] {
        let mut decoder = new_decoder(codec).unwrap();
        let mut pcm = [0i16; MAX_FRAME_SAMPLES];
        let result = decoder.decode(&[0x55; 642], &mut pcm);
        assert!(
            matches!(result, Err(CodecError::PayloadLength { len: 642, .. })),
            "{codec}: {result:?}"
        );
    }
}

#[test]
fn invalid_opus_packets_are_errors() {
    let mut decoder = new_decoder(Codec::Opus).unwrap();
    let mut pcm = [0i16; MAX_FRAME_SAMPLES];
    // Code 3 (arbitrary frame count) with a count of zero: invalid.
    assert!(decoder.decode(&[0x4B, 0x00], &mut pcm).is_err());
    // Code 2 (two frames of different sizes) with a first size longer than the packet.
    assert!(decoder.decode(&[0x4A, 0xFB, 0x01], &mut pcm).is_err());
}

#[test]
fn garbage_never_panics_and_decoders_recover() {
    let mut random = Xorshift(0xDEAD_BEEF_CAFE_F00D);
    for codec in Codec::ALL {
        let mut decoder = new_decoder(codec).unwrap();
        let mut pcm = [0i16; MAX_FRAME_SAMPLES];
        let mut errors = 0;
        for round in 0..2_000 {
            let len = match round % 4 {
                0 => codec.max_payload_len().min(200),
                _ => (random.next_u64() % 300) as usize,
            };
            match decoder.decode(&random.bytes(len), &mut pcm) {
                Ok(samples) => assert_eq!(samples, codec.frame_samples(), "{codec}"),
                Err(_) => errors += 1,
            }
        }
        assert!(errors > 0, "{codec}: some garbage must be refused");
        // Afterwards the decoder still turns a real tone into a tone.
        let frames = sine_frames(codec.sample_rate(), TONE_HZ, TONE_AMPLITUDE, 40);
        let mut encoder = new_encoder(codec).unwrap();
        let payloads: Vec<Option<Vec<u8>>> = encode_all(encoder.as_mut(), &frames)
            .unwrap()
            .into_iter()
            .map(Some)
            .collect();
        let output = decode_all(decoder.as_mut(), &payloads).unwrap();
        let skip = 15 * codec.frame_samples();
        assert_tone(
            &format!("{codec} after garbage"),
            &output[skip..],
            &frames.concat()[skip..],
            codec.sample_rate(),
            -3.0,
            1.5,
        );
    }
}

#[test]
fn transcoders_pass_decode_errors_on_and_keep_working() {
    for from in Codec::ALL {
        for to in Codec::ALL.into_iter().filter(|&to| to != from) {
            let mut transcoder = Transcoder::new(from, to).unwrap();
            let mut out = [0u8; MAX_PAYLOAD_LEN];
            if from != Codec::Opus {
                assert!(
                    transcoder.transcode(&[], &mut out).is_err(),
                    "{from} → {to}"
                );
            }
            // Too short for G.711/G.722/L16, a terminator for Speex, an Opus
            // packet claiming 63 frames.
            assert!(
                transcoder.transcode(&[0xFF; 7], &mut out).is_err(),
                "{from} → {to}"
            );
            let len = transcoder
                .transcode(&valid_payload(from).unwrap(), &mut out)
                .unwrap();
            assert!(len > 0 && len <= to.max_payload_len(), "{from} → {to}");
            assert!(matches!(
                transcoder.transcode(
                    &valid_payload(from).unwrap(),
                    &mut out[..to.max_payload_len() - 1]
                ),
                Err(CodecError::BufferTooSmall { .. })
            ));
        }
    }
}
