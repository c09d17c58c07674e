//! The client protocol over a real WebSocket to the real binary: every
//! class of bad input gets its error, the connection stays usable, and no
//! other client is disturbed. Uses the modes that need no registrar.

use std::time::Duration;

use anyhow::{ensure, Context};
use dialtone_tests::gateway::{Gateway, LOOPBACK};
use dialtone_tests::process::Logged;
use dialtone_tests::wait::wait_until;
use dialtone_tests::ws_client::WsClient;
use serde_json::{json, Value};

const REPLY: Duration = Duration::from_secs(10);

async fn connect(gateway: &Gateway) -> anyhow::Result<WsClient> {
    let mut client = WsClient::connect(&gateway.ws_url()).await?;
    let connected = client.recv_type("CONNECTED", REPLY).await?;
    ensure!(
        connected["clientId"]
            .as_str()
            .is_some_and(|id| id.len() == 32),
        "{connected}"
    );
    Ok(client)
}

async fn start(client: &mut WsClient, username: &str, password: &str) -> anyhow::Result<Value> {
    client
        .send_json(&json!({"type": "START_SESSION", "username": username, "password": password}))
        .await?;
    client.recv_json(REPLY).await
}

async fn expect_error(
    client: &mut WsClient,
    code: &str,
    field: Option<&str>,
) -> anyhow::Result<Value> {
    let error = client.recv_type("ERROR", REPLY).await?;
    ensure!(error["code"] == code, "expected {code}, got {error}");
    if let Some(field) = field {
        ensure!(
            error["field"] == field,
            "expected field {field}, got {error}"
        );
    }
    ensure!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{error}"
    );
    Ok(error)
}

#[tokio::test]
async fn every_bad_input_class_gets_its_error_and_the_connection_stays_usable() -> anyhow::Result<()>
{
    let gateway = Gateway::start(LOOPBACK)?;
    let mut client = connect(&gateway).await?;

    let text_cases: [(&str, &str, Option<&str>); 9] = [
        ("{\"type\":\"START_SESSION\",", "BAD_JSON", None),
        ("[\"START_SESSION\"]", "NOT_AN_OBJECT", None),
        ("{\"username\":\"a\"}", "MISSING_FIELD", Some("type")),
        ("{\"type\":\"START_SESSION\",\"username\":\"a\"}", "MISSING_FIELD", Some("password")),
        ("{\"type\":\"START_SESSION\",\"username\":7,\"password\":\"p\"}", "WRONG_TYPE", Some("username")),
        ("{\"type\":\"START_SESSION\",\"username\":\"\",\"password\":\"p\"}", "INVALID_VALUE", Some("username")),
        ("{\"type\":\"DIAL_MARS\"}", "UNKNOWN_TYPE", None),
        ("{\"type\":\"SESSION_STARTED\",\"sessionId\":\"x\"}", "UNKNOWN_TYPE", None),
        (
            "{\"type\":\"SEND_DTMF_SIGNAL\",\"sessionId\":\"s\",\"callId\":\"c\",\"dtmfString\":\"12E\"}",
            "INVALID_VALUE",
            Some("dtmfString"),
        ),
    ];
    for (text, code, field) in text_cases {
        client.send_text(text).await?;
        let error = expect_error(&mut client, code, field)
            .await
            .with_context(|| format!("sent {text}"))?;
        if code == "MISSING_FIELD" && field == Some("password") {
            ensure!(error["requestType"] == "START_SESSION", "{error}");
        }
    }
    client.send_binary(vec![0, 1, 2, 3]).await?;
    expect_error(&mut client, "BINARY_FRAME", None).await?;
    let oversized =
        json!({"type": "START_SESSION", "username": "u", "password": "x".repeat(70_000)});
    client.send_json(&oversized).await?;
    expect_error(&mut client, "TOO_LARGE", None).await?;
    client
        .send_json(&json!({"type": "HANGUP_CALL", "sessionId": "0000", "callId": "c"}))
        .await?;
    expect_error(&mut client, "UNKNOWN_SESSION", Some("sessionId")).await?;

    // After all that, the same connection starts a session.
    let started = start(&mut client, "alice", "anything").await?;
    ensure!(started["type"] == "SESSION_STARTED", "{started}");
    let status = gateway.status()?;
    ensure!(
        status["sessions"] == 1 && status["wsConnections"] == 1,
        "{status}"
    );
    client.close().await?;
    wait_until(Duration::from_secs(10), || {
        let status = gateway.status()?;
        Ok(status["sessions"] == 0 && status["wsConnections"] == 0 && status["tasks"] == 0)
    })
}

