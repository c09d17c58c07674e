//! Text frame → [`ClientMessage`], or a [`ProtocolError`] that says exactly
//! what is wrong, so that a client author can fix it from the reply alone.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::protocol::{ClientMessage, ErrorCode, RoomMode, ServerMessage};

/// Why a client message was refused; becomes an `ERROR` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
    pub request_type: Option<String>,
    pub field: Option<String>,
    pub session_id: Option<String>,
    pub retry_after_ms: Option<u64>,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtocolError {
            code,
            message: message.into(),
            request_type: None,
            field: None,
            session_id: None,
            retry_after_ms: None,
        }
    }

    pub fn for_request(mut self, request_type: &str) -> Self {
        self.request_type = Some(request_type.to_string());
        self
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn with_session(mut self, session_id: &str) -> Self {
        self.session_id = Some(session_id.to_string());
        self
    }

    pub fn retry_after(mut self, wait: std::time::Duration) -> Self {
        self.retry_after_ms = Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
        self
    }

    pub fn into_reply(self) -> ServerMessage {
        ServerMessage::Error {
            code: self.code,
            message: self.message,
            request_type: self.request_type,
            field: self.field,
            session_id: self.session_id,
            retry_after_ms: self.retry_after_ms,
        }
    }
}

/// Types the gateway sends but never accepts; named in the error so a
/// client that echoes a server message learns why.
const SERVER_ONLY_TYPES: &[&str] = &[
    "CONNECTED",
    "SESSION_STARTED",
    "SESSION_FAILED",
    "SESSION_CLOSED",
    "REGISTRATION_LOST",
    "REGISTRATION_RESTORED",
    "INCOMING_CALL",
    "CALL_STARTING",
    "CALL_STARTED",
    "CALL_FAILED",
    "CALL_FINISHED",
    "CALL_HELD",
    "CALL_RESUMED",
    "TRANSFER_PROGRESS",
    "CALL_REFERRED",
    "MEDIA_POINT_REMOVED",
    "ROOM_CREATED",
    "ROOM_CLOSED",
    "ROOM_INVITED",
    "ROOM_JOINED",
    "ROOM_LEFT",
    "ROOM_MEMBER_JOINED",
    "ROOM_MEMBER_LEFT",
    "RECORDING_STARTED",
    "RECORDING_STOPPED",
    "ERROR",
];

