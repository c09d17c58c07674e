//! DTMF carried in SIP INFO bodies, for far ends that did not offer
//! telephone-event: `application/dtmf-relay` (`Signal=5` and
//! `Duration=160`, in ms, one per line; the de-facto Cisco format) and the
//! bare `application/dtmf` (just the key). The SIP side hands over the
//! Content-Type and body; no SIP is parsed here.

use std::time::Duration;

use thiserror::Error;

use super::telephone_event::{digit_for_event, event_code};

pub const DTMF_RELAY_CONTENT_TYPE: &str = "application/dtmf-relay";
pub const DTMF_CONTENT_TYPE: &str = "application/dtmf";
/// Real bodies are a few dozen bytes; anything this long is not DTMF.
const MAX_BODY_LEN: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DtmfRelayError {
    #[error("content type is not application/dtmf-relay or application/dtmf")]
    UnsupportedContentType,
    #[error("DTMF body of {0} bytes is too long")]
    TooLong(usize),
    #[error("DTMF body is not text")]
    NotText,
    #[error("DTMF body line without key=value")]
    MalformedLine,
    #[error("DTMF body has no Signal")]
    MissingSignal,
    #[error("DTMF signal is not a DTMF key")]
    BadSignal,
    #[error("DTMF duration is not a number of milliseconds")]
    BadDuration,
    #[error("DTMF body repeats a field")]
    DuplicateField,
}

/// One key press from an INFO body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfInfo {
    /// `0`-`9`, `*`, `#`, `A`-`D`.
    pub digit: char,
    /// Absent from `application/dtmf`, optional in `dtmf-relay`.
    pub duration: Option<Duration>,
}

/// The `application/dtmf-relay` body for `digit` lasting `duration`.
pub fn build_dtmf_relay(digit: char, duration: Duration) -> Result<String, DtmfRelayError> {
    let code = event_code(digit).ok_or(DtmfRelayError::BadSignal)?;
    let digit = digit_for_event(code).ok_or(DtmfRelayError::BadSignal)?;
    Ok(format!(
        "Signal={digit}\r\nDuration={}\r\n",
        duration.as_millis()
    ))
}

/// Parses an INFO body by its Content-Type (parameters and case ignored).
pub fn parse_dtmf_info(content_type: &str, body: &[u8]) -> Result<DtmfInfo, DtmfRelayError> {
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    let is_relay = media_type.eq_ignore_ascii_case(DTMF_RELAY_CONTENT_TYPE);
    if !is_relay && !media_type.eq_ignore_ascii_case(DTMF_CONTENT_TYPE) {
        return Err(DtmfRelayError::UnsupportedContentType);
    }
    if body.len() > MAX_BODY_LEN {
        return Err(DtmfRelayError::TooLong(body.len()));
    }
    let text = std::str::from_utf8(body).map_err(|_| DtmfRelayError::NotText)?;
    if is_relay {
        parse_relay(text)
    } else {
        Ok(DtmfInfo {
            digit: parse_signal(text.trim())?,
            duration: None,
        })
    }
}

fn parse_relay(text: &str) -> Result<DtmfInfo, DtmfRelayError> {
    let mut digit = None;
    let mut duration = None;
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        let (key, value) = line.split_once('=').ok_or(DtmfRelayError::MalformedLine)?;
        let (key, value) = (key.trim(), value.trim());
        if key.eq_ignore_ascii_case("signal") {
            if digit.replace(parse_signal(value)?).is_some() {
                return Err(DtmfRelayError::DuplicateField);
            }
        } else if key.eq_ignore_ascii_case("duration") {
            let millis: u64 = value.parse().map_err(|_| DtmfRelayError::BadDuration)?;
            if duration.replace(Duration::from_millis(millis)).is_some() {
                return Err(DtmfRelayError::DuplicateField);
            }
        }
        // Other keys (some phones add their own) are ignored.
    }
    Ok(DtmfInfo {
        digit: digit.ok_or(DtmfRelayError::MissingSignal)?,
        duration,
    })
}

