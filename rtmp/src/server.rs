//! The server side of one RTMP connection, sans-IO.
//!
//! The driver feeds every byte read from the socket to
//! [`ServerSession::handle_input`], acts on the returned [`ServerEvent`]s and
//! writes [`ServerSession::take_output`] to the socket after every call that
//! may produce output (input, accept/reject, audio, end of stream). Any
//! [`RtmpError`] means the connection is unusable: the driver closes it and
//! drops the session.
//!
//! rml_rtmp supplies the handshake, the chunk writer and the message
//! encodings; incoming chunks go through this crate's `ChunkReader` (see
//! there why) and commands are answered here, the way nginx-rtmp and FMS
//! answer them, so that ffmpeg, OBS and Flash proceed:
//!
//! | client sends | session |
//! |---|---|
//! | `connect` | Window Ack Size, Set Peer Bandwidth, Set Chunk Size, `_result` NetConnection.Connect.Success |
//! | `releaseStream`, `FCPublish`, `FCUnpublish`, `getStreamLength`, `_checkbw` | empty `_result` |
//! | `createStream` | `_result` with a new stream id |
//! | `publish` / `play` | [`ServerEvent::PublishRequested`] / [`ServerEvent::PlayRequested`]; the driver answers |
//! | audio on a publishing stream | [`ServerEvent::Audio`] |
//! | video, aggregate messages | dropped unread: the gateway carries audio only |
//! | `@setDataFrame` / `onMetaData` | ignored: the FLV tag of each audio message names its codec |
//! | `closeStream`, `deleteStream` | [`ServerEvent::StreamClosed`] for a stream that was requested or active |
//! | any other command expecting an answer | `_error` NetConnection.Call.Failed |
//!
//! Which stream names exist and who may publish or play them is the
//! driver's decision, made on the request events.

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;

use bytes::Bytes;
use rml_rtmp::chunk_io::ChunkSerializer;
use rml_rtmp::handshake::{Handshake, HandshakeError, HandshakeProcessResult, PeerType};
use rml_rtmp::messages::{PeerBandwidthLimitType, RtmpMessage, UserControlEventType};
use rml_rtmp::rml_amf0::{self, Amf0Value};
use rml_rtmp::time::RtmpTimestamp;

use crate::chunk_reader::{ChunkError, ChunkLimits, ChunkReader, ReceivedMessage};

/// Commands are small: ffmpeg's and OBS's `connect` is about 300 bytes,
/// Flash's about 600.
pub const MAX_COMMAND_SIZE: usize = 4096;

/// Bytes that may open a nested AMF0 object or array, allowed in one
/// command. rml_amf0 decodes nesting by recursion at about 4 KiB of stack a
/// level in debug builds (1 KiB in release), so a 4 KiB command of nested
/// objects (1000 levels) would overflow a 2 MiB tokio worker stack. Real
/// commands nest two levels deep and hold a dozen such bytes, most of them
/// look-alikes inside numbers and lengths.
const MAX_AMF_CONTAINER_MARKERS: usize = 64;

const TYPE_USER_CONTROL: u8 = 4;
const TYPE_WINDOW_ACK_SIZE: u8 = 5;
const TYPE_AUDIO: u8 = 8;
const TYPE_VIDEO: u8 = 9;
const TYPE_AMF3_COMMAND: u8 = 17;
const TYPE_AMF0_COMMAND: u8 = 20;
const TYPE_AGGREGATE: u8 = 22;

const USER_CONTROL_PING_REQUEST: u16 = 6;

/// What FMS reports; Flash clients only check that the field exists.
const FMS_VERSION: &str = "FMS/3,0,1,123";
const FMS_CAPABILITIES: f64 = 31.0;

/// Limits and parameters of a [`ServerSession`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// The largest chunk size a client may announce (Set Chunk Size).
    pub max_incoming_chunk_size: u32,
    /// The largest message a client may send, video aside (video is
    /// skipped without being buffered).
    pub max_message_size: u32,
    /// The chunk size of everything the session sends.
    pub outgoing_chunk_size: u32,
    /// Sent as Window Acknowledgement Size and Set Peer Bandwidth.
    pub window_ack_size: u32,
    /// How many streams (`createStream`) one connection may hold open.
    pub max_streams: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_incoming_chunk_size: 65_536,
            max_message_size: 65_536,
            outgoing_chunk_size: 4096,
            window_ack_size: 2_500_000,
            max_streams: 8,
        }
    }
}

/// What the driver learns from the client's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// The client wants to publish `name` on `stream_id`. Answer with
    /// [`ServerSession::accept_publish`] or [`ServerSession::reject_publish`];
    /// audio is dropped until it is accepted.
    PublishRequested {
        stream_id: u32,
        app: String,
        name: String,
    },
    /// The client wants to play `name` on `stream_id`. Answer with
    /// [`ServerSession::accept_play`] or [`ServerSession::reject_play`].
    PlayRequested {
        stream_id: u32,
        app: String,
        name: String,
    },
    /// One audio message from an accepted publisher: an FLV audio tag body
    /// (see [`crate::AudioTag`]), timestamp in milliseconds.
    Audio {
        stream_id: u32,
        timestamp: u32,
        data: Vec<u8>,
    },
    /// The client closed or deleted a stream it had requested or was using.
    StreamClosed { stream_id: u32 },
}

