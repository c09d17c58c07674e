//! The client's WebRTC point against a WebRTC client that needs no browser
//! (str0m as a full ICE agent, `webrtc_peer`): SDP_OFFER / SDP_ANSWER,
//! ICE, DTLS-SRTP and audio through the built-in echo line; and clients
//! that never connect, which must fail the call with a reason that names
//! the step, and leave nothing behind.

use std::time::Duration;

use anyhow::{ensure, Context};
use dialtone_tests::gateway::Gateway;
use dialtone_tests::rtp_peer::dominant_hz;
use dialtone_tests::webrtc_peer::WebRtcPeer;
use dialtone_tests::ws_client::WsClient;
use serde_json::json;

const REPLY: Duration = Duration::from_secs(10);
const PROGRESS: &[&str] = &["CALL_STARTING"];
/// The gateway's `webrtc.connect_timeout_ms` in the failure tests.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(2000);
/// Its `webrtc.consent_timeout_ms`.
const CONSENT_TIMEOUT: Duration = Duration::from_millis(3000);

fn gateway() -> anyhow::Result<Gateway> {
    Gateway::start(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[sip]\nlisten = \"127.0.0.1:0\"\n\
         [webrtc]\nconnect_timeout_ms = {}\nconsent_timeout_ms = {}\n",
        CONNECT_TIMEOUT.as_millis(),
        CONSENT_TIMEOUT.as_millis()
    ))
}

fn assert_nothing_held(gateway: &Gateway) -> anyhow::Result<()> {
    gateway.wait_released(
        &["calls", "sipDialogs", "mediaPorts", "tasks"],
        Duration::from_secs(40),
    )
}

/// Calls `line` as a WebRTC client; returns the client, the session, the
/// callId and the gateway's SDP offer for the client's point.
async fn webrtc_call(
    gateway: &Gateway,
    line: &str,
) -> anyhow::Result<(WsClient, String, String, String)> {
    let (mut ws, session_id) = WsClient::start_session(&gateway.ws_url(), "browser", "").await?;
    ws.send_json(&json!({
        "type": "START_CALL", "sessionId": session_id, "bUri": line,
        "cc": {"audioCodecs": ["PCMU/8000"], "mediaTransport": ["SRTP"]},
    }))
    .await?;
    let offer = ws.recv_type_skipping("SDP_OFFER", PROGRESS, REPLY).await?;
    let call_id = offer["callId"].as_str().context("callId")?.to_string();
    let sdp = offer["sdp"].as_str().context("sdp")?.to_string();
    Ok((ws, session_id, call_id, sdp))
}

async fn answer(
    ws: &mut WsClient,
    session_id: &str,
    call_id: &str,
    sdp: &str,
) -> anyhow::Result<()> {
    ws.send_json(
        &json!({"type": "SDP_ANSWER", "sessionId": session_id, "callId": call_id, "sdp": sdp}),
    )
    .await
}

#[tokio::test]
async fn gateway_offer_is_ice_lite_dtls_srtp_with_bundle_and_rtcp_mux() -> anyhow::Result<()> {
    let gateway = gateway()?;
    let (_ws, _, _, sdp) = webrtc_call(&gateway, "echo").await?;
    for needed in [
        "a=ice-lite",
        "a=fingerprint:sha-256 ",
        "a=setup:actpass",
        "a=rtcp-mux",
        "a=group:BUNDLE",
        "UDP/TLS/RTP/SAVPF",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:111 opus/48000/2",
        "telephone-event/8000",
        "typ host",
        "127.0.0.1",
    ] {
        ensure!(sdp.contains(needed), "offer lacks {needed:?}:\n{sdp}");
    }
    // The client's first codec comes first.
    let media_line = sdp
        .lines()
        .find(|l| l.starts_with("m=audio"))
        .context("m=audio")?;
    ensure!(
        media_line.contains("SAVPF 0 "),
        "PCMU not first: {media_line}"
    );
    Ok(())
}

#[tokio::test]
async fn echo_line_returns_the_tone_over_dtls_srtp() -> anyhow::Result<()> {
    let gateway = gateway()?;
    let (mut ws, session_id, call_id, offer) = webrtc_call(&gateway, "echo").await?;
    let (peer, answer_sdp) = WebRtcPeer::answer(&offer, false).await?;
    answer(&mut ws, &session_id, &call_id, &answer_sdp).await?;
    ws.recv_type_skipping("CALL_STARTED", PROGRESS, REPLY)
        .await?;
    let report = peer.run(Duration::from_secs(3), Some(1000.0)).await?;
    ensure!(report.connected, "ICE / DTLS did not complete");
    ensure!(
        report.heard.len() > 8000,
        "heard only {} samples",
        report.heard.len()
    );
    let heard = dominant_hz(&report.heard, 8000)?;
    ensure!(
        (heard - 1000.0).abs() < 15.0,
        "sent 1000 Hz, heard {heard} Hz"
    );
    hang_up_and_leave(ws, &session_id, &call_id).await?;
    assert_nothing_held(&gateway)
}

