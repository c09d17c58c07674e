//! SRTP and SRTCP (RFC 3711, AES-GCM per RFC 7714) for SDES-keyed RTP
//! legs (RFC 4568): protect what we send, authenticate and decrypt what
//! arrives, in place, with no allocation per packet.
//!
//! Keys come from the signalling (one master key and salt per direction,
//! key derivation rate 0, no MKI); session keys are derived once, with the
//! AES-CM PRF. A receiving stream follows one SSRC at a time: the rollover
//! counter is estimated per RFC 3711 section 3.3.1 and a 64-packet replay
//! window is kept for SRTP and SRTCP alike. A packet that fails
//! authentication changes no state. The primitives are aws-lc-rs's.

use std::fmt;

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::cipher::{self, EncryptingKey, EncryptionContext, UnboundCipherKey};
use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;

use crate::rtp::{self, RtpError};

/// The most a packet grows when protected (SRTCP: GCM tag and index).
pub const MAX_OVERHEAD: usize = GCM_TAG_LEN + SRTCP_INDEX_LEN;
/// The longest master key and salt of any profile.
pub const MAX_MASTER_LEN: usize = 32 + 14;

const GCM_TAG_LEN: usize = 16;
const SRTCP_INDEX_LEN: usize = 4;
const SRTCP_HEADER_LEN: usize = 8;
const HMAC_SHA1_KEY_LEN: usize = 20;
/// The E flag of the SRTCP index word: the packet is encrypted.
const SRTCP_ENCRYPTED: u32 = 0x8000_0000;
const REPLAY_WINDOW: u64 = 64;

/// The SRTP crypto suites we carry, in our order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SrtpProfile {
    AesCm128HmacSha1_80,
    AesCm128HmacSha1_32,
    AeadAes128Gcm,
    AeadAes256Gcm,
}

impl SrtpProfile {
    pub const ALL: [SrtpProfile; 4] = [
        SrtpProfile::AesCm128HmacSha1_80,
        SrtpProfile::AesCm128HmacSha1_32,
        SrtpProfile::AeadAes128Gcm,
        SrtpProfile::AeadAes256Gcm,
    ];

    pub fn master_key_len(self) -> usize {
        match self {
            SrtpProfile::AeadAes256Gcm => 32,
            _ => 16,
        }
    }

    pub fn master_salt_len(self) -> usize {
        if self.is_aead() {
            12
        } else {
            14
        }
    }

    fn is_aead(self) -> bool {
        matches!(
            self,
            SrtpProfile::AeadAes128Gcm | SrtpProfile::AeadAes256Gcm
        )
    }

    fn rtp_tag_len(self) -> usize {
        match self {
            SrtpProfile::AesCm128HmacSha1_80 => 10,
            SrtpProfile::AesCm128HmacSha1_32 => 4,
            SrtpProfile::AeadAes128Gcm | SrtpProfile::AeadAes256Gcm => GCM_TAG_LEN,
        }
    }

