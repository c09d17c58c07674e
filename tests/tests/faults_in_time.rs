//! Faults reported in time (issue 14): a callee that dies mid-call, a
//! HANGUP_CALL or CLOSE_SESSION toward one, and a registration that lapses
//! reach the client when they happen. A dead far end answers no BYE, and
//! the gateway used to make the client wait for that BYE's transaction
//! (64 × T1) before saying anything; it must still send the BYE, and free
//! every port, dialog and transaction afterwards.
//!
//! T1 is 250 ms here, so the BYE to a dead far end takes 16 s to time out:
//! short enough for the tests to clean up, long enough that waiting for it
//! cannot pass for "at once" (the media timeouts are 2 s and 4 s).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use dialtone_tests::baresip::{Baresip, BaresipAccount, BaresipOptions};
use dialtone_tests::gateway::{Gateway, LOOPBACK};
use dialtone_tests::kamailio::{Kamailio, KamailioOptions};
use dialtone_tests::ports::free_port;
use dialtone_tests::process::Logged;
use dialtone_tests::sipp::{Sipp, SippOptions, UasScenario};
use dialtone_tests::ws_client::WsClient;
use serde_json::{json, Value};

const REPLY: Duration = Duration::from_secs(10);
const PEER: Duration = Duration::from_secs(10);
/// 64 × T1 with `t1_ms = 250`: how long the BYE to a dead callee lasts.
const BYE_TIMEOUT: Duration = Duration::from_secs(16);
/// Cleanup waits for that BYE to time out, with room to spare.
const CLEANUP: Duration = Duration::from_secs(45);
/// What "at once" may take on a shared, loaded machine.
const MARGIN: Duration = Duration::from_secs(3);

fn config(kamailio: &Kamailio, rtp_timeout: Duration, registrar_extra: &str) -> String {
    format!(
        r#"
{LOOPBACK}t1_ms = 250
[registrar]
address = "sip:127.0.0.1:{};transport=udp"
timeout_ms = 3000
{registrar_extra}
[media]
rtp_timeout_ms = {}
"#,
        kamailio.sip_port(),
        rtp_timeout.as_millis()
    )
}

fn assert_nothing_held(gateway: &Gateway) -> anyhow::Result<()> {
    gateway.wait_all_released(CLEANUP)
}

/// A started call from session 1001 to baresip 2000 (through Kamailio)
/// whose audio reached the gateway, after which baresip was killed by its
/// PID: no BYE, no more RTP, no answer to anything.
struct DeadCallee {
    ws: WsClient,
    session_id: String,
    call_id: String,
    killed: Instant,
    gateway: Gateway,
    kamailio: Kamailio,
    _baresip: Baresip,
}

impl DeadCallee {
    async fn start(rtp_timeout: Duration) -> anyhow::Result<DeadCallee> {
        let kamailio = Kamailio::start(KamailioOptions::default())?;
        let mut baresip = Baresip::start(BaresipOptions {
            account: Some(BaresipAccount::rig_user("2000", kamailio.sip_addr())?),
            auto_answer: true,
            ..Default::default()
        })?;
        let gateway = Gateway::start(&config(&kamailio, rtp_timeout, ""))?;
        let (mut ws, session_id) =
            WsClient::start_session(&gateway.ws_url(), "1001", "secret1001").await?;
        let call_id = ws
            .start_call(
                &json!({"type": "START_CALL", "sessionId": session_id, "bUri": "2000"}),
                REPLY,
            )
            .await?;
        let started = ws
            .recv_type_skipping("CALL_STARTED", &["CALL_STARTING"], REPLY)
            .await?;
        ensure!(started["callId"] == call_id.as_str(), "{started}");
        baresip.wait_call_established(PEER)?;
        // The far end's audio flows: what stops is media that was there.
        gateway
            .wait_media_received(&call_id, PEER)
            .context("no RTP from baresip reached the gateway")?;
        baresip.kill_hard()?;
        Ok(DeadCallee {
            ws,
            session_id,
            call_id,
            killed: Instant::now(),
            gateway,
            kamailio,
            _baresip: baresip,
        })
    }

    /// The gateway sent a BYE toward the dead callee (Kamailio logs every
    /// request it receives).
    fn bye_went_out(&self) -> anyhow::Result<()> {
        self.kamailio
            .wait_for_log("REQ BYE ", PEER)
            .context("no BYE reached the proxy")?;
        Ok(())
    }
}

