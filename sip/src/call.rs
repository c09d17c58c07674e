//! Calls: one INVITE dialog each, outgoing (we send the INVITE) or incoming
//! (an INVITE arrives for a registered Contact). A driver task per call turns
//! rsipstack's dialog states into [`CallEvent`]s and carries out
//! [`CallControl`] commands, and answers what the far end asks inside the
//! dialog (re-INVITE, UPDATE, OPTIONS, INFO) without involving the caller.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use rsipstack::dialog::authenticate::Credential;
use rsipstack::dialog::dialog::{DialogState, TerminatedReason, TransactionHandle};
use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::dialog::invitation::{InviteAsyncResult, InviteOption};
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::sip::headers::untyped::ContentType;
use rsipstack::sip::{Header, Headers, Method, Request, Response, StatusCode, StatusCodeKind, Uri};
use rsipstack::transaction::key::TransactionRole;
use rsipstack::transport::SipAddr;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::dialog_routes::{DialogRoutes, DialogStates};
use crate::grammar::{self, GrammarError};
use crate::locate::{Destination, Failover, Failure};
use crate::negotiation::{MediaChanges, NegotiatedMedia, Negotiation};
use crate::peer_numbers::{self, Refresher};
use crate::refer::{self, ReferTarget};
use crate::screening::{self, Refusal};
use crate::sdp::{self, Direction, LocalAudio};
use crate::target::{SipTarget, TargetError, TransportKind};
use crate::user_agent::UserAgent;

/// What the gateway asks for when it places a call.
#[derive(Debug, Clone)]
pub struct OutgoingCall {
    /// From: `sip:from_user@from_domain`.
    pub from_user: String,
    /// From's display name; checked by the caller to hold no `"`, `\` or
    /// control characters (it goes into the header as it is).
    pub from_display_name: Option<String>,
    pub from_domain: String,
    /// Send `P-Asserted-Identity` (RFC 3325) with the From identity: for a
    /// trunk that trusts the gateway to have authenticated its users.
    pub asserted_identity: bool,
    /// The Request-URI, e.g. `sip:3000@pbx.example.com`.
    pub target: String,
    /// Where the INVITE is sent (registrar / proxy / trunk); the target's
    /// own host when `None`.
    pub proxy: Option<SipTarget>,
    /// Digest credentials for a 401 / 407: user name and password.
    pub credential: Option<(String, String)>,
    /// The user part of our Contact (routes in-dialog requests back).
    pub contact_user: String,
    pub offer: LocalAudio,
    /// Following a far end's REFER: the `Replaces` of an attended transfer
    /// (RFC 3891) and the `Referred-By` (RFC 3892) it named.
    pub replaces: Option<String>,
    pub referred_by: Option<String>,
}

/// What happens to a call, in order; the last event is `Failed` or `Ended`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEvent {
    /// A provisional response to our INVITE: 100, 180, 183 (with early SDP).
    Progress {
        status: u16,
        sdp: Option<String>,
        /// Early media: the far end's SDP in the response, read as the
        /// answer to our offer; the 2xx's answer takes over.
        media: Option<NegotiatedMedia>,
    },
    /// Outgoing: 2xx received and ACKed. Incoming: our 2xx was ACKed.
    Established {
        /// What was negotiated; `None` when no usable SDP was exchanged
        /// (an answer without SDP or with nothing we offered, an incoming
        /// INVITE without an offer).
        media: Option<NegotiatedMedia>,
        /// The far end's SDP: the 2xx's answer (outgoing) or the INVITE's
        /// offer (incoming).
        sdp: Option<String>,
    },
    /// The far end changed the media (re-INVITE / UPDATE with SDP), already
    /// answered with `media`; only sent when something did change.
    MediaChanged {
        media: NegotiatedMedia,
        changes: MediaChanges,
        /// The far end's offer.
        sdp: String,
    },
    /// An in-dialog INFO (DTMF relay arrives this way), already answered.
    Info { content_type: String, body: String },
    /// The call never started.
    Failed { status: u16, reason: String },
    /// Our re-INVITE changing our direction (hold, resume) was answered;
    /// `media` is what the answer agreed.
    DirectionChanged {
        direction: Direction,
        media: NegotiatedMedia,
    },
    /// Our re-INVITE was refused or went unanswered; the media stays as it
    /// was.
    DirectionRefused {
        direction: Direction,
        status: Option<u16>,
        reason: String,
    },
    /// How a transfer we asked for (REFER) goes: the REFER's own final
    /// response (202: the far end will try), then the status lines of the
    /// far end's NOTIFY sipfrag bodies (100, 180, 200, a failure).
    TransferProgress {
        status: u16,
        reason: String,
        /// From a NOTIFY (how the far end's new call goes), not the REFER's
        /// own response.
        notified: bool,
    },
    /// The far end asks us to call `target` instead of it (REFER); answer
    /// with [`CallControl::answer_refer`], then report how the new call goes
    /// with [`CallControl::notify_refer`].
    Referred {
        target: ReferTarget,
        referred_by: Option<String>,
    },
    /// The call ended.
    Ended { reason: EndReason },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// We hung up (BYE, or CANCEL before an answer, or our rejection).
    Local,
    /// The far end sent BYE.
    Remote,
    /// The caller cancelled an incoming call before it was answered.
    CallerCancelled,
    /// A transaction in the dialog timed out: the far end is gone.
    Timeout,
}

#[derive(Debug)]
enum CallCommand {
    Ring,
    Accept(LocalAudio),
    Reject(u16),
    Hangup,
    Info {
        content_type: String,
        body: String,
    },
    /// A re-INVITE with our media in this direction: `sendonly` or
    /// `inactive` holds the far end, `sendrecv` resumes.
    Direction(Direction),
    /// REFER the far end with this Refer-To value.
    Transfer(String),
    /// The far end's REFER: 202 and a first NOTIFY, or 603.
    AnswerRefer(bool),
    /// A NOTIFY about the call a far end's REFER made us place; `last`
    /// ends the subscription.
    NotifyRefer {
        status: u16,
        reason: String,
        last: bool,
    },
}

/// Steers one call. Dropping every clone hangs the call up. Commands
/// travel boxed, as [`CallEvents`] do.
#[derive(Debug, Clone)]
pub struct CallControl(mpsc::UnboundedSender<Box<CallCommand>>);

impl CallControl {
    fn send(&self, command: CallCommand) {
        // A send fails only once the driver has ended, and the call with
        // it: nothing is left to steer.
        let _ = self.0.send(Box::new(command));
    }

    /// Ends the call however far it got: CANCEL, BYE, or (incoming, not yet
    /// answered) 480.
    pub fn hangup(&self) {
        self.send(CallCommand::Hangup);
    }

    /// Incoming: 180 Ringing.
    pub fn ring(&self) {
        self.send(CallCommand::Ring);
    }

    /// Incoming: 200 OK with this answer.
    pub fn accept(&self, answer: LocalAudio) {
        self.send(CallCommand::Accept(answer));
    }

    /// Incoming: a final error response (486, 603, 480, ...).
    pub fn reject(&self, status: u16) {
        self.send(CallCommand::Reject(status));
    }

    /// An in-dialog INFO (DTMF relay), once the call is established.
    /// Re-INVITEs the far end with our media in `direction` (hold with
    /// `sendonly` or `inactive`, resume with `sendrecv`); answered with
    /// [`CallEvent::DirectionChanged`] or [`CallEvent::DirectionRefused`].
    /// A glare (491) is retried after the RFC 3261 back-off.
    pub fn set_direction(&self, direction: Direction) {
        self.send(CallCommand::Direction(direction));
    }

