//! Calls driven from the WebSocket protocol against real peers: baresip
//! (callee and caller, through Kamailio) and SIPp scripted callees for the
//! failure cases. After each test the gateway holds no call, dialog,
//! transaction or media port.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Context};
use dialtone_tests::baresip::{Baresip, BaresipAccount, BaresipOptions};
use dialtone_tests::gateway::{proxy_config, Gateway, LOOPBACK};
use dialtone_tests::kamailio::{Kamailio, KamailioOptions};
use dialtone_tests::ports::free_port;
use dialtone_tests::process::Logged;
use dialtone_tests::sipp::{Sipp, SippOptions, UasScenario};
use dialtone_tests::wait::wait_until;
use dialtone_tests::ws_client::WsClient;
use serde_json::{json, Value};

const REPLY: Duration = Duration::from_secs(10);
const PEER: Duration = Duration::from_secs(10);
const CLEANUP: Duration = Duration::from_secs(30);

/// Small T1 so finished transactions leave the stack within seconds.
const FAST_SIP: &str = "t1_ms = 100\n";

fn registrar_config(kamailio: &Kamailio, transport: &str, extra: &str) -> String {
    format!(
        r#"
{LOOPBACK}{FAST_SIP}
[registrar]
address = "sip:127.0.0.1:{};transport={transport}"
timeout_ms = 3000
{extra}
"#,
        kamailio.sip_port()
    )
}

/// A connected client with a started session.
struct Client {
    ws: WsClient,
    session_id: String,
}

impl Client {
    async fn start(gateway: &Gateway, username: &str, password: &str) -> anyhow::Result<Client> {
        let (ws, session_id) =
            WsClient::start_session(&gateway.ws_url(), username, password).await?;
        Ok(Client { ws, session_id })
    }

    async fn send(&mut self, mut message: Value) -> anyhow::Result<()> {
        message["sessionId"] = json!(self.session_id);
        self.ws.send_json(&message).await
    }

    /// START_CALL; returns the callId from the first CALL_STARTING.
    async fn call(&mut self, b_uri: &str) -> anyhow::Result<String> {
        self.send(json!({"type": "START_CALL", "bUri": b_uri, "clientCallId": "mine-1"}))
            .await?;
        let starting = self.ws.recv_type("CALL_STARTING", REPLY).await?;
        ensure!(starting["stage"] == "TRYING", "{starting}");
        ensure!(starting["clientCallId"] == "mine-1", "{starting}");
        starting["callId"]
            .as_str()
            .map(str::to_string)
            .context("CALL_STARTING without callId")
    }

    /// START_CALL that must reach CALL_STARTED; returns the callId.
    async fn started_call(&mut self, b_uri: &str) -> anyhow::Result<String> {
        let call_id = self.call(b_uri).await?;
        let (_, started) = self.after_progress().await?;
        ensure!(
            started["type"] == "CALL_STARTED" && started["callId"] == call_id.as_str(),
            "{started}"
        );
        Ok(call_id)
    }

    async fn hangup(&mut self, call_id: &str) -> anyhow::Result<()> {
        self.send(json!({"type": "HANGUP_CALL", "callId": call_id}))
            .await
    }

    /// Next message, which must be of `kind` and about `call_id`.
    async fn expect(&mut self, kind: &str, call_id: &str) -> anyhow::Result<Value> {
        let message = self.ws.recv_type(kind, REPLY).await?;
        ensure!(message["callId"] == call_id, "{message}");
        Ok(message)
    }

    /// Skips CALL_STARTING messages, returns what follows them.
    async fn after_progress(&mut self) -> anyhow::Result<(Vec<String>, Value)> {
        let mut stages = Vec::new();
        loop {
            let message = self.ws.recv_json(REPLY).await?;
            if message["type"] == "CALL_STARTING" {
                stages.push(message["stage"].as_str().unwrap_or_default().to_string());
                continue;
            }
            return Ok((stages, message));
        }
    }
}