#[tokio::test]
async fn digits_from_the_far_end_reach_the_webrtc_point_as_events() -> anyhow::Result<()> {
    let gateway = gateway()?;
    // The digits line sends back, as RFC 4733, each digit it receives.
    let (mut ws, session_id, call_id, offer) = webrtc_call(&gateway, "digits").await?;
    let (peer, answer_sdp) = WebRtcPeer::answer(&offer, false).await?;
    ensure!(answer_sdp.contains("telephone-event/8000"), "{answer_sdp}");
    answer(&mut ws, &session_id, &call_id, &answer_sdp).await?;
    ws.recv_type_skipping("CALL_STARTED", PROGRESS, REPLY)
        .await?;
    let running = tokio::spawn(peer.run(Duration::from_secs(4), Some(440.0)));
    ws.send_json(&json!({"type": "SEND_DTMF_SIGNAL", "sessionId": session_id, "callId": call_id, "dtmfString": "159#"}))
        .await?;
    let report = running.await??;
    ensure!(report.connected, "ICE / DTLS did not complete");
    ensure!(
        report.digits == ['1', '5', '9', '#'],
        "the WebRTC client got {:?}",
        report.digits
    );
    ws.send_json(&json!({"type": "HANGUP_CALL", "sessionId": session_id, "callId": call_id}))
        .await?;
    ws.close().await?;
    assert_nothing_held(&gateway)
}

#[tokio::test]
async fn client_offer_is_answered_and_carries_audio() -> anyhow::Result<()> {
    let gateway = gateway()?;
    let (mut ws, session_id, call_id, _ours) = webrtc_call(&gateway, "echo").await?;
    let (offering, offer) = WebRtcPeer::offer().await?;
    ws.send_json(
        &json!({"type": "SDP_OFFER", "sessionId": session_id, "callId": call_id, "sdp": offer}),
    )
    .await?;
    let answer = ws
        .recv_type_skipping("SDP_ANSWER", &["CALL_STARTING", "CALL_STARTED"], REPLY)
        .await?;
    ensure!(answer["callId"] == call_id.as_str(), "{answer}");
    let peer = offering.accept_answer(answer["sdp"].as_str().context("sdp")?)?;
    let report = peer.run(Duration::from_secs(3), Some(1000.0)).await?;
    ensure!(report.connected, "ICE / DTLS did not complete");
    let heard = dominant_hz(&report.heard, 8000)?;
    ensure!(
        (heard - 1000.0).abs() < 15.0,
        "sent 1000 Hz, heard {heard} Hz"
    );
    // The point is connected: another offer is refused.
    let (_, again) = WebRtcPeer::offer().await?;
    ws.send_json(
        &json!({"type": "SDP_OFFER", "sessionId": session_id, "callId": call_id, "sdp": again}),
    )
    .await?;
    let error = ws
        .recv_type_skipping("ERROR", &["CALL_STARTED"], REPLY)
        .await?;
    ensure!(
        error["code"] == "INVALID_VALUE" && error["field"] == "sdp",
        "{error}"
    );
    hang_up_and_leave(ws, &session_id, &call_id).await?;
    assert_nothing_held(&gateway)
}

#[tokio::test]
async fn client_that_goes_silent_after_connecting_fails_on_consent() -> anyhow::Result<()> {
    let gateway = gateway()?;
    let (mut ws, session_id, call_id, offer) = webrtc_call(&gateway, "echo").await?;
    let (peer, answer_sdp) = WebRtcPeer::answer(&offer, false).await?;
    answer(&mut ws, &session_id, &call_id, &answer_sdp).await?;
    // Connects, talks for a second, then vanishes (its socket closes).
    let report = peer.run(Duration::from_secs(1), Some(1000.0)).await?;
    ensure!(report.connected, "ICE / DTLS did not complete");
    let failed = ws
        .recv_type_skipping(
            "CALL_FAILED",
            &["CALL_STARTING", "CALL_STARTED"],
            CONSENT_TIMEOUT + REPLY,
        )
        .await?;
    ensure!(failed["reason"] == "MEDIA_FAILED", "{failed}");
    let why = failed["sipReason"].as_str().unwrap_or_default();
    ensure!(
        why.contains("consent"),
        "reason should name consent: {failed}"
    );
    ws.close().await?;
    assert_nothing_held(&gateway)
}

