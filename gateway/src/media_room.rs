//! The driver of a [`Room`]: one task that owns the room's sockets, its
//! RTMP streams, its timer and its recordings' files, feeds the room what
//! arrives with the time it arrived, and carries out what the room puts
//! out. All media logic is in `dialtone_room`; nothing here decides
//! anything.
//!
//! Each point is added with a [`PointSink`]: the room's events about the
//! point go there (to the call or session that owns it), and when the room
//! ends with the point still in it, the point itself goes back there with
//! its sockets and streams ([`PointNews::Evicted`]), to live on elsewhere.

use std::collections::HashMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;

use dialtone_room::{
    DetachedPoint, Event, Input, Output, PointConfig, PointId, PointUpdate, Role, Room, Socket,
    Transmit, RECORDING_RATE,
};
use tokio::io::ReadBuf;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::recording::{FinishedRecording, Recorder, RecordingError};
use crate::rtmp_streams::{FlvFrame, PlayerJoin, RoomStreams, ToPlayer};

/// The I/O of one point: its sockets, or an RTMP client's streams.
#[derive(Debug, Default)]
pub struct PointIo {
    pub rtp: Option<UdpSocket>,
    pub rtcp: Option<UdpSocket>,
    pub rtmp: Option<RoomStreams>,
}

/// What a room tells the owner of one of its points.
#[derive(Debug)]
pub enum PointNews {
    Event(Event),
    /// The room ended with the point in it: here it is, to be put in
    /// another room or dropped.
    Evicted(Box<MovedPoint>),
}

pub type PointSink = mpsc::UnboundedSender<PointNews>;

/// A point on its way between two rooms: its state and its I/O.
pub struct MovedPoint {
    pub id: PointId,
    point: DetachedPoint,
    io: DriverIo,
}

impl std::fmt::Debug for MovedPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MovedPoint({})", self.id)
    }
}

/// A recording a room writes, and what to do when it ends.
pub struct RecordingJob {
    pub recorder: Recorder,
    pub on_end: Box<dyn FnOnce(RecordingEnd) + Send>,
}

/// How a recording ended: its file as finished, or why writing failed.
pub struct RecordingEnd {
    pub finished: Result<FinishedRecording, RecordingError>,
    /// `STOPPED`, `ROOM_ENDED`, or the write error's reason.
    pub reason: &'static str,
}

enum RoomCommand {
    AddPoint(PointId, Box<PointConfig>, PointIo, PointSink),
    Insert(Box<MovedPoint>, Role),
    Take(PointId, oneshot::Sender<Option<Box<MovedPoint>>>),
    RemovePoint(PointId),
    Deaf(PointId, bool),
    UpdatePoint(PointId, PointUpdate),
    SendDigits(PointId, String),
    SendTones(PointId, String),
    DigitFrom(PointId, char),
    Candidate(PointId, String),
    StartRecording(u32, Box<RecordingJob>),
    /// One recording, or all of them.
    StopRecording(Option<u32>),
    Close,
}

/// A handle on a room: anyone holding one can add, move and command
/// points. The room lives until its [`MediaRoom`] owner drops it.
#[derive(Clone)]
pub struct RoomHandle {
    commands: mpsc::UnboundedSender<RoomCommand>,
}

/// The owner's handle: dropping it ends the room, and every point still in
/// it goes back to its sink.
pub struct MediaRoom {
    handle: RoomHandle,
}

impl std::ops::Deref for MediaRoom {
    type Target = RoomHandle;

    fn deref(&self) -> &RoomHandle {
        &self.handle
    }
}

impl Drop for MediaRoom {
    fn drop(&mut self) {
        self.handle.send(RoomCommand::Close);
    }
}

impl MediaRoom {
    /// Starts an empty room.
    pub fn start(tasks: &TaskTracker) -> MediaRoom {
        let (commands, command_receiver) = mpsc::unbounded_channel();
        let driver = Driver {
            room: Room::new(),
            io: Vec::new(),
            recordings: HashMap::new(),
        };
        tasks.spawn(driver.run(command_receiver).in_current_span());
        MediaRoom {
            handle: RoomHandle { commands },
        }
    }

