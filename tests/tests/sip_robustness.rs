//! SIP input that must neither kill a call nor confuse its media (issue 10),
//! against SIPp callees reached directly (no proxy): a session timer that
//! overflows every clock, in the 200 and in a re-INVITE; a re-INVITE that
//! puts another codec before the one in use.

use std::time::Duration;

use anyhow::{ensure, Context};
use dialtone_codecs::Codec;
use dialtone_tests::gateway::{registrar_config, Gateway, LOOPBACK};
use dialtone_tests::kamailio::{Kamailio, KamailioOptions};
use dialtone_tests::rtp_peer::{dominant_hz, start_rtp_call, RtpPeer};
use dialtone_tests::sipp::{Sipp, SippOptions, TracedMessage, UacScenario, UasScenario};
use dialtone_tests::wait::wait_until;
use dialtone_tests::ws_client::WsClient;
use serde_json::{json, Value};

const REPLY: Duration = Duration::from_secs(10);
const PEER: Duration = Duration::from_secs(10);
const CLEANUP: Duration = Duration::from_secs(30);
const TONE_HZ: f64 = 1000.0;

/// Open mode, small T1, INVITEs straight to the SIPp callee.
fn direct_config(sipp: &Sipp) -> String {
    format!(
        "{LOOPBACK}t1_ms = 100\n[calls]\nproxy = \"sip:{};transport=udp\"\n",
        sipp.sip_addr()
    )
}

struct Client {
    ws: WsClient,
    session_id: String,
}

impl Client {
    async fn start(gateway: &Gateway) -> anyhow::Result<Client> {
        let (ws, session_id) = WsClient::start_session(&gateway.ws_url(), "alice", "x").await?;
        Ok(Client { ws, session_id })
    }

    async fn send(&mut self, mut message: Value) -> anyhow::Result<()> {
        message["sessionId"] = json!(self.session_id);
        self.ws.send_json(&message).await
    }

    /// START_CALL to `3000` until CALL_STARTED; returns the callId.
    async fn started_call(&mut self) -> anyhow::Result<String> {
        let start = json!({"type": "START_CALL", "sessionId": self.session_id, "bUri": "3000"});
        let call_id = self.ws.start_call(&start, REPLY).await?;
        loop {
            let message = self.ws.recv_json(REPLY).await.context("no CALL_STARTED")?;
            match message["type"].as_str() {
                Some("CALL_STARTING") => continue,
                Some("CALL_STARTED") if message["callId"] == call_id.as_str() => {
                    return Ok(call_id)
                }
                _ => anyhow::bail!("expected CALL_STARTED, got {message}"),
            }
        }
    }

    async fn hang_up(&mut self, call_id: &str) -> anyhow::Result<()> {
        self.send(json!({"type": "HANGUP_CALL", "callId": call_id}))
            .await?;
        let finished = self.ws.recv_type("CALL_FINISHED", REPLY).await?;
        ensure!(finished["callId"] == call_id, "{finished}");
        Ok(())
    }
}

/// SIPp ACKed the gateway's 200 to its re-INVITE (SIPp sends no other ACK
/// as a callee): the re-INVITE was answered.
fn wait_reinvite_answered(sipp: &Sipp, nth: usize) -> anyhow::Result<()> {
    wait_until(PEER, || {
        Ok(sipp
            .messages()
            .iter()
            .filter(|m| m.sent && m.is_request("ACK"))
            .count()
            >= nth)
    })
    .context("the gateway did not answer SIPp's re-INVITE")
}

fn wait_byes(sipp: &Sipp, count: usize) -> anyhow::Result<()> {
    wait_until(PEER, || Ok(sipp.received_requests("BYE").len() >= count)).context("SIPp got no BYE")
}

fn assert_nothing_held(gateway: &Gateway) -> anyhow::Result<()> {
    let keys = [
        "calls",
        "sipDialogs",
        "mediaPorts",
        "sessions",
        "tasks",
        "sipTransactions",
    ];
    gateway.wait_released(&keys, CLEANUP)
}

