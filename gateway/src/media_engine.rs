//! The media event loops: a few threads (one per core unless configured),
//! each driving many rooms over one epoll set, instead of a task, a timer
//! and a `select!` per room. New rooms fill the first loop that has room
//! to spare before the next is used ([`place`]): one thread woken for a
//! light load costs less per packet than several woken in turn.
//!
//! Why: a relayed packet used to cost two `recvfrom` (the second to see
//! `EAGAIN`, as tokio's edge-triggered readiness wants), a timer inserted
//! and removed, and a task wake-up. Here a socket that becomes readable is
//! read with one `recvmmsg` of up to [`BATCH`] datagrams, and a short read
//! means it is empty, so a packet costs one receive and one send; a room's
//! timer is touched only when its deadline moves, and one `epoll_wait`
//! serves every room of the loop. The rooms of a loop tick on a 20 ms grid
//! in a few groups, so their mixing and transcoding share wake-ups. A busy
//! loop lets datagrams gather for up to [`GATHER`] before it waits again,
//! so that one wake-up serves many packets ([`Gathering`]).
//!
//! What a room does with what arrives is [`crate::media_room`]'s (and
//! `dialtone_room`'s) business; this module only moves datagrams, stream
//! wake-ups, commands and deadlines to the right room.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Wake, Waker};
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, Span};

use crate::fast_path::FastPath;
use crate::media_room::{Driver, RoomCommand};

/// How long a busy loop lets datagrams gather before it waits again (see
/// [`Gathering`]): the most it adds to a packet's delay.
const GATHER: std::time::Duration = std::time::Duration::from_millis(1);
/// Readable sockets a second from which gathering pays: about ten a
/// wake-up. Measured here (docs/performance.md, session 9): at 5 000 a
/// second it cost more than it saved, at 10 000 it was even, at 20 000 it
/// saved a fifth.
const GATHER_RATE: f64 = 10_000.0;
/// Datagrams taken from a socket in one `recvmmsg`.
const BATCH: usize = 8;
/// The largest datagram taken whole; longer ones are cut (no RTP packet
/// of a voice call comes near it).
pub const MAX_DATAGRAM: usize = 1500;
/// The token of the loop's own waker (commands, stream wake-ups).
const WAKE: Token = Token(usize::MAX);
/// The rooms of a loop tick in this many groups, spread over a frame: one
/// wake-up serves a group, and a group's work (mixing, transcoding) is
/// short enough not to delay the packets of the rooms at its end by much
/// (docs/performance.md compares one group with four and with none).
const TICK_GROUPS: u32 = 4;
/// Batches read from one socket per turn of the loop: a socket flooded
/// faster than that waits for the next turn, after every other socket.
const BATCHES_PER_TURN: usize = 4;

/// How hard a loop's Opus encoders work, by how busy the loop is: the
/// least effort when it is busy, more while it has room. Measured over
/// [`LOAD_WINDOW`], moved one step at a time, and only outside the band
/// between the two thresholds, so that it does not swing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComplexityPolicy {
    pub least: u8,
    pub most: u8,
}

/// The loop's load is measured over this long.
const LOAD_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);
/// Below this share of its time busy, a loop raises its encoders' effort.
const RAISE_BELOW: f64 = 0.25;
/// Above this share, it lowers it.
const LOWER_ABOVE: f64 = 0.5;

impl ComplexityPolicy {
    /// The complexity after a window in which the loop was busy `busy` of
    /// its time (0 to 1).
    pub fn next(self, current: u8, busy: f64) -> u8 {
        if busy < RAISE_BELOW && current < self.most {
            current + 1
        } else if busy > LOWER_ABOVE && current > self.least {
            current - 1
        } else {
            current.clamp(self.least, self.most.max(self.least))
        }
    }
}

/// A loop takes new rooms while it is expected to stay under this share
/// of its time busy (per mille).
const PLACE_BELOW: u32 = 500;
/// What a room is assumed to cost (per mille of a loop) until measured,
/// and at least: a transcoded call's share with some margin (0.5–0.8 % of a
/// core measured here), so that a burst of calls is spread before the first
/// measurement shows what they cost.
const ROOM_COST: u32 = 10;

/// The media threads. Rooms fill them in order ([`place`]).
pub struct MediaEngine {
    loops: Vec<Arc<LoopHandle>>,
    next_room: AtomicU64,
    tasks: TaskTracker,
}

/// What another thread holds of a loop: its command queue and its waker.
pub struct LoopHandle {
    commands: Sender<LoopCommand>,
    waker: mio::Waker,
    /// Stream sources whose channels woke, for the loop to poll.
    woken: Mutex<Vec<Token>>,
    load: SharedLoad,
}

/// What the engine knows of a loop's load when it places a room: the
/// loop's last load window, and the rooms placed on it since.
#[derive(Default)]
struct SharedLoad {
    busy_per_mille: AtomicU32,
    rooms_measured: AtomicU32,
    rooms_since: AtomicU32,
}

/// A loop's load as placing sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSnapshot {
    /// Share of the last window spent working, per mille.
    pub busy_per_mille: u32,
    /// Rooms the loop held at the end of that window.
    pub rooms_measured: u32,
    /// Rooms placed on it since.
    pub rooms_since: u32,
}

