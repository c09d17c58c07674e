//! SDP negotiation of one call, sans-IO: the one place that decides the
//! codec, the telephone-event payload type, the directions and the far end's
//! address, and answers every later offer consistently with what is in use.
//!
//! Rules (docs/decisions.md, "Calls"):
//! - the codec in use stays while an offer still has it (our answer lists it
//!   first and only); otherwise the first offered codec we carry is taken
//!   and the change reported;
//! - hold directions are mirrored (`sendonly` → `recvonly`, `inactive` →
//!   `inactive`);
//! - the `o=` version grows only when our SDP changes (RFC 3264 section 8).

use std::net::SocketAddr;

use crate::sdp::{self, Codec, Crypto, CryptoSuite, Direction, LocalAudio, RemoteAudio, SdpError};

/// What both sides agreed on: what the media side needs to send and expect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiatedMedia {
    /// Where the far end wants our RTP.
    pub remote: SocketAddr,
    /// The codec in use, with the payload type the far end's SDP gives it
    /// (the one to send it with).
    pub codec: Codec,
    /// telephone-event/8000's payload type, when both sides have it.
    pub telephone_event: Option<u8>,
    /// What the far end said it does (`sendonly`: it holds us, music
    /// expected; `recvonly` / `inactive`: it sends nothing).
    pub remote_direction: Direction,
    /// What our SDP says we do.
    pub local_direction: Direction,
    /// SDES-SRTP keys, when the stream is `RTP/SAVP`.
    pub srtp: Option<SrtpAgreement>,
}

/// The crypto suite both sides use and each side's master key and salt.
#[derive(Clone, PartialEq, Eq)]
pub struct SrtpAgreement {
    pub suite: CryptoSuite,
    /// Ours: what we send is protected with it.
    pub local_key: Vec<u8>,
    /// The far end's: what it sends is checked with it.
    pub remote_key: Vec<u8>,
}

impl std::fmt::Debug for SrtpAgreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpAgreement")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl NegotiatedMedia {
    /// Whether the far end sends media.
    pub fn remote_sends(&self) -> bool {
        matches!(
            self.remote_direction,
            Direction::SendRecv | Direction::SendOnly
        )
    }
}

/// What an offer changed, compared with the media in use before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MediaChanges {
    /// Another codec, or the same codec under another payload type.
    pub codec: bool,
    pub remote_address: bool,
    pub direction: bool,
    pub telephone_event: bool,
}

impl MediaChanges {
    /// Everything is new: another far end altogether.
    pub fn all() -> MediaChanges {
        MediaChanges {
            codec: true,
            remote_address: true,
            direction: true,
            telephone_event: true,
        }
    }

    fn between(before: Option<&NegotiatedMedia>, after: &NegotiatedMedia) -> MediaChanges {
        let Some(before) = before else {
            return MediaChanges::all();
        };
        MediaChanges {
            codec: before.codec != after.codec,
            remote_address: before.remote != after.remote,
            direction: before.remote_direction != after.remote_direction
                || before.local_direction != after.local_direction,
            telephone_event: before.telephone_event != after.telephone_event,
        }
    }

    pub fn any(&self) -> bool {
        self.codec || self.remote_address || self.direction || self.telephone_event
    }
}

/// Our answer to an offer and what it means for the media.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferAnswer {
    pub answer: LocalAudio,
    pub media: NegotiatedMedia,
    pub changes: MediaChanges,
}

/// The offer/answer state of one call.
#[derive(Debug, Clone)]
pub struct Negotiation {
    /// Every codec we can carry toward SIP, in our order of preference.
    carried: Vec<Codec>,
    /// The SDP we sent last (offer or answer), with its `o=` version.
    local: LocalAudio,
    media: Option<NegotiatedMedia>,
}

impl Negotiation {
    /// We sent `offer` (an outgoing INVITE, or a 200 to an INVITE without
    /// SDP); the answer is still to come.
    pub fn offered(offer: LocalAudio) -> Negotiation {
        Negotiation {
            carried: offer.codecs.clone(),
            local: offer,
            media: None,
        }
    }

