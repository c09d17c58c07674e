//! The Dialtone gateway: configuration, client sessions, the HTTP server
//! (WebSocket, the web page, RTMPT, status, metrics), the RTMP listeners,
//! calls, media points and the registry of rooms (who owns and who may
//! join each), the driver task of each media room (its sockets, streams,
//! timer and recording files) and the wiring between the protocol crates.
//!
//! Protocol details live in the `dialtone-ws` (client protocol) and
//! `dialtone-sip` (SIP) crates, media logic in `dialtone-room`; this crate
//! decides what a session is and what happens when a client comes and
//! goes, and it owns every socket and clock read.

mod call;
mod call_slots;
mod caller;
mod client_point;
pub mod config;
mod connection;
mod dial_plan;
mod fast_path;
mod hold_music;
mod http;
mod limits;
pub mod logging;
mod media_engine;
mod media_points;
mod media_ports;
mod media_room;
mod metrics;
mod rate_limit;
mod recording;
mod rooms;
mod rtmp_server;
mod rtmp_streams;
mod rtmpt;
mod session;
mod srtp;
mod state;
mod test_lines;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dialtone_sip::{UserAgent, UserAgentConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{AuthMode, Config};
use crate::media_ports::PortPool;
use crate::metrics::Metrics;
use crate::rooms::Rooms;
use crate::rtmp_streams::RtmpStreams;
use crate::rtmpt::Rtmpt;
use crate::state::Gateway;
use dialtone_room::webrtc::{WebRtcSettings, WebRtcTimeouts};

pub use crate::limits::limit_malloc_arenas;

/// How often a drain looks whether the last call has ended. Calls end in
/// many places; the calls gauge is the one count of them all.
const DRAIN_CHECK: Duration = Duration::from_millis(200);

/// What ends the gateway. `drain`: no new connections or sessions, calls
/// in progress go on, and once none is left (or `shutdown.drain_timeout_ms`
/// has passed) `stop` follows. `stop`: every session is closed now.
#[derive(Clone, Default)]
pub struct Shutdown {
    pub drain: CancellationToken,
    pub stop: CancellationToken,
}

/// Runs the gateway until `shutdown.stop` is cancelled (by the caller or
/// at the end of a drain), then closes every session (unregistering it)
/// before returning.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let Shutdown { drain, stop } = shutdown;
    limits::raise_fd_limit();
    let sip = UserAgent::start(UserAgentConfig {
        listen: config.sip.listen,
        public_ip: config.sip.public_ip,
        user_agent: config.sip.user_agent.clone(),
        t1: Duration::from_millis(config.sip.t1_ms.max(1)),
        dialog_keepalive: Duration::from_millis(config.sip.dialog_keepalive_ms.max(100)),
        max_queued_infos: config.limits.info_digit_queue,
        tcp_idle_timeout: config.limits.sip_tcp_idle_timeout(),
        admit_tcp: {
            let gate = limits::ConnectionGate::new(
                "SIP-TCP",
                config.limits.max_connections,
                config.limits.max_connections_per_ip,
            );
            Arc::new(move |ip| {
                let admission = gate.admit(ip).ok()?;
                Some(Box::new(admission) as Box<dyn Send>)
            })
        },
        udp_receive_buffer: config.sip.udp_receive_buffer,
        tls: dialtone_sip::SipTlsConfig {
            ca_file: config.sip.tls_ca_file.clone(),
            client_certificate: config.sip.tls_client_cert.clone(),
            client_key: config.sip.tls_client_key.clone(),
        },
        dns_servers: config.sip.dns_servers.clone(),
        failover_timeout: Duration::from_millis(config.sip.failover_timeout_ms.max(1)),
    })
    .await?;
    let listener = limits::listen(config.http.listen)
        .with_context(|| format!("cannot listen for HTTP on {}", config.http.listen))?;
    let http_addr = listener.local_addr()?;
    let https = match (&config.http.tls_cert, &config.http.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key, "http")?),
        _ => None,
    };
    let rtmpt_scheme = if https.is_some() { "rtmpts" } else { "rtmpt" };
    if config.auth_mode() == AuthMode::Open {
        warn!("no registrar and no users configured: any user name may start a session (auth = \"open\")");
    }
    let metrics = Metrics::new(&config.limits());
    let ports = PortPool::new(
        sip.local_addr().ip(),
        config.media.rtp_port_min,
        config.media.rtp_port_max,
        metrics.media_ports.clone(),
    );
    let webrtc = WebRtcSettings::new(
        config
            .webrtc
            .public_ip
            .unwrap_or_else(|| sip.advertised_addr().ip()),
        WebRtcTimeouts {
            connect: Duration::from_millis(config.webrtc.connect_timeout_ms),
            consent: Duration::from_millis(config.webrtc.consent_timeout_ms),
        },
    )?;
    let rtmp = match config.rtmp.enabled.then_some(config.rtmp.listen) {
        Some(address) => Some(
            limits::listen(address)
                .with_context(|| format!("cannot listen for RTMP on {address}"))?,
        ),
        None => None,
    };
    let tls = (
        &config.rtmp.tls_listen,
        &config.rtmp.tls_cert,
        &config.rtmp.tls_key,
    );
    let rtmps = match tls {
        (Some(address), Some(cert), Some(key)) if config.rtmp.enabled => {
            let acceptor = tls::acceptor(cert, key, "rtmp")?;
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen for RTMPS on {address}"))?;
            Some((listener, acceptor))
        }
        _ => None,
    };
    let rtmps_addr = rtmps
        .as_ref()
        .and_then(|(listener, _)| listener.local_addr().ok());
    let rtmp_addr = rtmp
        .as_ref()
        .and_then(|listener| listener.local_addr().ok());
    let rtmp_streams = RtmpStreams::new(config.limits.rtmp_frame_queue);
    let rtmpt = rtmp_addr.map(|_| {
        Rtmpt::new(
            rtmp_streams.clone(),
            config.limits.max_rtmpt_tunnels,
            config.limits.max_rtmpt_tunnels_per_ip,
        )
    });
    let rtmp_urls = rtmp_urls(
        &config,
        [rtmp_addr, rtmps_addr, rtmp_addr.map(|_| http_addr)],
        rtmpt_scheme,
        sip.advertised_addr().ip(),
    );
    let rooms = Arc::new(Rooms::new(metrics.clone(), config.rooms.max_rooms));
    let config_login_limits = config.login_limits();
    let config_max_calls = config.calls.max_calls;
    let plan = dial_plan::DialPlan::new(&config.calls.allow, &config.calls.deny)?;
    let hold_music = config.hold_music()?;
    let caller_numbers = dial_plan::CallerNumbers::new(&config.calls.caller_numbers)?;
    let opus = dialtone_codecs::OpusSettings {
        complexity: config.media.opus_complexity,
        bitrate_bps: config.media.opus_bitrate,
    };
    if dialtone_codecs::set_opus_settings(opus).is_err() {
        warn!("Opus encoder settings were set before; media.opus_* ignored");
    }
    let tasks = TaskTracker::new();
    let complexity = media_engine::ComplexityPolicy {
        least: config.media.opus_complexity,
        most: config
            .media
            .opus_complexity_max
            .max(config.media.opus_complexity),
    };
    let fast_path = config
        .media
        .kernel_fast_path
        .then(|| {
            let ports = u32::from(config.media.rtp_port_max - config.media.rtp_port_min) + 1;
            fast_path::FastPath::start(
                ports,
                metrics.kernel_relays.clone(),
                metrics.kernel_forwarded_packets.clone(),
            )
            .map_err(|error| info!(%error, "kernel fast path off: the gateway relays every packet"))
            .ok()
        })
        .flatten();
    let media = media_engine::MediaEngine::start(
        config.media.threads,
        tasks.clone(),
        complexity,
        fast_path,
    )?;
    let gateway = Arc::new(Gateway {
        rooms,
        config,
        webrtc,
        rtmp_addr,
        rtmp_streams,
        rtmpt,
        rtmp_urls,
        sip: sip.clone(),
        metrics,
        ports,
        call_media: Default::default(),
        tasks,
        media,
        login_limiter: std::sync::Mutex::new(rate_limit::LoginLimiter::new(config_login_limits)),
        dial_plan: plan,
        hold_music,
        caller_numbers,
        calls_held: call_slots::CallCount::new(config_max_calls),
        shutdown: stop.clone(),
        draining: drain,
    });
    tokio::spawn(stop_when_drained(gateway.clone()));
    if gateway.config.test_lines_on() {
        test_lines::serve(&gateway);
    }
    // The listener and the tunnel sweeper live as long as the gateway:
    // not counted with the connections' and sessions' tasks.
    if let Some(rtmpt) = &gateway.rtmpt {
        tokio::spawn(rtmpt.clone().expire_silent(stop.clone()));
    }
    let bounds = &gateway.config.limits;
    let rtmp_listeners = [
        rtmp.map(|listener| (listener, None)),
        rtmps.map(|(listener, acceptor)| (listener, Some(acceptor))),
    ];
    for (listener, tls) in rtmp_listeners.into_iter().flatten() {
        let name = if tls.is_some() { "RTMPS" } else { "RTMP" };
        let gate = limits::ConnectionGate::new(
            name,
            bounds.max_connections,
            bounds.max_connections_per_ip,
        );
        tokio::spawn(rtmp_server::serve(
            listener,
            tls,
            gate,
            bounds.into(),
            gateway.rtmp_streams.clone(),
            gateway.tasks.clone(),
            stop.clone(),
        ));
    }
    let rtmp = rtmp_addr.map_or_else(|| "off".to_string(), |addr| addr.to_string());
    let rtmps = rtmps_addr.map_or_else(|| "off".to_string(), |addr| addr.to_string());
    info!(http = %http_addr, https = https.is_some(), sip = %sip.local_addr(), %rtmp, %rtmps, auth = ?gateway.config.auth_mode(), "dialtone ready");

    http::serve(listener, https, gateway.clone(), stop.clone()).await;

    // Sessions hang up their calls (the BYEs go out) and unregister; a
    // peer that does not answer must not hold the exit, so each step is
    // bounded by the grace (an unanswered BYE alone would take 64 × T1).
    let grace = gateway.config.limits.shutdown_grace();
    gateway.tasks.close();
    if tokio::time::timeout(grace, gateway.tasks.wait())
        .await
        .is_err()
    {
        warn!(
            left = gateway.tasks.len(),
            ?grace,
            "shutdown grace elapsed with sessions still closing"
        );
    }
    if tokio::time::timeout(grace, sip.shutdown()).await.is_err() {
        warn!(
            ?grace,
            "SIP stack still busy at the end of the grace; exiting"
        );
    }
    info!("dialtone stopped");
    Ok(())
}

