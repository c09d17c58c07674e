//! SDES-SRTP on the SIP leg: the crypto lines we put in our SDP (fresh
//! keys every time), the policy check on an offer, and the room's keys
//! from what the offer/answer agreed. docs/decisions.md, "SRTP".

use dialtone_room::srtp::{MasterKey, SrtpError, SrtpKeys, SrtpProfile};
use dialtone_sip::sdp::{Crypto, CryptoSuite, RemoteAudio, SdpError};
use dialtone_sip::SrtpAgreement;

use crate::config::SrtpPolicy;

/// Our `a=crypto` lines: one per suite, each with its own fresh key, when
/// answering under `offer` or `require`, or offering under `require`;
/// none (plain RTP/AVP) otherwise.
pub fn our_crypto(policy: SrtpPolicy, offering: bool) -> Result<Vec<Crypto>, SrtpError> {
    let wanted = match policy {
        SrtpPolicy::Off => false,
        SrtpPolicy::Offer => !offering,
        SrtpPolicy::Require => true,
    };
    if !wanted {
        return Ok(Vec::new());
    }
    (1..)
        .zip(CryptoSuite::ALL)
        .map(|(tag, suite)| {
            let key = MasterKey::random(profile(suite))?;
            Ok(Crypto {
                tag,
                suite,
                key: key.as_bytes().to_vec(),
            })
        })
        .collect()
}

/// A plain offer under `require` is refused (488).
pub fn check_offer(policy: SrtpPolicy, offer: &RemoteAudio) -> Result<(), SdpError> {
    if policy == SrtpPolicy::Require && !offer.secure {
        return Err(SdpError::SrtpRequired);
    }
    Ok(())
}

/// The room's keys for what the SDP agreed.
pub fn point_keys(agreement: &SrtpAgreement) -> Result<SrtpKeys, SrtpError> {
    let profile = profile(agreement.suite);
    Ok(SrtpKeys {
        send: MasterKey::new(profile, &agreement.local_key)?,
        receive: MasterKey::new(profile, &agreement.remote_key)?,
    })
}

fn profile(suite: CryptoSuite) -> SrtpProfile {
    match suite {
        CryptoSuite::AesCm128HmacSha1_80 => SrtpProfile::AesCm128HmacSha1_80,
        CryptoSuite::AesCm128HmacSha1_32 => SrtpProfile::AesCm128HmacSha1_32,
        CryptoSuite::AeadAes128Gcm => SrtpProfile::AeadAes128Gcm,
        CryptoSuite::AeadAes256Gcm => SrtpProfile::AeadAes256Gcm,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_decides_where_crypto_lines_go_and_keys_fit_the_suites() {
        assert!(our_crypto(SrtpPolicy::Off, false).unwrap().is_empty());
        assert!(our_crypto(SrtpPolicy::Offer, true).unwrap().is_empty());
        let lines = our_crypto(SrtpPolicy::Offer, false).unwrap();
        assert_eq!(lines.len(), CryptoSuite::ALL.len());
        assert_eq!(
            lines.len(),
            our_crypto(SrtpPolicy::Require, true).unwrap().len()
        );
        for line in &lines {
            assert_eq!(line.key.len(), line.suite.key_len());
            let agreement = SrtpAgreement {
                suite: line.suite,
                local_key: line.key.clone(),
                remote_key: line.key.clone(),
            };
            assert!(point_keys(&agreement).is_ok());
        }
        let again = our_crypto(SrtpPolicy::Offer, false).unwrap();
        assert_ne!(lines[0].key, again[0].key, "fresh keys every time");
    }
}
