//! The messages of the native protocol, typed.
//!
//! Client messages are deserialized one struct per `type` (see
//! `decode.rs`, which picks the struct), so that an error can name the
//! offending field. Server messages serialize with their `type` tag.
//! Field names are the seed's camelCase; fields the seed lacks are marked
//! as extensions in docs/protocol.md.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `cc`: what the client's media side can do.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// e.g. `PCMU/8000`, `Speex/16000`, `opus/48000/2`.
    #[serde(default)]
    pub audio_codecs: Vec<String>,
    #[serde(default)]
    pub video_codecs: Vec<String>,
    /// `RTP`, `SRTP`, `RTMP`, `RTMPT`, ...
    #[serde(default)]
    pub media_transport: Vec<String>,
    /// The seed allows more parameters (bandwidth, ...): kept, not lost.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartSession {
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub sender: Option<String>,
    /// Extension: the display name and caller number of the session's
    /// calls, unless a call names its own (see START_CALL).
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub caller_number: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloseSession {
    pub session_id: String,
    #[serde(default)]
    pub sender: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartCall {
    pub session_id: String,
    pub b_uri: String,
    /// Extension: the room the call's SIP leg joins (a conference dialling
    /// out); the call then has no client point of its own.
    #[serde(default)]
    pub room_id: Option<String>,
    /// Extension: the display name of the call's From header (1 to 64
    /// characters; no `"`, `\`, `<`, `>` or control characters).
    #[serde(default)]
    pub display_name: Option<String>,
    /// Extension: the user part of the call's From, when the gateway lets
    /// this user claim it (`calls.caller_numbers`); the user name if unset.
    #[serde(default)]
    pub caller_number: Option<String>,
    #[serde(default)]
    pub cc: Option<Capabilities>,
    /// Voice, video.
    #[serde(default)]
    pub vv: Option<[bool; 2]>,
    /// Extension: the client's own id for the call, echoed in every call
    /// event, so a client can match replies before it knows the callId.
    #[serde(default)]
    pub client_call_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AcceptCall {
    pub session_id: String,
    pub call_id: String,
    #[serde(default)]
    pub cc: Option<Capabilities>,
    /// Extension: the room the call joins once accepted.
    #[serde(default)]
    pub room_id: Option<String>,
}

/// Why a client rejects an incoming call. `UNAVAILABE` is the seed's spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    #[serde(rename = "UNAVAILABE")]
    Unavailable,
    #[serde(rename = "DECLINE")]
    Decline,
    #[serde(rename = "BUSY")]
    Busy,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectCall {
    pub session_id: String,
    pub call_id: String,
    pub reason: RejectReason,
}

/// Messages that name one call of one session and carry nothing else
/// (HANGUP_CALL).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallRef {
    pub session_id: String,
    pub call_id: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendDtmfSignal {
    pub session_id: String,
    pub call_id: String,
    /// `[0-9A-D*#]+`, checked by the decoder.
    pub dtmf_string: String,
}

/// SDP_OFFER and SDP_ANSWER, both directions: for a call's client point
/// (`callId`) or for a point of CREATE_MEDIA_POINT (`pointId`, extension);
/// exactly one of the two.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SdpExchange {
    pub session_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point_id: Option<String>,
    pub sdp: String,
}

/// What an SDP or ICE message is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaTarget {
    Call(String),
    Point(String),
}

impl MediaTarget {
    /// From a message's `callId` and `pointId`, of which the decoder lets
    /// exactly one through.
    pub fn of(call_id: &Option<String>, point_id: &Option<String>) -> MediaTarget {
        match (call_id, point_id) {
            (_, Some(point_id)) => MediaTarget::Point(point_id.clone()),
            (Some(call_id), None) => MediaTarget::Call(call_id.clone()),
            (None, None) => MediaTarget::Call(String::new()),
        }
    }