impl LoadSnapshot {
    /// The busy share expected with one more room.
    fn expected(self) -> u32 {
        let measured_cost = self
            .busy_per_mille
            .checked_div(self.rooms_measured)
            .unwrap_or(0);
        let cost = measured_cost.max(ROOM_COST);
        self.busy_per_mille
            .saturating_add(cost.saturating_mul(self.rooms_since.saturating_add(1)))
    }
}

/// The loop for a new room: the first expected to stay under
/// [`PLACE_BELOW`], else the one expected to be least busy.
pub fn place(loads: &[LoadSnapshot]) -> usize {
    loads
        .iter()
        .position(|load| load.expected() < PLACE_BELOW)
        .or_else(|| (0..loads.len()).min_by_key(|&index| loads[index].expected()))
        .unwrap_or(0)
}

impl SharedLoad {
    fn snapshot(&self) -> LoadSnapshot {
        LoadSnapshot {
            busy_per_mille: self.busy_per_mille.load(Ordering::Relaxed),
            rooms_measured: self.rooms_measured.load(Ordering::Relaxed),
            rooms_since: self.rooms_since.load(Ordering::Relaxed),
        }
    }

    fn window_ended(&self, busy: f64, rooms: usize) {
        let busy = (busy * 1000.0).round().clamp(0.0, 1000.0) as u32;
        self.busy_per_mille.store(busy, Ordering::Relaxed);
        self.rooms_measured
            .store(u32::try_from(rooms).unwrap_or(u32::MAX), Ordering::Relaxed);
        self.rooms_since.store(0, Ordering::Relaxed);
    }
}

pub enum LoopCommand {
    Open(Box<OpenRoom>),
    Room(u64, RoomCommand),
}

/// A room starting on a loop.
pub struct OpenRoom {
    key: u64,
    span: Span,
    /// Counts the room among the gateway's tasks while it lives.
    task: tokio_util::task::task_tracker::TaskTrackerToken,
    closed: Arc<AtomicBool>,
}

/// A room as its owners see its loop: where to send its commands.
#[derive(Clone)]
pub struct RoomAddress {
    key: u64,
    home: Arc<LoopHandle>,
    closed: Arc<AtomicBool>,
}

impl MediaEngine {
    /// Starts `threads` loops (0: one per core).
    pub fn start(
        threads: usize,
        tasks: TaskTracker,
        complexity: ComplexityPolicy,
        fast_path: Option<Arc<FastPath>>,
    ) -> io::Result<MediaEngine> {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, |cores| cores.get()),
            threads => threads,
        };
        let mut loops = Vec::with_capacity(threads);
        for index in 0..threads {
            let poll = Poll::new()?;
            let waker = mio::Waker::new(poll.registry(), WAKE)?;
            let (commands, receiver) = mpsc::channel();
            let handle = Arc::new(LoopHandle {
                commands,
                waker,
                woken: Mutex::new(Vec::new()),
                load: SharedLoad::default(),
            });
            let event_loop = EventLoop::new(
                poll,
                receiver,
                handle.clone(),
                complexity,
                fast_path.clone(),
            )?;
            std::thread::Builder::new()
                .name(format!("media-{index}"))
                .spawn(move || event_loop.run())?;
            loops.push(handle);
        }
        info!(threads, "media loops started");
        Ok(MediaEngine {
            loops,
            next_room: AtomicU64::new(0),
            tasks,
        })
    }

    /// Each loop's load, in loop order.
    pub fn loads(&self) -> Vec<LoadSnapshot> {
        self.loops
            .iter()
            .map(|handle| handle.load.snapshot())
            .collect()
    }

    /// A new, empty room on the loop [`place`] picks; its logs go in the
    /// current span.
    pub fn open_room(&self) -> RoomAddress {
        let home = self.loops[place(&self.loads())].clone();
        home.load.rooms_since.fetch_add(1, Ordering::Relaxed);
        let key = self.next_room.fetch_add(1, Ordering::Relaxed);
        let closed = Arc::new(AtomicBool::new(false));
        let opened = home.send(LoopCommand::Open(Box::new(OpenRoom {
            key,
            span: Span::current(),
            task: self.tasks.token(),
            closed: closed.clone(),
        })));
        if opened.is_err() {
            // The loop is gone: the room is ended before it began.
            closed.store(true, Ordering::Release);
        }
        RoomAddress { key, home, closed }
    }
}

impl LoopHandle {
    /// Queues a command and wakes the loop; the command back if the loop
    /// is gone.
    fn send(&self, command: LoopCommand) -> Result<(), LoopCommand> {
        self.commands.send(command).map_err(|refused| refused.0)?;
        if let Err(error) = self.waker.wake() {
            error!(%error, "media loop not woken");
        }
        Ok(())
    }
}