    /// We answered the far end's initial `offer` with `answer` (an incoming
    /// call). `carried` is every codec we could have taken, for later offers
    /// that drop the one in use.
    pub fn answered(
        carried: Vec<Codec>,
        offer: &RemoteAudio,
        answer: LocalAudio,
    ) -> Result<Negotiation, SdpError> {
        let media = agreed(offer, &answer)?;
        Ok(Negotiation {
            carried,
            local: answer,
            media: Some(media),
        })
    }

    /// The SDP we sent last.
    pub fn local(&self) -> &LocalAudio {
        &self.local
    }

    /// The media in use, once an offer was answered.
    pub fn media(&self) -> Option<&NegotiatedMedia> {
        self.media.as_ref()
    }

    /// The far end answered our offer.
    pub fn on_remote_answer(&mut self, answer: &str) -> Result<NegotiatedMedia, SdpError> {
        let remote = sdp::parse_remote(answer)?;
        // Only what we offered can be in an answer; anything else is the
        // far end's mistake and unusable.
        let ours = LocalAudio {
            codecs: remote
                .codecs
                .iter()
                .filter(|c| self.local.codecs.iter().any(|ours| ours.same_format(c)))
                .cloned()
                .collect(),
            ..self.local.clone()
        };
        let media = agreed(&remote, &ours)?;
        // Later offers of ours carry only the line in use.
        self.local.crypto = in_use(&remote, &self.local.crypto);
        self.media = Some(media.clone());
        Ok(media)
    }

    /// The far end offers (re-INVITE or UPDATE): our answer, kept to the
    /// codec in use when the offer has it. On an error (no codec in common)
    /// nothing changes; the offer is to be refused with 488.
    pub fn on_remote_offer(&mut self, offer: &str) -> Result<OfferAnswer, SdpError> {
        let remote = sdp::parse_remote(offer)?;
        let in_use = self.media.as_ref().and_then(|media| {
            remote
                .codecs
                .iter()
                .find(|offered| offered.same_format(&media.codec))
        });
        let chosen = match in_use {
            Some(codec) => codec.clone(),
            None => remote
                .codecs
                .iter()
                .find(|offered| {
                    !offered.is_telephone_event()
                        && self.carried.iter().any(|c| c.same_format(offered))
                })
                .cloned()
                .ok_or_else(|| SdpError::NoCommonCodec {
                    offered: remote.codecs.iter().map(Codec::label).collect(),
                })?,
        };
        let mut codecs = vec![chosen];
        if let Some(events) = telephone_event(&remote) {
            codecs.push(events.clone());
        }
        let crypto = sdp::answer_crypto(&remote, &self.local.crypto)?;
        let mut answer = self.next_local(codecs, remote.direction.answer());
        if crypto != answer.crypto && answer.version == self.local.version {
            // Another tag for the same key is still another SDP.
            answer.version = answer.version.saturating_add(1);
        }
        answer.crypto = crypto;
        let media = agreed(&remote, &answer)?;
        // Re-keying would need the media side to start new SRTP streams;
        // keeping the suite and keys is what peers do in practice.
        if self
            .media
            .as_ref()
            .is_some_and(|before| before.srtp != media.srtp)
        {
            return Err(SdpError::SrtpChanged);
        }
        let changes = MediaChanges::between(self.media.as_ref(), &media);
        self.local = answer.clone();
        self.media = Some(media.clone());
        Ok(OfferAnswer {
            answer,
            media,
            changes,
        })
    }

    /// The far end asks for our offer (a re-INVITE without SDP): the codec
    /// in use and telephone-event, sending and receiving, so that whatever
    /// it answers is what the media side already does. Before anything was
    /// agreed, every codec we carry.
    pub fn offer(&mut self) -> LocalAudio {
        self.offer_with(Direction::SendRecv)
    }