    pub fn handle(&self) -> RoomHandle {
        self.handle.clone()
    }
}

impl RoomHandle {
    /// Adds a point; what the room says of it goes to `sink`.
    pub fn add_point(&self, id: PointId, config: PointConfig, io: PointIo, sink: PointSink) {
        self.send(RoomCommand::AddPoint(id, Box::new(config), io, sink));
    }

    /// Puts a point taken from another room in, as `role`.
    pub fn insert(&self, point: Box<MovedPoint>, role: Role) -> Result<(), Box<MovedPoint>> {
        match self.commands.send(RoomCommand::Insert(point, role)) {
            Ok(()) => Ok(()),
            Err(refused) => match refused.0 {
                RoomCommand::Insert(point, _) => Err(point),
                // What comes back is what was sent.
                _ => Ok(()),
            },
        }
    }

    /// Takes a point out with its I/O; `None` when it is not in the room
    /// (or the room has ended).
    pub async fn take(&self, id: PointId) -> Option<Box<MovedPoint>> {
        let (reply, taken) = oneshot::channel();
        self.send(RoomCommand::Take(id, reply));
        taken.await.ok().flatten()
    }

    /// Takes a point out and ends it.
    pub fn remove_point(&self, id: PointId) {
        self.send(RoomCommand::RemovePoint(id));
    }

    /// Point `id` hears nobody (its far end is on hold), or hears again.
    pub fn set_deaf(&self, id: PointId, deaf: bool) {
        self.send(RoomCommand::Deaf(id, deaf));
    }

    pub fn start_recording(&self, recording: u32, job: RecordingJob) {
        self.send(RoomCommand::StartRecording(recording, Box::new(job)));
    }

    pub fn stop_recording(&self, recording: Option<u32>) {
        self.send(RoomCommand::StopRecording(recording));
    }

    /// Whether the room has ended.
    pub fn is_closed(&self) -> bool {
        self.commands.is_closed()
    }

    pub fn update_point(&self, id: PointId, update: PointUpdate) {
        self.send(RoomCommand::UpdatePoint(id, update));
    }

    /// Digits for a point's far end as RFC 4733 events.
    pub fn send_digits(&self, id: PointId, digits: &str) {
        self.send(RoomCommand::SendDigits(id, digits.to_string()));
    }

    /// Digits for a point's far end as in-band tones.
    pub fn send_tones(&self, id: PointId, digits: &str) {
        self.send(RoomCommand::SendTones(id, digits.to_string()));
    }

    /// A digit a point's far end signalled by SIP INFO.
    pub fn digit_from(&self, id: PointId, digit: char) {
        self.send(RoomCommand::DigitFrom(id, digit));
    }

    pub fn add_remote_candidate(&self, id: PointId, candidate: String) {
        self.send(RoomCommand::Candidate(id, candidate));
    }

    fn send(&self, command: RoomCommand) {
        if self.commands.send(command).is_err() {
            debug!("the room has ended");
        }
    }
}

/// One point's I/O as the driver keeps it, and where its news goes.
struct DriverIo {
    point: PointId,
    rtp: Option<UdpSocket>,
    rtcp: Option<UdpSocket>,
    published: Option<mpsc::Receiver<FlvFrame>>,
    joins: Option<mpsc::Receiver<PlayerJoin>>,
    players: HashMap<u64, PlayerJoin>,
    sink: PointSink,
}

impl Drop for DriverIo {
    /// A point that ends ends its RTMP players' streams.
    fn drop(&mut self) {
        for join in self.players.values() {
            // A player whose queue is full is stalled; its write timeout
            // or its tunnel's silence ends it.
            let _ = join.sender.try_send(ToPlayer::End {
                stream_id: join.stream_id,
            });
        }
    }
}

/// Players get names unique in the process: they move between rooms with
/// their point.
static NEXT_PLAYER: AtomicU64 = AtomicU64::new(0);

/// A recording being written.
struct Writing {
    job: RecordingJob,
}

