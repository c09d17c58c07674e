//! A call's media room: one task on the call's sockets that bridges the
//! SIP leg and the client's point, when the client brings one (its own RTP
//! endpoint, a WebRTC peer connection, or RTMP streams: [`rtmp`]). Either
//! side may arrive first: a browser connects its WebRTC point while the
//! phone still rings. In-band DTMF is in [`tones`]. Same
//! codec on both sides: payloads are forwarded as they arrive,
//! renumbered into our own stream. Different codecs: each side's packets go
//! through a jitter buffer and are transcoded every 20 ms. Digits cross as
//! RFC 4733 events where the other side negotiated them. The task drives
//! the sans-IO state machines of [`crate::media`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dialtone_codecs::{Codec, Transcoder, MAX_PAYLOAD_LEN};
use dialtone_rtmp::AudioTag;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::media::inactivity::{InactivityConfig, InactivityTimer, MediaTimeout};
use crate::media::jitter::{JitterBuffer, JitterConfig, Playout};
use crate::media::rtp::{RtpHeader, RtpPacket, RtpSender, SenderCounters};
use crate::media::stats::{MediaStats, MediaStatsConfig, MediaStatsSnapshot};
use crate::media::symmetric::{LatchConfig, LatchDecision, RtpLatch};
use crate::media::telephone_event::{
    DigitEvent, DtmfSenderConfig, TelephoneEventReceiver, TelephoneEventSender, DEFAULT_END_TIMEOUT,
};
use crate::rtmp_streams::{FlvFrame, PlayerJoin, RoomStreams};
use crate::webrtc::{Polled, WebRtcPoint, WebRtcTransport};

mod rtmp;
mod tones;

use rtmp::{Payloads, RtmpTransport, L16_FRAME_BYTES, RTMP_PAYLOAD_TYPE};
use tones::{ToneDetector, Tones};

/// One side of the room, as negotiated.
#[derive(Debug)]
pub struct PointSetup {
    pub socket: UdpSocket,
    /// The far end's RTP address from its SDP (the latch may move it).
    pub remote: SocketAddr,
    /// The negotiated audio payload type and codec, when the bridge can
    /// carry it.
    pub audio: Option<(u8, Codec)>,
    pub telephone_event: Option<u8>,
    /// The far end sends media (its SDP is not `recvonly` / `inactive`).
    pub sends: bool,
}

/// The client's point: its RTP endpoint from its SDP, or a negotiated
/// WebRTC peer, on the point's socket.
#[derive(Debug)]
pub enum ClientSetup {
    Rtp(PointSetup),
    WebRtc {
        point: Box<WebRtcPoint>,
        socket: UdpSocket,
    },
    /// An RTMP client's streams: what it publishes comes in, what the room
    /// sends goes to its players in `send` (an FLV codec the bridge encodes).
    Rtmp {
        streams: RoomStreams,
        send: Codec,
    },
}

/// Index of the SIP side in the room; the client's point is the other.
const SIP: usize = 0;
const CLIENT: usize = 1;

#[derive(Debug)]
pub enum RoomCommand {
    /// Digits for the SIP side as RFC 4733 events.
    SendDigits(String),
    /// Digits for the SIP side as in-band tones in its audio.
    SendTones(String),
    /// A digit the SIP side sent by INFO, for the client's point as an
    /// event.
    DigitToClient(char),
    /// A re-INVITE or UPDATE changed the SIP far end: where it is, and
    /// whether it sends media (not on hold with `recvonly` / `inactive`).
    RemoteChanged { remote: SocketAddr, sends: bool },
    /// The SIP side, once the call is answered, with its RTCP socket;
    /// `detect_tones` looks for in-band DTMF in its audio.
    AddSip {
        setup: PointSetup,
        rtcp: UdpSocket,
        detect_tones: bool,
    },
    /// The client's point, once its SDP is known.
    AddClient(ClientSetup),
    /// An ICE candidate the client trickled for its WebRTC point.
    ClientCandidate(String),
}

