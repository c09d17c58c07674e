//! The Flash SDP an RTMP client answers or offers (through SDP_ANSWER /
//! SDP_OFFER). Parsing must not panic, and what we render of a parsed SDP
//! must parse back to the same.
#![no_main]

use dialtone_rtmp::FlashSdp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(sdp) = FlashSdp::parse(text) else {
        return;
    };
    if let Ok(rendered) = sdp.render() {
        assert_eq!(FlashSdp::parse(&rendered), Ok(sdp));
    }
});
