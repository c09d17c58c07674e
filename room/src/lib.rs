//! Dialtone's media room and the RTP building blocks it is made of.
//!
//! A [`Room`] holds any number of points: SIP legs and client RTP
//! endpoints (plain RTP, symmetric latching), WebRTC peers (str0m in RTP
//! mode), RTMP clients (FLV audio tags in and out) and the built-in test
//! lines. Each point hears the others its [`Role`] lets it hear. A point
//! that hears one other with its own codec gets a relay that keeps the
//! sender's sequence gaps, order, timestamps and marker bits
//! (offset-mapped onto our stream); with another codec the audio goes
//! through a jitter buffer and is transcoded every 20 ms; a point that
//! hears several gets their N−1 mix ([`mixer`]). Points move between rooms
//! with their streams intact ([`Room::take_point`], [`Room::insert_point`]),
//! and a room records its public mix on request. Digits cross as RFC 4733
//! events where the receiving point takes them, else they come out as an
//! event for its signalling (SIP INFO), or go as in-band tones on request.
//!
//! The room is sans-IO, driven like str0m's `Rtc`:
//!
//! - inputs: [`Room::handle_input`] with `now` and an [`Input`] (a datagram
//!   on a point's RTP or RTCP socket, an FLV tag from an RTMP publisher, a
//!   player joining, a timeout), and calls that carry `now` for commands
//!   ([`Room::add_point`], [`Room::remove_point`], [`Room::update_point`],
//!   [`Room::send_digits`], [`Room::send_tones`], [`Room::digit_from`], …);
//! - outputs: [`Room::poll_output`] until `None` ([`Output::Transmit`]
//!   datagrams for a point's socket, FLV tags for a player, [`Event`]s:
//!   digits, media timeouts and failures, statistics) and
//!   [`Room::poll_timeout`] for when to come back with [`Input::Timeout`];
//! - a steady same-codec relay may be handed to a faster forwarder below
//!   the room ([`Output::Offload`], [`Input::Offloaded`], see [`offload`]):
//!   the room decides what may go there and carries on from the
//!   forwarder's counters.
//!
//! Nothing here reads the clock, owns a socket or awaits: a driver (the
//! gateway's tokio task) does that, and tests drive the room with
//! simulated time. A packet's way through the room allocates nothing once
//! its buffers are warm.
//!
//! This crate must not know SIP, SDP text, the WebSocket protocol or
//! tokio: callers pass in the negotiated payload types, codecs and
//! addresses. The blocks below are usable alone: RTP numbering
//! ([`rtp`]), SDES-keyed SRTP ([`srtp`]), latching ([`symmetric`]), the jitter buffer ([`jitter`]),
//! RTCP and statistics ([`rtcp`], [`stats`]), the inactivity timer
//! ([`inactivity`]), RFC 4733 ([`telephone_event`]) and SIP INFO bodies
//! ([`dtmf_relay`]). DTMF digits are `char`s `0`-`9`, `*`, `#`, `A`-`D`.

pub mod dtmf_relay;
pub mod inactivity;
pub mod jitter;
mod lines;
pub mod mixer;
pub mod offload;
mod point;
mod room;
pub mod rtcp;
mod rtmp_point;
pub mod rtp;
pub mod srtp;
pub mod stats;
pub mod symmetric;
pub mod telephone_event;
mod tones;
pub mod webrtc;

pub use lines::{Line, Ringback, TONE_HZ};
pub use mixer::Role;
pub use point::{PointConfig, PointId, PointKind, PointUpdate, WatchConfig};
pub use room::{
    DetachedPoint, DigitMethod, Event, Input, Output, Room, RoomError, Socket, Transmit, FRAME,
    RECORDING_RATE,
};
