//! No injection (issue 14): client strings that would write SIP headers
//! (a user name, a bUri) are refused with ERROR INVALID_VALUE naming the
//! field, in open and in registrar mode, and no SIP message carrying them
//! leaves the gateway; attacker text cannot forge log lines, and a
//! START_SESSION password is not logged even at `DIALTONE_LOG=trace`.
//!
//! The far end (registrar or callee) is a raw UDP socket of the test, so
//! every datagram the gateway sends is seen as it is.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Context};
use dialtone_tests::gateway::{proxy_config, registrar_config, Gateway, LOOPBACK};
use dialtone_tests::kamailio::{Kamailio, KamailioOptions};
use dialtone_tests::process::Logged;
use dialtone_tests::ws_client::WsClient;
use serde_json::{json, Value};
use tokio::net::UdpSocket;
use tokio::time::Instant;

const REPLY: Duration = Duration::from_secs(10);

/// Header injection classics: each closes what it is in (`<…>`, a quoted
/// string, the line) and writes a header of its own.
const INJECTED_USER_NAMES: &[&str] = &[
    "a>;tag=1\r\nX-Injected: yes",
    "alice\nX-Injected: yes",
    "alice\r\n\r\nINVITE sip:x@127.0.0.1 SIP/2.0\r\nX-Injected: yes",
    "bob\", X-Injected=\"yes",
    "<sip:evil@127.0.0.1>;X-Injected=yes",
    "a?X-Injected=yes",
];

/// The same through a bUri, in each form a client may write one.
fn injected_b_uris() -> Vec<String> {
    let mut uris: Vec<String> = INJECTED_USER_NAMES
        .iter()
        .flat_map(|user| [user.to_string(), format!("sip:{user}@127.0.0.1")])
        .collect();
    uris.extend([
        "sip:3000@127.0.0.1?X-Injected=yes".to_string(),
        "sip:3000@127.0.0.1;user=phone\r\nX-Injected: yes".to_string(),
        "3000@127.0.0.1>\r\nX-Injected: yes".to_string(),
    ]);
    uris
}

/// A raw UDP socket standing in for the registrar or the callee.
struct FarEnd {
    socket: UdpSocket,
    seen: Vec<String>,
}

impl FarEnd {
    async fn bind() -> anyhow::Result<FarEnd> {
        Ok(FarEnd {
            socket: UdpSocket::bind("127.0.0.1:0").await?,
            seen: Vec::new(),
        })
    }

    fn addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    /// Reads datagrams until one starts with `method`; keeps them all.
    async fn wait_request(&mut self, method: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + REPLY;
        let mut buffer = vec![0u8; 65_536];
        loop {
            let (len, _) = tokio::time::timeout_at(deadline, self.socket.recv_from(&mut buffer))
                .await
                .with_context(|| {
                    format!("no {method} reached the far end; seen: {:?}", self.seen)
                })??;
            let text = String::from_utf8_lossy(&buffer[..len]).into_owned();
            let found = text.starts_with(&format!("{method} "));
            self.seen.push(text);
            if found {
                return Ok(());
            }
        }
    }

    fn assert_nothing_injected(&self) -> anyhow::Result<()> {
        for message in &self.seen {
            ensure!(
                !message.to_ascii_lowercase().contains("x-injected"),
                "an injected header reached the far end:\n{message}"
            );
        }
        Ok(())
    }
}

fn assert_refused(reply: &Value, request_type: &str, field: &str) -> anyhow::Result<()> {
    ensure!(
        reply["type"] == "ERROR"
            && reply["code"] == "INVALID_VALUE"
            && reply["requestType"] == request_type
            && reply["field"] == field,
        "expected ERROR INVALID_VALUE for {request_type}.{field}, got {reply}"
    );
    Ok(())
}