    /// SRTCP keeps the 80-bit tag under `_32` (RFC 4568 section 6.2).
    fn rtcp_tag_len(self) -> usize {
        if self.is_aead() {
            GCM_TAG_LEN
        } else {
            10
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    #[error("{profile:?} takes {expected} octets of master key and salt, not {actual}")]
    KeyLength {
        profile: SrtpProfile,
        expected: usize,
        actual: usize,
    },
    #[error("{0} octets is too short for this packet")]
    TooShort(usize),
    #[error(transparent)]
    Rtp(#[from] RtpError),
    #[error("authentication failed")]
    Authentication,
    #[error("replayed, or older than the replay window")]
    Replayed,
    #[error("unencrypted SRTCP was not negotiated")]
    Unencrypted,
    #[error("no room in the buffer for the authentication tag")]
    BufferTooSmall,
    #[error("the crypto library refused the operation")]
    Crypto,
}

impl From<aws_lc_rs::error::Unspecified> for SrtpError {
    fn from(_: aws_lc_rs::error::Unspecified) -> Self {
        SrtpError::Crypto
    }
}

/// One direction's master key and salt, as SDES carries them
/// (`inline:` key || salt). Its Debug form does not show the key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MasterKey {
    profile: SrtpProfile,
    material: [u8; MAX_MASTER_LEN],
}

impl MasterKey {
    pub fn new(profile: SrtpProfile, key_and_salt: &[u8]) -> Result<MasterKey, SrtpError> {
        let expected = profile.master_key_len() + profile.master_salt_len();
        if key_and_salt.len() != expected {
            return Err(SrtpError::KeyLength {
                profile,
                expected,
                actual: key_and_salt.len(),
            });
        }
        let mut material = [0; MAX_MASTER_LEN];
        material[..expected].copy_from_slice(key_and_salt);
        Ok(MasterKey { profile, material })
    }

    /// A fresh key and salt from aws-lc's CSPRNG.
    pub fn random(profile: SrtpProfile) -> Result<MasterKey, SrtpError> {
        let mut material = [0; MAX_MASTER_LEN];
        let len = profile.master_key_len() + profile.master_salt_len();
        aws_lc_rs::rand::fill(&mut material[..len])?;
        Ok(MasterKey { profile, material })
    }

    pub fn profile(&self) -> SrtpProfile {
        self.profile
    }

    /// Key || salt, as SDES's `inline:` carries it.
    pub fn as_bytes(&self) -> &[u8] {
        &self.material[..self.profile.master_key_len() + self.profile.master_salt_len()]
    }

    fn key(&self) -> &[u8] {
        &self.material[..self.profile.master_key_len()]
    }

    fn salt(&self) -> &[u8] {
        let start = self.profile.master_key_len();
        &self.material[start..start + self.profile.master_salt_len()]
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

/// The keys of one SRTP leg: ours for what we send, the far end's for
/// what it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SrtpKeys {
    pub send: MasterKey,
    pub receive: MasterKey,
}

/// The session keys of SRTP or of SRTCP, for one direction. Four per
/// SRTP leg, made once and never moved while packets flow, so the size
/// difference between the variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Cipher {
    AesCm {
        key: EncryptingKey,
        salt: [u8; 14],
        auth: hmac::Key,
        tag_len: usize,
    },
    Gcm {
        key: LessSafeKey,
        salt: [u8; 12],
    },
}

/// The RFC 3711 labels of one protocol's session keys.
struct Labels {
    cipher: u8,
    auth: u8,
    salt: u8,
}

const RTP_LABELS: Labels = Labels {
    cipher: 0,
    auth: 1,
    salt: 2,
};
const RTCP_LABELS: Labels = Labels {
    cipher: 3,
    auth: 4,
    salt: 5,
};

fn aes(key_len: usize) -> &'static cipher::Algorithm {
    if key_len == 32 {
        &cipher::AES_256
    } else {
        &cipher::AES_128
    }
}

fn ctr_key(key: &[u8]) -> Result<EncryptingKey, SrtpError> {
    Ok(EncryptingKey::ctr(UnboundCipherKey::new(
        aes(key.len()),
        key,
    )?)?)
}

/// The AES-CM PRF (RFC 3711 section 4.3.3, key derivation rate 0): the
/// keystream at IV = salt XOR label, in `out`. A 12-octet GCM salt is
/// padded with zeros as RFC 7714 section 11 says.
fn derive(prf: &EncryptingKey, salt: &[u8], label: u8, out: &mut [u8]) -> Result<(), SrtpError> {
    let mut iv = [0u8; 16];
    iv[..salt.len()].copy_from_slice(salt);
    iv[7] ^= label;
    out.fill(0);
    prf.less_safe_encrypt(out, EncryptionContext::Iv128(FixedLength::from(iv)))?;
    Ok(())
}

impl Cipher {
    fn derive(master: &MasterKey, labels: &Labels, rtcp: bool) -> Result<Cipher, SrtpError> {
        let profile = master.profile;
        let prf = ctr_key(master.key())?;
        let mut key = [0u8; 32];
        let key = &mut key[..profile.master_key_len()];
        derive(&prf, master.salt(), labels.cipher, key)?;
        let mut salt = [0u8; 14];
        let salt = &mut salt[..profile.master_salt_len()];
        derive(&prf, master.salt(), labels.salt, salt)?;
        let mut auth = [0u8; HMAC_SHA1_KEY_LEN];
        if !profile.is_aead() {
            derive(&prf, master.salt(), labels.auth, &mut auth)?;
        }
        let tag_len = if rtcp {
            profile.rtcp_tag_len()
        } else {
            profile.rtp_tag_len()
        };
        Cipher::from_session_keys(profile, key, salt, &auth, tag_len)
    }

    fn from_session_keys(
        profile: SrtpProfile,
        key: &[u8],
        salt: &[u8],
        auth: &[u8],
        tag_len: usize,
    ) -> Result<Cipher, SrtpError> {
        if profile.is_aead() {
            let algorithm = if key.len() == 32 {
                &aead::AES_256_GCM
            } else {
                &aead::AES_128_GCM
            };
            Ok(Cipher::Gcm {
                key: LessSafeKey::new(UnboundKey::new(algorithm, key)?),
                salt: salt.try_into().map_err(|_| SrtpError::Crypto)?,
            })
        } else {
            Ok(Cipher::AesCm {
                key: ctr_key(key)?,
                salt: salt.try_into().map_err(|_| SrtpError::Crypto)?,
                auth: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, auth),
                tag_len,
            })
        }
    }

    fn tag_len(&self) -> usize {
        match self {
            Cipher::AesCm { tag_len, .. } => *tag_len,
            Cipher::Gcm { .. } => GCM_TAG_LEN,
        }
    }
}

