//! A call's media room: one task on the call's RTP sockets that bridges the
//! SIP leg and, when the client brings its own RTP endpoint, the client's
//! point. Same codec on both sides: payloads are forwarded as they arrive,
//! renumbered into our own stream. Different codecs: each side's packets go
//! through a jitter buffer and are transcoded every 20 ms. Digits cross as
//! RFC 4733 events where the other side negotiated them. The task drives
//! the sans-IO state machines of [`crate::media`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::collections::VecDeque;

use dialtone_codecs::{
    new_decoder, new_encoder, Codec, Decoder, DtmfDetector, DtmfDigit, DtmfEvent, DtmfGenerator,
    Encoder, SampleRate, Transcoder, DEFAULT_DTMF_LEVEL_DBFS, MAX_FRAME_SAMPLES, MAX_PAYLOAD_LEN,
};
use std::time::SystemTime;
use tokio::net::UdpSocket;

use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::media::inactivity::{InactivityConfig, InactivityTimer, MediaTimeout};
use crate::media::jitter::{JitterBuffer, JitterConfig, Playout};
use crate::media::rtp::{RtpPacket, RtpSender, SenderCounters};
use crate::media::stats::{MediaStats, MediaStatsConfig, MediaStatsSnapshot};
use crate::media::symmetric::{LatchConfig, LatchDecision, RtpLatch};
use crate::media::telephone_event::{
    DigitEvent, DtmfSenderConfig, TelephoneEventReceiver, TelephoneEventSender, DEFAULT_END_TIMEOUT,
};

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
}

/// Index of the SIP side in the room; the client's point is the other.
const SIP: usize = 0;

#[derive(Debug)]
pub enum RoomCommand {
    /// Digits for the SIP side as RFC 4733 events.
    SendDigits(String),
    /// Digits for the SIP side as in-band tones in its audio.
    SendTones(String),
    /// A digit the SIP side sent by INFO, for the client's point as an
    /// event.
    DigitToClient(char),
    /// A re-INVITE moved the SIP far end.
    RemoteMoved(SocketAddr),
    /// The client's RTP endpoint, once its SDP answer is known.
    AddClient(PointSetup),
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
    /// Starts the room with its SIP side; `rtcp` is that side's RTCP
    /// socket; `detect_tones` looks for in-band DTMF in the SIP side's audio.
    pub fn start(
        sip: PointSetup,
        rtcp: UdpSocket,
        rtp_timeout: Duration,
        detect_tones: bool,
        tasks: &TaskTracker,
    ) -> MediaRoom {
        let (commands, command_receiver) = mpsc::unbounded_channel();
        let (event_sender, events) = mpsc::unbounded_channel();
        let (stats_sender, stats) = watch::channel(None);
        let carries_events = sip.telephone_event.is_some();
        let room = Room {
            rtcp,
            stats_sender,
            rtp_timeout,
            detect_tones,
        };
        tasks.spawn(room.run(sip, command_receiver, event_sender));
        MediaRoom {
            commands,
            events,
            carries_events,
            stats,
        }
    }
}

struct Point {
    socket: Arc<UdpSocket>,
    latch: RtpLatch,
    audio: Option<(u8, Codec)>,
    telephone_event: Option<u8>,
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

/// Digits played as tones into a point's audio, one after another.
struct Tones {
    encoder: Box<dyn Encoder>,
    rate: SampleRate,
    queue: VecDeque<char>,
    playing: Option<DtmfGenerator>,
    /// Frames of the gap still to wait before the next digit.
    gap_frames: u32,
    pcm: [i16; MAX_FRAME_SAMPLES],
    payload: [u8; MAX_PAYLOAD_LEN],
}

const TONE_DURATION: Duration = Duration::from_millis(100);
const TONE_GAP_FRAMES: u32 = 5;

impl Tones {
    fn new(codec: Codec) -> Option<Tones> {
        Some(Tones {
            encoder: new_encoder(codec).ok()?,
            rate: codec.sample_rate(),
            queue: VecDeque::new(),
            playing: None,
            gap_frames: 0,
            pcm: [0; MAX_FRAME_SAMPLES],
            payload: [0; MAX_PAYLOAD_LEN],
        })
    }

    fn is_busy(&self) -> bool {
        self.playing.is_some() || !self.queue.is_empty() || self.gap_frames > 0
    }

