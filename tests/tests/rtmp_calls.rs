//! The RTMP leg with ffmpeg as the Flash-style client: it reads the adapted
//! SDP of the SDP_OFFER, publishes a 1 kHz tone to one stream and plays the
//! other, over RTMP, RTMPT and RTMPS, in Speex, G.711, AAC and Opus. What is
//! checked is what a user would: what baresip (through Kamailio) recorded
//! and received, what the player recorded, which publishes are refused, and
//! that the gateway holds nothing once the calls are over.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use dialtone_tests::audio::analyze;
use dialtone_tests::baresip::{Baresip, BaresipAccount, BaresipOptions};
use dialtone_tests::ffmpeg::FlashOffer;
use dialtone_tests::ffmpeg::{expect_refused, AudioSource, FlvAudio, Player, Publisher};
use dialtone_tests::gateway::{Gateway, LOOPBACK};
use dialtone_tests::kamailio::{Kamailio, KamailioOptions};
use dialtone_tests::process::Logged;
use dialtone_tests::rtp_peer::speech_wav;
use dialtone_tests::wait::wait_until;
use dialtone_tests::ws_client::WsClient;
use serde_json::json;

const REPLY: Duration = Duration::from_secs(10);
const MEDIA: Duration = Duration::from_secs(20);
const TONE_HZ: f64 = 1000.0;
const PROGRESS: &[&str] = &["CALL_STARTING", "CALL_STARTED"];

/// START_CALL as an RTMP client naming `codecs`; returns its offer.
async fn rtmp_call(
    ws: &mut WsClient,
    session_id: &str,
    line: &str,
    codecs: &[&str],
) -> anyhow::Result<FlashOffer> {
    ws.send_json(&json!({
        "type": "START_CALL", "sessionId": session_id, "bUri": line,
        "cc": {"audioCodecs": codecs, "mediaTransport": ["RTMP"]},
    }))
    .await?;
    let offer = ws.recv_type_skipping("SDP_OFFER", PROGRESS, REPLY).await?;
    let call_id = offer["callId"].as_str().context("callId")?;
    FlashOffer::parse(call_id, offer["sdp"].as_str().context("sdp")?)
}

async fn hang_up(ws: &mut WsClient, session_id: &str, call_id: &str) -> anyhow::Result<()> {
    ws.send_json(&json!({"type": "HANGUP_CALL", "sessionId": session_id, "callId": call_id}))
        .await?;
    ws.recv_type_skipping(
        "CALL_FINISHED",
        &["CALL_STARTING", "CALL_STARTED", "DTMF_RECEIVED"],
        REPLY,
    )
    .await?;
    Ok(())
}

fn assert_nothing_held(gateway: &Gateway) -> anyhow::Result<()> {
    gateway.wait_released(
        &["calls", "sipDialogs", "mediaPorts", "tasks"],
        Duration::from_secs(40),
    )
}

/// Plays until `seconds` of audio are in `wav`, then checks it is the tone.
fn heard_tone(player: &Player, wav: &Path) -> anyhow::Result<()> {
    let status = player.wait_exit(MEDIA)?;
    ensure!(status.success(), "player failed:\n{}", player.log_text());
    let report = analyze(wav, TONE_HZ)?;
    ensure!(
        report.dominant_near(TONE_HZ, 20.0),
        "the player heard {report:?}"
    );
    Ok(())
}

fn tone(seconds: f64) -> AudioSource {
    AudioSource::Tone {
        hz: TONE_HZ,
        seconds,
    }
}

/// The codec the gateway plays, for each codec the client names.
fn played(codec: FlvAudio) -> (&'static str, FlvAudio) {
    match codec {
        FlvAudio::PcmMuLaw => ("PCMU/8000", FlvAudio::PcmMuLaw),
        FlvAudio::PcmALaw => ("PCMA/8000", FlvAudio::PcmALaw),
        FlvAudio::Opus => ("opus/48000/2", FlvAudio::Opus),
        _ => ("speex/16000", FlvAudio::Speex),
    }
}

