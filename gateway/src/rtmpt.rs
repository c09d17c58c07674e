//! RTMPT on the HTTP port: RTMP tunnelled through POST requests, for Flash
//! clients behind proxies that let only HTTP out. The tunnels and their
//! sessions are `dialtone-rtmp`'s [`RtmptTunnels`]; each tunnel has its own
//! [`RtmpClient`] routing its streams, as a TCP connection does. Audio for
//! a tunnel's players waits in its client until the next request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use dialtone_rtmp::{RtmptError, RtmptReply, RtmptRequest, RtmptTunnels, ServerConfig};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::rtmp_streams::{RtmpClient, RtmpStreams};

/// Tunnels without a request for this long are dropped (Flash polls every
/// few seconds at most).
const TUNNEL_SILENCE: Duration = Duration::from_secs(30);
const CONTENT_TYPE: &str = "application/x-fcs";

pub struct Rtmpt {
    streams: Arc<RtmpStreams>,
    /// Anyone may open a tunnel, so one address gets only a share of them:
    /// anonymous opens from one place must not shut everyone else out.
    max_tunnels_per_ip: usize,
    state: Mutex<State>,
}

struct State {
    tunnels: RtmptTunnels,
    clients: HashMap<String, Tunnel>,
}

/// The gateway's side of one tunnel.
struct Tunnel {
    client: RtmpClient,
    opened_by: IpAddr,
}

impl Rtmpt {
    pub fn new(
        streams: Arc<RtmpStreams>,
        max_tunnels: usize,
        max_tunnels_per_ip: usize,
    ) -> Arc<Rtmpt> {
        Arc::new(Rtmpt {
            streams,
            max_tunnels_per_ip,
            state: Mutex::new(State {
                tunnels: RtmptTunnels::new(ServerConfig::default(), max_tunnels),
                clients: HashMap::new(),
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops silent tunnels until `stop` is cancelled.
    pub async fn expire_silent(self: Arc<Self>, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(TUNNEL_SILENCE / 6);
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    let mut state = self.state();
                    for tunnel in state.tunnels.expire(Instant::now(), TUNNEL_SILENCE) {
                        info!(%tunnel, "RTMPT tunnel expired");
                        state.clients.remove(&tunnel);
                    }
                }
                _ = stop.cancelled() => return,
            }
        }
    }

    /// One RTMPT request (404 for what is not one, or not answerable).
    pub fn handle(&self, uri: &Uri, body: &[u8], peer: IpAddr) -> Response {
        let Some(request) = RtmptRequest::parse(uri.path()) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let now = Instant::now();
        let mut state = self.state();
        let State { tunnels, clients } = &mut *state;
        let result = match request {
            RtmptRequest::Open => {
                let from_peer = clients
                    .values()
                    .filter(|tunnel| tunnel.opened_by == peer)
                    .count();
                if from_peer >= self.max_tunnels_per_ip {
                    debug!(%peer, from_peer, "RTMPT open refused: the address has its share");
                    return StatusCode::SERVICE_UNAVAILABLE.into_response();
                }
                let id = crate::session::new_id();
                let opened = tunnels.open(&id, now);
                if opened.is_ok() {
                    info!(tunnel = %id, "RTMPT tunnel opened");
                    let client = RtmpClient::new(self.streams.clone());
                    let tunnel = Tunnel {
                        client,
                        opened_by: peer,
                    };
                    clients.insert(id, tunnel);
                }
                opened
            }
            RtmptRequest::Send { tunnel, sequence } => {
                pass_player_audio(tunnels, clients, tunnel);
                let reply = tunnels.send(tunnel, sequence, body, now);
                finish_reply(tunnels, clients, tunnel, reply)
            }
            RtmptRequest::Idle { tunnel, sequence } => {
                pass_player_audio(tunnels, clients, tunnel);
                let reply = tunnels.idle(tunnel, sequence, now);
                finish_reply(tunnels, clients, tunnel, reply)
            }
            RtmptRequest::Close { tunnel, .. } => {
                clients.remove(tunnel);
                info!(%tunnel, "RTMPT tunnel closed");
                tunnels.close(tunnel)
            }
        };
        match result {
            Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
            Err(error) => {
                debug!(%error, path = uri.path(), "RTMPT request refused");
                if let RtmptRequest::Send { tunnel, .. } | RtmptRequest::Idle { tunnel, .. } =
                    request
                {
                    // A session that failed is gone with its tunnel.
                    if matches!(error, RtmptError::Rtmp(_)) {
                        clients.remove(tunnel);
                        let _ = tunnels.close(tunnel);
                    }
                }
                StatusCode::NOT_FOUND.into_response()
            }
        }
    }
}

/// Audio the rooms sent this tunnel's players since its last request.
fn pass_player_audio(
    tunnels: &mut RtmptTunnels,
    clients: &mut HashMap<String, Tunnel>,
    tunnel: &str,
) {
    let (Some(session), Some(Tunnel { client, .. })) =
        (tunnels.session_mut(tunnel), clients.get_mut(tunnel))
    else {
        return;
    };
    while let Some(message) = client.try_next_for_players() {
        client.deliver(session, message);
    }
}

/// Acts on the request's events and adds the session's answers to the
/// reply, so a publish is accepted in the same round trip.
fn finish_reply(
    tunnels: &mut RtmptTunnels,
    clients: &mut HashMap<String, Tunnel>,
    tunnel: &str,
    reply: Result<RtmptReply, RtmptError>,
) -> Result<Vec<u8>, RtmptError> {
    let RtmptReply { mut body, events } = reply?;
    let (Some(session), Some(Tunnel { client, .. })) =
        (tunnels.session_mut(tunnel), clients.get_mut(tunnel))
    else {
        return Ok(body);
    };
    client.on_events(session, events)?;
    body.extend(session.take_output());
    Ok(body)
}