    /// The next 20 ms while digits are being played, encoded: tone, or the
    /// silence between and after digits (a far end without other audio
    /// from us still gets a continuous stream, which its jitter buffer
    /// needs to play the last digit out).
    fn next_frame(&mut self) -> Option<&[u8]> {
        let samples = self.rate.frame_samples();
        if self.playing.is_none() && self.gap_frames == 0 {
            let digit = DtmfDigit::from_char(self.queue.pop_front()?)?;
            self.playing =
                DtmfGenerator::new(self.rate, digit, TONE_DURATION, DEFAULT_DTMF_LEVEL_DBFS).ok();
        }
        match self.playing.as_mut() {
            Some(generator) => {
                generator.fill_frame(&mut self.pcm[..samples]).ok()?;
                if generator.is_finished() {
                    self.playing = None;
                    self.gap_frames = TONE_GAP_FRAMES;
                }
            }
            None => {
                self.gap_frames -= 1;
                self.pcm[..samples].fill(0);
            }
        }
        let length = self
            .encoder
            .encode(&self.pcm[..samples], &mut self.payload)
            .ok()?;
        Some(&self.payload[..length])
    }
}

/// Decodes a point's audio to find DTMF tones in it (8 and 16 kHz codecs).
struct ToneDetector {
    decoder: Box<dyn Decoder>,
    detector: DtmfDetector,
    pcm: [i16; MAX_FRAME_SAMPLES],
}

impl ToneDetector {
    fn new(codec: Codec) -> Option<ToneDetector> {
        let rate = codec.sample_rate();
        if rate == SampleRate::Hz48000 {
            return None;
        }
        Some(ToneDetector {
            decoder: new_decoder(codec).ok()?,
            detector: DtmfDetector::new(rate),
            pcm: [0; MAX_FRAME_SAMPLES],
        })
    }

