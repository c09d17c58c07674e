//! Whole SIP messages as rsipstack parses them off the wire, with the
//! headers a call and a registration read handed to our readers.
#![no_main]

use dialtone_sip::peer_numbers;
use libfuzzer_sys::fuzz_target;
use rsipstack::sip::{Header, SipMessage};

fuzz_target!(|data: &[u8]| {
    let Ok(message) = SipMessage::try_from(data) else {
        return;
    };
    let headers = match &message {
        SipMessage::Request(request) => &request.headers,
        SipMessage::Response(response) => &response.headers,
    };
    for header in headers.iter() {
        match header {
            Header::SessionExpires(value) => {
                let _ = peer_numbers::parse_session_expires(value.value());
            }
            Header::Expires(value) => {
                let _ = peer_numbers::delta_seconds(value.value());
            }
            _ => {}
        }
    }
});