    /// Asks the far end to call someone else instead (REFER, RFC 3515):
    /// `refer_to` is `<uri>`, or what [`Call::replacing_refer_to`] made for
    /// an attended transfer; its progress comes as
    /// [`CallEvent::TransferProgress`].
    pub fn transfer(&self, refer_to: String) {
        self.send(CallCommand::Transfer(refer_to));
    }

    /// Answers the far end's REFER ([`CallEvent::Referred`]): `true` sends
    /// 202 and a NOTIFY `100 Trying`, `false` 603 Decline.
    pub fn answer_refer(&self, accept: bool) {
        self.send(CallCommand::AnswerRefer(accept));
    }

    /// Tells the far end that referred us how its new call goes (a NOTIFY
    /// with a sipfrag); `last` for the final status.
    pub fn notify_refer(&self, status: u16, reason: &str, last: bool) {
        self.send(CallCommand::NotifyRefer {
            status,
            reason: reason.to_string(),
            last,
        });
    }

    pub fn send_info(&self, content_type: &str, body: String) {
        self.send(CallCommand::Info {
            content_type: content_type.to_string(),
            body,
        });
    }
}

/// A call's control and its events. The call's driver outlives this: once
/// every [`CallControl`] is dropped it hangs up (CANCEL, BYE, or 480 /
/// a BYE after the ACK for an incoming call) and keeps running until the
/// dialog has ended, then removes it, so a caller may drop the call as soon
/// as it asked to hang up.
pub struct Call {
    pub control: CallControl,
    pub events: CallEvents,
    dialog: InviteDialog,
}

/// A call's events as they come. Each travels boxed: a channel allocates
/// 32 slots of its message type at once, and an event is about 160 bytes,
/// so unboxed they would take 5 KB of every call's memory.
pub struct CallEvents(mpsc::UnboundedReceiver<Box<CallEvent>>);

impl CallEvents {
    /// The next event; `None` once the last has been read.
    pub async fn recv(&mut self) -> Option<CallEvent> {
        self.0.recv().await.map(|event| *event)
    }
}

impl Call {
    /// The Refer-To that has another far end call this one's far end in
    /// its place (RFC 5589 section 7): its Contact, and a Replaces naming
    /// this dialog. `None` until the dialog is confirmed.
    pub fn replacing_refer_to(&self) -> Option<String> {
        if !self.dialog.state().is_confirmed() {
            return None;
        }
        let id = self.dialog.id();
        let contact = self.dialog.as_subscription().remote_contact()?;
        Some(refer::refer_to_replacing(
            &contact.to_string(),
            &id.call_id,
            &id.local_tag,
            &id.remote_tag,
        ))
    }
}

/// An INVITE that arrived for one of our Contacts.
pub struct IncomingCall {
    /// The caller's From URI.
    pub caller: String,
    /// The display name of its From header, if any.
    pub caller_name: Option<String>,
    /// The user part of the Request-URI: the Contact it was sent to.
    pub contact_user: String,
    /// The caller's SDP offer (an INVITE without one gets our offer in the
    /// 200 and the answer in the ACK).
    pub offer: Option<String>,
    /// Where the INVITE came from, as the transport saw it (the top Via
    /// with its `received` / `rport`); `None` when that is not an address.
    pub source: Option<std::net::SocketAddr>,
    pub call: Call,
}

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("invalid target {0:?}")]
    BadTarget(String),
    #[error("the caller's user name {0}")]
    BadUser(#[from] GrammarError),
    #[error(transparent)]
    Unresolved(#[from] TargetError),
    #[error("cannot start the INVITE: {0}")]
    Stack(String),
}

/// Where incoming INVITEs go, by the user part of the Contact they name.
#[derive(Default, Clone)]
pub(crate) struct IncomingRoutes(
    Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Box<IncomingCall>>>>>,
);

impl IncomingRoutes {
    pub(crate) fn sender_for(
        &self,
        contact_user: &str,
    ) -> Option<mpsc::UnboundedSender<Box<IncomingCall>>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(contact_user)
            .cloned()
    }

    fn insert(&self, contact_user: String, sender: mpsc::UnboundedSender<Box<IncomingCall>>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(contact_user, sender);
    }

    fn remove(&self, contact_user: &str) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(contact_user);
    }
}

/// Incoming calls for one Contact; the route goes when this is dropped.
pub struct IncomingCalls {
    routes: IncomingRoutes,
    contact_user: String,
    // Boxed, as call events are: 150 bytes in 32 slots a route otherwise.
    receiver: mpsc::UnboundedReceiver<Box<IncomingCall>>,
}

impl IncomingCalls {
    pub async fn next(&mut self) -> Option<IncomingCall> {
        self.receiver.recv().await.map(|call| *call)
    }
}

impl Drop for IncomingCalls {
    fn drop(&mut self) {
        self.routes.remove(&self.contact_user);
    }
}

impl UserAgent {
    /// Sends an INVITE; the events say how it goes.
    pub async fn dial(&self, request: OutgoingCall) -> Result<Call, DialError> {
        // The gateway checks first; a user name that reaches a header
        // unchecked is how headers get injected.
        grammar::check_user(&request.from_user)?;
        let callee = Uri::try_from(request.target.as_str())
            .map_err(|_| DialError::BadTarget(request.target.clone()))?;
        let caller_text = format!("sip:{}@{}", request.from_user, request.from_domain);
        let asserted = request.asserted_identity.then(|| {
            let name = request
                .from_display_name
                .as_deref()
                .map(|name| format!("\"{name}\" "))
                .unwrap_or_default();
            Header::Other(
                "P-Asserted-Identity".to_string(),
                format!("{name}<{caller_text}>"),
            )
        });
        let mut headers: Vec<Header> = asserted.into_iter().collect();
        if let Some(replaces) = request.replaces {
            headers.push(Header::Other("Replaces".to_string(), replaces));
        }
        if let Some(referred_by) = request.referred_by {
            headers.push(Header::ReferredBy(referred_by.into()));
        }
        let caller =
            Uri::try_from(caller_text.as_str()).map_err(|_| DialError::BadTarget(caller_text))?;
        // Where the INVITE may go: a TLS proxy as written (its certificate
        // is checked against that name, and our Contact names our end of
        // the connection), others in RFC 3263 order; without a proxy, the
        // Request-URI's own host (left to rsipstack).
        let (destinations, tls_hop) = match &request.proxy {
            Some(proxy) if proxy.is_tls() => {
                let hop = self.next_hop(proxy);
                let contact = self
                    .hop_addrs(&hop)
                    .await
                    .map_err(DialError::Stack)?
                    .contact;
                (vec![], Some((hop, contact)))
            }
            Some(proxy) => (self.locator.locate(proxy).await?, None),
            None => (vec![], None),
        };
        let contact = match &tls_hop {
            Some((_, contact)) => {
                self.contact_uri(&request.contact_user, TransportKind::Tls, *contact)?
            }
            None => self.contact_uri(
                &request.contact_user,
                TransportKind::Udp,
                self.advertised_addr(),
            )?,
        };
        let template = InviteOption {
            caller_display_name: request.from_display_name,
            // A far end that requires reliable provisional responses (100rel)
            // gets its PRACK from the stack.
            support_prack: true,
            headers: (!headers.is_empty()).then_some(headers),
            caller,
            callee,
            destination: tls_hop.map(|(hop, _)| hop),
            content_type: Some("application/sdp".to_string()),
            offer: Some(request.offer.render().into_bytes()),
            contact,
            credential: request.credential.map(|(username, password)| Credential {
                username,
                password,
                realm: None,
                auth_username: None,
            }),
            ..Default::default()
        };
        // rsipstack sends a CANCEL by its Request-URI's host unless a Route
        // names the next hop; for a proxy found in DNS that host is the
        // domain, not the server the INVITE went to. A preloaded Route to
        // that server (RFC 3261 section 8.1.2) keeps the CANCEL with it.
        let located_by_dns = request
            .proxy
            .as_ref()
            .is_some_and(|proxy| proxy.host.parse::<std::net::IpAddr>().is_err());
        let mut options = Vec::with_capacity(destinations.len());
        for destination in &destinations {
            let route_set = match located_by_dns {
                true => vec![route_to(*destination)?],
                false => vec![],
            };
            options.push(InviteOption {
                destination: Some(SipAddr {
                    r#type: Some(destination.transport.into()),
                    addr: destination.addr.into(),
                }),
                contact: self.contact_uri(
                    &request.contact_user,
                    destination.transport,
                    self.advertised_addr(),
                )?,
                route_set,
                ..template.clone()
            });
        }
        if options.is_empty() {
            options.push(template);
        }
        let failover = Failover::new(options)
            .ok_or_else(|| DialError::Stack("no destination for the INVITE".to_string()))?;
        let ((dialog, invite), states) = self
            .dialog_routes
            .open(
                |states| {
                    self.dialogs
                        .do_invite_async(failover.current().clone(), states)
                        .map_err(|e| e.to_string())
                },
                |(dialog, _)| dialog.id(),
            )
            .map_err(DialError::Stack)?;
        let attempts = (!failover.is_last()).then(|| Attempts {
            deadline: failover
                .patience(self.failover_timeout)
                .map(|patience| Instant::now() + patience),
            failover,
            patience: self.failover_timeout,
            ringing: false,
        });
        let negotiation = Negotiation::offered(request.offer);
        Ok(self.drive(dialog, states, Some(invite), Some(negotiation), attempts))
    }

