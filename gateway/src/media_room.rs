//! A room's handles, and its driver: the part of a media loop
//! ([`crate::media_engine`]) that owns one [`Room`]'s sockets, RTMP streams
//! and recordings' files, feeds the room what arrives with the time it
//! arrived, and carries out what the room puts out. All media logic is in
//! `dialtone_room`; nothing here decides anything.
//!
//! Each point is added with a [`PointSink`]: the room's events about the
//! point go there (to the call or session that owns it), and when the room
//! ends with the point still in it, the point itself goes back there with
//! its sockets and streams ([`PointNews::Evicted`]), to live on elsewhere.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use dialtone_room::offload::{Offload, OffloadProgress};
use dialtone_room::stats::MediaStatsSnapshot;
use dialtone_room::{
    DetachedPoint, Event, Input, Output, PointConfig, PointId, PointUpdate, Role, Room, Socket,
    Transmit, RECORDING_RATE,
};
use mio::Token;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::fast_path::{FastPath, InstalledRule};
use crate::media_engine::{MediaEngine, RoomAddress, SourceKind, Sources};
use crate::recording::{FinishedRecording, Recorder, RecordingError};
use crate::rtmp_streams::{FlvFrame, PlayerJoin, RoomStreams, ToPlayer};

/// The I/O of one point: its sockets, or an RTMP client's streams.
#[derive(Debug, Default)]
pub struct PointIo {
    /// Non-blocking.
    pub rtp: Option<UdpSocket>,
    pub rtcp: Option<UdpSocket>,
    pub rtmp: Option<RoomStreams>,
    /// Where a watched point's statistics go, every second and when the
    /// room ends. Written in place rather than sent as news: news wakes
    /// the owner's task, a second per call for nothing.
    pub stats: Option<StatsSlot>,
}

/// The latest statistics of a watched point.
pub type StatsSlot = watch::Sender<Option<MediaStatsSnapshot>>;

/// What a room tells the owner of one of its points.
#[derive(Debug)]
pub enum PointNews {
    Event(Event),
    /// The room ended with the point in it: here it is, to be put in
    /// another room or dropped.
    Evicted(Box<MovedPoint>),
}

/// Where a point's news goes. Boxed: a channel allocates 32 slots of its
/// message type at once, and news is 128 bytes, 4 KB of every call.
pub type PointSink = mpsc::UnboundedSender<Box<PointNews>>;

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

pub enum RoomCommand {
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
    /// Makes the room panic, as a bug in it would: tests show that such a
    /// room ends alone.
    #[cfg(test)]
    Fault,
}

