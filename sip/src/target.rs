//! Where SIP requests go: a registrar or proxy address with its transport.

use std::fmt;
use std::str::FromStr;

/// The SIP transports the gateway speaks toward registrars and proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportKind {
    #[default]
    Udp,
    Tcp,
    Tls,
}

impl TransportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Udp => "udp",
            TransportKind::Tcp => "tcp",
            TransportKind::Tls => "tls",
        }
    }

    /// The port a target without one is reached at (RFC 3261 section 19.1.2).
    pub fn default_port(self) -> u16 {
        match self {
            TransportKind::Tls => 5061,
            TransportKind::Udp | TransportKind::Tcp => 5060,
        }
    }
}

/// A registrar or proxy: host, port and transport.
///
/// Written as a SIP URI (`sip:pbx.example.com:5060;transport=tcp`,
/// `sips:pbx.example.com` for TLS) or a bare `host[:port]`. What is left
/// out of a UDP or TCP target is found as RFC 3263 says (NAPTR, SRV, then
/// 5060 over UDP); a TLS target's host is resolved as it is, on 5061
/// without a port. Hosts are resolved each time they are used (DNS answers
/// are cached for their TTL), so a DNS change is followed without a
/// restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipTarget {
    pub host: String,
    /// The explicit port, if any: with one, only A/AAAA records are looked up.
    pub port: Option<u16>,
    /// The explicit `transport=`, if any: with one, NAPTR is skipped.
    pub transport: Option<TransportKind>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("'{0}' is not a host with an optional port (e.g. sip:192.0.2.10:5060;transport=udp)")]
    BadAddress(String),
    #[error("transport '{0}' is not supported (udp, tcp or tls)")]
    BadTransport(String),
    #[error("'{0}' does not resolve to an address we can reach: {1}")]
    Unresolved(String, String),
}

impl SipTarget {
    /// Over TLS: the certificate is checked against the host as written,
    /// so a TLS target goes where it says, not by NAPTR / SRV.
    pub fn is_tls(&self) -> bool {
        self.transport == Some(TransportKind::Tls)
    }

    /// `host` or `host:port` as written: the domain of a Request-URI and
    /// what a target's host is compared with.
    pub fn host_port(&self) -> String {
        match self.port {
            Some(port) => format!("{}:{port}", self.host),
            None => self.host.clone(),
        }
    }
}

impl FromStr for SipTarget {
    type Err = TargetError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (secure, text) = match text.strip_prefix("sips:") {
            Some(rest) => (true, rest),
            None => (false, text.strip_prefix("sip:").unwrap_or(text)),
        };
        let mut parts = text.split(';');
        let host_port = parts.next().unwrap_or_default();
        let bad = || TargetError::BadAddress(host_port.to_string());
        let (host, port) = match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port.parse::<u16>().map_err(|_| bad())?)),
            None => (host_port, None),
        };
        let host_is_valid = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
        if !host_is_valid || port == Some(0) {
            return Err(bad());
        }
        // A sips: URI is TLS whatever else it says (TLS over TCP, RFC 3261
        // section 26.2.2); plain sip: names the transport or leaves it to DNS.
        let mut transport = secure.then_some(TransportKind::Tls);
        for param in parts {
            if let Some(value) = param.strip_prefix("transport=") {
                transport = match (value.to_ascii_lowercase().as_str(), secure) {
                    ("udp", false) => Some(TransportKind::Udp),
                    ("tcp", false) => Some(TransportKind::Tcp),
                    ("tls", _) | ("tcp", true) => Some(TransportKind::Tls),
                    (other, _) => return Err(TargetError::BadTransport(other.to_string())),
                };
            }
        }
        Ok(SipTarget {
            host: host.to_string(),
            port,
            transport,
        })
    }
}

impl fmt::Display for SipTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sip:{}", self.host_port())?;
        match self.transport {
            Some(transport) => write!(f, ";transport={}", transport.as_str()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_uri_and_bare_forms() {
        let tcp: SipTarget = "sip:127.0.0.1:5070;transport=TCP".parse().unwrap();
        assert_eq!((tcp.host.as_str(), tcp.port), ("127.0.0.1", Some(5070)));
        assert_eq!(tcp.transport, Some(TransportKind::Tcp));
        assert_eq!(tcp.to_string(), "sip:127.0.0.1:5070;transport=tcp");
        let bare: SipTarget = "pbx.example.com".parse().unwrap();
        assert_eq!((bare.port, bare.transport), (None, None));
        assert_eq!(bare.to_string(), "sip:pbx.example.com");
    }

    #[test]
    fn tls_by_parameter_or_sips_scheme_defaults_to_5061() {
        for text in [
            "sip:pbx.example.com;transport=tls",
            "sips:pbx.example.com",
            "sips:pbx.example.com;transport=tcp",
        ] {
            let target: SipTarget = text.parse().unwrap();
            assert_eq!(target.transport, Some(TransportKind::Tls), "{text}");
            assert_eq!(target.port, None, "{text}");
        }
        let explicit: SipTarget = "sips:127.0.0.1:5071".parse().unwrap();
        assert_eq!(explicit.to_string(), "sip:127.0.0.1:5071;transport=tls");
        assert_eq!(
            "sips:pbx.example.com;transport=udp".parse::<SipTarget>(),
            Err(TargetError::BadTransport("udp".into()))
        );
    }

    #[test]
    fn refuses_garbage_and_unknown_transports() {
        for bad in ["sip:", "sip:host:99999", "sip:a b:5060", "sip:host:0"] {
            assert!(
                matches!(bad.parse::<SipTarget>(), Err(TargetError::BadAddress(_))),
                "{bad}"
            );
        }
        assert_eq!(
            "sip:127.0.0.1:5060;transport=sctp".parse::<SipTarget>(),
            Err(TargetError::BadTransport("sctp".into()))
        );
    }
}
