//! SDP offer/answer (RFC 3264) for the one audio stream of an RTP media
//! point: what the gateway offers toward SIP, how it reads the far end's
//! description, and how it answers an offer. Hand-written on purpose: the
//! subset telephony peers send is small, and a parser that returns errors
//! instead of panicking on odd input is easy to keep that way.

use std::fmt::Write as _;
use std::net::IpAddr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// An audio codec as SDP names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Codec {
    pub payload_type: u8,
    /// As in `a=rtpmap`: `PCMU`, `PCMA`, `G722`, `opus`, `telephone-event`.
    pub name: String,
    pub clock_rate: u32,
    pub channels: u8,
}

impl Codec {
    fn new(payload_type: u8, name: &str, clock_rate: u32, channels: u8) -> Codec {
        Codec {
            payload_type,
            name: name.to_string(),
            clock_rate,
            channels,
        }
    }

    /// `PCMU/8000`, `opus/48000/2`: the form of `cc.audioCodecs`.
    pub fn label(&self) -> String {
        if self.channels > 1 {
            format!("{}/{}/{}", self.name, self.clock_rate, self.channels)
        } else {
            format!("{}/{}", self.name, self.clock_rate)
        }
    }

    pub(crate) fn same_format(&self, other: &Codec) -> bool {
        self.name.eq_ignore_ascii_case(&other.name) && self.clock_rate == other.clock_rate
    }

    pub fn is_telephone_event(&self) -> bool {
        self.name.eq_ignore_ascii_case("telephone-event")
    }
}

/// The codecs the gateway can carry toward SIP, in default preference order.
/// G.722's RTP clock is 8000 by RFC 3551's historical error.
pub fn sip_codecs() -> Vec<Codec> {
    vec![
        Codec::new(111, "opus", 48000, 2),
        Codec::new(9, "G722", 8000, 1),
        Codec::new(0, "PCMU", 8000, 1),
        Codec::new(8, "PCMA", 8000, 1),
        Codec::new(101, "telephone-event", 8000, 1),
    ]
}

/// Puts the codecs a client named (`cc.audioCodecs`, e.g. `PCMA/8000`) first,
/// in the client's order, so that a call can pass media through untouched
/// when both ends share a codec; the rest follow in default order.
pub fn prefer(codecs: Vec<Codec>, client_labels: &[String]) -> Vec<Codec> {
    let rank = |codec: &Codec| {
        client_labels
            .iter()
            .position(|label| {
                let mut parts = label.split('/');
                let name = parts.next().unwrap_or_default();
                let rate = parts.next().and_then(|r| r.parse::<u32>().ok());
                name.eq_ignore_ascii_case(&codec.name)
                    && rate.is_none_or(|rate| rate == codec.clock_rate)
            })
            .unwrap_or(usize::MAX)
    };
    let mut ranked: Vec<(usize, usize, Codec)> = codecs
        .into_iter()
        .enumerate()
        .map(|(order, codec)| (rank(&codec), order, codec))
        .collect();
    ranked.sort_by_key(|(rank, order, _)| (*rank, *order));
    ranked.into_iter().map(|(_, _, codec)| codec).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    fn attribute(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The answer's direction for an offer's (RFC 3264 section 6.1).
    pub(crate) fn answer(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            other => other,
        }
    }
}

/// The SRTP crypto suites we carry (RFC 4568, RFC 7714), in our order of
/// preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CryptoSuite {
    AesCm128HmacSha1_80,
    AesCm128HmacSha1_32,
    AeadAes128Gcm,
    AeadAes256Gcm,
}

impl CryptoSuite {
    pub const ALL: [CryptoSuite; 4] = [
        CryptoSuite::AesCm128HmacSha1_80,
        CryptoSuite::AesCm128HmacSha1_32,
        CryptoSuite::AeadAes128Gcm,
        CryptoSuite::AeadAes256Gcm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CryptoSuite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            CryptoSuite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
            CryptoSuite::AeadAes128Gcm => "AEAD_AES_128_GCM",
            CryptoSuite::AeadAes256Gcm => "AEAD_AES_256_GCM",
        }
    }

    /// Octets of master key and salt its `inline:` carries.
    pub fn key_len(self) -> usize {
        match self {
            CryptoSuite::AesCm128HmacSha1_80 | CryptoSuite::AesCm128HmacSha1_32 => 16 + 14,
            CryptoSuite::AeadAes128Gcm => 16 + 12,
            CryptoSuite::AeadAes256Gcm => 32 + 12,
        }
    }

    fn from_name(name: &str) -> Option<CryptoSuite> {
        CryptoSuite::ALL
            .into_iter()
            .find(|suite| suite.name() == name)
    }
}

