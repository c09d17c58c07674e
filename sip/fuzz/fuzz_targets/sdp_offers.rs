//! SDP offers and answers as a SIP peer sends them, a=crypto lines
//! included: read, answered with our crypto lines, and taken through an
//! offer/answer negotiation. None may panic.
#![no_main]

use dialtone_sip::sdp::{self, Crypto, CryptoSuite, Direction, LocalAudio};
use dialtone_sip::Negotiation;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for line in text.lines() {
        let _ = sdp::parse_crypto(line);
    }
    let ours = LocalAudio {
        address: std::net::IpAddr::from([127, 0, 0, 1]),
        port: 30000,
        codecs: sdp::sip_codecs(),
        direction: Direction::SendRecv,
        session_id: 1,
        version: 1,
        crypto: CryptoSuite::ALL
            .iter()
            .map(|suite| Crypto {
                tag: 1,
                suite: *suite,
                key: vec![7; suite.key_len()],
            })
            .collect(),
    };
    if let Ok(remote) = sdp::parse_remote(text) {
        if let Ok(answer) = sdp::answer(&remote, &ours) {
            let _ = answer.render();
            if let Ok(mut negotiation) = Negotiation::answered(sdp::sip_codecs(), &remote, answer) {
                let _ = negotiation.on_remote_offer(text);
            }
        }
    }
    let mut offered = Negotiation::offered(ours);
    let _ = offered.on_remote_answer(text);
});
