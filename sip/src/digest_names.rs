//! RFC 7616 / RFC 8760 name the digest algorithm `SHA-256`; rsipstack 0.7.14
//! only parses and writes `SHA256`, so a SHA-256 challenge (Kamailio with
//! `algorithm "SHA-256"`, Asterisk, Flexisip) fails to parse and the
//! registration dies. The hash itself does not include the name, so
//! renaming at the edge is enough: challenges coming in are renamed to the
//! stack's spelling, credentials going out to the RFC's.

use rsipstack::sip::headers::untyped::{
    Authorization, ProxyAuthenticate, ProxyAuthorization, WwwAuthenticate,
};
use rsipstack::sip::message::HasHeaders;
use rsipstack::sip::{Header, SipMessage};
use rsipstack::transaction::endpoint::MessageInspector;
use rsipstack::transport::SipAddr;

/// (RFC spelling, rsipstack spelling)
const NAMES: &[(&str, &str)] = &[("SHA-256-sess", "SHA256-sess"), ("SHA-256", "SHA256")];

pub struct DigestAlgorithmNames;

impl MessageInspector for DigestAlgorithmNames {
    fn before_send(&self, mut message: SipMessage, _: Option<&SipAddr>) -> SipMessage {
        rename_headers(&mut message, Direction::Outgoing);
        message
    }

    fn after_received(&self, mut message: SipMessage, _: Option<&SipAddr>) -> SipMessage {
        rename_headers(&mut message, Direction::Incoming);
        message
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Our credentials: RFC names.
    Outgoing,
    /// Their challenges: the stack's names.
    Incoming,
}

fn rename_headers(message: &mut SipMessage, direction: Direction) {
    use Direction::{Incoming, Outgoing};
    for header in message.headers_mut().iter_mut() {
        let renamed = match header {
            Header::Authorization(h) if direction == Outgoing => {
                rename_algorithm(h.value(), to_rfc)
                    .map(|v| Header::Authorization(Authorization::new(v)))
            }
            Header::ProxyAuthorization(h) if direction == Outgoing => {
                rename_algorithm(h.value(), to_rfc)
                    .map(|v| Header::ProxyAuthorization(ProxyAuthorization::new(v)))
            }
            Header::WwwAuthenticate(h) if direction == Incoming => {
                rename_algorithm(h.value(), to_stack)
                    .map(|v| Header::WwwAuthenticate(WwwAuthenticate::new(v)))
            }
            Header::ProxyAuthenticate(h) if direction == Incoming => {
                rename_algorithm(h.value(), to_stack)
                    .map(|v| Header::ProxyAuthenticate(ProxyAuthenticate::new(v)))
            }
            _ => None,
        };
        if let Some(renamed) = renamed {
            *header = renamed;
        }
    }
}

fn to_stack(name: &str) -> Option<&'static str> {
    NAMES
        .iter()
        .find(|(rfc, _)| rfc.eq_ignore_ascii_case(name))
        .map(|(_, stack)| *stack)
}

fn to_rfc(name: &str) -> Option<&'static str> {
    NAMES
        .iter()
        .find(|(_, stack)| stack.eq_ignore_ascii_case(name))
        .map(|(rfc, _)| *rfc)
}

/// Rewrites the value of the `algorithm` parameter of a Digest header, if
/// `rename` knows it; `None` when there is nothing to change.
fn rename_algorithm(value: &str, rename: fn(&str) -> Option<&'static str>) -> Option<String> {
    let start = value.to_ascii_lowercase().find("algorithm=")? + "algorithm=".len();
    let rest = &value[start..];
    let quoted = rest.starts_with('"');
    let name_start = start + usize::from(quoted);
    let name_len = value[name_start..]
        .find(|c: char| c == ',' || c == '"' || c.is_whitespace())
        .unwrap_or(value.len() - name_start);
    let new_name = rename(&value[name_start..name_start + name_len])?;
    Some(format!(
        "{}{}{}",
        &value[..name_start],
        new_name,
        &value[name_start + name_len..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_renamed_for_the_stack() {
        let kamailio = r#"Digest realm="127.0.0.1", nonce="abc", qop="auth", algorithm=SHA-256"#;
        assert_eq!(
            rename_algorithm(kamailio, to_stack).as_deref(),
            Some(r#"Digest realm="127.0.0.1", nonce="abc", qop="auth", algorithm=SHA256"#)
        );
        let quoted = r#"Digest algorithm="sha-256-sess", realm="r""#;
        assert_eq!(
            rename_algorithm(quoted, to_stack).as_deref(),
            Some(r#"Digest algorithm="SHA256-sess", realm="r""#)
        );
    }

    #[test]
    fn credentials_are_renamed_for_the_wire_and_md5_is_left_alone() {
        let sent = r#"Digest username="1001", algorithm=SHA256, response="ff""#;
        assert_eq!(
            rename_algorithm(sent, to_rfc).as_deref(),
            Some(r#"Digest username="1001", algorithm=SHA-256, response="ff""#)
        );
        assert_eq!(rename_algorithm(r#"Digest algorithm=MD5"#, to_rfc), None);
        assert_eq!(rename_algorithm(r#"Digest realm="x""#, to_stack), None);
    }
}
