//! The body of an RTMP audio message from a publisher, as an FLV audio tag.
//! Parsing must not panic, and a tag we write back must parse to the same.
#![no_main]

use dialtone_rtmp::AudioTag;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(tag) = AudioTag::parse(data) else {
        return;
    };
    if let Ok(body) = tag.to_bytes() {
        assert_eq!(AudioTag::parse(&body), Ok(tag));
    }
});