#[derive(Debug)]
pub enum RoomEvent {
    /// A digit the SIP far end sent, and how (`RFC4733`, `INBAND`).
    Digit {
        digit: char,
        method: &'static str,
    },
    /// A digit from the client's RTP that the SIP side cannot take as an
    /// event: the call sends it by SIP INFO.
    DigitForInfo(char),
    MediaTimeout(MediaTimeout),
    /// The client's WebRTC point could not connect or lost connectivity.
    ClientMediaFailed(String),
}

/// The call's handle on its room; dropping it stops the room.
pub struct MediaRoom {
    pub commands: mpsc::UnboundedSender<RoomCommand>,
    pub events: mpsc::UnboundedReceiver<RoomEvent>,
    /// The SIP far end negotiated telephone-event: digits go as RFC 4733.
    pub carries_events: bool,
    /// The SIP side's media statistics, refreshed with each RTCP report.
    pub stats: watch::Receiver<Option<MediaStatsSnapshot>>,
}

const FRAME: Duration = Duration::from_millis(20);
/// How often the statistics the call and /status read are refreshed.
const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);
const MAX_DATAGRAM: usize = 1500;

impl MediaRoom {
    /// Starts an empty room; `rtp_timeout` applies to the SIP side from
    /// when it is added.
    pub fn start(rtp_timeout: Duration, tasks: &TaskTracker) -> MediaRoom {
        let (commands, command_receiver) = mpsc::unbounded_channel();
        let (event_sender, events) = mpsc::unbounded_channel();
        let (stats_sender, stats) = watch::channel(None);
        let room = Room {
            stats_sender,
            rtp_timeout,
        };
        tasks.spawn(room.run(command_receiver, event_sender));
        MediaRoom {
            commands,
            events,
            carries_events: false,
            stats,
        }
    }

    /// Adds the SIP side (`rtcp` is its RTCP socket).
    pub fn add_sip(&mut self, setup: PointSetup, rtcp: UdpSocket, detect_tones: bool) {
        self.carries_events = setup.telephone_event.is_some();
        let _ = self.commands.send(RoomCommand::AddSip {
            setup,
            rtcp,
            detect_tones,
        });
    }
}

struct Point {
    /// `None` for an RTMP point, whose frames arrive by channel.
    socket: Option<Arc<UdpSocket>>,
    transport: Transport,
    /// The payload type and codec we send this point.
    audio: Option<(u8, Codec)>,
    /// What its far end sends: the same, except for an RTMP publisher,
    /// whose codec is known from its first frame.
    receive: Option<(u8, Codec)>,
    /// The payload type of the events we send this point, if it takes them.
    telephone_event: Option<u8>,
    /// The payload types this point's events arrive with.
    received_events: Vec<u8>,
    sender: RtpSender,
    jitter: JitterBuffer,
    digits_in: TelephoneEventReceiver,
    digits_out: TelephoneEventSender,
    /// Decodes this point's audio into the other point's codec.
    transcoder: Option<Transcoder>,
    /// Whether an audio packet went to this point since the last tick, so
    /// the clock is not advanced twice.
    sent_audio: bool,
    /// In-band DTMF toward this point's far end (the SIP side only).
    tones: Option<Tones>,
    /// Detects in-band DTMF in this point's audio (the SIP side, when it
    /// cannot send events).
    detector: Option<ToneDetector>,
}

/// How a point's packets travel: plain RTP to wherever its far end sends
/// from (symmetric RTP), SRTP through a WebRTC peer connection, or FLV
/// audio tags over RTMP.
enum Transport {
    Rtp(RtpLatch),
    WebRtc(Box<WebRtcTransport>),
    Rtmp(Box<RtmpTransport>),
}

impl Point {
    fn new(socket: Option<UdpSocket>, transport: Transport, audio: Option<(u8, Codec)>) -> Point {
        Point {
            socket: socket.map(Arc::new),
            transport,
            audio,
            receive: audio,
            telephone_event: None,
            received_events: Vec::new(),
            sender: RtpSender::new(rand::random(), rand::random(), rand::random()),
            jitter: JitterBuffer::new(JitterConfig::default()),
            digits_in: TelephoneEventReceiver::new(8000, DEFAULT_END_TIMEOUT),
            digits_out: TelephoneEventSender::new(DtmfSenderConfig::default()),
            transcoder: None,
            sent_audio: false,
            tones: None,
            detector: None,
        }
    }