    /// The digit that starts in this payload, if one does.
    fn digit_in(&mut self, payload: &[u8]) -> Option<char> {
        let samples = self.decoder.decode(payload, &mut self.pcm).ok()?;
        match self.detector.process(&self.pcm[..samples]).ok()?? {
            DtmfEvent::Started(digit) => Some(digit.as_char()),
            DtmfEvent::Ended { .. } => None,
        }
    }
}

impl Point {
    fn new(setup: PointSetup) -> Point {
        Point {
            socket: Arc::new(setup.socket),
            latch: RtpLatch::new(Some(setup.remote), LatchConfig::default()),
            audio: setup.audio,
            telephone_event: setup.telephone_event,
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

    /// RTP timestamp units of one 20 ms frame of this point's audio.
    fn frame_units(&self) -> u32 {
        let clock = self.audio.map_or(8000, |(_, codec)| codec.rtp_clock_rate());
        clock / 50
    }

    async fn send(&mut self, packet: &[u8]) {
        if let Some(destination) = self.latch.destination() {
            if let Err(error) = self.socket.send_to(packet, destination).await {
                debug!(%error, "RTP send failed");
            }
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

/// Sets up transcoding between the two points when their codecs differ.
fn connect(points: &mut [Option<Point>; 2]) {
    let (Some(sip), Some(client)) = pair(points, SIP) else {
        return;
    };
    let (Some((_, sip_codec)), Some((_, client_codec))) = (sip.audio, client.audio) else {
        return;
    };
    if sip_codec != client_codec {
        sip.transcoder = Transcoder::new(sip_codec, client_codec).ok();
        client.transcoder = Transcoder::new(client_codec, sip_codec).ok();
        info!(%sip_codec, %client_codec, "bridging with transcoding");
    } else {
        info!(codec = %sip_codec, "bridging without transcoding");
    }
}

/// What the room task owns besides its points: the SIP side's RTCP.
struct Room {
    rtcp: UdpSocket,
    stats_sender: watch::Sender<Option<MediaStatsSnapshot>>,
    rtp_timeout: Duration,
    detect_tones: bool,
}

impl Room {
    async fn run(
        self,
        sip: PointSetup,
        mut commands: mpsc::UnboundedReceiver<RoomCommand>,
        events: mpsc::UnboundedSender<RoomEvent>,
    ) {
        let Room {
            rtcp,
            stats_sender,
            rtp_timeout,
            detect_tones,
        } = self;
        let mut inactivity = InactivityTimer::new(
            InactivityConfig {
                start_timeout: rtp_timeout,
                stop_timeout: rtp_timeout,
            },
            Instant::now().into_std(),
        );
        let mut sip_point = Point::new(sip);
        if let Some((_, codec)) = sip_point.audio {
            sip_point.tones = Tones::new(codec);
            sip_point.detector = detect_tones.then(|| ToneDetector::new(codec)).flatten();
        }
        let clock = sip_point
            .audio
            .map_or(8000, |(_, codec)| codec.rtp_clock_rate());
        let mut stats_config = MediaStatsConfig::new(
            sip_point.sender.ssrc(),
            format!("dialtone-{:08x}", sip_point.sender.ssrc()),
            clock,
        );
        stats_config.telephone_event_payload_type = sip_point.telephone_event;
        let mut stats = MediaStats::new(stats_config, Instant::now().into_std(), SystemTime::now());
        let mut points: [Option<Point>; 2] = [Some(sip_point), None];
        let mut rtcp_buffer = [0u8; MAX_DATAGRAM];
        let mut next_snapshot = Instant::now().into_std();
        // Receive handles, kept apart from the points so a receive can be
        // pending while a packet handler changes the points; they change
        // only when the client's point arrives.
        let mut sockets = [points[SIP].as_ref().map(|p| p.socket.clone()), None];
        let mut ticks = tokio::time::interval(FRAME);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut sip_buffer = [0u8; MAX_DATAGRAM];
        let mut client_buffer = [0u8; MAX_DATAGRAM];
        let mut out = [0u8; MAX_DATAGRAM];
        let mut transcoded = [0u8; MAX_PAYLOAD_LEN];

        loop {
            let deadline = points
                .iter()
                .flatten()
                .filter_map(|p| p.digits_in.next_deadline())
                .chain(inactivity.next_deadline())
                .chain([stats.next_report_deadline(), next_snapshot])
                .min();
            let ticking = points.iter().flatten().any(|p| {
                p.transcoder.is_some()
                    || !p.digits_out.is_idle()
                    || p.tones.as_ref().is_some_and(Tones::is_busy)
            });
            tokio::select! {
                Some((length, source)) = receive(sockets[0].as_deref(), &mut sip_buffer) => {
                    if on_packet(&mut points, SIP, &sip_buffer[..length], source, &events, &mut out).await {
                        let now = Instant::now().into_std();
                        inactivity.on_packet(now);
                        if let Ok(packet) = RtpPacket::parse(&sip_buffer[..length]) {
                            stats.on_rtp(&packet.header, packet.payload.len(), now);
                        }
                    }
                }
                Some((length, _)) = receive(Some(&rtcp), &mut rtcp_buffer) => {
                    if let Err(error) = stats.on_rtcp(&rtcp_buffer[..length], Instant::now().into_std()) {
                        debug!(%error, "unreadable RTCP");
                    }
                }
                Some((length, source)) = receive(sockets[1].as_deref(), &mut client_buffer) => {
                    on_packet(&mut points, 1, &client_buffer[..length], source, &events, &mut out).await;
                }
                _ = sleep_until_std(deadline) => {
                    let now = Instant::now().into_std();
                    // Digits whose end packets were lost end here; only starts
                    // are reported, so there is nothing more to do with them.
                    for point in points.iter_mut().flatten() {
                        while point.digits_in.poll(now).is_some() {}
                    }
                    let sip_side = points[SIP].as_ref().map(|sip| (sip.latch.destination(), sip.sender.counters()));
                    if let Some((destination, sent)) = sip_side {
                        if stats.report_due(now) {
                            send_report(&mut stats, destination, &sent, &rtcp, now, &mut out).await;
                        }
                        if now >= next_snapshot {
                            let _ = stats_sender.send(Some(stats.snapshot(&sent)));
                            next_snapshot = now + SNAPSHOT_INTERVAL;
                        }
                    }
                    if let Some(timeout) = inactivity.poll(now) {
                        info!(?timeout, "no RTP from the SIP far end");
                        let _ = events.send(RoomEvent::MediaTimeout(timeout));
                        return;
                    }
                }
                _ = ticks.tick(), if ticking => {
                    for index in 0..2 {
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
                        if let Some(sip) = points[0].as_mut() {
                            if let Err(error) = sip.digits_out.enqueue(&digits, Instant::now().into_std()) {
                                warn!(%error, "digits not queued");
                            }
                        }
                    }
                    Some(RoomCommand::DigitToClient(digit)) => {
                        let client = points[1 - SIP].as_mut().filter(|client| client.telephone_event.is_some());
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
                Some(RoomCommand::RemoteMoved(remote)) => {
                        if let Some(sip) = points[0].as_mut() {
                            sip.latch.update_signalled(Some(remote));
                        }
                    }
                    Some(RoomCommand::AddClient(client)) => {
                        let client = Point::new(client);
                        sockets[1] = Some(client.socket.clone());
                        points[1] = Some(client);
                        connect(&mut points);
                    }
                    None => {
                        // The call ended: a last snapshot for its quality report.
                        if let Some(sip) = points[SIP].as_ref() {
                            let _ = stats_sender.send(Some(stats.snapshot(&sip.sender.counters())));
                        }
                        return;
                    }
                },
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
async fn on_packet(
    points: &mut [Option<Point>; 2],
    index: usize,
    datagram: &[u8],
    source: SocketAddr,
    events: &mpsc::UnboundedSender<RoomEvent>,
    out: &mut [u8],
) -> bool {
    let Ok(packet) = RtpPacket::parse(datagram) else {
        return false;
    };
    let (Some(this), mut other) = pair(points, index) else {
        return false;
    };
    if this.latch.on_packet(source, packet.header.ssrc) == LatchDecision::Reject {
        return false;
    }
    let payload_type = packet.header.payload_type;
    if Some(payload_type) == this.telephone_event {
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
        return true;
    }
    if this.audio.map(|(pt, _)| pt) != Some(payload_type) {
        return true;
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
    true
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
