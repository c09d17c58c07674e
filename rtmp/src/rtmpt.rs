//! RTMPT: RTMP tunnelled through HTTP POST requests, for clients behind
//! proxies that only let HTTP out. The gateway's HTTP server receives the
//! requests; this module keeps the tunnels and their [`ServerSession`]s.
//!
//! The client drives every exchange (as Flash and ffmpeg's `rtmpt://` do):
//!
//! | request | body | reply body |
//! |---|---|---|
//! | `POST /open/1` | one ignored byte | the new tunnel's id and `\n` |
//! | `POST /send/<id>/<seq>` | RTMP bytes from the client | interval byte, then RTMP bytes for the client |
//! | `POST /idle/<id>/<seq>` | one ignored byte | interval byte, then RTMP bytes for the client |
//! | `POST /close/<id>/<seq>` | one ignored byte | one zero byte |
//! | `POST /fcs/ident2` (Flash's probe) | — | the HTTP layer answers 404, as FMS does |
//!
//! Replies are `Content-Type: application/x-fcs`. The interval byte tells
//! Flash how long to wait before its next idle poll: it grows while a tunnel
//! has nothing to say and falls back to 1 as soon as it has, so audio for a
//! player is not held back by an idle back-off.
//!
//! The tunnel id is what keeps one client from writing into another's RTMP
//! session, so the caller supplies it and must make it unguessable.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::server::{RtmpError, ServerConfig, ServerEvent, ServerSession};

/// ffmpeg keeps the id in a 64-byte buffer with its terminating NUL.
pub const MAX_TUNNEL_ID_LEN: usize = 63;
/// Empty replies in a row before the polling interval grows by one.
const EMPTY_REPLIES_PER_STEP: u32 = 10;
/// The largest polling interval byte (Red5's and FMS's ceiling).
const MAX_POLLING_INTERVAL: u8 = 33;

/// An RTMPT request, from the path of the POST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtmptRequest<'a> {
    /// `/open/1`: start a tunnel.
    Open,
    /// `/send/<id>/<seq>`: client bytes in, server bytes out.
    Send { tunnel: &'a str, sequence: u64 },
    /// `/idle/<id>/<seq>`: a poll for server bytes.
    Idle { tunnel: &'a str, sequence: u64 },
    /// `/close/<id>/<seq>`: the client is done.
    Close { tunnel: &'a str, sequence: u64 },
}

impl RtmptRequest<'_> {
    /// Parses a request path; `None` for anything that is not RTMPT
    /// (including Flash's `/fcs/ident2` probe, which FMS answers with 404).
    pub fn parse(path: &str) -> Option<RtmptRequest<'_>> {
        let mut parts = path.strip_prefix('/')?.split('/');
        let command = parts.next()?;
        if command == "open" {
            return (parts.next() == Some("1") && parts.next().is_none())
                .then_some(RtmptRequest::Open);
        }
        let tunnel = parts.next().filter(|id| valid_tunnel_id(id))?;
        let sequence = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        match command {
            "send" => Some(RtmptRequest::Send { tunnel, sequence }),
            "idle" => Some(RtmptRequest::Idle { tunnel, sequence }),
            "close" => Some(RtmptRequest::Close { tunnel, sequence }),
            _ => None,
        }
    }
}

fn valid_tunnel_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_TUNNEL_ID_LEN
        && id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

/// Why an RTMPT request failed. [`RtmptError::Rtmp`] also closes the
/// tunnel; the others leave existing tunnels as they were.
#[derive(Debug, thiserror::Error)]
pub enum RtmptError {
    #[error("tunnel ids are 1 to {MAX_TUNNEL_ID_LEN} ASCII letters, digits, `-` or `_`")]
    InvalidTunnelId,
    #[error("a tunnel with this id already exists")]
    DuplicateTunnel,
    #[error("already {max} tunnels open")]
    TooManyTunnels { max: usize },
    #[error("no tunnel with this id")]
    UnknownTunnel,
    #[error("request {sequence} came after request {last}")]
    OutOfOrder { sequence: u64, last: u64 },
    #[error("the tunnelled RTMP session failed: {0}")]
    Rtmp(#[from] RtmpError),
}

/// The answer to a send or idle request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtmptReply {
    /// The HTTP reply body: the polling interval byte and the server's bytes.
    pub body: Vec<u8>,
    /// What the client's bytes asked for (see [`ServerSession::handle_input`]).
    pub events: Vec<ServerEvent>,
}

