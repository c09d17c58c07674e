//! Whole SIP messages as rsipstack parses them off the wire, through our
//! digest algorithm renaming (as every received and sent message goes),
//! with the headers a call and a registration read handed to our readers
//! and the digest challenges parsed as the stack does to answer them.
#![no_main]

use dialtone_sip::peer_numbers;
use dialtone_sip::DigestAlgorithmNames;
use libfuzzer_sys::fuzz_target;
use rsipstack::sip::{Header, SipMessage, ToTypedHeader};
use rsipstack::transaction::endpoint::MessageInspector;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = SipMessage::try_from(data) else {
        return;
    };
    // Our credentials' names are renamed on the way out too.
    let _ = DigestAlgorithmNames.before_send(message.clone(), None);
    let message = DigestAlgorithmNames.after_received(message, None);
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
            Header::WwwAuthenticate(challenge) => {
                let _ = challenge.typed();
            }
            Header::ProxyAuthenticate(challenge) => {
                let _ = challenge.typed();
            }
            _ => {}
        }
    }
});
