//! Rooms end to end, on 127.0.0.1 with real peers: a client's call to baresip through
//! Kamailio, and media points of other sessions (plain RTP, WebRTC by a str0m client, RTMP by
//! ffmpeg) joining that call's room; a conference room that dials out to two baresips; who
//! hears whom (each tone checked by its share of what a party heard, so a party that hears
//! itself, or misses someone, fails), listen-only members, leaving and rejoining, recordings,
//! a foreign session refused, and everything freed afterwards; and a relay between a loopback
//! member and one on a neighbouring network (a second namespace) carried by the kernel.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context};
use dialtone_codecs::Codec;
use dialtone_tests::audio::{read_wav, tone_shares, tone_wav};
use dialtone_tests::baresip::{Baresip, BaresipAccount, BaresipOptions, DEFAULT_TONE_HZ};
use dialtone_tests::ffmpeg::{AudioSource, FlashOffer, FlvAudio, Player, Publisher};
use dialtone_tests::gateway::{Gateway, LOOPBACK};
use dialtone_tests::kamailio::{Kamailio, KamailioOptions};
use dialtone_tests::netns::{self, Neighbour};
use dialtone_tests::rtp_peer::{sdp_audio_addr, start_rtp_call, RtpPeer};
use dialtone_tests::rtp_stream::{ReceivedRtp, RelayReport, ScriptedStream};
use dialtone_tests::wait::wait_for_async;
use dialtone_tests::webrtc_peer::WebRtcPeer;
use dialtone_tests::ws_client::WsClient;
use serde_json::{json, Value};

const REPLY: Duration = Duration::from_secs(10);
/// The caller's tone, baresip's, the second member's, a third one's.
const CALLER_HZ: f64 = 1000.0;
const CALLEE_HZ: f64 = DEFAULT_TONE_HZ;
const MEMBER_HZ: f64 = 700.0;
const THIRD_HZ: f64 = 1500.0;
/// A tone counts as heard with this share of the energy, as absent below the other. The
/// sources differ in level (baresip and ffmpeg play at half scale, the test peers at a
/// quarter), so a quiet one among loud ones has a share of about 0.07.
const HEARD: f64 = 0.03;
const ABSENT: f64 = 0.003;

struct Rig {
    kamailio: Kamailio,
    gateway: Gateway,
    recordings: tempfile::TempDir,
}

impl Rig {
    fn start() -> anyhow::Result<Rig> {
        Rig::start_with("")
    }

    fn start_with(extra: &str) -> anyhow::Result<Rig> {
        let kamailio = Kamailio::start(KamailioOptions::default())?;
        let recordings = tempfile::tempdir()?;
        let gateway = Gateway::start(&format!(
            "{LOOPBACK}t1_ms = 100\n[registrar]\naddress = \"sip:127.0.0.1:{};transport=udp\"\n\
             [recording]\ndirectory = \"{}\"\n{extra}",
            kamailio.sip_port(),
            recordings.path().display()
        ))?;
        Ok(Rig {
            kamailio,
            gateway,
            recordings,
        })
    }

    /// A registered baresip answering at once, recording what it hears, playing `hz`.
    fn phone(&self, user: &str, hz: f64) -> anyhow::Result<Baresip> {
        let audio_source = if hz == DEFAULT_TONE_HZ {
            None
        } else {
            let path = self.recordings.path().join(format!("source-{user}.wav"));
            tone_wav(&path, hz, 60.0, 8000)?;
            Some(path)
        };
        Baresip::start(BaresipOptions {
            account: Some(BaresipAccount::rig_user(user, self.kamailio.sip_addr())?),
            auto_answer: true,
            record: true,
            audio_source,
            ..Default::default()
        })
    }

    async fn session(&self, user: &str) -> anyhow::Result<(WsClient, String)> {
        let password = dialtone_tests::kamailio::password_for(user).context("rig user")?;
        WsClient::start_session(&self.gateway.ws_url(), user, &password).await
    }
}

/// CREATE_ROOM; returns the new conference room's id.
async fn create_room(ws: &mut WsClient, session_id: &str) -> anyhow::Result<String> {
    ws.send_json(&json!({"type": "CREATE_ROOM", "sessionId": session_id}))
        .await?;
    Ok(ws.recv_type("ROOM_CREATED", REPLY).await?["roomId"]
        .as_str()
        .context("roomId")?
        .to_string())
}

/// CREATE_MEDIA_POINT with `cc`; returns the gateway's SDP_OFFER for it.
async fn create_point(
    ws: &mut WsClient,
    session_id: &str,
    point_id: &str,
    cc: Value,
) -> anyhow::Result<String> {
    ws.send_json(&json!({
        "type": "CREATE_MEDIA_POINT", "sessionId": session_id, "pointId": point_id, "cc": cc,
    }))
    .await?;
    let offer = ws.recv_type("SDP_OFFER", REPLY).await?;
    ensure!(
        offer["pointId"] == point_id && offer.get("callId").is_none(),
        "{offer}"
    );
    Ok(offer["sdp"].as_str().context("sdp")?.to_string())
}