    fn rtp(setup: PointSetup) -> Point {
        let latch = RtpLatch::new(Some(setup.remote), LatchConfig::default());
        let mut point = Point::new(Some(setup.socket), Transport::Rtp(latch), setup.audio);
        point.telephone_event = setup.telephone_event;
        point.received_events.extend(setup.telephone_event);
        point
    }

    /// The client's point, and for an RTMP client the room's ends of its
    /// streams.
    fn client(setup: ClientSetup) -> (Point, Option<RoomStreams>) {
        match setup {
            ClientSetup::Rtp(setup) => (Point::rtp(setup), None),
            ClientSetup::WebRtc { point, socket } => {
                let WebRtcPoint {
                    transport,
                    audio,
                    telephone_events,
                } = *point;
                let mut point = Point::new(Some(socket), Transport::WebRtc(transport), Some(audio));
                // Events go out at the audio's clock, as RFC 4733 asks.
                let clock = audio.1.rtp_clock_rate();
                point.telephone_event = telephone_events
                    .iter()
                    .find(|(_, events_clock)| *events_clock == clock)
                    .map(|(payload_type, _)| *payload_type);
                point.digits_out = TelephoneEventSender::new(DtmfSenderConfig {
                    clock_rate: clock,
                    ..DtmfSenderConfig::default()
                });
                point.received_events = telephone_events.iter().map(|(pt, _)| *pt).collect();
                (point, None)
            }
            ClientSetup::Rtmp { streams, send } => {
                let transport =
                    RtmpTransport::new(send).map(|rtmp| Transport::Rtmp(Box::new(rtmp)));
                let transport = transport.unwrap_or_else(|| {
                    warn!(%send, "no FLV form for this codec; the RTMP client gets no audio");
                    Transport::Rtp(RtpLatch::new(None, LatchConfig::default()))
                });
                let mut point = Point::new(None, transport, Some((RTMP_PAYLOAD_TYPE, send)));
                point.receive = None;
                (point, Some(streams))
            }
        }
    }

    fn webrtc(&mut self) -> Option<&mut WebRtcTransport> {
        match &mut self.transport {
            Transport::WebRtc(transport) => Some(transport),
            _ => None,
        }
    }

    /// RTP timestamp units of one 20 ms frame of this point's audio.
    fn frame_units(&self) -> u32 {
        let clock = self.audio.map_or(8000, |(_, codec)| codec.rtp_clock_rate());
        clock / 50
    }

    /// Sends one RTP packet of ours; a WebRTC point's datagrams go out when
    /// the room next drains it.
    async fn send(&mut self, packet: &[u8]) {
        let clock = self.audio.map_or(8000, |(_, codec)| codec.rtp_clock_rate());
        match &mut self.transport {
            Transport::Rtp(latch) => {
                if let (Some(destination), Some(socket)) = (latch.destination(), &self.socket) {
                    if let Err(error) = socket.send_to(packet, destination).await {
                        debug!(%error, "RTP send failed");
                    }
                }
            }
            Transport::WebRtc(transport) => {
                if let Ok(ours) = RtpPacket::parse(packet) {
                    transport.send_rtp(&ours.header, ours.payload);
                }
            }
            Transport::Rtmp(transport) => {
                if let Ok(ours) = RtpPacket::parse(packet) {
                    transport.send(&ours.header, ours.payload, clock);
                }
            }
        }
    }

    /// Where this point's far end is: the SIP side's RTCP goes next to it.
    fn destination(&self) -> Option<SocketAddr> {
        match &self.transport {
            Transport::Rtp(latch) => latch.destination(),
            _ => None,
        }
    }

    /// Sends one audio payload in this point's stream.
    async fn send_audio(&mut self, payload: &[u8], out: &mut [u8]) {
        let Some((payload_type, _)) = self.audio else {
            return;
        };
        let units = self.frame_units();
        match self
            .sender
            .next_packet(payload, units, false, payload_type, out)
        {
            Ok(length) => {
                self.sent_audio = true;
                self.send(&out[..length]).await;
            }
            Err(error) => warn!(%error, "cannot build RTP"),
        }
    }
}

