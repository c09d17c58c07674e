//! Holding a call against SIPp far ends: the glare back-off (RFC 3261 section 14.1), and
//! music on hold (`calls.hold_music`): while the client holds a call with HOLD_CALL
//! (`sendonly`), the far end hears the configured recording instead of the client, in the
//! call's one RTP stream; after RESUME_CALL it hears the client again. The far end is a SIPp
//! callee taking the re-INVITEs whose media is a socket of the test.

use std::time::Duration;

use anyhow::{ensure, Context};
use dialtone_codecs::Codec;
use dialtone_tests::audio::tone_wav;
use dialtone_tests::gateway::{Gateway, LOOPBACK};
use dialtone_tests::rtp_peer::{dominant_hz, sdp_audio_addr, start_rtp_call, RtpPeer};
use dialtone_tests::rtp_stream::ReceivedRtp;
use dialtone_tests::sipp::{Sipp, SippOptions, UasScenario};
use dialtone_tests::ws_client::WsClient;
use serde_json::json;

const REPLY: Duration = Duration::from_secs(10);
const PEER: Duration = Duration::from_secs(10);
const MUSIC_HZ: f64 = 600.0;

fn hears(pcm: &[i16], hz: f64, when: &str) -> anyhow::Result<()> {
    let heard = dominant_hz(pcm, 8000).with_context(|| format!("{when}: nothing heard"))?;
    ensure!(
        (heard - hz).abs() < 15.0,
        "{when}: the far end heard {heard} Hz, not {hz} Hz"
    );
    Ok(())
}