/// AES-CM's IV: salt XOR SSRC XOR index, the index being the 48-bit
/// SRTP index or the 31-bit SRTCP index (RFC 3711 section 4.1.1).
fn ctr_iv(salt: &[u8; 14], ssrc: u32, index: u64) -> FixedLength<16> {
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(salt);
    xor(&mut iv[4..8], &ssrc.to_be_bytes());
    xor(&mut iv[8..14], &index.to_be_bytes()[2..]);
    FixedLength::from(iv)
}

/// GCM's IV: `00 00 || SSRC || word || low` XOR salt, where word and low
/// are ROC and SEQ for SRTP, zero and the index for SRTCP (RFC 7714
/// sections 8.1 and 9.1).
fn gcm_nonce(salt: &[u8; 12], ssrc: u32, word: u32, low: u16) -> Nonce {
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[6..10].copy_from_slice(&word.to_be_bytes());
    iv[10..12].copy_from_slice(&low.to_be_bytes());
    xor(&mut iv, salt);
    Nonce::assume_unique_for_key(iv)
}

fn xor(into: &mut [u8], with: &[u8]) {
    for (byte, other) in into.iter_mut().zip(with) {
        *byte ^= other;
    }
}

/// HMAC-SHA1 of `parts`, truncated to `out`'s length.
fn hmac_tag(key: &hmac::Key, parts: &[&[u8]], out: &mut [u8]) {
    let mut context = hmac::Context::with_key(key);
    for part in parts {
        context.update(part);
    }
    let tag = context.sign();
    out.copy_from_slice(&tag.as_ref()[..out.len()]);
}

/// Which packets of a stream were seen, by index: the highest and the 63
/// before it.
#[derive(Debug, Clone, Copy, Default)]
struct ReplayWindow {
    highest: u64,
    seen: u64,
}

impl ReplayWindow {
    fn check(&self, index: u64) -> Result<(), SrtpError> {
        if index > self.highest {
            return Ok(());
        }
        let behind = self.highest - index;
        if behind >= REPLAY_WINDOW || self.seen & (1 << behind) != 0 {
            return Err(SrtpError::Replayed);
        }
        Ok(())
    }

    fn accept(&mut self, index: u64) {
        if index > self.highest {
            let ahead = index - self.highest;
            self.seen = if ahead >= REPLAY_WINDOW {
                0
            } else {
                self.seen << ahead
            };
            self.seen |= 1;
            self.highest = index;
        } else if self.highest - index < REPLAY_WINDOW {
            // Older than the window: nothing to remember (the check refuses it).
            self.seen |= 1 << (self.highest - index);
        }
    }
}

/// The packet index of one SSRC's RTP: rollover counter and highest
/// sequence number (RFC 3711 section 3.3.1).
#[derive(Debug, Clone, Copy)]
struct RtpIndex {
    ssrc: u32,
    roc: u32,
    highest: u16,
    window: ReplayWindow,
}

impl RtpIndex {
    fn start(ssrc: u32, sequence: u16) -> RtpIndex {
        RtpIndex {
            ssrc,
            roc: 0,
            highest: sequence,
            window: ReplayWindow {
                highest: u64::from(sequence),
                seen: 0,
            },
        }
    }

    /// The index a packet with `sequence` most likely has (Appendix A),
    /// or None when that falls before the stream's first rollover.
    fn estimate(&self, sequence: u16) -> Option<u64> {
        let roc = i64::from(self.roc);
        let v = if self.highest < 0x8000 {
            if i64::from(sequence) - i64::from(self.highest) > 0x8000 {
                roc - 1
            } else {
                roc
            }
        } else if i64::from(self.highest) - 0x8000 > i64::from(sequence) {
            roc + 1
        } else {
            roc
        };
        let v = u32::try_from(v).ok()?;
        Some((u64::from(v) << 16) | u64::from(sequence))
    }

    fn update(&mut self, index: u64) {
        if index > self.window.highest || self.window.seen == 0 {
            self.roc = (index >> 16) as u32;
            self.highest = index as u16;
        }
        self.window.accept(index);
    }
}

/// One direction of a leg: its SRTP and SRTCP keys and where its indices
/// are.
struct Stream {
    rtp: Cipher,
    rtcp: Cipher,
    rtp_index: Option<RtpIndex>,
    /// Sending: the next SRTCP index. Receiving: unused.
    next_rtcp_index: u32,
    rtcp_window: ReplayWindow,
    rtcp_seen: bool,
}

impl Stream {
    fn new(master: MasterKey) -> Result<Stream, SrtpError> {
        Ok(Stream {
            rtp: Cipher::derive(&master, &RTP_LABELS, false)?,
            rtcp: Cipher::derive(&master, &RTCP_LABELS, true)?,
            rtp_index: None,
            next_rtcp_index: 0,
            rtcp_window: ReplayWindow::default(),
            rtcp_seen: false,
        })
    }