    /// Routes INVITEs whose Request-URI user is `contact_user` to the
    /// returned stream, until it is dropped.
    pub fn incoming_calls(&self, contact_user: &str) -> IncomingCalls {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.routes.insert(contact_user.to_string(), sender);
        IncomingCalls {
            routes: self.routes.clone(),
            contact_user: contact_user.to_string(),
            receiver,
        }
    }

    /// Accepts an initial INVITE whose route is known: the call's driver
    /// starts, and the caller's side gets the [`IncomingCall`].
    pub(crate) fn take_incoming(
        &self,
        mut transaction: rsipstack::transaction::transaction::Transaction,
        contact_user: String,
        route: mpsc::UnboundedSender<Box<IncomingCall>>,
    ) {
        let request = transaction.original.clone();
        let (transport, contact_addr) = match &transaction.connection {
            Some(connection) if connection.transport() == rsipstack::sip::Transport::Tls => (
                TransportKind::Tls,
                // Our end of the connection it came over: we do not
                // listen for TLS, so in-dialog requests must use it too.
                self.contact_over(connection.get_addr())
                    .unwrap_or(self.advertised_addr()),
            ),
            Some(connection) if connection.transport() == rsipstack::sip::Transport::Tcp => {
                (TransportKind::Tcp, self.advertised_addr())
            }
            _ => (TransportKind::Udp, self.advertised_addr()),
        };
        let contact = match self.contact_uri(&contact_user, transport, contact_addr) {
            Ok(contact) => contact,
            Err(error) => {
                warn!(%error, "cannot build a Contact for an incoming call");
                return;
            }
        };
        let opened = self.dialog_routes.open(
            |states| {
                self.dialogs
                    .get_or_create_server_invite(&transaction, states, None, Some(contact))
                    .map_err(|e| e.to_string())
            },
            InviteDialog::id,
        );
        let (dialog, states) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                warn!(%error, "cannot create a dialog for an incoming INVITE");
                tokio::spawn(async move {
                    let _ = transaction.reply(StatusCode::ServerInternalError).await;
                });
                return;
            }
        };
        let mut handler = dialog.clone();
        tokio::spawn(async move {
            if let Err(error) = handler.handle(&mut transaction).await {
                debug!(%error, "incoming INVITE transaction ended with an error");
            }
        });
        // Our SDP comes with the answer, when the gateway accepts.
        let call = self.drive(dialog, states, None, None, None);
        let offer =
            (!request.body.is_empty()).then(|| String::from_utf8_lossy(&request.body).into_owned());
        let caller = from_uri(&request);
        let caller_name = from_display_name(&request);
        let source = request_source(&request);
        info!(%caller, %contact_user, ?source, "incoming call");
        if route
            .send(Box::new(IncomingCall {
                caller,
                caller_name,
                contact_user,
                offer,
                source,
                call,
            }))
            .is_err()
        {
            debug!("the session went away as the call arrived");
        }
    }

    fn contact_uri(
        &self,
        user: &str,
        transport: TransportKind,
        addr: std::net::SocketAddr,
    ) -> Result<Uri, DialError> {
        let transport = match transport {
            TransportKind::Udp => "",
            TransportKind::Tcp => ";transport=tcp",
            TransportKind::Tls => ";transport=tls",
        };
        let text = format!("sip:{user}@{addr}{transport}");
        Uri::try_from(text.as_str()).map_err(|_| DialError::BadTarget(text))
    }

    fn drive(
        &self,
        dialog: InviteDialog,
        states: DialogStates,
        invite: Option<JoinHandle<InviteAsyncResult>>,
        negotiation: Option<Negotiation>,
        attempts: Option<Attempts>,
    ) -> Call {
        let (command_sender, commands) = mpsc::unbounded_channel();
        let (event_sender, events) = mpsc::unbounded_channel();
        let (done_sender, done) = mpsc::unbounded_channel();
        let driver = Driver {
            dialogs: self.dialogs.clone(),
            dialog_routes: self.dialog_routes.clone(),
            stack_stopped: self.cancel.child_token(),
            role: dialog.role(),
            dialog,
            events: event_sender,
            negotiation,
            established: false,
            keepalive: self.keepalive,
            next_probe: None,
            transaction_timeout: self.transaction_timeout,
            hung_up_at: None,
            session_interval: None,
            session_expiry: None,
            done: done_sender,
            infos: VecDeque::new(),
            max_queued_infos: self.max_queued_infos,
            info_in_flight: None,
            reinvite_in_flight: None,
            next_direction: None,
            hangup_in_flight: false,
            hangup_after_ack: false,
            pending_refer: None,
            refer_notifies: VecDeque::new(),
            refer_notify_in_flight: false,
            hangup_after_notifies: false,
            refer_answer_out: false,
            attempts,
        };
        let call_dialog = driver.dialog.clone();
        self.tasks.spawn(driver.run(states, commands, done, invite));
        Call {
            control: CallControl(command_sender),
            events: CallEvents(events),
            dialog: call_dialog,
        }
    }
}

/// The status line a REFER's NOTIFY reports (RFC 3515: `Event: refer`, a
/// `message/sipfrag` body starting `SIP/2.0 200 OK`).
fn refer_progress(request: &Request) -> Option<(u16, String)> {
    let is_refer = request.headers.iter().any(|header| {
        matches!(header, rsipstack::sip::Header::Event(event)
            if event.value().trim().to_ascii_lowercase().starts_with("refer"))
    });
    if !is_refer {
        return None;
    }
    refer::sipfrag_status(&String::from_utf8_lossy(&request.body))
}

/// The Refer-To of a far end's REFER, and its Referred-By.
fn referral(request: &Request) -> Option<(ReferTarget, Option<String>)> {
    let mut refer_to = None;
    let mut referred_by = None;
    for header in request.headers.iter() {
        match header {
            Header::ReferTo(value) => refer_to = Some(value.value().to_string()),
            Header::ReferredBy(value) => referred_by = Some(value.value().to_string()),
            _ => {}
        }
    }
    let target = refer::parse_refer_to(&refer_to?)?;
    let referred_by =
        referred_by.filter(|value| value.len() <= 256 && !value.chars().any(char::is_control));
    Some((target, referred_by))
}

