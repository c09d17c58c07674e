//! Which RTMP stream names exist, and what a client connection does with
//! them. A call with an RTMP point registers two unguessable names: one the
//! client publishes its microphone to, one it plays the far end from. A
//! publish or play of any other name is refused, and so is a second
//! publisher on a name. [`RtmpClient`] is the part of a connection that
//! routes its streams to and from the calls' rooms; the TCP and RTMPT
//! drivers feed it the session's events and write what it produces.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use dialtone_rtmp::{AudioTag, Bytes, FlvAudioCodec, PublishRefusal, ServerEvent, ServerSession};
use tokio::sync::mpsc;
use tracing::{debug, info};

/// No decoder is to be had without writing one.
const NELLYMOSER_REFUSED: &str =
    "Nellymoser is not supported: publish Speex, G.711, AAC, Opus or PCM";

/// One FLV audio tag body and its RTMP timestamp (ms).
#[derive(Debug)]
pub struct FlvFrame {
    pub timestamp: u32,
    pub data: Vec<u8>,
}

/// What a room sends a connection for one of its players.
#[derive(Debug)]
pub enum ToPlayer {
    /// One FLV audio tag body, shared by every player of the stream.
    Audio {
        stream_id: u32,
        timestamp: u32,
        data: Bytes,
    },
    /// The call is over: the stream ends.
    End { stream_id: u32 },
}

/// A player that joined a call's play stream: where its audio goes.
#[derive(Debug)]
pub struct PlayerJoin {
    pub stream_id: u32,
    pub sender: mpsc::Sender<ToPlayer>,
}

enum Slot {
    Publish {
        room: mpsc::Sender<FlvFrame>,
        taken: bool,
    },
    Play {
        room: mpsc::Sender<PlayerJoin>,
    },
}

/// The stream names of the calls that have an RTMP point.
pub struct RtmpStreams {
    slots: Mutex<HashMap<String, Slot>>,
    /// Frames (and play requests) a peer may have queued on one channel;
    /// beyond, they are dropped (`limits.rtmp_frame_queue`): a publisher
    /// faster than its room, or a player slower than its stream, loses
    /// media rather than growing the gateway's memory.
    queue: usize,
}

/// A call's two stream names, registered until this is dropped; what the
/// room receives from them.
pub struct StreamRegistration {
    streams: Arc<RtmpStreams>,
    pub publish_name: String,
    pub play_name: String,
}

/// The room's ends of a call's streams.
#[derive(Debug)]
pub struct RoomStreams {
    pub published: mpsc::Receiver<FlvFrame>,
    pub players: mpsc::Receiver<PlayerJoin>,
}

impl RtmpStreams {
    pub fn new(queue: usize) -> Arc<RtmpStreams> {
        Arc::new(RtmpStreams {
            slots: Mutex::default(),
            queue,
        })
    }

    /// Registers two fresh names for a call.
    pub fn register(self: &Arc<Self>) -> (StreamRegistration, RoomStreams) {
        let (published_sender, published) = mpsc::channel(self.queue);
        let (players_sender, players) = mpsc::channel(self.queue);
        let publish_name = crate::session::new_id();
        let play_name = crate::session::new_id();
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.insert(
            publish_name.clone(),
            Slot::Publish {
                room: published_sender,
                taken: false,
            },
        );
        slots.insert(
            play_name.clone(),
            Slot::Play {
                room: players_sender,
            },
        );
        (
            StreamRegistration {
                streams: self.clone(),
                publish_name,
                play_name,
            },
            RoomStreams { published, players },
        )
    }

    /// The room's inbox for a publisher of `name`, marking it taken.
    fn take_publish(&self, name: &str) -> Result<mpsc::Sender<FlvFrame>, PublishRefusal> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        match slots.get_mut(name) {
            Some(Slot::Publish { room, taken }) if !*taken && !room.is_closed() => {
                *taken = true;
                Ok(room.clone())
            }
            Some(Slot::Publish { .. }) => Err(PublishRefusal::BadName),
            _ => Err(PublishRefusal::Denied),
        }
    }

    fn release_publish(&self, name: &str) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(Slot::Publish { taken, .. }) = slots.get_mut(name) {
            *taken = false;
        }
    }

    fn is_play(&self, name: &str) -> bool {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        matches!(slots.get(name), Some(Slot::Play { room }) if !room.is_closed())
    }

    fn join_play(&self, join: PlayerJoin, name: &str) -> bool {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        match slots.get(name) {
            Some(Slot::Play { room }) => room.try_send(join).is_ok(),
            _ => false,
        }
    }
}

impl Drop for StreamRegistration {
    fn drop(&mut self) {
        let mut slots = self
            .streams
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        slots.remove(&self.publish_name);
        slots.remove(&self.play_name);
    }
}

struct Publishing {
    name: String,
    room: mpsc::Sender<FlvFrame>,
}

