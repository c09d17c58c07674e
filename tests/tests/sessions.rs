//! Sessions against a real Kamailio registrar: START_SESSION registers,
//! CLOSE_SESSION / a dropped socket / a ping timeout unregister, bad
//! credentials and a dead registrar fail the right way, and nothing is
//! left behind.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use dialtone_tests::gateway::{Gateway, LOOPBACK};
use dialtone_tests::kamailio::{DigestAlgorithm, Kamailio, KamailioOptions};
use dialtone_tests::process::Logged;
use dialtone_tests::wait::wait_until;
use dialtone_tests::ws_client::WsClient;
use serde_json::{json, Value};

const REPLY: Duration = Duration::from_secs(10);
const CLEANUP: Duration = Duration::from_secs(20);

fn kamailio(algorithm: DigestAlgorithm) -> anyhow::Result<Kamailio> {
    Kamailio::start(KamailioOptions {
        algorithm,
        ..Default::default()
    })
}

fn registrar_config(registrar: &str, extra: &str) -> String {
    format!(
        r#"
{LOOPBACK}[registrar]
address = "{registrar}"
expires_secs = 120
timeout_ms = 3000
{extra}
"#
    )
}

fn gateway_for(kamailio: &Kamailio, transport: &str) -> anyhow::Result<Gateway> {
    let address = format!(
        "sip:127.0.0.1:{};transport={transport}",
        kamailio.sip_port()
    );
    Gateway::start(&registrar_config(&address, ""))
}

fn start_session(username: &str, password: &str) -> Value {
    json!({"type": "START_SESSION", "username": username, "password": password})
}

async fn connect(gateway: &Gateway) -> anyhow::Result<WsClient> {
    let mut client = WsClient::connect(&gateway.ws_url()).await?;
    client.recv_type("CONNECTED", REPLY).await?;
    Ok(client)
}

/// Starts a session and returns its id.
async fn started(client: &mut WsClient, username: &str, password: &str) -> anyhow::Result<String> {
    client.send_json(&start_session(username, password)).await?;
    let reply = client.recv_type("SESSION_STARTED", REPLY).await?;
    reply["sessionId"]
        .as_str()
        .map(str::to_string)
        .context("SESSION_STARTED without sessionId")
}

fn contacts_for_session(
    kamailio: &Kamailio,
    user: &str,
    session_id: &str,
) -> anyhow::Result<usize> {
    let marker = format!("dt-{session_id}");
    Ok(kamailio
        .contacts(user)?
        .iter()
        .filter(|contact| contact.contains(&marker))
        .count())
}

/// The gateway's live counts all back to zero: no connection, session,
/// registration, task or SIP transaction left.
fn assert_nothing_held(gateway: &Gateway) -> anyhow::Result<()> {
    let keys = [
        "wsConnections",
        "sessions",
        "registrations",
        "tasks",
        "sipTransactions",
    ];
    gateway.wait_released(&keys, CLEANUP)
}

async fn registers_then_close_session_unregisters(
    algorithm: DigestAlgorithm,
    transport: &str,
) -> anyhow::Result<()> {
    let kamailio = kamailio(algorithm)?;
    let gateway = gateway_for(&kamailio, transport)?;
    let mut client = connect(&gateway).await?;
    let session_id = started(&mut client, "1001", "secret1001").await?;

    let contacts = kamailio.contacts("1001")?;
    ensure!(
        contacts_for_session(&kamailio, "1001", &session_id)? == 1,
        "registrar should hold exactly our contact, holds {contacts:?}"
    );
    if transport == "tcp" {
        ensure!(
            contacts
                .iter()
                .any(|c| c.to_ascii_lowercase().contains("transport=tcp")),
            "contact should say transport=tcp: {contacts:?}"
        );
    }
    let status = gateway.status()?;
    ensure!(
        status["sessions"] == 1 && status["registrations"] == 1,
        "{status}"
    );

    client
        .send_json(&json!({"type": "CLOSE_SESSION", "sessionId": session_id}))
        .await?;
    let closed = client.recv_type("SESSION_CLOSED", REPLY).await?;
    ensure!(closed["sessionId"] == session_id.as_str(), "{closed}");
    // SESSION_CLOSED comes after the unregistration was answered.
    ensure!(kamailio.contacts("1001")?.is_empty(), "contact left behind");

    // The session is gone: naming it again is an error, not a crash.
    client
        .send_json(&json!({"type": "CLOSE_SESSION", "sessionId": session_id}))
        .await?;
    let error = client.recv_type("ERROR", REPLY).await?;
    ensure!(error["code"] == "UNKNOWN_SESSION", "{error}");
    client.close().await?;
    assert_nothing_held(&gateway)
}

#[tokio::test]
async fn udp_md5_register_and_close_session() -> anyhow::Result<()> {
    registers_then_close_session_unregisters(DigestAlgorithm::Md5, "udp").await
}