enum Received {
    Rtp {
        point: PointId,
        source: SocketAddr,
        length: usize,
    },
    Rtcp {
        point: PointId,
        length: usize,
    },
    Flv {
        point: PointId,
        frame: FlvFrame,
    },
    Player {
        point: PointId,
        join: PlayerJoin,
    },
    /// A receive failed or a stream ended: nothing to hand the room.
    Nothing,
}

const MAX_DATAGRAM: usize = 1500;

struct Driver {
    room: Room,
    io: Vec<DriverIo>,
    recordings: HashMap<u32, Writing>,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<RoomCommand>) {
        let mut buffer = [0u8; MAX_DATAGRAM];
        // Which point is looked at first, turned each time so a busy one
        // cannot starve the others.
        let mut first = 0usize;
        loop {
            self.drain();
            let deadline = self.room.poll_timeout();
            tokio::select! {
                received = receive(&mut self.io, &mut buffer, first) => {
                    first = first.wrapping_add(1);
                    self.on_received(received, &buffer);
                }
                _ = sleep_until(deadline) => {
                    self.room.handle_input(now(), Input::Timeout);
                }
                command = commands.recv() => match command {
                    Some(RoomCommand::Close) | None => break,
                    Some(command) => self.on_command(command),
                },
            }
        }
        self.end();
    }

    /// The room ends: recordings are finished, each point's owner gets a
    /// last statistics snapshot and the point back.
    fn end(&mut self) {
        self.drain();
        for (_, writing) in self.recordings.drain() {
            finish(writing, "ROOM_ENDED");
        }
        let now = now();
        for io in std::mem::take(&mut self.io) {
            let id = io.point;
            if let Some(snapshot) = self.room.stats(id) {
                let _ = io.sink.send(PointNews::Event(Event::Stats {
                    point: id,
                    snapshot,
                }));
            }
            let Ok(point) = self.room.take_point(now, id) else {
                continue;
            };
            let sink = io.sink.clone();
            let moved = MovedPoint { id, point, io };
            // An owner that is gone drops it, ending its streams.
            let _ = sink.send(PointNews::Evicted(Box::new(moved)));
        }
    }

    fn on_received(&mut self, received: Received, buffer: &[u8]) {
        let now = now();
        match received {
            Received::Rtp {
                point,
                source,
                length,
            } => self.room.handle_input(
                now,
                Input::Datagram {
                    point,
                    source,
                    data: &buffer[..length],
                },
            ),
            Received::Rtcp { point, length } => self.room.handle_input(
                now,
                Input::Rtcp {
                    point,
                    data: &buffer[..length],
                },
            ),
            Received::Flv { point, frame } => self.room.handle_input(
                now,
                Input::Flv {
                    point,
                    timestamp: frame.timestamp,
                    data: &frame.data,
                },
            ),
            Received::Player { point, join } => {
                let player = NEXT_PLAYER.fetch_add(1, Ordering::Relaxed);
                if let Some(io) = self.io.iter_mut().find(|io| io.point == point) {
                    io.players.insert(player, join);
                }
                self.room
                    .handle_input(now, Input::PlayerJoined { point, player });
            }
            Received::Nothing => {}
        }
    }

    fn on_command(&mut self, command: RoomCommand) {
        let now = now();
        let result = match command {
            RoomCommand::AddPoint(id, config, io, sink) => {
                let result = self.room.add_point(now, id, *config);
                if result.is_ok() {
                    let (published, joins) = match io.rtmp {
                        Some(RoomStreams { published, players }) => {
                            (Some(published), Some(players))
                        }
                        None => (None, None),
                    };
                    self.io.push(DriverIo {
                        point: id,
                        rtp: io.rtp,
                        rtcp: io.rtcp,
                        published,
                        joins,
                        players: HashMap::new(),
                        sink,
                    });
                }
                result
            }
            RoomCommand::Insert(moved, role) => {
                let MovedPoint { id, point, io } = *moved;
                let players: Vec<u64> = io.players.keys().copied().collect();
                let result = self
                    .room
                    .insert_point(now, id, point)
                    .and_then(|()| self.room.set_role(now, id, role));
                if result.is_ok() {
                    self.io.push(io);
                    for player in players {
                        self.room
                            .handle_input(now, Input::PlayerJoined { point: id, player });
                    }
                }
                result
            }
            RoomCommand::Take(id, reply) => {
                let index = self.io.iter().position(|io| io.point == id);
                let taken = index.and_then(|index| {
                    let point = self.room.take_point(now, id).ok()?;
                    let io = self.io.remove(index);
                    Some(Box::new(MovedPoint { id, point, io }))
                });
                let _ = reply.send(taken);
                Ok(())
            }
            RoomCommand::RemovePoint(id) => {
                self.io.retain(|io| io.point != id);
                self.room.remove_point(now, id)
            }
            RoomCommand::StartRecording(recording, job) => {
                match self.room.start_recording(now, recording) {
                    Ok(()) => {
                        self.recordings.insert(recording, Writing { job: *job });
                        Ok(())
                    }
                    Err(error) => Err(error),
                }
            }
            RoomCommand::StopRecording(which) => {
                let stopping: Vec<u32> = match which {
                    Some(recording) => vec![recording],
                    None => self.recordings.keys().copied().collect(),
                };
                for recording in stopping {
                    self.stop_recording(now, recording, "STOPPED");
                }
                Ok(())
            }
            RoomCommand::Deaf(id, deaf) => self.room.set_deaf(now, id, deaf),
            RoomCommand::Close => Ok(()),
            RoomCommand::UpdatePoint(id, update) => self.room.update_point(now, id, update),
            RoomCommand::SendDigits(id, digits) => self.room.send_digits(now, id, &digits),
            RoomCommand::SendTones(id, digits) => self.room.send_tones(now, id, &digits),
            RoomCommand::DigitFrom(id, digit) => self.room.digit_from(now, id, digit),
            RoomCommand::Candidate(id, candidate) => self.room.add_remote_candidate(id, &candidate),
        };
        if let Err(error) = result {
            warn!(%error, "room command refused");
        }
    }

    /// Carries out everything the room has put out.
    fn drain(&mut self) {
        let mut departed = Vec::new();
        let mut stopped = Vec::new();
        while let Some(output) = self.room.poll_output() {
            match output {
                Output::Transmit(transmit) => send(&self.io, &transmit),
                Output::Flv {
                    point,
                    player,
                    timestamp,
                    data,
                } => {
                    let io = self.io.iter().find(|io| io.point == point);
                    let Some(join) = io.and_then(|io| io.players.get(&player)) else {
                        continue;
                    };
                    let audio = ToPlayer::Audio {
                        stream_id: join.stream_id,
                        timestamp,
                        data,
                    };
                    // A player that cannot keep up loses frames; one that is
                    // gone leaves.
                    if let Err(mpsc::error::TrySendError::Closed(_)) = join.sender.try_send(audio) {
                        departed.push((point, player));
                    }
                }
                Output::Event(event) => {
                    let point = event_point(&event);
                    if let Some(io) = self.io.iter().find(|io| io.point == point) {
                        let _ = io.sink.send(PointNews::Event(event));
                    }
                }
                Output::Recorded { recording, samples } => {
                    let failed = self
                        .recordings
                        .get_mut(&recording)
                        .and_then(|writing| writing.job.recorder.write(&samples).err());
                    if let Some(error) = failed {
                        stopped.push((recording, error.reason()));
                    }
                }
            }
        }
        for (recording, reason) in stopped {
            self.stop_recording(now(), recording, reason);
        }
        for (point, player) in departed {
            if let Some(io) = self.io.iter_mut().find(|io| io.point == point) {
                io.players.remove(&player);
            }
            self.room
                .handle_input(now(), Input::PlayerLeft { point, player });
        }
    }
}