#[tokio::test]
async fn rtmp_client_talks_to_baresip_in_speex_g711_aac_and_opus() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let prompt = dir.path().join("prompt.wav");
    speech_wav(
        &prompt,
        "Welcome to the test line. Please enter your digits.",
        30.0,
    )?;
    let kamailio = Kamailio::start(KamailioOptions::default())?;
    let gateway = Gateway::start(&format!(
        "{LOOPBACK}t1_ms = 100\n[registrar]\naddress = \"sip:127.0.0.1:{};transport=udp\"\n",
        kamailio.sip_port()
    ))?;
    let (mut ws, session_id) =
        WsClient::start_session(&gateway.ws_url(), "1001", "secret1001").await?;
    for codec in [
        FlvAudio::Speex,
        FlvAudio::PcmMuLaw,
        FlvAudio::Aac,
        FlvAudio::Opus,
    ] {
        let callee = Baresip::start(BaresipOptions {
            account: Some(BaresipAccount::rig_user("2000", kamailio.sip_addr())?),
            auto_answer: true,
            codecs: vec!["PCMU".to_string()],
            audio_source: Some(prompt.clone()),
            record: true,
            ..Default::default()
        })?;
        let (label, play_codec) = played(codec);
        let offer = rtmp_call(&mut ws, &session_id, "2000", &[label]).await?;
        callee.wait_call_established(REPLY)?;
        let wav = dir.path().join(format!("played-{}.wav", codec.name()));
        let player = Player::start_for(play_codec, &offer.url("rtmp", &offer.play)?, &wav, 3.0)?;
        let publisher = Publisher::start(&offer.url("rtmp", &offer.publish)?, codec, tone(30.0))?;
        publisher.wait_publishing(MEDIA)?;
        player.wait_receiving(MEDIA)?;
        let status = player.wait_exit(MEDIA)?;
        ensure!(
            status.success(),
            "{}: player failed:\n{}",
            codec.name(),
            player.log_text()
        );
        // Baresip's prompt, transcoded to the player's codec.
        let heard = analyze(&wav, TONE_HZ)?;
        ensure!(
            heard.rms_dbfs > -40.0,
            "{}: the player heard no speech: {heard:?}",
            codec.name()
        );
        wait_until(MEDIA, || Ok(publisher.sent() >= Duration::from_secs(4)))?;
        hang_up(&mut ws, &session_id, &offer.name).await?;
        callee.wait_call_closed(REPLY)?;
        let recording = callee.wait_heard_recording_finished(REPLY)?;
        let callee_heard = analyze(&recording, TONE_HZ)?;
        ensure!(
            callee_heard.dominant_near(TONE_HZ, 15.0),
            "{}: baresip heard {callee_heard:?}",
            codec.name()
        );
    }
    ws.close().await?;
    assert_nothing_held(&gateway)
}

/// A call to the echo line over `scheme`: the player (first, as a Speex
/// decoder must start with the stream) hears the publisher's tone; the
/// call's end releases the publisher's connection.
async fn echo_round_trip(gateway: &Gateway, scheme: &str, codec: FlvAudio) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut ws, session_id) = WsClient::start_session(&gateway.ws_url(), "flash", "").await?;
    let (label, played_codec) = played(codec);
    let offer = rtmp_call(&mut ws, &session_id, "echo", &[label]).await?;
    let wav = dir.path().join("echo.wav");
    let player = Player::start_for(played_codec, &offer.url(scheme, &offer.play)?, &wav, 3.0)?;
    let publisher = Publisher::start(&offer.url(scheme, &offer.publish)?, codec, tone(20.0))?;
    publisher.wait_publishing(MEDIA)?;
    heard_tone(&player, &wav)?;
    hang_up(&mut ws, &session_id, &offer.name).await?;
    publisher.wait_exit(MEDIA)?;
    ws.close().await?;
    assert_nothing_held(gateway)
}

#[tokio::test]
async fn echo_line_returns_the_tone_on_the_play_stream() -> anyhow::Result<()> {
    let gateway = Gateway::start(LOOPBACK)?;
    echo_round_trip(&gateway, "rtmp", FlvAudio::Speex).await
}

#[tokio::test]
async fn linear_pcm_from_the_publisher_is_resampled_and_carried() -> anyhow::Result<()> {
    let gateway = Gateway::start(LOOPBACK)?;
    echo_round_trip(&gateway, "rtmp", FlvAudio::LinearPcm).await
}

#[tokio::test]
async fn players_before_the_publisher_and_mid_call_both_get_audio() -> anyhow::Result<()> {
    let gateway = Gateway::start(LOOPBACK)?;
    // G.711, and Opus, whose late player needs the sequence header again.
    for codec in [FlvAudio::PcmMuLaw, FlvAudio::Opus] {
        early_and_late_players(&gateway, codec)
            .await
            .with_context(|| codec.name())?;
    }
    assert_nothing_held(&gateway)
}

async fn early_and_late_players(gateway: &Gateway, codec: FlvAudio) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut ws, session_id) = WsClient::start_session(&gateway.ws_url(), "flash", "").await?;
    let (label, _) = played(codec);
    let offer = rtmp_call(&mut ws, &session_id, "echo", &[label]).await?;
    let play_url = offer.url("rtmp", &offer.play)?;
    let early_wav = dir.path().join("early.wav");
    let early = Player::start_for(codec, &play_url, &early_wav, 6.0)?;
    let publisher = Publisher::start(&offer.url("rtmp", &offer.publish)?, codec, tone(20.0))?;
    publisher.wait_publishing(MEDIA)?;
    early.wait_receiving(MEDIA)?;
    wait_until(MEDIA, || Ok(early.received() >= Duration::from_secs(2)))?;
    let late_wav = dir.path().join("late.wav");
    let late = Player::start_for(codec, &play_url, &late_wav, 3.0)?;
    heard_tone(&late, &late_wav).context("the player that joined mid-call")?;
    heard_tone(&early, &early_wav).context("the player that came first")?;
    hang_up(&mut ws, &session_id, &offer.name).await?;
    ws.close().await
}

