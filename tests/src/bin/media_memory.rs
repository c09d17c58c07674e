//! Memory per bridged call: N clients call the built-in `echo` line with a
//! Speex wideband RTP point (the gateway transcodes Speex ↔ Opus toward the
//! line), all talking at once; the gateway's resident memory is read from
//! /proc before and during the calls.
//!
//! ```sh
//! cargo build --release -p dialtone-gateway
//! RUST_LOG=warn,dialtone_gateway=info DIALTONE_BIN=$PWD/target/release/dialtone \
//!     cargo run --release -p dialtone-tests --bin media_memory -- 50        # Speex-WB ↔ Opus
//!     cargo run --release -p dialtone-tests --bin media_memory -- 50 pcmu   # pass-through
//!     cargo run --release -p dialtone-tests --bin media_memory -- 50 webrtc # DTLS-SRTP PCMU
//! ```

use std::time::Duration;

use anyhow::Context;
use dialtone_codecs::Codec;
use dialtone_tests::gateway::{Gateway, LOOPBACK};
use dialtone_tests::rtp_peer::{start_rtp_call, RtpPeer};
use dialtone_tests::webrtc_peer::WebRtcPeer;
use dialtone_tests::ws_client::WsClient;
use serde_json::json;

fn resident_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let calls: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(50);
    // `pcmu`: both sides PCMU, forwarded without transcoding; `webrtc`: the
    // client is a WebRTC peer on PCMU (SRTP, forwarded).
    let mode = std::env::args().nth(2).unwrap_or_default();
    let webrtc = mode == "webrtc";
    let codec = match mode.as_str() {
        "pcmu" | "webrtc" => Codec::Pcmu,
        _ => Codec::SpeexWide,
    };
    let gateway = Gateway::start(&format!(
        "{LOOPBACK}[media]\nrtp_port_min = 40000\nrtp_port_max = 49999\n"
    ))?;
    let before = resident_kib(gateway.pid())?;
    let mut running = Vec::new();
    for _ in 0..calls {
        let url = gateway.ws_url();
        running.push(tokio::spawn(async move {
            let (mut ws, session_id) = WsClient::start_session(&url, "m", "").await?;
            let (call_id, heard) = if webrtc {
                webrtc_echo(&mut ws, &session_id).await?
            } else {
                let peer = RtpPeer::bind(codec).await?;
                let (call_id, point) = start_rtp_call(&mut ws, &session_id, "echo", &peer).await?;
                (call_id, peer.exchange(point, 1000.0, 6.0, 0).await?)
            };
            ws.send_json(
                &json!({"type": "HANGUP_CALL", "sessionId": session_id, "callId": call_id}),
            )
            .await?;
            anyhow::Ok(heard.len())
        }));
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = resident_kib(gateway.pid())?;
    let status = gateway.status()?;
    let mut heard_calls = 0;
    for call in running {
        if call.await?? > 0 {
            heard_calls += 1;
        }
    }
    println!(
        "{calls} bridged calls ({}{codec} client, plus the echo line's side): \
         RSS {before} KiB before, {during} KiB during: {:.0} KiB per call; \
         {heard_calls} calls heard their echo; status during: calls {} mediaPorts {}",
        if webrtc { "WebRTC " } else { "" },
        (during.saturating_sub(before)) as f64 / calls as f64,
        status["calls"],
        status["mediaPorts"]
    );
    Ok(())
}

/// A call to the echo line from a WebRTC peer talking for 6 s; its callId
/// and what it heard.
async fn webrtc_echo(ws: &mut WsClient, session_id: &str) -> anyhow::Result<(String, Vec<i16>)> {
    ws.send_json(&json!({
        "type": "START_CALL", "sessionId": session_id, "bUri": "echo",
        "cc": {"audioCodecs": ["PCMU/8000"], "mediaTransport": ["SRTP"]},
    }))
    .await?;
    let offer = ws
        .recv_type_skipping("SDP_OFFER", &["CALL_STARTING"], Duration::from_secs(30))
        .await?;
    let call_id = offer["callId"].as_str().context("callId")?.to_string();
    let (peer, answer) = WebRtcPeer::answer(offer["sdp"].as_str().context("sdp")?, false).await?;
    ws.send_json(
        &json!({"type": "SDP_ANSWER", "sessionId": session_id, "callId": call_id, "sdp": answer}),
    )
    .await?;
    let report = peer.run(Duration::from_secs(6), Some(1000.0)).await?;
    Ok((call_id, report.heard))
}