impl RoomAddress {
    /// Sends the room a command; gives it back when the room has ended.
    pub fn send(&self, command: RoomCommand) -> Result<(), RoomCommand> {
        if self.is_closed() {
            return Err(command);
        }
        match self.home.send(LoopCommand::Room(self.key, command)) {
            Err(LoopCommand::Room(_, command)) => Err(command),
            // What comes back is what was sent.
            _ => Ok(()),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// What a token stands for: one socket of a point, or its RTMP streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    Rtp,
    Rtcp,
    Streams,
}

#[derive(Clone, Copy)]
struct Source {
    room: u64,
    point: dialtone_room::PointId,
    kind: SourceKind,
}

/// The loop's sources by token, and the epoll set they are in.
pub struct Sources {
    registry: Registry,
    entries: Vec<Option<Source>>,
    free: Vec<usize>,
    home: Arc<LoopHandle>,
}

impl Sources {
    /// Watches a socket of a point; its token, or `None` when epoll
    /// refused it (the point is then deaf on that socket).
    pub fn watch_socket(
        &mut self,
        socket: &std::net::UdpSocket,
        room: u64,
        point: dialtone_room::PointId,
        kind: SourceKind,
    ) -> Option<Token> {
        let token = self.allocate(Source { room, point, kind });
        let fd = socket.as_raw_fd();
        match self
            .registry
            .register(&mut SourceFd(&fd), token, Interest::READABLE)
        {
            Ok(()) => Some(token),
            Err(error) => {
                error!(%error, "socket not watched");
                self.release(token);
                None
            }
        }
    }

    /// Stops watching a socket. It must be done before the socket is
    /// closed: the port lease holds a duplicate of it, and epoll forgets a
    /// socket only when its last descriptor closes.
    pub fn unwatch_socket(&mut self, socket: &std::net::UdpSocket, token: Token) {
        let fd = socket.as_raw_fd();
        if let Err(error) = self.registry.deregister(&mut SourceFd(&fd)) {
            debug!(%error, "socket was not watched");
        }
        self.release(token);
    }

    /// A token for a point's RTMP streams and the waker that reports them
    /// ready to this loop.
    pub fn watch_streams(&mut self, room: u64, point: dialtone_room::PointId) -> (Token, Waker) {
        let token = self.allocate(Source {
            room,
            point,
            kind: SourceKind::Streams,
        });
        let waker = Waker::from(Arc::new(StreamWaker {
            token,
            home: self.home.clone(),
        }));
        // Whatever is queued already is read on the next turn.
        self.home
            .woken
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(token);
        (token, waker)
    }

    pub fn unwatch_streams(&mut self, token: Token) {
        self.release(token);
    }

    fn allocate(&mut self, source: Source) -> Token {
        match self.free.pop() {
            Some(index) => {
                self.entries[index] = Some(source);
                Token(index)
            }
            None => {
                self.entries.push(Some(source));
                Token(self.entries.len() - 1)
            }
        }
    }

    fn release(&mut self, token: Token) {
        if let Some(entry) = self.entries.get_mut(token.0) {
            if entry.take().is_some() {
                self.free.push(token.0);
            }
        }
    }

    fn get(&self, token: Token) -> Option<Source> {
        self.entries.get(token.0).copied().flatten()
    }
}

/// Wakes the loop for one point's RTMP streams.
struct StreamWaker {
    token: Token,
    home: Arc<LoopHandle>,
}

impl Wake for StreamWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.home
            .woken
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(self.token);
        if let Err(error) = self.home.waker.wake() {
            error!(%error, "media loop not woken");
        }
    }
}

/// A room on its loop, with the things the loop keeps for it.
struct Hosted {
    driver: Driver,
    span: Span,
    /// The deadline the loop's timer set holds for it.
    deadline: Option<Instant>,
    closed: Arc<AtomicBool>,
    _task: tokio_util::task::task_tracker::TaskTrackerToken,
}

struct EventLoop {
    poll: Poll,
    events: Events,
    /// Tokens of the events of one turn, copied out of `events`.
    ready: Vec<Token>,
    /// Sockets left unread after [`BATCHES_PER_TURN`], for the next turn.
    backlog: Vec<Token>,
    commands: Receiver<LoopCommand>,
    sources: Sources,
    rooms: HashMap<u64, Hosted>,
    timers: BTreeSet<(Instant, u64)>,
    /// The rooms whose deadlines one turn serves (kept for its capacity).
    due: Vec<u64>,
    batch: Box<Batch>,
    /// Where the 20 ms ticks of the loop's first group of rooms fall.
    tick_origin: Instant,
    rooms_opened: u32,
    load: Load,
    gathering: Gathering,
    /// Where its rooms hand their steady relays, if anywhere.
    fast_path: Option<Arc<FastPath>>,
}

/// Whether a loop lets datagrams gather before it waits again. Woken for
/// every packet, a busy loop spends more on waking (a context switch, an
/// `epoll_wait`) than on the packet; a wake-up every [`GATHER`] serves all
/// that came meanwhile. The sleep is a wake-up of its own, so it pays only
/// when it gathers many: a loop gathers while its last window
/// ([`LOAD_WINDOW`]) found at least [`GATHER_RATE`] readable sockets a
/// second, and waits as before otherwise, so a light load gets no added
/// delay.
#[derive(Debug)]
struct Gathering {
    last_turn: Option<Instant>,
    window_began: Instant,
    sockets_in_window: u64,
    dense: bool,
}

impl Gathering {
    fn new(now: Instant) -> Gathering {
        Gathering {
            last_turn: None,
            window_began: now,
            sockets_in_window: 0,
            dense: false,
        }
    }

    /// Notes a turn that began at `began` and served `sockets` readable
    /// sockets; at the end of a window, decides for the next.
    fn turn(&mut self, began: Instant, sockets: usize) {
        self.last_turn = Some(began);
        self.sockets_in_window += sockets as u64;
        let window = began.saturating_duration_since(self.window_began);
        if window >= LOAD_WINDOW {
            let per_second = self.sockets_in_window as f64 / window.as_secs_f64();
            self.dense = per_second >= GATHER_RATE;
            self.window_began = began;
            self.sockets_in_window = 0;
        }
    }

