//! RFC 3263 routing against real peers: the registrar and proxy are named by a domain whose
//! NAPTR / SRV / A records a private dnsmasq serves on 127.0.0.1. The first SRV target
//! (priority 10) is dead (nothing listens) or answers 503 (SIPp); the second (priority 20) is
//! the rig's Kamailio, in front of a SIPp callee. REGISTER and INVITE must reach Kamailio.
//! How long each failover took is printed, not asserted tightly.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use dialtone_tests::dnsmasq::{DnsRecords, Dnsmasq};
use dialtone_tests::gateway::{Gateway, LOOPBACK};
use dialtone_tests::kamailio::{Kamailio, KamailioOptions};
use dialtone_tests::ports::free_port;
use dialtone_tests::sipp::{Sipp, SippOptions, UasScenario};
use dialtone_tests::ws_client::WsClient;
use serde_json::{json, Value};

const REPLY: Duration = Duration::from_secs(10);
const PEER: Duration = Duration::from_secs(10);
/// `[sip] failover_timeout_ms` in these tests.
const FAILOVER_MS: u64 = 1000;
/// What a REGISTER or INVITE may take with one failover: the failover timeout, Kamailio's
/// challenge, and a wide margin for a busy machine. The registrar timeout (5 s) bounds the
/// REGISTER anyway; this only catches a failover that waits for the full transaction timeout.
const FAILED_OVER_WITHIN: Duration = Duration::from_millis(FAILOVER_MS + 3000);

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

fn gateway_config(dns: &Dnsmasq, registrar: &str, calls_proxy: Option<&str>) -> String {
    let calls = calls_proxy
        .map(|proxy| format!("[calls]\nproxy = \"{proxy}\"\n"))
        .unwrap_or_default();
    format!(
        r#"{LOOPBACK}t1_ms = 100
dns_servers = ["{}"]
failover_timeout_ms = {FAILOVER_MS}
[registrar]
address = "{registrar}"
timeout_ms = 5000
{calls}"#,
        dns.addr()
    )
}

/// START_SESSION as 1001; how long SESSION_STARTED took.
async fn start_session(gateway: &Gateway) -> anyhow::Result<(WsClient, String, Duration)> {
    let began = Instant::now();
    let (ws, session_id) = WsClient::start_session(&gateway.ws_url(), "1001", "secret1001").await?;
    Ok((ws, session_id, began.elapsed()))
}

/// START_CALL to 3000 (Kamailio's fixed callee) up to CALL_STARTED; the callId and how long it
/// took.
async fn call_3000(ws: &mut WsClient, session_id: &str) -> anyhow::Result<(String, Duration)> {
    let began = Instant::now();
    let call_id = ws
        .start_call(
            &json!({"type": "START_CALL", "sessionId": session_id, "bUri": "3000"}),
            REPLY,
        )
        .await?;
    let started = ws
        .recv_type_skipping("CALL_STARTED", &["CALL_STARTING"], REPLY)
        .await?;
    ensure!(started["callId"] == call_id.as_str(), "{started}");
    Ok((call_id, began.elapsed()))
}

async fn hang_up(ws: &mut WsClient, session_id: &str, call_id: &str) -> anyhow::Result<Value> {
    ws.send_json(&json!({"type": "HANGUP_CALL", "sessionId": session_id, "callId": call_id}))
        .await?;
    ws.recv_type("CALL_FINISHED", REPLY).await
}

#[tokio::test]
async fn register_and_call_fail_over_from_a_dead_server() -> anyhow::Result<()> {
    let callee = Sipp::uas(UasScenario::Answer, SippOptions::default())?;
    let kamailio = Kamailio::start(KamailioOptions {
        fixed_callee: Some(callee.sip_addr()),
        ..KamailioOptions::default()
    })?;
    // Nothing listens there: a server that is down.
    let dead_port = free_port();
    let dns = Dnsmasq::start(
        &DnsRecords::default()
            .naptr(
                "dialtone.test",
                10,
                10,
                "SIP+D2U",
                "_sip._udp.dialtone.test",
            )
            .dead_then_live(dead_port, kamailio.sip_port()),
    )?;
    let gateway = Gateway::start(&gateway_config(&dns, "sip:dialtone.test", None))?;

    let (mut ws, session_id, registered_in) = start_session(&gateway).await?;
    println!("REGISTER failed over from a dead server in {registered_in:?}");
    ensure!(
        !kamailio.contacts("1001")?.is_empty(),
        "Kamailio holds no binding for 1001"
    );
    ensure!(
        gateway.count_log("fails over") >= 1,
        "the gateway logged no failover"
    );
    ensure!(
        registered_in < FAILED_OVER_WITHIN,
        "REGISTER took {registered_in:?}"
    );
    // RFC 3263 all the way: NAPTR, then SRV, then the targets' addresses.
    for query in [
        "query[NAPTR] dialtone.test",
        "query[SRV] _sip._udp.dialtone.test",
        "query[A] live.dialtone.test",
    ] {
        ensure!(
            dns.count_log(query) >= 1,
            "no {query:?} in\n{}",
            dns.log_text()
        );
    }

    let (call_id, started_in) = call_3000(&mut ws, &session_id).await?;
    println!("INVITE failed over from a dead server in {started_in:?} (to CALL_STARTED)");
    ensure!(
        callee.received_requests("INVITE").len() == 1,
        "the callee did not get the INVITE once"
    );
    ensure!(
        started_in < FAILED_OVER_WITHIN,
        "the call took {started_in:?}"
    );
    hang_up(&mut ws, &session_id, &call_id).await?;
    callee.wait_success(PEER)?;
    ws.close().await?;
    Ok(())
}

