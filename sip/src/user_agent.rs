//! The SIP endpoint: one UDP socket and one TCP listener on the same port,
//! rsipstack's transaction layer behind them, and the handling of requests
//! that arrive outside any dialog. TCP connections are accepted here, not by
//! rsipstack's listener, so that the gateway can refuse them (caps).

use std::net::{IpAddr, SocketAddr};

use std::time::Duration;
use tokio::net::UdpSocket;

use std::sync::Arc;

use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{Method, Request, SipMessage, StatusCode};
use rsipstack::transaction::endpoint::{EndpointInnerRef, EndpointOption, TransportEventInspector};
use rsipstack::transaction::{CallIdFormat, TransactionReceiver};
use rsipstack::transport::tcp::TcpConnection;
use rsipstack::transport::udp::UdpConnection;
use rsipstack::transport::{SipAddr, SipConnection, TransportEvent, TransportLayer};
use rsipstack::EndpointBuilder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::call::{needs_dialog, IncomingRoutes};
use crate::dialog_routes::DialogRoutes;
use crate::digest_names::DigestAlgorithmNames;
use crate::dns::Locator;
use crate::screening::{self, Refusal};
use crate::tls::{self, SipTlsConfig};

/// Decides whether a SIP-over-TCP connection from an address is taken;
/// what it returns is held while the connection lives (a place in a cap).
pub type TcpAdmission = Arc<dyn Fn(IpAddr) -> Option<Box<dyn Send>> + Send + Sync>;

/// How the SIP endpoint listens and presents itself.
#[derive(Clone)]
pub struct UserAgentConfig {
    /// UDP and TCP both bind this address; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Address written into Via and Contact when the listen address is not
    /// the one peers reach us at (NAT, or a wildcard listen address).
    pub public_ip: Option<IpAddr>,
    /// The User-Agent header.
    pub user_agent: String,
    /// RFC 3261 T1 (500 ms): transaction timeouts are 64 × T1.
    pub t1: Duration,
    /// How often an established call checks that the far end still holds
    /// the dialog.
    pub dialog_keepalive: Duration,
    /// INFO requests (DTMF digits) one call keeps waiting to go out, one
    /// transaction at a time; more are dropped.
    pub max_queued_infos: usize,
    /// A TCP connection (either direction) on which nothing arrives for
    /// this long is closed; must outlast a registration's refresh interval,
    /// since the registrar reaches us over the registration's connection.
    pub tcp_idle_timeout: Duration,
    /// Asked for every incoming TCP connection; a refused one is closed.
    pub admit_tcp: TcpAdmission,
    /// The SIP UDP socket's receive buffer, bytes (the kernel may grant
    /// less: `net.core.rmem_max`); a burst of calls must not overflow it.
    pub udp_receive_buffer: usize,
    /// Trust anchors and client identity for SIP over TLS.
    pub tls: SipTlsConfig,
    /// DNS servers (`ip:port`) for registrar and proxy names; the system's
    /// (/etc/resolv.conf) when empty.
    pub dns_servers: Vec<SocketAddr>,
    /// How long a request waits for any answer from one of a name's
    /// servers before trying the next (RFC 3263 failover); the last server
    /// gets the request's whole time.
    pub failover_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum UserAgentError {
    #[error("cannot bind SIP UDP+TCP on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("SIP TLS: {0}")]
    Tls(String),
    #[error("cannot set up DNS: {0}")]
    Dns(String),
}

/// Counters of what the SIP layer holds right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SipStats {
    pub transactions: usize,
    pub connections: usize,
    pub dialogs: usize,
}

/// The gateway's SIP user agent. Cheap to clone; the last clone dropped does
/// not stop it, [`UserAgent::shutdown`] does.
#[derive(Clone)]
pub struct UserAgent {
    pub(crate) endpoint: EndpointInnerRef,
    pub(crate) dialogs: Arc<DialogLayer>,
    pub(crate) dialog_routes: DialogRoutes,
    pub(crate) routes: IncomingRoutes,
    local_addr: SocketAddr,
    advertised_addr: SocketAddr,
    pub(crate) cancel: CancellationToken,
    pub(crate) tasks: TaskTracker,
    pub(crate) keepalive: Duration,
    pub(crate) max_queued_infos: usize,
    pub(crate) transaction_timeout: Duration,
    pub(crate) locator: Locator,
    pub(crate) failover_timeout: Duration,
}