    /// Our offer of the media in use with `direction`: `sendonly` or
    /// `inactive` to hold the far end, `sendrecv` to resume.
    pub fn offer_with(&mut self, direction: Direction) -> LocalAudio {
        let codecs = match &self.media {
            Some(media) => {
                let mut codecs = vec![media.codec.clone()];
                codecs.extend(
                    self.carried
                        .iter()
                        .find(|c| c.is_telephone_event() && c.clock_rate == 8000)
                        .cloned(),
                );
                codecs
            }
            None => self.carried.clone(),
        };
        let offer = self.next_local(codecs, direction);
        self.local = offer.clone();
        offer
    }

    /// An offer of ours was refused: what we sent before stands again
    /// (RFC 3261 section 14.1), at a version above the refused one's.
    pub fn restore_local(&mut self, previous: LocalAudio) {
        self.local = LocalAudio {
            version: self.local.version.saturating_add(1),
            ..previous
        };
    }

    /// Our SDP with these codecs and direction; the version grows only if
    /// that differs from what we sent last.
    fn next_local(&self, codecs: Vec<Codec>, direction: Direction) -> LocalAudio {
        let changed = codecs != self.local.codecs || direction != self.local.direction;
        LocalAudio {
            codecs,
            direction,
            version: if changed {
                self.local.version.saturating_add(1)
            } else {
                self.local.version
            },
            ..self.local.clone()
        }
    }
}

/// Our crypto lines that `remote` (an answer) took up: the one whose tag
/// and suite it echoes.
fn in_use(remote: &RemoteAudio, ours: &[Crypto]) -> Vec<Crypto> {
    ours.iter()
        .filter(|mine| {
            remote
                .crypto
                .iter()
                .any(|theirs| theirs.tag == mine.tag && theirs.suite == mine.suite)
        })
        .take(1)
        .cloned()
        .collect()
}

/// The SRTP keys of an offer/answer pair: both plain, or both `RTP/SAVP`
/// with a crypto line of the same tag and suite on each side.
fn agreed_srtp(
    remote: &RemoteAudio,
    local: &LocalAudio,
) -> Result<Option<SrtpAgreement>, SdpError> {
    match (local.crypto.is_empty(), remote.secure) {
        (true, false) => return Ok(None),
        (true, true) => return Err(SdpError::SrtpOff),
        (false, false) => return Err(SdpError::SrtpRequired),
        (false, true) => {}
    }
    local
        .crypto
        .iter()
        .find_map(|mine| {
            remote
                .crypto
                .iter()
                .find(|theirs| theirs.tag == mine.tag && theirs.suite == mine.suite)
                .map(|theirs| SrtpAgreement {
                    suite: mine.suite,
                    local_key: mine.key.clone(),
                    remote_key: theirs.key.clone(),
                })
        })
        .map(Some)
        .ok_or(SdpError::NoCommonCrypto)
}

fn telephone_event(remote: &RemoteAudio) -> Option<&Codec> {
    remote
        .codecs
        .iter()
        .find(|c| c.is_telephone_event() && c.clock_rate == 8000)
}

