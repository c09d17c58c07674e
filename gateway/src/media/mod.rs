//! RTP-level state machines for one call leg: packet formats, numbering,
//! symmetric-RTP latching, the jitter buffer, RTCP statistics and reports,
//! call-quality estimates, the media inactivity timer and DTMF events
//! (RFC 4733 telephone-event and SIP INFO bodies).
//!
//! Everything here is sans-IO: bytes, source addresses and timestamps
//! (`Instant`) go in, decisions, events and bytes (written into
//! caller-provided buffers) come out. There are no sockets, no tasks and no
//! sleeping, so every timer is driven by `poll(now)` / `next_deadline()`
//! and tested without waiting. The per-packet paths do not allocate.
//!
//! This module must not know SIP or SDP (callers pass in the negotiated
//! payload types, clock rates and addresses), the WebSocket protocol, or
//! the codecs beyond their public API: payloads are opaque bytes here.
//!
//! DTMF digits are `char`s `0`-`9`, `*`, `#`, `A`-`D`, the same keys
//! `dialtone_codecs::DtmfDigit::from_char` accepts for in-band tones.

pub mod dtmf_relay;
pub mod inactivity;
pub mod jitter;
pub mod rtcp;
pub mod rtp;
pub mod stats;
pub mod symmetric;
pub mod telephone_event;
