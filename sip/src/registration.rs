//! Registering a web user's SIP account (RFC 3261 section 10): the first
//! REGISTER with digest authentication, refreshes before expiry, and the
//! unregistration (Expires: 0) when the user leaves.

use std::time::Duration;

use rsipstack::dialog::authenticate::Credential;
use rsipstack::dialog::registration::Registration as StackRegistration;
use rsipstack::sip::typed::Contact;
use rsipstack::sip::{Auth, HostWithPort, Param, Scheme, StatusCodeKind, Transport, Uri};
use rsipstack::transport::SipAddr;
use tracing::debug;

use crate::grammar::{self, GrammarError};
use crate::peer_numbers;
use crate::target::{SipTarget, TargetError, TransportKind};
use crate::user_agent::UserAgent;

/// The SIP account of one web user.
#[derive(Debug, Clone)]
pub struct Account {
    /// The user part of the address of record (From / To).
    pub username: String,
    pub password: String,
    /// Digest user name, when the PBX gives one different from `username`.
    pub auth_username: Option<String>,
    /// The domain of the address of record; the registrar's `host:port` when
    /// empty.
    pub domain: String,
    /// The user part of our Contact. Unique per registration, so that two
    /// sessions of one user hold two bindings and one leaving does not
    /// remove the other, and so that a request to this Contact names its
    /// session.
    pub contact_user: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The registrar answered with a final non-2xx response (after digest
    /// authentication when it challenged).
    #[error("registrar answered {status} {reason}")]
    Rejected { status: u16, reason: String },
    #[error("registrar did not answer within {0:?}")]
    NoAnswer(Duration),
    #[error("registrar unreachable: {0}")]
    Unreachable(String),
    #[error(transparent)]
    BadTarget(#[from] TargetError),
    #[error("the user name {0}")]
    BadUser(#[from] GrammarError),
}

/// A live registration. Call [`Registration::refresh`] before
/// [`Registration::refresh_after`] elapses and [`Registration::unregister`]
/// when the user leaves.
pub struct Registration {
    stack: StackRegistration,
    agent: UserAgent,
    /// Where REGISTERs go, as given to rsipstack.
    hop: SipAddr,
    request_uri: Uri,
    requested_expires: u32,
    timeout: Duration,
}

impl UserAgent {
    /// Registers `account` at `registrar`, asking for `expires` seconds. The
    /// whole exchange, challenge included, must finish within `timeout`.
    pub async fn register(
        &self,
        registrar: &SipTarget,
        account: Account,
        expires: u32,
        timeout: Duration,
    ) -> Result<Registration, RegisterError> {
        // From, To and the digest username carry it.
        grammar::check_user(&account.username)?;
        if let Some(auth_username) = &account.auth_username {
            grammar::check_user(auth_username)?;
        }
        let hop = self.next_hop(registrar).await?;
        let addrs = self
            .hop_addrs(&hop)
            .await
            .map_err(RegisterError::Unreachable)?;
        let domain = if account.domain.is_empty() {
            format!("{}:{}", registrar.host, registrar.port)
        } else {
            account.domain.clone()
        };
        let request_uri = parse_uri(&format!(
            "sip:{domain};transport={}",
            registrar.transport.as_str()
        ))?;
        let contact = Contact {
            display_name: None,
            uri: Uri {
                scheme: Some(Scheme::Sip),
                auth: Some(Auth {
                    user: account.contact_user.clone(),
                    password: None,
                }),
                host_with_port: HostWithPort::from(addrs.contact),
                params: match registrar.transport {
                    TransportKind::Udp => vec![],
                    TransportKind::Tcp => vec![Param::Transport(Transport::Tcp)],
                    TransportKind::Tls => vec![Param::Transport(Transport::Tls)],
                },
                headers: vec![],
            },
            params: vec![],
        };
        let credential = Credential {
            username: account.username,
            password: account.password,
            realm: None,
            auth_username: account.auth_username,
        };
        let mut stack = StackRegistration::new(self.endpoint.clone(), Some(credential));
        stack.contact = Some(contact);
        stack.outbound_proxy = Some(addrs.peer);
        let mut registration = Registration {
            stack,
            agent: self.clone(),
            hop,
            request_uri,
            requested_expires: expires,
            timeout,
        };
        registration.send(expires).await?;
        Ok(registration)
    }
}

impl Registration {
    /// How long the registrar granted, in seconds, within
    /// [`peer_numbers::MIN_REGISTRATION_SECS`]..=[`peer_numbers::MAX_REGISTRATION_SECS`]
    /// whatever it said (`Expires` / Contact `expires`).
    pub fn granted_expires(&self) -> u32 {
        peer_numbers::registration_lifetime(self.stack.granted_expires, self.requested_expires)
    }

    /// When to refresh: three quarters of the granted time.
    pub fn refresh_after(&self) -> Duration {
        peer_numbers::registration_refresh(self.granted_expires())
    }

    /// The Contact URI the registrar holds for us.
    pub fn contact(&self) -> String {
        self.stack
            .contact
            .as_ref()
            .map(|contact| contact.uri.to_string())
            .unwrap_or_default()
    }

    pub async fn refresh(&mut self) -> Result<(), RegisterError> {
        self.send(self.requested_expires).await
    }

    /// [`Registration::refresh`] by value, for a task beside an event loop:
    /// the registration comes back with the outcome.
    pub async fn refreshed(mut self) -> (Registration, Result<(), RegisterError>) {
        let outcome = self.refresh().await;
        (self, outcome)
    }

    /// Removes our binding (REGISTER with Expires: 0).
    pub async fn unregister(mut self) -> Result<(), RegisterError> {
        self.send(0).await
    }

    async fn send(&mut self, expires: u32) -> Result<(), RegisterError> {
        if self.hop.r#type == Some(Transport::Tls) {
            // A connection the registrar closed is opened again here, its
            // certificate checked against the registrar's name (rsipstack
            // would check it against the address); our Contact follows the
            // new connection.
            let addrs = self
                .agent
                .hop_addrs(&self.hop)
                .await
                .map_err(RegisterError::Unreachable)?;
            if let Some(contact) = &mut self.stack.contact {
                contact.uri.host_with_port = addrs.contact.into();
            }
            self.stack.outbound_proxy = Some(addrs.peer);
        }
        let exchange = self.stack.register(self.request_uri.clone(), Some(expires));
        let response = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| RegisterError::NoAnswer(self.timeout))?
            .map_err(|e| RegisterError::Unreachable(e.to_string()))?;
        debug!(status = %response.status_code, expires, "REGISTER answered");
        if response.status_code.kind() == StatusCodeKind::Successful {
            return Ok(());
        }
        Err(RegisterError::Rejected {
            status: response.status_code.code(),
            reason: response.status_code.text().to_string(),
        })
    }
}

fn parse_uri(text: &str) -> Result<Uri, TargetError> {
    Uri::try_from(text).map_err(|_| TargetError::BadAddress(text.to_string()))
}