/// Binding a port for UDP and then TCP can race with other programs; a few
/// tries with fresh ports make port 0 reliable.
const BIND_ATTEMPTS: usize = 16;

impl UserAgent {
    pub async fn start(config: UserAgentConfig) -> Result<UserAgent, UserAgentError> {
        let tls = tls::load(&config.tls).map_err(UserAgentError::Tls)?;
        let locator = Locator::new(&config.dns_servers, config.listen.is_ipv6())
            .map_err(UserAgentError::Dns)?;
        let cancel = CancellationToken::new();
        let (udp, tcp, local_addr) =
            bind_udp_and_tcp_port(config.listen, config.udp_receive_buffer, &cancel).await?;
        let advertised_addr = SocketAddr::new(
            config.public_ip.unwrap_or(local_addr.ip()),
            local_addr.port(),
        );
        let external = config.public_ip.map(|_| advertised_addr);

        let transport_layer = TransportLayer::new(cancel.child_token());
        transport_layer.set_stream_idle_timeout(config.tcp_idle_timeout);
        transport_layer.add_transport(udp.into());
        // Connections to TLS targets are opened by rsipstack when first used.
        transport_layer.set_tls_config(tls);
        // What rsipstack's own listener would name these connections' local end.
        let tcp_local = SipAddr {
            r#type: Some(rsipstack::sip::transport::Transport::Tcp),
            addr: external.unwrap_or(local_addr).into(),
        };

        let endpoint = EndpointBuilder::new()
            .with_user_agent(&config.user_agent)
            .with_inspector(Box::new(DigestAlgorithmNames))
            .with_transport_inspector(Box::new(MalformedRequests))
            .with_option(EndpointOption {
                t1: config.t1,
                t1x64: config.t1 * 64,
                // rsipstack would append its vendor's domain to every Call-ID.
                callid_format: CallIdFormat::Uuid,
                ..EndpointOption::default()
            })
            .with_transport_layer(transport_layer)
            .with_cancel_token(cancel.child_token())
            .build();
        let incoming = endpoint
            .incoming_transactions()
            .map_err(|e| UserAgentError::Bind {
                addr: local_addr,
                reason: e.to_string(),
            })?;
        let inner = endpoint.inner.clone();
        let tasks = TaskTracker::new();
        tasks.spawn(async move { endpoint.serve().await });
        let (dialog_routes, delivery) = DialogRoutes::new(cancel.child_token());
        tasks.spawn(delivery);
        let user_agent = UserAgent {
            dialogs: Arc::new(DialogLayer::new(inner.clone())),
            dialog_routes,
            routes: IncomingRoutes::default(),
            endpoint: inner,
            local_addr,
            advertised_addr,
            cancel,
            tasks,
            keepalive: config.dialog_keepalive,
            max_queued_infos: config.max_queued_infos,
            transaction_timeout: config.t1 * 64,
            locator,
            failover_timeout: config.failover_timeout,
        };
        user_agent
            .tasks
            .spawn(user_agent.clone().route_requests(incoming));
        user_agent.tasks.spawn(accept_tcp(
            tcp,
            user_agent.endpoint.clone(),
            tcp_local,
            config.admit_tcp.clone(),
            user_agent.cancel.clone(),
        ));
        info!(%local_addr, %advertised_addr, "SIP user agent listening on UDP and TCP");
        Ok(user_agent)
    }

    /// The address UDP and TCP are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address peers are told to send to (Contact, Via).
    pub fn advertised_addr(&self) -> SocketAddr {
        self.advertised_addr
    }

    pub fn stats(&self) -> SipStats {
        let endpoint_stats = self.endpoint.get_stats();
        SipStats {
            transactions: endpoint_stats.running_transactions,
            connections: self.endpoint.transport_layer.connections_count(),
            dialogs: self.dialogs.len(),
        }
    }

