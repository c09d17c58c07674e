//! Built-in test lines, answered by the gateway's own SIP user agent so a
//! call to them crosses the whole path (WebSocket → SIP → RTP and back):
//!
//! - `echo`: returns every audio packet it receives;
//! - `tone`: plays a 1 kHz tone in the negotiated codec;
//! - `digits`: sends back, as RFC 4733 events, each digit it receives, and
//!   logs it.
//!
//! A newcomer with no PBX dials `echo`, `tone` or `digits`; with a PBX
//! they are `sip:echo@<gateway SIP address>`.
//!
//! They must not become a reflector for strangers (an INVITE naming a
//! victim's address, never ACKed): they are off by default unless the
//! gateway is a local open one, answer only INVITEs sent by the gateway
//! itself unless `calls.test_lines_public`, send media only once the ACK
//! came, and end after `calls.test_line_max_ms`.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use dialtone_room::symmetric::LatchConfig;
use dialtone_room::{Line, PointConfig, PointId};
use dialtone_sip::sdp::{self, Direction, LocalAudio};
use dialtone_sip::{CallEvent, IncomingCall, IncomingCalls};
use tracing::{info, info_span, warn, Instrument};

use crate::media_room::{MediaRoom, PointIo};
use crate::state::Gateway;

/// Answers calls to the test lines until the gateway stops. The listeners
/// live as long as the gateway and are not counted as tasks in /status;
/// each call they answer is.
pub fn serve(gateway: &Arc<Gateway>) {
    for line in Line::ALL {
        let calls = gateway.sip.incoming_calls(line.name());
        tokio::spawn(answer_calls(gateway.clone(), line, calls));
    }
}

async fn answer_calls(gateway: Arc<Gateway>, line: Line, mut calls: IncomingCalls) {
    loop {
        let call = tokio::select! {
            _ = gateway.shutdown.cancelled() => return,
            call = calls.next() => match call {
                Some(call) => call,
                None => return,
            },
        };
        let span = info_span!("test_line", line = line.name(), caller = %call.caller);
        gateway
            .tasks
            .spawn(answer(gateway.clone(), line, call).instrument(span));
    }
}

/// Whether the INVITE came from the gateway's own SIP address (a session
/// of ours calling the line), or anyone may call.
fn may_call(gateway: &Gateway, source: Option<SocketAddr>) -> bool {
    gateway.config.calls.test_lines_public
        || source.is_some_and(|source| {
            source == gateway.sip.local_addr() || source == gateway.sip.advertised_addr()
        })
}

async fn answer(gateway: Arc<Gateway>, line: Line, incoming: IncomingCall) {
    let IncomingCall {
        offer,
        call,
        source,
        ..
    } = incoming;
    let control = call.control;
    let mut events = call.events;
    if !may_call(&gateway, source) {
        info!(
            ?source,
            "test line refuses a caller from outside the gateway (calls.test_lines_public is off)"
        );
        control.reject(403);
        return;
    }
    let Some(lease) = gateway.ports.lease() else {
        control.reject(503);
        return;
    };
    let negotiated = offer
        .as_deref()
        .ok_or_else(|| "no SDP offer".to_string())
        .and_then(|offer| sdp::parse_remote(offer).map_err(|e| e.to_string()))
        .and_then(|remote| {
            let ours = LocalAudio {
                address: gateway.sip.advertised_addr().ip(),
                port: lease.rtp_port(),
                codecs: sdp::sip_codecs(),
                direction: Direction::SendRecv,
                session_id: u64::from(lease.rtp_port()),
                version: 1,
                crypto: Vec::new(),
            };
            let answer = sdp::answer(&remote, &ours).map_err(|e| e.to_string())?;
            Ok((remote, answer))
        });
    let (remote, answer) = match negotiated {
        Ok(negotiated) => negotiated,
        Err(problem) => {
            warn!(%problem, "test line cannot answer");
            control.reject(488);
            return;
        }
    };
    control.accept(answer.clone());
    info!("test line answered; media waits for the ACK");
    // Its own deadline, counted from the answer: a forgotten call ends.
    let mut deadline = pin!(tokio::time::sleep(Duration::from_millis(
        gateway.config.calls.test_line_max_ms
    )));
    let acked = loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(CallEvent::Established { .. }) => break true,
                Some(CallEvent::Ended { .. } | CallEvent::Failed { .. }) | None => break false,
                Some(_) => {}
            },
            _ = &mut deadline => break false,
            _ = gateway.shutdown.cancelled() => break false,
        }
    };
    if !acked {
        // Nothing was sent to the address the offer named.
        info!("test line call ended before the ACK; no media sent");
        control.hangup();
        return;
    }
    let socket = match lease.rtp_socket() {
        Ok(socket) => socket,
        Err(error) => {
            warn!(%error, "test line has no RTP socket");
            control.hangup();
            return;
        }
    };
    // The caller's leg and the line, as two points of one room.
    let audio = crate::call::first_bridged(&answer.codecs);
    let telephone_event = crate::call::telephone_event(&answer.codecs);
    let room = MediaRoom::start(&gateway.media);
    // Nothing the room says of the two points matters here but that it ends.
    let (sink, mut news) = tokio::sync::mpsc::unbounded_channel();
    let caller = SocketAddr::new(remote.address, remote.port);
    let io = PointIo {
        rtp: Some(socket),
        ..PointIo::default()
    };
    // The caller's leg is a SIP leg like any other: strict source as configured.
    let leg = PointConfig::rtp(caller, audio, telephone_event)
        .latching(LatchConfig::strict(gateway.config.media.strict_source));
    room.add_point(CALLER, leg, io, sink.clone());
    room.add_point(
        LINE,
        PointConfig::line(line, audio, telephone_event),
        PointIo::default(),
        sink,
    );
    let ended = async {
        while let Some(event) = events.recv().await {
            if matches!(event, CallEvent::Ended { .. } | CallEvent::Failed { .. }) {
                return;
            }
        }
    };
    let room_events = async { while news.recv().await.is_some() {} };
    tokio::select! {
        _ = ended => info!("test line call ended"),
        _ = room_events => {}
        _ = deadline => {
            info!("test line call reached calls.test_line_max_ms; hanging up");
            control.hangup();
        }
        _ = gateway.shutdown.cancelled() => control.hangup(),
    }
    drop(lease);
}

const CALLER: PointId = PointId(0);
const LINE: PointId = PointId(1);