/// The client hangs up a call to SIPp; the scenario completes, the client
/// leaves and the gateway holds nothing.
async fn hang_up_with_sipp(
    mut client: Client,
    call_id: &str,
    sipp: &Sipp,
    gateway: &Gateway,
) -> anyhow::Result<()> {
    client.hangup(call_id).await?;
    client.expect("CALL_FINISHED", call_id).await?;
    sipp.wait_success(PEER)?;
    client.ws.close().await?;
    assert_nothing_held(gateway)
}

fn assert_nothing_held(gateway: &Gateway) -> anyhow::Result<()> {
    gateway.wait_all_released(CLEANUP)
}

/// Kamailio, one baresip registered as `peer_user`, and a gateway with a
/// started session for 1001. Fields drop in order: the client leaves first.
struct BaresipLine {
    client: Client,
    gateway: Gateway,
    baresip: Baresip,
    kamailio: Kamailio,
}

impl BaresipLine {
    async fn start(
        peer_user: &str,
        auto_answer: bool,
        transport: &str,
        extra_config: &str,
    ) -> anyhow::Result<BaresipLine> {
        let kamailio = Kamailio::start(KamailioOptions::default())?;
        let baresip = callee(&kamailio, peer_user, auto_answer)?;
        let gateway = Gateway::start(&registrar_config(&kamailio, transport, extra_config))?;
        let client = Client::start(&gateway, "1001", "secret1001").await?;
        Ok(BaresipLine {
            client,
            gateway,
            baresip,
            kamailio,
        })
    }
}

fn callee(kamailio: &Kamailio, user: &str, auto_answer: bool) -> anyhow::Result<Baresip> {
    Baresip::start(BaresipOptions {
        account: Some(BaresipAccount::rig_user(user, kamailio.sip_addr())?),
        auto_answer,
        ..Default::default()
    })
}

#[tokio::test]
async fn outgoing_call_to_baresip_rings_starts_and_hangs_up_on_both_sides() -> anyhow::Result<()> {
    let BaresipLine {
        mut client,
        gateway,
        baresip,
        kamailio: _kamailio,
    } = BaresipLine::start("2000", true, "udp", "").await?;

    let call_id = client.call("2000").await?;
    let (stages, started) = client.after_progress().await?;
    ensure!(stages.contains(&"RINGING".to_string()), "stages {stages:?}");
    ensure!(
        started["type"] == "CALL_STARTED" && started["callId"] == call_id.as_str(),
        "{started}"
    );
    ensure!(started["clientCallId"] == "mine-1", "{started}");
    baresip.wait_call_established(PEER)?;
    let status = gateway.status()?;
    ensure!(
        status["calls"] == 1 && status["mediaPorts"] == 1,
        "{status}"
    );

    client.hangup(&call_id).await?;
    client.expect("CALL_FINISHED", &call_id).await?;
    baresip.wait_call_closed(PEER)?;

    // The call is gone: a second hangup is an error, not a crash.
    client.hangup(&call_id).await?;
    let error = client.ws.recv_type("ERROR", REPLY).await?;
    ensure!(error["code"] == "UNKNOWN_CALL", "{error}");
    client.ws.close().await?;
    assert_nothing_held(&gateway)
}

#[tokio::test]
async fn far_end_bye_finishes_the_call() -> anyhow::Result<()> {
    let BaresipLine {
        mut client,
        gateway,
        baresip,
        kamailio: _kamailio,
    } = BaresipLine::start("2000", true, "tcp", "").await?;
    let call_id = client.started_call("2000").await?;
    baresip.wait_call_established(PEER)?;
    baresip.hangup()?;
    client.expect("CALL_FINISHED", &call_id).await?;
    client.ws.close().await?;
    assert_nothing_held(&gateway)
}

