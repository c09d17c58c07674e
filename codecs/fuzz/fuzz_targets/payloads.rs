//! Audio payloads a media peer sends (RTP payloads, FLV frames), through
//! the transcoder the room puts between two codecs: decoding, concealment,
//! FEC recovery, resampling and encoding. The first byte picks the two
//! codecs; then each payload is a length byte and its bytes, a zero length
//! standing for a lost packet. FLV linear PCM goes through its reader too.
//! Nothing may panic, and encoded payloads fit their codec's bound.
#![no_main]

use dialtone_codecs::{linear_pcm_to_mono, Codec, Transcoder, MAX_PAYLOAD_LEN};
use libfuzzer_sys::fuzz_target;

const CODECS: [Codec; 7] = [
    Codec::Pcmu,
    Codec::Pcma,
    Codec::G722,
    Codec::Opus,
    Codec::SpeexNarrow,
    Codec::SpeexWide,
    Codec::L16,
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, mut payloads)) = data.split_first() else {
        return;
    };
    let from = CODECS[usize::from(selector & 7) % CODECS.len()];
    let to = CODECS[usize::from(selector >> 3 & 7) % CODECS.len()];
    linear_pcm(selector, payloads);
    let Ok(mut transcoder) = Transcoder::new(from, to) else {
        return;
    };
    let mut out = [0u8; MAX_PAYLOAD_LEN];
    let mut lost = false;
    while let Some((&length, tail)) = payloads.split_first() {
        // Lengths up to 1275 bytes, Opus's largest.
        let (payload, next) = tail.split_at((usize::from(length) * 5).min(tail.len()));
        payloads = next;
        let written = if payload.is_empty() {
            lost = true;
            transcoder.conceal_into(&mut out)
        } else if std::mem::take(&mut lost) {
            let _ = transcoder.recover_into(payload, &mut out);
            transcoder.transcode(payload, &mut out)
        } else {
            transcoder.transcode(payload, &mut out)
        };
        if let Ok(written) = written {
            assert!(written <= to.max_payload_len());
        }
    }
});

/// The same bytes as FLV linear PCM, with the layout bits of an FLV tag.
fn linear_pcm(selector: u8, payload: &[u8]) {
    let bits = if selector & 0x40 != 0 { 16 } else { 8 };
    let channels = if selector & 0x80 != 0 { 2 } else { 1 };
    let mut out = Vec::new();
    if linear_pcm_to_mono(payload, bits, channels, &mut out).is_ok() {
        assert_eq!(
            out.len() * usize::from(bits / 8) * usize::from(channels),
            payload.len()
        );
    }
}