    /// Until when to gather before the next wait, if at all; never past
    /// the loop's next deadline.
    fn until(&self, next_deadline: Option<Instant>) -> Option<Instant> {
        let last = self.last_turn.filter(|_| self.dense)?;
        let until = last + GATHER;
        Some(next_deadline.map_or(until, |deadline| deadline.min(until)))
    }
}

/// How busy a loop has been since its window began, and what its encoders
/// are told.
struct Load {
    policy: ComplexityPolicy,
    complexity: u8,
    window_began: Instant,
    busy: std::time::Duration,
}

impl Load {
    /// Counts a turn's work; at the end of a window, tells the engine how
    /// busy the loop was with `rooms`, and returns the complexity for the
    /// next window if it changes.
    fn after_turn(
        &mut self,
        began: Instant,
        ended: Instant,
        shared: &SharedLoad,
        rooms: usize,
    ) -> Option<u8> {
        self.busy += ended.saturating_duration_since(began);
        let window = ended.saturating_duration_since(self.window_began);
        if window < LOAD_WINDOW {
            return None;
        }
        let busy = self.busy.as_secs_f64() / window.as_secs_f64();
        self.window_began = ended;
        self.busy = std::time::Duration::ZERO;
        shared.window_ended(busy, rooms);
        let next = self.policy.next(self.complexity, busy);
        if next == self.complexity {
            return None;
        }
        // At most once a second per loop, and what an operator tuning
        // `opus_complexity` wants to see.
        info!(
            complexity = next,
            busy = format!("{:.0} %", busy * 100.0),
            "Opus encoders' effort changes"
        );
        self.complexity = next;
        Some(next)
    }
}

impl EventLoop {
    fn new(
        poll: Poll,
        commands: Receiver<LoopCommand>,
        home: Arc<LoopHandle>,
        complexity: ComplexityPolicy,
        fast_path: Option<Arc<FastPath>>,
    ) -> io::Result<EventLoop> {
        let registry = poll.registry().try_clone()?;
        Ok(EventLoop {
            poll,
            events: Events::with_capacity(1024),
            ready: Vec::with_capacity(1024),
            backlog: Vec::new(),
            commands,
            sources: Sources {
                registry,
                entries: Vec::new(),
                free: Vec::new(),
                home,
            },
            rooms: HashMap::new(),
            timers: BTreeSet::new(),
            due: Vec::new(),
            batch: Box::new(Batch::new()),
            tick_origin: Instant::now(),
            rooms_opened: 0,
            gathering: Gathering::new(Instant::now()),
            load: Load {
                policy: complexity,
                complexity: complexity.least,
                window_began: Instant::now(),
                busy: std::time::Duration::ZERO,
            },
            fast_path,
        })
    }

    /// Where the next room's ticks fall: the next group's place in the
    /// frame, groups taken in turn.
    fn next_tick_origin(&mut self) -> Instant {
        self.rooms_opened = self.rooms_opened.wrapping_add(1);
        let group = self.rooms_opened % TICK_GROUPS;
        self.tick_origin + dialtone_room::FRAME / TICK_GROUPS * group
    }

    fn run(mut self) {
        loop {
            self.gather();
            let timeout = if self.backlog.is_empty() {
                // An idle loop still ends its load windows, so that placing
                // sees it idle.
                let window_end = self.load.window_began + LOAD_WINDOW;
                let next = self
                    .timers
                    .first()
                    .map_or(window_end, |&(at, _)| at.min(window_end));
                Some(next.saturating_duration_since(Instant::now()))
            } else {
                Some(std::time::Duration::ZERO)
            };
            if let Err(error) = self.poll.poll(&mut self.events, timeout) {
                if error.kind() != io::ErrorKind::Interrupted {
                    error!(%error, "media loop cannot wait; its rooms stop");
                    return;
                }
            }
            // Last turn's backlog after this turn's news: a flooded socket
            // goes after the others.
            self.ready.clear();
            self.ready
                .extend(self.events.iter().map(|event| event.token()));
            self.ready.append(&mut self.backlog);
            let turn_began = Instant::now();
            let sockets = self.ready.iter().filter(|&&token| token != WAKE).count();
            self.gathering.turn(turn_began, sockets);
            for index in 0..self.ready.len() {
                let token = self.ready[index];
                if token == WAKE {
                    if !self.on_commands() {
                        return;
                    }
                    self.on_woken_streams();
                } else {
                    self.on_readable(token);
                }
            }
            self.on_deadlines();
            let rooms = self.rooms.len();
            let shared = &self.sources.home.load;
            if let Some(complexity) =
                self.load
                    .after_turn(turn_began, Instant::now(), shared, rooms)
            {
                for hosted in self.rooms.values_mut() {
                    hosted.driver.set_encoder_complexity(complexity);
                }
            }
        }
    }

    /// Sleeps while datagrams gather, when [`Gathering`] says so and no
    /// socket is left unread.
    fn gather(&self) {
        if !self.backlog.is_empty() {
            return;
        }
        let next_deadline = self.timers.first().map(|&(at, _)| at);
        if let Some(until) = self.gathering.until(next_deadline) {
            let now = Instant::now();
            if until > now {
                std::thread::sleep(until - now);
            }
        }
    }