#[tokio::test]
async fn incoming_call_from_baresip_is_accepted_over_tcp_registration() -> anyhow::Result<()> {
    let BaresipLine {
        mut client,
        gateway,
        baresip: caller,
        kamailio,
    } = BaresipLine::start("1002", false, "tcp", "").await?;

    caller.dial(&format!("sip:1001@{}", kamailio.sip_addr()))?;
    let incoming = client.ws.recv_type("INCOMING_CALL", REPLY).await?;
    ensure!(
        incoming["sessionId"] == client.session_id.as_str(),
        "{incoming}"
    );
    ensure!(
        incoming["aUri"]
            .as_str()
            .is_some_and(|uri| uri.contains("1002")),
        "{incoming}"
    );
    ensure!(
        incoming["sdp"]
            .as_str()
            .is_some_and(|sdp| sdp.contains("m=audio")),
        "{incoming}"
    );
    caller
        .wait_ringing(PEER)
        .context("the gateway should send 180")?;
    let call_id = incoming["callId"]
        .as_str()
        .context("no callId")?
        .to_string();
    client
        .send(
            json!({"type": "ACCEPT_CALL", "callId": call_id, "cc": {"audioCodecs": ["PCMA/8000"]}}),
        )
        .await?;
    client.expect("CALL_STARTED", &call_id).await?;
    caller.wait_call_established(PEER)?;

    // Accepting twice is refused; the call stays up.
    client
        .send(json!({"type": "ACCEPT_CALL", "callId": call_id}))
        .await?;
    ensure!(client.ws.recv_type("ERROR", REPLY).await?["code"] == "INVALID_STATE");

    caller.hangup()?;
    client.expect("CALL_FINISHED", &call_id).await?;
    client.ws.close().await?;
    assert_nothing_held(&gateway)
}

#[tokio::test]
async fn incoming_call_rejected_busy_and_decline_give_486_and_603() -> anyhow::Result<()> {
    let BaresipLine {
        mut client,
        gateway,
        baresip: caller,
        kamailio,
    } = BaresipLine::start("1002", false, "udp", "").await?;
    for (reason, status) in [("BUSY", "486"), ("DECLINE", "603"), ("UNAVAILABE", "480")] {
        caller.dial(&format!("sip:1001@{}", kamailio.sip_addr()))?;
        let incoming = client.ws.recv_type("INCOMING_CALL", REPLY).await?;
        let call_id = incoming["callId"]
            .as_str()
            .context("no callId")?
            .to_string();
        client
            .send(json!({"type": "REJECT_CALL", "callId": call_id, "reason": reason}))
            .await?;
        client.expect("CALL_FINISHED", &call_id).await?;
        let closed = caller.wait_call_closed(PEER)?;
        ensure!(
            closed["param"].as_str().is_some_and(|p| p.contains(status)),
            "caller should see {status}: {closed}"
        );
    }
    client.ws.close().await?;
    assert_nothing_held(&gateway)
}

#[tokio::test]
async fn undecided_incoming_call_times_out_with_480_and_caller_cancel_finishes(
) -> anyhow::Result<()> {
    let BaresipLine {
        mut client,
        gateway,
        baresip: caller,
        kamailio,
    } = BaresipLine::start(
        "1002",
        false,
        "udp",
        "[calls]\nincoming_answer_timeout_ms = 1500\n",
    )
    .await?;
    let target = format!("sip:1001@{}", kamailio.sip_addr());

    caller.dial(&target)?;
    let incoming = client.ws.recv_type("INCOMING_CALL", REPLY).await?;
    let call_id = incoming["callId"]
        .as_str()
        .context("no callId")?
        .to_string();
    let failed = client.expect("CALL_FAILED", &call_id).await?;
    ensure!(
        failed["reason"] == "UNAVAILABE" && failed["sipStatus"] == 480,
        "{failed}"
    );
    let closed = caller.wait_call_closed(PEER)?;
    ensure!(
        closed["param"].as_str().is_some_and(|p| p.contains("480")),
        "{closed}"
    );

    caller.dial(&target)?;
    let incoming = client.ws.recv_type("INCOMING_CALL", REPLY).await?;
    let call_id = incoming["callId"]
        .as_str()
        .context("no callId")?
        .to_string();
    caller.wait_ringing(PEER)?;
    caller.hangup()?;
    client.expect("CALL_FINISHED", &call_id).await?;
    client.ws.close().await?;
    assert_nothing_held(&gateway)
}