/// Parses and validates one text frame.
pub fn decode_client_message(text: &str) -> Result<ClientMessage, ProtocolError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ProtocolError::new(ErrorCode::BadJson, format!("invalid JSON: {e}")))?;
    let Value::Object(object) = &value else {
        return Err(ProtocolError::new(
            ErrorCode::NotAnObject,
            "a message must be a JSON object with a \"type\" field",
        ));
    };
    let message_type = match object.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(_) => {
            return Err(
                ProtocolError::new(ErrorCode::WrongType, "\"type\" must be a string")
                    .with_field("type"),
            )
        }
        None => {
            return Err(
                ProtocolError::new(ErrorCode::MissingField, "missing field \"type\"")
                    .with_field("type"),
            )
        }
    };
    let message = match message_type.as_str() {
        "START_SESSION" => ClientMessage::StartSession(typed(value, &message_type)?),
        "CLOSE_SESSION" => ClientMessage::CloseSession(typed(value, &message_type)?),
        "START_CALL" => ClientMessage::StartCall(typed(value, &message_type)?),
        "ACCEPT_CALL" => ClientMessage::AcceptCall(typed(value, &message_type)?),
        "REJECT_CALL" => ClientMessage::RejectCall(typed(value, &message_type)?),
        "HANGUP_CALL" => ClientMessage::HangupCall(typed(value, &message_type)?),
        "SEND_DTMF_SIGNAL" => ClientMessage::SendDtmfSignal(typed(value, &message_type)?),
        "SDP_OFFER" => ClientMessage::SdpOffer(typed(value, &message_type)?),
        "SDP_ANSWER" => ClientMessage::SdpAnswer(typed(value, &message_type)?),
        "ICE_CANDIDATE" => ClientMessage::IceCandidate(typed(value, &message_type)?),
        "CREATE_MEDIA_POINT" => ClientMessage::CreateMediaPoint(typed(value, &message_type)?),
        "REMOVE_MEDIA_POINT" => ClientMessage::RemoveMediaPoint(typed(value, &message_type)?),
        "JOIN_ROOM" => ClientMessage::JoinRoom(typed(value, &message_type)?),
        "LEAVE_ROOM" => ClientMessage::LeaveRoom(typed(value, &message_type)?),
        "CREATE_ROOM" => ClientMessage::CreateRoom(typed(value, &message_type)?),
        "CLOSE_ROOM" => ClientMessage::CloseRoom(typed(value, &message_type)?),
        "INVITE_TO_ROOM" => ClientMessage::InviteToRoom(typed(value, &message_type)?),
        "START_RECORDING" => ClientMessage::StartRecording(typed(value, &message_type)?),
        "STOP_RECORDING" => ClientMessage::StopRecording(typed(value, &message_type)?),
        "HOLD_CALL" => ClientMessage::HoldCall(typed(value, &message_type)?),
        "RESUME_CALL" => ClientMessage::ResumeCall(typed(value, &message_type)?),
        "TRANSFER_CALL" => ClientMessage::TransferCall(typed(value, &message_type)?),
        "DISCONNECTED" => ClientMessage::Disconnected(typed(value, &message_type)?),
        other if SERVER_ONLY_TYPES.contains(&other) => {
            return Err(ProtocolError::new(
                ErrorCode::UnknownType,
                format!("{other} is sent by the gateway, not accepted from clients"),
            )
            .for_request(other))
        }
        other => {
            return Err(ProtocolError::new(
                ErrorCode::UnknownType,
                format!("unknown message type {other:?}"),
            )
            .for_request(other))
        }
    };
    validate(&message).map_err(|e| e.for_request(&message_type))?;
    Ok(message)
}

fn typed<T: DeserializeOwned>(value: Value, message_type: &str) -> Result<T, ProtocolError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner().to_string();
        let within = |name: &str| {
            if path == "." {
                name.to_string()
            } else {
                format!("{path}.{name}")
            }
        };
        let refusal = if let Some(name) = missing_field_name(&inner) {
            ProtocolError::new(ErrorCode::MissingField, format!("missing field \"{name}\""))
                .with_field(within(name))
        } else if inner.starts_with("unknown variant") {
            ProtocolError::new(ErrorCode::InvalidValue, format!("{path}: {inner}")).with_field(path)
        } else {
            ProtocolError::new(ErrorCode::WrongType, format!("{path}: {inner}")).with_field(path)
        };
        refusal.for_request(message_type)
    })
}

/// serde words a missing field as "missing field `name`".
fn missing_field_name(serde_message: &str) -> Option<&str> {
    serde_message
        .strip_prefix("missing field `")?
        .split('`')
        .next()
}