#[tokio::test]
async fn another_clients_session_id_is_refused_and_that_session_is_untouched() -> anyhow::Result<()>
{
    let gateway = Gateway::start(LOOPBACK)?;
    let mut owner = connect(&gateway).await?;
    let mut intruder = connect(&gateway).await?;
    let owned = start(&mut owner, "alice", "x").await?;
    let session_id = owned["sessionId"]
        .as_str()
        .context("no sessionId")?
        .to_string();

    for message in [
        json!({"type": "CLOSE_SESSION", "sessionId": session_id}),
        json!({"type": "START_CALL", "sessionId": session_id, "bUri": "1002"}),
        json!({"type": "JOIN_ROOM", "sessionId": session_id, "roomId": "r"}),
    ] {
        intruder.send_json(&message).await?;
        let error = expect_error(&mut intruder, "UNKNOWN_SESSION", Some("sessionId")).await?;
        ensure!(error["requestType"] == message["type"], "{error}");
    }
    ensure!(gateway.status()?["sessions"] == 1);

    // A room message on one's own session naming a room it may not join is
    // refused as for a room that does not exist.
    owner
        .send_json(
            &json!({"type": "CREATE_MEDIA_POINT", "sessionId": session_id, "pointId": "p",
            "cc": {"mediaTransport": ["RTP"]}}),
        )
        .await?;
    owner.recv_type("SDP_OFFER", REPLY).await?;
    owner
        .send_json(&json!({"type": "JOIN_ROOM", "sessionId": session_id, "roomId": "r"}))
        .await?;
    expect_error(&mut owner, "UNKNOWN_ROOM", Some("roomId")).await?;
    owner
        .send_json(&json!({"type": "HANGUP_CALL", "sessionId": session_id, "callId": "nope"}))
        .await?;
    expect_error(&mut owner, "UNKNOWN_CALL", Some("callId")).await?;

    owner
        .send_json(&json!({"type": "CLOSE_SESSION", "sessionId": session_id}))
        .await?;
    owner.recv_type("SESSION_CLOSED", REPLY).await?;
    Ok(())
}

#[tokio::test]
async fn session_limit_per_connection() -> anyhow::Result<()> {
    let gateway = Gateway::start(&format!(
        "{LOOPBACK}[websocket]\nmax_sessions_per_connection = 2\n"
    ))?;
    let mut client = connect(&gateway).await?;
    for _ in 0..2 {
        ensure!(start(&mut client, "a", "b").await?["type"] == "SESSION_STARTED");
    }
    client
        .send_json(&json!({"type": "START_SESSION", "username": "a", "password": "b"}))
        .await?;
    expect_error(&mut client, "SESSION_LIMIT", None).await?;
    Ok(())
}

#[tokio::test]
async fn static_users_mode_checks_the_configured_users() -> anyhow::Result<()> {
    let config = format!("{LOOPBACK}[[users]]\nusername = \"agent\"\npassword = \"right\"\n");
    let gateway = Gateway::start(&config)?;
    let mut client = connect(&gateway).await?;
    let failed = start(&mut client, "agent", "wrong").await?;
    ensure!(
        failed["type"] == "SESSION_FAILED" && failed["reason"] == "FORBIDDEN",
        "{failed}"
    );
    let failed = start(&mut client, "nobody", "right").await?;
    ensure!(failed["reason"] == "FORBIDDEN", "{failed}");
    let started = start(&mut client, "agent", "right").await?;
    ensure!(started["type"] == "SESSION_STARTED", "{started}");
    let metrics = gateway.metrics_text()?;
    ensure!(
        metrics.contains("dialtone_sessions_failed_total{reason=\"Forbidden\"} 2"),
        "failures not counted:\n{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn client_goodbye_ends_the_connection_and_its_sessions() -> anyhow::Result<()> {
    let gateway = Gateway::start(LOOPBACK)?;
    let mut client = connect(&gateway).await?;
    start(&mut client, "alice", "x").await?;
    client.send_json(&json!({"type": "DISCONNECTED"})).await?;
    wait_until(Duration::from_secs(10), || {
        let status = gateway.status()?;
        Ok(status["sessions"] == 0 && status["wsConnections"] == 0)
    })?;
    gateway.wait_for_log("end=\"client_left\"", REPLY)?;
    Ok(())
}

#[tokio::test]
async fn starts_with_no_configuration_file_and_serves_health() -> anyhow::Result<()> {
    // Only the ports are moved off the defaults, through the environment,
    // so the test does not need 8080 and 5060 free.
    let gateway = Gateway::start_with_env(
        None,
        &[
            ("DIALTONE_HTTP_LISTEN", "127.0.0.1:0"),
            ("DIALTONE_SIP_LISTEN", "127.0.0.1:0"),
        ],
    )?;
    let (status, body) = gateway.http_get("/health")?;
    ensure!(status == 200 && body.trim() == "ok", "{status} {body}");
    let (status, page) = gateway.http_get("/")?;
    ensure!(status == 200 && page.contains("/ws"), "{status}");
    gateway.wait_for_log("auth=Open", REPLY)?;
    Ok(())
}
