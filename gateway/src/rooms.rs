//! Every room that can be joined, by roomId: a call's room (its roomId is
//! its callId) or a conference room of CREATE_ROOM. The registry knows who
//! owns each room, who may join it, and who is in it, and tells the
//! sessions concerned when members come and go. The rooms themselves are
//! their drivers' business ([`crate::media_room`]); an entry lives as long
//! as its [`RoomRegistration`].
//!
//! Who may join: a roomId is 128 random bits, so it cannot be guessed, and
//! knowing one is not enough either. With `rooms.join_policy = same_user`
//! (the default) only sessions of the owner's user, and of the users the
//! owner invited (INVITE_TO_ROOM), may join, dial into it or record it.
//! A session that may not is told the room is unknown, exactly as for a
//! roomId that does not exist.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use dialtone_room::PointId;
use dialtone_ws::{ErrorCode, Outbox, ProtocolError, RoomMember, RoomMode, ServerMessage};
use tracing::info;

use crate::config::JoinPolicy;
use crate::media_room::RoomHandle;
use crate::metrics::{Held, Metrics};

/// A session, as the registry needs to know it.
#[derive(Clone)]
pub struct SessionRef {
    pub session_id: String,
    pub username: String,
    pub outbox: Outbox,
}

struct Member {
    point: PointId,
    session: SessionRef,
    kind: &'static str,
    mode: RoomMode,
    _counted: Held,
}

impl Member {
    fn describe(&self) -> RoomMember {
        RoomMember {
            member_id: member_id(self.point),
            kind: self.kind,
            username: self.session.username.clone(),
            mode: self.mode,
        }
    }
}

struct RoomEntry {
    handle: RoomHandle,
    owner: SessionRef,
    invited: Vec<String>,
    members: Vec<Member>,
}

/// The registry. Point ids come from here too, unique in the process, so a
/// point keeps its id in every room it moves through.
pub struct Rooms {
    rooms: Mutex<HashMap<String, RoomEntry>>,
    next_point: AtomicU32,
    next_recording: AtomicU32,
    metrics: Arc<Metrics>,
    max_rooms: usize,
}

/// Who joins a room, and how.
pub struct NewMember {
    pub point: PointId,
    pub session: SessionRef,
    /// `POINT` or `CALL`.
    pub kind: &'static str,
    pub mode: RoomMode,
}

/// A member's name in the protocol.
pub fn member_id(point: PointId) -> String {
    point.0.to_string()
}

/// The entry of a room, removed when this is dropped.
pub struct RoomRegistration {
    rooms: Arc<Rooms>,
    pub room_id: String,
    _counted: Option<Held>,
}

impl Drop for RoomRegistration {
    fn drop(&mut self) {
        self.rooms.lock().remove(&self.room_id);
    }
}

/// A point or call in a room; leaving is dropping it (the point is then
/// also taken out of the room) or [`Membership::left`] (it was moved out
/// already).
pub struct Membership {
    rooms: Arc<Rooms>,
    pub room_id: String,
    pub handle: RoomHandle,
    pub point: PointId,
}

impl Membership {
    /// The point was taken out of the room by its owner: only the
    /// registry is told.
    pub fn left(self) {
        self.rooms.leave(&self.room_id, self.point);
        std::mem::forget(self);
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.handle.remove_point(self.point);
        self.rooms.leave(&self.room_id, self.point);
    }
}

/// Why a session may not act on a room; it is told the room is unknown
/// or full.
pub fn refusal(code: ErrorCode, room_id: &str) -> ProtocolError {
    let message = match code {
        ErrorCode::LimitReached => format!("room {room_id:?} is full"),
        _ => format!("no room {room_id:?} that this session may join"),
    };
    ProtocolError::new(code, message).with_field("roomId")
}