/// Each injected user name is refused on one connection; then an honest
/// START_SESSION is sent.
async fn refuse_user_names_then_start(gateway: &Gateway) -> anyhow::Result<WsClient> {
    let mut ws = WsClient::connect(&gateway.ws_url()).await?;
    ws.recv_type("CONNECTED", REPLY).await?;
    for username in INJECTED_USER_NAMES {
        ws.send_json(&json!({"type": "START_SESSION", "username": username, "password": "x"}))
            .await?;
        let reply = ws.recv_json(REPLY).await?;
        assert_refused(&reply, "START_SESSION", "username")
            .with_context(|| format!("user name {username:?}"))?;
    }
    ws.send_json(&json!({"type": "START_SESSION", "username": "1001", "password": "x"}))
        .await?;
    Ok(ws)
}

#[tokio::test]
async fn injected_user_names_are_refused_in_open_mode() -> anyhow::Result<()> {
    let gateway = Gateway::start(LOOPBACK)?;
    let mut ws = refuse_user_names_then_start(&gateway).await?;
    ws.recv_type("SESSION_STARTED", REPLY).await?;
    ensure!(
        gateway.status()?["sessions"] == 1,
        "only the honest session"
    );
    ws.close().await
}

#[tokio::test]
async fn injected_user_names_are_refused_in_registrar_mode_and_no_register_carries_them(
) -> anyhow::Result<()> {
    let mut registrar = FarEnd::bind().await?;
    let gateway = Gateway::start(&registrar_config(registrar.addr()?))?;
    let ws = refuse_user_names_then_start(&gateway).await?;
    // The honest user's REGISTER comes after every refusal was answered:
    // whatever the gateway sent for the refused names came before it.
    registrar.wait_request("REGISTER").await?;
    registrar.assert_nothing_injected()?;
    ensure!(
        registrar.seen.len() == 1,
        "one REGISTER expected, got {:?}",
        registrar.seen
    );
    // The REGISTER is never answered: no clean close to wait for.
    drop(ws);
    Ok(())
}

#[tokio::test]
async fn no_invite_carries_an_injected_user_name_or_b_uri() -> anyhow::Result<()> {
    let mut callee = FarEnd::bind().await?;
    // Many START_CALLs on purpose: past the per-session rate limit.
    let gateway = Gateway::start(&format!(
        "{}start_burst = 1000\n",
        proxy_config(callee.addr()?, "")
    ))?;
    let mut ws = WsClient::connect(&gateway.ws_url()).await?;
    ws.recv_type("CONNECTED", REPLY).await?;
    // The user name becomes the INVITE's From: a session that started
    // under one would call with it.
    for username in INJECTED_USER_NAMES {
        ws.send_json(&json!({"type": "START_SESSION", "username": username, "password": "x"}))
            .await?;
        let reply = ws.recv_json(REPLY).await?;
        if let Some(session_id) = reply["sessionId"].as_str() {
            ws.send_json(&json!({"type": "START_CALL", "sessionId": session_id, "bUri": "3000"}))
                .await?;
        }
        assert_refused(&reply, "START_SESSION", "username")
            .with_context(|| format!("user name {username:?}"))?;
    }
    ws.send_json(&json!({"type": "START_SESSION", "username": "alice", "password": "x"}))
        .await?;
    let started = ws.recv_type("SESSION_STARTED", REPLY).await?;
    let session_id = started["sessionId"].as_str().context("no sessionId")?;
    for b_uri in injected_b_uris() {
        ws.send_json(&json!({"type": "START_CALL", "sessionId": session_id, "bUri": b_uri}))
            .await?;
        let reply = ws.recv_json(REPLY).await?;
        assert_refused(&reply, "START_CALL", "bUri").with_context(|| format!("bUri {b_uri:?}"))?;
    }
    // The display name goes between quotes in From.
    for display_name in [
        "a\"\r\nX-Injected: yes",
        "Bob <sip:x@127.0.0.1>\r\nX-Injected: yes",
    ] {
        ws.send_json(&json!({"type": "START_CALL", "sessionId": session_id, "bUri": "3000", "displayName": display_name}))
            .await?;
        let reply = ws.recv_json(REPLY).await?;
        assert_refused(&reply, "START_CALL", "displayName")
            .with_context(|| format!("displayName {display_name:?}"))?;
    }
    // An honest call's INVITE arrives after every refusal: nothing went
    // out for the refused ones.
    ws.send_json(&json!({"type": "START_CALL", "sessionId": session_id, "bUri": "3000"}))
        .await?;
    callee.wait_request("INVITE").await?;
    callee.assert_nothing_injected()?;
    ensure!(
        callee.seen.len() == 1,
        "one INVITE expected, got {:?}",
        callee.seen
    );
    drop(ws);
    Ok(())
}

