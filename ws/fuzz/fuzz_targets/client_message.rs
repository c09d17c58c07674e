//! A client's WebSocket text frame as the connection loop hands it to the
//! decoder. Whatever it holds, decoding must not panic, and a refusal must
//! become an ERROR reply the gateway can serialize.
#![no_main]

use dialtone_ws::decode_client_message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Text frames are valid UTF-8 (the WebSocket layer refuses the rest).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(error) = decode_client_message(text) {
        let reply = serde_json::to_string(&error.into_reply());
        assert!(reply.is_ok(), "an ERROR reply that does not serialize");
    }
});