/// Sequence numbers that step by one and timestamps by 160 (20 ms of PCMU) from packet to
/// packet: a stream a far end's jitter buffer plays without a gap.
fn steady(packets: &[ReceivedRtp], when: &str) -> anyhow::Result<()> {
    ensure!(
        packets.len() >= 60,
        "{when}: {} packets in 1.5 s",
        packets.len()
    );
    for pair in packets.windows(2) {
        ensure!(
            pair[1].sequence == pair[0].sequence.wrapping_add(1)
                && pair[1].timestamp == pair[0].timestamp.wrapping_add(160),
            "{when}: packet {:?} after {:?}",
            (pair[1].sequence, pair[1].timestamp),
            (pair[0].sequence, pair[0].timestamp)
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_held_far_end_hears_the_hold_music_then_the_client_again() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let music = dir.path().join("hold.wav");
    tone_wav(&music, MUSIC_HZ, 2.0, 8000)?;
    let far_end = RtpPeer::bind(Codec::Pcmu).await?;
    let sipp = Sipp::uas(
        UasScenario::AnswerTakeHoldAndResume,
        SippOptions {
            media_port: Some(far_end.local_addr()?.port()),
            ..Default::default()
        },
    )?;
    let gateway = Gateway::start(&format!(
        "{LOOPBACK}t1_ms = 100\n[calls]\nhold_music = {:?}\n",
        music.display().to_string()
    ))?;
    let client = RtpPeer::bind(Codec::Pcmu).await?;
    let (mut ws, session_id) = WsClient::start_session(&gateway.ws_url(), "alice", "x").await?;
    let b_uri = format!("sip:3000@{}", sipp.sip_addr());
    let (call_id, client_point) = start_rtp_call(&mut ws, &session_id, &b_uri, &client).await?;
    let invite = sipp.wait_for_message("INVITE sip:", PEER)?;
    let sip_point = sdp_audio_addr(invite.body()).context("the gateway's INVITE")?;
    let talk = || async {
        let (_, heard) = tokio::join!(
            client.exchange(client_point, 440.0, 1.5, 0),
            far_end.exchange_packets(sip_point, 1000.0, 1.5, 0),
        );
        heard
    };

    let (before, before_packets) = talk().await?;
    hears(&before, 440.0, "before the hold")?;

    ws.send_json(&json!({"type": "HOLD_CALL", "sessionId": session_id, "callId": call_id}))
        .await?;
    let held = ws.recv_type("CALL_HELD", REPLY).await?;
    ensure!(held["by"] == "LOCAL", "{held}");
    let (during, during_packets) = talk().await?;
    hears(&during, MUSIC_HZ, "on hold")?;
    steady(&during_packets[10..], "on hold")?;

    ws.send_json(&json!({"type": "RESUME_CALL", "sessionId": session_id, "callId": call_id}))
        .await?;
    ws.recv_type("CALL_RESUMED", REPLY).await?;
    let (after, after_packets) = talk().await?;
    hears(&after, 440.0, "after the resume")?;

    // One stream throughout, as the far end saw it in the SDP: music is not a new source.
    let ssrcs: std::collections::BTreeSet<u32> = [before_packets, during_packets, after_packets]
        .iter()
        .flatten()
        .map(|packet| packet.ssrc)
        .collect();
    ensure!(ssrcs.len() == 1, "the far end got SSRCs {ssrcs:x?}");

    ws.send_json(&json!({"type": "HANGUP_CALL", "sessionId": session_id, "callId": call_id}))
        .await?;
    ws.recv_type("CALL_FINISHED", REPLY).await?;
    sipp.wait_success(PEER)?;
    ws.close().await?;
    gateway.wait_all_released(REPLY)?;
    Ok(())
}

/// A hold music file the gateway cannot play stops it at start with the setting named.
#[tokio::test]
async fn a_hold_music_file_of_the_wrong_kind_is_refused_at_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let music = dir.path().join("hold.wav");
    tone_wav(&music, MUSIC_HZ, 1.0, 44100)?;
    let config = format!(
        "{LOOPBACK}[calls]\nhold_music = {:?}\n",
        music.display().to_string()
    );
    let (status, log) = Gateway::run_to_exit(&config, Duration::from_secs(10))?;
    ensure!(
        !status.success(),
        "the gateway started with a 44.1 kHz hold music"
    );
    ensure!(
        log.contains("calls.hold_music") && log.contains("8 kHz"),
        "the refusal does not say what to do:\n{log}"
    );
    Ok(())
}

/// A far end whose re-INVITE crossed ours answers ours 491: the gateway retries after the RFC
/// 3261 back-off (2.1 to 4 s for the Call-ID's owner) and the client gets CALL_HELD once the
/// retry is answered, no ERROR.
#[tokio::test]
async fn a_hold_refused_by_glare_is_retried_after_the_back_off() -> anyhow::Result<()> {
    let sipp = Sipp::uas(UasScenario::AnswerGlareThenTakeHold, SippOptions::default())?;
    let gateway = Gateway::start(&format!("{LOOPBACK}t1_ms = 100\n"))?;
    let client = RtpPeer::bind(Codec::Pcmu).await?;
    let (mut ws, session_id) = WsClient::start_session(&gateway.ws_url(), "alice", "x").await?;
    let b_uri = format!("sip:3000@{}", sipp.sip_addr());
    let (call_id, _) = start_rtp_call(&mut ws, &session_id, &b_uri, &client).await?;
    let asked = std::time::Instant::now();
    ws.send_json(&json!({"type": "HOLD_CALL", "sessionId": session_id, "callId": call_id}))
        .await?;
    let held = ws.recv_type("CALL_HELD", Duration::from_secs(15)).await?;
    let waited = asked.elapsed();
    ensure!(held["by"] == "LOCAL", "{held}");
    ensure!(
        waited >= Duration::from_millis(2100),
        "the retry came {waited:?} after the hold: no glare back-off"
    );
    let reinvites = sipp
        .messages()
        .into_iter()
        .filter(|message| !message.sent && message.is_request("INVITE"))
        .count();
    ensure!(
        reinvites == 3,
        "{reinvites} INVITEs reached the far end, not the call's and two re-INVITEs"
    );
    ws.send_json(&json!({"type": "HANGUP_CALL", "sessionId": session_id, "callId": call_id}))
        .await?;
    ws.recv_type("CALL_FINISHED", REPLY).await?;
    sipp.wait_success(PEER)?;
    ws.close().await?;
    gateway.wait_all_released(REPLY)?;
    Ok(())
}