#[tokio::test]
async fn session_expires_overflow_in_a_200_leaves_the_gateway_serving_and_ends_with_bye(
) -> anyhow::Result<()> {
    // Two calls on one gateway, each answered with Session-Expires 2^64-1
    // and refreshed with a re-INVITE carrying it again.
    let sipp = Sipp::uas(
        UasScenario::SessionExpiresOverflow,
        SippOptions {
            calls: 2,
            pause: Some(Duration::from_millis(300)),
            ..Default::default()
        },
    )?;
    let gateway = Gateway::start(&direct_config(&sipp))?;
    let mut client = Client::start(&gateway).await?;
    for call in 1..=2 {
        let call_id = client
            .started_call()
            .await
            .with_context(|| format!("call {call}"))?;
        wait_reinvite_answered(&sipp, call)?;
        ensure!(gateway.status()?["calls"] == 1, "call {call} is not held");
        client.hang_up(&call_id).await?;
        wait_byes(&sipp, call).with_context(|| format!("call {call}"))?;
    }
    sipp.wait_success(PEER)?;
    // The gateway still takes new sessions.
    let (other, _) = WsClient::start_session(&gateway.ws_url(), "bob", "x").await?;
    other.close().await?;
    client.ws.close().await?;
    assert_nothing_held(&gateway)
}

#[tokio::test]
async fn session_expires_overflow_in_a_reinvite_is_answered_and_the_call_ends_with_bye(
) -> anyhow::Result<()> {
    let sipp = Sipp::uas(
        UasScenario::ReinviteSessionExpiresOverflow,
        SippOptions {
            pause: Some(Duration::from_millis(300)),
            ..Default::default()
        },
    )?;
    let gateway = Gateway::start(&direct_config(&sipp))?;
    let mut client = Client::start(&gateway).await?;
    let call_id = client.started_call().await?;
    wait_reinvite_answered(&sipp, 1)?;
    ensure!(gateway.status()?["calls"] == 1);
    client.hang_up(&call_id).await?;
    wait_byes(&sipp, 1)?;
    sipp.wait_success(PEER)?;
    client.ws.close().await?;
    assert_nothing_held(&gateway)
}

