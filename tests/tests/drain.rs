//! Draining one gateway: SIGTERM (or POST /drain) refuses new connections and sessions and
//! turns /health to 503, the calls in progress go on, and the gateway exits when the last one
//! ends, or at `shutdown.drain_timeout_ms` if one will not.

use std::time::Duration;

use anyhow::{ensure, Context};
use dialtone_tests::gateway::{Gateway, LOOPBACK};
use dialtone_tests::wait::wait_until;
use dialtone_tests::ws_client::WsClient;
use serde_json::json;

const REPLY: Duration = Duration::from_secs(10);
const EXIT: Duration = Duration::from_secs(20);

/// A started session with a call to the built-in `tone` line (the gateway answers it itself
/// and its RTP keeps the call alive); returns the client, the sessionId and the callId.
async fn client_in_a_call(gateway: &Gateway) -> anyhow::Result<(WsClient, String, String)> {
    let (mut ws, session_id) = WsClient::start_session(&gateway.ws_url(), "alice", "x").await?;
    let call_id = ws
        .start_call(
            &json!({"type": "START_CALL", "sessionId": session_id, "bUri": "tone"}),
            REPLY,
        )
        .await?;
    let started = ws
        .recv_type_skipping("CALL_STARTED", &["CALL_STARTING"], REPLY)
        .await?;
    ensure!(started["callId"] == call_id.as_str(), "{started}");
    Ok((ws, session_id, call_id))
}

fn is_draining(gateway: &Gateway) -> anyhow::Result<bool> {
    Ok(gateway.http_get("/health")? == (503, "draining\n".to_string()))
}

#[tokio::test]
async fn sigterm_drains_until_the_last_call_ends() -> anyhow::Result<()> {
    let gateway = Gateway::start(LOOPBACK)?;
    ensure!(gateway.http_get("/health")? == (200, "ok\n".to_string()));
    let (mut ws, session_id, call_id) = client_in_a_call(&gateway).await?;

    gateway.terminate()?;
    wait_until(REPLY, || is_draining(&gateway)).context("/health should say draining")?;
    let status = gateway.status()?;
    ensure!(
        status["draining"] == true && status["calls"] != 0,
        "{status}"
    );
    // Without an admin token there is no /drain at all.
    ensure!(gateway.http_post("/drain", None)?.0 == 404);

    // No new connection, and no new session on the open one: the client is told to go.
    ensure!(
        WsClient::connect(&gateway.ws_url()).await.is_err(),
        "a new WebSocket was accepted"
    );
    ws.send_json(&json!({"type": "START_SESSION", "username": "bob", "password": "x"}))
        .await?;
    let refused = ws.recv_type("ERROR", REPLY).await?;
    ensure!(
        refused["code"] == "DRAINING" && refused["requestType"] == "START_SESSION",
        "{refused}"
    );

    // The call goes on until the client ends it; then the gateway leaves.
    ensure!(
        gateway.try_wait()?.is_none(),
        "the gateway left with a call up"
    );
    ws.send_json(&json!({"type": "HANGUP_CALL", "sessionId": session_id, "callId": call_id}))
        .await?;
    ws.recv_type("CALL_FINISHED", REPLY).await?;
    let disconnected = ws.recv_type("DISCONNECTED", REPLY).await?;
    ensure!(disconnected["clientId"].is_string(), "{disconnected}");
    let status = gateway.wait_exit(EXIT)?;
    ensure!(status.success(), "the drained gateway exited with {status}");
    Ok(())
}

#[tokio::test]
async fn drain_timeout_ends_calls_that_outlast_it() -> anyhow::Result<()> {
    let gateway = Gateway::start(&format!("{LOOPBACK}[shutdown]\ndrain_timeout_ms = 1500\n"))?;
    let (mut ws, _session_id, _call_id) = client_in_a_call(&gateway).await?;

    gateway.terminate()?;
    wait_until(REPLY, || is_draining(&gateway))?;
    ensure!(
        gateway.status()?["calls"] != 0,
        "the call should outlive the drain's start"
    );
    // At the deadline the gateway shuts down as it always does: the client is told, and its
    // call is hung up with the connection (no CALL_FINISHED on a connection that is closing).
    let disconnected = ws.recv_json(EXIT).await?;
    ensure!(disconnected["type"] == "DISCONNECTED", "{disconnected}");
    let status = gateway.wait_exit(EXIT)?;
    ensure!(status.success(), "exited with {status}");
    Ok(())
}

#[tokio::test]
async fn post_drain_needs_the_admin_token() -> anyhow::Result<()> {
    let token = "test-admin-token-0123456789";
    let gateway = Gateway::start(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{token}\"\n[sip]\nlisten = \"127.0.0.1:0\"\n"
    ))?;
    for wrong in [None, Some("test-admin-token-0123456788"), Some("short")] {
        let (code, _) = gateway.http_post("/drain", wrong)?;
        ensure!(code == 401, "{wrong:?} got {code}");
    }
    ensure!(
        gateway.http_get("/health")?.0 == 200,
        "a refused drain must not start one"
    );
    ensure!(gateway.http_post("/drain", Some(token))? == (202, "draining\n".to_string()));
    // No call: the drain is over at once.
    let status = gateway.wait_exit(EXIT)?;
    ensure!(status.success(), "exited with {status}");
    Ok(())
}