fn pair(points: &mut [Option<Point>; 2], index: usize) -> (Option<&mut Point>, Option<&mut Point>) {
    let (first, second) = points.split_at_mut(1);
    let (this, other) = if index == 0 {
        (&mut first[0], &mut second[0])
    } else {
        (&mut second[0], &mut first[0])
    };
    (this.as_mut(), other.as_mut())
}

/// Sets up transcoding, in each direction where what one point sends
/// differs from what the other takes.
fn connect(points: &mut [Option<Point>; 2]) {
    for index in [SIP, CLIENT] {
        let (Some(this), Some(other)) = pair(points, index) else {
            return;
        };
        let (Some((_, from)), Some((_, to))) = (this.receive, other.audio) else {
            this.transcoder = None;
            continue;
        };
        this.transcoder = if from == to {
            None
        } else {
            Transcoder::new(from, to).ok()
        };
        info!(%from, %to, transcoding = this.transcoder.is_some(), "bridging");
    }
}

/// What the room task is given at its start.
struct Room {
    stats_sender: watch::Sender<Option<MediaStatsSnapshot>>,
    rtp_timeout: Duration,
}

/// What the room keeps of the SIP side besides its point: RTCP, the
/// statistics measured there, and its inactivity timer.
struct SipWatch {
    rtcp: UdpSocket,
    stats: MediaStats,
    inactivity: InactivityTimer,
}

impl SipWatch {
    fn new(point: &Point, rtcp: UdpSocket, rtp_timeout: Duration) -> SipWatch {
        let now = Instant::now().into_std();
        let clock = point
            .audio
            .map_or(8000, |(_, codec)| codec.rtp_clock_rate());
        let mut stats_config = MediaStatsConfig::new(
            point.sender.ssrc(),
            format!("dialtone-{:08x}", point.sender.ssrc()),
            clock,
        );
        stats_config.telephone_event_payload_type = point.telephone_event;
        SipWatch {
            rtcp,
            stats: MediaStats::new(stats_config, now, SystemTime::now()),
            inactivity: InactivityTimer::new(
                InactivityConfig {
                    start_timeout: rtp_timeout,
                    stop_timeout: rtp_timeout,
                },
                now,
            ),
        }
    }
}