    /// An SDP message about this target.
    pub fn sdp(&self, session_id: &str, sdp: String) -> SdpExchange {
        let (call_id, point_id) = match self {
            MediaTarget::Call(call_id) => (Some(call_id.clone()), None),
            MediaTarget::Point(point_id) => (None, Some(point_id.clone())),
        };
        SdpExchange {
            session_id: session_id.to_string(),
            call_id,
            point_id,
            sdp,
        }
    }
}

/// Extension: ICE_CANDIDATE, a trickled ICE candidate of the client's
/// WebRTC point. An empty `candidate` marks the end of its candidates.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceCandidate {
    pub session_id: String,
    #[serde(default)]
    pub call_id: Option<String>,
    #[serde(default)]
    pub point_id: Option<String>,
    /// The `candidate:…` attribute as the browser gives it.
    pub candidate: String,
    #[serde(default)]
    pub sdp_mid: Option<String>,
    #[serde(default)]
    pub sdp_m_line_index: Option<u32>,
}

/// Extension: a STUN or TURN server for the client's WebRTC point, in the
/// shape of the browser's `RTCIceServer`; handed out in SESSION_STARTED.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateMediaPoint {
    /// Extension: the seed has no sessionId here; a point belongs to a
    /// session, so the gateway requires it.
    pub session_id: String,
    pub point_id: String,
    #[serde(default)]
    pub cc: Option<Capabilities>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoveMediaPoint {
    /// Extension, as in [`CreateMediaPoint`].
    pub session_id: String,
    pub point_id: String,
}

/// How a point takes part in a room (extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RoomMode {
    /// Hears everyone, heard by everyone.
    #[default]
    Full,
    /// Hears everyone, heard by no one.
    ListenOnly,
    /// Hears everyone, heard only by the member `whisperTo` names.
    Whisper,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinRoom {
    pub session_id: String,
    /// A callId, or the roomId of CREATE_ROOM.
    pub room_id: String,
    /// Extension: which of the session's points joins; may be left out
    /// when the session has exactly one.
    #[serde(default)]
    pub point_id: Option<String>,
    #[serde(default)]
    pub mode: RoomMode,
    /// The memberId a WHISPER point is heard by.
    #[serde(default)]
    pub whisper_to: Option<String>,
}

/// Extension: LEAVE_ROOM.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaveRoom {
    pub session_id: String,
    pub room_id: String,
    #[serde(default)]
    pub point_id: Option<String>,
}

/// Extension: CREATE_ROOM, a conference room of the session's.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateRoom {
    pub session_id: String,
}

/// Extension: CLOSE_ROOM, START_RECORDING: a room the session may act on.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomRef {
    pub session_id: String,
    pub room_id: String,
}

/// Extension: INVITE_TO_ROOM, letting another user's sessions join.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InviteToRoom {
    pub session_id: String,
    pub room_id: String,
    pub username: String,
}

/// Extension: STOP_RECORDING.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StopRecording {
    pub session_id: String,
    pub room_id: String,
    /// The recording to stop; every recording of the room when absent.
    #[serde(default)]
    pub recording_id: Option<String>,
}

/// A member of a room as ROOM_* events describe it (extension).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomMember {
    /// The gateway's name for the member in this room; WHISPER names it.
    pub member_id: String,
    /// `POINT` (a client's media point) or `CALL` (a SIP call placed into
    /// or accepted into the room).
    pub kind: &'static str,
    /// The user of the session it belongs to.
    pub username: String,
    pub mode: RoomMode,
}

/// Extension: how HOLD_CALL holds the far end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HoldMode {
    /// `a=sendonly`: we may send (music on hold), the far end does not.
    #[default]
    Sendonly,
    /// `a=inactive`: nobody sends.
    Inactive,
}

/// Extension: HOLD_CALL.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HoldCall {
    pub session_id: String,
    pub call_id: String,
    #[serde(default)]
    pub mode: HoldMode,
}

/// Who put a call on hold (CALL_HELD / CALL_RESUMED, extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HoldSide {
    /// The client, with HOLD_CALL / RESUME_CALL.
    Local,
    /// The far end, with a re-INVITE or UPDATE.
    Remote,
}