fn from_display_name(request: &Request) -> Option<String> {
    use rsipstack::sip::headers::untyped::ToTypedHeader;
    use rsipstack::sip::prelude::HeadersExt;
    let from = request.from_header().ok()?.typed().ok()?;
    from.display_name.filter(|name| !name.is_empty())
}

fn from_uri(request: &Request) -> String {
    use rsipstack::sip::prelude::HeadersExt;
    request
        .from_header()
        .ok()
        .and_then(|from| from.uri().ok())
        .map(|uri| uri.to_string())
        .unwrap_or_default()
}

struct Driver {
    dialogs: Arc<DialogLayer>,
    dialog_routes: DialogRoutes,
    /// Cancelled when the user agent shuts down: no message can come or go
    /// any more, so the driver ends instead of waiting for one.
    stack_stopped: CancellationToken,
    dialog: InviteDialog,
    role: TransactionRole,
    events: mpsc::UnboundedSender<Box<CallEvent>>,
    /// Offer/answer: set by our offer (outgoing) or our answer (incoming,
    /// once accepted).
    negotiation: Option<Negotiation>,
    established: bool,
    /// How often an established call asks the far end whether the dialog
    /// still exists (in-dialog OPTIONS).
    keepalive: Duration,
    /// When the next in-dialog OPTIONS goes out (established calls only).
    next_probe: Option<Instant>,
    /// 64 × T1: how long a CANCELled INVITE may wait for its final response
    /// before we stop waiting (RFC 3261 section 9.1).
    transaction_timeout: Duration,
    /// When we asked to end a call not yet established.
    hung_up_at: Option<Instant>,
    /// RFC 4028 session interval, when the far end is the refresher.
    session_interval: Option<Duration>,
    session_expiry: Option<Instant>,
    /// SIP transactions (INFO, BYE / CANCEL, our responses) run in tasks of
    /// their own, never awaited inside the loop; their outcomes come back
    /// to the loop through this channel.
    /// Boxed for the channel's sake, as [`CallEvents`] are.
    done: mpsc::UnboundedSender<Box<Done>>,
    /// INFO bodies not yet sent: one INFO at a time, so digits keep their
    /// order (RFC 6086 allows one INFO transaction per dialog at a time in
    /// practice: many peers answer a second with 500).
    infos: VecDeque<(String, String)>,
    /// Bounds `infos`: each queued INFO is a transaction of up to 64 × T1
    /// to come, and digits come from a client.
    max_queued_infos: usize,
    info_in_flight: Option<AbortHandle>,
    /// Our re-INVITE, one at a time, and the direction asked for meanwhile.
    reinvite_in_flight: Option<AbortHandle>,
    next_direction: Option<Direction>,
    hangup_in_flight: bool,
    /// Incoming: hung up between our 200 and the caller's ACK.
    hangup_after_ack: bool,
    /// The far end's REFER, until the gateway decides on it.
    pending_refer: Option<TransactionHandle>,
    /// We accepted a REFER: its NOTIFYs go out, one at a time in order.
    refer_notifies: VecDeque<(u16, String, bool)>,
    refer_notify_in_flight: bool,
    /// Hung up while NOTIFYs were still to go: the BYE follows the last,
    /// so the far end hears how its transfer went.
    hangup_after_notifies: bool,
    /// Our 202 to a REFER is on its way; the first NOTIFY waits for it.
    refer_answer_out: bool,
    /// Outgoing, with destinations left to try.
    attempts: Option<Attempts>,
}

/// An outgoing INVITE's destinations (RFC 3263) while one is left to try:
/// a silent destination, an unreachable one or a 503 sends the INVITE on.
struct Attempts {
    /// The INVITE for each destination, in order.
    failover: Failover<InviteOption>,
    /// How long a destination may stay silent.
    patience: Duration,
    /// When the current destination, silent so far, is given up.
    deadline: Option<Instant>,
    /// The current destination sent a 18x: a 503 after that comes from
    /// beyond it, and another destination would only ring the callee again.
    ringing: bool,
}

/// A SIP transaction of the driver that finished.
enum Done {
    Info(rsipstack::Result<Option<Response>>),
    Reinvite {
        direction: Direction,
        previous: Box<LocalAudio>,
        result: rsipstack::Result<Option<Response>>,
    },
    Refer(rsipstack::Result<Option<Response>>),
    ReferNotify(rsipstack::Result<Option<Response>>),
    Hangup(rsipstack::Result<()>),
    /// A response to an in-dialog request went to its transaction.
    Replied {
        method: Method,
        sent: bool,
        /// What the request told, reported now that it is answered.
        then: Option<CallEvent>,
    },
}

impl Driver {
    async fn run(
        mut self,
        mut states: DialogStates,
        mut commands: mpsc::UnboundedReceiver<Box<CallCommand>>,
        mut done: mpsc::UnboundedReceiver<Box<Done>>,
        mut invite: Option<JoinHandle<InviteAsyncResult>>,
    ) {
        let mut confirmed_id = None;
        let mut probe: Option<JoinHandle<bool>> = None;
        let mut commands_open = true;
        let last = loop {
            tokio::select! {
                _ = sleep_until(self.next_probe), if probe.is_none() => {
                    self.next_probe = None;
                    probe = Some(tokio::spawn(far_end_answers(self.dialog.clone())));
                }
                answered = finished(&mut probe), if probe.is_some() => {
                    probe = None;
                    if !matches!(answered, Ok(true)) {
                        info!("the far end no longer answers in the dialog; hanging up");
                        self.start_hangup();
                        break CallEvent::Ended { reason: EndReason::Timeout };
                    }
                    self.next_probe = Some(Instant::now() + self.keepalive);
                }
                _ = sleep_until(self.attempts.as_ref().and_then(|a| a.deadline)) => {
                    if let Some(attempts) = self.attempts.as_mut() {
                        attempts.deadline = None;
                    }
                    self.fail_over(Failure::Timeout, &mut states, &mut invite);
                }
                state = states.recv() => {
                    let Some(state) = state else {
                        break self.ended(EndReason::Timeout);
                    };
                    if let Some(failure) = self.attempt_heard(&state) {
                        if self.fail_over(failure, &mut states, &mut invite) {
                            continue;
                        }
                    }
                    if let DialogState::Confirmed(id, _) = &state {
                        confirmed_id = Some(id.clone());
                    }
                    if let Some(last) = self.on_state(state) {
                        break last;
                    }
                }
                outcome = invite_outcome(&mut invite), if invite.is_some() => {
                    invite = None;
                    if let Some(failure) = invite_failure(&outcome) {
                        if self.fail_over(failure, &mut states, &mut invite) {
                            continue;
                        }
                    }
                    if let Some(last) = self.on_invite_outcome(outcome) {
                        break last;
                    }
                }
                // Never `None`: the driver holds a sender.
                Some(done) = done.recv() => self.on_done(*done),
                _ = sleep_until(self.session_expiry) => {
                    info!("the far end did not refresh the session timer; hanging up");
                    self.start_hangup();
                    break CallEvent::Ended { reason: EndReason::Timeout };
                }
                _ = sleep_until(self.cancel_deadline()) => {
                    info!("no final response after our CANCEL; giving the call up");
                    break CallEvent::Ended { reason: EndReason::Local };
                }
                _ = self.stack_stopped.cancelled() => {
                    break CallEvent::Ended { reason: EndReason::Local };
                }
                command = commands.recv(), if commands_open => {
                    // Every CallControl dropped: nobody will steer the call any more.
                    let command = command.map_or_else(|| {
                        commands_open = false;
                        CallCommand::Hangup
                    }, |command| *command);
                    self.on_command(command);
                }
            }
        };
        if let Some(probe) = probe {
            probe.abort();
        }
        // Digits for a call that is over are of no use to anyone.
        if let Some(info) = self.info_in_flight.take() {
            info.abort();
        }
        if let Some(reinvite) = self.reinvite_in_flight.take() {
            reinvite.abort();
        }
        // A BYE or a response in flight finishes on its own.
        // An INVITE still waiting for its final response (a CANCEL the far
        // end never answered) would hold its transaction until the proxy's
        // own timer fires.
        if let Some(invite) = invite {
            invite.abort();
        }
        let _ = self.events.send(Box::new(last));
        self.dialogs.remove_dialog(&self.dialog.id());
        if let Some(id) = confirmed_id {
            self.dialogs.remove_dialog(&id);
        }
    }