/// One client connection's streams: publishers feeding rooms, players fed
/// by them.
pub struct RtmpClient {
    streams: Arc<RtmpStreams>,
    publishing: HashMap<u32, Publishing>,
    playing: HashSet<u32>,
    /// Streams ended by the gateway (their call is over, or their codec
    /// refused): once all are, the connection is released.
    ended: usize,
    to_players: mpsc::Sender<ToPlayer>,
    from_rooms: mpsc::Receiver<ToPlayer>,
}

impl RtmpClient {
    pub fn new(streams: Arc<RtmpStreams>) -> RtmpClient {
        let (to_players, from_rooms) = mpsc::channel(streams.queue);
        RtmpClient {
            streams,
            publishing: HashMap::new(),
            playing: HashSet::new(),
            ended: 0,
            to_players,
            from_rooms,
        }
    }

    /// Acts on what the session made of the client's input. An error means
    /// the session is unusable and the connection must close.
    pub fn on_events(
        &mut self,
        session: &mut ServerSession,
        events: Vec<ServerEvent>,
    ) -> Result<(), dialtone_rtmp::RtmpError> {
        for event in events {
            match event {
                ServerEvent::PublishRequested {
                    stream_id, name, ..
                } => match self.streams.take_publish(&name) {
                    Ok(room) => {
                        info!(stream_id, "RTMP client publishing");
                        session.accept_publish(stream_id)?;
                        self.publishing.insert(stream_id, Publishing { name, room });
                    }
                    Err(refusal) => {
                        info!(stream_id, ?refusal, "RTMP publish refused");
                        session.reject_publish(
                            stream_id,
                            refusal,
                            "no call has this stream, or it has a publisher",
                        )?;
                    }
                },
                ServerEvent::PlayRequested {
                    stream_id, name, ..
                } => {
                    if !self.streams.is_play(&name) {
                        info!(stream_id, "RTMP play of an unknown stream refused");
                        session.reject_play(stream_id, "no call has this stream")?;
                        continue;
                    }
                    // Accepted before joining: the room's first frames (a
                    // sequence header) must find the stream playing.
                    session.accept_play(stream_id)?;
                    let join = PlayerJoin {
                        stream_id,
                        sender: self.to_players.clone(),
                    };
                    if self.streams.join_play(join, &name) {
                        info!(stream_id, "RTMP client playing");
                        self.playing.insert(stream_id);
                    } else {
                        session.end_stream(stream_id, "the call has ended")?;
                    }
                }
                ServerEvent::Audio {
                    stream_id,
                    timestamp,
                    data,
                } => {
                    let Some(publishing) = self.publishing.get(&stream_id) else {
                        continue;
                    };
                    let codec = AudioTag::parse(&data).map(|tag| tag.codec);
                    if let Ok(FlvAudioCodec::Nellymoser { .. }) = codec {
                        info!(stream_id, "Nellymoser refused");
                        self.stop_publishing(stream_id);
                        self.ended += 1;
                        session.end_stream(stream_id, NELLYMOSER_REFUSED)?;
                        continue;
                    }
                    match publishing.room.try_send(FlvFrame { timestamp, data }) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            debug!(stream_id, "room behind: published frame dropped");
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            // The call ended: its stream ends too.
                            self.stop_publishing(stream_id);
                            self.ended += 1;
                            session.end_stream(stream_id, "the call has ended")?;
                        }
                    }
                }
                ServerEvent::StreamClosed { stream_id } => {
                    self.stop_publishing(stream_id);
                    self.playing.remove(&stream_id);
                }
            }
        }
        Ok(())
    }

    fn stop_publishing(&mut self, stream_id: u32) {
        if let Some(publishing) = self.publishing.remove(&stream_id) {
            self.streams.release_publish(&publishing.name);
        }
    }

    /// The next thing a room has for this connection's players.
    pub async fn next_for_players(&mut self) -> Option<ToPlayer> {
        self.from_rooms.recv().await
    }

    /// Without waiting, for drivers that poll (RTMPT).
    pub fn try_next_for_players(&mut self) -> Option<ToPlayer> {
        self.from_rooms.try_recv().ok()
    }

    /// Writes a room's audio (or the end of its stream) to the session.
    pub fn deliver(&mut self, session: &mut ServerSession, message: ToPlayer) {
        let result = match message {
            ToPlayer::Audio {
                stream_id,
                timestamp,
                data,
            } => session.send_audio(stream_id, timestamp, data),
            ToPlayer::End { stream_id } => {
                if self.playing.remove(&stream_id) {
                    self.ended += 1;
                }
                session.end_stream(stream_id, "the call has ended")
            }
        };
        if let Err(error) = result {
            // The client closed that stream meanwhile.
            debug!(%error, "audio for a stream that is gone");
        }
    }

    /// Every stream this client used belongs to a call that has ended: the
    /// connection can be released.
    pub fn is_done(&self) -> bool {
        self.ended > 0 && self.publishing.is_empty() && self.playing.is_empty()
    }
}

impl Drop for RtmpClient {
    fn drop(&mut self) {
        let streams: Vec<u32> = self.publishing.keys().copied().collect();
        for stream_id in streams {
            self.stop_publishing(stream_id);
        }
    }
}
