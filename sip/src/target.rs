//! Where SIP requests go: a registrar or proxy address with its transport.

use std::fmt;
use std::net::SocketAddr;
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
    fn default_port(self) -> u16 {
        match self {
            TransportKind::Tls => 5061,
            TransportKind::Udp | TransportKind::Tcp => 5060,
        }
    }
}

/// A registrar or proxy: host, port and transport.
///
/// Written as a SIP URI (`sip:pbx.example.com:5060;transport=tcp`,
/// `sips:pbx.example.com` for TLS) or a bare `host[:port]`; without a port,
/// 5060 (5061 for TLS). The host is resolved each time it is used, so a DNS change
/// is followed without a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipTarget {
    pub host: String,
    pub port: u16,
    pub transport: TransportKind,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("'{0}' is not a host with an optional port (e.g. sip:192.0.2.10:5060;transport=udp)")]
    BadAddress(String),
    #[error("transport '{0}' is not supported (udp, tcp or tls)")]
    BadTransport(String),
    #[error("'{0}' does not resolve to an IPv4 address")]
    Unresolved(String),
}

impl SipTarget {
    /// Resolves the host to the first IPv4 address it names.
    pub async fn resolve(&self) -> Result<SocketAddr, TargetError> {
        let found = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|_| TargetError::Unresolved(self.host.clone()))?;
        found
            .into_iter()
            .find(SocketAddr::is_ipv4)
            .ok_or_else(|| TargetError::Unresolved(self.host.clone()))
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
        let mut transport = match secure {
            true => TransportKind::Tls,
            false => TransportKind::Udp,
        };
        for param in parts {
            if let Some(value) = param.strip_prefix("transport=") {
                transport = match (value.to_ascii_lowercase().as_str(), secure) {
                    ("udp", false) => TransportKind::Udp,
                    ("tcp", false) => TransportKind::Tcp,
                    // A sips: URI over TCP is TLS over TCP (RFC 3261 26.2.2).
                    ("tls", _) | ("tcp", true) => TransportKind::Tls,
                    (other, _) => return Err(TargetError::BadTransport(other.to_string())),
                };
            }
        }
        Ok(SipTarget {
            host: host.to_string(),
            port: port.unwrap_or(transport.default_port()),
            transport,
        })
    }
}

impl fmt::Display for SipTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sip:{}:{};transport={}",
            self.host,
            self.port,
            self.transport.as_str()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_uri_and_bare_forms() {
        let tcp: SipTarget = "sip:127.0.0.1:5070;transport=TCP".parse().unwrap();
        assert_eq!((tcp.host.as_str(), tcp.port), ("127.0.0.1", 5070));
        assert_eq!(tcp.transport, TransportKind::Tcp);
        let bare: SipTarget = "pbx.example.com".parse().unwrap();
        assert_eq!(bare.port, 5060);
        assert_eq!(bare.to_string(), "sip:pbx.example.com:5060;transport=udp");
    }

    #[test]
    fn tls_by_parameter_or_sips_scheme_defaults_to_5061() {
        for text in [
            "sip:pbx.example.com;transport=tls",
            "sips:pbx.example.com",
            "sips:pbx.example.com;transport=tcp",
        ] {
            let target: SipTarget = text.parse().unwrap();
            assert_eq!(target.transport, TransportKind::Tls, "{text}");
            assert_eq!(target.port, 5061, "{text}");
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

    #[tokio::test]
    async fn resolves_literal_addresses_without_dns() {
        let target: SipTarget = "127.0.0.1:5999".parse().unwrap();
        assert_eq!(
            target.resolve().await.unwrap(),
            "127.0.0.1:5999".parse().unwrap()
        );
    }
}
