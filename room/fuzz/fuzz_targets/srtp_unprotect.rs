//! What an SRTP peer (or anyone who finds the port) sends to an SRTP leg:
//! every datagram goes through unprotect for SRTP and for SRTCP, under each
//! suite, with the receiving state carried across inputs as in a call.
//! None may panic; a datagram that authenticates must round-trip through
//! protect on the sending side.
#![no_main]

use std::sync::Mutex;

use dialtone_room::srtp::{MasterKey, SrtpKeys, SrtpProfile, SrtpSession, MAX_OVERHEAD};
use libfuzzer_sys::fuzz_target;

fn keys(profile: SrtpProfile) -> SrtpKeys {
    let len = profile.master_key_len() + profile.master_salt_len();
    let (Ok(send), Ok(receive)) = (
        MasterKey::new(profile, &vec![1; len]),
        MasterKey::new(profile, &vec![2; len]),
    ) else {
        unreachable!("lengths from the profile")
    };
    SrtpKeys { send, receive }
}

static SESSIONS: Mutex<Vec<SrtpSession>> = Mutex::new(Vec::new());

fuzz_target!(|data: &[u8]| {
    let mut sessions = SESSIONS.lock().unwrap_or_else(|e| e.into_inner());
    if sessions.is_empty() {
        for profile in SrtpProfile::ALL {
            if let Ok(session) = SrtpSession::new(&keys(profile)) {
                sessions.push(session);
            }
        }
    }
    for session in sessions.iter_mut() {
        let mut rtp = data.to_vec();
        if let Ok(len) = session.unprotect_rtp(&mut rtp) {
            assert!(len <= data.len());
        }
        let mut rtcp = data.to_vec();
        if let Ok(len) = session.unprotect_rtcp(&mut rtcp) {
            assert!(len <= data.len());
        }
        // Our own side: whatever parses as RTP protects without panicking
        // and grows by no more than the overhead.
        let mut out = data.to_vec();
        out.resize(data.len() + MAX_OVERHEAD, 0);
        if let Ok(len) = session.protect_rtp(&mut out, data.len()) {
            assert!(len <= data.len() + MAX_OVERHEAD);
        }
    }
});