fn validate(message: &ClientMessage) -> Result<(), ProtocolError> {
    let non_empty = |field: &str, value: &str| {
        if value.trim().is_empty() {
            Err(
                ProtocolError::new(ErrorCode::InvalidValue, format!("\"{field}\" is empty"))
                    .with_field(field),
            )
        } else {
            Ok(())
        }
    };
    if let Some(session_id) = message.session_id() {
        non_empty("sessionId", session_id)?;
    }
    match message {
        ClientMessage::StartSession(m) => {
            non_empty("username", &m.username)?;
            caller_identity(&m.display_name, &m.caller_number)
        }
        ClientMessage::StartCall(m) => {
            non_empty("bUri", &m.b_uri)?;
            caller_identity(&m.display_name, &m.caller_number)
        }
        ClientMessage::SendDtmfSignal(m) => {
            let valid = !m.dtmf_string.is_empty()
                && m.dtmf_string
                    .chars()
                    .all(|c| matches!(c, '0'..='9' | 'A'..='D' | '*' | '#'));
            if valid {
                Ok(())
            } else {
                Err(ProtocolError::new(
                    ErrorCode::InvalidValue,
                    format!("dtmfString {:?} must match [0-9A-D*#]+", m.dtmf_string),
                )
                .with_field("dtmfString"))
            }
        }
        ClientMessage::SdpOffer(m) | ClientMessage::SdpAnswer(m) => {
            one_target(&m.call_id, &m.point_id)
        }
        ClientMessage::IceCandidate(m) => one_target(&m.call_id, &m.point_id),
        ClientMessage::CreateMediaPoint(m) => point_name("pointId", &m.point_id),
        ClientMessage::RemoveMediaPoint(m) => point_name("pointId", &m.point_id),
        ClientMessage::JoinRoom(m) => {
            non_empty("roomId", &m.room_id)?;
            if let Some(point_id) = &m.point_id {
                point_name("pointId", point_id)?;
            }
            match (m.mode, &m.whisper_to) {
                (RoomMode::Whisper, None) => Err(ProtocolError::new(
                    ErrorCode::MissingField,
                    "mode WHISPER needs \"whisperTo\", the memberId it is heard by",
                )
                .with_field("whisperTo")),
                _ => Ok(()),
            }
        }
        ClientMessage::LeaveRoom(m) => non_empty("roomId", &m.room_id),
        ClientMessage::CloseRoom(m) | ClientMessage::StartRecording(m) => {
            non_empty("roomId", &m.room_id)
        }
        ClientMessage::StopRecording(m) => non_empty("roomId", &m.room_id),
        ClientMessage::TransferCall(m) => match (&m.target, &m.replaces_call_id) {
            (Some(target), None) => non_empty("target", target),
            (None, Some(call_id)) => non_empty("replacesCallId", call_id),
            _ => Err(ProtocolError::new(
                ErrorCode::InvalidValue,
                "give \"target\" (blind transfer) or \"replacesCallId\" (attended), one of them",
            )
            .with_field("target")),
        },
        ClientMessage::InviteToRoom(m) => {
            non_empty("roomId", &m.room_id)?;
            non_empty("username", &m.username)
        }
        _ => Ok(()),
    }
}

/// A display name goes into a SIP header between quotes: 1 to 64
/// characters, none of which could end or escape the quoted string or the
/// header.
fn display_name(field: &str, name: &str) -> Result<(), ProtocolError> {
    let valid = (1..=64).contains(&name.chars().count())
        && !name
            .chars()
            .any(|c| c.is_control() || matches!(c, '"' | '\\' | '<' | '>'));
    if valid {
        Ok(())
    } else {
        Err(ProtocolError::new(
            ErrorCode::InvalidValue,
            format!("{field} must be 1 to 64 characters without quotes, backslashes, angle brackets or control characters"),
        )
        .with_field(field))
    }
}

/// A display name and a caller number, when given; whether the user may
/// claim the number is the gateway's to decide.
fn caller_identity(name: &Option<String>, number: &Option<String>) -> Result<(), ProtocolError> {
    if let Some(name) = name {
        display_name("displayName", name)?;
    }
    match number {
        Some(number)
            if number.is_empty()
                || number.len() > 32
                || !number.chars().all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, '+' | '*' | '#' | '-' | '.' | '_')
                }) =>
        {
            Err(ProtocolError::new(
                ErrorCode::InvalidValue,
                "callerNumber must be 1 to 32 of 0-9 A-Z a-z + * # - . _",
            )
            .with_field("callerNumber"))
        }
        _ => Ok(()),
    }
}