/// The audio payload types of the `m=audio` line of `message`'s SDP.
fn audio_formats(message: &TracedMessage) -> Vec<String> {
    message
        .body()
        .lines()
        .find_map(|line| line.strip_prefix("m=audio "))
        .map(|rest| {
            rest.split_whitespace()
                .skip(2)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn reinvite_offering_g722_first_is_answered_with_the_codec_in_use_and_audio_flows(
) -> anyhow::Result<()> {
    // SIPp answers PCMU, echoes our RTP, then re-offers G.722 before PCMU.
    let sipp = Sipp::uas(
        UasScenario::ReinviteG722First,
        SippOptions {
            pause: Some(Duration::from_millis(300)),
            rtp_echo: true,
            ..Default::default()
        },
    )?;
    let gateway = Gateway::start(&direct_config(&sipp))?;
    let peer = RtpPeer::bind(Codec::Pcmu).await?;
    let mut client = Client::start(&gateway).await?;
    let (call_id, gateway_point) =
        start_rtp_call(&mut client.ws, &client.session_id, "3000", &peer).await?;
    wait_reinvite_answered(&sipp, 1)?;
    // The only 200 with SDP SIPp receives is the answer to its re-INVITE.
    let answer = sipp
        .messages()
        .into_iter()
        .find(|m| !m.sent && m.status() == Some(200) && m.body().contains("m=audio"))
        .context("no SDP answer to the re-INVITE")?;
    let formats = audio_formats(&answer);
    ensure!(
        formats.first().map(String::as_str) == Some("0") && !formats.iter().any(|f| f == "9"),
        "the answer should keep PCMU (0), the codec in use, and not take G.722 (9): {formats:?}\n{}",
        answer.text
    );
    // After the re-INVITE the tone still makes the round trip through SIPp's echo.
    let heard = peer.exchange(gateway_point, TONE_HZ, 2.5, 0).await?;
    let heard_hz = dominant_hz(&heard, 8000)?;
    ensure!(
        (heard_hz - TONE_HZ).abs() < 15.0,
        "the client heard {heard_hz} Hz after the re-INVITE"
    );
    client.hang_up(&call_id).await?;
    wait_byes(&sipp, 1)?;
    sipp.wait_success(PEER)?;
    client.ws.close().await?;
    assert_nothing_held(&gateway)
}

/// A caller that sends its ACK and a re-INVITE back to back (Asterisk with `direct_media=yes`
/// bridging two calls does) gets every re-INVITE answered: 20 calls of 20.
#[tokio::test]
async fn a_reinvite_right_behind_the_ack_is_answered_every_time() -> anyhow::Result<()> {
    const CALLS: u32 = 20;
    let kamailio = Kamailio::start(KamailioOptions::default())?;
    let gateway = Gateway::start(&registrar_config(kamailio.sip_addr()))?;
    let (mut ws, session_id) =
        WsClient::start_session(&gateway.ws_url(), "1001", "secret1001").await?;
    // Straight to the session's Contact: nothing between the two requests.
    let caller = Sipp::uac(
        UacScenario::AckThenReinvite,
        gateway.sip_addr(),
        &format!("dt-{session_id}"),
        SippOptions {
            calls: CALLS,
            timeout: Duration::from_secs(60),
            ..Default::default()
        },
    )?;
    let (mut finished, mut held) = (0, 0);
    while finished < CALLS {
        let message = ws.recv_json(Duration::from_secs(20)).await?;
        match message["type"].as_str() {
            Some("INCOMING_CALL") => {
                // SIPp's From is `sipp <sip:sipp@…>`: its display name reaches the client.
                ensure!(message["aDisplayName"] == "sipp", "{message}");
                ws.send_json(&json!({
                    "type": "ACCEPT_CALL", "sessionId": session_id, "callId": message["callId"],
                }))
                .await?;
            }
            Some("CALL_FINISHED") => finished += 1,
            // Each re-INVITE is a hold (sendonly), answered and reported.
            Some("CALL_HELD") if message["by"] == "REMOTE" => held += 1,
            Some("CALL_STARTED") => {}
            _ => anyhow::bail!("unexpected {message}"),
        }
    }
    ensure!(held == CALLS, "{held} holds reported of {CALLS}");
    caller.wait_success(Duration::from_secs(20))?;
    ws.close().await?;
    gateway.wait_all_released(Duration::from_secs(10))?;
    Ok(())
}

/// A caller number the gateway lets the user claim (`calls.caller_numbers`) is the From user
/// (and the P-Asserted-Identity) of the INVITE, with the session's display name; one it does
/// not is refused before anything is sent, on START_CALL and on START_SESSION.
#[tokio::test]
async fn a_caller_number_goes_out_only_when_the_user_may_claim_it() -> anyhow::Result<()> {
    let sipp = Sipp::uas(UasScenario::Answer, SippOptions::default())?;
    let gateway = Gateway::start(&format!(
        "{}asserted_identity = true\ncaller_numbers = {{ alice = [\"+1555010?\"] }}\n",
        dialtone_tests::gateway::proxy_config(sipp.sip_addr(), "")
    ))?;
    let mut ws = WsClient::connect(&gateway.ws_url()).await?;
    ws.send_json(
        &json!({"type": "START_SESSION", "username": "alice", "password": "x",
        "displayName": "Front Desk"}),
    )
    .await?;
    let session_id = ws
        .recv_type_skipping("SESSION_STARTED", &["CONNECTED"], REPLY)
        .await?["sessionId"]
        .as_str()
        .context("no sessionId")?
        .to_string();
    ws.send_json(
        &json!({"type": "START_CALL", "sessionId": session_id, "bUri": "3000",
        "callerNumber": "+15550199"}),
    )
    .await?;
    let error = ws.recv_type("ERROR", REPLY).await?;
    ensure!(
        error["field"] == "callerNumber" && error["code"] == "INVALID_VALUE",
        "{error}"
    );
    let call_id = ws
        .start_call(
            &json!({"type": "START_CALL", "sessionId": session_id, "bUri": "3000",
                "callerNumber": "+15550101"}),
            REPLY,
        )
        .await?;
    // SIPp takes one call: the refused one never reached it.
    let invite = sipp.wait_for_message("INVITE sip:", PEER)?;
    let from = invite.header("From").context("INVITE without From")?;
    ensure!(
        from.starts_with("\"Front Desk\" <sip:+15550101@"),
        "From: {from}"
    );
    let asserted = invite.header("P-Asserted-Identity").unwrap_or_default();
    ensure!(
        asserted.contains("<sip:+15550101@"),
        "P-Asserted-Identity: {asserted}"
    );
    ws.recv_type_skipping("CALL_STARTED", &["CALL_STARTING"], REPLY)
        .await?;
    ws.send_json(&json!({"type": "HANGUP_CALL", "sessionId": session_id, "callId": call_id}))
        .await?;
    ws.recv_type("CALL_FINISHED", REPLY).await?;
    sipp.wait_success(PEER)?;

    // Another user may not claim alice's number, not even as its session's default.
    let mut bob = WsClient::connect(&gateway.ws_url()).await?;
    bob.send_json(
        &json!({"type": "START_SESSION", "username": "bob", "password": "x",
        "callerNumber": "+15550101"}),
    )
    .await?;
    let failed = bob
        .recv_type_skipping("SESSION_FAILED", &["CONNECTED"], REPLY)
        .await?;
    ensure!(failed["reason"] == "FORBIDDEN", "{failed}");
    bob.close().await?;
    ws.close().await?;
    gateway.wait_all_released(REPLY)?;
    Ok(())
}

/// The caller's display name of START_CALL reaches the far end in From, quoted (and in
/// P-Asserted-Identity toward a trunk set to trust the gateway); one that could break out of
/// the quotes is refused before anything is sent.
#[tokio::test]
async fn the_display_name_of_start_call_is_the_from_display_name() -> anyhow::Result<()> {
    let sipp = Sipp::uas(UasScenario::Answer, SippOptions::default())?;
    let gateway = Gateway::start(&format!(
        "{}asserted_identity = true\n",
        dialtone_tests::gateway::proxy_config(sipp.sip_addr(), "")
    ))?;
    let (mut ws, session_id) = WsClient::start_session(&gateway.ws_url(), "alice", "x").await?;
    ws.send_json(
        &json!({"type": "START_CALL", "sessionId": session_id, "bUri": "3000",
        "displayName": "Bob\"\r\nX-Injected: yes"}),
    )
    .await?;
    let error = ws.recv_type("ERROR", REPLY).await?;
    ensure!(error["field"] == "displayName", "{error}");
    let call_id = ws
        .start_call(
            &json!({"type": "START_CALL", "sessionId": session_id, "bUri": "3000",
                "displayName": "Ada Lovelace"}),
            REPLY,
        )
        .await?;
    let invite = sipp.wait_for_message("INVITE sip:", PEER)?;
    let from = invite.header("From").context("INVITE without From")?;
    ensure!(
        from.starts_with("\"Ada Lovelace\" <sip:alice@"),
        "From: {from}"
    );
    let asserted = invite
        .header("P-Asserted-Identity")
        .context("INVITE without P-Asserted-Identity")?;
    ensure!(
        asserted.starts_with("\"Ada Lovelace\" <sip:alice@"),
        "P-Asserted-Identity: {asserted}"
    );
    ws.recv_type_skipping("CALL_STARTED", &["CALL_STARTING"], REPLY)
        .await?;
    ws.send_json(&json!({"type": "HANGUP_CALL", "sessionId": session_id, "callId": call_id}))
        .await?;
    ws.recv_type("CALL_FINISHED", REPLY).await?;
    sipp.wait_success(PEER)?;
    ws.close().await?;
    gateway.wait_all_released(REPLY)?;
    Ok(())
}