#[tokio::test]
async fn unknown_taken_and_ended_streams_are_refused() -> anyhow::Result<()> {
    let gateway = Gateway::start(LOOPBACK)?;
    let rtmp = gateway.rtmp_addr()?;
    let unknown = format!("rtmp://{rtmp}/live/0123456789abcdef0123456789abcdef");
    expect_refused(&unknown, FlvAudio::Speex, MEDIA).context("an unknown name")?;

    let (mut ws, session_id) = WsClient::start_session(&gateway.ws_url(), "flash", "").await?;
    let offer = rtmp_call(&mut ws, &session_id, "echo", &["speex/16000"]).await?;
    let publish_url = offer.url("rtmp", &offer.publish)?;
    let first = Publisher::start(&publish_url, FlvAudio::Speex, tone(20.0))?;
    first.wait_publishing(MEDIA)?;
    // The gateway has taken the first publisher before a second is tried.
    wait_until(MEDIA, || {
        Ok(gateway.log_text().contains("RTMP client publishing"))
    })?;
    expect_refused(&publish_url, FlvAudio::Speex, MEDIA).context("a second publisher")?;
    // Playing the publish stream is no way in either.
    let played = Player::start(&publish_url, &std::env::temp_dir().join("never.wav"), 1.0)?;
    ensure!(
        !played.wait_exit(MEDIA)?.success(),
        "playing the publish stream worked"
    );
    hang_up(&mut ws, &session_id, &offer.name).await?;
    expect_refused(&publish_url, FlvAudio::Speex, MEDIA).context("the ended call's stream")?;
    ws.close().await?;
    assert_nothing_held(&gateway)
}

#[tokio::test]
async fn nellymoser_is_refused_with_a_status_saying_so() -> anyhow::Result<()> {
    let gateway = Gateway::start(LOOPBACK)?;
    let (mut ws, session_id) = WsClient::start_session(&gateway.ws_url(), "flash", "").await?;
    let offer = rtmp_call(&mut ws, &session_id, "echo", &["speex/16000"]).await?;
    let publisher = Publisher::start(
        &offer.url("rtmp", &offer.publish)?,
        FlvAudio::Nellymoser,
        tone(20.0),
    )?;
    wait_until(MEDIA, || {
        Ok(gateway.log_text().contains("Nellymoser refused"))
    })?;
    ensure!(
        !publisher.wait_exit(MEDIA)?.success(),
        "ffmpeg went on publishing Nellymoser"
    );
    hang_up(&mut ws, &session_id, &offer.name).await?;
    ws.close().await?;
    assert_nothing_held(&gateway)
}

#[tokio::test]
async fn digits_sent_during_an_rtmp_call_reach_baresip() -> anyhow::Result<()> {
    let kamailio = Kamailio::start(KamailioOptions::default())?;
    let callee = Baresip::start(BaresipOptions {
        account: Some(BaresipAccount::rig_user("2000", kamailio.sip_addr())?),
        auto_answer: true,
        ..Default::default()
    })?;
    let gateway = Gateway::start(&format!(
        "{LOOPBACK}t1_ms = 100\n[registrar]\naddress = \"sip:127.0.0.1:{};transport=udp\"\n",
        kamailio.sip_port()
    ))?;
    let (mut ws, session_id) =
        WsClient::start_session(&gateway.ws_url(), "1001", "secret1001").await?;
    let offer = rtmp_call(&mut ws, &session_id, "2000", &["speex/16000"]).await?;
    callee.wait_call_established(REPLY)?;
    let publisher = Publisher::start(
        &offer.url("rtmp", &offer.publish)?,
        FlvAudio::Speex,
        tone(20.0),
    )?;
    publisher.wait_publishing(MEDIA)?;
    ws.send_json(&json!({"type": "SEND_DTMF_SIGNAL", "sessionId": session_id, "callId": offer.name, "dtmfString": "159#"}))
        .await?;
    let expected = vec!['1', '5', '9', '#'];
    wait_until(MEDIA, || Ok(callee.received_dtmf() == expected))
        .with_context(|| format!("baresip received {:?}", callee.received_dtmf()))?;
    hang_up(&mut ws, &session_id, &offer.name).await?;
    ws.close().await?;
    assert_nothing_held(&gateway)
}

#[tokio::test]
async fn rtmpt_on_the_http_port_carries_the_call() -> anyhow::Result<()> {
    let gateway = Gateway::start(LOOPBACK)?;
    echo_round_trip(&gateway, "rtmpt", FlvAudio::PcmMuLaw).await
}

#[tokio::test]
async fn rtmps_with_a_configured_certificate_carries_the_call() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("running openssl")?;
    if !made.status.success() {
        bail!("openssl: {}", String::from_utf8_lossy(&made.stderr));
    }
    let gateway = Gateway::start(&format!(
        "{LOOPBACK}[rtmp]\ntls_listen = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    ))?;
    gateway.rtmps_addr()?;
    // The player and the publisher take the rtmps:// endpoint of the SDP.
    echo_round_trip(&gateway, "rtmps", FlvAudio::PcmMuLaw).await
}