/// One usable `a=crypto` line (RFC 4568): a suite we carry, a single
/// master key and salt, no MKI, no session parameters. Its Debug form
/// does not show the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Crypto {
    pub tag: u32,
    pub suite: CryptoSuite,
    /// Master key || master salt, [`CryptoSuite::key_len`] octets.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for Crypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Crypto")
            .field("tag", &self.tag)
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl Crypto {
    fn render(&self) -> String {
        format!(
            "a=crypto:{} {} inline:{}\r\n",
            self.tag,
            self.suite.name(),
            STANDARD.encode(&self.key)
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed a=crypto line")]
pub struct MalformedCrypto;

/// Reads the value of an `a=crypto` attribute (after `crypto:`). A line
/// we cannot use (another suite, several keys, an MKI, a key lifetime
/// shorter than a call could need, session parameters) is `Ok(None)`:
/// the offerer listed it among alternatives. Err when it is malformed.
pub fn parse_crypto(value: &str) -> Result<Option<Crypto>, MalformedCrypto> {
    let mut fields = value.split_whitespace();
    let tag = fields
        .next()
        .filter(|tag| tag.len() <= 9 && tag.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|tag| tag.parse::<u32>().ok())
        .ok_or(MalformedCrypto)?;
    let suite = fields.next().ok_or(MalformedCrypto)?;
    let key_params = fields.next().ok_or(MalformedCrypto)?;
    let Some(suite) = CryptoSuite::from_name(suite) else {
        return Ok(None);
    };
    if fields.next().is_some() || key_params.contains(';') {
        return Ok(None);
    }
    let inline = key_params.strip_prefix("inline:").ok_or(MalformedCrypto)?;
    let mut parts = inline.split('|');
    let key = STANDARD
        .decode(parts.next().unwrap_or_default())
        .map_err(|_| MalformedCrypto)?;
    if key.len() != suite.key_len() {
        return Err(MalformedCrypto);
    }
    for part in parts {
        // A lifetime (`2^31` or a number) is fine: we never send that
        // much; an MKI (`1:4`) needs MKI support we lack.
        if part.contains(':') {
            return Ok(None);
        }
        let lifetime = match part.strip_prefix("2^") {
            Some(power) => power
                .parse::<u32>()
                .ok()
                .filter(|p| *p < 64)
                .map(|p| 1u64 << p),
            None => part.parse::<u64>().ok(),
        };
        if lifetime.ok_or(MalformedCrypto)? < 1 << 31 {
            return Ok(None);
        }
    }
    Ok(Some(Crypto { tag, suite, key }))
}

/// Our side of the audio stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAudio {
    pub address: IpAddr,
    pub port: u16,
    pub codecs: Vec<Codec>,
    pub direction: Direction,
    /// `o=` session id and version; the version grows with each change.
    pub session_id: u64,
    pub version: u64,
    /// SDES-SRTP: the crypto lines we offer or answered with. Empty:
    /// plain `RTP/AVP`; else `RTP/SAVP`.
    pub crypto: Vec<Crypto>,
}

impl LocalAudio {
    pub fn render(&self) -> String {
        let family = if self.address.is_ipv4() { "IP4" } else { "IP6" };
        let mut sdp = String::with_capacity(256);
        let payload_types: Vec<String> = self
            .codecs
            .iter()
            .map(|c| c.payload_type.to_string())
            .collect();
        let profile = if self.crypto.is_empty() {
            "RTP/AVP"
        } else {
            "RTP/SAVP"
        };
        // Writing to a String cannot fail.
        let _ = write!(
            sdp,
            "v=0\r\no=dialtone {} {} IN {family} {}\r\ns=dialtone\r\nc=IN {family} {}\r\nt=0 0\r\nm=audio {} {profile} {}\r\n",
            self.session_id,
            self.version,
            self.address,
            self.address,
            self.port,
            payload_types.join(" ")
        );
        for crypto in &self.crypto {
            sdp.push_str(&crypto.render());
        }
        for codec in &self.codecs {
            let channels = if codec.channels > 1 {
                format!("/{}", codec.channels)
            } else {
                String::new()
            };
            let _ = write!(
                sdp,
                "a=rtpmap:{} {}/{}{channels}\r\n",
                codec.payload_type, codec.name, codec.clock_rate
            );
            if codec.is_telephone_event() {
                let _ = write!(sdp, "a=fmtp:{} 0-16\r\n", codec.payload_type);
            }
        }
        let _ = write!(sdp, "a=ptime:20\r\na={}\r\n", self.direction.attribute());
        sdp
    }
}

/// The far end's audio stream, from its SDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteAudio {
    pub address: IpAddr,
    pub port: u16,
    pub codecs: Vec<Codec>,
    pub direction: Direction,
    /// Its profile is `RTP/SAVP`.
    pub secure: bool,
    /// Its usable `a=crypto` lines, in its order.
    pub crypto: Vec<Crypto>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("SDP has no audio stream (m=audio)")]
    NoAudio,
    #[error("SDP has no connection address (c=) for its audio")]
    NoAddress,
    #[error("SDP line {line} is malformed: {text:?}")]
    Malformed { line: usize, text: String },
    #[error("no codec in common: offered {offered:?}")]
    NoCommonCodec { offered: Vec<String> },
    #[error("SRTP required, and the SDP is plain RTP/AVP")]
    SrtpRequired,
    #[error("RTP/SAVP with no SRTP crypto suite in common")]
    NoCommonCrypto,
    #[error("the SDP is RTP/SAVP, and SRTP is off")]
    SrtpOff,
    #[error("a re-offer may not change the SRTP profile or key in use")]
    SrtpChanged,
}