impl Driver {
    fn stop_recording(&mut self, now: std::time::Instant, recording: u32, reason: &'static str) {
        let _ = self.room.stop_recording(now, recording);
        if let Some(writing) = self.recordings.remove(&recording) {
            finish(writing, reason);
        }
    }
}

/// Closes a recording's file and tells whoever started it.
fn finish(writing: Writing, reason: &'static str) {
    let RecordingJob { recorder, on_end } = writing.job;
    info!(reason, "recording ends");
    let finished = recorder.finish();
    on_end(RecordingEnd { finished, reason });
}

/// The point an event is about.
fn event_point(event: &Event) -> PointId {
    match event {
        Event::Digit { point, .. }
        | Event::DigitForSignalling { point, .. }
        | Event::MediaTimeout { point, .. }
        | Event::MediaFailed { point, .. }
        | Event::Stats { point, .. } => *point,
    }
}

/// Recordings are written at this rate.
pub const RECORDING_SAMPLE_RATE: u32 = RECORDING_RATE.hz();

/// Sends a datagram without waiting: a socket that cannot take it now
/// loses it, as a congested network would.
fn send(io: &[DriverIo], transmit: &Transmit<'_>) {
    let io = io.iter().find(|io| io.point == transmit.point);
    let socket = io.and_then(|io| match transmit.socket {
        Socket::Rtp => io.rtp.as_ref(),
        Socket::Rtcp => io.rtcp.as_ref(),
    });
    if let Some(socket) = socket {
        if let Err(error) = socket.try_send_to(transmit.data, transmit.destination) {
            debug!(%error, destination = %transmit.destination, "datagram not sent");
        }
    }
}

