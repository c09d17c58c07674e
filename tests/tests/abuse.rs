//! Toll-fraud and abuse controls (issue 14): password guessing is
//! throttled before it reaches the registrar, calls are capped per
//! session, connection and gateway and rate-limited, DTMF strings are
//! capped, and the dial plan keeps calls (and transfers) to allowed
//! numbers and hosts.

use std::net::UdpSocket;
use std::time::Duration;

use anyhow::{ensure, Context};
use dialtone_tests::gateway::{Gateway, LOOPBACK};
use dialtone_tests::kamailio::{Kamailio, KamailioOptions};
use dialtone_tests::ws_client::WsClient;
use serde_json::{json, Value};

const REPLY: Duration = Duration::from_secs(10);
const PROGRESS: &[&str] = &["CALL_STARTING"];

/// A client whose connection a trusted proxy (the test) says comes from
/// `ip`: distinct sources without leaving 127.0.0.1.
async fn client_from(gateway: &Gateway, ip: &str) -> anyhow::Result<WsClient> {
    let mut ws =
        WsClient::connect_with_headers(&gateway.ws_url(), &[("x-forwarded-for", ip)]).await?;
    ws.recv_type("CONNECTED", REPLY).await?;
    Ok(ws)
}

/// START_SESSION and its answer: SESSION_STARTED, SESSION_FAILED or ERROR.
async fn log_in(ws: &mut WsClient, user: &str, password: &str) -> anyhow::Result<Value> {
    ws.send_json(&json!({"type": "START_SESSION", "username": user, "password": password}))
        .await?;
    ws.recv_json(REPLY).await
}

fn is_rate_limited(reply: &Value) -> bool {
    reply["type"] == "ERROR"
        && reply["code"] == "RATE_LIMITED"
        && reply["requestType"] == "START_SESSION"
        && reply["retryAfterMs"].as_u64().is_some_and(|ms| ms > 0)
}

/// REGISTERs Kamailio received so far (its own core statistics).
fn registers_seen(kamailio: &Kamailio) -> anyhow::Result<u64> {
    let stats = kamailio.rpc("stats.get_statistics", &[json!("core:")])?;
    stats
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find_map(|line| line.strip_prefix("core:rcv_requests_register = "))
        .and_then(|count| count.trim().parse().ok())
        .with_context(|| format!("no REGISTER count in {stats}"))
}

/// Up to `attempts` wrong passwords for `user`; the number answered
/// SESSION_FAILED before the first RATE_LIMITED, and that refusal.
async fn guess(ws: &mut WsClient, user: &str, attempts: usize) -> anyhow::Result<(usize, Value)> {
    for tried in 0..attempts {
        let reply = log_in(ws, user, &format!("guess{tried}")).await?;
        if is_rate_limited(&reply) {
            return Ok((tried, reply));
        }
        ensure!(
            reply["type"] == "SESSION_FAILED" && reply["reason"] == "FORBIDDEN",
            "guess {tried}: {reply}"
        );
    }
    anyhow::bail!("{attempts} guesses and never rate-limited")
}

#[tokio::test]
async fn password_guessing_is_throttled_before_the_registrar() -> anyhow::Result<()> {
    let kamailio = Kamailio::start(KamailioOptions::default())?;
    let gateway = Gateway::start(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1\"]\n\
         [sip]\nlisten = \"127.0.0.1:0\"\nt1_ms = 100\n\
         [registrar]\naddress = \"sip:{};transport=udp\"\n\
         [sessions]\nmax_failures = 5\nlockout_ms = 1500\n",
        kamailio.sip_addr()
    ))?;
    let before = registers_seen(&kamailio)?;
    let mut guesser = client_from(&gateway, "192.0.2.66").await?;
    let (failed, refusal) = guess(&mut guesser, "1001", 40).await?;
    ensure!(
        failed == 5,
        "rate-limited after {failed} guesses: {refusal}"
    );
    // Each refused login is a REGISTER and its answer to the challenge.
    let registers = registers_seen(&kamailio)? - before;
    ensure!(
        (5..=2 * 5).contains(&registers),
        "the registrar saw {registers} REGISTERs for 5 guesses"
    );
    // More attempts are refused at the gateway: the registrar sees none.
    for _ in 0..10 {
        ensure!(is_rate_limited(
            &log_in(&mut guesser, "1001", "again").await?
        ));
    }
    ensure!(
        registers_seen(&kamailio)? - before == registers,
        "refused guesses reached the registrar"
    );
    // The guessed user is locked from any address, and the guessing
    // address for any user, even with the right password...
    let mut elsewhere = client_from(&gateway, "192.0.2.8").await?;
    ensure!(is_rate_limited(
        &log_in(&mut elsewhere, "1001", "secret1001").await?
    ));
    ensure!(is_rate_limited(
        &log_in(&mut guesser, "2000", "secret2000").await?
    ));
    // ...while another user from another address gets in.
    let mut legitimate = client_from(&gateway, "192.0.2.7").await?;
    let started = log_in(&mut legitimate, "1002", "secret1002").await?;
    ensure!(started["type"] == "SESSION_STARTED", "{started}");
    // After the lockout, five more failures lock out for twice as long.
    let first_wait = refusal["retryAfterMs"].as_u64().unwrap_or_default();
    let last = log_in(&mut guesser, "1001", "again").await?;
    let wait = last["retryAfterMs"].as_u64().unwrap_or_default();
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let (failed, second) = guess(&mut guesser, "1001", 40).await?;
    let second_wait = second["retryAfterMs"].as_u64().unwrap_or_default();
    ensure!(
        failed == 5 && second_wait > first_wait + 1000,
        "second lockout after {failed} guesses: {second_wait} ms, first {first_wait} ms"
    );
    Ok(())
}

