//! The readers of what a SIP peer sends that a call and a registration act
//! on: header values (Session-Expires, registration lifetimes) and SDP
//! offers / answers through the call's negotiation, a REFER's Refer-To and
//! a NOTIFY's sipfrag. None may panic.
#![no_main]

use dialtone_sip::negotiation::Negotiation;
use dialtone_sip::peer_numbers;
use dialtone_sip::refer;
use dialtone_sip::sdp::{self, Direction, LocalAudio};
use libfuzzer_sys::fuzz_target;
use tokio::time::Instant;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(session) = peer_numbers::parse_session_expires(&text) {
        assert!(session.interval >= peer_numbers::MIN_SESSION_INTERVAL);
        assert!(session.interval <= peer_numbers::MAX_SESSION_INTERVAL);
        assert!(peer_numbers::session_expiry(Instant::now(), session.interval).is_some());
    }
    if let Some(seconds) = peer_numbers::delta_seconds(&text) {
        let granted = u32::try_from(seconds).unwrap_or(u32::MAX);
        let lifetime = peer_numbers::registration_lifetime(Some(granted), 3600);
        let _ = Instant::now().checked_add(peer_numbers::registration_refresh(lifetime));
    }
    if let Some(target) = refer::parse_refer_to(&text) {
        // What a far end's Replaces becomes must be fit for a header.
        assert!(target.replaces.is_none_or(|r| !r.chars().any(char::is_control)));
    }
    let _ = refer::sipfrag_status(&text);
    // The SDP a far end answers or (re-)offers.
    let ours = LocalAudio {
        address: std::net::Ipv4Addr::LOCALHOST.into(),
        port: 30000,
        codecs: sdp::sip_codecs(),
        direction: Direction::SendRecv,
        session_id: 1,
        version: u64::MAX - 1,
        crypto: Vec::new(),
    };
    let mut negotiation = Negotiation::offered(ours);
    let _ = negotiation.on_remote_answer(&text);
    for _ in 0..3 {
        if let Ok(result) = negotiation.on_remote_offer(&text) {
            let _ = sdp::parse_remote(&result.answer.render());
        }
        let _ = negotiation.offer();
    }
});