/// Reads the first audio stream of an SDP body.
pub fn parse_remote(sdp: &str) -> Result<RemoteAudio, SdpError> {
    let mut session_address = None;
    let mut audio: Option<(u16, Vec<u8>)> = None;
    let mut audio_address = None;
    let mut rtpmaps: Vec<Codec> = Vec::new();
    let mut direction = Direction::SendRecv;
    let mut secure = false;
    let mut crypto = Vec::new();
    let mut in_audio = false;
    let mut seen_audio = false;
    for (index, raw) in sdp.lines().enumerate() {
        let line = raw.trim_end();
        let malformed = || SdpError::Malformed {
            line: index + 1,
            text: line.chars().take(80).collect(),
        };
        let Some((kind, value)) = line.split_once('=') else {
            if line.is_empty() {
                continue;
            }
            return Err(malformed());
        };
        match kind {
            "m" => {
                in_audio = value.starts_with("audio ") && !seen_audio;
                if in_audio {
                    seen_audio = true;
                    let mut fields = value.split_whitespace().skip(1);
                    let port = fields
                        .next()
                        .and_then(|p| p.split('/').next())
                        .and_then(|p| p.parse::<u16>().ok())
                        .ok_or_else(malformed)?;
                    secure = fields.next().ok_or_else(malformed)? == "RTP/SAVP";
                    let formats = fields
                        .map(|f| f.parse::<u8>().map_err(|_| malformed()))
                        .collect::<Result<Vec<u8>, _>>()?;
                    audio = Some((port, formats));
                }
            }
            "c" => {
                let address = value
                    .split_whitespace()
                    .nth(2)
                    .and_then(|a| a.split('/').next())
                    .and_then(|a| a.parse::<IpAddr>().ok())
                    .ok_or_else(malformed)?;
                if in_audio {
                    audio_address = Some(address);
                } else if !seen_audio {
                    session_address = Some(address);
                }
            }
            "a" if in_audio || !seen_audio => {
                if let Some(map) = value.strip_prefix("rtpmap:") {
                    if in_audio {
                        rtpmaps.push(parse_rtpmap(map).ok_or_else(malformed)?);
                    }
                } else if let Some(line) = value.strip_prefix("crypto:") {
                    if in_audio {
                        crypto.extend(parse_crypto(line).map_err(|_| malformed())?);
                    }
                } else if let Some(found) = parse_direction(value) {
                    direction = found;
                }
            }
            _ => {}
        }
    }
    let (port, formats) = audio.ok_or(SdpError::NoAudio)?;
    let address = audio_address
        .or(session_address)
        .ok_or(SdpError::NoAddress)?;
    let codecs = formats
        .into_iter()
        .filter_map(|payload_type| {
            rtpmaps
                .iter()
                .find(|c| c.payload_type == payload_type)
                .cloned()
                .or_else(|| static_payload(payload_type))
        })
        .collect();
    Ok(RemoteAudio {
        address,
        port,
        codecs,
        direction,
        secure,
        crypto,
    })
}