/// A plain RTP point of `peer`, answered: where the gateway listens for it.
async fn rtp_point(
    ws: &mut WsClient,
    session_id: &str,
    point_id: &str,
    peer: &RtpPeer,
) -> anyhow::Result<SocketAddr> {
    let cc = json!({"mediaTransport": ["RTP"], "audioCodecs": [peer.label()]});
    let offer = create_point(ws, session_id, point_id, cc).await?;
    ws.send_json(&json!({
        "type": "SDP_ANSWER", "sessionId": session_id, "pointId": point_id,
        "sdp": peer.answer_sdp()?,
    }))
    .await?;
    sdp_audio_addr(&offer)
}

/// JOIN_ROOM; returns ROOM_JOINED.
async fn join(
    ws: &mut WsClient,
    session_id: &str,
    room_id: &str,
    point_id: &str,
    mode: &str,
) -> anyhow::Result<Value> {
    ws.send_json(&json!({
        "type": "JOIN_ROOM", "sessionId": session_id, "roomId": room_id, "pointId": point_id,
        "mode": mode,
    }))
    .await?;
    let joined = ws.recv_type("ROOM_JOINED", REPLY).await?;
    ensure!(
        joined["roomId"] == room_id && joined["pointId"] == point_id,
        "{joined}"
    );
    Ok(joined)
}