/// Once a drain starts, stops the gateway when no call is left or when
/// the drain timeout has passed, whichever comes first.
async fn stop_when_drained(gateway: Arc<Gateway>) {
    tokio::select! {
        _ = gateway.draining.cancelled() => {}
        _ = gateway.shutdown.cancelled() => return,
    }
    let timeout = Duration::from_millis(gateway.config.shutdown.drain_timeout_ms);
    info!(
        calls = gateway.metrics.calls.get(),
        ?timeout,
        "draining: no new sessions; calls in progress go on"
    );
    let last_call_ended = async {
        while gateway.metrics.calls.get() > 0 {
            tokio::time::sleep(DRAIN_CHECK).await;
        }
    };
    match tokio::time::timeout(timeout, last_call_ended).await {
        Ok(()) => info!("drained: no call left; stopping"),
        Err(_) => warn!(
            calls = gateway.metrics.calls.get(),
            "drain timeout passed; stopping with calls in progress"
        ),
    }
    gateway.shutdown.cancel();
}

/// The endpoints a Flash SDP lists: the configured ones, else RTMP, RTMPS
/// and RTMPT (on the HTTP port) where they listen, at the advertised
/// address.
fn rtmp_urls(
    config: &Config,
    [rtmp, rtmps, rtmpt]: [Option<std::net::SocketAddr>; 3],
    rtmpt_scheme: &str,
    advertised: std::net::IpAddr,
) -> Vec<String> {
    if !config.rtmp.urls.is_empty() {
        return config.rtmp.urls.clone();
    }
    [("rtmp", rtmp), ("rtmps", rtmps), (rtmpt_scheme, rtmpt)]
        .into_iter()
        .filter_map(|(scheme, address)| {
            let address = std::net::SocketAddr::new(advertised, address?.port());
            Some(format!("{scheme}://{address}/live"))
        })
        .collect()
}