#[tokio::test]
async fn killed_callee_is_reported_as_soon_as_the_media_timeout_fires() -> anyhow::Result<()> {
    let rtp_timeout = Duration::from_secs(2);
    let mut line = DeadCallee::start(rtp_timeout).await?;
    let failed = line
        .ws
        .recv_type("CALL_FAILED", rtp_timeout + BYE_TIMEOUT + REPLY)
        .await?;
    let elapsed = line.killed.elapsed();
    ensure!(
        failed["callId"] == line.call_id.as_str() && failed["reason"] == "MEDIA_FAILED",
        "{failed}"
    );
    // Before: the RTP timeout, then the BYE's 64 × T1 (18 s here).
    ensure!(
        elapsed < rtp_timeout + MARGIN,
        "CALL_FAILED came {elapsed:?} after the callee died; the media timeout is {rtp_timeout:?}"
    );
    line.bye_went_out()?;
    // The call's ports and task are gone at once; the dialog stays while
    // the SIP side waits for an answer to its BYE.
    line.gateway
        .wait_released(&["calls", "mediaPorts"], MARGIN)?;
    let status = line.gateway.status()?;
    ensure!(
        status["sipDialogs"]
            .as_u64()
            .is_some_and(|dialogs| dialogs > 0),
        "the BYE should still be under way: {status}"
    );
    line.ws.close().await?;
    assert_nothing_held(&line.gateway)
}

#[tokio::test]
async fn hangup_toward_a_callee_that_died_finishes_at_once() -> anyhow::Result<()> {
    let rtp_timeout = Duration::from_secs(4);
    let mut line = DeadCallee::start(rtp_timeout).await?;
    let hangup = Instant::now();
    line.ws
        .send_json(
            &json!({"type": "HANGUP_CALL", "sessionId": line.session_id, "callId": line.call_id}),
        )
        .await?;
    // Strictly the next message. Before: the BYE waited 16 s, and the RTP
    // timeout firing meanwhile made it CALL_FAILED MEDIA_FAILED.
    let reply = line.ws.recv_json(rtp_timeout + BYE_TIMEOUT + REPLY).await?;
    let elapsed = hangup.elapsed();
    ensure!(
        reply["type"] == "CALL_FINISHED" && reply["callId"] == line.call_id.as_str(),
        "{reply} ({elapsed:?} after HANGUP_CALL)"
    );
    ensure!(
        elapsed < MARGIN,
        "CALL_FINISHED came {elapsed:?} after HANGUP_CALL"
    );
    line.bye_went_out()?;
    // The call is over: a second HANGUP_CALL finds none.
    line.ws
        .send_json(
            &json!({"type": "HANGUP_CALL", "sessionId": line.session_id, "callId": line.call_id}),
        )
        .await?;
    let error = line.ws.recv_type("ERROR", REPLY).await?;
    ensure!(error["code"] == "UNKNOWN_CALL", "{error}");
    line.ws.close().await?;
    assert_nothing_held(&line.gateway)
}

#[tokio::test]
async fn closing_the_session_of_a_call_whose_callee_died_is_prompt() -> anyhow::Result<()> {
    let rtp_timeout = Duration::from_secs(4);
    let mut line = DeadCallee::start(rtp_timeout).await?;
    let close = Instant::now();
    line.ws
        .send_json(&json!({"type": "CLOSE_SESSION", "sessionId": line.session_id}))
        .await?;
    let reply = line.ws.recv_json(rtp_timeout + BYE_TIMEOUT + REPLY).await?;
    ensure!(
        reply["type"] == "CALL_FINISHED" && reply["callId"] == line.call_id.as_str(),
        "{reply} ({:?} after CLOSE_SESSION)",
        close.elapsed()
    );
    let closed = line.ws.recv_type("SESSION_CLOSED", REPLY).await?;
    let elapsed = close.elapsed();
    ensure!(closed["sessionId"] == line.session_id.as_str(), "{closed}");
    ensure!(
        elapsed < MARGIN,
        "SESSION_CLOSED came {elapsed:?} after CLOSE_SESSION"
    );
    ensure!(
        line.kamailio.contacts("1001")?.is_empty(),
        "the session should have unregistered"
    );
    line.bye_went_out()?;
    line.ws.close().await?;
    assert_nothing_held(&line.gateway)
}

/// The next message, which must be `kind` for this session.
async fn expect_session_message(
    ws: &mut WsClient,
    kind: &str,
    session_id: &str,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let message = ws.recv_type(kind, timeout).await?;
    ensure!(message["sessionId"] == session_id, "{message}");
    Ok(message)
}