fn parse_rtpmap(map: &str) -> Option<Codec> {
    let (payload_type, encoding) = map.split_once(' ')?;
    let mut parts = encoding.trim().split('/');
    let name = parts.next()?;
    let clock_rate = parts.next()?.parse().ok()?;
    let channels = parts.next().map_or(Some(1), |c| c.parse().ok())?;
    Some(Codec::new(
        payload_type.parse().ok()?,
        name,
        clock_rate,
        channels,
    ))
}

fn parse_direction(attribute: &str) -> Option<Direction> {
    Some(match attribute {
        "sendrecv" => Direction::SendRecv,
        "sendonly" => Direction::SendOnly,
        "recvonly" => Direction::RecvOnly,
        "inactive" => Direction::Inactive,
        _ => return None,
    })
}

/// RFC 3551's static payload types that need no rtpmap.
fn static_payload(payload_type: u8) -> Option<Codec> {
    Some(match payload_type {
        0 => Codec::new(0, "PCMU", 8000, 1),
        8 => Codec::new(8, "PCMA", 8000, 1),
        9 => Codec::new(9, "G722", 8000, 1),
        _ => return None,
    })
}

/// Answers `offer` with the first offered codec we have (the offerer's
/// preference wins, RFC 3264 section 6.1), plus telephone-event if offered,
/// each with the offerer's payload type.
pub fn answer(offer: &RemoteAudio, local: &LocalAudio) -> Result<LocalAudio, SdpError> {
    let chosen = offer
        .codecs
        .iter()
        .find(|offered| {
            !offered.is_telephone_event() && local.codecs.iter().any(|c| c.same_format(offered))
        })
        .cloned()
        .ok_or_else(|| SdpError::NoCommonCodec {
            offered: offer.codecs.iter().map(Codec::label).collect(),
        })?;
    let mut codecs = vec![chosen];
    if let Some(events) = offer
        .codecs
        .iter()
        .find(|c| c.is_telephone_event() && c.clock_rate == 8000)
    {
        codecs.push(events.clone());
    }
    Ok(LocalAudio {
        codecs,
        direction: offer.direction.answer(),
        crypto: answer_crypto(offer, &local.crypto)?,
        ..local.clone()
    })
}

