//! The RTP side of one SIP call: a task on the call's leased RTP socket
//! that latches onto the far end (symmetric RTP), watches for dead media,
//! reports the far end's RFC 4733 digits and sends ours. It drives the
//! sans-IO state machines of [`crate::media`]; audio bridging comes with
//! rooms.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::media::inactivity::{InactivityConfig, InactivityTimer, MediaTimeout};
use crate::media::rtp::{RtpPacket, RtpSender};
use crate::media::symmetric::{LatchConfig, LatchDecision, RtpLatch};
use crate::media::telephone_event::{
    DigitEvent, DtmfSenderConfig, TelephoneEventReceiver, TelephoneEventSender, DEFAULT_END_TIMEOUT,
};

/// What was negotiated for the leg.
#[derive(Debug, Clone, Copy)]
pub struct LegSetup {
    /// The far end's RTP address from its SDP (the latch may move it).
    pub remote: SocketAddr,
    /// The negotiated telephone-event payload type, if any.
    pub telephone_event: Option<u8>,
    pub rtp_timeout: Duration,
}

#[derive(Debug)]
pub enum LegCommand {
    /// Digits to send as RFC 4733 events (the leg has a telephone-event
    /// payload type).
    SendDigits(String),
    /// A re-INVITE moved the far end.
    RemoteMoved(SocketAddr),
}

#[derive(Debug)]
pub enum LegEvent {
    Digit(char),
    MediaTimeout(MediaTimeout),
}

/// The call's handle on its leg; dropping it stops the leg.
pub struct RtpLeg {
    pub commands: mpsc::UnboundedSender<LegCommand>,
    pub events: mpsc::UnboundedReceiver<LegEvent>,
    /// The far end negotiated telephone-event: digits go as RFC 4733.
    pub carries_events: bool,
}

const FRAME: Duration = Duration::from_millis(20);
/// Timestamp units of a 20 ms frame at the 8 kHz telephone-event clock.
const FRAME_UNITS: u32 = 160;
const MAX_DATAGRAM: usize = 1500;

impl RtpLeg {
    pub fn start(socket: UdpSocket, setup: LegSetup, tasks: &TaskTracker) -> RtpLeg {
        let (commands, command_receiver) = mpsc::unbounded_channel();
        let (event_sender, events) = mpsc::unbounded_channel();
        tasks.spawn(run(socket, setup, command_receiver, event_sender));
        RtpLeg {
            commands,
            events,
            carries_events: setup.telephone_event.is_some(),
        }
    }
}

async fn run(
    socket: UdpSocket,
    setup: LegSetup,
    mut commands: mpsc::UnboundedReceiver<LegCommand>,
    events: mpsc::UnboundedSender<LegEvent>,
) {
    let started = Instant::now().into_std();
    let mut latch = RtpLatch::new(Some(setup.remote), LatchConfig::default());
    let mut inactivity = InactivityTimer::new(
        InactivityConfig {
            start_timeout: setup.rtp_timeout,
            stop_timeout: setup.rtp_timeout,
        },
        started,
    );
    let mut digits_in = TelephoneEventReceiver::new(8000, DEFAULT_END_TIMEOUT);
    let mut digits_out = TelephoneEventSender::new(DtmfSenderConfig::default());
    let mut rtp = RtpSender::new(rand::random(), rand::random(), rand::random());
    let mut ticks = tokio::time::interval(FRAME);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut incoming = [0u8; MAX_DATAGRAM];
    let mut outgoing = [0u8; MAX_DATAGRAM];

    loop {
        let deadline = earliest(inactivity.next_deadline(), digits_in.next_deadline());
        tokio::select! {
            received = socket.recv_from(&mut incoming) => {
                let Ok((length, source)) = received else { continue };
                let now = Instant::now().into_std();
                let Ok(packet) = RtpPacket::parse(&incoming[..length]) else { continue };
                if latch.on_packet(source, packet.header.ssrc) == LatchDecision::Reject {
                    continue;
                }
                inactivity.on_packet(now);
                if Some(packet.header.payload_type) == setup.telephone_event {
                    match digits_in.on_packet(packet.header.timestamp, packet.payload, now) {
                        Ok(digit_events) => {
                            for event in digit_events {
                                report_digit(&events, event);
                            }
                        }
                        Err(error) => debug!(%error, "unreadable telephone-event"),
                    }
                }
            }
            _ = sleep_until_std(deadline) => {
                let now = Instant::now().into_std();
                while let Some(event) = digits_in.poll(now) {
                    report_digit(&events, event);
                }
                if let Some(timeout) = inactivity.poll(now) {
                    info!(?timeout, "no RTP from the far end");
                    let _ = events.send(LegEvent::MediaTimeout(timeout));
                    return;
                }
            }
            _ = ticks.tick(), if !digits_out.is_idle() => {
                let (Some(payload_type), Some(destination)) = (setup.telephone_event, latch.destination()) else {
                    continue;
                };
                let now = Instant::now().into_std();
                while let Some(packet) = digits_out.poll(now, rtp.next_timestamp()) {
                    match rtp.packet_with_timestamp(&packet.event.to_bytes(), packet.timestamp, packet.marker, payload_type, &mut outgoing) {
                        Ok(length) => {
                            if let Err(error) = socket.send_to(&outgoing[..length], destination).await {
                                warn!(%error, "cannot send telephone-event");
                            }
                        }
                        Err(error) => warn!(%error, "cannot build telephone-event"),
                    }
                }
                // No audio is bridged yet: the clock moves on every frame.
                rtp.skip(FRAME_UNITS);
            }
            command = commands.recv() => match command {
                Some(LegCommand::SendDigits(digits)) => {
                    if let Err(error) = digits_out.enqueue(&digits, Instant::now().into_std()) {
                        warn!(%error, "digits not queued");
                    }
                }
                Some(LegCommand::RemoteMoved(remote)) => latch.update_signalled(Some(remote)),
                None => return,
            },
        }
    }
}

fn report_digit(events: &mpsc::UnboundedSender<LegEvent>, event: DigitEvent) {
    if let DigitEvent::DigitStarted(digit) = event {
        let _ = events.send(LegEvent::Digit(digit));
    }
}

fn earliest(
    a: Option<std::time::Instant>,
    b: Option<std::time::Instant>,
) -> Option<std::time::Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn sleep_until_std(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(Instant::from_std(deadline)).await,
        None => std::future::pending().await,
    }
}
