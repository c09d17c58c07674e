//! A session's media points and rooms: CREATE_MEDIA_POINT and
//! REMOVE_MEDIA_POINT, the points' SDP and ICE, JOIN_ROOM and LEAVE_ROOM,
//! the conference rooms the session creates (CREATE_ROOM, CLOSE_ROOM,
//! INVITE_TO_ROOM) and recordings (START_RECORDING, STOP_RECORDING).
//!
//! A point lives in a room from the moment it is negotiated: its own home
//! room, where it hears nobody, until it joins another; leaving (or that
//! room ending) moves it home again with its stream unbroken. Everything a
//! point holds (ports, stream names, its place in a room) is freed when it
//! is removed or its session ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use dialtone_room::{Event, PointId, Role};
use dialtone_ws::{
    CreateMediaPoint, ErrorCode, JoinRoom, LeaveRoom, MediaTarget, Outbox, ProtocolError, RoomMode,
    ServerMessage, StopRecording,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::client_point::{ClientPoint, Negotiator, ReadyPoint};
use crate::media_room::{
    MediaRoom, PointNews, PointSink, RecordingEnd, RecordingJob, RoomHandle, RECORDING_SAMPLE_RATE,
};
use crate::metrics::Held;
use crate::recording::{Recorder, RecordingLimits};
use crate::rooms::{member_id, refusal, Membership, NewMember, RoomRegistration, SessionRef};
use crate::state::Gateway;

struct MediaPoint {
    id: PointId,
    client: Option<ClientPoint>,
    /// Its own room, where it is while it is in no other.
    home: MediaRoom,
    /// The room it joined, and how.
    joined: Option<(Membership, Role)>,
    /// Whether it is in a room yet (it is once negotiated).
    placed: bool,
    _counted: Held,
}

impl MediaPoint {
    /// The room it is in, or goes to once negotiated.
    fn room(&self) -> RoomHandle {
        match &self.joined {
            Some((membership, _)) => membership.handle.clone(),
            None => self.home.handle(),
        }
    }
}

/// A conference room the session created.
struct OwnedRoom {
    _registration: RoomRegistration,
    _room: MediaRoom,
}

pub struct SessionMedia {
    gateway: Arc<Gateway>,
    me: SessionRef,
    points: HashMap<String, MediaPoint>,
    rooms: HashMap<String, OwnedRoom>,
    sink: PointSink,
    /// What the rooms say of the session's points.
    pub news: mpsc::UnboundedReceiver<Box<PointNews>>,
}

impl SessionMedia {
    pub fn new(gateway: Arc<Gateway>, me: SessionRef) -> SessionMedia {
        let (sink, news) = mpsc::unbounded_channel();
        SessionMedia {
            gateway,
            me,
            points: HashMap::new(),
            rooms: HashMap::new(),
            sink,
            news,
        }
    }

    fn outbox(&self) -> &Outbox {
        &self.me.outbox
    }

    fn refuse(&self, request: &str, error: ProtocolError) {
        self.outbox()
            .send_error(error.for_request(request).with_session(&self.me.session_id));
    }

    fn negotiator(&self, point_id: &str) -> Negotiator<'_> {
        Negotiator {
            gateway: &self.gateway,
            outbox: self.outbox(),
            session_id: &self.me.session_id,
            target: MediaTarget::Point(point_id.to_string()),
        }
    }

    /// CREATE_MEDIA_POINT: the point and our offer for it.
    pub fn create_point(&mut self, request: CreateMediaPoint) {
        const REQUEST: &str = "CREATE_MEDIA_POINT";
        let limit = self.gateway.config.rooms.max_points_per_session;
        if self.points.contains_key(&request.point_id) {
            let message = format!("the session has a point {:?} already", request.point_id);
            self.refuse(
                REQUEST,
                ProtocolError::new(ErrorCode::InvalidValue, message).with_field("pointId"),
            );
            return;
        }
        if self.points.len() >= limit {
            let message = format!("a session may hold {limit} media points");
            self.refuse(
                REQUEST,
                ProtocolError::new(ErrorCode::LimitReached, message),
            );
            return;
        }
        let cc = request.cc.as_ref();
        if !cc.is_some_and(Negotiator::names_a_transport) {
            let message = "cc.mediaTransport must name RTP, SRTP (WebRTC), RTMP or RTMPT";
            self.refuse(
                REQUEST,
                ProtocolError::new(ErrorCode::InvalidValue, message)
                    .with_field("cc.mediaTransport"),
            );
            return;
        }
        let Some(mut client) = self.negotiator(&request.point_id).offer(cc) else {
            let message = "no media point could be made (ports, RTMP off, or the codecs)";
            self.refuse(
                REQUEST,
                ProtocolError::new(ErrorCode::LimitReached, message),
            );
            return;
        };
        let ready = client.take_rtmp();
        let point = MediaPoint {
            id: self.gateway.rooms.new_point_id(),
            client: Some(client),
            home: MediaRoom::start(&self.gateway.media),
            joined: None,
            placed: false,
            _counted: Held::new(&self.gateway.metrics.media_points),
        };
        info!(point_id = %request.point_id, point = point.id.0, "media point created");
        self.points.insert(request.point_id.clone(), point);
        if let Some(ready) = ready {
            self.place(&request.point_id, ready);
        }
    }

    /// REMOVE_MEDIA_POINT.
    pub fn remove_point(&mut self, point_id: &str) {
        if self.points.remove(point_id).is_none() {
            self.unknown_point("REMOVE_MEDIA_POINT", point_id);
            return;
        }
        info!(%point_id, "media point removed");
        self.outbox().send(ServerMessage::MediaPointRemoved {
            session_id: self.me.session_id.clone(),
            point_id: point_id.to_string(),
            reason: None,
            detail: None,
        });
    }

    /// The client's SDP_ANSWER (or, for WebRTC, its own SDP_OFFER).
    pub fn on_sdp(&mut self, point_id: &str, sdp: &str, is_offer: bool) {
        let request = if is_offer { "SDP_OFFER" } else { "SDP_ANSWER" };
        let Some(point) = self.points.get_mut(point_id) else {
            self.unknown_point(request, point_id);
            return;
        };
        let negotiator = Negotiator {
            gateway: &self.gateway,
            outbox: &self.me.outbox,
            session_id: &self.me.session_id,
            target: MediaTarget::Point(point_id.to_string()),
        };
        let client = point.client.take();
        let (client, ready) = if is_offer {
            negotiator.on_offer(client, sdp)
        } else {
            negotiator.on_answer(client, sdp)
        };
        point.client = client;
        if let Some(ready) = ready {
            self.place(point_id, ready);
        }
    }

    pub fn on_candidate(&mut self, point_id: &str, candidate: String) {
        let Some(point) = self.points.get(point_id) else {
            self.unknown_point("ICE_CANDIDATE", point_id);
            return;
        };
        match point
            .client
            .as_ref()
            .and_then(ClientPoint::takes_candidates)
        {
            Some(true) => point.room().add_remote_candidate(point.id, candidate),
            Some(false) => {}
            None => self
                .negotiator(point_id)
                .refuse_field("this media point is not a WebRTC point", "candidate"),
        }
    }

    /// A negotiated point goes into its room.
    fn place(&mut self, point_id: &str, (config, io): ReadyPoint) {
        let Some(point) = self.points.get_mut(point_id) else {
            return;
        };
        let role = point.joined.as_ref().map_or(Role::Full, |(_, role)| *role);
        point
            .room()
            .add_point(point.id, config.with_role(role), io, self.sink.clone());
        point.placed = true;
    }

    /// The point a room message names, or the session's only one.
    fn resolve(&self, request: &str, point_id: Option<&str>) -> Option<String> {
        match point_id {
            Some(point_id) if self.points.contains_key(point_id) => Some(point_id.to_string()),
            Some(point_id) => {
                self.unknown_point(request, point_id);
                None
            }
            None if self.points.len() == 1 => self.points.keys().next().cloned(),
            None => {
                let message = "name the point (pointId): the session has none or several";
                self.refuse(
                    request,
                    ProtocolError::new(ErrorCode::MissingField, message).with_field("pointId"),
                );
                None
            }
        }
    }

    /// JOIN_ROOM: the point moves from where it is into the room.
    pub async fn join(&mut self, request: JoinRoom) {
        const REQUEST: &str = "JOIN_ROOM";
        let Some(point_id) = self.resolve(REQUEST, request.point_id.as_deref()) else {
            return;
        };
        let role = match (request.mode, request.whisper_to.as_deref()) {
            (RoomMode::Full, _) => Role::Full,
            (RoomMode::ListenOnly, _) => Role::ListenOnly,
            (RoomMode::Whisper, Some(target)) => match target.parse() {
                Ok(number) => Role::Whisper(PointId(number)),
                Err(_) => {
                    let message = "whisperTo is not a memberId of the room";
                    self.refuse(
                        REQUEST,
                        ProtocolError::new(ErrorCode::InvalidValue, message)
                            .with_field("whisperTo"),
                    );
                    return;
                }
            },
            // The decoder requires whisperTo with WHISPER.
            (RoomMode::Whisper, None) => Role::Full,
        };
        let config = &self.gateway.config.rooms;
        let handle = match self.gateway.rooms.admit(
            &request.room_id,
            &self.me,
            config.join_policy,
            config.max_members,
        ) {
            Ok(handle) => handle,
            Err(code) => {
                self.refuse(REQUEST, refusal(code, &request.room_id));
                return;
            }
        };
        let Some(point) = self.points.get_mut(&point_id) else {
            return;
        };
        if point.placed {
            let moved = point.room().take(point.id).await;
            if let Some(moved) = moved {
                if let Err(moved) = handle.insert(moved, role) {
                    // The room ended meanwhile: the point stays at home.
                    let _ = point.home.insert(moved, Role::Full);
                    self.refuse(REQUEST, refusal(ErrorCode::UnknownRoom, &request.room_id));
                    return;
                }
            }
        }
        if let Some((previous, _)) = point.joined.take() {
            previous.left();
        }
        let joining = NewMember {
            point: point.id,
            session: self.me.clone(),
            kind: "POINT",
            mode: request.mode,
        };
        let (membership, members) = self.gateway.rooms.join(&request.room_id, handle, joining);
        let member = member_id(point.id);
        point.joined = Some((membership, role));
        self.outbox().send(ServerMessage::RoomJoined {
            session_id: self.me.session_id.clone(),
            room_id: request.room_id,
            point_id,
            member_id: member,
            members,
        });
    }

    /// LEAVE_ROOM: the point goes home.
    pub async fn leave(&mut self, request: LeaveRoom) {
        const REQUEST: &str = "LEAVE_ROOM";
        let in_room = |point: &MediaPoint| {
            point
                .joined
                .as_ref()
                .is_some_and(|(membership, _)| membership.room_id == request.room_id)
        };
        let point_id = match request.point_id.as_deref() {
            Some(point_id) => Some(point_id.to_string()),
            None => self
                .points
                .iter()
                .find(|(_, point)| in_room(point))
                .map(|(point_id, _)| point_id.clone()),
        };
        let Some(point) = point_id
            .as_deref()
            .and_then(|point_id| self.points.get_mut(point_id))
            .filter(|point| in_room(point))
        else {
            let message = format!("no point of this session is in room {:?}", request.room_id);
            self.refuse(
                REQUEST,
                ProtocolError::new(ErrorCode::UnknownRoom, message).with_field("roomId"),
            );
            return;
        };
        let Some((membership, _)) = point.joined.take() else {
            return;
        };
        if point.placed {
            if let Some(moved) = membership.handle.take(point.id).await {
                let _ = point.home.insert(moved, Role::Full);
            }
        }
        let member = member_id(point.id);
        membership.left();
        self.outbox().send(ServerMessage::RoomLeft {
            session_id: self.me.session_id.clone(),
            room_id: request.room_id,
            member_id: member,
            point_id,
            reason: "LEFT",
        });
    }

    /// What a room says of one of the session's points.
    pub fn on_news(&mut self, news: PointNews) {
        match news {
            PointNews::Event(Event::MediaFailed { point, problem }) => {
                let Some(point_id) = self.point_named(point) else {
                    return;
                };
                info!(%point_id, %problem, "media point failed");
                self.points.remove(&point_id);
                self.outbox().send(ServerMessage::MediaPointRemoved {
                    session_id: self.me.session_id.clone(),
                    point_id,
                    reason: Some("MEDIA_FAILED"),
                    detail: Some(problem),
                });
            }
            PointNews::Event(event) => debug!(?event, "media point event"),
            PointNews::Evicted(moved) => {
                let Some(point_id) = self.point_named(moved.id) else {
                    return;
                };
                let Some(point) = self.points.get_mut(&point_id) else {
                    return;
                };
                let Some((membership, _)) = point.joined.take() else {
                    return;
                };
                // Its room ended: home again.
                let _ = point.home.insert(moved, Role::Full);
                let room_id = membership.room_id.clone();
                let member = member_id(point.id);
                membership.left();
                self.outbox().send(ServerMessage::RoomLeft {
                    session_id: self.me.session_id.clone(),
                    room_id,
                    member_id: member,
                    point_id: Some(point_id),
                    reason: "ROOM_ENDED",
                });
            }
        }
    }

    fn point_named(&self, id: PointId) -> Option<String> {
        self.points
            .iter()
            .find(|(_, point)| point.id == id)
            .map(|(point_id, _)| point_id.clone())
    }

    fn unknown_point(&self, request: &str, point_id: &str) {
        let message = format!("no media point {point_id:?} in this session");
        self.refuse(
            request,
            ProtocolError::new(ErrorCode::UnknownPoint, message).with_field("pointId"),
        );
    }

    /// CREATE_ROOM: a conference room of the session's, until CLOSE_ROOM
    /// or the session's end.
    pub fn create_room(&mut self) {
        let room = MediaRoom::start(&self.gateway.media);
        let room_id = crate::session::new_id();
        let Some(registration) =
            self.gateway
                .rooms
                .register(&room_id, room.handle(), self.me.clone(), true)
        else {
            let max_rooms = self.gateway.config.rooms.max_rooms;
            let message = format!("the gateway holds {max_rooms} rooms already");
            self.refuse(
                "CREATE_ROOM",
                ProtocolError::new(ErrorCode::LimitReached, message),
            );
            return;
        };
        info!(%room_id, "conference room created");
        self.rooms.insert(
            room_id.clone(),
            OwnedRoom {
                _registration: registration,
                _room: room,
            },
        );
        self.outbox().send(ServerMessage::RoomCreated {
            session_id: self.me.session_id.clone(),
            room_id,
        });
    }

    /// CLOSE_ROOM: everyone in it is put out (ROOM_LEFT `ROOM_ENDED`),
    /// calls placed into it end.
    pub fn close_room(&mut self, room_id: &str) {
        if self.rooms.remove(room_id).is_none() {
            self.refuse("CLOSE_ROOM", refusal(ErrorCode::UnknownRoom, room_id));
            return;
        }
        info!(%room_id, "conference room closed");
        self.outbox().send(ServerMessage::RoomClosed {
            session_id: self.me.session_id.clone(),
            room_id: room_id.to_string(),
        });
    }

    /// INVITE_TO_ROOM.
    pub fn invite(&self, room_id: &str, username: &str) {
        match self.gateway.rooms.invite(room_id, &self.me, username) {
            Ok(()) => self.outbox().send(ServerMessage::RoomInvited {
                session_id: self.me.session_id.clone(),
                room_id: room_id.to_string(),
                username: username.to_string(),
            }),
            Err(code) => self.refuse("INVITE_TO_ROOM", refusal(code, room_id)),
        }
    }

    /// START_RECORDING: the room's public mix into a new file.
    pub fn start_recording(&self, room_id: &str) {
        const REQUEST: &str = "START_RECORDING";
        let handle = match self.gateway.rooms.owned(room_id, &self.me) {
            Ok(handle) => handle,
            Err(code) => return self.refuse(REQUEST, refusal(code, room_id)),
        };
        let config = &self.gateway.config.recording;
        let Some(directory) = config.directory.clone() else {
            let message = "recording is off on this gateway (recording.directory)";
            return self.refuse(
                REQUEST,
                ProtocolError::new(ErrorCode::NotSupported, message),
            );
        };
        if self.gateway.metrics.recordings.get() >= config.max_recordings as i64 {
            let message = format!("{} recordings are running already", config.max_recordings);
            return self.refuse(
                REQUEST,
                ProtocolError::new(ErrorCode::LimitReached, message),
            );
        }
        let limits = RecordingLimits {
            directory,
            max_bytes: config.max_bytes,
        };
        let recorder =
            match Recorder::create(&limits, room_id, RECORDING_SAMPLE_RATE, SystemTime::now()) {
                Ok(recorder) => recorder,
                Err(error) => {
                    warn!(%error, "recording not started");
                    let message = format!("cannot record: {error}");
                    return self.refuse(
                        REQUEST,
                        ProtocolError::new(ErrorCode::NotSupported, message),
                    );
                }
            };
        let recording = self.gateway.rooms.new_recording_id();
        let file = recorder.file_name().to_string();
        info!(%room_id, recording, %file, "recording starts");
        self.outbox().send(ServerMessage::RecordingStarted {
            session_id: self.me.session_id.clone(),
            room_id: room_id.to_string(),
            recording_id: recording.to_string(),
            file: file.clone(),
        });
        let counted = Held::new(&self.gateway.metrics.recordings);
        let outbox = self.outbox().clone();
        let session_id = self.me.session_id.clone();
        let room_id = room_id.to_string();
        let on_end = move |end: RecordingEnd| {
            drop(counted);
            let (duration_ms, bytes, reason) = match end.finished {
                Ok(finished) => {
                    let reason = match (end.reason, finished.cut_short_by) {
                        ("STOPPED" | "ROOM_ENDED", Some(cut)) => cut.reason(),
                        (reason, _) => reason,
                    };
                    let duration_ms = finished.duration.as_millis().try_into().unwrap_or(0);
                    (duration_ms, finished.bytes, reason)
                }
                Err(error) => (0, 0, error.reason()),
            };
            outbox.send(ServerMessage::RecordingStopped {
                session_id,
                room_id,
                recording_id: recording.to_string(),
                file,
                duration_ms,
                bytes,
                reason,
            });
        };
        handle.start_recording(
            recording,
            RecordingJob {
                recorder,
                on_end: Box::new(on_end),
            },
        );
    }

    /// STOP_RECORDING: RECORDING_STOPPED follows once the file is closed.
    pub fn stop_recording(&self, request: StopRecording) {
        const REQUEST: &str = "STOP_RECORDING";
        let handle = match self.gateway.rooms.owned(&request.room_id, &self.me) {
            Ok(handle) => handle,
            Err(code) => return self.refuse(REQUEST, refusal(code, &request.room_id)),
        };
        let recording = match request.recording_id.as_deref().map(str::parse::<u32>) {
            None => None,
            Some(Ok(recording)) => Some(recording),
            Some(Err(_)) => {
                let message = "recordingId is not one of RECORDING_STARTED";
                return self.refuse(
                    REQUEST,
                    ProtocolError::new(ErrorCode::InvalidValue, message).with_field("recordingId"),
                );
            }
        };
        handle.stop_recording(recording);
    }
}
