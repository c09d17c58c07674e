//! Transfers a far end starts (its REFER, followed by the gateway under `calls.incoming_refer`)
//! and attended transfers a client starts (TRANSFER_CALL with `replacesCallId`: a REFER whose
//! Refer-To replaces another of the session's calls, RFC 5589), against SIPp far ends whose
//! media are sockets of the test. (The blind transfer onto baresip is in `calls.rs`.)
//!
//! Debian 12's baresip (1.0) and its libre know nothing of Replaces, so the attended transfer's
//! far ends are SIPp scenarios: the test checks the Refer-To the transferee received names the
//! other call's dialog exactly as its far end knows it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Context};
use dialtone_codecs::Codec;
use dialtone_tests::gateway::{Gateway, LOOPBACK};
use dialtone_tests::rtp_peer::{dominant_hz, sdp_audio_addr, start_rtp_call, RtpPeer};
use dialtone_tests::sipp::{Sipp, SippOptions, TracedMessage, UasScenario};
use dialtone_tests::ws_client::WsClient;
use serde_json::{json, Value};

const REPLY: Duration = Duration::from_secs(10);
const PEER: Duration = Duration::from_secs(10);

/// A gateway that sends each call where its bUri says (no proxy, no registrar).
fn gateway(calls_section: &str) -> anyhow::Result<Gateway> {
    Gateway::start(&format!("{LOOPBACK}t1_ms = 100\n[calls]\n{calls_section}"))
}

fn callee(
    scenario: UasScenario,
    media: &RtpPeer,
    refer_to: Option<String>,
) -> anyhow::Result<Sipp> {
    Sipp::uas(
        scenario,
        SippOptions {
            media_port: Some(media.local_addr()?.port()),
            refer_to,
            ..Default::default()
        },
    )
}

/// Where the gateway's SIP side takes RTP from `sipp`: the SDP of the INVITE it sent there.
fn gateway_point(sipp: &Sipp) -> anyhow::Result<(TracedMessage, SocketAddr)> {
    let invite = sipp.wait_for_message("INVITE sip:", PEER)?;
    let point = sdp_audio_addr(invite.body()).context("the gateway's INVITE")?;
    Ok((invite, point))
}

fn hears(pcm: &[i16], hz: f64, who: &str) -> anyhow::Result<()> {
    let heard = dominant_hz(pcm, 8000).with_context(|| format!("{who} heard nothing"))?;
    ensure!(
        (heard - hz).abs() < 15.0,
        "{who} heard {heard} Hz, not {hz} Hz"
    );
    Ok(())
}

async fn hang_up(ws: &mut WsClient, session_id: &str, call_id: &str) -> anyhow::Result<Value> {
    ws.send_json(&json!({"type": "HANGUP_CALL", "sessionId": session_id, "callId": call_id}))
        .await?;
    ws.recv_type_skipping("CALL_FINISHED", &["CALL_HELD", "CALL_RESUMED"], REPLY)
        .await
}

/// The far end transfers the client's call (REFER to another phone): the gateway answers 202,
/// calls the target from the same media port with Referred-By, NOTIFYs the transferor (100,
/// then how the new call went, the last ending the subscription), hangs up the old leg, and
/// the client, still on the same callId, now hears the new far end and is heard by it.
#[tokio::test]
async fn a_far_ends_refer_is_followed_and_the_client_hears_the_new_far_end() -> anyhow::Result<()> {
    let (far_a, far_b) = (
        RtpPeer::bind(Codec::Pcmu).await?,
        RtpPeer::bind(Codec::Pcmu).await?,
    );
    let target_sipp = callee(UasScenario::Answer, &far_b, None)?;
    let target = format!("sip:3001@{}", target_sipp.sip_addr());
    let transferor = callee(
        UasScenario::AnswerThenRefer,
        &far_a,
        Some(format!("<{target}>")),
    )?;
    let gateway = gateway("")?;
    let client = RtpPeer::bind(Codec::Pcmu).await?;
    let (mut ws, session_id) = WsClient::start_session(&gateway.ws_url(), "alice", "x").await?;
    let b_uri = format!("sip:3000@{}", transferor.sip_addr());
    let (call_id, client_point) = start_rtp_call(&mut ws, &session_id, &b_uri, &client).await?;
    let (_, point_a) = gateway_point(&transferor)?;

    // SIPp waits 5 s after the ACK before it transfers: time to hear it first.
    let (heard, _) = tokio::join!(
        client.exchange(client_point, 440.0, 1.5, 0),
        far_a.exchange(point_a, 700.0, 1.5, 0),
    );
    hears(&heard?, 700.0, "the client, before the transfer")?;

    let referred = ws.recv_type("CALL_REFERRED", PEER).await?;
    ensure!(
        referred["callId"] == call_id.as_str()
            && referred["target"] == target.as_str()
            && referred["accepted"] == true
            && referred["attended"] == false,
        "{referred}"
    );
    let mut statuses = Vec::new();
    while statuses.last() != Some(&200) {
        let progress = ws.recv_type("TRANSFER_PROGRESS", REPLY).await?;
        ensure!(
            progress["stage"] == "REFERRED_CALL" && progress["callId"] == call_id.as_str(),
            "{progress}"
        );
        statuses.push(progress["sipStatus"].as_u64().unwrap_or(0));
    }
    ensure!(
        statuses == [180, 200],
        "the referred call went {statuses:?}"
    );

    let (invite_b, point_b) = gateway_point(&target_sipp)?;
    ensure!(
        invite_b
            .header("Referred-By")
            .is_some_and(|by| by.contains("transferor@")),
        "the INVITE to the target lacks the REFER's Referred-By:\n{}",
        invite_b.text
    );
    ensure!(
        point_b.port() == point_a.port(),
        "the new far end got another port: {point_b} after {point_a}"
    );
    let (heard_by_client, heard_by_b) = tokio::join!(
        client.exchange(client_point, 440.0, 1.5, 0),
        far_b.exchange(point_b, 1000.0, 1.5, 0),
    );
    hears(&heard_by_client?, 1000.0, "the client, after the transfer")?;
    hears(&heard_by_b?, 440.0, "the new far end")?;

    // The transferor took the NOTIFYs, then the gateway's BYE.
    transferor.wait_success(PEER)?;
    let notifies: Vec<String> = transferor
        .messages()
        .into_iter()
        .filter(|message| !message.sent && message.is_request("NOTIFY"))
        .map(|message| message.body().trim().to_string())
        .collect();
    ensure!(
        notifies
            .first()
            .is_some_and(|body| body.starts_with("SIP/2.0 100"))
            && notifies
                .last()
                .is_some_and(|body| body.starts_with("SIP/2.0 200")),
        "NOTIFY bodies {notifies:?}"
    );

    let finished = hang_up(&mut ws, &session_id, &call_id).await?;
    ensure!(finished["callId"] == call_id.as_str(), "{finished}");
    target_sipp.wait_success(PEER)?;
    ws.close().await?;
    gateway.wait_all_released(REPLY)?;
    Ok(())
}