/// The media of an offer/answer pair: the first audio codec of `local`
/// (the answer, or what the answer kept of our offer), under the far end's
/// payload type.
fn agreed(remote: &RemoteAudio, local: &LocalAudio) -> Result<NegotiatedMedia, SdpError> {
    let no_common = || SdpError::NoCommonCodec {
        offered: remote.codecs.iter().map(Codec::label).collect(),
    };
    let codec = local
        .codecs
        .iter()
        .filter(|c| !c.is_telephone_event())
        .find_map(|ours| remote.codecs.iter().find(|theirs| theirs.same_format(ours)))
        .cloned()
        .ok_or_else(no_common)?;
    let telephone_event = local
        .codecs
        .iter()
        .any(|c| c.is_telephone_event() && c.clock_rate == 8000)
        .then(|| telephone_event(remote).map(|c| c.payload_type))
        .flatten();
    Ok(NegotiatedMedia {
        remote: SocketAddr::new(remote.address, remote.port),
        codec,
        telephone_event,
        remote_direction: remote.direction,
        local_direction: local.direction,
        srtp: agreed_srtp(remote, local)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sdp::sip_codecs;

    fn our_offer() -> LocalAudio {
        LocalAudio {
            address: "192.0.2.1".parse().unwrap(),
            port: 30000,
            codecs: sdp::prefer(sip_codecs(), &["PCMU/8000".to_string()]),
            direction: Direction::SendRecv,
            session_id: 7,
            version: 1,
            crypto: Vec::new(),
        }
    }

    fn far_sdp(version: u32, port: u16, payload_types: &str, direction: &str) -> String {
        format!(
            "v=0\r\no=far 1 {version} IN IP4 198.51.100.2\r\ns=-\r\nc=IN IP4 198.51.100.2\r\nt=0 0\r\n\
             m=audio {port} RTP/AVP {payload_types}\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:96 opus/48000/2\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na={direction}\r\n"
        )
    }

    /// An outgoing call answered with PCMU.
    fn established() -> Negotiation {
        let mut negotiation = Negotiation::offered(our_offer());
        let media = negotiation
            .on_remote_answer(&far_sdp(1, 4000, "0 101", "sendrecv"))
            .unwrap();
        assert_eq!(media.codec.name, "PCMU");
        assert_eq!(media.telephone_event, Some(101));
        assert_eq!(media.remote, "198.51.100.2:4000".parse().unwrap());
        negotiation
    }

    fn labels(audio: &LocalAudio) -> Vec<String> {
        audio.codecs.iter().map(Codec::label).collect()
    }

    #[test]
    fn a_reoffer_putting_g722_first_is_answered_with_the_codec_in_use() {
        let mut negotiation = established();
        let result = negotiation
            .on_remote_offer(&far_sdp(2, 4000, "9 0 101", "sendrecv"))
            .unwrap();
        assert_eq!(
            labels(&result.answer),
            ["PCMU/8000", "telephone-event/8000"]
        );
        assert!(result
            .answer
            .render()
            .contains("m=audio 30000 RTP/AVP 0 101\r\n"));
        assert_eq!(result.media.codec.name, "PCMU");
        assert!(!result.changes.any(), "{:?}", result.changes);
    }

    #[test]
    fn a_reoffer_without_the_codec_in_use_switches_and_says_so() {
        let mut negotiation = established();
        let result = negotiation
            .on_remote_offer(&far_sdp(2, 4002, "96 9 101", "sendrecv"))
            .unwrap();
        assert_eq!(result.media.codec.name, "opus");
        assert_eq!(result.media.codec.payload_type, 96);
        assert_eq!(labels(&result.answer)[0], "opus/48000/2");
        assert!(result.changes.codec && result.changes.remote_address);
        assert!(!result.changes.direction && !result.changes.telephone_event);
        // The new codec is the one in use from now on.
        let again = negotiation
            .on_remote_offer(&far_sdp(3, 4002, "9 96 101", "sendrecv"))
            .unwrap();
        assert_eq!(again.media.codec.name, "opus");
        assert!(!again.changes.any());
    }

    #[test]
    fn hold_is_mirrored_and_resumed() {
        let mut negotiation = established();
        let hold = negotiation
            .on_remote_offer(&far_sdp(2, 4000, "0 101", "sendonly"))
            .unwrap();
        assert_eq!(hold.answer.direction, Direction::RecvOnly);
        assert_eq!(hold.media.remote_direction, Direction::SendOnly);
        assert!(hold.media.remote_sends());
        assert!(hold.changes.direction && !hold.changes.codec);
        let inactive = negotiation
            .on_remote_offer(&far_sdp(3, 4000, "0 101", "inactive"))
            .unwrap();
        assert_eq!(inactive.answer.direction, Direction::Inactive);
        assert!(!inactive.media.remote_sends());
        let resumed = negotiation
            .on_remote_offer(&far_sdp(4, 4000, "0 101", "sendrecv"))
            .unwrap();
        assert_eq!(resumed.answer.direction, Direction::SendRecv);
        assert!(resumed.changes.direction);
    }

    #[test]
    fn the_version_grows_only_when_our_sdp_changes() {
        let mut negotiation = established();
        // Our offer listed every codec; the first answer narrows it: v2.
        let first = negotiation
            .on_remote_offer(&far_sdp(2, 4000, "0 101", "sendrecv"))
            .unwrap();
        assert_eq!(first.answer.version, 2);
        // A session refresh with the same SDP: same answer, same version.
        let refresh = negotiation
            .on_remote_offer(&far_sdp(2, 4000, "0 101", "sendrecv"))
            .unwrap();
        assert_eq!(refresh.answer, first.answer);
        // A new address of theirs changes nothing of ours.
        let moved = negotiation
            .on_remote_offer(&far_sdp(3, 5000, "9 0 101", "sendrecv"))
            .unwrap();
        assert_eq!(moved.answer.version, 2);
        assert!(moved.changes.remote_address && !moved.changes.codec);
        // Hold changes our direction: v3.
        let hold = negotiation
            .on_remote_offer(&far_sdp(4, 5000, "0 101", "sendonly"))
            .unwrap();
        assert_eq!(hold.answer.version, 3);
    }

    #[test]
    fn telephone_event_follows_the_latest_offer() {
        let mut negotiation = established();
        let without = negotiation
            .on_remote_offer(&far_sdp(2, 4000, "0", "sendrecv"))
            .unwrap();
        assert_eq!(labels(&without.answer), ["PCMU/8000"]);
        assert_eq!(without.media.telephone_event, None);
        assert!(without.changes.telephone_event);
    }

    #[test]
    fn no_codec_in_common_changes_nothing() {
        let mut negotiation = established();
        let before = negotiation.local().clone();
        let speex =
            "v=0\r\nc=IN IP4 198.51.100.2\r\nm=audio 4000 RTP/AVP 97\r\na=rtpmap:97 speex/8000\r\n";
        assert!(matches!(
            negotiation.on_remote_offer(speex),
            Err(SdpError::NoCommonCodec { .. })
        ));
        assert!(negotiation.on_remote_offer("garbage").is_err());
        assert_eq!(negotiation.local(), &before);
        assert_eq!(
            negotiation.media().map(|m| m.codec.name.as_str()),
            Some("PCMU")
        );
    }

    #[test]
    fn an_incoming_call_keeps_its_answered_codec_and_can_switch_to_any_carried() {
        let offer = sdp::parse_remote(&far_sdp(1, 4000, "9 0 101", "sendrecv")).unwrap();
        let answer = sdp::answer(&offer, &our_offer()).unwrap();
        let mut negotiation = Negotiation::answered(sip_codecs(), &offer, answer).unwrap();
        assert_eq!(
            negotiation.media().map(|m| m.codec.name.as_str()),
            Some("G722")
        );
        let result = negotiation
            .on_remote_offer(&far_sdp(2, 4000, "0 9 101", "sendrecv"))
            .unwrap();
        assert_eq!(labels(&result.answer)[0], "G722/8000");
        let switched = negotiation
            .on_remote_offer(&far_sdp(3, 4000, "96 101", "sendrecv"))
            .unwrap();
        assert_eq!(switched.media.codec.name, "opus");
    }

    #[test]
    fn an_offerless_reinvite_gets_the_codec_in_use() {
        let mut negotiation = established();
        let offer = negotiation.offer();
        assert_eq!(labels(&offer), ["PCMU/8000", "telephone-event/8000"]);
        assert_eq!(offer.version, 2);
        assert_eq!(negotiation.offer().version, 2);
        let mut fresh = Negotiation::offered(our_offer());
        assert_eq!(fresh.offer(), our_offer());
    }

    #[test]
    fn an_answer_with_nothing_we_offered_is_an_error() {
        let mut negotiation = Negotiation::offered(LocalAudio {
            codecs: vec![sip_codecs()[2].clone()],
            ..our_offer()
        });
        assert!(matches!(
            negotiation.on_remote_answer(&far_sdp(1, 4000, "9", "sendrecv")),
            Err(SdpError::NoCommonCodec { .. })
        ));
        assert_eq!(negotiation.media(), None);
    }

    fn crypto(tag: u32, suite: CryptoSuite, fill: u8) -> Crypto {
        Crypto {
            tag,
            suite,
            key: vec![fill; suite.key_len()],
        }
    }

    /// An offer of ours with a fresh key per suite, as the gateway makes it.
    fn secure_offer() -> LocalAudio {
        LocalAudio {
            crypto: CryptoSuite::ALL
                .iter()
                .enumerate()
                .map(|(i, suite)| crypto(i as u32 + 1, *suite, 1))
                .collect(),
            ..our_offer()
        }
    }

    fn secure_sdp(version: u32, lines: &[&Crypto]) -> String {
        let mut sdp = far_sdp(version, 4000, "0 101", "sendrecv").replace("RTP/AVP", "RTP/SAVP");
        for line in lines {
            sdp.push_str(&format!(
                "a=crypto:{} {} inline:{}\r\n",
                line.tag,
                line.suite.name(),
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &line.key)
            ));
        }
        sdp
    }

    #[test]
    fn an_srtp_answer_picks_our_line_by_tag_and_later_offers_carry_only_it() {
        let mut negotiation = Negotiation::offered(secure_offer());
        let theirs = crypto(3, CryptoSuite::AeadAes128Gcm, 9);
        let media = negotiation
            .on_remote_answer(&secure_sdp(1, &[&theirs]))
            .unwrap();
        let srtp = media.srtp.unwrap();
        assert_eq!(srtp.suite, CryptoSuite::AeadAes128Gcm);
        assert_eq!(srtp.local_key, vec![1; 28]);
        assert_eq!(srtp.remote_key, vec![9; 28]);
        let hold = negotiation.offer_with(Direction::SendOnly);
        assert_eq!(hold.crypto, vec![crypto(3, CryptoSuite::AeadAes128Gcm, 1)]);
        assert!(hold.render().contains("m=audio 30000 RTP/SAVP 0 101\r\n"));
    }

    #[test]
    fn a_plain_answer_to_srtp_or_an_unknown_tag_is_unusable() {
        let mut negotiation = Negotiation::offered(secure_offer());
        assert_eq!(
            negotiation.on_remote_answer(&far_sdp(1, 4000, "0", "sendrecv")),
            Err(SdpError::SrtpRequired)
        );
        let stranger = crypto(9, CryptoSuite::AesCm128HmacSha1_80, 9);
        assert_eq!(
            negotiation.on_remote_answer(&secure_sdp(1, &[&stranger])),
            Err(SdpError::NoCommonCrypto)
        );
    }

    #[test]
    fn an_incoming_srtp_offer_is_answered_with_our_key_and_its_tag_and_keys_must_stay() {
        let first = crypto(5, CryptoSuite::AesCm128HmacSha1_32, 7);
        let offer = sdp::parse_remote(&secure_sdp(1, &[&first])).unwrap();
        let ours = LocalAudio {
            codecs: sip_codecs(),
            ..secure_offer()
        };
        let answer = sdp::answer(&offer, &ours).unwrap();
        assert_eq!(
            answer.crypto,
            vec![crypto(5, CryptoSuite::AesCm128HmacSha1_32, 1)]
        );
        let mut negotiation = Negotiation::answered(sip_codecs(), &offer, answer).unwrap();
        assert_eq!(
            negotiation
                .media()
                .and_then(|m| m.srtp.clone())
                .map(|s| s.remote_key),
            Some(vec![7; 30])
        );
        // A hold re-offer with the same key: answered, same key of ours.
        let hold = secure_sdp(2, &[&first]).replace("a=sendrecv", "a=sendonly");
        let result = negotiation.on_remote_offer(&hold).unwrap();
        assert_eq!(result.answer.crypto[0].key, vec![1; 30]);
        // A new key, or plain RTP, is refused.
        let rekeyed = crypto(5, CryptoSuite::AesCm128HmacSha1_32, 8);
        assert_eq!(
            negotiation
                .on_remote_offer(&secure_sdp(3, &[&rekeyed]))
                .map(|_| ()),
            Err(SdpError::SrtpChanged)
        );
        assert_eq!(
            negotiation
                .on_remote_offer(&far_sdp(3, 4000, "0 101", "sendrecv"))
                .map(|_| ()),
            Err(SdpError::SrtpChanged)
        );
    }
}
