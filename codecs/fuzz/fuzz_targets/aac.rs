//! An RTMP publisher's AAC: the AudioSpecificConfig of its sequence header,
//! then raw access units, decoded and re-framed to 20 ms as the room does.
//! The first byte gives the config's length (0 to 7), then each frame is a
//! length byte (in units of 4 bytes) and its bytes. Nothing may panic, and
//! every decoded frame is the 1024 samples of an AAC-LC access unit.
#![no_main]

use dialtone_codecs::{AacDecoder, PcmFramer};
use libfuzzer_sys::fuzz_target;

/// Samples of one AAC-LC access unit.
const ACCESS_UNIT_SAMPLES: usize = 1024;
/// An L16 frame of 20 ms at 16 kHz.
const L16_FRAME_BYTES: usize = 640;

fuzz_target!(|data: &[u8]| {
    let Some((&config_length, rest)) = data.split_first() else {
        return;
    };
    let (config, mut frames) = rest.split_at(usize::from(config_length & 7).min(rest.len()));
    let Ok(mut decoder) = AacDecoder::new(config) else {
        return;
    };
    let Ok(mut framer) = PcmFramer::new(decoder.sample_rate()) else {
        panic!("no framer for the AAC rate {}", decoder.sample_rate());
    };
    let mut pcm = Vec::new();
    let mut frame = [0u8; L16_FRAME_BYTES];
    while let Some((&length, tail)) = frames.split_first() {
        let (access_unit, next) = tail.split_at((usize::from(length) * 4).min(tail.len()));
        frames = next;
        pcm.clear();
        if decoder.decode(access_unit, &mut pcm).is_ok() {
            assert_eq!(pcm.len(), ACCESS_UNIT_SAMPLES);
            assert!(framer.push(&pcm).is_ok());
            while framer.pop_frame(&mut frame).is_some() {}
        }
    }
});