/// A client's call to a SIPp far end that answers and then sends a REFER with `refer_to`, which
/// the gateway (its `[calls]` section given) is to refuse; its media peers live as long as it.
struct RefusedRefer {
    transferor: Sipp,
    gateway: Gateway,
    ws: WsClient,
    session_id: String,
    call_id: String,
    _media: (RtpPeer, RtpPeer),
}

impl RefusedRefer {
    async fn start(refer_to: &str, calls_section: &str) -> anyhow::Result<RefusedRefer> {
        let far_a = RtpPeer::bind(Codec::Pcmu).await?;
        let transferor = callee(
            UasScenario::AnswerThenRefusedRefer,
            &far_a,
            Some(refer_to.to_string()),
        )?;
        let gateway = gateway(calls_section)?;
        let client = RtpPeer::bind(Codec::Pcmu).await?;
        let (mut ws, session_id) = WsClient::start_session(&gateway.ws_url(), "alice", "x").await?;
        let b_uri = format!("sip:3000@{}", transferor.sip_addr());
        let (call_id, _) = start_rtp_call(&mut ws, &session_id, &b_uri, &client).await?;
        Ok(RefusedRefer {
            transferor,
            gateway,
            ws,
            session_id,
            call_id,
            _media: (far_a, client),
        })
    }

    /// The call goes on quietly until the client hangs up; SIPp's scenario checks the refusal
    /// and the BYE; the gateway ends with nothing held.
    async fn goes_on_until_hang_up(mut self) -> anyhow::Result<()> {
        ensure!(
            self.ws
                .expect_no_message(Duration::from_millis(300))
                .await
                .is_ok(),
            "the call did not go on quietly"
        );
        ensure!(
            self.gateway.status()?["calls"] == 1,
            "{}",
            self.gateway.status()?
        );
        hang_up(&mut self.ws, &self.session_id, &self.call_id).await?;
        self.transferor.wait_success(PEER)?;
        self.ws.close().await?;
        self.gateway.wait_all_released(REPLY)?;
        Ok(())
    }
}

/// A REFER to a target the dial plan denies is refused (603), the client is told why, and the
/// call goes on until the client hangs up.
#[tokio::test]
async fn a_refer_the_dial_plan_denies_is_declined_and_the_call_goes_on() -> anyhow::Result<()> {
    let mut call = RefusedRefer::start("<sip:6661234@127.0.0.1:9>", "deny = [\"666*\"]\n").await?;
    let referred = call.ws.recv_type("CALL_REFERRED", PEER).await?;
    ensure!(
        referred["accepted"] == false
            && referred["reason"]
                .as_str()
                .is_some_and(|reason| reason.contains("dial plan")),
        "{referred}"
    );
    call.transferor.wait_for_message("SIP/2.0 603", PEER)?;
    call.goes_on_until_hang_up().await
}

