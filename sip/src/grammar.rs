//! What a client may put into a SIP header (RFC 3261 section 25), checked
//! before it gets there: a user name that closes the `<…>` of a From header
//! and adds `;tag=…` and a CRLF of its own writes headers of its choosing
//! into our INVITE (issue 14). Sans-IO: strings in, a verdict out.

use std::fmt;

/// Why a client string cannot go into a SIP header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrammarError {
    #[error("is empty")]
    Empty,
    #[error("has {0} at byte {1}, which a SIP {2} cannot hold unescaped")]
    Forbidden(Printable, usize, &'static str),
    #[error("has a '%' not followed by two hex digits at byte {0}")]
    BadEscape(usize),
    #[error("has a host {0:?} that is neither a name nor an IP address")]
    BadHost(String),
    #[error("has a port that is not 1..=65535")]
    BadPort,
}

/// A character as an error message can show it (control characters
/// escaped, so the message itself is safe to log and to send).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Printable(pub char);

impl fmt::Display for Printable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// RFC 3261 `unreserved`: alphanum / mark.
fn is_unreserved(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.!~*'()".contains(c)
}

/// The user part of a SIP URI: `unreserved`, `escaped` and the
/// `user-unreserved` characters that start nothing in a header (`&=+$`).
/// `;`, `?`, `/` and `,` are left out although the grammar allows them:
/// in a user name they would be read as URI parameters or headers by
/// lenient parsers, and no telephone user needs them.
pub fn check_user(user: &str) -> Result<(), GrammarError> {
    check_chars(user, "user part", |c| {
        is_unreserved(c) || "&=+$".contains(c)
    })
}

/// A SIP URI parameter (`;name=value`): `paramchar` (RFC 3261:
/// `param-unreserved` `[]/:&+$`, `unreserved`, `escaped`).
fn check_param(param: &str) -> Result<(), GrammarError> {
    check_chars(param, "URI parameter", |c| {
        is_unreserved(c) || "[]/:&+$".contains(c)
    })
}

fn check_chars(
    text: &str,
    what: &'static str,
    allowed: impl Fn(char) -> bool,
) -> Result<(), GrammarError> {
    if text.is_empty() {
        return Err(GrammarError::Empty);
    }
    let bytes = text.as_bytes();
    for (at, c) in text.char_indices() {
        if c == '%' {
            let hex = |i: usize| bytes.get(at + i).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(1) && hex(2)) {
                return Err(GrammarError::BadEscape(at));
            }
        } else if !allowed(c) {
            return Err(GrammarError::Forbidden(Printable(c), at, what));
        }
    }
    Ok(())
}

/// `hostname` or IPv4 (letters, digits, `-`, `.`), or an IPv6 reference
/// in brackets.
fn check_host(host: &str) -> Result<(), GrammarError> {
    let valid = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|v6| v6.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    };
    if valid {
        Ok(())
    } else {
        Err(GrammarError::BadHost(host.chars().take(64).collect()))
    }
}

/// `host[:port]`, the port 1..=65535.
fn check_host_port(host_port: &str) -> Result<(), GrammarError> {
    let (host, port) = match host_port.rfind(':') {
        // A colon inside an IPv6 reference is not a port separator.
        Some(colon) if !host_port[colon..].contains(']') => {
            (&host_port[..colon], Some(&host_port[colon + 1..]))
        }
        _ => (host_port, None),
    };
    check_host(host)?;
    match port.map(str::parse::<u16>) {
        None | Some(Ok(1..)) => Ok(()),
        Some(_) => Err(GrammarError::BadPort),
    }
}