/// The crypto line answering an `RTP/SAVP` offer: the first offered line
/// whose suite is among `ours` (one fresh key per suite, or none when SRTP
/// is off), with the offer's tag and our key. A plain offer gets none.
pub fn answer_crypto(offer: &RemoteAudio, ours: &[Crypto]) -> Result<Vec<Crypto>, SdpError> {
    if !offer.secure {
        return Ok(Vec::new());
    }
    if ours.is_empty() {
        return Err(SdpError::SrtpOff);
    }
    offer
        .crypto
        .iter()
        .find_map(|offered| {
            ours.iter()
                .find(|mine| mine.suite == offered.suite)
                .map(|mine| Crypto {
                    tag: offered.tag,
                    ..mine.clone()
                })
        })
        .map(|chosen| vec![chosen])
        .ok_or(SdpError::NoCommonCrypto)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> LocalAudio {
        LocalAudio {
            address: "127.0.0.1".parse().unwrap(),
            port: 30000,
            codecs: sip_codecs(),
            direction: Direction::SendRecv,
            session_id: 42,
            version: 1,
            crypto: Vec::new(),
        }
    }

    const BARESIP_OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
        m=audio 20000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\n";

    #[test]
    fn our_offer_round_trips_through_the_parser() {
        let sdp = local().render();
        let parsed = parse_remote(&sdp).unwrap();
        assert_eq!(parsed.port, 30000);
        assert_eq!(parsed.codecs, sip_codecs());
        assert!(sdp.contains("a=rtpmap:111 opus/48000/2\r\n"));
    }

    #[test]
    fn answers_with_the_offerers_first_common_codec_and_events() {
        let offer = parse_remote(BARESIP_OFFER).unwrap();
        let answer = answer(&offer, &local()).unwrap();
        let labels: Vec<String> = answer.codecs.iter().map(Codec::label).collect();
        assert_eq!(labels, ["PCMU/8000", "telephone-event/8000"]);
        assert!(answer.render().contains("m=audio 30000 RTP/AVP 0 101\r\n"));
    }

    #[test]
    fn hold_offer_is_answered_recvonly() {
        let hold = BARESIP_OFFER.replace("a=sendrecv", "a=sendonly");
        let answer = answer(&parse_remote(&hold).unwrap(), &local()).unwrap();
        assert_eq!(answer.direction, Direction::RecvOnly);
    }

    #[test]
    fn client_preference_reorders_the_offer() {
        let ordered = prefer(sip_codecs(), &["PCMA/8000".into(), "Speex/16000".into()]);
        assert_eq!(ordered[0].name, "PCMA");
        assert_eq!(ordered[1].name, "opus");
    }

    #[test]
    fn bad_sdp_is_an_error_not_a_panic() {
        assert_eq!(parse_remote("v=0\r\n"), Err(SdpError::NoAudio));
        assert!(matches!(
            parse_remote("v=0\r\nm=audio x RTP/AVP 0\r\n"),
            Err(SdpError::Malformed { line: 2, .. })
        ));
        assert_eq!(
            parse_remote("v=0\r\nm=audio 1 RTP/AVP 0\r\n"),
            Err(SdpError::NoAddress)
        );
        let only_speex =
            "v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 97\r\na=rtpmap:97 speex/8000\r\n";
        assert!(matches!(
            answer(&parse_remote(only_speex).unwrap(), &local()),
            Err(SdpError::NoCommonCodec { .. })
        ));
        for garbage in [
            "",
            "garbage",
            "m=audio",
            "c=IN IP4",
            "a=rtpmap:",
            "m=audio 99999 RTP/AVP 0",
        ] {
            let _ = parse_remote(garbage);
        }
    }

    #[test]
    fn crypto_lines_are_read_and_unusable_ones_skipped() {
        let key = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";
        let line = parse_crypto(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key}"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (line.tag, line.suite),
            (1, CryptoSuite::AesCm128HmacSha1_80)
        );
        assert_eq!(line.key.len(), 30);
        assert!(!format!("{line:?}").contains(key));
        let lifetime = format!("2 AES_CM_128_HMAC_SHA1_32 inline:{key}|2^31");
        assert!(parse_crypto(&lifetime).unwrap().is_some());
        for unusable in [
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key}|2^20|1:4"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key}|2^10"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key} UNENCRYPTED_SRTP"),
            format!("1 F8_128_HMAC_SHA1_80 inline:{key}"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key};inline:{key}"),
        ] {
            assert_eq!(parse_crypto(&unusable), Ok(None), "{unusable}");
        }
        for malformed in [
            "",
            "x AES_CM_128_HMAC_SHA1_80 inline:AAAA",
            "1 AES_CM_128_HMAC_SHA1_80",
            "1 AES_CM_128_HMAC_SHA1_80 inline:AAAA",
            "1 AES_CM_128_HMAC_SHA1_80 inline:!!!",
            "1 AES_CM_128_HMAC_SHA1_80 key:AAAA",
            "99999999999 AES_CM_128_HMAC_SHA1_80 inline:AAAA",
        ] {
            assert_eq!(parse_crypto(malformed), Err(MalformedCrypto), "{malformed}");
        }
    }

    #[test]
    fn a_savp_offer_gets_the_first_line_we_carry_or_an_error() {
        let key = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";
        let offer = BARESIP_OFFER.replace("RTP/AVP", "RTP/SAVP").replace(
            "a=sendrecv",
            &format!("a=crypto:1 F8_128_HMAC_SHA1_80 inline:{key}\r\na=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{key}\r\na=sendrecv"),
        );
        let offer = parse_remote(&offer).unwrap();
        assert!(offer.secure);
        let ours: Vec<Crypto> = CryptoSuite::ALL
            .iter()
            .map(|suite| Crypto {
                tag: 1,
                suite: *suite,
                key: vec![3; suite.key_len()],
            })
            .collect();
        let answer = answer(
            &offer,
            &LocalAudio {
                crypto: ours,
                ..local()
            },
        )
        .unwrap();
        assert_eq!(answer.crypto.len(), 1);
        assert_eq!(
            (answer.crypto[0].tag, answer.crypto[0].suite),
            (2, CryptoSuite::AesCm128HmacSha1_32)
        );
        let text = answer.render();
        assert!(text.contains("m=audio 30000 RTP/SAVP 0 101\r\n"), "{text}");
        assert!(text.contains("a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMD\r\n"), "{text}");
        assert_eq!(super::answer(&offer, &local()), Err(SdpError::SrtpOff));
        let none_usable = RemoteAudio {
            crypto: Vec::new(),
            ..offer
        };
        let ours = vec![Crypto {
            tag: 1,
            suite: CryptoSuite::AeadAes128Gcm,
            key: vec![0; 28],
        }];
        assert_eq!(
            answer_crypto(&none_usable, &ours),
            Err(SdpError::NoCommonCrypto)
        );
    }
}
