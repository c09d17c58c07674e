//! Secure trunks: SIP over TLS toward Kamailio (registration, calls both ways, the server's
//! certificate checked against the configured CA, a client certificate), and the client
//! WebSocket over TLS (WSS). Certificates come from a throwaway CA made per test.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context};
use dialtone_tests::baresip::{Baresip, BaresipAccount, BaresipOptions};
use dialtone_tests::kamailio::{Kamailio, KamailioOptions, KamailioTls};
use dialtone_tests::pki::TestPki;
use dialtone_tests::process::Logged;
use dialtone_tests::rtp_peer::{srtp_call_tones_both_ways, start_rtp_call, RtpPeer};
use dialtone_tests::ws_client::WsClient;
use dialtone_tests::{free_port, Gateway};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_tungstenite::tungstenite::Message;

const REPLY: Duration = Duration::from_secs(10);
const CLEANUP: Duration = Duration::from_secs(30);

/// Kamailio listening on UDP/TCP and on TLS with the PKI's server certificate, requiring a
/// client certificate signed by the PKI's CA.
fn tls_kamailio(pki: &TestPki) -> anyhow::Result<(Kamailio, u16)> {
    let tls_port = free_port();
    let kamailio = Kamailio::start(KamailioOptions {
        tls: Some(KamailioTls {
            port: tls_port,
            certificate: pki.server_cert.clone(),
            private_key: pki.server_key.clone(),
            client_ca: Some(pki.ca.clone()),
        }),
        ..Default::default()
    })?;
    Ok((kamailio, tls_port))
}

/// A gateway registering at Kamailio's TLS port, trusting `ca`, presenting the PKI's client
/// certificate; `extra` goes at the end of its configuration.
fn tls_gateway(pki: &TestPki, tls_port: u16, ca: &Path, extra: &str) -> anyhow::Result<Gateway> {
    Gateway::start(&format!(
        r#"
[http]
listen = "127.0.0.1:0"
[sip]
listen = "127.0.0.1:0"
t1_ms = 100
tls_ca_file = "{}"
tls_client_cert = "{}"
tls_client_key = "{}"
[registrar]
address = "sip:127.0.0.1:{tls_port};transport=tls"
timeout_ms = 5000
{extra}"#,
        ca.display(),
        pki.client_cert.display(),
        pki.client_key.display(),
    ))
}

fn phone(kamailio: &Kamailio, user: &str, auto_answer: bool) -> anyhow::Result<Baresip> {
    Baresip::start(BaresipOptions {
        account: Some(BaresipAccount::rig_user(user, kamailio.sip_addr())?),
        auto_answer,
        ..Default::default()
    })
}

/// The registrar holds 1001's binding over TLS, naming TLS.
fn registered_over_tls(kamailio: &Kamailio) -> anyhow::Result<()> {
    let contacts = kamailio.contact_details("1001")?;
    ensure!(
        contacts.len() == 1
            && contacts[0].transport == "tls"
            && contacts[0]
                .uri
                .to_ascii_lowercase()
                .contains("transport=tls"),
        "expected one TLS binding: {contacts:?}"
    );
    Ok(())
}

/// REGISTER and an outgoing call over TLS through Kamailio to baresip (on UDP), the media
/// SRTP both ways (`media.srtp = "require"`, baresip's `mediaenc=srtp-mand`): the call starts,
/// each side hears the other's tone, every packet the SIP leg took passed SRTP
/// authentication, and the hang-up reaches baresip.
#[tokio::test]
async fn registers_and_calls_over_tls_with_srtp_and_a_client_certificate() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let (kamailio, tls_port) = tls_kamailio(&pki)?;
    let callee = Baresip::start(BaresipOptions {
        account: Some(BaresipAccount::rig_user("2000", kamailio.sip_addr())?),
        auto_answer: true,
        codecs: vec!["PCMU".to_string()],
        record: true,
        media_encryption: Some("srtp-mand".to_string()),
        ..Default::default()
    })?;
    let gateway = tls_gateway(&pki, tls_port, &pki.ca, "[media]\nsrtp = \"require\"\n")?;
    let (mut ws, session_id) =
        WsClient::start_session(&gateway.ws_url(), "1001", "secret1001").await?;
    registered_over_tls(&kamailio)?;

    let peer = RtpPeer::bind(dialtone_codecs::Codec::Pcmu).await?;
    let (call_id, point) = start_rtp_call(&mut ws, &session_id, "2000", &peer).await?;
    callee.wait_call_established(REPLY)?;
    ensure!(
        kamailio.count_log("REQ INVITE sip:2000@") > 0
            && kamailio
                .log_text()
                .lines()
                .any(|line| line.contains("REQ INVITE sip:2000@") && line.ends_with("/tls")),
        "the INVITE should reach Kamailio over TLS\n{}",
        kamailio.log_text()
    );
    srtp_call_tones_both_ways(
        &gateway,
        &mut ws,
        &session_id,
        &call_id,
        point,
        &peer,
        &callee,
    )
    .await?;
    ws.close().await?;
    gateway.wait_all_released(CLEANUP)?;
    Ok(())
}