struct Client {
    ws: WsClient,
    session_id: String,
}

impl Client {
    async fn start(mut ws: WsClient) -> anyhow::Result<Client> {
        let reply = log_in(&mut ws, "caller", "").await?;
        ensure!(reply["type"] == "SESSION_STARTED", "{reply}");
        let session_id = reply["sessionId"]
            .as_str()
            .context("sessionId")?
            .to_string();
        Ok(Client { ws, session_id })
    }

    async fn connect(gateway: &Gateway) -> anyhow::Result<Client> {
        let mut ws = WsClient::connect(&gateway.ws_url()).await?;
        ws.recv_type("CONNECTED", REPLY).await?;
        Client::start(ws).await
    }

    /// A second session on the same connection.
    async fn another_session(self) -> anyhow::Result<(Client, String)> {
        let Client { ws, session_id } = self;
        let other = Client::start(ws).await?;
        Ok((other, session_id))
    }

    async fn send(&mut self, session_id: &str, mut message: Value) -> anyhow::Result<()> {
        message["sessionId"] = json!(session_id);
        self.ws.send_json(&message).await
    }

    /// START_CALL to `b_uri`; the callId once CALL_STARTED, or the ERROR.
    async fn call(
        &mut self,
        session_id: &str,
        b_uri: &str,
    ) -> anyhow::Result<Result<String, Value>> {
        self.send(session_id, json!({"type": "START_CALL", "bUri": b_uri}))
            .await?;
        let reply = self.ws.recv_json(REPLY).await?;
        if reply["type"] == "ERROR" {
            return Ok(Err(reply));
        }
        ensure!(reply["type"] == "CALL_STARTING", "{reply}");
        let call_id = reply["callId"].as_str().context("callId")?.to_string();
        self.ws
            .recv_type_skipping("CALL_STARTED", PROGRESS, REPLY)
            .await?;
        Ok(Ok(call_id))
    }

    /// The `digits` line sends `digit` back: the call is alive.
    async fn still_talks(&mut self, session_id: &str, call_id: &str) -> anyhow::Result<()> {
        self.send(
            session_id,
            json!({"type": "SEND_DTMF_SIGNAL", "callId": call_id, "dtmfString": "5"}),
        )
        .await?;
        let echoed = self.ws.recv_type("DTMF_RECEIVED", REPLY).await?;
        ensure!(
            echoed["callId"] == call_id && echoed["digit"] == "5",
            "{echoed}"
        );
        Ok(())
    }
}

fn refused_with(reply: &Result<String, Value>, code: &str, says: &str) -> anyhow::Result<()> {
    match reply {
        Err(error)
            if error["code"] == code
                && error["message"].as_str().is_some_and(|m| m.contains(says)) =>
        {
            Ok(())
        }
        other => anyhow::bail!("expected ERROR {code} ({says}), got {other:?}"),
    }
}