#[tokio::test]
async fn tcp_sha256_register_and_close_session() -> anyhow::Result<()> {
    registers_then_close_session_unregisters(DigestAlgorithm::Sha256, "tcp").await
}

#[tokio::test]
async fn udp_sha256_and_tcp_md5_register() -> anyhow::Result<()> {
    for (algorithm, transport) in [
        (DigestAlgorithm::Sha256, "udp"),
        (DigestAlgorithm::Md5, "tcp"),
    ] {
        let kamailio = kamailio(algorithm)?;
        let gateway = gateway_for(&kamailio, transport)?;
        let mut client = connect(&gateway).await?;
        let session_id = started(&mut client, "1002", "secret1002").await?;
        ensure!(contacts_for_session(&kamailio, "1002", &session_id)? == 1);
        client.close().await?;
        wait_until(CLEANUP, || Ok(kamailio.contacts("1002")?.is_empty()))
            .context("contact not removed after close")?;
    }
    Ok(())
}

#[tokio::test]
async fn wrong_password_is_forbidden() -> anyhow::Result<()> {
    let kamailio = kamailio(DigestAlgorithm::Md5)?;
    let gateway = gateway_for(&kamailio, "udp")?;
    let mut client = connect(&gateway).await?;
    client
        .send_json(&start_session("1001", "not-the-password"))
        .await?;
    let failed = client.recv_type("SESSION_FAILED", REPLY).await?;
    ensure!(failed["reason"] == "FORBIDDEN", "{failed}");
    ensure!(failed["sipStatus"] == 401, "{failed}");
    ensure!(kamailio.contacts("1001")?.is_empty());

    // The failed session's id is dead, and the same connection still works.
    let dead = failed["sessionId"].as_str().context("no sessionId")?;
    client
        .send_json(&json!({"type": "CLOSE_SESSION", "sessionId": dead}))
        .await?;
    ensure!(client.recv_type("ERROR", REPLY).await?["code"] == "UNKNOWN_SESSION");
    started(&mut client, "1001", "secret1001").await?;
    client.drop_abruptly();
    wait_until(CLEANUP, || Ok(kamailio.contacts("1001")?.is_empty()))?;
    assert_nothing_held(&gateway)
}

#[tokio::test]
async fn silent_registrar_times_out_within_the_configured_time() -> anyhow::Result<()> {
    // A registrar that receives and never answers.
    let silent = UdpSocket::bind("127.0.0.1:0")?;
    let address = format!("sip:{};transport=udp", silent.local_addr()?);
    let gateway = Gateway::start(&registrar_config(&address, "").replace("3000", "1500"))?;
    let mut client = connect(&gateway).await?;
    let asked = Instant::now();
    client
        .send_json(&start_session("1001", "secret1001"))
        .await?;
    let failed = client.recv_type("SESSION_FAILED", REPLY).await?;
    let took = asked.elapsed();
    ensure!(failed["reason"] == "TIMEOUT", "{failed}");
    // Configured 1.5 s; the bound leaves room for a loaded CI machine.
    ensure!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(6),
        "TIMEOUT after {took:?}"
    );
    let mut buffer = [0u8; 2048];
    silent.set_read_timeout(Some(Duration::from_secs(1)))?;
    let (length, _) = silent
        .recv_from(&mut buffer)
        .context("no REGISTER reached the registrar")?;
    ensure!(buffer[..length].starts_with(b"REGISTER "), "not a REGISTER");
    client.close().await?;
    assert_nothing_held(&gateway)
}

#[tokio::test]
async fn refused_tcp_registrar_is_a_timeout_failure() -> anyhow::Result<()> {
    let port = dialtone_tests::ports::free_port();
    let address = format!("sip:127.0.0.1:{port};transport=tcp");
    let gateway = Gateway::start(&registrar_config(&address, ""))?;
    let mut client = connect(&gateway).await?;
    client
        .send_json(&start_session("1001", "secret1001"))
        .await?;
    let failed = client.recv_type("SESSION_FAILED", REPLY).await?;
    ensure!(failed["reason"] == "TIMEOUT", "{failed}");
    client.close().await?;
    assert_nothing_held(&gateway)
}

#[tokio::test]
async fn short_expiry_is_refreshed() -> anyhow::Result<()> {
    let kamailio = kamailio(DigestAlgorithm::Md5)?;
    let address = format!("sip:127.0.0.1:{};transport=udp", kamailio.sip_port());
    let gateway = Gateway::start(&registrar_config(&address, "").replace("120", "2"))?;
    let mut client = connect(&gateway).await?;
    let session_id = started(&mut client, "1001", "secret1001").await?;
    let marker = format!("dt-{session_id}");
    let first = kamailio.contact_details("1001")?;
    let first_cseq = first
        .iter()
        .find(|c| c.uri.contains(&marker))
        .map(|c| c.cseq)
        .context("no binding after SESSION_STARTED")?;
    ensure!(
        first.iter().all(|c| c.expires <= 2),
        "registrar should grant 2 s: {first:?}"
    );
    // Two refreshes (each a challenged pair of REGISTERs) span more than
    // the 2 s expiry; the binding must still be there afterwards.
    wait_until(Duration::from_secs(15), || {
        Ok(kamailio
            .contact_details("1001")?
            .iter()
            .any(|c| c.uri.contains(&marker) && c.cseq >= first_cseq + 4))
    })
    .context("binding was not refreshed twice")?;
    ensure!(contacts_for_session(&kamailio, "1001", &session_id)? == 1);
    client.close().await?;
    wait_until(CLEANUP, || Ok(kamailio.contacts("1001")?.is_empty()))?;
    assert_nothing_held(&gateway)
}