    /// Notes what the current destination said; a final error is a failure
    /// that may fail over.
    fn attempt_heard(&mut self, state: &DialogState) -> Option<Failure> {
        let attempts = self.attempts.as_mut()?;
        match state {
            DialogState::Trying(_) => attempts.deadline = None,
            DialogState::Early(_, _) => {
                attempts.deadline = None;
                attempts.ringing = true;
            }
            DialogState::Terminated(_, TerminatedReason::UasOther(status)) => {
                return Some(Failure::Status(status.code()));
            }
            _ => {}
        }
        None
    }

    /// Sends the INVITE to the next destination after `failure`, when
    /// RFC 3263 says so, one is left and the caller still wants the call;
    /// whether it did.
    fn fail_over(
        &mut self,
        failure: Failure,
        states: &mut DialogStates,
        invite: &mut Option<JoinHandle<InviteAsyncResult>>,
    ) -> bool {
        if self.hangup_in_flight || self.established {
            return false;
        }
        let Some(attempts) = self.attempts.as_mut() else {
            return false;
        };
        if attempts.ringing && matches!(failure, Failure::Status(_)) {
            return false;
        }
        let from = attempts.failover.current().destination.clone();
        let Some(next) = attempts.failover.next_after(failure) else {
            return false;
        };
        // RFC 3263 section 4.3: the same request, in a new transaction.
        let option = InviteOption {
            call_id: Some(self.dialog.id().call_id),
            ..next.clone()
        };
        info!(?from, to = ?option.destination, ?failure, "the INVITE fails over to the next destination");
        // The given-up INVITE stops; rsipstack CANCELs it should it answer
        // late, and BYEs a late 2xx.
        if let Some(given_up) = invite.take() {
            given_up.abort();
        }
        let opened = self.dialog_routes.open(
            |states| {
                self.dialogs
                    .do_invite_async(option, states)
                    .map_err(|e| e.to_string())
            },
            |(dialog, _)| dialog.id(),
        );
        match opened {
            Ok(((dialog, handle), receiver)) => {
                self.dialog = dialog;
                // The given-up dialog's route goes with its receiver.
                *states = receiver;
                *invite = Some(handle);
                attempts.ringing = false;
                attempts.deadline = attempts
                    .failover
                    .patience(attempts.patience)
                    .map(|patience| Instant::now() + patience);
                true
            }
            Err(error) => {
                warn!(%error, "cannot send the INVITE to the next destination");
                false
            }
        }
    }

    fn on_state(&mut self, state: DialogState) -> Option<CallEvent> {
        match state {
            DialogState::Trying(_) => self.emit(CallEvent::Progress {
                status: 100,
                sdp: None,
                media: None,
            }),
            DialogState::Early(_, response) if self.role == TransactionRole::Client => {
                let sdp = body_text(&response.body);
                let media = sdp.as_deref().and_then(|sdp| self.early_media(sdp));
                self.emit(CallEvent::Progress {
                    status: response.status_code.code(),
                    sdp,
                    media,
                })
            }
            DialogState::Confirmed(_, response) if !self.established => {
                self.established = true;
                self.next_probe = Some(Instant::now() + self.keepalive);
                let (sdp, session_timer) = match self.role {
                    TransactionRole::Client => (
                        body_text(&response.body),
                        peer_refreshed_interval(&response.headers, Refresher::Uas),
                    ),
                    TransactionRole::Server => {
                        let invite = self.dialog.initial_request();
                        (
                            body_text(&invite.body),
                            peer_refreshed_interval(&invite.headers, Refresher::Uac),
                        )
                    }
                };
                self.session_interval = session_timer;
                self.restart_session_timer();
                let media = self.established_media(sdp.as_deref());
                self.emit(CallEvent::Established { media, sdp });
                if self.hangup_after_ack {
                    self.start_hangup();
                }
            }
            DialogState::Confirmed(..) if self.refer_answer_out => {
                self.refer_answer_out = false;
                self.refer_notify_in_flight = false;
                self.next_refer_notify();
            }
            DialogState::Updated(_, request, handle) => {
                let peer = match self.role {
                    TransactionRole::Client => Refresher::Uas,
                    TransactionRole::Server => Refresher::Uac,
                };
                if let Some(interval) = peer_refreshed_interval(&request.headers, peer) {
                    self.session_interval = Some(interval);
                }
                self.restart_session_timer();
                self.answer_offer(request, handle);
            }
            DialogState::Info(_, request, handle) => {
                if let Some(refusal) = screening::unreadable_info(&request) {
                    self.refuse(Method::Info, handle, refusal);
                    return None;
                }
                let content_type = content_type(&request);
                self.reply(Method::Info, handle, StatusCode::OK, None);
                self.emit(CallEvent::Info {
                    content_type,
                    body: String::from_utf8_lossy(&request.body).into_owned(),
                });
            }
            DialogState::Notify(_, request, handle) => {
                // Our 200 is handed to the transaction before anything the
                // news makes us do (the BYE after a transfer succeeded), so it
                // usually leaves first; rsipstack sends each transaction's
                // messages from its own task, so the order is not certain.
                let progress =
                    refer_progress(&request).map(|(status, reason)| CallEvent::TransferProgress {
                        status,
                        reason,
                        notified: true,
                    });
                self.reply_then(request.method, handle, StatusCode::OK, None, progress);
            }
            DialogState::Options(_, request, handle) | DialogState::Message(_, request, handle) => {
                self.reply(request.method, handle, StatusCode::OK, None);
            }
            DialogState::Refer(_, request, handle) => self.on_refer(request, handle),
            DialogState::Publish(_, request, handle) => {
                self.refuse(request.method, handle, Refusal::method_not_allowed());
            }
            DialogState::Terminated(_, reason) => return Some(self.terminated(reason)),
            _ => {}
        }
        None
    }

    /// A far end's REFER: the gateway decides whether to follow it; one at
    /// a time, on an established call, naming a SIP URI.
    fn on_refer(&mut self, request: Request, handle: TransactionHandle) {
        let status = if !self.established {
            StatusCode::CallTransactionDoesNotExist
        } else if self.pending_refer.is_some() || !self.refer_notifies.is_empty() {
            StatusCode::RequestPending
        } else if let Some((target, referred_by)) = referral(&request) {
            info!(target = %target.uri, attended = target.replaces.is_some(), "the far end refers us");
            self.pending_refer = Some(handle);
            self.emit(CallEvent::Referred {
                target,
                referred_by,
            });
            return;
        } else {
            StatusCode::BadRequest
        };
        info!(%status, "refusing a REFER");
        self.reply(Method::Refer, handle, status, None);
    }