struct Tunnel {
    session: ServerSession,
    last_sequence: Option<u64>,
    empty_replies: u32,
    last_request: Instant,
}

impl Tunnel {
    fn check_sequence(&mut self, sequence: u64, now: Instant) -> Result<(), RtmptError> {
        if let Some(last) = self.last_sequence {
            if sequence <= last {
                return Err(RtmptError::OutOfOrder { sequence, last });
            }
        }
        self.last_sequence = Some(sequence);
        self.last_request = now;
        Ok(())
    }

    fn reply(&mut self, events: Vec<ServerEvent>) -> RtmptReply {
        let output = self.session.take_output();
        if output.is_empty() {
            self.empty_replies = self.empty_replies.saturating_add(1);
        } else {
            self.empty_replies = 0;
        }
        let steps = self.empty_replies / EMPTY_REPLIES_PER_STEP;
        let interval = u8::try_from(steps.saturating_add(1))
            .unwrap_or(MAX_POLLING_INTERVAL)
            .min(MAX_POLLING_INTERVAL);
        let mut body = Vec::with_capacity(1 + output.len());
        body.push(interval);
        body.extend(output);
        RtmptReply { body, events }
    }
}

/// The open RTMPT tunnels of one HTTP listener.
pub struct RtmptTunnels {
    config: ServerConfig,
    max_tunnels: usize,
    tunnels: HashMap<String, Tunnel>,
}

impl RtmptTunnels {
    /// Each tunnel's session gets `config`; at most `max_tunnels` are open.
    pub fn new(config: ServerConfig, max_tunnels: usize) -> RtmptTunnels {
        RtmptTunnels {
            config,
            max_tunnels,
            tunnels: HashMap::new(),
        }
    }

    /// Answers `/open/1` with a tunnel named `tunnel_id` (which the caller
    /// makes unguessable); returns the reply body.
    pub fn open(&mut self, tunnel_id: &str, now: Instant) -> Result<Vec<u8>, RtmptError> {
        if !valid_tunnel_id(tunnel_id) {
            return Err(RtmptError::InvalidTunnelId);
        }
        if self.tunnels.contains_key(tunnel_id) {
            return Err(RtmptError::DuplicateTunnel);
        }
        if self.tunnels.len() >= self.max_tunnels {
            return Err(RtmptError::TooManyTunnels {
                max: self.max_tunnels,
            });
        }
        self.tunnels.insert(
            tunnel_id.to_owned(),
            Tunnel {
                session: ServerSession::new(self.config),
                last_sequence: None,
                empty_replies: 0,
                last_request: now,
            },
        );
        Ok(format!("{tunnel_id}\n").into_bytes())
    }

    /// Answers `/send/<id>/<seq>`: feeds the body to the tunnel's session.
    pub fn send(
        &mut self,
        tunnel_id: &str,
        sequence: u64,
        body: &[u8],
        now: Instant,
    ) -> Result<RtmptReply, RtmptError> {
        let tunnel = self.tunnel(tunnel_id)?;
        tunnel.check_sequence(sequence, now)?;
        match tunnel.session.handle_input(body) {
            Ok(events) => Ok(tunnel.reply(events)),
            Err(error) => {
                self.tunnels.remove(tunnel_id);
                Err(error.into())
            }
        }
    }

    /// Answers `/idle/<id>/<seq>`; its one-byte body is padding, not RTMP.
    pub fn idle(
        &mut self,
        tunnel_id: &str,
        sequence: u64,
        now: Instant,
    ) -> Result<RtmptReply, RtmptError> {
        let tunnel = self.tunnel(tunnel_id)?;
        tunnel.check_sequence(sequence, now)?;
        Ok(tunnel.reply(Vec::new()))
    }

    /// Answers `/close/<id>/<seq>`: the tunnel and its session are dropped.
    /// The sequence number is not checked: a late close still closes.
    pub fn close(&mut self, tunnel_id: &str) -> Result<Vec<u8>, RtmptError> {
        self.tunnels
            .remove(tunnel_id)
            .map(|_| vec![0])
            .ok_or(RtmptError::UnknownTunnel)
    }

    /// The tunnel's RTMP session, to answer its requests and send it audio;
    /// what that produces goes out with the client's next poll.
    pub fn session_mut(&mut self, tunnel_id: &str) -> Option<&mut ServerSession> {
        self.tunnels
            .get_mut(tunnel_id)
            .map(|tunnel| &mut tunnel.session)
    }