    /// Carries out queued commands; `false` when every handle is gone.
    fn on_commands(&mut self) -> bool {
        loop {
            match self.commands.try_recv() {
                Ok(LoopCommand::Open(open)) => {
                    let OpenRoom {
                        key,
                        span,
                        task,
                        closed,
                    } = *open;
                    let tick_origin = self.next_tick_origin();
                    let mut driver = Driver::new(key, tick_origin, self.fast_path.clone());
                    driver.set_encoder_complexity(self.load.complexity);
                    self.rooms.insert(
                        key,
                        Hosted {
                            driver,
                            span,
                            deadline: None,
                            closed,
                            _task: task,
                        },
                    );
                }
                Ok(LoopCommand::Room(key, command)) => match self.rooms.get(&key) {
                    Some(_) => {
                        let close = matches!(command, RoomCommand::Close);
                        self.with_room(key, |driver, sources, _| {
                            driver.on_command(command, sources);
                        });
                        if close {
                            self.close_room(key);
                        }
                    }
                    None => crate::media_room::refuse(command),
                },
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn on_woken_streams(&mut self) {
        let woken = std::mem::take(
            &mut *self
                .sources
                .home
                .woken
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for token in woken {
            if let Some(source) = self.sources.get(token) {
                self.with_room(source.room, |driver, _, _| {
                    driver.on_streams(source.point);
                });
            }
        }
    }

    fn on_readable(&mut self, token: Token) {
        let Some(source) = self.sources.get(token) else {
            return;
        };
        let mut unread = false;
        self.with_room(source.room, |driver, _, batch| {
            let Some(fd) = driver.socket_fd(source.point, source.kind) else {
                return;
            };
            for _ in 0..BATCHES_PER_TURN {
                let received = match batch.receive(fd) {
                    Ok(received) => received,
                    Err(error) => {
                        if error.kind() != io::ErrorKind::WouldBlock {
                            debug!(%error, "receive failed");
                        }
                        return;
                    }
                };
                let now = Instant::now();
                for index in 0..received {
                    let (source_addr, data) = batch.datagram(index);
                    match (source.kind, source_addr) {
                        (SourceKind::Rtp, Some(from)) => {
                            driver.on_datagram(now, source.point, from, data)
                        }
                        (SourceKind::Rtcp, _) => driver.on_rtcp(now, source.point, data),
                        _ => {}
                    }
                }
                driver.drain();
                // A short batch means the socket is empty: epoll reports the
                // next datagram as a new edge.
                if received < BATCH {
                    return;
                }
            }
            unread = true;
        });
        if unread {
            self.backlog.push(token);
        }
    }

    /// Serves every deadline that is due, once: a room whose next deadline
    /// is already past (ticks catching up) is served on the next turn, after
    /// the sockets, so no room can hold the loop.
    fn on_deadlines(&mut self) {
        let now = Instant::now();
        let mut due = std::mem::take(&mut self.due);
        while let Some(&(at, key)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            if let Some(hosted) = self.rooms.get_mut(&key) {
                hosted.deadline = None;
            }
            due.push(key);
        }
        for key in due.drain(..) {
            self.with_room(key, |driver, _, _| driver.on_timeout(now));
        }
        self.due = due;
    }

    /// Runs `work` on a room in its span, then carries out what the room
    /// put out and sets its timer. A room that panics is ended alone.
    fn with_room(&mut self, key: u64, work: impl FnOnce(&mut Driver, &mut Sources, &mut Batch)) {
        let Some(hosted) = self.rooms.get_mut(&key) else {
            return;
        };
        let sources = &mut self.sources;
        let batch = &mut self.batch;
        // Entered in place: cloning the span costs the subscriber more than
        // the room's work on a relayed packet.
        let outcome = {
            let Hosted { driver, span, .. } = &mut *hosted;
            let _entered = span.enter();
            catch_unwind(AssertUnwindSafe(|| {
                work(driver, sources, batch);
                driver.drain();
                driver.poll_timeout()
            }))
        };
        match outcome {
            Ok(deadline) => {
                if deadline != hosted.deadline {
                    if let Some(old) = hosted.deadline {
                        self.timers.remove(&(old, key));
                    }
                    if let Some(new) = deadline {
                        self.timers.insert((new, key));
                    }
                    hosted.deadline = deadline;
                }
            }
            Err(_) => {
                error!("a room failed and ends; its calls lose their media");
                if let Some(mut hosted) = self.rooms.remove(&key) {
                    hosted.driver.abandon(&mut self.sources);
                    self.forget(key, &hosted);
                }
            }
        }
    }

    /// Ends a room: its points go back to their owners.
    fn close_room(&mut self, key: u64) {
        let Some(mut hosted) = self.rooms.remove(&key) else {
            return;
        };
        let span = hosted.span.clone();
        let _entered = span.enter();
        let ended = catch_unwind(AssertUnwindSafe(|| hosted.driver.end(&mut self.sources)));
        if ended.is_err() {
            error!("a room failed as it ended");
            hosted.driver.abandon(&mut self.sources);
        }
        self.forget(key, &hosted);
    }

    fn forget(&mut self, key: u64, hosted: &Hosted) {
        if let Some(deadline) = hosted.deadline {
            self.timers.remove(&(deadline, key));
        }
        hosted.closed.store(true, Ordering::Release);
    }
}

/// Buffers for one `recvmmsg`.
pub struct Batch {
    buffers: [[u8; MAX_DATAGRAM]; BATCH],
    addresses: [libc::sockaddr_storage; BATCH],
    lengths: [usize; BATCH],
}

impl Batch {
    fn new() -> Batch {
        Batch {
            buffers: [[0; MAX_DATAGRAM]; BATCH],
            // SAFETY: sockaddr_storage is plain data; all zeroes is a valid
            // (AF_UNSPEC) value.
            addresses: unsafe { std::mem::zeroed() },
            lengths: [0; BATCH],
        }
    }

    /// Takes up to [`BATCH`] datagrams waiting on `fd` without blocking.
    fn receive(&mut self, fd: RawFd) -> io::Result<usize> {
        // SAFETY: iovec and mmsghdr are plain data; zeroed is valid.
        let mut iovecs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for index in 0..BATCH {
            iovecs[index] = libc::iovec {
                iov_base: self.buffers[index].as_mut_ptr().cast(),
                iov_len: MAX_DATAGRAM,
            };
            let header = &mut headers[index].msg_hdr;
            header.msg_name = std::ptr::from_mut(&mut self.addresses[index]).cast();
            header.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_iov = std::ptr::from_mut(&mut iovecs[index]);
            header.msg_iovlen = 1;
        }
        // SAFETY: every header points at a buffer, an iovec and an address
        // of `self` or of this frame, all alive and large enough for the
        // lengths given, and none aliased; the kernel writes only within
        // them.
        let received = unsafe {
            libc::recvmmsg(
                fd,
                headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        let received = usize::try_from(received).map_err(|_| io::Error::last_os_error())?;
        for (length, header) in self.lengths.iter_mut().zip(&headers).take(received) {
            *length = (header.msg_len as usize).min(MAX_DATAGRAM);
        }
        Ok(received)
    }

    /// Datagram `index` of the last receive: its source (if IP) and bytes.
    fn datagram(&self, index: usize) -> (Option<SocketAddr>, &[u8]) {
        let data = &self.buffers[index][..self.lengths[index]];
        (socket_addr(&self.addresses[index]), data)
    }
}

fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which
            // is smaller than sockaddr_storage and needs no more alignment.
            let v4 = unsafe { &*std::ptr::from_ref(storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(v4.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let v6 = unsafe { &*std::ptr::from_ref(storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(v6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(v6.sin6_port),
                v6.sin6_flowinfo,
                v6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(sequence: u16, fill: u8) -> Vec<u8> {
        let mut packet = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34];
        packet[2..4].copy_from_slice(&sequence.to_be_bytes());
        packet[4..8].copy_from_slice(&(u32::from(sequence) * 160).to_be_bytes());
        packet.extend([fill; 160]);
        packet
    }

    /// A socket to read with [`Batch::receive`], and its address.
    fn non_blocking_receiver() -> (std::net::UdpSocket, SocketAddr) {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver.set_nonblocking(true).unwrap();
        let address = receiver.local_addr().unwrap();
        (receiver, address)
    }

    fn bound() -> std::net::UdpSocket {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        socket
    }

    /// Two relaying rooms on one loop, the first of which then panics: it
    /// ends alone (its points' owners hear their media failed, its task
    /// ends), the other goes on relaying.
    #[tokio::test]
    async fn a_room_that_panics_ends_alone_and_its_loop_goes_on() {
        use crate::media_room::{MediaRoom, PointNews};
        use dialtone_room::Event;

        let (tasks, engine) = one_loop();
        let broken = MediaRoom::start(&engine);
        let healthy = MediaRoom::start(&engine);
        let (broken_sink, mut broken_news) = tokio::sync::mpsc::unbounded_channel();
        let (healthy_sink, _healthy_news) = tokio::sync::mpsc::unbounded_channel();
        let broken_call = relay_pair(&broken, &broken_sink);
        let healthy_call = relay_pair(&healthy, &healthy_sink);
        broken_call.relays(0);
        healthy_call.relays(0);
        assert_eq!(tasks.len(), 2);

        broken.inject_fault();
        let mut failed = Vec::new();
        while failed.len() < 2 {
            let news = tokio::time::timeout(std::time::Duration::from_secs(5), broken_news.recv())
                .await
                .unwrap()
                .unwrap();
            if let PointNews::Event(Event::MediaFailed { point, problem }) = *news {
                assert_eq!(problem, "the media room failed");
                failed.push(point.0);
            }
        }
        failed.sort_unstable();
        assert_eq!(failed, [0, 1]);
        for sequence in 1..20 {
            healthy_call.relays(sequence);
        }
        // The broken room's task is gone; the healthy one's lives on.
        wait_until(|| tasks.len() == 1).await;
        drop(healthy);
        wait_until(|| tasks.is_empty()).await;
    }

    /// An engine of one loop, and the tracker its rooms count in.
    fn one_loop() -> (TaskTracker, MediaEngine) {
        let tasks = TaskTracker::new();
        let policy = ComplexityPolicy { least: 3, most: 3 };
        let engine = MediaEngine::start(1, tasks.clone(), policy, None).unwrap();
        (tasks, engine)
    }

    /// A caller and a callee relayed through two points of `room`.
    struct RelayPair {
        caller: std::net::UdpSocket,
        callee: std::net::UdpSocket,
        ports: [SocketAddr; 2],
    }

    fn relay_pair(
        room: &crate::media_room::MediaRoom,
        sink: &crate::media_room::PointSink,
    ) -> RelayPair {
        use crate::media_room::PointIo;
        use dialtone_codecs::Codec;
        use dialtone_room::{PointConfig, PointId};

        let (caller, callee) = (bound(), bound());
        let mut ports = Vec::new();
        for (id, far_end) in [(0, &caller), (1, &callee)] {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            socket.set_nonblocking(true).unwrap();
            ports.push(socket.local_addr().unwrap());
            let config =
                PointConfig::rtp(far_end.local_addr().unwrap(), Some((0, Codec::Pcmu)), None);
            let io = PointIo {
                rtp: Some(socket),
                ..PointIo::default()
            };
            room.add_point(PointId(id), config, io, sink.clone());
        }
        RelayPair {
            caller,
            callee,
            ports: [ports[0], ports[1]],
        }
    }

    impl RelayPair {
        /// One packet each way arrives, from the other point's port.
        fn relays(&self, sequence: u16) {
            let mut buffer = [0u8; 1500];
            self.caller
                .send_to(&rtp(sequence, 0xaa), self.ports[0])
                .unwrap();
            let (length, from) = self.callee.recv_from(&mut buffer).unwrap();
            assert_eq!((length, from), (172, self.ports[1]));
            assert_eq!(buffer[12..172], [0xaa; 160]);
            self.callee
                .send_to(&rtp(sequence, 0x55), self.ports[1])
                .unwrap();
            let (length, from) = self.caller.recv_from(&mut buffer).unwrap();
            assert_eq!((length, from), (172, self.ports[0]));
            assert_eq!(buffer[12..172], [0x55; 160]);
        }
    }

    async fn wait_until(done: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "not within 5 s");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Two RTP points of one room on a loop: what each far end sends, the
    /// other hears; a flood on one side holds up nothing on the other; and
    /// when the room ends, both points come back to their owner and the
    /// room no longer counts as a task.
    #[tokio::test]
    async fn a_room_on_a_loop_relays_both_ways_and_gives_its_points_back_when_it_ends() {
        use crate::media_room::{MediaRoom, PointNews};

        let (tasks, engine) = one_loop();
        let room = MediaRoom::start(&engine);
        let (sink, mut news) = tokio::sync::mpsc::unbounded_channel();
        let call = relay_pair(&room, &sink);
        assert_eq!(tasks.len(), 1);
        for sequence in 0..5 {
            call.relays(sequence);
        }
        let RelayPair {
            caller,
            callee,
            ports,
        } = &call;
        let mut buffer = [0u8; 1500];
        // More than a turn's batches queued on the caller's side at once.
        for sequence in 5..5 + (BATCH * BATCHES_PER_TURN * 2) as u16 {
            caller.send_to(&rtp(sequence, 0xaa), ports[0]).unwrap();
        }
        callee.send_to(&rtp(5, 0x55), ports[1]).unwrap();
        let (length, _) = caller.recv_from(&mut buffer).unwrap();
        assert_eq!((length, buffer[12]), (172, 0x55));
        for _ in 0..BATCH * BATCHES_PER_TURN * 2 {
            let (length, _) = callee.recv_from(&mut buffer).unwrap();
            assert_eq!((length, buffer[12]), (172, 0xaa));
        }

        drop(room);
        drop(sink);
        let mut evicted = Vec::new();
        while let Some(news) = news.recv().await {
            if let PointNews::Evicted(point) = *news {
                evicted.push(point.id.0);
            }
        }
        evicted.sort_unstable();
        assert_eq!(evicted, [0, 1]);
        // The loop lets go of the room's task right after the evictions.
        tasks.close();
        tokio::time::timeout(std::time::Duration::from_secs(5), tasks.wait())
            .await
            .unwrap();
    }

    #[test]
    fn opus_effort_rises_when_idle_falls_when_busy_a_step_at_a_time_and_holds_between() {
        let policy = ComplexityPolicy { least: 3, most: 6 };
        let mut complexity = 3;
        for expected in [4, 5, 6, 6] {
            complexity = policy.next(complexity, 0.1);
            assert_eq!(complexity, expected);
        }
        // Between the thresholds nothing moves, so a raise that costs a
        // little CPU does not swing it back.
        assert_eq!(policy.next(6, 0.3), 6);
        assert_eq!(policy.next(6, 0.5), 6);
        for expected in [5, 4, 3, 3] {
            complexity = policy.next(complexity, 0.9);
            assert_eq!(complexity, expected);
        }
        let fixed = ComplexityPolicy { least: 3, most: 3 };
        assert_eq!(fixed.next(3, 0.0), 3);
        assert_eq!(fixed.next(3, 1.0), 3);
    }

    #[test]
    fn a_loads_window_ends_after_a_second_with_its_share_of_busy_time() {
        let start = Instant::now();
        let mut load = Load {
            policy: ComplexityPolicy { least: 3, most: 6 },
            complexity: 3,
            window_began: start,
            busy: std::time::Duration::ZERO,
        };
        let shared = SharedLoad::default();
        shared.rooms_since.store(7, Ordering::Relaxed);
        let ms = std::time::Duration::from_millis;
        let mut turn = |began, ended, rooms| {
            load.after_turn(start + ms(began), start + ms(ended), &shared, rooms)
        };
        // 100 ms of work in the first 900 ms: the window is still open.
        assert_eq!(turn(800, 900, 7), None);
        assert_eq!(shared.snapshot().rooms_since, 7, "no window ended yet");
        // 10 % busy over the second: one step up, and the engine is told.
        assert_eq!(turn(1000, 1000, 7), Some(4));
        let told = LoadSnapshot {
            busy_per_mille: 100,
            rooms_measured: 7,
            rooms_since: 0,
        };
        assert_eq!(shared.snapshot(), told);
        // 800 ms of work in the next: one step down.
        assert_eq!(turn(1200, 2000, 9), Some(3));
        // 40 %: inside the band, no change.
        assert_eq!(turn(2600, 3000, 9), None);
        assert_eq!(shared.snapshot().busy_per_mille, 400);
    }

    #[test]
    fn a_loop_gathers_only_after_a_window_of_dense_packets_and_never_past_a_deadline() {
        let start = Instant::now();
        let ms = std::time::Duration::from_millis;
        let mut gathering = Gathering::new(start);
        assert_eq!(gathering.until(None), None, "no turn yet");
        // A first window of 5 sockets a millisecond: sparse, it waits at once.
        for turn in 0..=1000 {
            gathering.turn(start + ms(turn), 5);
        }
        assert_eq!(gathering.until(None), None);
        // A window of 20 a millisecond: from its end on, it gathers.
        for turn in 1001..=2000 {
            gathering.turn(start + ms(turn), 20);
        }
        assert_eq!(gathering.until(None), Some(start + ms(2000) + GATHER));
        // Within the window, a quiet turn changes nothing yet.
        gathering.turn(start + ms(2500), 0);
        assert_eq!(gathering.until(None), Some(start + ms(2500) + GATHER));
        // A room's tick due sooner bounds the gathering.
        let tick = start + ms(2500) + GATHER / 4;
        assert_eq!(gathering.until(Some(tick)), Some(tick));
        // The traffic stops: the window that saw it end stops gathering.
        gathering.turn(start + ms(3100), 1);
        assert_eq!(gathering.until(None), None);
    }

    fn load(busy_per_mille: u32, rooms_measured: u32, rooms_since: u32) -> LoadSnapshot {
        LoadSnapshot {
            busy_per_mille,
            rooms_measured,
            rooms_since,
        }
    }

    #[test]
    fn rooms_fill_the_first_loop_with_time_to_spare_then_the_next() {
        // A light load stays on the first loop.
        assert_eq!(place(&[load(100, 200, 0), load(0, 0, 0)]), 0);
        // One more room would take the first past half busy: the second.
        assert_eq!(place(&[load(498, 200, 0), load(0, 0, 0)]), 1);
        // Rooms placed since the last window count at their measured cost.
        assert_eq!(place(&[load(400, 10, 2), load(0, 0, 0)]), 1);
        // Every loop past half: the least busy takes it.
        assert_eq!(place(&[load(900, 200, 0), load(600, 100, 0)]), 1);
    }

    #[test]
    fn a_burst_before_any_measurement_is_spread_at_a_transcoded_calls_cost() {
        let mut loads = [load(0, 0, 0), load(0, 0, 0)];
        let mut placed = Vec::new();
        for _ in 0..300 {
            let index = place(&loads);
            loads[index].rooms_since += 1;
            placed.push(index);
        }
        // 49 rooms at 10 per mille each keep the first loop under half busy.
        assert!(placed[..49].iter().all(|&index| index == 0));
        assert_eq!(placed[49], 1);
        let on_first = placed.iter().filter(|&&index| index == 0).count();
        assert_eq!(on_first, 150, "the rest alternate");
        // Rooms measured cheaper still count at least ROOM_COST each.
        assert_eq!(place(&[load(50, 500, 90), load(0, 0, 0)]), 1);
    }

    #[test]
    fn a_batch_takes_what_is_queued_with_each_source_and_stops_short_when_empty() {
        let (receiver, to) = non_blocking_receiver();
        let first = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let second = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        first.send_to(b"one", to).unwrap();
        second.send_to(b"two!", to).unwrap();
        first.send_to(&[7; 2000], to).unwrap();
        let mut batch = Box::new(Batch::new());
        let received = batch.receive(receiver.as_raw_fd()).unwrap();
        assert_eq!(received, 3);
        assert_eq!(
            batch.datagram(0),
            (Some(first.local_addr().unwrap()), &b"one"[..])
        );
        assert_eq!(
            batch.datagram(1),
            (Some(second.local_addr().unwrap()), &b"two!"[..])
        );
        // Longer than a datagram we take: cut, not an error.
        assert_eq!(batch.datagram(2).1.len(), MAX_DATAGRAM);
        let empty = batch.receive(receiver.as_raw_fd()).unwrap_err();
        assert_eq!(empty.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_full_batch_leaves_the_rest_for_the_next_receive() {
        let (receiver, to) = non_blocking_receiver();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for index in 0..BATCH + 2 {
            sender.send_to(&[index as u8], to).unwrap();
        }
        let mut batch = Box::new(Batch::new());
        assert_eq!(batch.receive(receiver.as_raw_fd()).unwrap(), BATCH);
        assert_eq!(batch.receive(receiver.as_raw_fd()).unwrap(), 2);
        assert_eq!(batch.datagram(1).1, &[BATCH as u8 + 1][..]);
    }
}
