//! Exposure rules (issue 14): the test lines are no RTP reflector for
//! strangers, an open gateway does not start on a public address unless
//! told, pages of other sites cannot drive `/ws`, and `/status` and
//! `/metrics` can be kept to those holding a token.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Context};
use dialtone_codecs::Codec;
use dialtone_tests::gateway::{Gateway, LOOPBACK};
use dialtone_tests::process::Logged;
use dialtone_tests::rtp_peer::{dominant_hz, start_rtp_call, RtpPeer};
use dialtone_tests::ws_client::WsClient;
use serde_json::json;
use std::net::UdpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const REPLY: Duration = Duration::from_secs(10);
/// A server INVITE transaction whose 2xx is never ACKed lives 64 × T1
/// (6.4 s with the T1 of 100 ms set below); the gateway logs its end.
const TRANSACTION_END: Duration = Duration::from_secs(30);

/// An INVITE for `line` whose SDP names `media` (the victim's address, in
/// a reflection attack), sent from `sender`.
fn invite(gateway: SocketAddr, sender: SocketAddr, media: SocketAddr, line: &str) -> String {
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n",
        ip = media.ip(),
        port = media.port(),
    );
    format!(
        "INVITE sip:{line}@{gateway} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {sender};branch=z9hG4bK-reflect-{line};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:stranger@{sender}>;tag=stranger\r\n\
         To: <sip:{line}@{gateway}>\r\n\
         Call-ID: reflect-{line}@{sender}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:stranger@{sender}>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

/// The status codes of the responses waiting on `socket`.
fn responses(socket: &UdpSocket) -> anyhow::Result<Vec<u16>> {
    socket.set_nonblocking(true)?;
    let mut codes = Vec::new();
    let mut buffer = [0u8; 4096];
    while let Ok(length) = socket.recv(&mut buffer) {
        let text = String::from_utf8_lossy(&buffer[..length]);
        if let Some(code) = text
            .strip_prefix("SIP/2.0 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
        {
            codes.push(code);
        }
    }
    Ok(codes)
}

/// The first final response to arrive on `socket`.
fn final_response(socket: &UdpSocket) -> anyhow::Result<u16> {
    socket.set_read_timeout(Some(REPLY))?;
    let mut buffer = [0u8; 4096];
    loop {
        let length = socket.recv(&mut buffer).context("no final response")?;
        let text = String::from_utf8_lossy(&buffer[..length]);
        let code: u16 = text
            .strip_prefix("SIP/2.0 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("not a response: {text}"))?;
        if code >= 200 {
            return Ok(code);
        }
    }
}

/// Packets waiting on `socket`.
fn packets(socket: &UdpSocket) -> anyhow::Result<usize> {
    socket.set_nonblocking(true)?;
    let mut buffer = [0u8; 2048];
    Ok(std::iter::from_fn(|| socket.recv(&mut buffer).ok()).count())
}

/// What a session of the gateway hears on `tone`: the line still works
/// for the gateway's own callers.
async fn own_session_hears_tone(gateway: &Gateway) -> anyhow::Result<()> {
    let (mut ws, session_id) = WsClient::start_session(&gateway.ws_url(), "newcomer", "").await?;
    let peer = RtpPeer::bind(Codec::Pcmu).await?;
    let (call_id, point) = start_rtp_call(&mut ws, &session_id, "tone", &peer).await?;
    let heard = peer.exchange(point, 440.0, 2.0, 0).await?;
    let hz = dominant_hz(&heard, Codec::Pcmu.sample_rate().hz())?;
    ensure!((hz - 1000.0).abs() < 15.0, "tone line: heard {hz} Hz");
    ws.send_json(&json!({"type": "HANGUP_CALL", "sessionId": session_id, "callId": call_id}))
        .await?;
    ws.recv_type("CALL_FINISHED", REPLY).await?;
    Ok(())
}

/// Two sockets of the test's own: one sends the INVITE, the other is the
/// address its SDP names.
fn stranger() -> anyhow::Result<(UdpSocket, UdpSocket)> {
    Ok((
        UdpSocket::bind("127.0.0.1:0")?,
        UdpSocket::bind("127.0.0.1:0")?,
    ))
}

#[tokio::test]
async fn test_lines_answer_no_stranger_by_default() -> anyhow::Result<()> {
    // No file: open mode on loopback, where the test lines are on.
    let gateway = Gateway::start_with_env(
        None,
        &[
            ("DIALTONE_HTTP_LISTEN", "127.0.0.1:0"),
            ("DIALTONE_SIP_LISTEN", "127.0.0.1:0"),
        ],
    )?;
    let (sip, victim) = stranger()?;
    let request = invite(
        gateway.sip_addr(),
        sip.local_addr()?,
        victim.local_addr()?,
        "tone",
    );
    sip.send_to(request.as_bytes(), gateway.sip_addr())?;
    let answer = final_response(&sip)?;
    ensure!(answer == 403, "the stranger's INVITE was answered {answer}");
    gateway.wait_for_log("test line refuses a caller from outside the gateway", REPLY)?;
    own_session_hears_tone(&gateway).await?;
    ensure!(
        packets(&victim)? == 0,
        "media went to the address a stranger named"
    );
    Ok(())
}

#[tokio::test]
async fn a_test_line_sends_no_media_before_the_ack() -> anyhow::Result<()> {
    let gateway = Gateway::start(&format!(
        "{LOOPBACK}t1_ms = 100\n[calls]\ntest_lines_public = true\ntest_line_max_ms = 120000\n"
    ))?;
    let (sip, victim) = stranger()?;
    let request = invite(
        gateway.sip_addr(),
        sip.local_addr()?,
        victim.local_addr()?,
        "tone",
    );
    sip.send_to(request.as_bytes(), gateway.sip_addr())?;
    // Never ACKed: the gateway retransmits its 200 until the transaction
    // ends, and says so.
    gateway.wait_for_log("test line call ended before the ACK", TRANSACTION_END)?;
    let codes = responses(&sip)?;
    ensure!(
        codes.iter().filter(|&&code| code == 200).count() >= 2,
        "expected the 200 and its retransmissions, got {codes:?}"
    );
    ensure!(
        packets(&victim)? == 0,
        "RTP went to the address the unacknowledged INVITE named"
    );
    own_session_hears_tone(&gateway).await?;
    gateway.wait_released(&["calls", "sipDialogs", "mediaPorts"], TRANSACTION_END)
}

#[test]
fn open_mode_on_a_public_address_refuses_to_start() -> anyhow::Result<()> {
    // Bound only: no traffic leaves 127.0.0.1.
    let public = "[http]\nlisten = \"0.0.0.0:0\"\n[sip]\nlisten = \"127.0.0.1:0\"\n";
    let (status, log) = Gateway::run_to_exit(public, REPLY)?;
    ensure!(!status.success(), "started anyway: {log}");
    ensure!(
        log.contains("http.listen = 0.0.0.0:0 is not a loopback address")
            && log.contains("sessions.allow_open_public"),
        "unclear error: {log}"
    );
    let allowed = format!("{public}[sessions]\nallow_open_public = true\n");
    let gateway = Gateway::start(&allowed)?;
    let local = SocketAddr::from(([127, 0, 0, 1], gateway.http_addr().port()));
    let runtime = tokio::runtime::Runtime::new()?;
    runtime
        .block_on(WsClient::start_session(
            &format!("ws://{local}/ws"),
            "operator",
            "",
        ))
        .context("the gateway the operator allowed does not serve")?;
    Ok(())
}

/// The WebSocket handshake with `origin`; the HTTP status of the answer.
async fn upgrade_status(gateway: &Gateway, origin: Option<&str>) -> anyhow::Result<u16> {
    let mut request = gateway.ws_url().into_client_request()?;
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", HeaderValue::from_str(origin)?);
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((_, response)) => Ok(response.status().as_u16()),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Ok(response.status().as_u16())
        }
        Err(error) => Err(error.into()),
    }
}

#[tokio::test]
async fn only_the_gateways_own_pages_and_listed_origins_open_the_websocket() -> anyhow::Result<()> {
    let gateway = Gateway::start(
        "[http]\nlisten = \"127.0.0.1:0\"\nallowed_origins = [\"https://app.example\"]\n\
         [sip]\nlisten = \"127.0.0.1:0\"\n",
    )?;
    let own = format!("http://{}", gateway.http_addr());
    ensure!(
        upgrade_status(&gateway, Some(&own)).await? == 101,
        "own page refused"
    );
    ensure!(
        upgrade_status(&gateway, None).await? == 101,
        "native client refused"
    );
    ensure!(
        upgrade_status(&gateway, Some("https://app.example")).await? == 101,
        "listed origin refused"
    );
    for foreign in [
        "http://evil.example",
        "null",
        &format!("http://127.0.0.1:{}", gateway.http_addr().port() + 1),
    ] {
        ensure!(
            upgrade_status(&gateway, Some(foreign)).await? == 403,
            "{foreign} may open /ws"
        );
    }
    gateway.wait_for_log("WebSocket from a foreign origin refused", REPLY)?;
    Ok(())
}

#[test]
fn status_and_metrics_need_the_status_token_when_one_is_set() -> anyhow::Result<()> {
    let token = "status-0123456789abcdef";
    let admin = "admin-0123456789abcdef";
    let gateway = Gateway::start(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\nstatus_token = \"{token}\"\nadmin_token = \"{admin}\"\n\
         [sip]\nlisten = \"127.0.0.1:0\"\n"
    ))?;
    for path in ["/status", "/metrics"] {
        ensure!(
            gateway.http_get(path)?.0 == 401,
            "{path} open without a token"
        );
        let wrong = gateway.http_get_with(path, &[("Authorization", "Bearer nope")])?;
        ensure!(wrong.0 == 401, "{path} open with a wrong token");
        for good in [token, admin] {
            let bearer = format!("Bearer {good}");
            let (code, body) = gateway.http_get_with(path, &[("Authorization", &bearer)])?;
            ensure!(
                code == 200 && body.contains("calls"),
                "{path}: {code} {body}"
            );
        }
    }
    ensure!(
        gateway.http_get("/health")?.0 == 200,
        "/health stays open for balancers"
    );
    Ok(())
}