#[tokio::test]
async fn logs_at_trace_hold_no_password_and_no_forged_line() -> anyhow::Result<()> {
    const PASSWORD: &str = "pw-6f1d2c9e-never-logged";
    const FORGED: &str = "FORGED ERROR dialtone_gateway: admin logged in";
    let trace = [("DIALTONE_LOG", "trace"), ("RUST_LOG", "trace")];
    let gateway = Gateway::start_with_env(Some(LOOPBACK), &trace)?;
    let (mut ws, session_id) = WsClient::start_session(&gateway.ws_url(), "1001", PASSWORD).await?;
    // A newline in a user name, in a bUri, and between the tokens of a
    // JSON frame (valid JSON whitespace).
    ws.send_json(&json!({"type": "START_SESSION", "username": format!("bob\n{FORGED}"), "password": PASSWORD}))
        .await?;
    ws.recv_json(REPLY).await?;
    ws.send_json(
        &json!({"type": "START_CALL", "sessionId": session_id, "bUri": format!("3000\n{FORGED}")}),
    )
    .await?;
    ws.recv_type("ERROR", REPLY).await?;
    ws.send_text(&format!(
        "{{\"type\": \"CLOSE_SESSION\",\n{FORGED}\n\"sessionId\": \"{session_id}\"}}"
    ))
    .await?;
    ws.recv_type("ERROR", REPLY).await?;
    ws.send_json(&json!({"type": "CLOSE_SESSION", "sessionId": session_id}))
        .await?;
    ws.recv_type("SESSION_CLOSED", REPLY).await?;
    ws.close().await?;
    gateway.wait_released(&["sessions"], REPLY)?;
    let log = gateway.log_text();
    ensure!(
        log.lines().any(|line| line.contains(" TRACE ")),
        "the gateway did not log at trace"
    );
    ensure!(
        !log.contains(PASSWORD),
        "the password is in the log:\n{}",
        lines_with(&log, PASSWORD)
    );
    ensure!(
        !log.lines().any(|line| line.starts_with("FORGED")),
        "a forged line is in the log:\n{}",
        lines_with(&log, "FORGED")
    );
    Ok(())
}

fn lines_with(log: &str, needle: &str) -> String {
    log.lines()
        .filter(|line| line.contains(needle))
        .take(5)
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn a_trace_log_of_a_digest_registration_holds_no_credentials() -> anyhow::Result<()> {
    let kamailio = Kamailio::start(KamailioOptions::default())?;
    let trace = [("DIALTONE_LOG", "trace"), ("RUST_LOG", "trace")];
    let config = registrar_config(kamailio.sip_addr());
    let gateway = Gateway::start_with_env(Some(&config), &trace)?;
    // REGISTER, challenged, REGISTER with credentials; then the same to
    // unregister.
    let (mut ws, session_id) =
        WsClient::start_session(&gateway.ws_url(), "1001", "secret1001").await?;
    ws.send_json(&json!({"type": "CLOSE_SESSION", "sessionId": session_id}))
        .await?;
    ws.recv_type("SESSION_CLOSED", REPLY).await?;
    ws.close().await?;
    let log = gateway.log_text();
    for secret in ["secret1001", "response="] {
        ensure!(
            !log.contains(secret),
            "{secret:?} is in the log:\n{}",
            lines_with(&log, secret)
        );
    }
    ensure!(
        log.contains("Authorization: <redacted>"),
        "the REGISTERs with credentials were not logged (redacted) at trace"
    );
    Ok(())
}