    /// The index state for `ssrc`, fresh when the SSRC is new (a stream
    /// restart), without storing it.
    fn rtp_index(&self, ssrc: u32, sequence: u16) -> RtpIndex {
        match self.rtp_index {
            Some(state) if state.ssrc == ssrc => state,
            _ => RtpIndex::start(ssrc, sequence),
        }
    }
}

/// The SRTP state of one leg: protects what goes out, unprotects what
/// comes in.
pub struct SrtpSession {
    send: Stream,
    receive: Stream,
}

impl SrtpSession {
    pub fn new(keys: &SrtpKeys) -> Result<SrtpSession, SrtpError> {
        Ok(SrtpSession {
            send: Stream::new(keys.send)?,
            receive: Stream::new(keys.receive)?,
        })
    }

    /// Protects the RTP packet in `buffer[..len]` in place; the buffer
    /// must have room for the tag. Returns the SRTP packet's length.
    pub fn protect_rtp(&mut self, buffer: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let stream = &mut self.send;
        let tag_len = stream.rtp.tag_len();
        if buffer.len() < len + tag_len {
            return Err(SrtpError::BufferTooSmall);
        }
        let packet = &mut buffer[..len + tag_len];
        let header_len = rtp::header_len(&packet[..len])?;
        let (sequence, ssrc) = sequence_and_ssrc(packet);
        let mut state = stream.rtp_index(ssrc, sequence);
        let index = state.estimate(sequence).ok_or(SrtpError::Replayed)?;
        let roc = (index >> 16) as u32;
        match &stream.rtp {
            Cipher::AesCm {
                key, salt, auth, ..
            } => {
                key.less_safe_encrypt(
                    &mut packet[header_len..len],
                    EncryptionContext::Iv128(ctr_iv(salt, ssrc, index)),
                )?;
                let (body, tag) = packet.split_at_mut(len);
                hmac_tag(auth, &[body, &roc.to_be_bytes()], tag);
            }
            Cipher::Gcm { key, salt } => {
                let nonce = gcm_nonce(salt, ssrc, roc, sequence);
                let (header, rest) = packet.split_at_mut(header_len);
                let (payload, tag_out) = rest.split_at_mut(len - header_len);
                let tag = key.seal_in_place_separate_tag(nonce, Aad::from(&*header), payload)?;
                tag_out.copy_from_slice(tag.as_ref());
            }
        }
        state.update(index);
        stream.rtp_index = Some(state);
        Ok(len + tag_len)
    }

    /// Authenticates and decrypts the SRTP packet `packet` in place.
    /// Returns the length of the RTP packet now at its start; on an error
    /// nothing was changed that matters (the packet is to be dropped).
    pub fn unprotect_rtp(&mut self, packet: &mut [u8]) -> Result<usize, SrtpError> {
        let stream = &mut self.receive;
        let tag_len = stream.rtp.tag_len();
        let len = packet
            .len()
            .checked_sub(tag_len)
            .ok_or(SrtpError::TooShort(packet.len()))?;
        let header_len = rtp::header_len(&packet[..len])?;
        let (sequence, ssrc) = sequence_and_ssrc(packet);
        let mut state = stream.rtp_index(ssrc, sequence);
        let index = state.estimate(sequence).ok_or(SrtpError::Replayed)?;
        if stream.rtp_index.is_some_and(|known| known.ssrc == ssrc) {
            state.window.check(index)?;
        }
        let roc = (index >> 16) as u32;
        match &stream.rtp {
            Cipher::AesCm {
                key, salt, auth, ..
            } => {
                let mut expected = [0u8; 10];
                let (body, tag) = packet.split_at_mut(len);
                hmac_tag(auth, &[body, &roc.to_be_bytes()], &mut expected[..tag_len]);
                verify_slices_are_equal(&expected[..tag_len], tag)
                    .map_err(|_| SrtpError::Authentication)?;
                key.less_safe_encrypt(
                    &mut body[header_len..],
                    EncryptionContext::Iv128(ctr_iv(salt, ssrc, index)),
                )?;
            }
            Cipher::Gcm { key, salt } => {
                let nonce = gcm_nonce(salt, ssrc, roc, sequence);
                let (header, rest) = packet.split_at_mut(header_len);
                key.open_in_place(nonce, Aad::from(&*header), rest)
                    .map_err(|_| SrtpError::Authentication)?;
            }
        }
        state.update(index);
        stream.rtp_index = Some(state);
        Ok(len)
    }