#[tokio::test]
async fn a_503_sends_register_and_invite_to_the_next_server() -> anyhow::Result<()> {
    let callee = Sipp::uas(UasScenario::Answer, SippOptions::default())?;
    let kamailio = Kamailio::start(KamailioOptions {
        fixed_callee: Some(callee.sip_addr()),
        ..KamailioOptions::default()
    })?;
    let registrar_503 = Sipp::uas(UasScenario::RegisterUnavailable, SippOptions::default())?;
    let proxy_503 = Sipp::uas(UasScenario::Unavailable, SippOptions::default())?;
    // No NAPTR: the registrar's domain is found by its SRV records. The calls' proxy names
    // its transport, which also skips NAPTR.
    let dns = Dnsmasq::start(
        &DnsRecords::default()
            .srv(
                "_sip._udp.dialtone.test",
                "busy.dialtone.test",
                registrar_503.sip_addr().port(),
                10,
                10,
            )
            .srv(
                "_sip._udp.dialtone.test",
                "live.dialtone.test",
                kamailio.sip_port(),
                20,
                10,
            )
            .srv(
                "_sip._udp.calls.dialtone.test",
                "busy.dialtone.test",
                proxy_503.sip_addr().port(),
                10,
                10,
            )
            .srv(
                "_sip._udp.calls.dialtone.test",
                "live.dialtone.test",
                kamailio.sip_port(),
                20,
                10,
            )
            .host("busy.dialtone.test", LOCALHOST)
            .host("live.dialtone.test", LOCALHOST),
    )?;
    let gateway = Gateway::start(&gateway_config(
        &dns,
        "sip:dialtone.test",
        Some("sip:calls.dialtone.test;transport=udp"),
    ))?;

    let (mut ws, session_id, registered_in) = start_session(&gateway).await?;
    println!("REGISTER failed over after a 503 in {registered_in:?}");
    registrar_503
        .wait_success(PEER)
        .context("the first registrar did not get the REGISTER")?;
    ensure!(
        !kamailio.contacts("1001")?.is_empty(),
        "Kamailio holds no binding for 1001"
    );

    let (call_id, started_in) = call_3000(&mut ws, &session_id).await?;
    println!("INVITE failed over after a 503 in {started_in:?} (to CALL_STARTED)");
    proxy_503
        .wait_success(PEER)
        .context("the first proxy did not get (and ACK) the INVITE")?;
    ensure!(
        callee.received_requests("INVITE").len() == 1,
        "the callee did not get the INVITE once"
    );
    // Same Call-ID on both servers: one request retried (RFC 3263 section 4.3).
    let first = proxy_503.received_requests("INVITE");
    let second = callee.received_requests("INVITE");
    let call_id_of = |messages: &[dialtone_tests::TracedMessage]| {
        messages
            .first()
            .and_then(|m| m.header("Call-ID").map(str::to_string))
    };
    let (first, second) = (call_id_of(&first), call_id_of(&second));
    ensure!(
        first.is_some() && first == second,
        "Call-IDs differ: {first:?} vs {second:?}"
    );
    hang_up(&mut ws, &session_id, &call_id).await?;
    callee.wait_success(PEER)?;
    ws.close().await?;
    Ok(())
}

#[tokio::test]
async fn a_call_hung_up_while_ringing_is_cancelled_where_it_went() -> anyhow::Result<()> {
    // INVITE → 100, 180; CANCEL → 200, 487: the scenario only completes if our CANCEL
    // reaches it through the server the INVITE went to (not the domain's own host, which
    // has no address here).
    let callee = Sipp::uas(UasScenario::RingForever, SippOptions::default())?;
    let kamailio = Kamailio::start(KamailioOptions {
        fixed_callee: Some(callee.sip_addr()),
        ..KamailioOptions::default()
    })?;
    let dead_port = free_port();
    let dns =
        Dnsmasq::start(&DnsRecords::default().dead_then_live(dead_port, kamailio.sip_port()))?;
    let gateway = Gateway::start(&gateway_config(&dns, "sip:dialtone.test", None))?;
    let (mut ws, session_id, _) = start_session(&gateway).await?;
    let call_id = ws
        .start_call(
            &json!({"type": "START_CALL", "sessionId": session_id, "bUri": "3000"}),
            REPLY,
        )
        .await?;
    loop {
        let progress = ws.recv_type("CALL_STARTING", REPLY).await?;
        if progress["stage"] == "RINGING" {
            break;
        }
    }
    hang_up(&mut ws, &session_id, &call_id).await?;
    callee
        .wait_success(PEER)
        .context("the ringing callee did not get our CANCEL")?;
    ws.close().await?;
    Ok(())
}