impl Room {
    async fn run(
        self,
        mut commands: mpsc::UnboundedReceiver<RoomCommand>,
        events: mpsc::UnboundedSender<RoomEvent>,
    ) {
        let Room {
            stats_sender,
            rtp_timeout,
        } = self;
        let mut sip_watch: Option<SipWatch> = None;
        let mut points: [Option<Point>; 2] = [None, None];
        let mut rtcp_buffer = [0u8; MAX_DATAGRAM];
        let mut next_snapshot = Instant::now().into_std();
        // Receive handles, kept apart from the points so a receive can be
        // pending while a packet handler changes the points; they change
        // only when a point arrives.
        let mut sockets: [Option<Arc<UdpSocket>>; 2] = [None, None];
        // An RTMP client's streams, likewise apart from its point.
        let mut rtmp_published: Option<mpsc::UnboundedReceiver<FlvFrame>> = None;
        let mut rtmp_players: Option<mpsc::UnboundedReceiver<PlayerJoin>> = None;
        let mut ticks = tokio::time::interval(FRAME);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut sip_buffer = [0u8; MAX_DATAGRAM];
        let mut client_buffer = [0u8; MAX_DATAGRAM];
        let mut out = [0u8; MAX_DATAGRAM];
        let mut transcoded = [0u8; MAX_PAYLOAD_LEN];

        loop {
            if let Err(problem) = drain_webrtc(&mut points, &events, &mut out).await {
                info!(%problem, "client's WebRTC point failed");
                let _ = events.send(RoomEvent::ClientMediaFailed(problem));
                return;
            }
            let deadline = points
                .iter()
                .flatten()
                .filter_map(|p| p.digits_in.next_deadline())
                .chain(sip_watch.iter().flat_map(|watch| {
                    watch
                        .inactivity
                        .next_deadline()
                        .into_iter()
                        .chain([watch.stats.next_report_deadline(), next_snapshot])
                }))
                .chain(
                    points[CLIENT]
                        .as_ref()
                        .and_then(|client| match &client.transport {
                            Transport::WebRtc(transport) => transport.deadline(),
                            _ => None,
                        }),
                )
                .min();
            let ticking = points.iter().flatten().any(|p| {
                p.transcoder.is_some()
                    || !p.digits_out.is_idle()
                    || p.tones.as_ref().is_some_and(Tones::is_busy)
            });
            tokio::select! {
                Some((length, source)) = receive(sockets[SIP].as_deref(), &mut sip_buffer) => {
                    if on_datagram(&mut points, SIP, &sip_buffer[..length], source, &events, &mut out).await {
                        if let Some(watch) = sip_watch.as_mut() {
                            let now = Instant::now().into_std();
                            watch.inactivity.on_packet(now);
                            if let Ok(packet) = RtpPacket::parse(&sip_buffer[..length]) {
                                watch.stats.on_rtp(&packet.header, packet.payload.len(), now);
                            }
                        }
                    }
                }
                Some((length, _)) = receive(sip_watch.as_ref().map(|watch| &watch.rtcp), &mut rtcp_buffer) => {
                    if let Some(watch) = sip_watch.as_mut() {
                        if let Err(error) = watch.stats.on_rtcp(&rtcp_buffer[..length], Instant::now().into_std()) {
                            debug!(%error, "unreadable RTCP");
                        }
                    }
                }
                Some((length, source)) = receive(sockets[CLIENT].as_deref(), &mut client_buffer) => {
                    on_datagram(&mut points, CLIENT, &client_buffer[..length], source, &events, &mut out).await;
                }
                Some(frame) = next_or_pending(rtmp_published.as_mut()) => {
                    on_flv_frame(&mut points, frame, &events, &mut out).await;
                }
                Some(join) = next_or_pending(rtmp_players.as_mut()) => {
                    if let Some(Transport::Rtmp(rtmp)) = points[CLIENT].as_mut().map(|client| &mut client.transport) {
                        rtmp.join(join);
                    }
                }
                _ = sleep_until_std(deadline) => {
                    let now = Instant::now().into_std();
                    // Digits whose end packets were lost end here; only starts
                    // are reported, so there is nothing more to do with them.
                    for point in points.iter_mut().flatten() {
                        while point.digits_in.poll(now).is_some() {}
                    }
                    if let Some(transport) = points[CLIENT].as_mut().and_then(Point::webrtc) {
                        if transport.deadline().is_some_and(|at| at <= now) {
                            transport.on_deadline(now);
                        }
                    }
                    let sip_side = points[SIP].as_ref().map(|sip| (sip.destination(), sip.sender.counters()));
                    if let (Some((destination, sent)), Some(watch)) = (sip_side, sip_watch.as_mut()) {
                        if watch.stats.report_due(now) {
                            send_report(&mut watch.stats, destination, &sent, &watch.rtcp, now, &mut out).await;
                        }
                        if now >= next_snapshot {
                            let _ = stats_sender.send(Some(watch.stats.snapshot(&sent)));
                            next_snapshot = now + SNAPSHOT_INTERVAL;
                        }
                        if let Some(timeout) = watch.inactivity.poll(now) {
                            info!(?timeout, "no RTP from the SIP far end");
                            let _ = events.send(RoomEvent::MediaTimeout(timeout));
                            return;
                        }
                    }
                }
                _ = ticks.tick(), if ticking => {
                    for index in [SIP, CLIENT] {
                        let (Some(this), Some(other)) = pair(&mut points, index) else { continue };
                        let Some(transcoder) = this.transcoder.as_mut() else { continue };
                        let result = match this.jitter.tick() {
                            Playout::Frame { payload, .. } => transcoder.transcode(payload, &mut transcoded),
                            Playout::Lost { next_payload: Some(next) } => transcoder.recover_into(next, &mut transcoded),
                            Playout::Lost { next_payload: None } => transcoder.conceal_into(&mut transcoded),
                            Playout::Empty => continue,
                        };
                        match result {
                            Ok(length) => other.send_audio(&transcoded[..length], &mut out).await,
                            Err(error) => debug!(%error, "frame not transcoded"),
                        }
                    }
                    if let Some(sip) = points[SIP].as_mut() {
                        if let Some(mut tones) = sip.tones.take() {
                            if let Some(frame) = tones.next_frame() {
                                sip.send_audio(frame, &mut out).await;
                            }
                            sip.tones = Some(tones);
                        }
                    }
                    let now = Instant::now().into_std();
                    for point in points.iter_mut().flatten() {
                        send_digit_packets(point, now, &mut out).await;
                        if !point.sent_audio {
                            let units = point.frame_units();
                            point.sender.skip(units);
                        }
                        point.sent_audio = false;
                    }
                }
                command = commands.recv() => match command {
                    Some(RoomCommand::SendDigits(digits)) => {
                        if let Some(sip) = points[SIP].as_mut() {
                            if let Err(error) = sip.digits_out.enqueue(&digits, Instant::now().into_std()) {
                                warn!(%error, "digits not queued");
                            }
                        }
                    }
                    Some(RoomCommand::DigitToClient(digit)) => {
                        let client = points[CLIENT].as_mut().filter(|client| client.telephone_event.is_some());
                        if let Some(client) = client {
                            let mut text = [0u8; 4];
                            let _ = client.digits_out.enqueue(digit.encode_utf8(&mut text), Instant::now().into_std());
                        }
                    }
                    Some(RoomCommand::SendTones(digits)) => {
                        if let Some(tones) = points[SIP].as_mut().and_then(|sip| sip.tones.as_mut()) {
                            tones.queue.extend(digits.chars());
                        }
                    }
                    Some(RoomCommand::RemoteChanged { remote, sends }) => {
                        if let Some(watch) = sip_watch.as_mut() {
                            // A far end on hold sends nothing: not a dead one.
                            watch.inactivity.set_expecting_media(sends, Instant::now().into_std());
                        }
                        if let Some(Transport::Rtp(latch)) = points[SIP].as_mut().map(|sip| &mut sip.transport) {
                            latch.update_signalled(Some(remote));
                        }
                    }
                    Some(RoomCommand::AddSip { setup, rtcp, detect_tones }) => {
                        let sends = setup.sends;
                        let mut sip = Point::rtp(setup);
                        if let Some((_, codec)) = sip.audio {
                            sip.tones = Tones::new(codec);
                            sip.detector = detect_tones.then(|| ToneDetector::new(codec)).flatten();
                        }
                        let mut watch = SipWatch::new(&sip, rtcp, rtp_timeout);
                        watch.inactivity.set_expecting_media(sends, Instant::now().into_std());
                        sip_watch = Some(watch);
                        sockets[SIP] = sip.socket.clone();
                        points[SIP] = Some(sip);
                        connect(&mut points);
                    }
                    Some(RoomCommand::AddClient(setup)) => {
                        let (client, inbox) = Point::client(setup);
                        if let Some(RoomStreams { published, players }) = inbox {
                            rtmp_published = Some(published);
                            rtmp_players = Some(players);
                        }
                        sockets[CLIENT] = client.socket.clone();
                        points[CLIENT] = Some(client);
                        connect(&mut points);
                    }
                    Some(RoomCommand::ClientCandidate(candidate)) => {
                        if let Some(transport) = points[CLIENT].as_mut().and_then(Point::webrtc) {
                            transport.add_remote_candidate(&candidate);
                        }
                    }
                    None => {
                        // The call ended: a last snapshot for its quality report.
                        if let (Some(sip), Some(watch)) = (points[SIP].as_ref(), sip_watch.as_ref()) {
                            let _ = stats_sender.send(Some(watch.stats.snapshot(&sip.sender.counters())));
                        }
                        return;
                    }
                },
            }
        }
    }
}

