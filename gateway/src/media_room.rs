//! The driver of a call's [`Room`]: one task that owns the room's sockets,
//! its RTMP streams and its timer, feeds the room what arrives with the
//! time it arrived, and carries out what the room puts out. All media
//! logic is in `dialtone_room`; nothing here decides anything.

use std::collections::HashMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::task::Poll;

use dialtone_room::stats::MediaStatsSnapshot;
use dialtone_room::{
    Event, Input, Output, PointConfig, PointId, PointUpdate, Room, Socket, Transmit,
};
use tokio::io::ReadBuf;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn, Instrument};

use crate::rtmp_streams::{FlvFrame, PlayerJoin, RoomStreams, ToPlayer};

/// The I/O of one point: its sockets, or an RTMP client's streams.
#[derive(Debug, Default)]
pub struct PointIo {
    pub rtp: Option<UdpSocket>,
    pub rtcp: Option<UdpSocket>,
    pub rtmp: Option<RoomStreams>,
}

enum RoomCommand {
    AddPoint(PointId, Box<PointConfig>, PointIo),
    UpdatePoint(PointId, PointUpdate),
    SendDigits(PointId, String),
    SendTones(PointId, String),
    DigitFrom(PointId, char),
    Candidate(PointId, String),
}

/// A call's handle on its room; dropping it ends the room.
pub struct MediaRoom {
    commands: mpsc::UnboundedSender<RoomCommand>,
    pub events: mpsc::UnboundedReceiver<Event>,
    /// The statistics of the room's watched leg, every second and once more
    /// when the room ends.
    pub stats: watch::Receiver<Option<MediaStatsSnapshot>>,
}

impl MediaRoom {
    /// Starts an empty room; `watched` is the point whose statistics
    /// [`MediaRoom::stats`] follows.
    pub fn start(watched: PointId, tasks: &TaskTracker) -> MediaRoom {
        let (commands, command_receiver) = mpsc::unbounded_channel();
        let (event_sender, events) = mpsc::unbounded_channel();
        let (stats_sender, stats) = watch::channel(None);
        let driver = Driver {
            room: Room::new(),
            io: Vec::new(),
            watched,
            events: event_sender,
            stats: stats_sender,
            next_player: 0,
        };
        tasks.spawn(driver.run(command_receiver).in_current_span());
        MediaRoom {
            commands,
            events,
            stats,
        }
    }

    pub fn add_point(&self, id: PointId, config: PointConfig, io: PointIo) {
        self.send(RoomCommand::AddPoint(id, Box::new(config), io));
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

/// One point's I/O as the driver keeps it.
struct DriverIo {
    point: PointId,
    rtp: Option<UdpSocket>,
    rtcp: Option<UdpSocket>,
    published: Option<mpsc::UnboundedReceiver<FlvFrame>>,
    joins: Option<mpsc::UnboundedReceiver<PlayerJoin>>,
    players: HashMap<u64, PlayerJoin>,
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
    watched: PointId,
    events: mpsc::UnboundedSender<Event>,
    stats: watch::Sender<Option<MediaStatsSnapshot>>,
    next_player: u64,
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
                    Some(command) => self.on_command(command),
                    None => break,
                },
            }
        }
        // The call ended: a last snapshot for its quality report, and the
        // end of every RTMP player's stream.
        if let Some(snapshot) = self.room.stats(self.watched) {
            let _ = self.stats.send(Some(snapshot));
        }
        for io in &self.io {
            for join in io.players.values() {
                let _ = join.sender.send(ToPlayer::End {
                    stream_id: join.stream_id,
                });
            }
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
                let player = self.next_player;
                self.next_player += 1;
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
            RoomCommand::AddPoint(id, config, io) => {
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
                    });
                }
                result
            }
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
                    if join.sender.send(audio).is_err() {
                        departed.push((point, player));
                    }
                }
                Output::Event(Event::Stats { point, snapshot }) => {
                    if point == self.watched {
                        let _ = self.stats.send(Some(snapshot));
                    }
                }
                Output::Event(event) => {
                    let _ = self.events.send(event);
                }
            }
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