/// The Request-URI of a call from what a client typed: `sip:` / `sips:`
/// URIs (user optional, URI parameters allowed, no `?headers`),
/// `user@host[:port]`, or a bare user or number, which gets `domain`.
/// A `#` in the user part (a dial string such as `*31#`) is escaped as
/// `%23`, as RFC 3261 wants; anything else outside the grammar is refused.
pub fn request_uri(typed: &str, domain: &str) -> Result<String, GrammarError> {
    let typed = typed.trim();
    let (scheme, rest) = match typed.split_once(':') {
        Some((scheme, rest))
            if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") =>
        {
            (scheme.to_ascii_lowercase(), rest)
        }
        _ => ("sip".to_string(), typed),
    };
    let mut params = rest.split(';');
    let address = params.next().unwrap_or_default();
    let (user, host_port) = match address.rsplit_once('@') {
        Some((user, host_port)) => (Some(user), host_port.to_string()),
        None if typed.len() != rest.len() => (None, address.to_string()),
        // A bare user or number: the domain is ours, and trusted.
        None => (Some(address), domain.to_string()),
    };
    let user = user.map(|user| user.replace('#', "%23"));
    if let Some(user) = &user {
        check_user(user)?;
    }
    if host_port != domain {
        check_host_port(&host_port)?;
    }
    let mut uri = match &user {
        Some(user) => format!("{scheme}:{user}@{host_port}"),
        None => format!("{scheme}:{host_port}"),
    };
    for param in params {
        check_param(param.replace('=', "").as_str())?;
        uri.push(';');
        uri.push_str(param);
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The classics of header injection through a user name.
    const INJECTIONS: &[&str] = &[
        "a>;tag=1\r\nX-Injected: yes",
        "alice\nX-Injected: yes",
        "alice\r\n\r\nBYE sip:x SIP/2.0",
        "bob\"; display",
        "<sip:evil@example.com>",
        "a?X-Injected=yes",
        "a,b",
        "nul\0byte",
        "space name",
        "50%",
        "%0d%0",
    ];

    #[test]
    fn ordinary_user_names_pass() {
        for user in [
            "1001",
            "alice.smith",
            "+4930123456",
            "*97",
            "o'hara",
            "a%20b",
            "a_b-c",
        ] {
            assert_eq!(check_user(user), Ok(()), "{user}");
        }
    }

    #[test]
    fn injections_in_a_user_name_are_refused() {
        // In a bUri, `;tag=1` is a URI parameter and stays inside `<…>`.
        for user in INJECTIONS.iter().chain(&["a;tag=1"]) {
            assert!(check_user(user).is_err(), "{user:?} was accepted");
        }
        assert_eq!(check_user(""), Err(GrammarError::Empty));
        let message = check_user("a\r\nb").unwrap_err().to_string();
        assert!(
            !message.contains('\r') && !message.contains('\n'),
            "{message}"
        );
    }

    #[test]
    fn request_uris_are_built_from_what_clients_type() {
        let uri = |typed| request_uri(typed, "pbx:5060");
        assert_eq!(uri("3000").as_deref(), Ok("sip:3000@pbx:5060"));
        assert_eq!(uri("*31#").as_deref(), Ok("sip:*31%23@pbx:5060"));
        assert_eq!(uri("bob@example.com").as_deref(), Ok("sip:bob@example.com"));
        assert_eq!(
            uri("sip:echo@127.0.0.1:5070;transport=tcp").as_deref(),
            Ok("sip:echo@127.0.0.1:5070;transport=tcp")
        );
        assert_eq!(uri("SIPS:[::1]:5061").as_deref(), Ok("sips:[::1]:5061"));
        assert_eq!(uri("sip:127.0.0.1").as_deref(), Ok("sip:127.0.0.1"));
    }

    #[test]
    fn injections_in_a_request_uri_are_refused() {
        for user in INJECTIONS {
            for typed in [
                user.to_string(),
                format!("{user}@example.com"),
                format!("sip:{user}@example.com"),
            ] {
                assert!(
                    request_uri(&typed, "pbx").is_err(),
                    "{typed:?} was accepted"
                );
            }
        }
        for typed in [
            "sip:x@host?X-Injected=yes",
            "sip:x@host;a=b\r\nX-Injected: yes",
            "sip:x@ho st",
            "sip:x@host:0",
            "sip:x@host:99999",
            "sip:x@host>",
            "two words",
            "<sip:x>",
            "sip:",
        ] {
            assert!(request_uri(typed, "pbx").is_err(), "{typed:?} was accepted");
        }
    }
}