/// A Kamailio whose user `3000` is a SIPp callee on `port`.
fn kamailio_with_sipp_callee(port: u16) -> anyhow::Result<Kamailio> {
    Kamailio::start(KamailioOptions {
        fixed_callee: Some(SocketAddr::from(([127, 0, 0, 1], port))),
        ..Default::default()
    })
}

#[tokio::test]
async fn sipp_final_errors_become_call_failed_with_reason_and_status() -> anyhow::Result<()> {
    let sipp_port = free_port();
    let kamailio = kamailio_with_sipp_callee(sipp_port)?;
    let gateway = Gateway::start(&registrar_config(&kamailio, "udp", ""))?;
    let mut client = Client::start(&gateway, "1001", "secret1001").await?;
    for (scenario, reason, status) in [
        (UasScenario::Busy, "BUSY", 486),
        (UasScenario::Decline, "DECLINE", 603),
        (UasScenario::NotFound, "UNAVAILABE", 404),
    ] {
        let sipp = Sipp::uas(
            scenario,
            SippOptions {
                sip_port: Some(sipp_port),
                ..Default::default()
            },
        )?;
        let call_id = client.call("3000").await?;
        let (_, failed) = client.after_progress().await?;
        ensure!(
            failed["type"] == "CALL_FAILED"
                && failed["callId"] == call_id.as_str()
                && failed["reason"] == reason
                && failed["sipStatus"] == status,
            "{scenario:?}: {failed}"
        );
        sipp.wait_success(PEER)?;
    }
    client.ws.close().await?;
    assert_nothing_held(&gateway)
}

#[tokio::test]
async fn hangup_while_ringing_cancels_and_the_callee_answers_487() -> anyhow::Result<()> {
    let sipp_port = free_port();
    let kamailio = kamailio_with_sipp_callee(sipp_port)?;
    let gateway = Gateway::start(&registrar_config(&kamailio, "udp", ""))?;
    let mut client = Client::start(&gateway, "1001", "secret1001").await?;
    let sipp = Sipp::uas(
        UasScenario::RingForever,
        SippOptions {
            sip_port: Some(sipp_port),
            ..Default::default()
        },
    )?;
    let call_id = client.call("3000").await?;
    let ringing = client.expect("CALL_STARTING", &call_id).await?;
    ensure!(ringing["stage"] == "RINGING", "{ringing}");
    client.hangup(&call_id).await?;
    client.expect("CALL_FINISHED", &call_id).await?;
    sipp.wait_success(PEER)?;
    ensure!(
        !sipp.received_requests("CANCEL").is_empty(),
        "no CANCEL reached the callee"
    );
    client.ws.close().await?;
    assert_nothing_held(&gateway)
}

#[tokio::test]
async fn unanswered_call_is_cancelled_after_the_no_answer_timeout() -> anyhow::Result<()> {
    let sipp_port = free_port();
    let kamailio = kamailio_with_sipp_callee(sipp_port)?;
    let gateway = Gateway::start(&registrar_config(
        &kamailio,
        "udp",
        "[calls]\nno_answer_timeout_ms = 1500\n",
    ))?;
    let mut client = Client::start(&gateway, "1001", "secret1001").await?;
    let sipp = Sipp::uas(
        UasScenario::Silent,
        SippOptions {
            sip_port: Some(sipp_port),
            pause: Some(Duration::from_secs(4)),
            ..Default::default()
        },
    )?;
    let call_id = client.call("3000").await?;
    let (_, failed) = client.after_progress().await?;
    ensure!(
        failed["type"] == "CALL_FAILED"
            && failed["callId"] == call_id.as_str()
            && failed["reason"] == "UNAVAILABE"
            && failed["sipStatus"] == 408,
        "{failed}"
    );
    ensure!(
        !sipp.received_requests("INVITE").is_empty(),
        "the INVITE never reached the callee"
    );
    // The proxy holds the CANCEL back: the silent callee sent no provisional
    // response on its branch (RFC 3261 section 16.10).
    kamailio
        .wait_for_log("REQ CANCEL sip:3000", PEER)
        .context("no CANCEL reached the proxy")?;
    client.ws.close().await?;
    drop(sipp);
    assert_nothing_held(&gateway)
}