    /// Stops listening and waits for the endpoint's tasks to end.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// The SIP UDP socket, with the receive buffer asked for; what the kernel
/// granted is logged.
fn udp_socket(listen: SocketAddr, receive_buffer: usize) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if listen.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(error) = socket.set_recv_buffer_size(receive_buffer) {
        warn!(%error, receive_buffer, "cannot set the SIP UDP receive buffer");
    }
    match socket.recv_buffer_size() {
        Ok(granted) if granted < receive_buffer => warn!(
            asked = receive_buffer,
            granted, "SIP UDP receive buffer smaller than asked (raise net.core.rmem_max)"
        ),
        Ok(granted) => info!(granted, "SIP UDP receive buffer"),
        Err(error) => warn!(%error, "cannot read the SIP UDP receive buffer size"),
    }
    socket.set_nonblocking(true)?;
    socket.bind(&listen.into())?;
    UdpSocket::from_std(socket.into())
}

/// Connections the kernel completes before we accept them; std's 128
/// overflows under a burst (the kernel caps it at `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 4096;

fn listen_tcp(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// After a failed accept (out of descriptors, say), wait this long before
/// the next: retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts SIP-over-TCP connections that `admit` takes and hands them to
/// rsipstack, which reads them (and closes them when idle); each keeps its
/// admission until rsipstack retires it, which cancels its token.
async fn accept_tcp(
    listener: tokio::net::TcpListener,
    endpoint: EndpointInnerRef,
    local: SipAddr,
    admit: TcpAdmission,
    cancel: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    debug!(%error, "SIP TCP accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = cancel.cancelled() => return,
        };
        let Some(admission) = admit(peer.ip()) else {
            continue;
        };
        let token = cancel.child_token();
        let connection =
            match TcpConnection::from_stream(stream, local.clone(), Some(token.clone())) {
                Ok(connection) => connection,
                Err(error) => {
                    debug!(%error, %peer, "SIP TCP connection unusable");
                    continue;
                }
            };
        endpoint
            .transport_layer
            .add_connection(SipConnection::Tcp(connection));
        tokio::spawn(async move {
            token.cancelled().await;
            drop(admission);
        });
    }
}

async fn bind_udp_and_tcp_port(
    listen: SocketAddr,
    receive_buffer: usize,
    cancel: &CancellationToken,
) -> Result<(UdpConnection, tokio::net::TcpListener, SocketAddr), UserAgentError> {
    let mut last_error = String::new();
    let attempts = if listen.port() == 0 { BIND_ATTEMPTS } else { 1 };
    for _ in 0..attempts {
        let socket = match udp_socket(listen, receive_buffer) {
            Ok(socket) => Arc::new(socket),
            Err(e) => {
                last_error = e.to_string();
                continue;
            }
        };
        let udp = match UdpConnection::from_socket(socket, None, Some(cancel.child_token())).await {
            Ok(udp) => udp,
            Err(e) => {
                last_error = e.to_string();
                continue;
            }
        };
        let bound = match udp.get_addr().get_socketaddr() {
            Ok(addr) => SocketAddr::new(listen.ip(), addr.port()),
            Err(e) => {
                last_error = e.to_string();
                continue;
            }
        };
        match listen_tcp(bound) {
            Ok(tcp) => return Ok((udp, tcp, bound)),
            Err(e) => last_error = e.to_string(),
        }
    }
    Err(UserAgentError::Bind {
        addr: listen,
        reason: last_error,
    })
}