/// Extension: TRANSFER_CALL: the call's far end is to call `target`
/// (blind), or to take the place of the client in another of the
/// session's calls, `replacesCallId` (attended). One of the two.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferCall {
    pub session_id: String,
    pub call_id: String,
    /// Whom the far end is to call: a bUri as START_CALL takes it.
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub replaces_call_id: Option<String>,
}

/// What CALL_HELD and CALL_RESUMED say (extension).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HoldNotice {
    pub session_id: String,
    pub call_id: String,
    pub by: HoldSide,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_call_id: Option<String>,
}

/// A client saying goodbye before it closes the socket.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientLeaving {
    #[serde(default)]
    pub client_id: Option<String>,
}

/// Every message a client may send.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    StartSession(StartSession),
    CloseSession(CloseSession),
    StartCall(StartCall),
    AcceptCall(AcceptCall),
    RejectCall(RejectCall),
    HangupCall(CallRef),
    SendDtmfSignal(SendDtmfSignal),
    SdpOffer(SdpExchange),
    SdpAnswer(SdpExchange),
    IceCandidate(IceCandidate),
    CreateMediaPoint(CreateMediaPoint),
    RemoveMediaPoint(RemoveMediaPoint),
    JoinRoom(JoinRoom),
    LeaveRoom(LeaveRoom),
    CreateRoom(CreateRoom),
    CloseRoom(RoomRef),
    InviteToRoom(InviteToRoom),
    StartRecording(RoomRef),
    StopRecording(StopRecording),
    HoldCall(HoldCall),
    ResumeCall(CallRef),
    TransferCall(TransferCall),
    Disconnected(ClientLeaving),
}

impl ClientMessage {
    /// The wire `type` of this message.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientMessage::StartSession(_) => "START_SESSION",
            ClientMessage::CloseSession(_) => "CLOSE_SESSION",
            ClientMessage::StartCall(_) => "START_CALL",
            ClientMessage::AcceptCall(_) => "ACCEPT_CALL",
            ClientMessage::RejectCall(_) => "REJECT_CALL",
            ClientMessage::HangupCall(_) => "HANGUP_CALL",
            ClientMessage::SendDtmfSignal(_) => "SEND_DTMF_SIGNAL",
            ClientMessage::SdpOffer(_) => "SDP_OFFER",
            ClientMessage::SdpAnswer(_) => "SDP_ANSWER",
            ClientMessage::IceCandidate(_) => "ICE_CANDIDATE",
            ClientMessage::CreateMediaPoint(_) => "CREATE_MEDIA_POINT",
            ClientMessage::RemoveMediaPoint(_) => "REMOVE_MEDIA_POINT",
            ClientMessage::JoinRoom(_) => "JOIN_ROOM",
            ClientMessage::LeaveRoom(_) => "LEAVE_ROOM",
            ClientMessage::CreateRoom(_) => "CREATE_ROOM",
            ClientMessage::CloseRoom(_) => "CLOSE_ROOM",
            ClientMessage::InviteToRoom(_) => "INVITE_TO_ROOM",
            ClientMessage::StartRecording(_) => "START_RECORDING",
            ClientMessage::StopRecording(_) => "STOP_RECORDING",
            ClientMessage::HoldCall(_) => "HOLD_CALL",
            ClientMessage::ResumeCall(_) => "RESUME_CALL",
            ClientMessage::TransferCall(_) => "TRANSFER_CALL",
            ClientMessage::Disconnected(_) => "DISCONNECTED",
        }
    }

    /// The session the message acts on, for all but START_SESSION and
    /// DISCONNECTED.
    pub fn session_id(&self) -> Option<&str> {
        match self {
            ClientMessage::StartSession(_) | ClientMessage::Disconnected(_) => None,
            ClientMessage::CloseSession(m) => Some(&m.session_id),
            ClientMessage::StartCall(m) => Some(&m.session_id),
            ClientMessage::AcceptCall(m) => Some(&m.session_id),
            ClientMessage::RejectCall(m) => Some(&m.session_id),
            ClientMessage::HangupCall(m) => Some(&m.session_id),
            ClientMessage::SendDtmfSignal(m) => Some(&m.session_id),
            ClientMessage::SdpOffer(m) | ClientMessage::SdpAnswer(m) => Some(&m.session_id),
            ClientMessage::IceCandidate(m) => Some(&m.session_id),
            ClientMessage::CreateMediaPoint(m) => Some(&m.session_id),
            ClientMessage::RemoveMediaPoint(m) => Some(&m.session_id),
            ClientMessage::JoinRoom(m) => Some(&m.session_id),
            ClientMessage::LeaveRoom(m) => Some(&m.session_id),
            ClientMessage::CreateRoom(m) => Some(&m.session_id),
            ClientMessage::CloseRoom(m) | ClientMessage::StartRecording(m) => Some(&m.session_id),
            ClientMessage::InviteToRoom(m) => Some(&m.session_id),
            ClientMessage::StopRecording(m) => Some(&m.session_id),
            ClientMessage::HoldCall(m) => Some(&m.session_id),
            ClientMessage::ResumeCall(m) => Some(&m.session_id),
            ClientMessage::TransferCall(m) => Some(&m.session_id),
        }
    }
}