/// A call to the registered user: Kamailio can only reach the gateway over the connection it
/// registered on (the gateway does not listen for TLS), so INCOMING_CALL proves it did; the
/// caller's BYE comes the same way.
#[tokio::test]
async fn incoming_call_arrives_over_the_registration_connection() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let (kamailio, tls_port) = tls_kamailio(&pki)?;
    let caller = phone(&kamailio, "1002", false)?;
    let gateway = tls_gateway(&pki, tls_port, &pki.ca, "")?;
    let (mut ws, session_id) =
        WsClient::start_session(&gateway.ws_url(), "1001", "secret1001").await?;
    registered_over_tls(&kamailio)?;

    caller.dial(&format!("sip:1001@{}", kamailio.sip_addr()))?;
    let incoming = ws.recv_type("INCOMING_CALL", REPLY).await?;
    ensure!(incoming["sessionId"] == session_id.as_str(), "{incoming}");
    let call_id = incoming["callId"]
        .as_str()
        .context("INCOMING_CALL without callId")?
        .to_string();
    ws.send_json(
        &json!({"type": "ACCEPT_CALL", "sessionId": session_id, "callId": call_id,
        "cc": {"audioCodecs": ["PCMA/8000"]}}),
    )
    .await?;
    let started = ws.recv_type("CALL_STARTED", REPLY).await?;
    ensure!(started["callId"] == call_id.as_str(), "{started}");
    caller.wait_call_established(REPLY)?;
    caller.hangup()?;
    let finished = ws.recv_type("CALL_FINISHED", REPLY).await?;
    ensure!(finished["callId"] == call_id.as_str(), "{finished}");
    ws.close().await?;
    gateway.wait_all_released(CLEANUP)?;
    Ok(())
}

/// A gateway trusting a CA that did not sign Kamailio's certificate refuses the connection:
/// SESSION_FAILED naming the certificate, nothing registered, the gateway still serving.
#[tokio::test]
async fn untrusted_registrar_certificate_fails_the_session() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let (kamailio, tls_port) = tls_kamailio(&pki)?;
    let gateway = tls_gateway(&pki, tls_port, &pki.other_ca, "")?;
    let mut ws = WsClient::connect(&gateway.ws_url()).await?;
    ws.recv_type("CONNECTED", REPLY).await?;
    ws.send_json(&json!({"type": "START_SESSION", "username": "1001", "password": "secret1001"}))
        .await?;
    let failed = ws.recv_type("SESSION_FAILED", REPLY).await?;
    let detail = failed["detail"].as_str().unwrap_or_default();
    ensure!(
        detail.contains("certificate") && detail.contains("UnknownIssuer"),
        "{failed}"
    );
    ensure!(kamailio.contacts("1001")?.is_empty(), "registered anyway");
    ensure!(
        gateway.try_wait()?.is_none(),
        "the gateway exited:\n{}",
        gateway.log_text()
    );
    ws.close().await?;
    gateway.wait_all_released(CLEANUP)?;
    Ok(())
}

/// The WebSocket over TLS: a client trusting the test CA starts a session over WSS; plain
/// `ws://` on the same port, and a client that does not trust the certificate, are refused
/// without harm to the next client.
#[tokio::test]
async fn websocket_over_tls() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let gateway = Gateway::start(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\
         [sip]\nlisten = \"127.0.0.1:0\"\n",
        pki.server_cert.display(),
        pki.server_key.display(),
    ))?;
    let address = gateway.http_addr();

    let plain = tokio::time::timeout(
        REPLY,
        tokio_tungstenite::connect_async(format!("ws://{address}/ws")),
    )
    .await
    .context("plain ws:// on the TLS port should be refused, not left hanging")?;
    ensure!(plain.is_err(), "plain ws:// was served on the TLS port");
    ensure!(
        wss_session(address, &pki.other_ca).await.is_err(),
        "a client that does not trust the certificate connected"
    );

    let started = wss_session(address, &pki.ca).await?;
    ensure!(started["type"] == "SESSION_STARTED", "{started}");
    ensure!(
        gateway.try_wait()?.is_none(),
        "the gateway exited:\n{}",
        gateway.log_text()
    );
    Ok(())
}

/// Connects over WSS trusting `ca`, starts a session; returns the reply to START_SESSION.
async fn wss_session(address: std::net::SocketAddr, ca: &Path) -> anyhow::Result<Value> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(address).await?;
    let tls = tokio::time::timeout(
        REPLY,
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("127.0.0.1")?, tcp),
    )
    .await??;
    let (mut ws, _) = tokio::time::timeout(
        REPLY,
        tokio_tungstenite::client_async(format!("wss://{address}/ws"), tls),
    )
    .await??;
    let connected = next_json(&mut ws).await?;
    ensure!(connected["type"] == "CONNECTED", "{connected}");
    ws.send(Message::text(
        json!({"type": "START_SESSION", "username": "alice", "password": "x"}).to_string(),
    ))
    .await?;
    let reply = next_json(&mut ws).await?;
    ws.close(None).await?;
    Ok(reply)
}

async fn next_json<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> anyhow::Result<Value>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let message = tokio::time::timeout(REPLY, ws.next())
            .await?
            .context("closed")??;
        if let Message::Text(text) = message {
            return Ok(serde_json::from_str(&text)?);
        }
    }
}