impl UserAgent {
    /// Every request that is not a response to ours: in-dialog requests go
    /// to their dialog, initial INVITEs to the session whose Contact they
    /// name, OPTIONS pings are answered, the rest refused so the sender does
    /// not retransmit.
    async fn route_requests(self, mut incoming: TransactionReceiver) {
        loop {
            let mut transaction = tokio::select! {
                _ = self.cancel.cancelled() => return,
                next = incoming.recv() => match next {
                    Some(transaction) => transaction,
                    None => return,
                },
            };
            if let Some(mut dialog) = self.dialogs.match_dialog(&transaction) {
                let method = transaction.original.method;
                tokio::spawn(async move {
                    if waits_for_confirmation(method) {
                        until_confirmed(&dialog).await;
                    }
                    if let Err(error) = dialog.handle(&mut transaction).await {
                        debug!(%error, "in-dialog request ended with an error");
                    }
                });
                continue;
            }
            let method = transaction.original.method;
            let refusal = match method {
                Method::Ack => continue,
                Method::Options => Refusal::new(StatusCode::OK),
                Method::Invite if has_to_tag(&transaction.original) => {
                    Refusal::new(StatusCode::CallTransactionDoesNotExist)
                }
                Method::Invite => {
                    let user = request_user(&transaction.original);
                    match self.routes.sender_for(&user) {
                        Some(route) => match screening::unanswerable_offer(&transaction.original) {
                            Some(refusal) => refusal,
                            None => {
                                self.take_incoming(transaction, user, route);
                                continue;
                            }
                        },
                        None => Refusal::new(StatusCode::NotFound),
                    }
                }
                method if needs_dialog(method) => {
                    Refusal::new(StatusCode::CallTransactionDoesNotExist)
                }
                _ => Refusal::method_not_allowed(),
            };
            debug!(%method, status = %refusal.status, "answering request outside any dialog");
            if let Err(error) = transaction
                .reply_with(refusal.status, refusal.headers, None)
                .await
            {
                warn!(%method, %error, "could not answer SIP request");
            }
        }
    }
}

/// Whether a request in a dialog must wait for the ACK of the dialog's
/// initial 2xx. rsipstack takes any request other than these, in a dialog
/// that is not Confirmed, for the initial INVITE (and never answers it) or
/// ignores it: a re-INVITE sent right behind the ACK (Asterisk does that
/// when it bridges two calls) went unanswered, 3 to 7 times in 10. The ACK
/// and the request are handled in tasks of their own, so they may reach the
/// dialog out of order; holding the request back until the ACK is in
/// restores the order they arrived in.
fn waits_for_confirmation(method: Method) -> bool {
    !matches!(
        method,
        Method::Ack | Method::Bye | Method::Cancel | Method::PRack
    )
}

/// How long a request waits for its dialog: the far end retransmits
/// until 64 × T1 anyway.
const CONFIRMATION_WAIT: Duration = Duration::from_secs(32);
/// rsipstack offers no notification of a dialog's state changes to code
/// outside the dialog; the wait polls, and only in this rare case.
const CONFIRMATION_POLL: Duration = Duration::from_millis(2);

/// Waits while `dialog` waits for the ACK of its initial 2xx, at most
/// [`CONFIRMATION_WAIT`].
async fn until_confirmed(dialog: &rsipstack::dialog::dialog::Dialog) {
    let deadline = tokio::time::Instant::now() + CONFIRMATION_WAIT;
    loop {
        let state = dialog.state();
        if !state.waiting_ack() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            debug!(%state, "dialog not confirmed in time; the request goes on anyway");
            return;
        }
        tokio::time::sleep(CONFIRMATION_POLL).await;
    }
}

/// Answers requests the transaction layer cannot take (another SIP
/// version, a mandatory header missing) before it drops them unanswered.
struct MalformedRequests;

#[async_trait::async_trait]
impl TransportEventInspector for MalformedRequests {
    async fn handle(&self, event: TransportEvent) -> Option<TransportEvent> {
        let TransportEvent::Incoming(SipMessage::Request(request), connection, from) = &event
        else {
            return Some(event);
        };
        let Some(refusal) = screening::malformed(request) else {
            return Some(event);
        };
        // Not worth more than debug: a flood of them would fill the log.
        debug!(%from, status = %refusal.status, reason = ?refusal.reason, "refusing a malformed request");
        let response = refusal.response_to(request);
        if let Err(error) = connection.send(response.into(), Some(from)).await {
            debug!(%from, %error, "could not answer a malformed request");
        }
        None
    }
}

fn request_user(request: &Request) -> String {
    request
        .uri
        .auth
        .as_ref()
        .map(|auth| auth.user.clone())
        .unwrap_or_default()
}

fn has_to_tag(request: &Request) -> bool {
    request
        .to_header()
        .ok()
        .and_then(|to| to.tag().ok().flatten())
        .is_some()
}
