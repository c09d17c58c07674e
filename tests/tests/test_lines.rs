//! The built-in test lines, called from a gateway started with no
//! configuration file at all (only its ports moved through the
//! environment): the whole path, WebSocket → SIP → RTP, answered by the
//! gateway itself.

use std::time::Duration;

use anyhow::ensure;
use dialtone_codecs::Codec;
use dialtone_tests::gateway::Gateway;
use dialtone_tests::rtp_peer::{dominant_hz, start_rtp_call, RtpPeer};
use dialtone_tests::ws_client::WsClient;
use serde_json::json;

const REPLY: Duration = Duration::from_secs(10);

fn unconfigured_gateway() -> anyhow::Result<Gateway> {
    Gateway::start_with_env(
        None,
        &[
            ("DIALTONE_HTTP_LISTEN", "127.0.0.1:0"),
            ("DIALTONE_SIP_LISTEN", "127.0.0.1:0"),
        ],
    )
}

/// Both ends of every call (the client's and the test line's) are gone.
fn assert_nothing_held(gateway: &Gateway) -> anyhow::Result<()> {
    gateway.wait_released(
        &["calls", "sipDialogs", "mediaPorts", "tasks"],
        Duration::from_secs(40),
    )
}

async fn session(gateway: &Gateway) -> anyhow::Result<(WsClient, String)> {
    WsClient::start_session(&gateway.ws_url(), "newcomer", "").await
}

/// Calls `line` with a client RTP point sending `hz`; returns what it heard.
async fn heard_on(gateway: &Gateway, line: &str, codec: Codec, hz: f64) -> anyhow::Result<f64> {
    let (mut ws, session_id) = session(gateway).await?;
    let peer = RtpPeer::bind(codec).await?;
    let (call_id, point) = start_rtp_call(&mut ws, &session_id, line, &peer).await?;
    let heard = peer.exchange(point, hz, 2.0, 0).await?;
    ws.send_json(&json!({"type": "HANGUP_CALL", "sessionId": session_id, "callId": call_id}))
        .await?;
    ws.recv_type("CALL_FINISHED", REPLY).await?;
    dominant_hz(&heard, codec.sample_rate().hz())
}

#[tokio::test]
async fn tone_line_plays_1_khz() -> anyhow::Result<()> {
    let gateway = unconfigured_gateway()?;
    let heard = heard_on(&gateway, "tone", Codec::Pcmu, 440.0).await?;
    ensure!((heard - 1000.0).abs() < 15.0, "tone line: heard {heard} Hz");
    assert_nothing_held(&gateway)
}

#[tokio::test]
async fn echo_line_returns_what_it_hears_over_pcmu_and_g722() -> anyhow::Result<()> {
    let gateway = unconfigured_gateway()?;
    for (codec, hz) in [(Codec::Pcmu, 600.0), (Codec::G722, 750.0)] {
        let heard = heard_on(&gateway, "echo", codec, hz).await?;
        ensure!(
            (heard - hz).abs() < 15.0,
            "echo line over {codec}: sent {hz} Hz, heard {heard} Hz"
        );
    }
    Ok(())
}

#[tokio::test]
async fn digits_line_sends_each_digit_back() -> anyhow::Result<()> {
    let gateway = unconfigured_gateway()?;
    let (mut ws, session_id) = session(&gateway).await?;
    ws.send_json(&json!({"type": "START_CALL", "sessionId": session_id, "bUri": "digits"}))
        .await?;
    let call_id = ws.recv_type("CALL_STARTING", REPLY).await?["callId"].clone();
    loop {
        let message = ws.recv_json(REPLY).await?;
        if message["type"] == "CALL_STARTED" {
            break;
        }
        ensure!(message["type"] == "CALL_STARTING", "{message}");
    }
    ws.send_json(&json!({"type": "SEND_DTMF_SIGNAL", "sessionId": session_id, "callId": call_id, "dtmfString": "19#"}))
        .await?;
    for expected in ["1", "9", "#"] {
        let digit = ws.recv_type("DTMF_RECEIVED", REPLY).await?;
        ensure!(
            digit["digit"] == expected && digit["callId"] == call_id,
            "{digit}"
        );
    }
    ws.send_json(&json!({"type": "HANGUP_CALL", "sessionId": session_id, "callId": call_id}))
        .await?;
    ws.recv_type("CALL_FINISHED", REPLY).await?;
    ws.close().await?;
    assert_nothing_held(&gateway)
}