/// Hands the client's WebRTC point everything str0m has ready: datagrams
/// out, decrypted RTP into the room. An error says why the point failed.
async fn drain_webrtc(
    points: &mut [Option<Point>; 2],
    events: &mpsc::UnboundedSender<RoomEvent>,
    out: &mut [u8],
) -> Result<(), String> {
    loop {
        let Some(client) = points[CLIENT].as_mut() else {
            return Ok(());
        };
        let Some(socket) = client.socket.clone() else {
            return Ok(());
        };
        let Some(transport) = client.webrtc() else {
            return Ok(());
        };
        match transport.poll(Instant::now().into_std()) {
            Polled::Idle => return Ok(()),
            Polled::Failed(problem) => return Err(problem),
            Polled::Transmit {
                destination,
                contents,
            } => {
                if let Err(error) = socket.send_to(&contents, destination).await {
                    debug!(%error, "WebRTC send failed");
                }
            }
            Polled::Rtp(packet) => {
                let header = RtpHeader {
                    marker: packet.header.marker,
                    payload_type: *packet.header.payload_type,
                    sequence: packet.header.sequence_number,
                    timestamp: packet.header.timestamp,
                    ssrc: *packet.header.ssrc,
                };
                on_rtp(
                    points,
                    CLIENT,
                    RtpPacket::from_parts(header, &packet.payload),
                    events,
                    out,
                )
                .await;
            }
        }
    }
}