/// A handle on a room: anyone holding one can add, move and command
/// points. The room lives until its [`MediaRoom`] owner drops it.
#[derive(Clone)]
pub struct RoomHandle {
    address: RoomAddress,
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
    /// Starts an empty room on one of the engine's loops.
    pub fn start(engine: &MediaEngine) -> MediaRoom {
        MediaRoom {
            handle: RoomHandle {
                address: engine.open_room(),
            },
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
        match self.address.send(RoomCommand::Insert(point, role)) {
            Ok(()) => Ok(()),
            Err(refused) => match refused {
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
        self.address.is_closed()
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

    #[cfg(test)]
    pub fn inject_fault(&self) {
        self.send(RoomCommand::Fault);
    }

    fn send(&self, command: RoomCommand) {
        if let Err(command) = self.address.send(command) {
            refuse(command);
        }
    }
}

/// What a room does with a command that reached it after it ended: a
/// point sent to it goes back to its owner, as if evicted; a taker hears
/// there is nothing to take (its reply is dropped).
pub fn refuse(command: RoomCommand) {
    debug!("the room has ended");
    if let RoomCommand::Insert(moved, _) = command {
        let sink = moved.io.sink.clone();
        let _ = sink.send(Box::new(PointNews::Evicted(moved)));
    }
}

/// One point's I/O as the driver keeps it, and where its news goes.
struct DriverIo {
    point: PointId,
    /// The kernel's rule for the relay from this point, while it has one.
    /// First, so that it is deleted before the socket closes.
    offloaded: Option<InstalledRule>,
    rtp: Option<UdpSocket>,
    rtcp: Option<UdpSocket>,
    published: Option<mpsc::Receiver<FlvFrame>>,
    joins: Option<mpsc::Receiver<PlayerJoin>>,
    players: HashMap<u64, PlayerJoin>,
    sink: PointSink,
    stats: Option<StatsSlot>,
    /// Its tokens on the loop of the room it is in; none while it moves.
    watched: Watched,
}

#[derive(Default)]
struct Watched {
    rtp: Option<Token>,
    rtcp: Option<Token>,
    streams: Option<(Token, Waker)>,
}

impl DriverIo {
    /// Puts the point's sockets and streams on the room's loop.
    fn watch(&mut self, room: u64, sources: &mut Sources) {
        if let Some(socket) = &self.rtp {
            self.watched.rtp = sources.watch_socket(socket, room, self.point, SourceKind::Rtp);
        }
        if let Some(socket) = &self.rtcp {
            self.watched.rtcp = sources.watch_socket(socket, room, self.point, SourceKind::Rtcp);
        }
        if self.published.is_some() || self.joins.is_some() {
            self.watched.streams = Some(sources.watch_streams(room, self.point));
        }
    }

    /// Takes the point off its loop, before it moves or closes.
    fn unwatch(&mut self, sources: &mut Sources) {
        let watched = std::mem::take(&mut self.watched);
        if let (Some(socket), Some(token)) = (&self.rtp, watched.rtp) {
            sources.unwatch_socket(socket, token);
        }
        if let (Some(socket), Some(token)) = (&self.rtcp, watched.rtcp) {
            sources.unwatch_socket(socket, token);
        }
        if let Some((token, _)) = watched.streams {
            sources.unwatch_streams(token);
        }
    }
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

/// One room and its points' I/O, on a media loop.
pub struct Driver {
    key: u64,
    room: Room,
    io: Vec<DriverIo>,
    recordings: HashMap<u32, Writing>,
    fast_path: Option<Arc<FastPath>>,
    /// When the kernel's counters are next read, while it has a relay of
    /// the room's: the room's own timers may be far off (unwatched points
    /// have none), and the metrics should not lag by more.
    next_sync: Option<Instant>,
}

/// How often the kernel's counters are read at the least.
const SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

impl Driver {
    /// A room whose 20 ms ticks fall on `tick_origin` plus whole frames:
    /// rooms that share it share the wake-ups of their ticks. With a
    /// `fast_path`, its steady relays are forwarded by the kernel.
    pub fn new(key: u64, tick_origin: Instant, fast_path: Option<Arc<FastPath>>) -> Driver {
        let mut room = Room::with_tick_origin(tick_origin);
        if fast_path.is_some() {
            room.enable_offload();
        }
        Driver {
            key,
            room,
            io: Vec::new(),
            recordings: HashMap::new(),
            fast_path,
            next_sync: None,
        }
    }

    /// The kernel's progress with the room's relays, for the room to count;
    /// `take`: the relays come back to the room.
    fn sync_offloaded(&mut self, now: Instant, take: bool) {
        for index in 0..self.io.len() {
            self.sync_offloaded_from(now, index, take);
        }
        let offloaded = self.io.iter().any(|io| io.offloaded.is_some());
        self.next_sync = offloaded.then(|| now + SYNC_INTERVAL);
    }

    fn sync_offloaded_from(&mut self, now: Instant, index: usize, take: bool) {
        let io = &mut self.io[index];
        let point = io.point;
        let (progress, ended) = match io.offloaded.take() {
            None => return,
            Some(rule) if take => (rule.take(now), true),
            Some(mut rule) => {
                let progress = rule.progress(now);
                io.offloaded = Some(rule);
                (progress, false)
            }
        };
        let progress = progress.unwrap_or_else(|error| {
            warn!(point = point.0, %error, "kernel relay unreadable");
            OffloadProgress::default()
        });
        self.room.handle_input(
            now,
            Input::Offloaded {
                point,
                progress,
                ended,
            },
        );
    }

    /// Hands a relay the room found steady to the kernel; the room hears
    /// at once when it cannot.
    fn offload(&mut self, now: Instant, offload: &Offload) {
        let local = |id: PointId| {
            let io = self.io.iter().find(|io| io.point == id)?;
            io.rtp.as_ref()?.local_addr().ok()
        };
        let installed = match (&self.fast_path, local(offload.from), local(offload.to)) {
            (Some(fast_path), Some(receiving), Some(sending)) => fast_path
                .install(offload, receiving, sending)
                .map_err(|error| debug!(%error, "relay not handed to the kernel")),
            _ => Err(()),
        };
        match (
            installed,
            self.io.iter_mut().find(|io| io.point == offload.from),
        ) {
            (Ok(rule), Some(io)) => {
                debug!(
                    from = offload.from.0,
                    to = offload.to.0,
                    "relay in the kernel"
                );
                io.offloaded = Some(rule);
                self.next_sync.get_or_insert(now + SYNC_INTERVAL);
            }
            _ => self.room.handle_input(
                now,
                Input::Offloaded {
                    point: offload.from,
                    progress: OffloadProgress::default(),
                    ended: true,
                },
            ),
        }
    }

    pub fn set_encoder_complexity(&mut self, complexity: u8) {
        self.room.set_encoder_complexity(complexity);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.room.poll_timeout(), self.next_sync]
            .into_iter()
            .flatten()
            .min()
    }

    /// The room's timers, after the kernel's counters: a media timeout
    /// shorter than the second between readings would otherwise take a
    /// call the kernel carries for silent.
    pub fn on_timeout(&mut self, now: Instant) {
        self.sync_offloaded(now, false);
        self.room.handle_input(now, Input::Timeout);
    }

    /// The descriptor of a point's socket, to read it.
    pub fn socket_fd(&self, point: PointId, kind: SourceKind) -> Option<RawFd> {
        let io = self.io.iter().find(|io| io.point == point)?;
        let socket = match kind {
            SourceKind::Rtp => io.rtp.as_ref(),
            SourceKind::Rtcp => io.rtcp.as_ref(),
            SourceKind::Streams => None,
        };
        socket.map(AsRawFd::as_raw_fd)
    }

    /// A datagram the kernel left to the room (or that came before it took
    /// the relay): the relay comes back first, so the room sees its stream
    /// where the kernel left it.
    pub fn on_datagram(&mut self, now: Instant, point: PointId, source: SocketAddr, data: &[u8]) {
        if let Some(index) = self
            .io
            .iter()
            .position(|io| io.point == point && io.offloaded.is_some())
        {
            self.sync_offloaded_from(now, index, true);
        }
        self.room.handle_input(
            now,
            Input::Datagram {
                point,
                source,
                data,
            },
        );
    }

    pub fn on_rtcp(&mut self, now: Instant, point: PointId, data: &[u8]) {
        self.room.handle_input(now, Input::Rtcp { point, data });
    }

    /// Reads what a point's RTMP streams hold, until they are empty (their
    /// waker then tells the loop of more).
    pub fn on_streams(&mut self, point: PointId) {
        let Some(io) = self.io.iter_mut().find(|io| io.point == point) else {
            return;
        };
        let Some((_, waker)) = &io.watched.streams else {
            return;
        };
        let mut context = Context::from_waker(waker);
        let now = Instant::now();
        if let Some(published) = io.published.as_mut() {
            loop {
                match published.poll_recv(&mut context) {
                    Poll::Ready(Some(frame)) => self.room.handle_input(
                        now,
                        Input::Flv {
                            point,
                            timestamp: frame.timestamp,
                            data: &frame.data,
                        },
                    ),
                    Poll::Ready(None) => {
                        io.published = None;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
        }
        if let Some(joins) = io.joins.as_mut() {
            loop {
                match joins.poll_recv(&mut context) {
                    Poll::Ready(Some(join)) => {
                        let player = NEXT_PLAYER.fetch_add(1, Ordering::Relaxed);
                        io.players.insert(player, join);
                        self.room
                            .handle_input(now, Input::PlayerJoined { point, player });
                    }
                    Poll::Ready(None) => {
                        io.joins = None;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
        }
    }

    /// The room ends: recordings are finished, each point's owner gets a
    /// last statistics snapshot and the point back.
    pub fn end(&mut self, sources: &mut Sources) {
        self.sync_offloaded(Instant::now(), true);
        self.drain();
        for (_, writing) in self.recordings.drain() {
            finish(writing, "ROOM_ENDED");
        }
        let now = Instant::now();
        for mut io in std::mem::take(&mut self.io) {
            io.unwatch(sources);
            let id = io.point;
            if let (Some(snapshot), Some(slot)) = (self.room.stats(id), &io.stats) {
                slot.send_replace(Some(snapshot));
            }
            let Ok(point) = self.room.take_point(now, id) else {
                continue;
            };
            let sink = io.sink.clone();
            let moved = MovedPoint { id, point, io };
            // An owner that is gone drops it, ending its streams.
            let _ = sink.send(Box::new(PointNews::Evicted(Box::new(moved))));
        }
    }

    /// The room failed: its points' I/O is taken off the loop and closed,
    /// and their owners hear that their media failed (a call ends with
    /// CALL_FAILED rather than going on silent).
    pub fn abandon(&mut self, sources: &mut Sources) {
        for mut io in std::mem::take(&mut self.io) {
            io.unwatch(sources);
            let failed = Event::MediaFailed {
                point: io.point,
                problem: "the media room failed".to_string(),
            };
            let _ = io.sink.send(Box::new(PointNews::Event(failed)));
        }
    }

    pub fn on_command(&mut self, command: RoomCommand, sources: &mut Sources) {
        let now = Instant::now();
        // Whatever it changes, the room decides on its relays again.
        self.sync_offloaded(now, true);
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
                    let mut io = DriverIo {
                        point: id,
                        offloaded: None,
                        rtp: io.rtp,
                        rtcp: io.rtcp,
                        published,
                        joins,
                        players: HashMap::new(),
                        sink,
                        stats: io.stats,
                        watched: Watched::default(),
                    };
                    io.watch(self.key, sources);
                    self.io.push(io);
                }
                result
            }
            RoomCommand::Insert(moved, role) => {
                let MovedPoint { id, point, mut io } = *moved;
                let players: Vec<u64> = io.players.keys().copied().collect();
                let result = self
                    .room
                    .insert_point(now, id, point)
                    .and_then(|()| self.room.set_role(now, id, role));
                if result.is_ok() {
                    io.watch(self.key, sources);
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
                    let mut io = self.io.remove(index);
                    io.unwatch(sources);
                    Some(Box::new(MovedPoint { id, point, io }))
                });
                let _ = reply.send(taken);
                Ok(())
            }
            RoomCommand::RemovePoint(id) => {
                if let Some(index) = self.io.iter().position(|io| io.point == id) {
                    self.io.remove(index).unwatch(sources);
                }
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
            #[cfg(test)]
            RoomCommand::Fault => panic!("a fault injected by a test"),
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
    pub fn drain(&mut self) {
        let mut departed = Vec::new();
        let mut stopped = Vec::new();
        let mut offloads = Vec::new();
        let mut reclaimed = Vec::new();
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
                Output::Event(Event::Stats { point, snapshot }) => {
                    let io = self.io.iter().find(|io| io.point == point);
                    if let Some(slot) = io.and_then(|io| io.stats.as_ref()) {
                        slot.send_replace(Some(snapshot));
                    }
                }
                Output::Event(event) => {
                    let point = event_point(&event);
                    if let Some(io) = self.io.iter().find(|io| io.point == point) {
                        let _ = io.sink.send(Box::new(PointNews::Event(event)));
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
                Output::Offload(offload) => offloads.push(offload),
                Output::Reclaim(point) => reclaimed.push(point),
            }
        }
        let now = Instant::now();
        for offload in &offloads {
            self.offload(now, offload);
        }
        for point in &reclaimed {
            if let Some(index) = self.io.iter().position(|io| io.point == *point) {
                self.sync_offloaded_from(now, index, true);
            }
        }
        for (recording, reason) in stopped {
            self.stop_recording(Instant::now(), recording, reason);
        }
        for (point, player) in departed.iter().copied() {
            if let Some(io) = self.io.iter_mut().find(|io| io.point == point) {
                io.players.remove(&player);
            }
            self.room
                .handle_input(Instant::now(), Input::PlayerLeft { point, player });
        }
        // What the room said to those inputs.
        if !(offloads.is_empty() && reclaimed.is_empty() && departed.is_empty()) {
            self.drain();
        }
    }

    fn stop_recording(&mut self, now: Instant, recording: u32, reason: &'static str) {
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
        if let Err(error) = socket.send_to(transmit.data, transmit.destination) {
            debug!(%error, destination = %transmit.destination, "datagram not sent");
        }
    }
}

pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await,
        None => std::future::pending().await,
    }
}