/// A REFER whose Refer-To is no SIP URI (here a tel: URI) gets 400 at once: the client is not
/// asked or told, nothing is dialled, and the call goes on until the client hangs up.
#[tokio::test]
async fn a_refer_to_no_sip_uri_gets_400_and_the_call_goes_on() -> anyhow::Result<()> {
    let call = RefusedRefer::start("<tel:+15551234567>", "incoming_refer = \"allow\"\n").await?;
    call.transferor.wait_for_message("SIP/2.0 400", PEER)?;
    call.goes_on_until_hang_up().await
}

/// An attended transfer: the client has a call to A and one to B, and asks A to take its place
/// in B's call. A's REFER names B's Contact with a Replaces that matches B's dialog as B knows
/// it (B's tag as to-tag, the gateway's as from-tag); on A's NOTIFY 200 the gateway hangs A up.
#[tokio::test]
async fn an_attended_transfer_refers_one_call_to_replace_the_other() -> anyhow::Result<()> {
    let (far_a, far_b) = (
        RtpPeer::bind(Codec::Pcmu).await?,
        RtpPeer::bind(Codec::Pcmu).await?,
    );
    let transferee = callee(UasScenario::AnswerThenTakeRefer, &far_a, None)?;
    let target = callee(UasScenario::Answer, &far_b, None)?;
    let gateway = gateway("")?;
    let (client_a, client_b) = (
        RtpPeer::bind(Codec::Pcmu).await?,
        RtpPeer::bind(Codec::Pcmu).await?,
    );
    let (mut ws, session_id) = WsClient::start_session(&gateway.ws_url(), "alice", "x").await?;
    let uri_a = format!("sip:3000@{}", transferee.sip_addr());
    let (call_a, _) = start_rtp_call(&mut ws, &session_id, &uri_a, &client_a).await?;
    let uri_b = format!("sip:3001@{}", target.sip_addr());
    let (call_b, _) = start_rtp_call(&mut ws, &session_id, &uri_b, &client_b).await?;

    // A call to replace that does not exist is refused, and nothing is sent.
    ws.send_json(&json!({"type": "TRANSFER_CALL", "sessionId": session_id, "callId": call_a, "replacesCallId": "nope"}))
        .await?;
    let error = ws.recv_type("ERROR", REPLY).await?;
    ensure!(
        error["code"] == "UNKNOWN_CALL" && error["field"] == "replacesCallId",
        "{error}"
    );

    ws.send_json(&json!({"type": "TRANSFER_CALL", "sessionId": session_id, "callId": call_a, "replacesCallId": call_b}))
        .await?;
    let mut stages = Vec::new();
    loop {
        let message = ws.recv_json(REPLY).await?;
        match message["type"].as_str() {
            Some("TRANSFER_PROGRESS") => {
                stages.push(format!("{} {}", message["stage"], message["sipStatus"]))
            }
            Some("CALL_FINISHED") => {
                ensure!(message["callId"] == call_a.as_str(), "{message}");
                break;
            }
            _ => anyhow::bail!("unexpected {message}"),
        }
    }
    ensure!(
        stages.contains(&"\"REFER\" 202".to_string())
            && stages.last() == Some(&"\"CALL\" 200".to_string()),
        "transfer stages {stages:?}"
    );
    transferee.wait_success(PEER)?;

    let refer = transferee
        .messages()
        .into_iter()
        .find(|message| !message.sent && message.is_request("REFER"))
        .context("A got no REFER")?;
    let refer_to = refer.header("Refer-To").context("no Refer-To")?.to_string();
    let (invite_b, _) = gateway_point(&target)?;
    let ok_b = target
        .messages()
        .into_iter()
        .find(|message| message.sent && message.status() == Some(200))
        .context("B sent no 200")?;
    let tag = |header: &str| {
        header
            .split(";tag=")
            .nth(1)
            .map(|tag| tag.split(';').next().unwrap_or(tag).trim().to_string())
    };
    let b_call_id = invite_b.header("Call-ID").context("Call-ID")?;
    let gateway_tag = invite_b.header("From").and_then(tag).context("From tag")?;
    let b_tag = ok_b.header("To").and_then(tag).context("To tag")?;
    let expected = format!("{b_call_id};to-tag={b_tag};from-tag={gateway_tag}");
    let (uri, replaces) = refer_to
        .trim_matches(|c| c == '<' || c == '>')
        .split_once("?Replaces=")
        .context(format!("no Replaces in {refer_to}"))?;
    ensure!(
        percent_decoded(replaces) == expected,
        "Refer-To {refer_to} does not replace B's dialog {expected}"
    );
    let b_contact = ok_b.header("Contact").context("B's Contact")?;
    ensure!(
        b_contact.contains(uri.trim_start_matches("sip:")),
        "Refer-To {uri} is not B's Contact {b_contact}"
    );

    hang_up(&mut ws, &session_id, &call_b).await?;
    target.wait_success(PEER)?;
    ws.close().await?;
    gateway.wait_all_released(REPLY)?;
    Ok(())
}

fn percent_decoded(text: &str) -> String {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        let hex = (bytes[at] == b'%')
            .then(|| text.get(at + 1..at + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match hex {
            Some(byte) => {
                out.push(byte);
                at += 3;
            }
            None => {
                out.push(bytes[at]);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