/// HANGUP_CALL, CALL_FINISHED, and the client leaves.
async fn hang_up_and_leave(
    mut ws: WsClient,
    session_id: &str,
    call_id: &str,
) -> anyhow::Result<()> {
    ws.send_json(&json!({"type": "HANGUP_CALL", "sessionId": session_id, "callId": call_id}))
        .await?;
    // The call's own progress may still be on its way.
    ws.recv_type_skipping("CALL_FINISHED", &["CALL_STARTING", "CALL_STARTED"], REPLY)
        .await?;
    ws.close().await
}

/// Waits for the call's CALL_FAILED; checks it is MEDIA_FAILED naming `step`.
async fn expect_media_failed(ws: &mut WsClient, call_id: &str, step: &str) -> anyhow::Result<()> {
    // The timeout, then a BYE to the echo line and its answer.
    let failed = ws
        .recv_type_skipping(
            "CALL_FAILED",
            &["CALL_STARTING", "CALL_STARTED"],
            CONNECT_TIMEOUT + REPLY,
        )
        .await?;
    ensure!(failed["callId"] == call_id, "{failed}");
    ensure!(failed["reason"] == "MEDIA_FAILED", "{failed}");
    let why = failed["sipReason"].as_str().unwrap_or_default();
    ensure!(why.starts_with(step), "reason should name {step}: {failed}");
    Ok(())
}

#[tokio::test]
async fn client_that_never_completes_dtls_gets_media_failed_and_nothing_is_left(
) -> anyhow::Result<()> {
    let gateway = gateway()?;
    let (mut ws, session_id, call_id, offer) = webrtc_call(&gateway, "echo").await?;
    let (peer, answer_sdp) = WebRtcPeer::answer(&offer, true).await?;
    answer(&mut ws, &session_id, &call_id, &answer_sdp).await?;
    let running = tokio::spawn(peer.run(CONNECT_TIMEOUT + Duration::from_secs(2), None));
    expect_media_failed(&mut ws, &call_id, "DTLS").await?;
    let report = running.await??;
    ensure!(
        !report.connected,
        "the peer connected although it dropped DTLS"
    );
    ws.close().await?;
    assert_nothing_held(&gateway)
}

#[tokio::test]
async fn client_that_sends_nothing_gets_media_failed_naming_ice() -> anyhow::Result<()> {
    let gateway = gateway()?;
    let (mut ws, session_id, call_id, offer) = webrtc_call(&gateway, "echo").await?;
    let (_silent_peer, answer_sdp) = WebRtcPeer::answer(&offer, false).await?;
    answer(&mut ws, &session_id, &call_id, &answer_sdp).await?;
    expect_media_failed(&mut ws, &call_id, "ICE").await?;
    ws.close().await?;
    assert_nothing_held(&gateway)
}

#[tokio::test]
async fn unusable_answer_is_refused_and_a_fresh_offer_follows() -> anyhow::Result<()> {
    let gateway = gateway()?;
    let (mut ws, session_id, call_id, _) = webrtc_call(&gateway, "echo").await?;
    answer(&mut ws, &session_id, &call_id, "v=0\r\nthis is no SDP\r\n").await?;
    let error = ws
        .recv_type_skipping("ERROR", &["CALL_STARTING", "CALL_STARTED"], REPLY)
        .await?;
    ensure!(
        error["code"] == "INVALID_VALUE" && error["field"] == "sdp",
        "{error}"
    );
    let offer = ws
        .recv_type_skipping("SDP_OFFER", &["CALL_STARTED"], REPLY)
        .await?;
    ensure!(offer["callId"] == call_id.as_str(), "{offer}");
    // The fresh offer works.
    let (peer, answer_sdp) =
        WebRtcPeer::answer(offer["sdp"].as_str().context("sdp")?, false).await?;
    answer(&mut ws, &session_id, &call_id, &answer_sdp).await?;
    let report = peer.run(Duration::from_secs(2), Some(1000.0)).await?;
    ensure!(report.connected, "the second offer did not connect");
    hang_up_and_leave(ws, &session_id, &call_id).await?;
    assert_nothing_held(&gateway)
}