    /// Sends the next NOTIFY about a REFER we follow, unless one is in
    /// flight: a far end takes them in CSeq order.
    fn next_refer_notify(&mut self) {
        if self.refer_notify_in_flight || self.hangup_in_flight {
            return;
        }
        let Some((status, reason, last)) = self.refer_notifies.pop_front() else {
            return;
        };
        self.refer_notify_in_flight = true;
        let dialog = self.dialog.clone();
        self.spawn_transaction(async move {
            let state = if last {
                "terminated;reason=noresource"
            } else {
                "active;expires=60"
            };
            let headers = vec![
                Header::Event("refer".into()),
                Header::SubscriptionState(state.into()),
                Header::ContentType("message/sipfrag;version=2.0".into()),
            ];
            let body = refer::sipfrag(status, &reason).into_bytes();
            Done::ReferNotify(dialog.notify(Some(headers), Some(body)).await)
        });
    }

    /// Early media: a provisional response's SDP, read against our offer.
    /// Unusable SDP there is only logged: the call goes on to its 2xx.
    fn early_media(&mut self, sdp: &str) -> Option<NegotiatedMedia> {
        let negotiation = self.negotiation.as_mut()?;
        negotiation
            .on_remote_answer(sdp)
            .map_err(|error| warn!(%error, "early SDP unusable; no early media"))
            .ok()
    }

    /// The media agreed when the call is established: the far end's answer
    /// read against our offer (outgoing), or what we answered (incoming).
    fn established_media(&mut self, remote_sdp: Option<&str>) -> Option<NegotiatedMedia> {
        let negotiation = self.negotiation.as_mut()?;
        match (self.role, remote_sdp) {
            (TransactionRole::Client, Some(answer)) => match negotiation.on_remote_answer(answer) {
                Ok(media) => Some(media),
                Err(error) => {
                    warn!(%error, "the far end's answer is unusable; no media");
                    None
                }
            },
            _ => negotiation.media().cloned(),
        }
    }

    /// A re-INVITE or UPDATE: answer its offer consistently with the media
    /// in use (hold, unhold, new address, a codec change only when the codec
    /// in use is gone), or offer our media when it carries none.
    fn answer_offer(&mut self, request: Request, handle: TransactionHandle) {
        let method = request.method;
        let Some(negotiation) = self.negotiation.as_mut() else {
            self.reply(method, handle, StatusCode::NotAcceptableHere, None);
            return;
        };
        if let Some(refusal) = screening::unanswerable_offer(&request) {
            info!(status = %refusal.status, %method, "refusing an in-dialog offer");
            self.refuse(method, handle, refusal);
            return;
        }
        let Some(offer) = body_text(&request.body) else {
            let ours = negotiation.offer();
            self.reply(method, handle, StatusCode::OK, Some(ours.render()));
            return;
        };
        match negotiation.on_remote_offer(&offer) {
            Ok(result) => {
                self.reply(method, handle, StatusCode::OK, Some(result.answer.render()));
                if result.changes.any() {
                    info!(
                        codec = %result.media.codec.label(),
                        remote = %result.media.remote,
                        direction = ?result.media.remote_direction,
                        changes = ?result.changes,
                        "the far end changed the media"
                    );
                    self.emit(CallEvent::MediaChanged {
                        media: result.media,
                        changes: result.changes,
                        sdp: offer,
                    });
                }
            }
            Err(error) => {
                info!(%error, %method, "refusing an in-dialog offer");
                self.reply(method, handle, StatusCode::NotAcceptableHere, None);
            }
        }
    }

    /// Answers an in-dialog request without waiting for the transaction to
    /// take the response.
    fn reply(
        &mut self,
        method: Method,
        handle: TransactionHandle,
        status: StatusCode,
        sdp: Option<String>,
    ) {
        self.reply_then(method, handle, status, sdp, None);
    }

    /// [`Self::reply`], then reports `then` once the response is handed to
    /// the transaction.
    fn reply_then(
        &mut self,
        method: Method,
        handle: TransactionHandle,
        status: StatusCode,
        sdp: Option<String>,
        then: Option<CallEvent>,
    ) {
        self.spawn_transaction(async move {
            let sent = match sdp {
                Some(body) => handle
                    .respond(
                        status,
                        Some(vec![sdp_content_type()]),
                        Some(body.into_bytes()),
                    )
                    .await
                    .is_ok(),
                None => handle.reply(status).await.is_ok(),
            };
            Done::Replied { method, sent, then }
        });
    }

    /// Refuses an in-dialog request, telling what we would take.
    fn refuse(&mut self, method: Method, handle: TransactionHandle, refusal: Refusal) {
        self.spawn_transaction(async move {
            let sent = handle
                .respond(refusal.status, Some(refusal.headers), None)
                .await
                .is_ok();
            Done::Replied {
                method,
                sent,
                then: None,
            }
        });
    }

    fn on_invite_outcome(
        &mut self,
        outcome: Result<InviteAsyncResult, tokio::task::JoinError>,
    ) -> Option<CallEvent> {
        match outcome {
            Ok(Ok((_, Some(response))))
                if response.status_code.kind() == StatusCodeKind::Successful =>
            {
                None
            }
            // A final error response also ends the dialog with a Terminated
            // state, which carries the same status.
            Ok(Ok((_, Some(_)))) => None,
            Ok(Ok((_, None))) => Some(CallEvent::Failed {
                status: 408,
                reason: "no answer to the INVITE".to_string(),
            }),
            Ok(Err(error)) => Some(CallEvent::Failed {
                status: 503,
                reason: error.to_string(),
            }),
            Err(error) => Some(CallEvent::Failed {
                status: 500,
                reason: error.to_string(),
            }),
        }
    }

    fn on_command(&mut self, command: CallCommand) {
        let result = match command {
            CallCommand::Ring => self.dialog.ringing(None, None),
            CallCommand::Accept(answer) => {
                let body = answer.render();
                self.negotiation = Some(self.answered(answer));
                self.dialog
                    .accept(Some(vec![sdp_content_type()]), Some(body.into_bytes()))
            }
            CallCommand::Reject(status) => self.dialog.reject(Some(StatusCode::from(status)), None),
            // Accepted, the caller's ACK not yet in: a BYE must wait for it
            // (RFC 3261 section 15), and a 480 after our 200 would end
            // nothing. The BYE goes when the dialog is confirmed.
            CallCommand::Hangup
                if self.role == TransactionRole::Server
                    && !self.established
                    && self.negotiation.is_some() =>
            {
                self.hangup_after_ack = true;
                Ok(())
            }
            CallCommand::Hangup if self.role == TransactionRole::Server && !self.established => {
                self.dialog
                    .reject(Some(StatusCode::TemporarilyUnavailable), None)
            }
            CallCommand::Info { .. } if self.infos.len() >= self.max_queued_infos => {
                debug!(queued = self.infos.len(), "INFO queue full: digit dropped");
                Ok(())
            }
            CallCommand::Info { content_type, body } => {
                self.infos.push_back((content_type, body));
                self.next_info();
                Ok(())
            }
            CallCommand::Direction(direction) => {
                self.next_direction = Some(direction);
                self.next_reinvite();
                Ok(())
            }
            CallCommand::Transfer(refer_to) => {
                let dialog = self.dialog.clone();
                self.spawn_transaction(async move {
                    Done::Refer(
                        dialog
                            .refer(rsipstack::sip::headers::ReferTo::new(refer_to), None, None)
                            .await,
                    )
                });
                Ok(())
            }
            CallCommand::AnswerRefer(accept) => {
                if let Some(handle) = self.pending_refer.take() {
                    if accept {
                        // The 202 goes before the first NOTIFY: a far end
                        // may not take a NOTIFY for a REFER it has no answer
                        // to. The stack confirms the dialog again once the
                        // 202 is out; the NOTIFYs start then.
                        self.refer_notifies
                            .push_back((100, "Trying".to_string(), false));
                        self.refer_notify_in_flight = true;
                        self.refer_answer_out = true;
                        self.reply(Method::Refer, handle, StatusCode::Accepted, None);
                    } else {
                        self.reply(Method::Refer, handle, StatusCode::Decline, None);
                    }
                }
                Ok(())
            }
            CallCommand::NotifyRefer {
                status,
                reason,
                last,
            } => {
                self.refer_notifies.push_back((status, reason, last));
                self.next_refer_notify();
                Ok(())
            }
            CallCommand::Hangup
                if self.refer_notify_in_flight || !self.refer_notifies.is_empty() =>
            {
                self.hangup_after_notifies = true;
                Ok(())
            }
            CallCommand::Hangup => {
                if !self.established && self.hung_up_at.is_none() {
                    self.hung_up_at = Some(Instant::now());
                }
                self.start_hangup();
                Ok(())
            }
        };
        if let Err(error) = result {
            warn!(%error, "SIP call command failed");
        }
    }

