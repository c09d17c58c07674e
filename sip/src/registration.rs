//! Registering a web user's SIP account (RFC 3261 section 10): the first
//! REGISTER with digest authentication, refreshes before expiry, and the
//! unregistration (Expires: 0) when the user leaves.

use std::time::Duration;

use rsipstack::dialog::authenticate::Credential;
use rsipstack::dialog::registration::Registration as StackRegistration;
use rsipstack::sip::typed::Contact;
use rsipstack::sip::{Auth, HostWithPort, Param, Response, Scheme, StatusCodeKind, Transport, Uri};
use tracing::{debug, info};

use crate::dns::Locator;
use crate::grammar::{self, GrammarError};
use crate::locate::{Destination, Failover, Failure};
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
    // Boxed: a session's task holds several registrations in its state
    // (issue 15, memory per call), and rsipstack's is 500 bytes.
    stack: Box<StackRegistration>,
    agent: UserAgent,
    /// Located again for every REGISTER (the DNS cache keeps answers for
    /// their TTL), so a refresh follows DNS and fails over like the first.
    registrar: SipTarget,
    /// The Request-URI's host: the AOR domain.
    domain: String,
    locator: Locator,
    failover_timeout: Duration,
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
        let domain = if account.domain.is_empty() {
            registrar.host_port()
        } else {
            account.domain.clone()
        };
        // Checked now: a domain that makes no URI is the configuration's fault.
        parse_uri(&format!("sip:{domain}"))?;
        let contact = Contact {
            display_name: None,
            uri: Uri {
                scheme: Some(Scheme::Sip),
                auth: Some(Auth {
                    user: account.contact_user.clone(),
                    password: None,
                }),
                host_with_port: HostWithPort::from(self.advertised_addr()),
                // The transport parameter follows the destination of each REGISTER.
                params: vec![],
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
        let mut registration = Registration {
            stack: Box::new(stack),
            agent: self.clone(),
            registrar: registrar.clone(),
            domain,
            locator: self.locator.clone(),
            failover_timeout: self.failover_timeout,
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

    /// One REGISTER, to the registrar's destinations in turn until one
    /// answers (RFC 3263 failover), all within the timeout.
    async fn send(&mut self, expires: u32) -> Result<(), RegisterError> {
        tokio::time::timeout(self.timeout, self.send_with_failover(expires))
            .await
            .map_err(|_| RegisterError::NoAnswer(self.timeout))?
    }

    async fn send_with_failover(&mut self, expires: u32) -> Result<(), RegisterError> {
        let destinations = match self.registrar.is_tls() {
            true => vec![self.tls_destination().await?],
            false => self.locator.locate(&self.registrar).await?,
        };
        let Some(mut failover) = Failover::new(destinations) else {
            return Err(RegisterError::Unreachable(format!(
                "no address for {}",
                self.registrar
            )));
        };
        loop {
            let destination = *failover.current();
            let patience = failover.patience(self.failover_timeout);
            let (failure, error) = match self.exchange(destination, expires, patience).await? {
                Ok(response) if response.status_code.kind() == StatusCodeKind::Successful => {
                    debug!(status = %response.status_code, expires, to = %destination.addr, "REGISTER answered");
                    return Ok(());
                }
                Ok(response) => {
                    debug!(status = %response.status_code, expires, to = %destination.addr, "REGISTER answered");
                    let status = response.status_code.code();
                    (
                        Failure::Status(status),
                        RegisterError::Rejected {
                            status,
                            reason: response.status_code.text().to_string(),
                        },
                    )
                }
                Err((failure, reason)) => (failure, RegisterError::Unreachable(reason)),
            };
            if failover.next_after(failure).is_none() {
                return Err(error);
            }
            info!(from = %destination.addr, ?failure, next = %failover.current().addr, "REGISTER fails over to the registrar's next address");
        }
    }

    /// A TLS registrar, as written: the connection to it is opened again
    /// if it was closed, its certificate checked against the registrar's
    /// name (rsipstack would check it against the address), and our
    /// Contact names our end of it, the only way back to us.
    async fn tls_destination(&mut self) -> Result<Destination, RegisterError> {
        let hop = self.agent.next_hop(&self.registrar);
        let addrs = self
            .agent
            .hop_addrs(&hop)
            .await
            .map_err(RegisterError::Unreachable)?;
        if let Some(contact) = &mut self.stack.contact {
            contact.uri.host_with_port = addrs.contact.into();
        }
        Ok(Destination {
            addr: addrs.peer,
            transport: TransportKind::Tls,
        })
    }

    /// The REGISTER exchange (challenge included) with one destination;
    /// `patience` bounds it when others are left to try.
    async fn exchange(
        &mut self,
        to: Destination,
        expires: u32,
        patience: Option<Duration>,
    ) -> Result<Result<Response, (Failure, String)>, RegisterError> {
        let request_uri = parse_uri(&format!(
            "sip:{};transport={}",
            self.domain,
            to.transport.as_str()
        ))?;
        if let Some(contact) = self.stack.contact.as_mut() {
            contact
                .uri
                .params
                .retain(|param| !matches!(param, Param::Transport(_)));
            match to.transport {
                TransportKind::Udp => {}
                TransportKind::Tcp => contact.uri.params.push(Param::Transport(Transport::Tcp)),
                TransportKind::Tls => contact.uri.params.push(Param::Transport(Transport::Tls)),
            }
        }
        self.stack.outbound_proxy = Some(to.addr);
        let exchange = self.stack.register(request_uri, Some(expires));
        let outcome = match patience {
            Some(patience) => match tokio::time::timeout(patience, exchange).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    return Ok(Err((
                        Failure::Timeout,
                        format!("no answer from {} within {patience:?}", to.addr),
                    )))
                }
            },
            None => exchange.await,
        };
        // rsipstack reports a transport error and a transaction timeout alike.
        Ok(outcome.map_err(|error| (Failure::Unreachable, error.to_string())))
    }
}

fn parse_uri(text: &str) -> Result<Uri, TargetError> {
    Uri::try_from(text).map_err(|_| TargetError::BadAddress(text.to_string()))
}