/// A key (`5`, `*`, `a`), or an event code as some devices send it
/// (`10` for `*`, `11` for `#`).
fn parse_signal(value: &str) -> Result<char, DtmfRelayError> {
    let mut chars = value.chars();
    if let (Some(key), None) = (chars.next(), chars.next()) {
        let code = event_code(key).ok_or(DtmfRelayError::BadSignal)?;
        return digit_for_event(code).ok_or(DtmfRelayError::BadSignal);
    }
    value
        .parse::<u8>()
        .ok()
        .and_then(digit_for_event)
        .ok_or(DtmfRelayError::BadSignal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(body: &str) -> Result<DtmfInfo, DtmfRelayError> {
        parse_dtmf_info(DTMF_RELAY_CONTENT_TYPE, body.as_bytes())
    }

    #[test]
    fn builds_the_cisco_format() {
        assert_eq!(
            build_dtmf_relay('5', Duration::from_millis(160)).unwrap(),
            "Signal=5\r\nDuration=160\r\n"
        );
        assert_eq!(
            build_dtmf_relay('d', Duration::from_millis(250)).unwrap(),
            "Signal=D\r\nDuration=250\r\n"
        );
        assert_eq!(
            build_dtmf_relay('x', Duration::from_millis(100)),
            Err(DtmfRelayError::BadSignal)
        );
    }

    #[test]
    fn parses_what_it_builds() {
        for key in "0123456789*#ABCD".chars() {
            let body = build_dtmf_relay(key, Duration::from_millis(120)).unwrap();
            assert_eq!(
                relay(&body),
                Ok(DtmfInfo {
                    digit: key,
                    duration: Some(Duration::from_millis(120))
                })
            );
        }
    }

    #[test]
    fn accepts_common_variations() {
        let expected = |digit, ms: Option<u64>| {
            Ok(DtmfInfo {
                digit,
                duration: ms.map(Duration::from_millis),
            })
        };
        assert_eq!(relay("Signal=1\nDuration=100\n"), expected('1', Some(100)));
        assert_eq!(
            relay("signal = # \r\nDURATION= 250"),
            expected('#', Some(250))
        );
        assert_eq!(relay("Signal=10\r\n"), expected('*', None));
        assert_eq!(
            relay("Signal=11\r\nDuration=80\r\n"),
            expected('#', Some(80))
        );
        assert_eq!(relay("Signal=b\r\n"), expected('B', None));
        assert_eq!(
            relay("\r\nSignal=7\r\nVolume=10\r\nDuration=160\r\n\r\n"),
            expected('7', Some(160))
        );
        assert_eq!(
            parse_dtmf_info("Application/DTMF-Relay; charset=utf-8", b"Signal=3"),
            expected('3', None)
        );
        assert_eq!(
            parse_dtmf_info("application/dtmf", b"9\r\n"),
            expected('9', None)
        );
        assert_eq!(
            parse_dtmf_info("application/dtmf", b"11"),
            expected('#', None)
        );
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(relay(""), Err(DtmfRelayError::MissingSignal));
        assert_eq!(relay("Duration=100"), Err(DtmfRelayError::MissingSignal));
        assert_eq!(relay("hello"), Err(DtmfRelayError::MalformedLine));
        assert_eq!(relay("Signal="), Err(DtmfRelayError::BadSignal));
        assert_eq!(relay("Signal=E"), Err(DtmfRelayError::BadSignal));
        assert_eq!(relay("Signal=16"), Err(DtmfRelayError::BadSignal));
        assert_eq!(relay("Signal=12345"), Err(DtmfRelayError::BadSignal));
        assert_eq!(relay("Signal=!"), Err(DtmfRelayError::BadSignal));
        assert_eq!(
            relay("Signal=1\r\nDuration=-5"),
            Err(DtmfRelayError::BadDuration)
        );
        assert_eq!(
            relay("Signal=1\r\nDuration=99999999999999999999999"),
            Err(DtmfRelayError::BadDuration)
        );
        assert_eq!(
            relay("Signal=1\r\nSignal=2"),
            Err(DtmfRelayError::DuplicateField)
        );
        assert_eq!(
            relay("Signal=1\r\nDuration=1\r\nDuration=2"),
            Err(DtmfRelayError::DuplicateField)
        );
        assert_eq!(
            parse_dtmf_info(DTMF_RELAY_CONTENT_TYPE, &[b'S', 0xff, 0xfe]),
            Err(DtmfRelayError::NotText)
        );
        assert_eq!(
            parse_dtmf_info(DTMF_RELAY_CONTENT_TYPE, &[b'x'; 2000]),
            Err(DtmfRelayError::TooLong(2000))
        );
        assert_eq!(
            parse_dtmf_info("application/sdp", b"Signal=1"),
            Err(DtmfRelayError::UnsupportedContentType)
        );
        assert_eq!(
            parse_dtmf_info("application/dtmf", b"16"),
            Err(DtmfRelayError::BadSignal)
        );
        assert_eq!(
            parse_dtmf_info("application/dtmf", b""),
            Err(DtmfRelayError::BadSignal)
        );
    }
}