/// Checks that `heard` holds each tone of `present` and none of `absent`.
fn hears(
    who: &str,
    heard: &[i16],
    rate: u32,
    present: &[f64],
    absent: &[f64],
) -> anyhow::Result<()> {
    let tones: Vec<f64> = present.iter().chain(absent).copied().collect();
    let shares = tone_shares(heard, rate, &tones);
    let report = || {
        tones
            .iter()
            .zip(&shares)
            .map(|(hz, share)| format!("{hz} Hz: {share:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (index, share) in shares.iter().enumerate() {
        if index < present.len() {
            ensure!(
                *share > HEARD,
                "{who} misses {} Hz ({})",
                tones[index],
                report()
            );
        } else {
            ensure!(
                *share < ABSENT,
                "{who} hears {} Hz ({})",
                tones[index],
                report()
            );
        }
    }
    Ok(())
}

/// A mixed stream as a far end's jitter buffer sees it: one SSRC, sequence numbers without a
/// gap, timestamps that only step forward by whole 20 ms frames, the marker on the first.
fn check_stream(who: &str, packets: &[ReceivedRtp]) -> anyhow::Result<()> {
    ensure!(packets.len() > 50, "{who} got {} packets", packets.len());
    ensure!(packets[0].marker, "{who}: no marker on the first packet");
    for pair in packets.windows(2) {
        ensure!(pair[1].ssrc == pair[0].ssrc, "{who}: the SSRC changed");
        ensure!(
            pair[1].sequence == pair[0].sequence.wrapping_add(1),
            "{who}: sequence {} after {}",
            pair[1].sequence,
            pair[0].sequence
        );
        let step = pair[1].timestamp.wrapping_sub(pair[0].timestamp);
        ensure!(
            step > 0 && step % 160 == 0 && step < 160 * 50,
            "{who}: timestamp step {step}"
        );
    }
    Ok(())
}

async fn hang_up(ws: &mut WsClient, session_id: &str, call_id: &str) -> anyhow::Result<()> {
    ws.send_json(&json!({"type": "HANGUP_CALL", "sessionId": session_id, "callId": call_id}))
        .await?;
    ws.recv_type_skipping(
        "CALL_FINISHED",
        &[
            "ROOM_MEMBER_JOINED",
            "ROOM_MEMBER_LEFT",
            "RECORDING_STOPPED",
        ],
        REPLY,
    )
    .await?;
    Ok(())
}

/// User 1001's call from an RTP point (PCMU) to baresip 2000 (playing [`CALLEE_HZ`]),
/// established: every test's starting point.
struct PhoneCall {
    callee: Baresip,
    ws: WsClient,
    session_id: String,
    call_id: String,
    /// Where the gateway listens for the caller's point.
    point: SocketAddr,
    caller: RtpPeer,
}

async fn call_to_phone(rig: &Rig) -> anyhow::Result<PhoneCall> {
    let callee = rig.phone("2000", CALLEE_HZ)?;
    let (mut ws, session_id) = rig.session("1001").await?;
    let caller = RtpPeer::bind(Codec::Pcmu).await?;
    let (call_id, point) = start_rtp_call(&mut ws, &session_id, "2000", &caller).await?;
    callee.wait_call_established(REPLY)?;
    Ok(PhoneCall {
        callee,
        ws,
        session_id,
        call_id,
        point,
        caller,
    })
}

/// The recording's file, once RECORDING_STOPPED named it.
fn recording_path(rig: &Rig, stopped: &Value) -> anyhow::Result<PathBuf> {
    let file = stopped["file"].as_str().context("file")?;
    ensure!(
        !file.contains('/') && file.ends_with(".wav"),
        "file {file:?}"
    );
    Ok(rig.recordings.path().join(file))
}

#[tokio::test]
async fn a_second_session_joins_a_call_and_each_party_hears_the_other_two() -> anyhow::Result<()> {
    let rig = Rig::start()?;
    let fds_before = rig.gateway.open_fds()?;
    let PhoneCall {
        callee,
        mut ws,
        session_id,
        call_id,
        point: caller_point,
        caller,
    } = call_to_phone(&rig).await?;

    // The same user, from another tab: its own point, into the call's room.
    let (mut ws2, session2) = rig.session("1001").await?;
    let member = RtpPeer::bind(Codec::Pcmu).await?;
    let member_point = rtp_point(&mut ws2, &session2, "desk", &member).await?;
    let joined = join(&mut ws2, &session2, &call_id, "desk", "FULL").await?;
    let member_id = joined["memberId"].as_str().context("memberId")?.to_string();
    let announced = ws.recv_type("ROOM_MEMBER_JOINED", REPLY).await?;
    ensure!(
        announced["member"]["memberId"] == member_id.as_str()
            && announced["member"]["username"] == "1001"
            && announced["member"]["kind"] == "POINT",
        "{announced}"
    );

    ws.send_json(&json!({"type": "START_RECORDING", "sessionId": session_id, "roomId": call_id}))
        .await?;
    let started = ws.recv_type("RECORDING_STARTED", REPLY).await?;
    let (caller_heard, member_heard) = tokio::join!(
        caller.exchange_packets(caller_point, CALLER_HZ, 4.0, 0),
        member.exchange_packets(member_point, MEMBER_HZ, 4.0, 0),
    );
    let ((caller_heard, _), (member_heard, member_packets)) = (caller_heard?, member_heard?);
    ws.send_json(&json!({"type": "STOP_RECORDING", "sessionId": session_id, "roomId": call_id}))
        .await?;
    let stopped = ws.recv_type("RECORDING_STOPPED", REPLY).await?;
    ensure!(
        stopped["recordingId"] == started["recordingId"] && stopped["reason"] == "STOPPED",
        "{stopped}"
    );
    let duration_ms = stopped["durationMs"].as_u64().context("durationMs")?;
    ensure!(
        (3000..=8000).contains(&duration_ms),
        "{duration_ms} ms recorded"
    );

    hears(
        "the caller",
        &caller_heard,
        8000,
        &[CALLEE_HZ, MEMBER_HZ],
        &[CALLER_HZ],
    )?;
    hears(
        "the member",
        &member_heard,
        8000,
        &[CALLER_HZ, CALLEE_HZ],
        &[MEMBER_HZ],
    )?;
    check_stream("the member", &member_packets)?;
    let (rate, recorded) = read_wav(&recording_path(&rig, &stopped)?)?;
    ensure!(rate == 16_000, "recorded at {rate} Hz");
    hears(
        "the recording",
        &recorded,
        rate,
        &[CALLER_HZ, CALLEE_HZ, MEMBER_HZ],
        &[],
    )?;

    hang_up(&mut ws, &session_id, &call_id).await?;
    callee.wait_call_closed(REPLY)?;
    let callee_heard = callee.wait_heard_recording_finished(REPLY)?;
    let (rate, callee_heard) = read_wav(&callee_heard)?;
    hears(
        "baresip",
        &callee_heard,
        rate,
        &[CALLER_HZ, MEMBER_HZ],
        &[CALLEE_HZ],
    )?;

    // The call's room ended: the member's point is back on its own, and then removed.
    let left = ws2.recv_type("ROOM_LEFT", REPLY).await?;
    ensure!(
        left["reason"] == "ROOM_ENDED" && left["pointId"] == "desk",
        "{left}"
    );
    ws2.send_json(&json!({"type": "REMOVE_MEDIA_POINT", "sessionId": session2, "pointId": "desk"}))
        .await?;
    ws2.recv_type("MEDIA_POINT_REMOVED", REPLY).await?;
    ws.close().await?;
    ws2.close().await?;
    rig.gateway.wait_all_released(REPLY)?;
    let fds_after = rig.gateway.open_fds()?;
    ensure!(
        fds_after <= fds_before + 2,
        "fds {fds_before} before, {fds_after} after"
    );
    Ok(())
}

#[tokio::test]
async fn a_listen_only_member_hears_all_and_a_member_leaves_and_rejoins() -> anyhow::Result<()> {
    let rig = Rig::start()?;
    let PhoneCall {
        callee: _callee,
        mut ws,
        session_id,
        call_id,
        point: caller_point,
        caller,
    } = call_to_phone(&rig).await?;
    let (mut ws2, session2) = rig.session("1001").await?;
    let member = RtpPeer::bind(Codec::Pcmu).await?;
    let member_point = rtp_point(&mut ws2, &session2, "member", &member).await?;
    join(&mut ws2, &session2, &call_id, "member", "FULL").await?;
    // A supervisor: hears everyone, and what it says reaches nobody.
    let supervisor = RtpPeer::bind(Codec::Pcmu).await?;
    let supervisor_point = rtp_point(&mut ws2, &session2, "supervisor", &supervisor).await?;
    join(&mut ws2, &session2, &call_id, "supervisor", "LISTEN_ONLY").await?;

    let (caller_heard, member_heard, supervisor_heard) = tokio::join!(
        caller.exchange(caller_point, CALLER_HZ, 3.0, 0),
        member.exchange(member_point, MEMBER_HZ, 3.0, 0),
        supervisor.exchange(supervisor_point, THIRD_HZ, 3.0, 0),
    );
    hears(
        "the caller",
        &caller_heard?,
        8000,
        &[CALLEE_HZ, MEMBER_HZ],
        &[CALLER_HZ, THIRD_HZ],
    )?;
    hears(
        "the member",
        &member_heard?,
        8000,
        &[CALLER_HZ, CALLEE_HZ],
        &[MEMBER_HZ, THIRD_HZ],
    )?;
    hears(
        "the supervisor",
        &supervisor_heard?,
        8000,
        &[CALLER_HZ, CALLEE_HZ, MEMBER_HZ],
        &[THIRD_HZ],
    )?;

    // The member leaves: the caller no longer hears it, it hears nobody.
    ws2.send_json(&json!({"type": "LEAVE_ROOM", "sessionId": session2, "roomId": call_id, "pointId": "member"}))
        .await?;
    let left = ws2.recv_type("ROOM_LEFT", REPLY).await?;
    ensure!(left["reason"] == "LEFT", "{left}");
    ws.recv_type_skipping("ROOM_MEMBER_LEFT", &["ROOM_MEMBER_JOINED"], REPLY)
        .await?;
    let (caller_heard, member_heard) = tokio::join!(
        caller.exchange(caller_point, CALLER_HZ, 2.0, 0),
        member.exchange(member_point, MEMBER_HZ, 2.0, 0),
    );
    hears(
        "the caller, alone with baresip",
        &caller_heard?,
        8000,
        &[CALLEE_HZ],
        &[MEMBER_HZ],
    )?;
    // What came before it left, still in its socket, is skipped as in the other checks.
    let member_heard = member_heard?;
    let after_leaving = member_heard.get(4000..).unwrap_or_default();
    ensure!(
        after_leaving
            .iter()
            .all(|sample| sample.unsigned_abs() < 100),
        "a point out of the room heard something"
    );

    // And comes back.
    join(&mut ws2, &session2, &call_id, "member", "FULL").await?;
    let (caller_heard, member_heard) = tokio::join!(
        caller.exchange(caller_point, CALLER_HZ, 2.0, 0),
        member.exchange(member_point, MEMBER_HZ, 2.0, 0),
    );
    hears(
        "the caller after the rejoin",
        &caller_heard?,
        8000,
        &[CALLEE_HZ, MEMBER_HZ],
        &[CALLER_HZ],
    )?;
    hears(
        "the member after the rejoin",
        &member_heard?,
        8000,
        &[CALLER_HZ, CALLEE_HZ],
        &[MEMBER_HZ],
    )?;

    hang_up(&mut ws, &session_id, &call_id).await?;
    // Closing the session removes its points: nothing is left behind.
    ws2.close().await?;
    ws.close().await?;
    rig.gateway.wait_all_released(REPLY)?;
    Ok(())
}

#[tokio::test]
async fn a_foreign_session_is_refused_until_invited_and_limits_hold() -> anyhow::Result<()> {
    let rig = Rig::start_with("[rooms]\nmax_points_per_session = 2\n")?;
    let PhoneCall {
        callee: _callee,
        mut ws,
        session_id,
        call_id,
        point: _,
        caller: _caller,
    } = call_to_phone(&rig).await?;

    let (mut stranger, stranger_session) = rig.session("1002").await?;
    let peer = RtpPeer::bind(Codec::Pcmu).await?;
    rtp_point(&mut stranger, &stranger_session, "p", &peer).await?;
    let refusals = [
        json!({"type": "JOIN_ROOM", "sessionId": stranger_session, "roomId": call_id, "pointId": "p"}),
        json!({"type": "START_CALL", "sessionId": stranger_session, "roomId": call_id, "bUri": "2000"}),
        json!({"type": "START_RECORDING", "sessionId": stranger_session, "roomId": call_id}),
        json!({"type": "JOIN_ROOM", "sessionId": stranger_session, "roomId": "0123456789abcdef0123456789abcdef", "pointId": "p"}),
    ];
    for refused in &refusals {
        stranger.send_json(refused).await?;
        let error = stranger.recv_type("ERROR", REPLY).await?;
        ensure!(
            error["code"] == "UNKNOWN_ROOM" && error["field"] == "roomId",
            "{refused} → {error}"
        );
    }
    // The session itself cannot be borrowed either.
    stranger
        .send_json(&json!({"type": "JOIN_ROOM", "sessionId": session_id, "roomId": call_id}))
        .await?;
    ensure!(stranger.recv_type("ERROR", REPLY).await?["code"] == "UNKNOWN_SESSION");
    // Bad points and limits.
    for (bad, code) in [
        (
            json!({"type": "CREATE_MEDIA_POINT", "sessionId": stranger_session, "pointId": "p", "cc": {"mediaTransport": ["RTP"]}}),
            "INVALID_VALUE",
        ),
        (
            json!({"type": "CREATE_MEDIA_POINT", "sessionId": stranger_session, "pointId": "q", "cc": {"mediaTransport": ["CARRIER_PIGEON"]}}),
            "INVALID_VALUE",
        ),
        (
            json!({"type": "CREATE_MEDIA_POINT", "sessionId": stranger_session, "pointId": "../x", "cc": {"mediaTransport": ["RTP"]}}),
            "INVALID_VALUE",
        ),
        (
            json!({"type": "REMOVE_MEDIA_POINT", "sessionId": stranger_session, "pointId": "nope"}),
            "UNKNOWN_POINT",
        ),
        (
            json!({"type": "SDP_ANSWER", "sessionId": stranger_session, "pointId": "nope", "sdp": "v=0"}),
            "UNKNOWN_POINT",
        ),
    ] {
        stranger.send_json(&bad).await?;
        let error = stranger.recv_type("ERROR", REPLY).await?;
        ensure!(error["code"] == code, "{bad} → {error}");
    }
    create_point(
        &mut stranger,
        &stranger_session,
        "second",
        json!({"mediaTransport": ["RTP"]}),
    )
    .await?;
    stranger
        .send_json(&json!({"type": "CREATE_MEDIA_POINT", "sessionId": stranger_session, "pointId": "third", "cc": {"mediaTransport": ["RTP"]}}))
        .await?;
    ensure!(stranger.recv_type("ERROR", REPLY).await?["code"] == "LIMIT_REACHED");
    let status = rig.gateway.status()?;
    ensure!(
        status["mediaPoints"] == 2 && status["limits"]["maxPointsPerSession"] == 2,
        "{status}"
    );
    let metrics = rig.gateway.metrics_text()?;
    ensure!(
        metrics.contains("dialtone_media_points 2")
            && metrics.contains("dialtone_limit{limit=\"max_points_per_session\"} 2"),
        "{metrics}"
    );
    // A light load: every room is on the first media loop, which says so within its 1 s window.
    let loop_rooms = wait_for_async(REPLY, async || {
        let rooms = media_loop_rooms(&rig.gateway.metrics_text()?);
        Ok(rooms
            .first()
            .is_some_and(|&first| first > 0)
            .then_some(rooms))
    })
    .await
    .context("the first media loop reporting its rooms")?;
    ensure!(
        loop_rooms[1..].iter().all(|&rooms| rooms == 0),
        "rooms spread over loops: {loop_rooms:?}"
    );

    // Invited by the room's owner, the other user may join.
    ws.send_json(&json!({"type": "INVITE_TO_ROOM", "sessionId": session_id, "roomId": call_id, "username": "1002"}))
        .await?;
    let invited = ws.recv_type("ROOM_INVITED", REPLY).await?;
    ensure!(invited["username"] == "1002", "{invited}");
    join(&mut stranger, &stranger_session, &call_id, "p", "FULL").await?;
    let announced = ws.recv_type("ROOM_MEMBER_JOINED", REPLY).await?;
    ensure!(announced["member"]["username"] == "1002", "{announced}");

    hang_up(&mut ws, &session_id, &call_id).await?;
    stranger.close().await?;
    ws.close().await?;
    rig.gateway.wait_all_released(REPLY)?;
    Ok(())
}

#[tokio::test]
async fn a_conference_dials_out_to_two_phones_and_closing_it_ends_their_calls() -> anyhow::Result<()>
{
    // Far from the others: a 20 ms Goertzel block's bins are 50 Hz wide.
    const SECOND_HZ: f64 = 1800.0;
    let rig = Rig::start()?;
    let first = rig.phone("2000", CALLEE_HZ)?;
    let second = rig.phone("load1", SECOND_HZ)?;
    let (mut ws, session_id) = rig.session("1001").await?;
    let room_id = create_room(&mut ws, &session_id).await?;
    let me = RtpPeer::bind(Codec::Pcmu).await?;
    let my_point = rtp_point(&mut ws, &session_id, "me", &me).await?;
    join(&mut ws, &session_id, &room_id, "me", "FULL").await?;
    for phone in ["2000", "load1"] {
        ws.send_json(&json!({"type": "START_CALL", "sessionId": session_id, "roomId": room_id, "bUri": phone}))
            .await?;
    }
    // The calls' progress interleaves: their callIds come with CALL_STARTING.
    let mut calls = Vec::new();
    let mut started = 0;
    while started < 2 {
        let message = ws.recv_json(REPLY).await?;
        match message["type"].as_str() {
            Some("CALL_STARTING") => {
                let call_id = message["callId"].as_str().context("callId")?.to_string();
                if !calls.contains(&call_id) {
                    calls.push(call_id);
                }
            }
            Some("CALL_STARTED") => started += 1,
            _ => anyhow::bail!("unexpected {message}"),
        }
    }
    first.wait_call_established(REPLY)?;
    second.wait_call_established(REPLY)?;
    let (my_heard, my_packets) = me.exchange_packets(my_point, CALLER_HZ, 4.0, 0).await?;
    hears(
        "the conference's owner",
        &my_heard,
        8000,
        &[CALLEE_HZ, SECOND_HZ],
        &[CALLER_HZ],
    )?;
    check_stream("the conference's owner", &my_packets)?;

    ws.send_json(&json!({"type": "CLOSE_ROOM", "sessionId": session_id, "roomId": room_id}))
        .await?;
    // The room's end ends the calls placed into it and puts the owner's point out.
    let mut finished = Vec::new();
    let (mut closed, mut left) = (false, false);
    while finished.len() < 2 || !closed || !left {
        let message = ws.recv_json(REPLY).await?;
        match message["type"].as_str() {
            Some("CALL_FINISHED") => {
                finished.push(message["callId"].as_str().context("callId")?.to_string())
            }
            Some("ROOM_CLOSED") => closed = true,
            Some("ROOM_LEFT") => {
                ensure!(
                    message["reason"] == "ROOM_ENDED" && message["pointId"] == "me",
                    "{message}"
                );
                left = true;
            }
            _ => anyhow::bail!("unexpected {message}"),
        }
    }
    finished.sort();
    calls.sort();
    ensure!(finished == calls, "{finished:?} finished of {calls:?}");
    first.wait_call_closed(REPLY)?;
    second.wait_call_closed(REPLY)?;
    let (rate, first_heard) = read_wav(&first.wait_heard_recording_finished(REPLY)?)?;
    hears(
        "the first phone",
        &first_heard,
        rate,
        &[CALLER_HZ, SECOND_HZ],
        &[CALLEE_HZ],
    )?;
    let (rate, second_heard) = read_wav(&second.wait_heard_recording_finished(REPLY)?)?;
    hears(
        "the second phone",
        &second_heard,
        rate,
        &[CALLER_HZ, CALLEE_HZ],
        &[SECOND_HZ],
    )?;
    ws.close().await?;
    rig.gateway.wait_all_released(REPLY)?;
    Ok(())
}

#[tokio::test]
async fn webrtc_and_rtmp_points_are_members_too() -> anyhow::Result<()> {
    let rig = Rig::start()?;
    let PhoneCall {
        callee: _callee,
        mut ws,
        session_id,
        call_id,
        point: caller_point,
        caller,
    } = call_to_phone(&rig).await?;
    let (mut ws2, session2) = rig.session("1001").await?;

    // A browser-like client (str0m), answering the gateway's WebRTC offer.
    let offer = create_point(
        &mut ws2,
        &session2,
        "browser",
        json!({"mediaTransport": ["SRTP"], "audioCodecs": ["PCMU/8000"]}),
    )
    .await?;
    let (browser, answer) = WebRtcPeer::answer(&offer, false).await?;
    ws2.send_json(
        &json!({"type": "SDP_ANSWER", "sessionId": session2, "pointId": "browser", "sdp": answer}),
    )
    .await?;
    join(&mut ws2, &session2, &call_id, "browser", "FULL").await?;

    // An RTMP encoder (ffmpeg): publishes a tone, and a player records what it is sent.
    let flash = create_point(
        &mut ws2,
        &session2,
        "encoder",
        json!({"mediaTransport": ["RTMP"], "audioCodecs": ["PCMU/8000"]}),
    )
    .await?;
    let flash = FlashOffer::parse("encoder", &flash)?;
    join(&mut ws2, &session2, &call_id, "encoder", "FULL").await?;
    let publisher = Publisher::start(
        &flash.url("rtmp", &flash.publish)?,
        FlvAudio::Speex,
        AudioSource::Tone {
            hz: MEMBER_HZ,
            seconds: 8.0,
        },
    )?;
    publisher.wait_publishing(REPLY)?;
    // Everyone speaks once the browser is connected.
    let mut connection = browser.connection();
    let browser_running = tokio::spawn(browser.run(Duration::from_secs(8), Some(THIRD_HZ)));
    tokio::time::timeout(REPLY, connection.wait_for(|up| *up))
        .await
        .context("the WebRTC point did not connect")??;
    let dir = tempfile::tempdir()?;
    let played = dir.path().join("played.wav");
    let player = Player::start(&flash.url("rtmp", &flash.play)?, &played, 3.0)?;
    player.wait_receiving(REPLY)?;
    let caller_heard = caller.exchange(caller_point, CALLER_HZ, 4.0, 0).await;
    let browser_report = browser_running.await?;
    let browser_report = browser_report?;
    ensure!(browser_report.connected, "the WebRTC point never connected");
    ensure!(player.wait_exit(REPLY)?.success(), "{}", player.log_text());
    hears(
        "the caller",
        &caller_heard?,
        8000,
        &[CALLEE_HZ, MEMBER_HZ, THIRD_HZ],
        &[CALLER_HZ],
    )?;
    hears(
        "the WebRTC point",
        &browser_report.heard,
        8000,
        &[CALLER_HZ, CALLEE_HZ, MEMBER_HZ],
        &[THIRD_HZ],
    )?;
    let (rate, rtmp_heard) = read_wav(&played)?;
    hears(
        "the RTMP player",
        &rtmp_heard,
        rate,
        &[CALLER_HZ, CALLEE_HZ, THIRD_HZ],
        &[MEMBER_HZ],
    )?;
    publisher.stop()?;
    hang_up(&mut ws, &session_id, &call_id).await?;
    ws2.close().await?;
    ws.close().await?;
    rig.gateway.wait_all_released(REPLY)?;
    Ok(())
}

#[tokio::test]
async fn an_incoming_call_is_accepted_into_a_conference() -> anyhow::Result<()> {
    let rig = Rig::start()?;
    let caller = rig.phone("2000", CALLEE_HZ)?;
    let (mut ws, session_id) = rig.session("1001").await?;
    let room_id = create_room(&mut ws, &session_id).await?;
    let me = RtpPeer::bind(Codec::Pcmu).await?;
    let my_point = rtp_point(&mut ws, &session_id, "me", &me).await?;
    join(&mut ws, &session_id, &room_id, "me", "FULL").await?;

    caller.dial(&format!("sip:1001@{}", rig.kamailio.sip_addr()))?;
    let incoming = ws.recv_type("INCOMING_CALL", REPLY).await?;
    let call_id = incoming["callId"].as_str().context("callId")?.to_string();
    ws.send_json(&json!({"type": "ACCEPT_CALL", "sessionId": session_id, "callId": call_id, "roomId": room_id}))
        .await?;
    ws.recv_type("CALL_STARTED", REPLY).await?;
    caller.wait_call_established(REPLY)?;
    let heard = me.exchange(my_point, CALLER_HZ, 3.0, 0).await?;
    hears(
        "the conference's owner",
        &heard,
        8000,
        &[CALLEE_HZ],
        &[CALLER_HZ],
    )?;
    hang_up(&mut ws, &session_id, &call_id).await?;
    caller.wait_call_closed(REPLY)?;
    let (rate, caller_heard) = read_wav(&caller.wait_heard_recording_finished(REPLY)?)?;
    hears(
        "the caller",
        &caller_heard,
        rate,
        &[CALLER_HZ],
        &[CALLEE_HZ],
    )?;
    ws.close().await?;
    rig.gateway.wait_all_released(REPLY)?;
    Ok(())
}

#[tokio::test]
async fn a_recording_that_reaches_its_limit_stops_and_the_call_goes_on() -> anyhow::Result<()> {
    // 0.5 s of 16 kHz mono and the header.
    let rig = Rig::start_with("max_bytes = 16044\n")?;
    let PhoneCall {
        callee: _callee,
        mut ws,
        session_id,
        call_id,
        point: caller_point,
        caller,
    } = call_to_phone(&rig).await?;
    ws.send_json(&json!({"type": "START_RECORDING", "sessionId": session_id, "roomId": call_id}))
        .await?;
    ws.recv_type("RECORDING_STARTED", REPLY).await?;
    let stopped = ws.recv_type("RECORDING_STOPPED", REPLY).await?;
    ensure!(stopped["reason"] == "SIZE_LIMIT", "{stopped}");
    let bytes = stopped["bytes"].as_u64().context("bytes")?;
    ensure!((44..=16044).contains(&bytes), "{bytes} bytes");
    let (_, recorded) = read_wav(&recording_path(&rig, &stopped)?)?;
    ensure!(
        recorded.len() as u64 * 2 + 44 == bytes,
        "a file that says what it holds"
    );
    // The call is untouched.
    let heard = caller.exchange(caller_point, CALLER_HZ, 2.0, 0).await?;
    hears("the caller", &heard, 8000, &[CALLEE_HZ], &[CALLER_HZ])?;
    hang_up(&mut ws, &session_id, &call_id).await?;
    ws.close().await?;
    rig.gateway.wait_all_released(REPLY)?;
    Ok(())
}

/// `dialtone_media_loop_rooms` by loop, in loop order.
fn media_loop_rooms(metrics: &str) -> Vec<i64> {
    let mut rooms: Vec<(usize, i64)> = metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("dialtone_media_loop_rooms{media_loop=\"")?;
            let (index, value) = rest.split_once("\"} ")?;
            Some((index.parse().ok()?, value.trim().parse().ok()?))
        })
        .collect();
    rooms.sort_unstable();
    rooms.into_iter().map(|(_, count)| count).collect()
}