/// Open mode with INVITEs straight to a SIPp callee: no proxy in between.
fn direct_config(sipp: &Sipp, extra: &str) -> String {
    proxy_config(sipp.sip_addr(), extra)
}

#[tokio::test]
async fn callee_that_never_answers_times_out_with_408() -> anyhow::Result<()> {
    let sipp = Sipp::uas(
        UasScenario::Silent,
        SippOptions {
            pause: Some(Duration::from_secs(15)),
            ..Default::default()
        },
    )?;
    let gateway = Gateway::start(&direct_config(&sipp, ""))?;
    let mut client = Client::start(&gateway, "alice", "x").await?;
    let call_id = client.call("3000").await?;
    // Timer B: 64 × T1 = 6.4 s with T1 = 100 ms.
    let failed = client
        .ws
        .recv_type("CALL_FAILED", Duration::from_secs(20))
        .await?;
    ensure!(
        failed["callId"] == call_id.as_str()
            && failed["reason"] == "UNAVAILABE"
            && failed["sipStatus"] == 408,
        "{failed}"
    );
    ensure!(
        sipp.received_requests("INVITE").len() > 1,
        "INVITE should be retransmitted"
    );
    client.ws.close().await?;
    drop(sipp);
    assert_nothing_held(&gateway)
}

#[tokio::test]
async fn far_end_reinvite_for_hold_is_answered_and_the_call_stays_up() -> anyhow::Result<()> {
    let sipp = Sipp::uas(
        UasScenario::AnswerThenReinvite,
        SippOptions {
            pause: Some(Duration::from_millis(300)),
            ..Default::default()
        },
    )?;
    let gateway = Gateway::start(&direct_config(&sipp, ""))?;
    let mut client = Client::start(&gateway, "alice", "x").await?;
    let call_id = client.started_call("3000").await?;
    // Our 200 to the hold re-INVITE answers sendonly with recvonly.
    let answer = sipp.wait_for_message("a=recvonly", PEER)?;
    ensure!(answer.status() == Some(200), "{}", answer.text);
    let held = client.ws.recv_type("CALL_HELD", REPLY).await?;
    ensure!(held["by"] == "REMOTE", "{held}");
    client
        .ws
        .expect_no_message(Duration::from_millis(500))
        .await?;
    ensure!(gateway.status()?["calls"] == 1);
    hang_up_with_sipp(client, &call_id, &sipp, &gateway).await
}

#[tokio::test]
async fn call_whose_far_end_vanished_is_ended() -> anyhow::Result<()> {
    let sipp = Sipp::uas(UasScenario::Answer, SippOptions::default())?;
    let gateway = Gateway::start(&direct_config(&sipp, "dialog_keepalive_ms = 500\n"))?;
    let mut client = Client::start(&gateway, "alice", "x").await?;
    let call_id = client.started_call("3000").await?;
    // The callee disappears without a BYE.
    sipp.stop()?;
    // Keepalive 0.5 s, then the OPTIONS transaction times out (64 × T1).
    let finished = client
        .ws
        .recv_type("CALL_FINISHED", Duration::from_secs(20))
        .await?;
    ensure!(finished["callId"] == call_id.as_str(), "{finished}");
    client.ws.close().await?;
    assert_nothing_held(&gateway)
}

#[tokio::test]
async fn dropping_the_socket_ends_every_call_of_the_session() -> anyhow::Result<()> {
    let BaresipLine {
        mut client,
        gateway,
        baresip,
        kamailio,
    } = BaresipLine::start("2000", true, "udp", "").await?;
    for _ in 0..2 {
        let call_id = client.call("2000").await?;
        let (_, started) = client.after_progress().await?;
        ensure!(
            started["callId"] == call_id.as_str() && started["type"] == "CALL_STARTED",
            "{started}"
        );
        baresip.wait_call_established(PEER)?;
    }
    ensure!(gateway.status()?["calls"] == 2);
    client.ws.drop_abruptly();
    baresip.wait_call_closed(PEER)?;
    baresip.wait_call_closed(PEER)?;
    wait_until(CLEANUP, || Ok(kamailio.contacts("1001")?.is_empty()))
        .context("registration left behind")?;
    assert_nothing_held(&gateway)
}