    /// The negotiation of an incoming call we accept with `answer`.
    fn answered(&self, answer: LocalAudio) -> Negotiation {
        let offer = body_text(&self.dialog.initial_request().body);
        let Some(offer) = offer else {
            // No offer in the INVITE: our 200 carries the offer.
            return Negotiation::offered(answer);
        };
        match sdp::parse_remote(&offer)
            .and_then(|remote| Negotiation::answered(sdp::sip_codecs(), &remote, answer.clone()))
        {
            Ok(negotiation) => negotiation,
            Err(error) => {
                warn!(%error, "our answer does not fit the caller's offer");
                Negotiation::offered(answer)
            }
        }
    }

    /// Sends the next queued INFO unless one is in flight.
    fn next_info(&mut self) {
        if self.info_in_flight.is_some() || self.hangup_in_flight {
            return;
        }
        let Some((content_type, body)) = self.infos.pop_front() else {
            return;
        };
        let dialog = self.dialog.clone();
        self.info_in_flight = Some(self.spawn_transaction(async move {
            Done::Info(
                dialog
                    .info(
                        Some(vec![Header::ContentType(ContentType::new(content_type))]),
                        Some(body.into_bytes()),
                    )
                    .await,
            )
        }));
    }

    /// Sends the re-INVITE for the direction last asked for, unless one is
    /// in flight (it follows when that one is done).
    fn next_reinvite(&mut self) {
        if self.reinvite_in_flight.is_some() || self.hangup_in_flight {
            return;
        }
        let Some(direction) = self.next_direction.take() else {
            return;
        };
        let negotiation = self.negotiation.as_mut().filter(|_| self.established);
        let Some(negotiation) = negotiation else {
            self.emit(CallEvent::DirectionRefused {
                direction,
                status: None,
                reason: "the call is not established".to_string(),
            });
            return;
        };
        let previous = Box::new(negotiation.local().clone());
        let offer = negotiation.offer_with(direction).render();
        let dialog = self.dialog.clone();
        const ATTEMPTS: usize = 3;
        self.reinvite_in_flight = Some(self.spawn_transaction(async move {
            let content_type = Header::ContentType(ContentType::new("application/sdp"));
            let result = dialog
                .reinvite_with_glare_retry(
                    Some(vec![content_type]),
                    Some(offer.into_bytes()),
                    ATTEMPTS,
                )
                .await;
            Done::Reinvite {
                direction,
                previous,
                result,
            }
        }));
    }

    /// Our re-INVITE's outcome: the answer read, or our old SDP restored.
    fn reinvite_done(
        &mut self,
        direction: Direction,
        previous: LocalAudio,
        result: rsipstack::Result<Option<Response>>,
    ) {
        self.reinvite_in_flight = None;
        let refused = |status: Option<u16>, reason: String| CallEvent::DirectionRefused {
            direction,
            status,
            reason,
        };
        let event = match result {
            Ok(Some(response)) if response.status_code.kind() == StatusCodeKind::Successful => {
                let answer = body_text(&response.body);
                let negotiation = self.negotiation.as_mut();
                match (answer, negotiation) {
                    (Some(answer), Some(negotiation)) => {
                        match negotiation.on_remote_answer(&answer) {
                            Ok(media) => CallEvent::DirectionChanged { direction, media },
                            Err(error) => {
                                negotiation.restore_local(previous);
                                refused(Some(200), format!("unusable answer: {error}"))
                            }
                        }
                    }
                    _ => refused(Some(200), "answer without SDP".to_string()),
                }
            }
            Ok(Some(response)) => {
                if let Some(negotiation) = self.negotiation.as_mut() {
                    negotiation.restore_local(previous);
                }
                refused(
                    Some(response.status_code.code()),
                    response.status_code.to_string(),
                )
            }
            Ok(None) => refused(None, "the dialog is not confirmed".to_string()),
            Err(error) => {
                if let Some(negotiation) = self.negotiation.as_mut() {
                    negotiation.restore_local(previous);
                }
                refused(None, error.to_string())
            }
        };
        self.emit(event);
        self.next_reinvite();
    }

    /// BYE, or CANCEL before an answer; the dialog reports its end.
    fn start_hangup(&mut self) {
        if self.hangup_in_flight {
            return;
        }
        self.hangup_in_flight = true;
        self.infos.clear();
        let dialog = self.dialog.clone();
        self.spawn_transaction(async move { Done::Hangup(dialog.hangup().await) });
    }

    /// Runs one SIP transaction beside the loop; its outcome comes back as
    /// an input.
    fn spawn_transaction(
        &self,
        transaction: impl std::future::Future<Output = Done> + Send + 'static,
    ) -> AbortHandle {
        let done = self.done.clone();
        tokio::spawn(async move {
            let _ = done.send(Box::new(transaction.await));
        })
        .abort_handle()
    }

    fn on_done(&mut self, done: Done) {
        match done {
            Done::Reinvite {
                direction,
                previous,
                result,
            } => self.reinvite_done(direction, *previous, result),
            Done::Refer(result) => {
                let (status, reason) = match result {
                    Ok(Some(response)) => (
                        response.status_code.code(),
                        response.status_code.to_string(),
                    ),
                    Ok(None) => (481, "the dialog is not confirmed".to_string()),
                    Err(error) => (408, error.to_string()),
                };
                self.emit(CallEvent::TransferProgress {
                    status,
                    reason,
                    notified: false,
                });
            }
            Done::ReferNotify(result) => {
                self.refer_notify_in_flight = false;
                match result {
                    Ok(Some(response))
                        if response.status_code.kind() != StatusCodeKind::Successful =>
                    {
                        info!(status = %response.status_code, "NOTIFY refused by the far end");
                    }
                    Ok(_) => {}
                    Err(error) => debug!(%error, "NOTIFY failed"),
                }
                self.next_refer_notify();
                if self.hangup_after_notifies && !self.refer_notify_in_flight {
                    self.start_hangup();
                }
            }
            Done::Info(result) => {
                self.info_in_flight = None;
                match result {
                    Ok(Some(response))
                        if response.status_code.kind() != StatusCodeKind::Successful =>
                    {
                        info!(status = %response.status_code, "INFO refused by the far end");
                    }
                    Ok(_) => {}
                    Err(error) => warn!(%error, "INFO failed"),
                }
                self.next_info();
            }
            Done::Hangup(result) => {
                self.hangup_in_flight = false;
                if let Err(error) = result {
                    warn!(%error, "hanging up failed");
                }
            }
            Done::Replied { method, sent, then } => {
                if !sent {
                    debug!(%method, "the transaction was gone before our response");
                }
                if let Some(event) = then {
                    self.emit(event);
                }
            }
        }
    }

    /// A refresh (or the start) of a session the far end refreshes.
    fn restart_session_timer(&mut self) {
        self.session_expiry = self
            .session_interval
            .and_then(|interval| peer_numbers::session_expiry(Instant::now(), interval));
    }

