//! The gateway's SIP user agent.
//!
//! Owns SIP transports (UDP and TCP on one port, TLS toward registrars and
//! proxies), transactions and digest authentication (through rsipstack),
//! and the registration of web users with a registrar. It knows nothing of WebSockets, JSON, sessions or media:
//! callers hand it plain strings and socket addresses and get plain results.
//! rsipstack's types stay inside this crate.

mod call;
mod dialog_routes;
mod digest_names;
mod dns;
pub mod grammar;
mod locate;
pub mod negotiation;
pub mod peer_numbers;
pub mod refer;
mod registration;
mod screening;
pub mod sdp;
mod target;
mod tls;
mod user_agent;

pub use call::{
    Call, CallControl, CallEvent, CallEvents, DialError, EndReason, IncomingCall, IncomingCalls,
    OutgoingCall,
};
/// Public for the fuzz target that feeds it received messages.
pub use digest_names::DigestAlgorithmNames;
pub use negotiation::{MediaChanges, NegotiatedMedia, Negotiation, OfferAnswer, SrtpAgreement};
pub use registration::{Account, RegisterError, Registration};
pub use target::{SipTarget, TargetError, TransportKind};
pub use tls::SipTlsConfig;
pub use user_agent::{SipStats, UserAgent, UserAgentConfig, UserAgentError};