#[tokio::test]
async fn session_timer_refreshed_by_the_callee_is_honoured_and_its_expiry_ends_the_call(
) -> anyhow::Result<()> {
    // The callee asks for a 3 s session it refreshes; it refreshes once at
    // 1.5 s, then stops. The gateway must keep the call past the first
    // expiry (2 s) and end it after the refreshed one (3.5 s): a BYE during
    // the callee's second pause would fail its scenario.
    let sipp = Sipp::uas(UasScenario::SessionTimer, SippOptions::default())?;
    let gateway = Gateway::start(&direct_config(&sipp, ""))?;
    let mut client = Client::start(&gateway, "alice", "x").await?;
    let call_id = client.started_call("3000").await?;
    let finished = client
        .ws
        .recv_type("CALL_FINISHED", Duration::from_secs(15))
        .await?;
    ensure!(finished["callId"] == call_id.as_str(), "{finished}");
    sipp.wait_success(PEER)
        .context("the session ended at the wrong time")?;
    client.ws.close().await?;
    assert_nothing_held(&gateway)
}

#[tokio::test]
async fn digits_cross_as_rfc_4733_both_ways_with_baresip() -> anyhow::Result<()> {
    let BaresipLine {
        mut client,
        gateway,
        baresip,
        kamailio: _kamailio,
    } = BaresipLine::start("2000", true, "udp", "").await?;
    let call_id = client.started_call("2000").await?;
    baresip.wait_call_established(PEER)?;

    client
        .send(json!({"type": "SEND_DTMF_SIGNAL", "callId": call_id, "dtmfString": "123#*0"}))
        .await?;
    let sent: Vec<char> = "123#*0".chars().collect();
    wait_until(PEER, || Ok(baresip.received_dtmf().len() >= sent.len()))
        .with_context(|| format!("baresip received {:?}", baresip.received_dtmf()))?;
    ensure!(
        baresip.received_dtmf() == sent,
        "baresip received {:?}",
        baresip.received_dtmf()
    );
    ensure!(
        baresip.count_log("received event: '#'") > 0 && baresip.count_log("received DTMF") == 0,
        "digits should arrive as RFC 4733 events, not SIP INFO"
    );

    baresip.send_dtmf("59")?;
    for expected in ["5", "9"] {
        let digit = client.expect("DTMF_RECEIVED", &call_id).await?;
        ensure!(
            digit["digit"] == expected && digit["method"] == "RFC4733",
            "{digit}"
        );
    }
    client.hangup(&call_id).await?;
    client.expect("CALL_FINISHED", &call_id).await?;
    client.ws.close().await?;
    assert_nothing_held(&gateway)
}