#[tokio::test]
async fn lapsed_registration_is_reported_and_so_is_its_return() -> anyhow::Result<()> {
    let expires = Duration::from_secs(2);
    let mut kamailio = Kamailio::start(KamailioOptions::default())?;
    let port = kamailio.sip_port();
    let registrar = format!("expires_secs = {}\n", expires.as_secs());
    let mut gateway_config = config(&kamailio, Duration::from_secs(30), &registrar);
    // The refreshes of a dead registrar fail quickly.
    gateway_config = gateway_config.replace("timeout_ms = 3000", "timeout_ms = 500");
    let gateway = Gateway::start(&gateway_config)?;
    let (mut ws, session_id) =
        WsClient::start_session(&gateway.ws_url(), "1001", "secret1001").await?;
    let marker = format!("dt-{session_id}");
    ensure!(kamailio
        .contacts("1001")?
        .iter()
        .any(|c| c.contains(&marker)));

    // The registrar goes away (by its PID) mid-session.
    kamailio.stop()?;
    let stopped = Instant::now();
    // Before: nothing at all was said, however long the client waited.
    let lost =
        expect_session_message(&mut ws, "REGISTRATION_LOST", &session_id, expires + REPLY).await?;
    let elapsed = stopped.elapsed();
    ensure!(lost["reason"] == "TIMEOUT", "{lost}");
    ensure!(
        elapsed < expires + MARGIN,
        "REGISTRATION_LOST came {elapsed:?} after the registrar stopped; the binding lasted {expires:?}"
    );
    gateway
        .wait_released(&["registrations"], MARGIN)
        .context("a lapsed registration is not counted")?;
    ensure!(gateway.status()?["sessions"] == 1, "the session stays");

    // The registrar comes back where it was: a retry registers again.
    let kamailio = Kamailio::start(KamailioOptions {
        sip_port: Some(port),
        ..Default::default()
    })?;
    // Retries back off 1, 2, 4, 8 s ...: within 30 s of the restart.
    expect_session_message(
        &mut ws,
        "REGISTRATION_RESTORED",
        &session_id,
        Duration::from_secs(40),
    )
    .await?;
    ensure!(kamailio
        .contacts("1001")?
        .iter()
        .any(|c| c.contains(&marker)));
    ensure!(gateway.status()?["registrations"] == 1);

    ws.send_json(&json!({"type": "CLOSE_SESSION", "sessionId": session_id}))
        .await?;
    expect_session_message(&mut ws, "SESSION_CLOSED", &session_id, REPLY).await?;
    ensure!(
        kamailio.contacts("1001")?.is_empty(),
        "a restored binding is removed on close"
    );
    ws.close().await?;
    assert_nothing_held(&gateway)
}

#[tokio::test]
async fn a_200_crossing_the_cancel_still_gets_its_ack_and_bye() -> anyhow::Result<()> {
    // The client is told at once and the call's task ends before the 200
    // arrives: the SIP side alone must ACK and BYE it. Through Kamailio,
    // whose user 3000 is the SIPp callee.
    let sipp_port = free_port();
    let kamailio = Kamailio::start(KamailioOptions {
        fixed_callee: Some(SocketAddr::from(([127, 0, 0, 1], sipp_port))),
        ..Default::default()
    })?;
    let sipp = Sipp::uas(
        UasScenario::AnswerCrossingCancel,
        SippOptions {
            sip_port: Some(sipp_port),
            ..Default::default()
        },
    )?;
    let gateway = Gateway::start(&config(&kamailio, Duration::from_secs(30), ""))?;
    let (mut ws, session_id) =
        WsClient::start_session(&gateway.ws_url(), "1001", "secret1001").await?;
    let call_id = ws
        .start_call(
            &json!({"type": "START_CALL", "sessionId": session_id, "bUri": "3000"}),
            REPLY,
        )
        .await?;
    let ringing = ws.recv_type("CALL_STARTING", REPLY).await?;
    ensure!(ringing["stage"] == "RINGING", "{ringing}");
    ws.send_json(&json!({"type": "HANGUP_CALL", "sessionId": session_id, "callId": call_id}))
        .await?;
    let finished = ws.recv_json(REPLY).await?;
    ensure!(
        finished["type"] == "CALL_FINISHED" && finished["callId"] == call_id.as_str(),
        "{finished}"
    );
    sipp.wait_success(PEER)
        .context("the callee's 200 should be ACKed and BYEd")?;
    // Nothing about the crossing 200 reaches the client.
    ws.expect_no_message(Duration::from_millis(500)).await?;
    ws.close().await?;
    assert_nothing_held(&gateway)
}