#[tokio::test]
async fn killed_websocket_unregisters() -> anyhow::Result<()> {
    let kamailio = kamailio(DigestAlgorithm::Md5)?;
    let gateway = gateway_for(&kamailio, "tcp")?;
    let mut client = connect(&gateway).await?;
    started(&mut client, "1001", "secret1001").await?;
    ensure!(kamailio.contacts("1001")?.len() == 1);
    client.drop_abruptly();
    wait_until(CLEANUP, || Ok(kamailio.contacts("1001")?.is_empty()))
        .context("contact not removed after the socket dropped")?;
    assert_nothing_held(&gateway)
}

#[tokio::test]
async fn client_that_stops_answering_pings_is_dropped_and_unregistered() -> anyhow::Result<()> {
    let kamailio = kamailio(DigestAlgorithm::Md5)?;
    let address = format!("sip:127.0.0.1:{};transport=udp", kamailio.sip_port());
    let keepalive = "[websocket]\nping_interval_ms = 200\nping_timeout_ms = 1000\n";
    let gateway = Gateway::start(&registrar_config(&address, keepalive))?;
    let mut client = connect(&gateway).await?;
    started(&mut client, "1001", "secret1001").await?;
    let silent = client.into_silent();
    wait_until(CLEANUP, || Ok(kamailio.contacts("1001")?.is_empty()))
        .context("contact not removed after the ping timeout")?;
    gateway
        .wait_for_log("end=\"ping_timeout\"", REPLY)
        .context("connection did not end by ping timeout")?;
    drop(silent);
    assert_nothing_held(&gateway)
}

#[tokio::test]
async fn two_sessions_of_one_user_are_two_bindings() -> anyhow::Result<()> {
    let kamailio = kamailio(DigestAlgorithm::Md5)?;
    let gateway = gateway_for(&kamailio, "udp")?;
    let mut first = connect(&gateway).await?;
    let mut second = connect(&gateway).await?;
    let first_id = started(&mut first, "2000", "secret2000").await?;
    let second_id = started(&mut second, "2000", "secret2000").await?;
    ensure!(kamailio.contacts("2000")?.len() == 2);

    // The second client cannot close the first one's session...
    second
        .send_json(&json!({"type": "CLOSE_SESSION", "sessionId": first_id}))
        .await?;
    let refused = second.recv_type("ERROR", REPLY).await?;
    ensure!(refused["code"] == "UNKNOWN_SESSION", "{refused}");
    ensure!(contacts_for_session(&kamailio, "2000", &first_id)? == 1);

    // ...and closing its own leaves the first binding alone.
    second
        .send_json(&json!({"type": "CLOSE_SESSION", "sessionId": second_id}))
        .await?;
    second.recv_type("SESSION_CLOSED", REPLY).await?;
    ensure!(contacts_for_session(&kamailio, "2000", &first_id)? == 1);
    ensure!(contacts_for_session(&kamailio, "2000", &second_id)? == 0);
    first.close().await?;
    second.close().await?;
    wait_until(CLEANUP, || Ok(kamailio.contacts("2000")?.is_empty()))?;
    assert_nothing_held(&gateway)
}

#[tokio::test]
async fn register_challenged_with_407_is_answered_with_proxy_authorization() -> anyhow::Result<()> {
    let kamailio = Kamailio::start(KamailioOptions {
        algorithm: DigestAlgorithm::Sha256,
        register_with_407: true,
        ..Default::default()
    })?;
    let gateway = gateway_for(&kamailio, "udp")?;
    let mut client = connect(&gateway).await?;
    let session_id = started(&mut client, "1001", "secret1001").await?;
    ensure!(contacts_for_session(&kamailio, "1001", &session_id)? == 1);
    client
        .send_json(&json!({"type": "CLOSE_SESSION", "sessionId": session_id}))
        .await?;
    client.recv_type("SESSION_CLOSED", REPLY).await?;
    ensure!(kamailio.contacts("1001")?.is_empty());

    client.send_json(&start_session("1001", "wrong")).await?;
    let failed = client.recv_type("SESSION_FAILED", REPLY).await?;
    ensure!(
        failed["reason"] == "FORBIDDEN" && failed["sipStatus"] == 407,
        "{failed}"
    );
    Ok(())
}