/// Our RTCP report to the SIP far end's RTCP port (RTP port + 1).
async fn send_report(
    stats: &mut MediaStats,
    rtp_destination: Option<SocketAddr>,
    sent: &SenderCounters,
    rtcp: &UdpSocket,
    now: std::time::Instant,
    out: &mut [u8],
) {
    let Some(rtp_destination) = rtp_destination else {
        return;
    };
    let destination = SocketAddr::new(rtp_destination.ip(), rtp_destination.port().wrapping_add(1));
    match stats.write_report(now, sent, out) {
        Ok(length) => {
            if let Err(error) = rtcp.send_to(&out[..length], destination).await {
                debug!(%error, "RTCP send failed");
            }
        }
        Err(error) => warn!(%error, "cannot build RTCP"),
    }
}

/// Handles one datagram from a point; whether it was RTP from the peer.
async fn on_datagram(
    points: &mut [Option<Point>; 2],
    index: usize,
    datagram: &[u8],
    source: SocketAddr,
    events: &mpsc::UnboundedSender<RoomEvent>,
    out: &mut [u8],
) -> bool {
    let Some(this) = points[index].as_mut() else {
        return false;
    };
    let latch = match &mut this.transport {
        Transport::Rtp(latch) => latch,
        Transport::WebRtc(transport) => {
            // Its RTP comes out decrypted when the room drains it.
            transport.receive(source, datagram);
            return false;
        }
        Transport::Rtmp(_) => return false,
    };
    let Ok(packet) = RtpPacket::parse(datagram) else {
        return false;
    };
    if latch.on_packet(source, packet.header.ssrc) == LatchDecision::Reject {
        return false;
    }
    on_rtp(points, index, packet, events, out).await;
    true
}

/// Handles one RTP packet from a point's far end: digits, audio for the
/// other point.
async fn on_rtp(
    points: &mut [Option<Point>; 2],
    index: usize,
    packet: RtpPacket<'_>,
    events: &mpsc::UnboundedSender<RoomEvent>,
    out: &mut [u8],
) {
    let (Some(this), mut other) = pair(points, index) else {
        return;
    };
    let payload_type = packet.header.payload_type;
    if this.received_events.contains(&payload_type) {
        let now = Instant::now().into_std();
        if let Ok(digit_events) =
            this.digits_in
                .on_packet(packet.header.timestamp, packet.payload, now)
        {
            for event in digit_events {
                if let DigitEvent::DigitStarted(digit) = event {
                    forward_digit(index, digit, "RFC4733", other, events, now);
                    break;
                }
            }
        }
        return;
    }
    if this.receive.map(|(pt, _)| pt) != Some(payload_type) {
        return;
    }
    if let Some(digit) = this
        .detector
        .as_mut()
        .and_then(|d| d.digit_in(packet.payload))
    {
        forward_digit(
            index,
            digit,
            "INBAND",
            other.as_deref_mut(),
            events,
            Instant::now().into_std(),
        );
    }
    // While digits play toward the SIP side, they replace the client's audio.
    let other = other.filter(|other| !other.tones.as_ref().is_some_and(Tones::is_busy));
    if let Some(other) = other {
        if this.transcoder.is_some() {
            this.jitter.push(
                packet.header.sequence,
                packet.header.timestamp,
                packet.payload,
            );
        } else {
            other.send_audio(packet.payload, out).await;
        }
    }
}