    /// Protects the compound RTCP packet in `buffer[..len]` in place
    /// (encrypted, E flag set); the buffer must have room for index and
    /// tag ([`MAX_OVERHEAD`]). Returns the SRTCP packet's length.
    pub fn protect_rtcp(&mut self, buffer: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let stream = &mut self.send;
        let tag_len = stream.rtcp.tag_len();
        let total = len + SRTCP_INDEX_LEN + tag_len;
        if len < SRTCP_HEADER_LEN {
            return Err(SrtpError::TooShort(len));
        }
        if buffer.len() < total {
            return Err(SrtpError::BufferTooSmall);
        }
        let index = stream.next_rtcp_index;
        let word = (SRTCP_ENCRYPTED | index).to_be_bytes();
        let packet = &mut buffer[..total];
        let ssrc = rtcp_ssrc(packet);
        match &stream.rtcp {
            Cipher::AesCm {
                key, salt, auth, ..
            } => {
                key.less_safe_encrypt(
                    &mut packet[SRTCP_HEADER_LEN..len],
                    EncryptionContext::Iv128(ctr_iv(salt, ssrc, u64::from(index))),
                )?;
                packet[len..len + SRTCP_INDEX_LEN].copy_from_slice(&word);
                let (body, tag) = packet.split_at_mut(len + SRTCP_INDEX_LEN);
                hmac_tag(auth, &[body], tag);
            }
            Cipher::Gcm { key, salt } => {
                let nonce = gcm_nonce(salt, ssrc, index >> 16, index as u16);
                let mut aad = [0u8; SRTCP_HEADER_LEN + SRTCP_INDEX_LEN];
                aad[..SRTCP_HEADER_LEN].copy_from_slice(&packet[..SRTCP_HEADER_LEN]);
                aad[SRTCP_HEADER_LEN..].copy_from_slice(&word);
                let tag = key.seal_in_place_separate_tag(
                    nonce,
                    Aad::from(aad),
                    &mut packet[SRTCP_HEADER_LEN..len],
                )?;
                packet[len..len + GCM_TAG_LEN].copy_from_slice(tag.as_ref());
                packet[len + GCM_TAG_LEN..].copy_from_slice(&word);
            }
        }
        // 2^31 packets would take years at RTCP's pace; wrapping (which
        // would reuse keystream) is kept out by the mask all the same.
        stream.next_rtcp_index = (index + 1) & !SRTCP_ENCRYPTED;
        Ok(total)
    }

    /// Authenticates and decrypts the SRTCP packet `packet` in place.
    /// Returns the length of the compound RTCP packet now at its start.
    pub fn unprotect_rtcp(&mut self, packet: &mut [u8]) -> Result<usize, SrtpError> {
        let stream = &mut self.receive;
        let tag_len = stream.rtcp.tag_len();
        let len = packet
            .len()
            .checked_sub(SRTCP_HEADER_LEN + SRTCP_INDEX_LEN + tag_len)
            .ok_or(SrtpError::TooShort(packet.len()))?
            + SRTCP_HEADER_LEN;
        let ssrc = rtcp_ssrc(packet);
        // The index word follows the tag under GCM, precedes it otherwise.
        let word_at = match stream.rtcp {
            Cipher::AesCm { .. } => len,
            Cipher::Gcm { .. } => len + GCM_TAG_LEN,
        };
        let word: [u8; 4] = packet[word_at..word_at + SRTCP_INDEX_LEN]
            .try_into()
            .map_err(|_| SrtpError::TooShort(packet.len()))?;
        let word_value = u32::from_be_bytes(word);
        if word_value & SRTCP_ENCRYPTED == 0 {
            return Err(SrtpError::Unencrypted);
        }
        let index = word_value & !SRTCP_ENCRYPTED;
        if stream.rtcp_seen {
            stream.rtcp_window.check(u64::from(index))?;
        }
        match &stream.rtcp {
            Cipher::AesCm {
                key, salt, auth, ..
            } => {
                let mut expected = [0u8; 10];
                let (body, tag) = packet.split_at_mut(len + SRTCP_INDEX_LEN);
                hmac_tag(auth, &[body], &mut expected[..tag_len]);
                verify_slices_are_equal(&expected[..tag_len], tag)
                    .map_err(|_| SrtpError::Authentication)?;
                key.less_safe_encrypt(
                    &mut body[SRTCP_HEADER_LEN..len],
                    EncryptionContext::Iv128(ctr_iv(salt, ssrc, u64::from(index))),
                )?;
            }
            Cipher::Gcm { key, salt } => {
                let nonce = gcm_nonce(salt, ssrc, index >> 16, index as u16);
                let mut aad = [0u8; SRTCP_HEADER_LEN + SRTCP_INDEX_LEN];
                aad[..SRTCP_HEADER_LEN].copy_from_slice(&packet[..SRTCP_HEADER_LEN]);
                aad[SRTCP_HEADER_LEN..].copy_from_slice(&word);
                key.open_in_place(
                    nonce,
                    Aad::from(aad),
                    &mut packet[SRTCP_HEADER_LEN..len + GCM_TAG_LEN],
                )
                .map_err(|_| SrtpError::Authentication)?;
            }
        }
        if !stream.rtcp_seen {
            stream.rtcp_window = ReplayWindow {
                highest: u64::from(index),
                seen: 0,
            };
            stream.rtcp_seen = true;
        }
        stream.rtcp_window.accept(u64::from(index));
        Ok(len)
    }
}