/// Why a publish request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishRefusal {
    /// `NetStream.Publish.BadName`: the name is taken (another publisher).
    BadName,
    /// `NetStream.Publish.Denied`: the name is not one this client may use.
    Denied,
}

/// Why a session failed; the connection must be closed.
#[derive(Debug, thiserror::Error)]
pub enum RtmpError {
    #[error("RTMP handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error("command message of {size} bytes, more than {MAX_COMMAND_SIZE}")]
    CommandTooLarge { size: usize },
    #[error("malformed command: {0}")]
    BadCommand(String),
    #[error("`{command}` before `connect`")]
    NotConnected { command: String },
    #[error("a second `connect` on one connection")]
    AlreadyConnected,
    #[error("the client opened more than {max} streams")]
    TooManyStreams { max: u32 },
    #[error("stream {stream_id} was never created")]
    UnknownStream { stream_id: u32 },
    #[error("stream {stream_id} is already requested or in use")]
    StreamBusy { stream_id: u32 },
    #[error("stream {stream_id} has no pending {wanted} request")]
    NoPendingRequest {
        stream_id: u32,
        wanted: &'static str,
    },
    #[error("stream {stream_id} is not playing")]
    NotPlaying { stream_id: u32 },
    #[error("stream {stream_id} is neither publishing nor playing")]
    NotActive { stream_id: u32 },
    #[error("could not encode an outgoing message: {0}")]
    Encode(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum StreamState {
    /// Created, nothing requested yet (or closed again).
    Idle,
    PublishRequested,
    Publishing,
    PlayRequested,
    Playing,
}

/// The server side of one RTMP connection. See the module doc.
pub struct ServerSession {
    config: ServerConfig,
    /// Present until the handshake completes.
    handshake: Option<Handshake>,
    reader: ChunkReader,
    writer: ChunkSerializer,
    output: Vec<u8>,
    /// The `app` of `connect`, once connected.
    app: Option<String>,
    streams: BTreeMap<u32, StreamState>,
    next_stream_id: u32,
    /// The client's Window Acknowledgement Size, once it sent one.
    peer_window: Option<u32>,
    bytes_received: u32,
    bytes_at_last_ack: u32,
}

impl ServerSession {
    /// A session waiting for the client's handshake; it sends nothing first.
    pub fn new(config: ServerConfig) -> ServerSession {
        // Video and aggregate messages are dropped without buffering (see
        // the module doc); the reader never returns them.
        const DROPPED_TYPES: &[u8] = &[TYPE_VIDEO, TYPE_AGGREGATE];
        ServerSession {
            config,
            handshake: Some(Handshake::new(PeerType::Server)),
            reader: ChunkReader::new(ChunkLimits {
                max_chunk_size: config.max_incoming_chunk_size as usize,
                max_message_size: config.max_message_size as usize,
                dropped_types: DROPPED_TYPES,
            }),
            writer: ChunkSerializer::new(),
            output: Vec::new(),
            app: None,
            streams: BTreeMap::new(),
            next_stream_id: 1,
            peer_window: None,
            bytes_received: 0,
            bytes_at_last_ack: 0,
        }
    }

    /// Takes bytes from the client. A partial handshake or chunk is kept
    /// until the rest arrives.
    pub fn handle_input(&mut self, bytes: &[u8]) -> Result<Vec<ServerEvent>, RtmpError> {
        // The acknowledgement sequence number wraps like the 32-bit field it fills.
        self.bytes_received = self
            .bytes_received
            .wrapping_add(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
        let mut events = Vec::new();
        match self.handshake.as_mut() {
            Some(handshake) => match handshake.process_bytes(bytes)? {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    self.output.extend(response_bytes);
                    return Ok(events);
                }
                HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                } => {
                    self.output.extend(response_bytes);
                    self.handshake = None;
                    self.reader.push(&remaining_bytes);
                }
            },
            None => self.reader.push(bytes),
        }
        while let Some(message) = self.reader.next_message()? {
            self.handle_message(message, &mut events)?;
        }
        self.acknowledge_if_due()?;
        Ok(events)
    }

    /// The bytes to send to the client, in order; empties the buffer.
    /// The client has completed the handshake and its `connect`.
    pub fn is_connected(&self) -> bool {
        self.app.is_some()
    }

    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// Grants a [`ServerEvent::PublishRequested`]: the client gets
    /// `NetStream.Publish.Start` and its audio is delivered from now on.
    pub fn accept_publish(&mut self, stream_id: u32) -> Result<(), RtmpError> {
        self.answer_request(
            stream_id,
            StreamState::PublishRequested,
            StreamState::Publishing,
        )?;
        self.send_user_control(UserControlEventType::StreamBegin, stream_id)?;
        self.send_status(
            stream_id,
            "status",
            "NetStream.Publish.Start",
            "Publishing.",
        )
    }

    /// Refuses a [`ServerEvent::PublishRequested`] with an error status;
    /// the stream can be requested again.
    pub fn reject_publish(
        &mut self,
        stream_id: u32,
        refusal: PublishRefusal,
        description: &str,
    ) -> Result<(), RtmpError> {
        self.answer_request(stream_id, StreamState::PublishRequested, StreamState::Idle)?;
        let code = match refusal {
            PublishRefusal::BadName => "NetStream.Publish.BadName",
            PublishRefusal::Denied => "NetStream.Publish.Denied",
        };
        self.send_status(stream_id, "error", code, description)
    }

    /// Grants a [`ServerEvent::PlayRequested`]; audio can then be sent with
    /// [`ServerSession::send_audio`].
    pub fn accept_play(&mut self, stream_id: u32) -> Result<(), RtmpError> {
        self.answer_request(stream_id, StreamState::PlayRequested, StreamState::Playing)?;
        self.send_user_control(UserControlEventType::StreamBegin, stream_id)?;
        self.send_status(
            stream_id,
            "status",
            "NetStream.Play.Reset",
            "Playing and resetting.",
        )?;
        self.send_status(
            stream_id,
            "status",
            "NetStream.Play.Start",
            "Started playing.",
        )?;
        // Lets a Flash player read the samples (SoundMixer.computeSpectrum)
        // as it would from any FMS-served stream.
        self.send(
            RtmpMessage::Amf0Data {
                values: vec![
                    Amf0Value::Utf8String("|RtmpSampleAccess".to_owned()),
                    Amf0Value::Boolean(true),
                    Amf0Value::Boolean(true),
                ],
            },
            stream_id,
            0,
        )
    }

    /// Refuses a [`ServerEvent::PlayRequested`] with
    /// `NetStream.Play.StreamNotFound`.
    pub fn reject_play(&mut self, stream_id: u32, description: &str) -> Result<(), RtmpError> {
        self.answer_request(stream_id, StreamState::PlayRequested, StreamState::Idle)?;
        self.send_status(
            stream_id,
            "error",
            "NetStream.Play.StreamNotFound",
            description,
        )
    }

    /// Sends one FLV audio tag body (see [`crate::AudioTag::write_to`]) to
    /// a playing client; `timestamp` in milliseconds. The body is shared,
    /// not copied: one frame for many players costs one buffer.
    pub fn send_audio(
        &mut self,
        stream_id: u32,
        timestamp: u32,
        data: Bytes,
    ) -> Result<(), RtmpError> {
        if self.streams.get(&stream_id) != Some(&StreamState::Playing) {
            return Err(RtmpError::NotPlaying { stream_id });
        }
        self.send(RtmpMessage::AudioData { data }, stream_id, timestamp)
    }

    /// Ends a stream from the server's side (the call is over): a player
    /// gets `NetStream.Play.UnpublishNotify`, `NetStream.Play.Stop` and Stream
    /// EOF, which make ffmpeg and Flash stop; a publisher gets
    /// `NetStream.Unpublish.Success` and its further audio is dropped.
    pub fn end_stream(&mut self, stream_id: u32, description: &str) -> Result<(), RtmpError> {
        match self.streams.get(&stream_id) {
            Some(StreamState::Playing) => {
                self.send_status(
                    stream_id,
                    "status",
                    "NetStream.Play.UnpublishNotify",
                    description,
                )?;
                self.send_status(stream_id, "status", "NetStream.Play.Stop", description)?;
                self.send_user_control(UserControlEventType::StreamEof, stream_id)?;
            }
            Some(StreamState::Publishing) => {
                self.send_status(
                    stream_id,
                    "status",
                    "NetStream.Unpublish.Success",
                    description,
                )?;
            }
            _ => return Err(RtmpError::NotActive { stream_id }),
        }
        self.streams.insert(stream_id, StreamState::Idle);
        Ok(())
    }

    fn answer_request(
        &mut self,
        stream_id: u32,
        pending: StreamState,
        next: StreamState,
    ) -> Result<(), RtmpError> {
        match self.streams.get_mut(&stream_id) {
            Some(state) if *state == pending => {
                *state = next;
                Ok(())
            }
            _ => Err(RtmpError::NoPendingRequest {
                stream_id,
                wanted: if pending == StreamState::PublishRequested {
                    "publish"
                } else {
                    "play"
                },
            }),
        }
    }

    fn handle_message(
        &mut self,
        message: ReceivedMessage,
        events: &mut Vec<ServerEvent>,
    ) -> Result<(), RtmpError> {
        match message.type_id {
            TYPE_AMF0_COMMAND => {
                self.handle_command(message.message_stream_id, &message.payload, events)
            }
            // Flash marks commands AMF3 once it may use AMF3 values, then
            // writes a zero byte (AMF3's "switch to AMF0") before AMF0 data.
            TYPE_AMF3_COMMAND => {
                let payload = match message.payload.split_first() {
                    Some((0, amf0)) => amf0,
                    _ => &message.payload,
                };
                self.handle_command(message.message_stream_id, payload, events)
            }
            TYPE_AUDIO => {
                let stream_id = message.message_stream_id;
                if self.streams.get(&stream_id) == Some(&StreamState::Publishing) {
                    events.push(ServerEvent::Audio {
                        stream_id,
                        timestamp: message.timestamp,
                        data: message.payload,
                    });
                } else {
                    tracing::trace!(
                        stream_id,
                        "audio on a stream that is not publishing: dropped"
                    );
                }
                Ok(())
            }
            TYPE_USER_CONTROL => self.handle_user_control(&message.payload),
            TYPE_WINDOW_ACK_SIZE => {
                if let Some(size) = message.payload.first_chunk::<4>() {
                    let size = u32::from_be_bytes(*size);
                    self.peer_window = (size > 0).then_some(size);
                }
                Ok(())
            }
            // Acknowledgements, Set Peer Bandwidth, data messages (metadata)
            // and unknown types carry nothing the gateway uses.
            _ => Ok(()),
        }
    }

    fn handle_user_control(&mut self, payload: &[u8]) -> Result<(), RtmpError> {
        let Some((event, rest)) = payload.split_first_chunk::<2>() else {
            return Ok(());
        };
        if u16::from_be_bytes(*event) != USER_CONTROL_PING_REQUEST {
            // Set Buffer Length and the rest: nothing to do for a live stream.
            return Ok(());
        }
        let Some(timestamp) = rest.first_chunk::<4>() else {
            return Ok(());
        };
        self.send(
            RtmpMessage::UserControl {
                event_type: UserControlEventType::PingResponse,
                stream_id: None,
                buffer_length: None,
                timestamp: Some(RtmpTimestamp::new(u32::from_be_bytes(*timestamp))),
            },
            0,
            0,
        )
    }

    fn handle_command(
        &mut self,
        message_stream_id: u32,
        payload: &[u8],
        events: &mut Vec<ServerEvent>,
    ) -> Result<(), RtmpError> {
        if payload.len() > MAX_COMMAND_SIZE {
            return Err(RtmpError::CommandTooLarge {
                size: payload.len(),
            });
        }
        let Command {
            name: command,
            transaction_id,
            command_object,
            arguments,
        } = decode_command(payload)?;

        if command == "connect" {
            return self.connect(transaction_id, command_object);
        }
        let Some(app) = self.app.clone() else {
            return Err(RtmpError::NotConnected { command });
        };
        match command.as_str() {
            "createStream" => self.create_stream(transaction_id),
            "publish" | "play" => {
                let Some(Amf0Value::Utf8String(name)) = arguments.into_iter().next() else {
                    return Err(RtmpError::BadCommand(format!(
                        "`{command}` without a stream name"
                    )));
                };
                let stream_id = message_stream_id;
                let state = self
                    .streams
                    .get_mut(&stream_id)
                    .ok_or(RtmpError::UnknownStream { stream_id })?;
                if *state != StreamState::Idle {
                    return Err(RtmpError::StreamBusy { stream_id });
                }
                if command == "publish" {
                    *state = StreamState::PublishRequested;
                    events.push(ServerEvent::PublishRequested {
                        stream_id,
                        app,
                        name,
                    });
                } else {
                    *state = StreamState::PlayRequested;
                    events.push(ServerEvent::PlayRequested {
                        stream_id,
                        app,
                        name,
                    });
                }
                Ok(())
            }
            "closeStream" => {
                self.close_stream(message_stream_id, events);
                Ok(())
            }
            "deleteStream" => {
                if let Some(&Amf0Value::Number(stream_id)) = arguments.first() {
                    // AMF0 numbers are doubles; `as` saturates a hostile one.
                    let stream_id = stream_id as u32;
                    self.close_stream(stream_id, events);
                    self.streams.remove(&stream_id);
                }
                Ok(())
            }
            // Sent by ffmpeg and OBS around publishing and playing; they
            // wait for (or tolerate) an answer but need nothing in it. The
            // zero stream length of getStreamLength means "live".
            "releaseStream" | "FCPublish" | "FCUnpublish" | "_checkbw" | "getStreamLength" => {
                let mut result = vec![];
                if command == "getStreamLength" {
                    result.push(Amf0Value::Number(0.0));
                }
                self.send_command("_result", transaction_id, Amf0Value::Null, result)
            }
            _ if transaction_id == 0.0 => {
                tracing::debug!(%command, "unknown notification ignored");
                Ok(())
            }
            _ => {
                let description = format!("unknown command {command}");
                let status = status_object("error", "NetConnection.Call.Failed", &description);
                self.send_command("_error", transaction_id, Amf0Value::Null, vec![status])
            }
        }
    }

    fn connect(&mut self, transaction_id: f64, command_object: Amf0Value) -> Result<(), RtmpError> {
        if self.app.is_some() {
            return Err(RtmpError::AlreadyConnected);
        }
        let app = match command_object {
            Amf0Value::Object(mut properties) => match properties.remove("app") {
                // Some clients send `live/` for `rtmp://host/live/`.
                Some(Amf0Value::Utf8String(app)) => app.trim_end_matches('/').to_owned(),
                _ => String::new(),
            },
            _ => String::new(),
        };
        self.app = Some(app);

        let window = self.config.window_ack_size;
        self.send(RtmpMessage::WindowAcknowledgement { size: window }, 0, 0)?;
        self.send(
            RtmpMessage::SetPeerBandwidth {
                size: window,
                limit_type: PeerBandwidthLimitType::Dynamic,
            },
            0,
            0,
        )?;
        let packet = self
            .writer
            .set_max_chunk_size(self.config.outgoing_chunk_size, RtmpTimestamp::new(0))
            .map_err(|error| RtmpError::Encode(error.to_string()))?;
        self.output.extend(packet.bytes);

        let server = HashMap::from([
            (
                "fmsVer".to_owned(),
                Amf0Value::Utf8String(FMS_VERSION.to_owned()),
            ),
            (
                "capabilities".to_owned(),
                Amf0Value::Number(FMS_CAPABILITIES),
            ),
        ]);
        let mut information = status_properties(
            "status",
            "NetConnection.Connect.Success",
            "Connection succeeded.",
        );
        // AMF0 whatever the client offered: every command stays decodable
        // by the AMF0 reader (Flash then sends AMF0 in its type 17 commands).
        information.insert("objectEncoding".to_owned(), Amf0Value::Number(0.0));
        self.send_command(
            "_result",
            transaction_id,
            Amf0Value::Object(server),
            vec![Amf0Value::Object(information)],
        )
    }

    fn create_stream(&mut self, transaction_id: f64) -> Result<(), RtmpError> {
        let max = self.config.max_streams;
        if self.streams.len() >= max as usize {
            return Err(RtmpError::TooManyStreams { max });
        }
        let stream_id = self.next_stream_id;
        self.next_stream_id = self.next_stream_id.wrapping_add(1).max(1);
        self.streams.insert(stream_id, StreamState::Idle);
        self.send_command(
            "_result",
            transaction_id,
            Amf0Value::Null,
            vec![Amf0Value::Number(f64::from(stream_id))],
        )
    }

    /// Returns a stream to idle, reporting it if it was requested or in use.
    fn close_stream(&mut self, stream_id: u32, events: &mut Vec<ServerEvent>) {
        if let Some(state) = self.streams.get_mut(&stream_id) {
            if *state != StreamState::Idle {
                events.push(ServerEvent::StreamClosed { stream_id });
            }
            *state = StreamState::Idle;
        }
    }

    /// Acknowledges the client's bytes each time a window's worth arrived,
    /// as the client asked with Window Acknowledgement Size.
    fn acknowledge_if_due(&mut self) -> Result<(), RtmpError> {
        let Some(window) = self.peer_window else {
            return Ok(());
        };
        if self.bytes_received.wrapping_sub(self.bytes_at_last_ack) < window {
            return Ok(());
        }
        self.bytes_at_last_ack = self.bytes_received;
        self.send(
            RtmpMessage::Acknowledgement {
                sequence_number: self.bytes_received,
            },
            0,
            0,
        )
    }

    fn send_user_control(
        &mut self,
        event_type: UserControlEventType,
        stream_id: u32,
    ) -> Result<(), RtmpError> {
        self.send(
            RtmpMessage::UserControl {
                event_type,
                stream_id: Some(stream_id),
                buffer_length: None,
                timestamp: None,
            },
            0,
            0,
        )
    }

    fn send_status(
        &mut self,
        stream_id: u32,
        level: &str,
        code: &str,
        description: &str,
    ) -> Result<(), RtmpError> {
        let message = RtmpMessage::Amf0Command {
            command_name: "onStatus".to_owned(),
            transaction_id: 0.0,
            command_object: Amf0Value::Null,
            additional_arguments: vec![status_object(level, code, description)],
        };
        self.send(message, stream_id, 0)
    }

    fn send_command(
        &mut self,
        name: &str,
        transaction_id: f64,
        command_object: Amf0Value,
        additional_arguments: Vec<Amf0Value>,
    ) -> Result<(), RtmpError> {
        let message = RtmpMessage::Amf0Command {
            command_name: name.to_owned(),
            transaction_id,
            command_object,
            additional_arguments,
        };
        self.send(message, 0, 0)
    }

    fn send(
        &mut self,
        message: RtmpMessage,
        message_stream_id: u32,
        timestamp: u32,
    ) -> Result<(), RtmpError> {
        let payload = message
            .into_message_payload(RtmpTimestamp::new(timestamp), message_stream_id)
            .map_err(|error| RtmpError::Encode(error.to_string()))?;
        let packet = self
            .writer
            .serialize(&payload, false, false)
            .map_err(|error| RtmpError::Encode(error.to_string()))?;
        self.output.extend(packet.bytes);
        Ok(())
    }
}

/// An AMF0 command: `name`, transaction id, command object, arguments.
struct Command {
    name: String,
    transaction_id: f64,
    command_object: Amf0Value,
    arguments: Vec<Amf0Value>,
}

fn decode_command(payload: &[u8]) -> Result<Command, RtmpError> {
    // Each nesting level starts with one of these marker bytes, so their
    // count bounds the depth of rml_amf0's recursion.
    const CONTAINER_MARKERS: [u8; 3] = [0x03, 0x08, 0x0a];
    let markers = payload
        .iter()
        .filter(|byte| CONTAINER_MARKERS.contains(byte))
        .count();
    if markers > MAX_AMF_CONTAINER_MARKERS {
        return Err(RtmpError::BadCommand(format!(
            "{markers} possible nesting levels, more than {MAX_AMF_CONTAINER_MARKERS}"
        )));
    }
    let values = rml_amf0::deserialize(&mut Cursor::new(payload))
        .map_err(|error| RtmpError::BadCommand(error.to_string()))?;
    let mut values = values.into_iter();
    let (Some(Amf0Value::Utf8String(name)), Some(Amf0Value::Number(transaction_id))) =
        (values.next(), values.next())
    else {
        return Err(RtmpError::BadCommand(
            "a command starts with its name and transaction id".to_owned(),
        ));
    };
    Ok(Command {
        name,
        transaction_id,
        command_object: values.next().unwrap_or(Amf0Value::Null),
        arguments: values.collect(),
    })
}

/// The info object of `onStatus`, `_result` and `_error`.
fn status_object(level: &str, code: &str, description: &str) -> Amf0Value {
    Amf0Value::Object(status_properties(level, code, description))
}

fn status_properties(level: &str, code: &str, description: &str) -> HashMap<String, Amf0Value> {
    HashMap::from([
        ("level".to_owned(), Amf0Value::Utf8String(level.to_owned())),
        ("code".to_owned(), Amf0Value::Utf8String(code.to_owned())),
        (
            "description".to_owned(),
            Amf0Value::Utf8String(description.to_owned()),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rml_rtmp::sessions::{
        ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult,
        PublishRequestType,
    };

    /// A ServerSession and rml_rtmp's own ClientSession wired back to back.
    struct Wire {
        server: ServerSession,
        client: ClientSession,
        server_events: Vec<ServerEvent>,
        client_events: Vec<ClientSessionEvent>,
    }

    impl Wire {
        /// Handshaken and connected to app `live`.
        fn connected() -> Wire {
            let mut server = ServerSession::new(ServerConfig::default());
            let mut handshake = Handshake::new(PeerType::Client);
            let c0_c1 = handshake.generate_outbound_p0_and_p1().unwrap();
            assert_eq!(server.handle_input(&c0_c1).unwrap(), []);
            let HandshakeProcessResult::Completed {
                response_bytes: c2,
                remaining_bytes,
            } = handshake.process_bytes(&server.take_output()).unwrap()
            else {
                panic!("the client's handshake did not complete on S0+S1+S2");
            };
            assert!(remaining_bytes.is_empty());
            assert_eq!(server.handle_input(&c2).unwrap(), []);

            let (client, results) = ClientSession::new(ClientSessionConfig::new()).unwrap();
            let mut wire = Wire {
                server,
                client,
                server_events: Vec::new(),
                client_events: Vec::new(),
            };
            wire.deliver_to_server(results);
            let connect = wire.client.request_connection("live".to_owned()).unwrap();
            wire.deliver_to_server(vec![connect]);
            wire.pump();
            assert_eq!(
                wire.take_client_events(),
                [ClientSessionEvent::ConnectionRequestAccepted]
            );
            wire
        }

        fn deliver_to_server(&mut self, results: Vec<ClientSessionResult>) {
            for result in results {
                match result {
                    ClientSessionResult::OutboundResponse(packet) => {
                        let events = self.server.handle_input(&packet.bytes).unwrap();
                        self.server_events.extend(events);
                    }
                    ClientSessionResult::RaisedEvent(event) => self.client_events.push(event),
                    ClientSessionResult::UnhandleableMessageReceived(_) => {}
                }
            }
        }

        /// Moves bytes both ways until neither side has anything to say.
        fn pump(&mut self) {
            loop {
                let output = self.server.take_output();
                if output.is_empty() {
                    return;
                }
                let results = self.client.handle_input(&output).unwrap();
                self.deliver_to_server(results);
            }
        }

        fn take_server_events(&mut self) -> Vec<ServerEvent> {
            std::mem::take(&mut self.server_events)
        }

        fn take_client_events(&mut self) -> Vec<ClientSessionEvent> {
            std::mem::take(&mut self.client_events)
                .into_iter()
                .filter(|event| {
                    !matches!(event, ClientSessionEvent::AcknowledgementReceived { .. })
                })
                .collect()
        }

        fn request_publish(&mut self, name: &str) -> u32 {
            let request = self
                .client
                .request_publishing(name.to_owned(), PublishRequestType::Live)
                .unwrap();
            self.deliver_to_server(vec![request]);
            self.pump();
            match self.take_server_events().as_slice() {
                [ServerEvent::PublishRequested {
                    stream_id,
                    app,
                    name: requested,
                }] if app == "live" && requested == name => *stream_id,
                other => panic!("expected one publish request, got {other:?}"),
            }
        }

        fn request_play(&mut self, name: &str) -> u32 {
            let request = self.client.request_playback(name.to_owned()).unwrap();
            self.deliver_to_server(vec![request]);
            self.pump();
            match self.take_server_events().as_slice() {
                [ServerEvent::PlayRequested {
                    stream_id,
                    app,
                    name: requested,
                }] if app == "live" && requested == name => *stream_id,
                other => panic!("expected one play request, got {other:?}"),
            }
        }
    }

    fn handshaken_server() -> ServerSession {
        let mut server = ServerSession::new(ServerConfig::default());
        let mut handshake = Handshake::new(PeerType::Client);
        server
            .handle_input(&handshake.generate_outbound_p0_and_p1().unwrap())
            .unwrap();
        let HandshakeProcessResult::Completed {
            response_bytes: c2, ..
        } = handshake.process_bytes(&server.take_output()).unwrap()
        else {
            panic!("handshake did not complete");
        };
        server.handle_input(&c2).unwrap();
        server
    }

    #[test]
    fn publish_is_asked_for_then_audio_flows() {
        let mut wire = Wire::connected();
        let stream_id = wire.request_publish("up-4b1d9e");

        // Audio sent before the answer is dropped. (rml_rtmp's client will
        // not send it early, so the chunk is written by hand on a chunk
        // stream of its own.)
        let mut early = vec![7, 0, 0, 0, 0, 0, 2, 8];
        early.extend(stream_id.to_le_bytes());
        early.extend([0xB2, 1]);
        assert_eq!(wire.server.handle_input(&early).unwrap(), []);

        wire.server.accept_publish(stream_id).unwrap();
        wire.pump();
        assert_eq!(
            wire.take_client_events(),
            [ClientSessionEvent::PublishRequestAccepted]
        );

        for (timestamp, frame) in [(20, [0xB2, 2]), (40, [0xB2, 3])] {
            let sent = wire
                .client
                .publish_audio_data(
                    Bytes::copy_from_slice(&frame),
                    RtmpTimestamp::new(timestamp),
                    false,
                )
                .unwrap();
            wire.deliver_to_server(vec![sent]);
        }
        assert_eq!(
            wire.take_server_events(),
            [
                ServerEvent::Audio {
                    stream_id,
                    timestamp: 20,
                    data: vec![0xB2, 2]
                },
                ServerEvent::Audio {
                    stream_id,
                    timestamp: 40,
                    data: vec![0xB2, 3]
                },
            ]
        );

        // Video is dropped unread.
        let video = wire
            .client
            .publish_video_data(
                Bytes::from(vec![0x17; 10_000]),
                RtmpTimestamp::new(60),
                false,
            )
            .unwrap();
        wire.deliver_to_server(vec![video]);
        assert_eq!(wire.take_server_events(), []);

        let stop = wire.client.stop_publishing().unwrap();
        wire.deliver_to_server(stop);
        assert_eq!(
            wire.take_server_events(),
            [ServerEvent::StreamClosed { stream_id }]
        );
    }

    #[test]
    fn a_refused_publish_gets_an_error_status() {
        for (refusal, code) in [
            (PublishRefusal::BadName, "NetStream.Publish.BadName"),
            (PublishRefusal::Denied, "NetStream.Publish.Denied"),
        ] {
            let mut wire = Wire::connected();
            let stream_id = wire.request_publish("someone-elses");
            wire.server
                .reject_publish(stream_id, refusal, "not yours")
                .unwrap();
            wire.pump();
            assert_eq!(
                wire.take_client_events(),
                [ClientSessionEvent::UnhandleableOnStatusCode {
                    code: code.to_owned()
                }]
            );
            // Answered once: a second answer is a driver bug, reported.
            assert!(matches!(
                wire.server.accept_publish(stream_id),
                Err(RtmpError::NoPendingRequest { .. })
            ));
        }
    }

    #[test]
    fn play_is_asked_for_then_audio_reaches_the_player() {
        let mut wire = Wire::connected();
        let stream_id = wire.request_play("down-c20a77");
        assert!(matches!(
            wire.server
                .send_audio(stream_id, 0, Bytes::from_static(&[0x82, 0xff])),
            Err(RtmpError::NotPlaying { .. })
        ));

        wire.server.accept_play(stream_id).unwrap();
        wire.pump();
        let events = wire.take_client_events();
        assert!(
            events.contains(&ClientSessionEvent::PlaybackRequestAccepted),
            "{events:?}"
        );

        let frames: Vec<Vec<u8>> = (0..5_u8).map(|i| vec![0x82, i, i, i]).collect();
        for (index, frame) in frames.iter().enumerate() {
            let timestamp = 20 * u32::try_from(index).unwrap();
            wire.server
                .send_audio(stream_id, timestamp, Bytes::from(frame.clone()))
                .unwrap();
        }
        wire.pump();
        let received: Vec<(u32, Vec<u8>)> = wire
            .take_client_events()
            .into_iter()
            .filter_map(|event| match event {
                ClientSessionEvent::AudioDataReceived { timestamp, data } => {
                    Some((timestamp.value, data.to_vec()))
                }
                _ => None,
            })
            .collect();
        let expected: Vec<(u32, Vec<u8>)> = frames
            .into_iter()
            .enumerate()
            .map(|(index, frame)| (20 * u32::try_from(index).unwrap(), frame))
            .collect();
        assert_eq!(received, expected);

        wire.server.end_stream(stream_id, "call ended").unwrap();
        wire.pump();
        assert_eq!(
            wire.take_client_events(),
            [
                ClientSessionEvent::UnhandleableOnStatusCode {
                    code: "NetStream.Play.UnpublishNotify".to_owned()
                },
                ClientSessionEvent::UnhandleableOnStatusCode {
                    code: "NetStream.Play.Stop".to_owned()
                },
            ]
        );
        assert!(matches!(
            wire.server
                .send_audio(stream_id, 200, Bytes::from_static(&[0x82])),
            Err(RtmpError::NotPlaying { .. })
        ));
    }

    #[test]
    fn a_refused_play_gets_stream_not_found() {
        let mut wire = Wire::connected();
        let stream_id = wire.request_play("no-such-call");
        wire.server
            .reject_play(stream_id, "no such stream")
            .unwrap();
        wire.pump();
        assert_eq!(
            wire.take_client_events(),
            [ClientSessionEvent::UnhandleableOnStatusCode {
                code: "NetStream.Play.StreamNotFound".to_owned()
            }]
        );
    }

    #[test]
    fn a_bad_first_byte_fails_the_handshake() {
        let mut server = ServerSession::new(ServerConfig::default());
        assert!(matches!(
            server.handle_input(b"GET / HTTP/1.1\r\n\r\n"),
            Err(RtmpError::Handshake(_))
        ));
    }

    #[test]
    fn a_truncated_handshake_waits_for_more() {
        let mut server = ServerSession::new(ServerConfig::default());
        let mut handshake = Handshake::new(PeerType::Client);
        let c0_c1 = handshake.generate_outbound_p0_and_p1().unwrap();
        assert_eq!(server.handle_input(&c0_c1[..700]).unwrap(), []);
        // S0+S1 may go out early; S2 needs all of C1.
        let early = server.take_output();
        assert!(early.len() < 1 + 2 * 1536);
        server.handle_input(&c0_c1[700..]).unwrap();
        assert_eq!(early.len() + server.take_output().len(), 1 + 2 * 1536);
    }

    #[test]
    fn garbage_after_the_handshake_errs_or_waits_never_panics() {
        let mut seed = 0x9e37_79b9_u32;
        for _ in 0..100 {
            let mut server = handshaken_server();
            for _ in 0..8 {
                let garbage: Vec<u8> = (0..256)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 17;
                        seed ^= seed << 5;
                        seed.to_le_bytes()[0]
                    })
                    .collect();
                if server.handle_input(&garbage).is_err() {
                    break;
                }
            }
        }
    }

    #[test]
    fn an_oversized_chunk_size_or_message_closes_the_connection() {
        let mut server = handshaken_server();
        // Set Chunk Size 1 MiB on csid 2.
        let mut chunk_size = vec![2, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0];
        chunk_size.extend(0x0010_0000_u32.to_be_bytes());
        assert!(matches!(
            server.handle_input(&chunk_size),
            Err(RtmpError::Chunk(ChunkError::ChunkSizeOutOfRange { .. }))
        ));

        let mut server = handshaken_server();
        // An audio message header announcing 1 MiB.
        assert!(matches!(
            server.handle_input(&[4, 0, 0, 0, 0x10, 0, 0, 8, 1, 0, 0, 0]),
            Err(RtmpError::Chunk(ChunkError::MessageTooLarge { .. }))
        ));
    }

    #[test]
    fn commands_before_connect_or_too_large_are_refused() {
        let command = |values: Vec<Amf0Value>| {
            let body = rml_amf0::serialize(&values).unwrap();
            let length = u32::try_from(body.len()).unwrap().to_be_bytes();
            let mut chunk = vec![3, 0, 0, 0, length[1], length[2], length[3], 20, 0, 0, 0, 0];
            // The peer's chunk size is still 128: split with type 3 headers.
            for (index, piece) in body.chunks(128).enumerate() {
                if index > 0 {
                    chunk.push(0xC3);
                }
                chunk.extend(piece);
            }
            chunk
        };
        let mut server = handshaken_server();
        let create = command(vec![
            Amf0Value::Utf8String("createStream".to_owned()),
            Amf0Value::Number(2.0),
            Amf0Value::Null,
        ]);
        assert!(matches!(
            server.handle_input(&create),
            Err(RtmpError::NotConnected { .. })
        ));

        let mut server = handshaken_server();
        let huge = command(vec![
            Amf0Value::Utf8String("connect".to_owned()),
            Amf0Value::Number(1.0),
            Amf0Value::Utf8String("x".repeat(MAX_COMMAND_SIZE)),
        ]);
        assert!(matches!(
            server.handle_input(&huge),
            Err(RtmpError::CommandTooLarge { .. })
        ));

        let mut server = handshaken_server();
        let nameless = command(vec![Amf0Value::Number(1.0)]);
        assert!(matches!(
            server.handle_input(&nameless),
            Err(RtmpError::BadCommand(_))
        ));
    }

    #[test]
    fn deeply_nested_commands_are_refused_before_decoding() {
        // Objects nested as deep as MAX_COMMAND_SIZE allows (4 bytes a
        // level) overflow a small stack in rml_amf0's recursive decoder.
        let mut body = vec![0x02, 0, 7];
        body.extend(b"connect");
        body.push(0x00);
        body.extend(1.0_f64.to_be_bytes());
        let prefix = body.clone();
        while body.len() + 4 < MAX_COMMAND_SIZE {
            body.extend([0x03, 0, 1, b'a']);
        }
        assert!(matches!(
            decode_command(&body),
            Err(RtmpError::BadCommand(_))
        ));

        // The deepest command let through decodes on a 512 KiB stack even
        // in a debug build.
        let mut allowed = prefix;
        for _ in 0..MAX_AMF_CONTAINER_MARKERS {
            allowed.extend([0x03, 0, 1, b'a']);
        }
        let decoded = std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(move || decode_command(&allowed).is_ok())
            .unwrap()
            .join();
        // Truncated objects are an error, not a crash.
        assert_eq!(decoded.ok(), Some(false));
    }

    #[test]
    fn ping_requests_are_answered_and_windows_acknowledged() {
        let mut server = handshaken_server();
        // Window Acknowledgement Size 100, then a Ping Request (event 6).
        let mut input = vec![2, 0, 0, 0, 0, 0, 4, 5, 0, 0, 0, 0, 0, 0, 0, 100];
        input.extend([0x42, 0, 0, 0, 0, 0, 6, 4, 0, 6, 0, 0, 0x30, 0x39]);
        server.handle_input(&input).unwrap();
        let mut deserializer = rml_rtmp::chunk_io::ChunkDeserializer::new();
        let output = server.take_output();
        let mut messages = Vec::new();
        let mut bytes: &[u8] = &output;
        while let Some(payload) = deserializer.get_next_message(bytes).unwrap() {
            messages.push(payload.to_rtmp_message().unwrap());
            bytes = &[];
        }
        assert!(messages.contains(&RtmpMessage::UserControl {
            event_type: UserControlEventType::PingResponse,
            stream_id: None,
            buffer_length: None,
            timestamp: Some(RtmpTimestamp::new(12345)),
        }));
        assert!(
            messages
                .iter()
                .any(|m| matches!(m, RtmpMessage::Acknowledgement { .. })),
            "{messages:?}"
        );
    }
}