/// A digit from one side: the client hears of the SIP side's digits, and
/// each digit goes on to the other side as an event, or by SIP INFO.
fn forward_digit(
    from: usize,
    digit: char,
    method: &'static str,
    other: Option<&mut Point>,
    events: &mpsc::UnboundedSender<RoomEvent>,
    now: std::time::Instant,
) {
    let to_sip = from != SIP;
    if !to_sip {
        let _ = events.send(RoomEvent::Digit { digit, method });
    }
    match other {
        Some(other) if other.telephone_event.is_some() => {
            let mut text = [0u8; 4];
            if let Err(error) = other.digits_out.enqueue(digit.encode_utf8(&mut text), now) {
                warn!(%error, "digit not forwarded");
            }
        }
        _ if to_sip => {
            let _ = events.send(RoomEvent::DigitForInfo(digit));
        }
        _ => {}
    }
}

async fn send_digit_packets(point: &mut Point, now: std::time::Instant, out: &mut [u8]) {
    let Some(payload_type) = point.telephone_event else {
        return;
    };
    while let Some(packet) = point.digits_out.poll(now, point.sender.next_timestamp()) {
        match point.sender.packet_with_timestamp(
            &packet.event.to_bytes(),
            packet.timestamp,
            packet.marker,
            payload_type,
            out,
        ) {
            Ok(length) => point.send(&out[..length]).await,
            Err(error) => warn!(%error, "cannot build telephone-event"),
        }
    }
}

async fn next_or_pending<T>(receiver: Option<&mut mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match receiver {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// One FLV audio tag from the RTMP client's publisher, handled as the
/// point's RTP would be: frames in 20 ms codecs pass as they are (G.711 cut
/// into 20 ms), AAC and linear PCM are decoded and re-framed as 16 kHz L16.
async fn on_flv_frame(
    points: &mut [Option<Point>; 2],
    frame: FlvFrame,
    events: &mpsc::UnboundedSender<RoomEvent>,
    out: &mut [u8],
) {
    let Some(client) = points[CLIENT].as_mut() else {
        return;
    };
    let Transport::Rtmp(rtmp) = &mut client.transport else {
        return;
    };
    let tag = match AudioTag::parse(&frame.data) {
        Ok(tag) => tag,
        Err(error) => {
            debug!(%error, "unreadable FLV audio");
            return;
        }
    };
    let Some(frames) = rtmp.inbound.frames(&tag, frame.timestamp) else {
        return;
    };
    // Taken out while the frames go through the room, which needs the
    // points; given back after.
    let decoded = std::mem::take(&mut rtmp.inbound.decoded);
    let codec = frames.codec;
    if client.receive != Some((RTMP_PAYLOAD_TYPE, codec)) {
        info!(%codec, "RTMP client publishes");
        client.receive = Some((RTMP_PAYLOAD_TYPE, codec));
        connect(points);
    }
    let (payloads, frame_bytes) = match frames.payloads {
        Payloads::Tag(frame_bytes) => (tag.payload, frame_bytes),
        Payloads::Decoded => (decoded.as_slice(), L16_FRAME_BYTES),
    };
    for (index, chunk) in payloads.chunks(frame_bytes).enumerate() {
        let packet = RtpPacket::from_parts(frames.header(index), chunk);
        on_rtp(points, CLIENT, packet, events, out).await;
    }
    if let Some(Transport::Rtmp(rtmp)) = points[CLIENT].as_mut().map(|client| &mut client.transport)
    {
        rtmp.inbound.decoded = decoded;
    }
}

async fn receive(socket: Option<&UdpSocket>, buffer: &mut [u8]) -> Option<(usize, SocketAddr)> {
    match socket {
        Some(socket) => socket.recv_from(buffer).await.ok(),
        None => std::future::pending().await,
    }
}

async fn sleep_until_std(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(Instant::from_std(deadline)).await,
        None => std::future::pending().await,
    }
}