/// SDP and ICE messages name a call or a point, not both.
fn one_target(call_id: &Option<String>, point_id: &Option<String>) -> Result<(), ProtocolError> {
    match (call_id, point_id) {
        (Some(_), None) | (None, Some(_)) => Ok(()),
        (None, None) => Err(ProtocolError::new(
            ErrorCode::MissingField,
            "missing field \"callId\" (or \"pointId\" for a media point)",
        )
        .with_field("callId")),
        (Some(_), Some(_)) => Err(ProtocolError::new(
            ErrorCode::InvalidValue,
            "name a call (\"callId\") or a media point (\"pointId\"), not both",
        )
        .with_field("pointId")),
    }
}

/// A client's name for its point: 1 to 64 of `A-Z a-z 0-9 _ . -`, so it
/// can go into logs and replies as it is.
fn point_name(field: &str, point_id: &str) -> Result<(), ProtocolError> {
    let valid = (1..=64).contains(&point_id.len())
        && point_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(())
    } else {
        Err(ProtocolError::new(
            ErrorCode::InvalidValue,
            format!("{field} must be 1 to 64 of A-Z a-z 0-9 _ . -"),
        )
        .with_field(field))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::*;

    fn refused(text: &str) -> ProtocolError {
        match decode_client_message(text) {
            Err(e) => e,
            Ok(m) => panic!("{text} was accepted as {m:?}"),
        }
    }

    #[test]
    fn decodes_start_session_and_tolerates_unknown_fields() {
        let m = decode_client_message(
            r#"{"type":"START_SESSION","username":"1001","password":"pw","clientId":"c1","sender":"web","extra":42}"#,
        )
        .unwrap();
        assert_eq!(
            m,
            ClientMessage::StartSession(StartSession {
                username: "1001".into(),
                password: "pw".into(),
                client_id: Some("c1".into()),
                sender: Some("web".into()),
                display_name: None,
                caller_number: None,
            })
        );
    }

    #[test]
    fn decodes_start_call_with_cc_and_vv() {
        let m = decode_client_message(
            r#"{"type":"START_CALL","sessionId":"s","bUri":"sip:3000@example.com",
                "cc":{"userAgent":"x","audioCodecs":["PCMU/8000"],"mediaTransport":["RTP"],"upBandwidth":64},
                "vv":[true,false]}"#,
        )
        .unwrap();
        let ClientMessage::StartCall(call) = m else {
            panic!("not START_CALL")
        };
        let cc = call.cc.unwrap();
        assert_eq!(cc.audio_codecs, vec!["PCMU/8000"]);
        assert_eq!(cc.extra.get("upBandwidth"), Some(&serde_json::json!(64)));
        assert_eq!(call.vv, Some([true, false]));
    }

    #[test]
    fn every_client_type_decodes() {
        let samples = [
            r#"{"type":"CLOSE_SESSION","sessionId":"s"}"#,
            r#"{"type":"ACCEPT_CALL","sessionId":"s","callId":"c","cc":{}}"#,
            r#"{"type":"REJECT_CALL","sessionId":"s","callId":"c","reason":"UNAVAILABE"}"#,
            r#"{"type":"HANGUP_CALL","sessionId":"s","callId":"c"}"#,
            r##"{"type":"SEND_DTMF_SIGNAL","sessionId":"s","callId":"c","dtmfString":"123#*0ABCD"}"##,
            r#"{"type":"SDP_OFFER","sessionId":"s","callId":"c","sdp":"v=0"}"#,
            r#"{"type":"SDP_ANSWER","sessionId":"s","callId":"c","sdp":"v=0"}"#,
            r#"{"type":"ICE_CANDIDATE","sessionId":"s","callId":"c","candidate":"","sdpMid":"0","sdpMLineIndex":0}"#,
            r#"{"type":"CREATE_MEDIA_POINT","sessionId":"s","pointId":"p","cc":{}}"#,
            r#"{"type":"REMOVE_MEDIA_POINT","sessionId":"s","pointId":"p"}"#,
            r#"{"type":"JOIN_ROOM","sessionId":"s","roomId":"c"}"#,
            r#"{"type":"JOIN_ROOM","sessionId":"s","roomId":"c","pointId":"p","mode":"WHISPER","whisperTo":"7"}"#,
            r#"{"type":"LEAVE_ROOM","sessionId":"s","roomId":"c","pointId":"p"}"#,
            r#"{"type":"CREATE_ROOM","sessionId":"s"}"#,
            r#"{"type":"CLOSE_ROOM","sessionId":"s","roomId":"r"}"#,
            r#"{"type":"INVITE_TO_ROOM","sessionId":"s","roomId":"r","username":"bob"}"#,
            r#"{"type":"START_RECORDING","sessionId":"s","roomId":"r"}"#,
            r#"{"type":"STOP_RECORDING","sessionId":"s","roomId":"r"}"#,
            r#"{"type":"HOLD_CALL","sessionId":"s","callId":"c","mode":"INACTIVE"}"#,
            r#"{"type":"RESUME_CALL","sessionId":"s","callId":"c"}"#,
            r#"{"type":"TRANSFER_CALL","sessionId":"s","callId":"c","target":"2001"}"#,
            r#"{"type":"TRANSFER_CALL","sessionId":"s","callId":"c","replacesCallId":"d"}"#,
            r#"{"type":"SDP_ANSWER","sessionId":"s","pointId":"p","sdp":"v=0"}"#,
            r#"{"type":"DISCONNECTED","clientId":"x"}"#,
        ];
        for text in samples {
            let m = decode_client_message(text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
            assert!(text.contains(m.type_name()));
        }
    }

    #[test]
    fn a_transfer_names_a_target_or_a_call_to_replace_never_both() {
        for text in [
            r#"{"type":"TRANSFER_CALL","sessionId":"s","callId":"c"}"#,
            r#"{"type":"TRANSFER_CALL","sessionId":"s","callId":"c","target":"1","replacesCallId":"d"}"#,
            r#"{"type":"TRANSFER_CALL","sessionId":"s","callId":"c","replacesCallId":" "}"#,
        ] {
            assert_eq!(refused(text).code, ErrorCode::InvalidValue, "{text}");
        }
    }

    #[test]
    fn each_bad_input_class_has_its_code() {
        assert_eq!(refused("{not json").code, ErrorCode::BadJson);
        assert_eq!(refused("[1,2]").code, ErrorCode::NotAnObject);
        assert_eq!(
            refused(r#"{"username":"a"}"#).field.as_deref(),
            Some("type")
        );
        let e = refused(r#"{"type":"START_SESSION","username":"a"}"#);
        assert_eq!(
            (e.code, e.field.as_deref(), e.request_type.as_deref()),
            (
                ErrorCode::MissingField,
                Some("password"),
                Some("START_SESSION")
            )
        );
        let e = refused(r#"{"type":"START_SESSION","username":5,"password":"p"}"#);
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::WrongType, Some("username"))
        );
        let e =
            refused(r#"{"type":"START_CALL","sessionId":"s","bUri":"x","cc":{"audioCodecs":[1]}}"#);
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::WrongType, Some("cc.audioCodecs[0]"))
        );
        let e = refused(r#"{"type":"REJECT_CALL","sessionId":"s","callId":"c","reason":"NOPE"}"#);
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::InvalidValue, Some("reason"))
        );
        assert_eq!(refused(r#"{"type":"FLY"}"#).code, ErrorCode::UnknownType);
        assert_eq!(
            refused(r#"{"type":"SESSION_STARTED"}"#).code,
            ErrorCode::UnknownType
        );
        let e = refused(
            r#"{"type":"SEND_DTMF_SIGNAL","sessionId":"s","callId":"c","dtmfString":"12x"}"#,
        );
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::InvalidValue, Some("dtmfString"))
        );
        let e = refused(r#"{"type":"SDP_ANSWER","sessionId":"s","sdp":"v=0"}"#);
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::MissingField, Some("callId"))
        );
        let e =
            refused(r#"{"type":"SDP_ANSWER","sessionId":"s","callId":"c","pointId":"p","sdp":""}"#);
        assert_eq!(e.code, ErrorCode::InvalidValue);
        for bad in ["", "a b", "x\\n", "../p", &"p".repeat(65)] {
            let text =
                serde_json::json!({"type":"CREATE_MEDIA_POINT","sessionId":"s","pointId":bad})
                    .to_string();
            let e = refused(&text);
            assert_eq!(
                (e.code, e.field.as_deref()),
                (ErrorCode::InvalidValue, Some("pointId")),
                "{bad:?}"
            );
        }
        let e = refused(r#"{"type":"JOIN_ROOM","sessionId":"s","roomId":"r","mode":"WHISPER"}"#);
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::MissingField, Some("whisperTo"))
        );
        let e = refused(r#"{"type":"JOIN_ROOM","sessionId":"s","roomId":"r","mode":"LOUD"}"#);
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::InvalidValue, Some("mode"))
        );
        for bad in ["", "a\"b", "line\nbreak", "<sip:x>", "\\"] {
            let text = serde_json::json!({"type":"START_CALL","sessionId":"s","bUri":"1","displayName":bad}).to_string();
            let e = refused(&text);
            assert_eq!(
                (e.code, e.field.as_deref()),
                (ErrorCode::InvalidValue, Some("displayName")),
                "{bad:?}"
            );
        }
        let e = refused(r#"{"type":"CLOSE_SESSION","sessionId":"  "}"#);
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::InvalidValue, Some("sessionId"))
        );
    }

    #[test]
    fn server_messages_carry_their_type_tag() {
        let json = ServerMessage::SessionFailed {
            session_id: "s".into(),
            client_id: "c".into(),
            reason: Some(SessionFailReason::Forbidden),
            sip_status: Some(403),
            detail: None,
        }
        .to_json();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["type"], "SESSION_FAILED");
        assert_eq!(value["reason"], "FORBIDDEN");
        assert_eq!(value["sipStatus"], 403);
        assert!(value.get("detail").is_none());
        let lost = ServerMessage::RegistrationLost {
            session_id: "s".into(),
            client_id: "c".into(),
            reason: Some(SessionFailReason::Timeout),
            sip_status: None,
            detail: Some("no answer".into()),
        };
        let value: serde_json::Value = serde_json::from_str(&lost.to_json()).unwrap();
        assert_eq!(value["type"], "REGISTRATION_LOST");
        assert_eq!(value["reason"], "TIMEOUT");
        assert_eq!(value["sessionId"], "s");
        assert!(value.get("sipStatus").is_none());
        let restored = ServerMessage::RegistrationRestored {
            session_id: "s".into(),
            client_id: "c".into(),
        };
        let value: serde_json::Value = serde_json::from_str(&restored.to_json()).unwrap();
        assert_eq!(value["type"], "REGISTRATION_RESTORED");
        assert_eq!(value["clientId"], "c");
        assert_eq!(
            refused(r#"{"type":"REGISTRATION_LOST"}"#).code,
            ErrorCode::UnknownType
        );
        let held = ServerMessage::CallHeld(HoldNotice {
            session_id: "s".into(),
            call_id: "c".into(),
            by: HoldSide::Remote,
            client_call_id: None,
        });
        let value: serde_json::Value = serde_json::from_str(&held.to_json()).unwrap();
        assert_eq!(
            (
                value["type"].as_str(),
                value["by"].as_str(),
                value["callId"].as_str()
            ),
            (Some("CALL_HELD"), Some("REMOTE"), Some("c"))
        );
        let offer = ServerMessage::SdpOffer(MediaTarget::Call("c".into()).sdp("s", "v=0".into()));
        let value: serde_json::Value = serde_json::from_str(&offer.to_json()).unwrap();
        assert_eq!(
            (value["type"].as_str(), value["callId"].as_str()),
            (Some("SDP_OFFER"), Some("c"))
        );
    }
}