    fn cancel_deadline(&self) -> Option<Instant> {
        match self.role {
            TransactionRole::Client => self.hung_up_at.map(|at| at + self.transaction_timeout),
            TransactionRole::Server => None,
        }
    }

    fn terminated(&self, reason: TerminatedReason) -> CallEvent {
        let we_are_caller = self.role == TransactionRole::Client;
        if we_are_caller && !self.established && self.hung_up_at.is_some() {
            // 487 or a crossing final response: the call ended because we
            // cancelled it.
            return self.ended(EndReason::Local);
        }
        match reason {
            TerminatedReason::UacBye => self.ended(if we_are_caller {
                EndReason::Local
            } else {
                EndReason::Remote
            }),
            TerminatedReason::UasBye => self.ended(if we_are_caller {
                EndReason::Remote
            } else {
                EndReason::Local
            }),
            TerminatedReason::UacCancel if we_are_caller => self.ended(EndReason::Local),
            TerminatedReason::UacCancel => self.ended(EndReason::CallerCancelled),
            TerminatedReason::Timeout => self.ended(EndReason::Timeout),
            // Our own rejection of an incoming call.
            TerminatedReason::UasDecline | TerminatedReason::UasBusy if !we_are_caller => {
                self.ended(EndReason::Local)
            }
            TerminatedReason::UasBusy => failed(StatusCode::BusyHere),
            TerminatedReason::UasDecline => failed(StatusCode::Decline),
            TerminatedReason::UacBusy => failed(StatusCode::BusyHere),
            TerminatedReason::ProxyAuthRequired => failed(StatusCode::ProxyAuthenticationRequired),
            TerminatedReason::ProxyError(status)
            | TerminatedReason::UacOther(status)
            | TerminatedReason::UasOther(status) => {
                if self.established {
                    self.ended(EndReason::Remote)
                } else if !we_are_caller {
                    self.ended(EndReason::Local)
                } else {
                    failed(status)
                }
            }
        }
    }

    fn ended(&self, reason: EndReason) -> CallEvent {
        if !self.established && self.role == TransactionRole::Client && reason == EndReason::Timeout
        {
            return CallEvent::Failed {
                status: 408,
                reason: "Request Timeout".to_string(),
            };
        }
        CallEvent::Ended { reason }
    }

    fn emit(&self, event: CallEvent) {
        let _ = self.events.send(Box::new(event));
    }
}

fn failed(status: StatusCode) -> CallEvent {
    CallEvent::Failed {
        status: status.code(),
        reason: status.text().to_string(),
    }
}

fn body_text(body: &[u8]) -> Option<String> {
    (!body.is_empty()).then(|| String::from_utf8_lossy(body).into_owned())
}

fn content_type(request: &Request) -> String {
    request
        .headers
        .iter()
        .find_map(|h| match h {
            Header::ContentType(c) => Some(c.value().to_string()),
            _ => None,
        })
        .unwrap_or_default()
}

fn sdp_content_type() -> Header {
    Header::ContentType(ContentType::new("application/sdp"))
}

/// Whether the far end still knows the dialog: any answer to an in-dialog
/// OPTIONS but 408 / 481 (RFC 3261 section 12.2.1.2) says yes.
async fn far_end_answers(dialog: InviteDialog) -> bool {
    match dialog.request(Method::Options, None, None).await {
        Ok(Some(response)) => !matches!(response.status_code.code(), 408 | 481),
        Ok(None) | Err(_) => false,
    }
}

/// The session interval of an RFC 4028 `Session-Expires` header whose
/// refresher is `peer` (clamped, see [`peer_numbers`]): the timer we must
/// watch.
fn peer_refreshed_interval(headers: &Headers, peer: Refresher) -> Option<Duration> {
    let value = headers.iter().find_map(|header| match header {
        Header::SessionExpires(session_expires) => Some(session_expires.value().to_string()),
        _ => None,
    })?;
    let session_expires = peer_numbers::parse_session_expires(&value)?;
    (session_expires.refresher == Some(peer)).then_some(session_expires.interval)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn finished<T>(task: &mut Option<JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    match task {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

/// A loose Route to one destination: `<sip:192.0.2.1:5060;transport=udp;lr>`.
fn route_to(destination: Destination) -> Result<rsipstack::sip::typed::Route, DialError> {
    let text = format!(
        "sip:{};transport={};lr",
        destination.addr,
        destination.transport.as_str()
    );
    let uri = Uri::try_from(text.as_str()).map_err(|_| DialError::BadTarget(text))?;
    Ok(rsipstack::sip::typed::Route {
        display_name: None,
        uri,
        params: vec![],
    })
}

/// How our INVITE transaction failed, when it did in a way that may fail
/// over (the status is checked by [`Failure::moves_on`]).
fn invite_failure(outcome: &Result<InviteAsyncResult, tokio::task::JoinError>) -> Option<Failure> {
    match outcome {
        Ok(Ok((_, Some(response))))
            if response.status_code.kind() != StatusCodeKind::Successful =>
        {
            Some(Failure::Status(response.status_code.code()))
        }
        Ok(Ok((_, Some(_)))) => None,
        Ok(Ok((_, None))) => Some(Failure::Timeout),
        Ok(Err(_)) => Some(Failure::Unreachable),
        Err(_) => None,
    }
}

/// The outcome of our INVITE transaction; never resolves once it was taken.
async fn invite_outcome(
    invite: &mut Option<JoinHandle<InviteAsyncResult>>,
) -> Result<InviteAsyncResult, tokio::task::JoinError> {
    match invite {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

impl From<TransportKind> for rsipstack::sip::Transport {
    fn from(kind: TransportKind) -> Self {
        match kind {
            TransportKind::Udp => rsipstack::sip::Transport::Udp,
            TransportKind::Tcp => rsipstack::sip::Transport::Tcp,
            TransportKind::Tls => rsipstack::sip::Transport::Tls,
        }
    }
}

/// Requests that only make sense inside a dialog.
pub(crate) fn needs_dialog(method: Method) -> bool {
    matches!(
        method,
        Method::Bye | Method::Cancel | Method::Info | Method::Update | Method::PRack
    )
}

/// The sender of a request: rsipstack writes the packet's source into the
/// top Via (`received`, `rport`) where it differs from what the Via says.
fn request_source(request: &Request) -> Option<std::net::SocketAddr> {
    let via = rsipstack::sip::HeadersExt::via_header(request).ok()?;
    let (_, host) = rsipstack::transport::SipConnection::parse_target_from_via(via).ok()?;
    host.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsipstack::sip::headers::untyped::SessionExpires;

    fn headers(value: &str) -> Headers {
        Headers(vec![Header::SessionExpires(SessionExpires::new(value))])
    }

    #[test]
    fn only_a_session_timer_the_peer_refreshes_is_watched() {
        assert_eq!(
            peer_refreshed_interval(&headers("90;refresher=uas"), Refresher::Uas),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            peer_refreshed_interval(&headers("90;refresher=uac"), Refresher::Uas),
            None
        );
        assert_eq!(
            peer_refreshed_interval(&headers("90"), Refresher::Uas),
            None
        );
        assert_eq!(
            peer_refreshed_interval(&headers("soon;refresher=uas"), Refresher::Uas),
            None
        );
        assert_eq!(
            peer_refreshed_interval(&Headers(vec![]), Refresher::Uac),
            None
        );
        // The overflow of issue 10: clamped to a day, not a panic.
        assert_eq!(
            peer_refreshed_interval(
                &headers("18446744073709551615;refresher=uas"),
                Refresher::Uas
            ),
            Some(peer_numbers::MAX_SESSION_INTERVAL)
        );
    }
}