/// Why a session could not start (or ended on its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SessionFailReason {
    /// The registrar (or the configured user list) refused the credentials.
    Forbidden,
    /// The registrar did not answer in time or could not be reached.
    Timeout,
    /// Part of the seed; this gateway has no captcha and never sends it.
    CaptchaFailed,
}

/// Why a call did not start. `UNAVAILABE` is the seed's spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CallFailReason {
    #[serde(rename = "BUSY")]
    Busy,
    #[serde(rename = "DECLINE")]
    Decline,
    #[serde(rename = "UNAVAILABE")]
    Unavailable,
    /// The seed's `MEDIA_FAILED.+`: the media could not be set up.
    #[serde(rename = "MEDIA_FAILED")]
    MediaFailed,
}

impl CallFailReason {
    /// The reason a SIP final status stands for.
    pub fn from_sip_status(status: u16) -> CallFailReason {
        match status {
            486 | 600 => CallFailReason::Busy,
            603 => CallFailReason::Decline,
            _ => CallFailReason::Unavailable,
        }
    }
}

/// Extension: how a call's media went, as the gateway measured the SIP
/// side (RTCP / RFC 3550 statistics and an E-model MOS estimate).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallQuality {
    pub packets_sent: u64,
    pub packets_received: u64,
    pub packets_lost: i64,
    pub jitter_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    /// 1 (bad) to 4.5 (best narrowband).
    pub mos: f64,
}

/// Progress of an outgoing call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CallStage {
    Trying,
    Ringing,
    SessionProgress,
}

/// The error reply's codes. See docs/protocol.md for when each is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    BadJson,
    NotAnObject,
    MissingField,
    WrongType,
    InvalidValue,
    UnknownType,
    BinaryFrame,
    TooLarge,
    UnknownSession,
    UnknownCall,
    /// The call is not in a state where the message applies (ACCEPT_CALL of
    /// an outgoing call, SEND_DTMF_SIGNAL before the call started, ...).
    InvalidState,
    SessionLimit,
    NotSupported,
    /// No media point of that pointId in the session.
    UnknownPoint,
    /// No room of that roomId that this session may act on (unknown,
    /// ended, or not open to it: the reply does not say which).
    UnknownRoom,
    /// A configured limit (points per session, members per room, rooms,
    /// recordings) is reached.
    LimitReached,
    /// The gateway is draining and takes no new session: the client should
    /// reconnect (through its balancer) to reach another gateway.
    Draining,
    /// Too many requests (START_SESSION, START_CALL) or too many failed
    /// logins from this user or address: wait `retryAfterMs`.
    RateLimited,
}