impl Rooms {
    pub fn new(metrics: Arc<Metrics>, max_rooms: usize) -> Rooms {
        Rooms {
            rooms: Mutex::new(HashMap::new()),
            // Below: the fixed ids of a call's own points.
            next_point: AtomicU32::new(16),
            next_recording: AtomicU32::new(1),
            metrics,
            max_rooms,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, RoomEntry>> {
        self.rooms.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A point id unique in the process.
    pub fn new_point_id(&self) -> PointId {
        PointId(self.next_point.fetch_add(1, Ordering::Relaxed))
    }

    pub fn new_recording_id(&self) -> u32 {
        self.next_recording.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes a room joinable under `room_id`. A conference room counts
    /// against `rooms.max_rooms` (`None` when that many exist).
    pub fn register(
        self: &Arc<Self>,
        room_id: &str,
        handle: RoomHandle,
        owner: SessionRef,
        conference: bool,
    ) -> Option<RoomRegistration> {
        let counted = if conference {
            if self.metrics.rooms.get() >= self.max_rooms as i64 {
                return None;
            }
            Some(Held::new(&self.metrics.rooms))
        } else {
            None
        };
        self.lock().insert(
            room_id.to_string(),
            RoomEntry {
                handle,
                owner,
                invited: Vec::new(),
                members: Vec::new(),
            },
        );
        Some(RoomRegistration {
            rooms: self.clone(),
            room_id: room_id.to_string(),
            _counted: counted,
        })
    }

    /// The room's handle, if `who` may join it (or dial into it).
    pub fn admit(
        &self,
        room_id: &str,
        who: &SessionRef,
        policy: JoinPolicy,
        max_members: usize,
    ) -> Result<RoomHandle, ErrorCode> {
        let rooms = self.lock();
        let entry = rooms
            .get(room_id)
            .filter(|entry| !entry.handle.is_closed())
            .filter(|entry| policy == JoinPolicy::Anyone || may_act(entry, who))
            .ok_or(ErrorCode::UnknownRoom)?;
        if entry.members.len() >= max_members {
            return Err(ErrorCode::LimitReached);
        }
        Ok(entry.handle.clone())
    }

    /// The room's handle, for its owner's user (recording, inviting).
    pub fn owned(&self, room_id: &str, who: &SessionRef) -> Result<RoomHandle, ErrorCode> {
        self.lock()
            .get(room_id)
            .filter(|entry| entry.owner.username == who.username)
            .map(|entry| entry.handle.clone())
            .ok_or(ErrorCode::UnknownRoom)
    }

    /// The owner lets `username`'s sessions join.
    pub fn invite(&self, room_id: &str, who: &SessionRef, username: &str) -> Result<(), ErrorCode> {
        let mut rooms = self.lock();
        let entry = rooms
            .get_mut(room_id)
            .filter(|entry| entry.owner.username == who.username)
            .ok_or(ErrorCode::UnknownRoom)?;
        if !entry.invited.iter().any(|invited| invited == username) {
            entry.invited.push(username.to_string());
        }
        Ok(())
    }

    /// `point` of `session` is in the room now: the others are told, and
    /// the membership and the members (itself included) come back.
    pub fn join(
        self: &Arc<Self>,
        room_id: &str,
        handle: RoomHandle,
        joining: NewMember,
    ) -> (Membership, Vec<RoomMember>) {
        let NewMember {
            point,
            session,
            kind,
            mode,
        } = joining;
        let member = Member {
            point,
            session,
            kind,
            mode,
            _counted: Held::new(&self.metrics.room_members),
        };
        let described = member.describe();
        let mut members = Vec::new();
        if let Some(entry) = self.lock().get_mut(room_id) {
            for session in others(entry, &member.session.session_id) {
                session.outbox.send(ServerMessage::RoomMemberJoined {
                    session_id: session.session_id.clone(),
                    room_id: room_id.to_string(),
                    member: described.clone(),
                });
            }
            entry.members.push(member);
            members = entry.members.iter().map(Member::describe).collect();
        }
        info!(room_id, point = point.0, kind, ?mode, "joined a room");
        let membership = Membership {
            rooms: self.clone(),
            room_id: room_id.to_string(),
            handle,
            point,
        };
        (membership, members)
    }

    /// `point` left the room: the others are told.
    fn leave(&self, room_id: &str, point: PointId) {
        let mut rooms = self.lock();
        let Some(entry) = rooms.get_mut(room_id) else {
            return;
        };
        let Some(index) = entry.members.iter().position(|m| m.point == point) else {
            return;
        };
        let member = entry.members.remove(index);
        info!(room_id, point = point.0, "left a room");
        for session in others(entry, &member.session.session_id) {
            session.outbox.send(ServerMessage::RoomMemberLeft {
                session_id: session.session_id.clone(),
                room_id: room_id.to_string(),
                member_id: member_id(point),
            });
        }
    }
}

fn may_act(entry: &RoomEntry, who: &SessionRef) -> bool {
    entry.owner.username == who.username || entry.invited.contains(&who.username)
}

/// The sessions to tell of a change in the room, but `except`: its owner
/// and every member's, each once.
fn others<'a>(entry: &'a RoomEntry, except: &str) -> Vec<&'a SessionRef> {
    let mut sessions: Vec<&SessionRef> = Vec::new();
    let candidates =
        std::iter::once(&entry.owner).chain(entry.members.iter().map(|member| &member.session));
    for session in candidates {
        if session.session_id != except
            && !sessions.iter().any(|s| s.session_id == session.session_id)
        {
            sessions.push(session);
        }
    }
    sessions
}