#[tokio::test]
async fn digits_go_as_sip_info_when_the_far_end_offers_no_telephone_event() -> anyhow::Result<()> {
    let sipp = Sipp::uas(UasScenario::AnswerNoTelephoneEvent, SippOptions::default())?;
    let gateway = Gateway::start(&direct_config(&sipp, ""))?;
    let mut client = Client::start(&gateway, "alice", "x").await?;
    let call_id = client.started_call("3000").await?;
    client
        .send(json!({"type": "SEND_DTMF_SIGNAL", "callId": call_id, "dtmfString": "5#"}))
        .await?;
    wait_until(PEER, || Ok(sipp.received_requests("INFO").len() >= 2))
        .context("the callee did not get two INFOs")?;
    let signals: Vec<String> = sipp
        .received_requests("INFO")
        .iter()
        .map(|info| {
            info.body()
                .trim()
                .lines()
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    ensure!(
        signals == ["Signal=5", "Signal=#"],
        "INFO bodies {signals:?}"
    );
    hang_up_with_sipp(client, &call_id, &sipp, &gateway).await
}

#[tokio::test]
async fn far_end_on_hold_sending_nothing_is_not_taken_for_dead() -> anyhow::Result<()> {
    // The callee answers, puts the call on hold (`a=inactive`) 500 ms later, and never sends RTP.
    let sipp = Sipp::uas(UasScenario::AnswerThenInactive, SippOptions::default())?;
    let gateway = Gateway::start(&format!(
        "{}[media]\nrtp_timeout_ms = 1500\n",
        direct_config(&sipp, "")
    ))?;
    let mut client = Client::start(&gateway, "alice", "x").await?;
    let call_id = client.started_call("3000").await?;
    let held = client.ws.recv_type("CALL_HELD", REPLY).await?;
    ensure!(held["by"] == "REMOTE", "{held}");
    // Three RTP timeouts of silence on hold: the call stays up.
    client
        .ws
        .expect_no_message(Duration::from_millis(4500))
        .await?;
    hang_up_with_sipp(client, &call_id, &sipp, &gateway).await
}

#[tokio::test]
async fn call_without_rtp_from_the_far_end_fails_with_media_failed() -> anyhow::Result<()> {
    // SIPp's answering callee sends no RTP at all.
    let sipp = Sipp::uas(UasScenario::Answer, SippOptions::default())?;
    let gateway = Gateway::start(&format!(
        "{}[media]\nrtp_timeout_ms = 1500\n",
        direct_config(&sipp, "")
    ))?;
    let mut client = Client::start(&gateway, "alice", "x").await?;
    let call_id = client.started_call("3000").await?;
    let failed = client.expect("CALL_FAILED", &call_id).await?;
    ensure!(failed["reason"] == "MEDIA_FAILED", "{failed}");
    sipp.wait_success(PEER)
        .context("the callee should get a BYE")?;
    client.ws.close().await?;
    assert_nothing_held(&gateway)
}

/// HOLD_CALL and RESUME_CALL as baresip sees them: a re-INVITE whose SDP says `sendonly`
/// (baresip answers `recvonly` and stops sending), the audio stopping both ways, and back.
#[tokio::test]
async fn hold_and_resume_stop_and_restart_the_audio_both_ways() -> anyhow::Result<()> {
    use dialtone_tests::rtp_peer::{dominant_hz, start_rtp_call, RtpPeer};
    let kamailio = Kamailio::start(KamailioOptions::default())?;
    let gateway = Gateway::start(&registrar_config(&kamailio, "udp", ""))?;
    let callee = Baresip::start(BaresipOptions {
        account: Some(BaresipAccount::rig_user("2000", kamailio.sip_addr())?),
        auto_answer: true,
        ..Default::default()
    })?;
    let (mut ws, session_id) =
        WsClient::start_session(&gateway.ws_url(), "1001", "secret1001").await?;
    let peer = RtpPeer::bind(dialtone_codecs::Codec::Pcmu).await?;
    let (call_id, point) = start_rtp_call(&mut ws, &session_id, "2000", &peer).await?;
    callee.wait_call_established(REPLY)?;
    let before = peer.exchange(point, 1000.0, 2.0, 0).await?;
    let heard = dominant_hz(&before, 8000)?;
    ensure!((heard - 440.0).abs() < 15.0, "before the hold: {heard} Hz");

    // Held by the client: baresip gets an offer (ours says sendonly), answers it and stops
    // sending; the client's audio no longer reaches it.
    let mark = callee.event_mark();
    ws.send_json(&json!({"type": "HOLD_CALL", "sessionId": session_id, "callId": call_id}))
        .await?;
    let held = ws.recv_type("CALL_HELD", REPLY).await?;
    ensure!(held["by"] == "LOCAL", "{held}");
    let offer = callee.wait_event_since(mark, |e| e["type"] == "CALL_REMOTE_SDP", REPLY)?;
    ensure!(offer["param"] == "offer", "{offer}");
    let during = peer.exchange(point, 1000.0, 2.0, 0).await?;
    let during = during.get(4000..).unwrap_or_default();
    ensure!(
        during.iter().all(|sample| sample.unsigned_abs() < 100),
        "the client still hears the far end while it holds it"
    );
    ws.send_json(&json!({"type": "HOLD_CALL", "sessionId": session_id, "callId": call_id}))
        .await?;
    ensure!(ws.recv_type("ERROR", REPLY).await?["code"] == "INVALID_STATE");

    ws.send_json(&json!({"type": "RESUME_CALL", "sessionId": session_id, "callId": call_id}))
        .await?;
    let resumed = ws.recv_type("CALL_RESUMED", REPLY).await?;
    ensure!(resumed["by"] == "LOCAL", "{resumed}");
    let after = peer.exchange(point, 1000.0, 2.0, 0).await?;
    let heard = dominant_hz(&after, 8000)?;
    ensure!((heard - 440.0).abs() < 15.0, "after the resume: {heard} Hz");

    // Held by the far end (baresip's own hold): reported, and back.
    callee.command_ok("hold", "")?;
    let held = ws.recv_type("CALL_HELD", REPLY).await?;
    ensure!(held["by"] == "REMOTE", "{held}");
    callee.command_ok("resume", "")?;
    let resumed = ws.recv_type("CALL_RESUMED", REPLY).await?;
    ensure!(resumed["by"] == "REMOTE", "{resumed}");
    ws.send_json(&json!({"type": "HANGUP_CALL", "sessionId": session_id, "callId": call_id}))
        .await?;
    ws.recv_type("CALL_FINISHED", REPLY).await?;
    ws.close().await?;
    gateway.wait_all_released(REPLY)?;
    Ok(())
}

/// TRANSFER_CALL: the client hands its far end (baresip A) over to another phone (baresip B)
/// with a REFER; A calls B through Kamailio, tells the gateway how it goes (NOTIFY sipfrag),
/// and once B answered the client's call ends.
#[tokio::test]
async fn a_blind_transfer_hands_the_far_end_to_another_phone() -> anyhow::Result<()> {
    use dialtone_tests::rtp_peer::{start_rtp_call, RtpPeer};
    let kamailio = Kamailio::start(KamailioOptions::default())?;
    let gateway = Gateway::start(&registrar_config(&kamailio, "udp", ""))?;
    let phone = |user: &str| {
        Baresip::start(BaresipOptions {
            account: Some(BaresipAccount::rig_user(user, kamailio.sip_addr())?),
            auto_answer: true,
            ..Default::default()
        })
    };
    let first = phone("2000")?;
    let second = phone("load1")?;
    let (mut ws, session_id) =
        WsClient::start_session(&gateway.ws_url(), "1001", "secret1001").await?;
    let peer = RtpPeer::bind(dialtone_codecs::Codec::Pcmu).await?;
    let (call_id, _) = start_rtp_call(&mut ws, &session_id, "2000", &peer).await?;
    first.wait_call_established(REPLY)?;

    ws.send_json(&json!({"type": "TRANSFER_CALL", "sessionId": session_id, "callId": call_id, "target": "load1"}))
        .await?;
    // The REFER's 202 and the first NOTIFY may cross: the stages are told apart.
    let (mut refer, mut statuses) = (Vec::new(), Vec::new());
    loop {
        let message = ws.recv_json(REPLY).await?;
        match (message["type"].as_str(), message["stage"].as_str()) {
            (Some("TRANSFER_PROGRESS"), Some("REFER")) => refer.push(message["sipStatus"].clone()),
            (Some("TRANSFER_PROGRESS"), Some("CALL")) => {
                statuses.push(message["sipStatus"].as_u64().unwrap_or(0))
            }
            (Some("CALL_FINISHED"), _) => break,
            _ => anyhow::bail!("unexpected {message}"),
        }
    }
    ensure!(refer == [json!(202)], "REFER answered {refer:?}");
    ensure!(
        statuses.last() == Some(&200),
        "NOTIFY statuses {statuses:?}"
    );
    second.wait_call_established(REPLY)?;
    ws.close().await?;
    gateway.wait_all_released(REPLY)?;
    Ok(())
}
