//! SDES-SRTP on the SIP leg against a real peer: baresip with its `srtp`
//! module and `mediaenc=srtp-mand` (it offers and accepts only RTP/SAVP
//! with a=crypto, and sends and takes only SRTP). Audio is checked by tone
//! both ways, in calls placed from a WebSocket client and from baresip;
//! under `srtp = "require"` a plain offer gets 488.

use std::time::Duration;

use anyhow::{ensure, Context};
use dialtone_codecs::Codec;
use dialtone_tests::baresip::{Baresip, BaresipAccount, BaresipOptions};
use dialtone_tests::gateway::{Gateway, LOOPBACK};
use dialtone_tests::kamailio::{Kamailio, KamailioOptions};
use dialtone_tests::rtp_peer::{
    sdp_audio_addr, srtp_call_tones_both_ways, start_rtp_call, RtpPeer,
};
use dialtone_tests::ws_client::WsClient;
use serde_json::json;

const REPLY: Duration = Duration::from_secs(10);

struct Line {
    kamailio: Kamailio,
    gateway: Gateway,
}

impl Line {
    fn start(srtp: &str) -> anyhow::Result<Line> {
        let kamailio = Kamailio::start(KamailioOptions::default())?;
        let gateway = Gateway::start(&format!(
            "{LOOPBACK}t1_ms = 100\n[registrar]\naddress = \"sip:127.0.0.1:{};transport=udp\"\n\
             [media]\nsrtp = \"{srtp}\"\n",
            kamailio.sip_port()
        ))?;
        Ok(Line { kamailio, gateway })
    }

    fn baresip(&self, user: &str, auto_answer: bool, srtp: bool) -> anyhow::Result<Baresip> {
        Baresip::start(BaresipOptions {
            account: Some(BaresipAccount::rig_user(user, self.kamailio.sip_addr())?),
            auto_answer,
            codecs: vec!["PCMU".to_string()],
            record: true,
            media_encryption: srtp.then(|| "srtp-mand".to_string()),
            ..Default::default()
        })
    }

    async fn session(&self) -> anyhow::Result<(WsClient, String)> {
        WsClient::start_session(&self.gateway.ws_url(), "1001", "secret1001").await
    }
}

/// baresip's log of the call: its srtp module names the suite it keyed
/// from our SDP, which it only does for RTP/SAVP with a crypto line.
fn baresip_keyed_srtp(baresip: &Baresip) -> anyhow::Result<String> {
    let log = std::fs::read_to_string(baresip.dir().join("baresip.log"))?;
    let keyed: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("srtp") || line.contains("SRTP"))
        .collect();
    ensure!(!keyed.is_empty(), "baresip logged nothing of SRTP:\n{log}");
    Ok(keyed.join("\n"))
}

#[tokio::test]
async fn call_to_baresip_with_mandatory_srtp_carries_audio_both_ways() -> anyhow::Result<()> {
    let line = Line::start("require")?;
    let callee = line.baresip("2000", true, true)?;
    let peer = RtpPeer::bind(Codec::Pcmu).await?;
    let (mut ws, session_id) = line.session().await?;
    let (call_id, point) = start_rtp_call(&mut ws, &session_id, "2000", &peer).await?;
    callee.wait_call_established(REPLY)?;
    // The INVITE baresip got (rsipstack logs what it sends, keys redacted):
    // RTP/SAVP with a line per suite, GCM included, which baresip never
    // offers itself.
    ensure!(
        line.gateway.count_log("RTP/SAVP 0 111 9 8 101") > 0,
        "no RTP/SAVP offer sent"
    );
    ensure!(
        line.gateway
            .count_log("a=crypto:3 AEAD_AES_128_GCM inline: <redacted>")
            > 0,
        "no crypto lines sent"
    );
    ensure!(line.gateway.count_log("SRTP packet rejected") <= 1);
    srtp_call_tones_both_ways(
        &line.gateway,
        &mut ws,
        &session_id,
        &call_id,
        point,
        &peer,
        &callee,
    )
    .await?;
    baresip_keyed_srtp(&callee)?;
    ws.close().await?;
    Ok(())
}

#[tokio::test]
async fn call_from_baresip_offering_srtp_is_answered_with_srtp() -> anyhow::Result<()> {
    // "offer": plain offers of ours, SRTP whenever the far end offers it.
    let line = Line::start("offer")?;
    let caller = line.baresip("1002", false, true)?;
    let (mut ws, session_id) = line.session().await?;
    caller.dial(&format!("sip:1001@{}", line.kamailio.sip_addr()))?;
    let incoming = ws.recv_type("INCOMING_CALL", REPLY).await?;
    let offer = incoming["sdp"].as_str().context("no sdp")?;
    ensure!(offer.contains("RTP/SAVP"), "baresip's offer: {offer}");
    let call_id = incoming["callId"]
        .as_str()
        .context("no callId")?
        .to_string();
    let peer = RtpPeer::bind(Codec::Pcmu).await?;
    ws.send_json(&json!({
        "type": "ACCEPT_CALL", "sessionId": session_id, "callId": call_id,
        "cc": {"audioCodecs": [peer.label()], "mediaTransport": ["RTP"]},
    }))
    .await?;
    let offer = ws.recv_type("SDP_OFFER", REPLY).await?;
    let point = sdp_audio_addr(offer["sdp"].as_str().context("no sdp")?)?;
    ws.send_json(&json!({
        "type": "SDP_ANSWER", "sessionId": session_id, "callId": call_id, "sdp": peer.answer_sdp()?,
    }))
    .await?;
    ws.recv_type_skipping("CALL_STARTED", &["CALL_STARTING"], REPLY)
        .await?;
    caller.wait_call_established(REPLY)?;
    srtp_call_tones_both_ways(
        &line.gateway,
        &mut ws,
        &session_id,
        &call_id,
        point,
        &peer,
        &caller,
    )
    .await?;
    baresip_keyed_srtp(&caller)?;
    ws.close().await?;
    Ok(())
}

#[tokio::test]
async fn plain_offer_is_refused_with_488_when_srtp_is_required() -> anyhow::Result<()> {
    let line = Line::start("require")?;
    let caller = line.baresip("1002", false, false)?;
    let (mut ws, session_id) = line.session().await?;
    caller.dial(&format!("sip:1001@{}", line.kamailio.sip_addr()))?;
    let incoming = ws.recv_type("INCOMING_CALL", REPLY).await?;
    let call_id = incoming["callId"].as_str().context("no callId")?;
    ws.send_json(&json!({"type": "ACCEPT_CALL", "sessionId": session_id, "callId": call_id}))
        .await?;
    let failed = ws.recv_type("CALL_FAILED", REPLY).await?;
    ensure!(failed["sipStatus"] == 488, "{failed}");
    let closed = caller.wait_call_closed(REPLY)?;
    ensure!(
        closed["param"].as_str().is_some_and(|p| p.contains("488")),
        "baresip should see 488: {closed}"
    );
    ws.close().await?;
    Ok(())
}