/// Sequence number and SSRC of a packet whose header length was checked.
fn sequence_and_ssrc(packet: &[u8]) -> (u16, u32) {
    (
        u16::from_be_bytes([packet[2], packet[3]]),
        u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
    )
}

/// The sender SSRC of an RTCP packet at least 8 octets long.
fn rtcp_ssrc(packet: &[u8]) -> u32 {
    u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::{RtpHeader, RTP_HEADER_LEN};

    fn hex(text: &str) -> Vec<u8> {
        let text: String = text.split_whitespace().collect();
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 3711 Appendix B.3.
    #[test]
    fn key_derivation_matches_rfc_3711_b3() {
        let key = hex("E1F97A0D3E018BE0D64FA32C06DE4139");
        let salt = hex("0EC675AD498AFEEBB6960B3AABE6");
        let prf = ctr_key(&key).unwrap();
        let mut cipher_key = [0u8; 16];
        derive(&prf, &salt, 0, &mut cipher_key).unwrap();
        assert_eq!(cipher_key.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
        let mut cipher_salt = [0u8; 14];
        derive(&prf, &salt, 2, &mut cipher_salt).unwrap();
        assert_eq!(cipher_salt.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
        // The first 160 bits: HMAC-SHA1's key.
        let mut auth_key = [0u8; HMAC_SHA1_KEY_LEN];
        derive(&prf, &salt, 1, &mut auth_key).unwrap();
        assert_eq!(
            auth_key.to_vec(),
            hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")
        );
    }

    /// RFC 3711 Appendix B.2: the keystream of SSRC 0, index 0, through
    /// the counter's 16-bit wrap region.
    #[test]
    fn aes_cm_keystream_matches_rfc_3711_b2() {
        let key = ctr_key(&hex("2B7E151628AED2A6ABF7158809CF4F3C")).unwrap();
        let salt: [u8; 14] = hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD").try_into().unwrap();
        let mut stream = vec![0u8; 0xff02 * 16];
        key.less_safe_encrypt(&mut stream, EncryptionContext::Iv128(ctr_iv(&salt, 0, 0)))
            .unwrap();
        let block = |n: usize| stream[n * 16..n * 16 + 16].to_vec();
        assert_eq!(block(0), hex("E03EAD0935C95E80E166B16DD92B4EB4"));
        assert_eq!(block(1), hex("D23513162B02D0F72A43A2FE4A5F97AB"));
        assert_eq!(block(2), hex("41E95B3BB0A2E8DD477901E4FCA894C0"));
        assert_eq!(block(0xfeff), hex("EC8CDF7398607CB0F2D21675EA9EA1E4"));
        assert_eq!(block(0xff00), hex("362B7C3C6773516318A077D7FC5073AE"));
        assert_eq!(block(0xff01), hex("6A2CC3787889374FBEB4C81B17BA6C44"));
    }

    const GCM_KEY_128: &str = "000102030405060708090a0b0c0d0e0f";
    const GCM_KEY_256: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const GCM_SALT: &str = "517569642070726f2071756f";
    const RFC7714_RTP: &str = "8040f17b8041f8d35501a0b247616c6c696120657374206f6d6e69732064697669736120696e207061727465732074726573";
    const RFC7714_RTCP: &str = "81c8000d4d6172734e5450314e545032525450200000042a0000e9304c756e61deadbeefdeadbeefdeadbeefdeadbeefdeadbeef";

    /// A session whose both directions use these session keys directly,
    /// as RFC 7714's vectors are given.
    fn gcm_session(profile: SrtpProfile, key: &str) -> SrtpSession {
        let stream = || {
            let cipher = || {
                Cipher::from_session_keys(profile, &hex(key), &hex(GCM_SALT), &[], GCM_TAG_LEN)
                    .unwrap()
            };
            let master = MasterKey::new(
                profile,
                &vec![0; profile.master_key_len() + profile.master_salt_len()],
            )
            .unwrap();
            Stream {
                rtp: cipher(),
                rtcp: cipher(),
                ..Stream::new(master).unwrap()
            }
        };
        SrtpSession {
            send: stream(),
            receive: stream(),
        }
    }

    /// RFC 7714 sections 16.1.1, 16.2.1, 17.1 and 17.2.
    #[test]
    fn aead_gcm_matches_rfc_7714() {
        let cases = [
            (
                SrtpProfile::AeadAes128Gcm,
                GCM_KEY_128,
                "8040f17b8041f8d35501a0b2f24de3a3fb34de6cacba861c9d7e4bcabe633bd50d294e6f42a5f47a51c7d19b36de3adf8833899d7f27beb16a9152cf765ee4390cce",
                "81c8000d4d61727363e94885dcdab67ca727d7662f6b7e997ff5c0f76c06f32dc676a5f1730d6fda4ce09b4686303ded0bb9275bc84aa45896cf4d2fc5abf87245d9eade800005d4",
            ),
            (
                SrtpProfile::AeadAes256Gcm,
                GCM_KEY_256,
                "8040f17b8041f8d35501a0b232b1de78a822fe12ef9f78fa332e33aab18012389a58e2f3b50b2a0276ffae0f1ba63799b87b7aa3db36dfffd6b0f9bb7878d7a76c13",
                "81c8000d4d617273d50ae4d1f5ce5d304ba297e47d470c282c3ece5dbffe0a50a2eaa5c1110555be8415f658c61de0476f1b6fad1d1eb30c4446839f57ff6f6cb26ac3be800005d4",
            ),
        ];
        for (profile, key, srtp, srtcp) in cases {
            let mut session = gcm_session(profile, key);
            let rtp = hex(RFC7714_RTP);
            let mut buffer = rtp.clone();
            buffer.resize(rtp.len() + MAX_OVERHEAD, 0);
            let len = session.protect_rtp(&mut buffer, rtp.len()).unwrap();
            assert_eq!(buffer[..len], hex(srtp)[..], "{profile:?}");
            let len = session.unprotect_rtp(&mut buffer[..len]).unwrap();
            assert_eq!(buffer[..len], rtp[..], "{profile:?}");

            let rtcp = hex(RFC7714_RTCP);
            session.send.next_rtcp_index = 0x5d4;
            let mut buffer = rtcp.clone();
            buffer.resize(rtcp.len() + MAX_OVERHEAD, 0);
            let len = session.protect_rtcp(&mut buffer, rtcp.len()).unwrap();
            assert_eq!(buffer[..len], hex(srtcp)[..], "{profile:?}");
            let len = session.unprotect_rtcp(&mut buffer[..len]).unwrap();
            assert_eq!(buffer[..len], rtcp[..], "{profile:?}");
        }
    }

    fn master(profile: SrtpProfile, seed: u8) -> MasterKey {
        let material: Vec<u8> = (0..profile.master_key_len() + profile.master_salt_len())
            .map(|i| seed.wrapping_add(i as u8))
            .collect();
        MasterKey::new(profile, &material).unwrap()
    }

    /// Our side and the far end's, keyed crosswise.
    fn pair(profile: SrtpProfile) -> (SrtpSession, SrtpSession) {
        let (a, b) = (master(profile, 1), master(profile, 100));
        let ours = SrtpSession::new(&SrtpKeys {
            send: a,
            receive: b,
        })
        .unwrap();
        let theirs = SrtpSession::new(&SrtpKeys {
            send: b,
            receive: a,
        })
        .unwrap();
        (ours, theirs)
    }

    fn rtp_packet(sequence: u16, payload: &[u8]) -> Vec<u8> {
        let header = RtpHeader {
            marker: false,
            payload_type: 0,
            sequence,
            timestamp: u32::from(sequence) * 160,
            ssrc: 0x1234_5678,
        };
        let mut out = vec![0; RTP_HEADER_LEN + payload.len() + MAX_OVERHEAD];
        let len = header.write_packet(payload, &mut out).unwrap();
        out.truncate(len);
        out
    }

    fn protect(session: &mut SrtpSession, plain: &[u8]) -> Vec<u8> {
        let mut buffer = plain.to_vec();
        buffer.resize(plain.len() + MAX_OVERHEAD, 0);
        let len = session.protect_rtp(&mut buffer, plain.len()).unwrap();
        buffer.truncate(len);
        buffer
    }

    #[test]
    fn every_profile_round_trips_across_a_rollover_and_refuses_replays() {
        for profile in SrtpProfile::ALL {
            let (mut ours, mut theirs) = pair(profile);
            let payload = [0x55u8; 160];
            for step in 0..70_000u32 {
                // Starts near the wrap, so the ROC moves to 1 and beyond.
                let sequence = (65_000 + step) as u16;
                let plain = rtp_packet(sequence, &payload);
                let mut wire = protect(&mut ours, &plain);
                assert_eq!(wire.len(), plain.len() + profile.rtp_tag_len());
                assert_ne!(wire[RTP_HEADER_LEN..plain.len()], payload[..]);
                let copy = wire.clone();
                let len = theirs.unprotect_rtp(&mut wire).unwrap();
                assert_eq!(wire[..len], plain[..], "{profile:?} at {step}");
                if step % 20_000 == 0 {
                    let mut replay = copy;
                    assert_eq!(theirs.unprotect_rtp(&mut replay), Err(SrtpError::Replayed));
                }
            }
            // 65 000 + 70 000 crossed two wraps.
            assert_eq!(theirs.receive.rtp_index.map(|s| s.roc), Some(2));
        }
    }

    #[test]
    fn reordering_across_the_wrap_keeps_the_right_rollover_counter() {
        let (mut ours, mut theirs) = pair(SrtpProfile::AesCm128HmacSha1_80);
        let packets: Vec<Vec<u8>> = [65_534u16, 65_535, 0, 1]
            .iter()
            .map(|&sequence| protect(&mut ours, &rtp_packet(sequence, &[1; 20])))
            .collect();
        // 65534, then 0 (ROC 1), then the late 65535 (ROC 0), then 1.
        for i in [0, 2, 1, 3] {
            let mut wire = packets[i].clone();
            theirs.unprotect_rtp(&mut wire).unwrap();
        }
        assert_eq!(theirs.receive.rtp_index.map(|s| s.roc), Some(1));
    }

    #[test]
    fn tampering_or_wrong_keys_fail_and_change_nothing() {
        for profile in SrtpProfile::ALL {
            let (mut ours, mut theirs) = pair(profile);
            let wire = protect(&mut ours, &rtp_packet(10, &[7; 40]));
            for position in [1, RTP_HEADER_LEN + 3, wire.len() - 1] {
                let mut bad = wire.clone();
                bad[position] ^= 0x01;
                assert_eq!(
                    theirs.unprotect_rtp(&mut bad),
                    Err(SrtpError::Authentication),
                    "{profile:?} flip at {position}"
                );
            }
            let (_, mut stranger) = pair(profile);
            stranger.receive = Stream::new(master(profile, 200)).unwrap();
            assert_eq!(
                stranger.unprotect_rtp(&mut wire.clone()),
                Err(SrtpError::Authentication)
            );
            // The genuine packet still passes after the forgeries.
            let mut good = wire.clone();
            assert!(theirs.unprotect_rtp(&mut good).is_ok());
            assert!(theirs.unprotect_rtp(&mut [0u8; 3]).is_err());
        }
    }

    #[test]
    fn srtcp_round_trips_and_refuses_replays_and_unencrypted() {
        for profile in SrtpProfile::ALL {
            let (mut ours, mut theirs) = pair(profile);
            let rtcp = hex(RFC7714_RTCP);
            for _ in 0..3 {
                let mut buffer = rtcp.clone();
                buffer.resize(rtcp.len() + MAX_OVERHEAD, 0);
                let len = ours.protect_rtcp(&mut buffer, rtcp.len()).unwrap();
                buffer.truncate(len);
                assert_ne!(buffer[8..rtcp.len()], rtcp[8..]);
                let copy = buffer.clone();
                let plain = theirs.unprotect_rtcp(&mut buffer).unwrap();
                assert_eq!(buffer[..plain], rtcp[..], "{profile:?}");
                assert_eq!(
                    theirs.unprotect_rtcp(&mut copy.clone()),
                    Err(SrtpError::Replayed)
                );
                let mut clear = copy;
                let word_at = match profile.is_aead() {
                    true => clear.len() - 4,
                    false => clear.len() - 4 - profile.rtcp_tag_len(),
                };
                clear[word_at] &= 0x7f;
                assert!(theirs.unprotect_rtcp(&mut clear).is_err());
            }
        }
    }

    #[test]
    fn a_new_ssrc_starts_its_own_index() {
        let (mut ours, mut theirs) = pair(SrtpProfile::AesCm128HmacSha1_32);
        let mut first = protect(&mut ours, &rtp_packet(40_000, &[1; 20]));
        theirs.unprotect_rtp(&mut first).unwrap();
        let mut other = rtp_packet(5, &[1; 20]);
        other[8..12].copy_from_slice(&[9, 9, 9, 9]);
        let mut restarted = protect(&mut ours, &other);
        theirs.unprotect_rtp(&mut restarted).unwrap();
        assert_eq!(theirs.receive.rtp_index.map(|s| s.ssrc), Some(0x0909_0909));
    }

    #[test]
    fn key_lengths_are_checked_and_keys_not_printed() {
        assert!(matches!(
            MasterKey::new(SrtpProfile::AesCm128HmacSha1_80, &[0; 29]),
            Err(SrtpError::KeyLength { expected: 30, .. })
        ));
        assert!(MasterKey::new(SrtpProfile::AeadAes256Gcm, &[0; 44]).is_ok());
        let fresh = MasterKey::random(SrtpProfile::AeadAes256Gcm).unwrap();
        assert_eq!(fresh.as_bytes().len(), 44);
        assert_ne!(
            fresh,
            MasterKey::random(SrtpProfile::AeadAes256Gcm).unwrap()
        );
        let key = master(SrtpProfile::AeadAes128Gcm, 0xab);
        assert!(!format!("{key:?}").contains("171"));
    }
}