#[tokio::test]
async fn calls_are_capped_per_session_connection_and_gateway() -> anyhow::Result<()> {
    let gateway = Gateway::start(&format!(
        "{LOOPBACK}[calls]\nmax_calls_per_session = 2\nmax_calls_per_connection = 3\nmax_calls = 4\n"
    ))?;
    let mut first = Client::connect(&gateway).await?;
    let a = first.session_id.clone();
    let a1 = first
        .call(&a, "digits")
        .await?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    first
        .call(&a, "digits")
        .await?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    refused_with(
        &first.call(&a, "digits").await?,
        "LIMIT_REACHED",
        "max_calls_per_session",
    )?;
    let (mut first, a) = first.another_session().await?;
    let b = first.session_id.clone();
    first
        .call(&b, "digits")
        .await?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    refused_with(
        &first.call(&b, "digits").await?,
        "LIMIT_REACHED",
        "max_calls_per_connection",
    )?;
    let mut second = Client::connect(&gateway).await?;
    let c = second.session_id.clone();
    second
        .call(&c, "digits")
        .await?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    refused_with(
        &second.call(&c, "digits").await?,
        "LIMIT_REACHED",
        "max_calls",
    )?;
    // The refusals ended nothing: the first call still talks. Hanging it
    // up frees one place, for anyone.
    first.still_talks(&a, &a1).await?;
    first
        .send(&a, json!({"type": "HANGUP_CALL", "callId": a1}))
        .await?;
    first.ws.recv_type("CALL_FINISHED", REPLY).await?;
    second
        .call(&c, "digits")
        .await?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

#[tokio::test]
async fn call_starts_and_dtmf_strings_are_limited() -> anyhow::Result<()> {
    let gateway = Gateway::start(&format!(
        "{LOOPBACK}[calls]\nstart_burst = 2\nstarts_per_minute = 1\nmax_dtmf_digits = 64\n"
    ))?;
    let mut client = Client::connect(&gateway).await?;
    let session = client.session_id.clone();
    let call = client
        .call(&session, "digits")
        .await?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let long = "1".repeat(65);
    client
        .send(
            &session,
            json!({"type": "SEND_DTMF_SIGNAL", "callId": call, "dtmfString": long}),
        )
        .await?;
    let error = client.ws.recv_type("ERROR", REPLY).await?;
    ensure!(
        error["code"] == "INVALID_VALUE" && error["field"] == "dtmfString",
        "{error}"
    );
    client.still_talks(&session, &call).await?;
    client
        .send(&session, json!({"type": "HANGUP_CALL", "callId": call}))
        .await?;
    client.ws.recv_type("CALL_FINISHED", REPLY).await?;
    let second = client
        .call(&session, "digits")
        .await?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    match client.call(&session, "digits").await? {
        Err(error) if error["code"] == "RATE_LIMITED" => {
            let wait = error["retryAfterMs"].as_u64().unwrap_or_default();
            ensure!(wait > 0 && wait <= 60_000, "{error}");
        }
        other => anyhow::bail!("a third START_CALL at once: {other:?}"),
    }
    client.still_talks(&session, &second).await
}

/// INVITEs that reached the proxy socket: their Request-URIs.
fn invites_at(proxy: &UdpSocket) -> anyhow::Result<Vec<String>> {
    proxy.set_nonblocking(true)?;
    let mut buffer = [0u8; 8192];
    let mut uris = Vec::new();
    while let Ok(length) = proxy.recv(&mut buffer) {
        let text = String::from_utf8_lossy(&buffer[..length]);
        if let Some(rest) = text.strip_prefix("INVITE ") {
            uris.push(rest.split(' ').next().unwrap_or_default().to_string());
        }
    }
    Ok(uris)
}

#[tokio::test]
async fn the_dial_plan_refuses_denied_numbers_and_foreign_hosts() -> anyhow::Result<()> {
    // The "proxy" is a socket of the test's own: it sees every INVITE.
    let proxy = UdpSocket::bind("127.0.0.1:0")?;
    let gateway = Gateway::start(&format!(
        "{LOOPBACK}t1_ms = 100\n[calls]\nproxy = \"sip:{};transport=udp\"\n\
         allow = [\"3*\", \"4*\"]\ndeny = [\"39*\"]\n",
        proxy.local_addr()?
    ))?;
    let mut client = Client::connect(&gateway).await?;
    let session = client.session_id.clone();
    for (b_uri, why) in [
        ("3900", "not allowed by the dial plan"),
        ("5000", "not allowed by the dial plan"),
        ("sip:3000@127.0.0.1:9", "names a host other than"),
        ("3000@evil.example", "names a host other than"),
    ] {
        client
            .send(&session, json!({"type": "START_CALL", "bUri": b_uri}))
            .await?;
        let error = client.ws.recv_type("ERROR", REPLY).await?;
        ensure!(
            error["code"] == "INVALID_VALUE"
                && error["field"] == "bUri"
                && error["message"].as_str().is_some_and(|m| m.contains(why)),
            "{b_uri}: {error}"
        );
    }
    // An allowed number goes out, to the proxy: the only INVITE it saw.
    client
        .send(&session, json!({"type": "START_CALL", "bUri": "3000"}))
        .await?;
    let starting = client.ws.recv_type("CALL_STARTING", REPLY).await?;
    proxy.set_read_timeout(Some(REPLY))?;
    let mut buffer = [0u8; 8192];
    let length = proxy
        .recv(&mut buffer)
        .context("no INVITE for the allowed number")?;
    let first = String::from_utf8_lossy(&buffer[..length]).to_string();
    ensure!(
        first.starts_with(&format!("INVITE sip:3000@{} ", gateway.sip_addr())),
        "{first}"
    );
    let others: Vec<String> = invites_at(&proxy)?
        .into_iter()
        .filter(|uri| !uri.starts_with("sip:3000@"))
        .collect();
    ensure!(
        others.is_empty(),
        "refused targets reached the proxy: {others:?}"
    );
    // A transfer would have the far end call the target: the same rules.
    let call_id = starting["callId"].clone();
    client
        .send(
            &session,
            json!({"type": "TRANSFER_CALL", "callId": call_id, "target": "3900"}),
        )
        .await?;
    let error = client.ws.recv_type("ERROR", REPLY).await?;
    ensure!(
        error["code"] == "INVALID_VALUE"
            && error["field"] == "target"
            && error["requestType"] == "TRANSFER_CALL",
        "{error}"
    );
    Ok(())
}
