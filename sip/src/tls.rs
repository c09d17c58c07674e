//! SIP over TLS toward registrars and proxies (RFC 3261 section 26.3.1).
//!
//! rsipstack opens the connections and checks the server's certificate
//! (rustls' WebPKI verifier) against the trust anchors loaded here, by the
//! host name the configuration gives (or the address when it gives one).
//! The gateway does not listen for TLS: the registrar and the proxy send
//! their requests back over the connection we opened, which our Contact
//! names.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use base64::Engine;
use rsipstack::sip::{Host, HostWithPort, Transport};
use rsipstack::transport::tls::TlsConfig;
use rsipstack::transport::SipAddr;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{info, warn};

use crate::target::SipTarget;
use crate::user_agent::UserAgent;

/// The TLS client's trust anchors and its own identity.
#[derive(Debug, Clone, Default)]
pub struct SipTlsConfig {
    /// PEM certificates of the CAs trusted to sign registrars' and
    /// proxies' certificates; the system's roots when unset.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain presented when a server asks for one.
    pub client_certificate: Option<PathBuf>,
    /// Its private key, PEM (PKCS#8 or PKCS#1).
    pub client_key: Option<PathBuf>,
}

/// rsipstack's TLS settings from ours, every file read and checked now so
/// that a bad one stops the start rather than the first call.
pub(crate) fn load(config: &SipTlsConfig) -> Result<TlsConfig, String> {
    // rsipstack builds its rustls configs with the process's default
    // provider; with both ring (rsipstack's) and aws-lc-rs (ours) linked
    // there is none, and its first handshake would panic. Err: one is set.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let ca_certs = match &config.ca_file {
        Some(path) => {
            let pem = read(path, "sip.tls_ca_file")?;
            let count = certificates(&pem, path, "sip.tls_ca_file")?.len();
            info!(file = %path.display(), count, "SIP TLS trusts the CAs of sip.tls_ca_file");
            Some(pem)
        }
        None => system_roots(),
    };
    let (client_cert, client_key) = match (&config.client_certificate, &config.client_key) {
        (None, None) => (None, None),
        (Some(cert_path), Some(key_path)) => {
            let cert = read(cert_path, "sip.tls_client_cert")?;
            let key = read(key_path, "sip.tls_client_key")?;
            check_identity(&cert, cert_path, &key, key_path)?;
            (Some(cert), Some(key))
        }
        _ => return Err("sip.tls_client_cert and sip.tls_client_key go together".to_string()),
    };
    Ok(TlsConfig {
        ca_certs,
        client_cert,
        client_key,
        ..TlsConfig::default()
    })
}

fn read(path: &Path, key: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {key} {}: {e}", path.display()))
}

fn certificates(
    pem: &[u8],
    path: &Path,
    key: &str,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{key} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{key} {} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// The system's trust anchors as PEM (the only form rsipstack reads);
/// `None`, loudly, when there are none: every server then fails the check.
fn system_roots() -> Option<Vec<u8>> {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        warn!(%error, "reading the system's root certificates");
    }
    if found.certs.is_empty() {
        warn!("no system root certificates: SIP over TLS will refuse every server (set sip.tls_ca_file)");
        return None;
    }
    info!(
        count = found.certs.len(),
        "SIP TLS trusts the system's root certificates"
    );
    let mut pem = String::new();
    for cert in &found.certs {
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        let body = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        for line in body.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    Some(pem.into_bytes())
}

/// The client certificate and key make an identity rsipstack can use: it
/// reads PKCS#8 and PKCS#1 keys only, and a key that does not match the
/// certificate would fail every handshake that asks for it.
fn check_identity(
    cert: &[u8],
    cert_path: &Path,
    key: &[u8],
    key_path: &Path,
) -> Result<(), String> {
    let chain = certificates(cert, cert_path, "sip.tls_client_cert")?;
    let bad_key = |e: String| format!("sip.tls_client_key {}: {e}", key_path.display());
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| bad_key(e.to_string()))?;
    if matches!(key, PrivateKeyDer::Sec1(_)) {
        return Err(bad_key(
            "an EC key in SEC1 form; convert it to PKCS#8 (openssl pkcs8 -topk8 -nocrypt)"
                .to_string(),
        ));
    }
    rustls::ClientConfig::builder_with_provider(
        rustls::crypto::aws_lc_rs::default_provider().into(),
    )
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_client_auth_cert(chain, key)
    .map_err(|e| {
        format!(
            "sip.tls_client_cert {} and sip.tls_client_key {}: {e}",
            cert_path.display(),
            key_path.display()
        )
    })?;
    Ok(())
}

/// Where requests to a hop go, and where its requests to us come.
pub(crate) struct HopAddrs {
    /// The hop's address, resolved.
    pub peer: SocketAddr,
    /// The address our Contact names.
    pub contact: SocketAddr,
}

impl UserAgent {
    /// Where requests for `target` are sent, as rsipstack takes it. A TLS
    /// target named by a host name keeps it: rsipstack resolves it and
    /// checks the certificate against it (and sends it as SNI), which an
    /// address would not match.
    pub(crate) fn next_hop(&self, target: &SipTarget) -> SipAddr {
        let transport = target.transport.unwrap_or_default();
        let port = target.port.unwrap_or(transport.default_port());
        let addr = match target.host.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, port).into(),
            Err(_) => HostWithPort {
                host: Host::Domain(target.host.clone().into()),
                port: Some(port.into()),
            },
        };
        SipAddr {
            r#type: Some(transport.into()),
            addr,
        }
    }

    /// The addresses of the way to `hop`: over TLS, the connection to it is
    /// opened now if none is (a certificate that fails the check fails
    /// here), and our Contact names our end of it, since that connection is
    /// the only way back to us; otherwise the advertised address.
    pub(crate) async fn hop_addrs(&self, hop: &SipAddr) -> Result<HopAddrs, String> {
        if hop.r#type != Some(Transport::Tls) {
            return Ok(HopAddrs {
                peer: hop.get_socketaddr().map_err(|e| e.to_string())?,
                contact: self.advertised_addr(),
            });
        }
        let (connection, peer) = self
            .endpoint
            .transport_layer
            .lookup(hop, None)
            .await
            .map_err(|e| format!("TLS to {hop}: {e}"))?;
        let peer = peer.get_socketaddr().map_err(|e| e.to_string())?;
        let contact = self
            .contact_over(connection.get_addr())
            .ok_or_else(|| format!("TLS to {hop}: no local address"))?;
        Ok(HopAddrs { peer, contact })
    }

    /// Our Contact's address for a connection whose local end is `local`:
    /// its port, with the advertised address (for NAT) in front.
    pub(crate) fn contact_over(&self, local: &SipAddr) -> Option<SocketAddr> {
        let local = local.get_socketaddr().ok()?;
        Some(SocketAddr::new(self.advertised_addr().ip(), local.port()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_a_client_identity_is_refused() {
        let config = SipTlsConfig {
            client_certificate: Some("/nonexistent.pem".into()),
            ..SipTlsConfig::default()
        };
        let error = load(&config).err().unwrap_or_default();
        assert!(error.contains("go together"), "{error}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("dialtone-tls-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("empty.pem");
        let written = std::fs::write(&path, "not a certificate\n");
        assert!(written.is_ok());
        let config = SipTlsConfig {
            ca_file: Some(path),
            ..SipTlsConfig::default()
        };
        let error = load(&config).err().unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(error.contains("holds no PEM certificate"), "{error}");
    }
}