/// The next thing that arrives on any point's sockets or streams.
async fn receive(io: &mut [DriverIo], buffer: &mut [u8], first: usize) -> Received {
    poll_fn(|cx| {
        let count = io.len();
        for offset in 0..count {
            let io = &mut io[(first + offset) % count];
            let point = io.point;
            if let Poll::Ready(received) = poll_datagram(io.rtp.as_ref(), cx, buffer) {
                return Poll::Ready(match received {
                    Some((source, length)) => Received::Rtp {
                        point,
                        source,
                        length,
                    },
                    None => Received::Nothing,
                });
            }
            if let Poll::Ready(received) = poll_datagram(io.rtcp.as_ref(), cx, buffer) {
                return Poll::Ready(match received {
                    Some((_, length)) => Received::Rtcp { point, length },
                    None => Received::Nothing,
                });
            }
            if let Some(published) = io.published.as_mut() {
                match published.poll_recv(cx) {
                    Poll::Ready(Some(frame)) => {
                        return Poll::Ready(Received::Flv { point, frame });
                    }
                    Poll::Ready(None) => {
                        io.published = None;
                        return Poll::Ready(Received::Nothing);
                    }
                    Poll::Pending => {}
                }
            }
            if let Some(joins) = io.joins.as_mut() {
                match joins.poll_recv(cx) {
                    Poll::Ready(Some(join)) => {
                        return Poll::Ready(Received::Player { point, join });
                    }
                    Poll::Ready(None) => {
                        io.joins = None;
                        return Poll::Ready(Received::Nothing);
                    }
                    Poll::Pending => {}
                }
            }
        }
        Poll::Pending
    })
    .await
}

/// A datagram on `socket` if one is there: its source and length, or
/// `None` for a failed receive.
fn poll_datagram(
    socket: Option<&UdpSocket>,
    cx: &mut std::task::Context<'_>,
    buffer: &mut [u8],
) -> Poll<Option<(SocketAddr, usize)>> {
    let Some(socket) = socket else {
        return Poll::Pending;
    };
    let mut read = ReadBuf::new(buffer);
    match socket.poll_recv_from(cx, &mut read) {
        Poll::Ready(Ok(source)) => Poll::Ready(Some((source, read.filled().len()))),
        Poll::Ready(Err(error)) => {
            debug!(%error, "receive failed");
            Poll::Ready(None)
        }
        Poll::Pending => Poll::Pending,
    }
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

pub(crate) async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(Instant::from_std(deadline)).await,
        None => std::future::pending().await,
    }
}