    /// Drops tunnels without a request for `max_silence`, as a TCP
    /// connection would time out; returns their ids.
    pub fn expire(&mut self, now: Instant, max_silence: Duration) -> Vec<String> {
        let expired: Vec<String> = self
            .tunnels
            .iter()
            .filter(|(_, tunnel)| now.saturating_duration_since(tunnel.last_request) > max_silence)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.tunnels.remove(id);
        }
        expired
    }

    fn tunnel(&mut self, tunnel_id: &str) -> Result<&mut Tunnel, RtmptError> {
        self.tunnels
            .get_mut(tunnel_id)
            .ok_or(RtmptError::UnknownTunnel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
    use rml_rtmp::sessions::{
        ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult,
        PublishRequestType,
    };

    const ID: &str = "f3a9c2e1-7b4d";

    #[test]
    fn parses_request_paths() {
        assert_eq!(RtmptRequest::parse("/open/1"), Some(RtmptRequest::Open));
        assert_eq!(
            RtmptRequest::parse("/send/f3a9c2e1-7b4d/0"),
            Some(RtmptRequest::Send {
                tunnel: ID,
                sequence: 0
            })
        );
        assert_eq!(
            RtmptRequest::parse("/idle/abc/17"),
            Some(RtmptRequest::Idle {
                tunnel: "abc",
                sequence: 17
            })
        );
        assert_eq!(
            RtmptRequest::parse("/close/abc/18"),
            Some(RtmptRequest::Close {
                tunnel: "abc",
                sequence: 18
            })
        );
        let long_id = format!("/idle/{}/1", "a".repeat(MAX_TUNNEL_ID_LEN + 1));
        for bad in [
            "",
            "/",
            "/fcs/ident2",
            "/open/2",
            "/open/1/x",
            "/send/abc",
            "/send/abc/-1",
            "/send/abc/x",
            "/send//1",
            "/send/a%2fb/1",
            "/send/abc/1/2",
            "/poll/abc/1",
            "send/abc/1",
            long_id.as_str(),
        ] {
            assert_eq!(RtmptRequest::parse(bad), None, "{bad:?}");
        }
    }

    /// Sends `bytes` through the tunnel and feeds the reply's RTMP bytes to
    /// the client, returning the server's events and the client's results.
    fn exchange(
        tunnels: &mut RtmptTunnels,
        sequence: &mut u64,
        client: &mut ClientSession,
        bytes: &[u8],
    ) -> (Vec<ServerEvent>, Vec<ClientSessionResult>) {
        *sequence += 1;
        let reply = tunnels.send(ID, *sequence, bytes, Instant::now()).unwrap();
        assert_eq!(reply.body[0], 1, "data replies reset the interval");
        let results = client.handle_input(&reply.body[1..]).unwrap();
        (reply.events, results)
    }

    fn outbound(results: Vec<ClientSessionResult>) -> Vec<u8> {
        results
            .into_iter()
            .filter_map(|result| match result {
                ClientSessionResult::OutboundResponse(packet) => Some(packet.bytes),
                _ => None,
            })
            .flatten()
            .collect()
    }

    #[test]
    fn a_client_publishes_through_the_tunnel() {
        let start = Instant::now();
        let mut tunnels = RtmptTunnels::new(ServerConfig::default(), 4);
        assert_eq!(tunnels.open(ID, start).unwrap(), b"f3a9c2e1-7b4d\n");

        let mut handshake = Handshake::new(PeerType::Client);
        let mut sequence = 0;
        let c0_c1 = handshake.generate_outbound_p0_and_p1().unwrap();
        sequence += 1;
        let reply = tunnels.send(ID, sequence, &c0_c1, start).unwrap();
        assert_eq!(
            reply.body.len(),
            1 + 1 + 2 * 1536,
            "interval byte, S0, S1, S2"
        );
        let HandshakeProcessResult::Completed {
            response_bytes: c2, ..
        } = handshake.process_bytes(&reply.body[1..]).unwrap()
        else {
            panic!("the client's handshake did not complete");
        };
        sequence += 1;
        let reply = tunnels.send(ID, sequence, &c2, start).unwrap();
        assert_eq!(reply.body, [1], "nothing to say after C2");

        let (mut client, _) = ClientSession::new(ClientSessionConfig::new()).unwrap();
        let connect = outbound(vec![client.request_connection("live".to_owned()).unwrap()]);
        let (_, results) = exchange(&mut tunnels, &mut sequence, &mut client, &connect);
        assert!(results.iter().any(|result| matches!(
            result,
            ClientSessionResult::RaisedEvent(ClientSessionEvent::ConnectionRequestAccepted)
        )));

        let create = outbound(vec![client
            .request_publishing("up".to_owned(), PublishRequestType::Live)
            .unwrap()]);
        let (_, results) = exchange(&mut tunnels, &mut sequence, &mut client, &create);
        let publish = outbound(results);
        let (events, _) = exchange(&mut tunnels, &mut sequence, &mut client, &publish);
        let [ServerEvent::PublishRequested { stream_id, .. }] = events.as_slice() else {
            panic!("expected a publish request, got {events:?}");
        };

        // The answer waits for the client's next poll; the idle body's byte
        // is not fed to the RTMP session.
        tunnels
            .session_mut(ID)
            .unwrap()
            .accept_publish(*stream_id)
            .unwrap();
        sequence += 1;
        let reply = tunnels.idle(ID, sequence, start).unwrap();
        assert_eq!(reply.body[0], 1);
        let results = client.handle_input(&reply.body[1..]).unwrap();
        assert!(results.iter().any(|result| matches!(
            result,
            ClientSessionResult::RaisedEvent(ClientSessionEvent::PublishRequestAccepted)
        )));

        assert_eq!(tunnels.close(ID).unwrap(), [0]);
        assert!(matches!(
            tunnels.idle(ID, sequence + 1, start),
            Err(RtmptError::UnknownTunnel)
        ));
    }

    #[test]
    fn idle_polls_back_off_and_out_of_order_requests_are_refused() {
        let start = Instant::now();
        let mut tunnels = RtmptTunnels::new(ServerConfig::default(), 4);
        tunnels.open(ID, start).unwrap();
        let intervals: Vec<u8> = (1..=25)
            .map(|sequence| tunnels.idle(ID, sequence, start).unwrap().body[0])
            .collect();
        assert_eq!(intervals[..9], [1; 9]);
        assert_eq!(intervals[10..19], [2; 9]);
        assert_eq!(intervals[24], 3);
        assert!(matches!(
            tunnels.idle(ID, 25, start),
            Err(RtmptError::OutOfOrder {
                sequence: 25,
                last: 25
            })
        ));
        assert!((0..10_000_u64)
            .map(|sequence| tunnels.idle(ID, 100 + sequence, start).unwrap().body[0])
            .all(|interval| interval <= MAX_POLLING_INTERVAL));
    }

    #[test]
    fn garbage_closes_only_its_tunnel() {
        let start = Instant::now();
        let mut tunnels = RtmptTunnels::new(ServerConfig::default(), 4);
        tunnels.open("good", start).unwrap();
        tunnels.open("bad", start).unwrap();
        assert!(matches!(
            tunnels.send("bad", 1, b"GET / HTTP/1.1\r\n", start),
            Err(RtmptError::Rtmp(_))
        ));
        assert!(matches!(
            tunnels.idle("bad", 2, start),
            Err(RtmptError::UnknownTunnel)
        ));
        assert!(tunnels.idle("good", 1, start).is_ok());
    }

    #[test]
    fn tunnels_are_bounded_unique_and_expire() {
        let start = Instant::now();
        let mut tunnels = RtmptTunnels::new(ServerConfig::default(), 2);
        assert!(matches!(
            tunnels.open("has/slash", start),
            Err(RtmptError::InvalidTunnelId)
        ));
        tunnels.open("a", start).unwrap();
        assert!(matches!(
            tunnels.open("a", start),
            Err(RtmptError::DuplicateTunnel)
        ));
        tunnels.open("b", start).unwrap();
        assert!(matches!(
            tunnels.open("c", start),
            Err(RtmptError::TooManyTunnels { max: 2 })
        ));

        let later = start + Duration::from_secs(20);
        tunnels.idle("b", 1, later).unwrap();
        assert_eq!(tunnels.expire(later, Duration::from_secs(15)), ["a"]);
        assert!(tunnels.session_mut("a").is_none());
        assert!(tunnels.session_mut("b").is_some());
        assert!(matches!(tunnels.close("a"), Err(RtmptError::UnknownTunnel)));
    }
}