/// Two plain RTP members of a conference room, one on this host's loopback and one on a
/// neighbouring network (a second namespace behind a veth pair, inside the test's private
/// one): the room relays between them and hands the relay to the kernel's fast path, which
/// must carry both directions as the gateway would: out through the veth by the neighbour
/// table, and in from it to a loopback address by way of lo (a loopback destination arriving
/// on any other interface is a martian the stack would drop).
#[tokio::test]
async fn the_kernel_relays_between_loopback_and_a_neighbouring_network() -> anyhow::Result<()> {
    if !netns::in_private_netns("the_kernel_relays_between_loopback_and_a_neighbouring_network") {
        return Ok(());
    }
    let neighbour = Neighbour::create(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2))?;
    // Media ports bind the SIP address: here the one on the veth, which the loopback peer
    // reaches too (a local address). Open sessions there: the network is the test's own.
    let gateway = Gateway::start(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[sip]\nlisten = \"{}:0\"\n\
         [sessions]\nallow_open_public = true\n",
        neighbour.our_address
    ))?;
    ensure!(
        gateway.count_log("kernel fast path on") == 1 && gateway.count_log("veth-near") == 1,
        "the kernel fast path is not on the veth (run the suite as root on Linux >= 6.6)"
    );
    let (mut ws, session_id) = WsClient::start_session(&gateway.ws_url(), "alice", "x").await?;
    let room_id = create_room(&mut ws, &session_id).await?;
    let near = RtpPeer::bind(Codec::Pcmu).await?.with_ptime(30);
    let far = RtpPeer::from_std(neighbour.udp_socket()?, Codec::Pcmu)?.with_ptime(30);
    let near_point = rtp_point(&mut ws, &session_id, "near", &near).await?;
    join(&mut ws, &session_id, &room_id, "near", "FULL").await?;
    let far_point = rtp_point(&mut ws, &session_id, "far", &far).await?;
    join(&mut ws, &session_id, &room_id, "far", "FULL").await?;

    let outward = ScriptedStream {
        packets: 200,
        ..ScriptedStream::pcmu_ptime_30(0x0011_2233, 40_000, 1_000)
    };
    let inward = ScriptedStream {
        packets: 200,
        ..ScriptedStream::pcmu_ptime_30(0x0044_5566, 65_500, 9_000)
    };
    let (heard_near, heard_far) = tokio::try_join!(
        near.play_and_record(near_point, &outward, inward.sent_order().len()),
        far.play_and_record(far_point, &inward, outward.sent_order().len()),
    )?;
    let outward_report = RelayReport::check(&outward, &heard_far);
    let inward_report = RelayReport::check(&inward, &heard_near);
    ensure!(
        outward_report.is_faithful() && inward_report.is_faithful(),
        "loopback → neighbour:\n{outward_report}neighbour → loopback:\n{inward_report}"
    );
    // Most of each stream went by the kernel (the first 50 packets or so by the gateway).
    let carried = 2.0 * 100.0;
    dialtone_tests::wait::wait_until(REPLY, || {
        Ok(gateway.metric("dialtone_kernel_forwarded_packets_total")? >= carried)
    })
    .with_context(|| {
        let forwarded = gateway.metric("dialtone_kernel_forwarded_packets_total");
        format!("the kernel forwarded fewer than {carried} packets: {forwarded:?}")
    })?;
    ws.close().await?;
    gateway.wait_all_released(REPLY)
}