/// Every message the gateway sends.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerMessage {
    #[serde(rename_all = "camelCase")]
    Connected {
        client_id: String,
    },
    #[serde(rename_all = "camelCase")]
    Disconnected {
        client_id: String,
    },
    #[serde(rename_all = "camelCase")]
    SessionStarted {
        session_id: String,
        client_id: String,
        /// Extension: STUN / TURN servers for the client's WebRTC points.
        ice_servers: Vec<IceServer>,
    },
    #[serde(rename_all = "camelCase")]
    SessionFailed {
        session_id: String,
        client_id: String,
        reason: Option<SessionFailReason>,
        /// Extension: the registrar's status code, when it answered.
        #[serde(skip_serializing_if = "Option::is_none")]
        sip_status: Option<u16>,
        /// Extension: a sentence for people.
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    SessionClosed {
        session_id: String,
        client_id: String,
    },
    /// Extension: the session's binding at the registrar lapsed (its
    /// granted time passed without a successful refresh): incoming calls
    /// cannot reach the session. The session stays started, its calls go
    /// on and refreshes are retried; `reason`, `sipStatus` and `detail`
    /// say why the last refresh failed, as in SESSION_FAILED.
    #[serde(rename_all = "camelCase")]
    RegistrationLost {
        session_id: String,
        client_id: String,
        reason: Option<SessionFailReason>,
        #[serde(skip_serializing_if = "Option::is_none")]
        sip_status: Option<u16>,
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// Extension: a refresh succeeded again after REGISTRATION_LOST.
    #[serde(rename_all = "camelCase")]
    RegistrationRestored {
        session_id: String,
        client_id: String,
    },
    #[serde(rename_all = "camelCase")]
    IncomingCall {
        session_id: String,
        /// Extension: the seed's INCOMING_CALL lacks it, yet ACCEPT_CALL needs it.
        call_id: String,
        a_uri: String,
        /// Extension: the display name of the caller's From header.
        #[serde(skip_serializing_if = "Option::is_none")]
        a_display_name: Option<String>,
        sdp: String,
    },
    #[serde(rename_all = "camelCase")]
    CallStarting {
        session_id: String,
        call_id: String,
        stage: CallStage,
        #[serde(skip_serializing_if = "Option::is_none")]
        client_call_id: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    CallStarted {
        session_id: String,
        call_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        client_call_id: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    CallFailed {
        session_id: String,
        call_id: String,
        reason: CallFailReason,
        /// Extension: the SIP final status, when there was one.
        #[serde(skip_serializing_if = "Option::is_none")]
        sip_status: Option<u16>,
        /// Extension: its reason phrase, or what went wrong.
        #[serde(skip_serializing_if = "Option::is_none")]
        sip_reason: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        client_call_id: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    CallFinished {
        session_id: String,
        call_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        client_call_id: Option<String>,
        /// Extension: the call's media statistics, when media flowed.
        #[serde(skip_serializing_if = "Option::is_none")]
        quality: Option<CallQuality>,
    },
    /// Extension: the call is on hold, by the client (HOLD_CALL answered)
    /// or by the far end.
    CallHeld(HoldNotice),
    /// Extension: the call is off hold again.
    CallResumed(HoldNotice),
    /// Extension: how TRANSFER_CALL goes: the far end's answer to the
    /// REFER (`stage` `REFER`: 202 it will try, else refused), then the
    /// progress of its call to the target (`stage` `CALL`: 100, 180, 200
    /// success — the call then ends — or a failure).
    #[serde(rename_all = "camelCase")]
    TransferProgress {
        session_id: String,
        call_id: String,
        stage: &'static str,
        sip_status: u16,
        sip_reason: String,
    },
    /// Extension: the far end asks the gateway to call `target` in its
    /// place (a REFER); `accepted` says whether the gateway follows it
    /// (`calls.incoming_refer`). The new call's progress follows as
    /// TRANSFER_PROGRESS with `stage` `REFERRED_CALL`; on its answer the
    /// client's call goes on with the new far end.
    #[serde(rename_all = "camelCase")]
    CallReferred {
        session_id: String,
        call_id: String,
        target: String,
        /// An attended transfer: the new call replaces one of the target's.
        attended: bool,
        accepted: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Extension: a DTMF digit the far end sent, however it came.
    #[serde(rename_all = "camelCase")]
    DtmfReceived {
        session_id: String,
        call_id: String,
        digit: String,
        /// `RFC4733` (telephone-event) or `INFO` (SIP INFO dtmf-relay).
        method: &'static str,
    },
    SdpOffer(SdpExchange),
    SdpAnswer(SdpExchange),
    /// Extension: a media point is gone: REMOVE_MEDIA_POINT, or it failed
    /// (`reason` `MEDIA_FAILED`, `detail` says how).
    #[serde(rename_all = "camelCase")]
    MediaPointRemoved {
        session_id: String,
        point_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// Extension: the reply to CREATE_ROOM.
    #[serde(rename_all = "camelCase")]
    RoomCreated {
        session_id: String,
        room_id: String,
    },
    /// Extension: the reply to INVITE_TO_ROOM.
    #[serde(rename_all = "camelCase")]
    RoomInvited {
        session_id: String,
        room_id: String,
        username: String,
    },
    /// Extension: the reply to CLOSE_ROOM.
    #[serde(rename_all = "camelCase")]
    RoomClosed {
        session_id: String,
        room_id: String,
    },
    /// Extension: the session's point is in the room, with who else is.
    #[serde(rename_all = "camelCase")]
    RoomJoined {
        session_id: String,
        room_id: String,
        point_id: String,
        member_id: String,
        members: Vec<RoomMember>,
    },
    /// Extension: the session's point (or call) left the room: LEAVE_ROOM
    /// (`LEFT`), the room ended (`ROOM_ENDED`), the point was removed
    /// (`REMOVED`).
    #[serde(rename_all = "camelCase")]
    RoomLeft {
        session_id: String,
        room_id: String,
        member_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        point_id: Option<String>,
        reason: &'static str,
    },
    /// Extension: to every session with a member in the room (and its
    /// owner), someone else joined.
    #[serde(rename_all = "camelCase")]
    RoomMemberJoined {
        session_id: String,
        room_id: String,
        member: RoomMember,
    },
    #[serde(rename_all = "camelCase")]
    RoomMemberLeft {
        session_id: String,
        room_id: String,
        member_id: String,
    },
    #[serde(rename_all = "camelCase")]
    RecordingStarted {
        session_id: String,
        room_id: String,
        recording_id: String,
        file: String,
    },
    /// Extension: a recording ended: STOP_RECORDING (`STOPPED`), its room
    /// ended (`ROOM_ENDED`), or writing it failed (`DISK_FULL`,
    /// `SIZE_LIMIT`, `WRITE_FAILED`). `file` is its name in the recording
    /// directory.
    #[serde(rename_all = "camelCase")]
    RecordingStopped {
        session_id: String,
        room_id: String,
        recording_id: String,
        file: String,
        duration_ms: u64,
        bytes: u64,
        reason: &'static str,
    },
    /// Extension: the reply to a message the gateway cannot act on.
    #[serde(rename_all = "camelCase")]
    Error {
        code: ErrorCode,
        message: String,
        /// The `type` of the offending message, when it had a readable one.
        #[serde(skip_serializing_if = "Option::is_none")]
        request_type: Option<String>,
        /// The offending field, as a path (`cc.audioCodecs[0]`).
        #[serde(skip_serializing_if = "Option::is_none")]
        field: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        session_id: Option<String>,
        /// With RATE_LIMITED: how long until the same request may succeed.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

impl ServerMessage {
    /// The JSON text sent on the wire.
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: every map key is a string.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{\"type\":\"ERROR\"}"))
    }
}
