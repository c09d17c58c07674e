//! Call audio end to end: a client-side RTP point (the test, speaking a
//! real codec) through the gateway and Kamailio to baresip, which records
//! what it hears and plays a 440 Hz tone back. The matrix covers client
//! PCMU, PCMA, G.722, Opus, Speex NB/WB against callees speaking PCMU,
//! PCMA and Opus.

use std::time::Duration;

use anyhow::{ensure, Context};
use dialtone_codecs::Codec;
use dialtone_tests::audio::analyze;
use dialtone_tests::baresip::{Baresip, BaresipAccount, BaresipOptions};
use dialtone_tests::gateway::{Gateway, LOOPBACK};
use dialtone_tests::kamailio::{Kamailio, KamailioOptions};
use dialtone_tests::rtp_peer::{
    dominant_hz, dtmf_in_wav, rms_dbfs, speech_wav, start_rtp_call, write_dtmf_wav, RtpPeer,
};
use dialtone_tests::ws_client::WsClient;
use serde_json::json;

const REPLY: Duration = Duration::from_secs(10);
const TONE_HZ: f64 = 1000.0;
/// baresip's default source tone.
const CALLEE_TONE_HZ: f64 = 440.0;

struct Line {
    kamailio: Kamailio,
    gateway: Gateway,
}

impl Line {
    fn start() -> anyhow::Result<Line> {
        let kamailio = Kamailio::start(KamailioOptions::default())?;
        let gateway = Gateway::start(&format!(
            "{LOOPBACK}t1_ms = 100\n[registrar]\naddress = \"sip:127.0.0.1:{};transport=udp\"\n",
            kamailio.sip_port()
        ))?;
        Ok(Line { kamailio, gateway })
    }

    fn callee(&self, codec: &str) -> anyhow::Result<Baresip> {
        Baresip::start(BaresipOptions {
            account: Some(BaresipAccount::rig_user("2000", self.kamailio.sip_addr())?),
            auto_answer: true,
            codecs: vec![codec.to_string()],
            record: true,
            ..Default::default()
        })
    }
}

/// One call from a client RTP point speaking `codec` to `callee`; returns
/// the frequency baresip heard and the one the client heard.
async fn call_with_tone(
    line: &Line,
    callee: &Baresip,
    codec: Codec,
    drop_every: u32,
) -> anyhow::Result<(f64, f64)> {
    let peer = RtpPeer::bind(codec).await?;
    let (mut ws, session_id) = open_session(line).await?;
    let (call_id, gateway_point) = start_rtp_call(&mut ws, &session_id, "2000", &peer).await?;
    callee.wait_call_established(REPLY)?;
    let heard = peer
        .exchange(gateway_point, TONE_HZ, 3.0, drop_every)
        .await?;
    ws.send_json(&json!({"type": "HANGUP_CALL", "sessionId": session_id, "callId": call_id}))
        .await?;
    ws.recv_type("CALL_FINISHED", REPLY).await?;
    callee.wait_call_closed(REPLY)?;
    let recording = callee.wait_heard_recording_finished(REPLY)?;
    let callee_heard = analyze(&recording, TONE_HZ)?.dominant_hz;
    let client_heard = dominant_hz(&heard, codec.sample_rate().hz())?;
    ws.close().await?;
    Ok((callee_heard, client_heard))
}

#[tokio::test]
async fn client_rtp_point_pcmu_talks_to_baresip_both_ways() -> anyhow::Result<()> {
    let line = Line::start()?;
    let callee = line.callee("PCMU")?;
    let (callee_heard, client_heard) = call_with_tone(&line, &callee, Codec::Pcmu, 0).await?;
    ensure!(
        (callee_heard - TONE_HZ).abs() < 15.0,
        "baresip heard {callee_heard} Hz"
    );
    ensure!(
        (client_heard - CALLEE_TONE_HZ).abs() < 15.0,
        "the client heard {client_heard} Hz"
    );
    Ok(())
}

#[tokio::test]
async fn transcoding_matrix_with_five_percent_loss() -> anyhow::Result<()> {
    let line = Line::start()?;
    for callee_codec in ["PCMU", "PCMA", "opus/48000/2"] {
        let callee = line.callee(callee_codec)?;
        for codec in [
            Codec::Pcma,
            Codec::Pcmu,
            Codec::G722,
            Codec::Opus,
            Codec::SpeexNarrow,
            Codec::SpeexWide,
        ] {
            // Every 20th packet lost: 5 %.
            let (callee_heard, client_heard) = call_with_tone(&line, &callee, codec, 20)
                .await
                .with_context(|| format!("{codec} → {callee_codec}"))?;
            ensure!(
                (callee_heard - TONE_HZ).abs() < 15.0,
                "{codec} → {callee_codec}: baresip heard {callee_heard} Hz"
            );
            ensure!(
                (client_heard - CALLEE_TONE_HZ).abs() < 15.0,
                "{callee_codec} → {codec}: the client heard {client_heard} Hz"
            );
        }
    }
    Ok(())
}

/// A client connected with a started session for user 1001.
async fn open_session(line: &Line) -> anyhow::Result<(WsClient, String)> {
    WsClient::start_session(&line.gateway.ws_url(), "1001", "secret1001").await
}

async fn started_call(line: &Line, b_uri: &str) -> anyhow::Result<(WsClient, String, String)> {
    let (mut ws, session_id) = open_session(line).await?;
    ws.send_json(&json!({"type": "START_CALL", "sessionId": session_id, "bUri": b_uri}))
        .await?;
    let call_id = ws.recv_type("CALL_STARTING", REPLY).await?["callId"]
        .as_str()
        .context("no callId")?
        .to_string();
    loop {
        let message = ws.recv_json(REPLY).await?;
        if message["type"] == "CALL_STARTED" {
            return Ok((ws, session_id, call_id));
        }
        ensure!(message["type"] == "CALL_STARTING", "{message}");
    }
}

#[tokio::test]
async fn digits_sent_as_inband_tones_are_heard_by_baresip() -> anyhow::Result<()> {
    let kamailio = Kamailio::start(KamailioOptions::default())?;
    let gateway = Gateway::start(&format!(
        "{LOOPBACK}t1_ms = 100\n[registrar]\naddress = \"sip:127.0.0.1:{}\"\n[media]\ndtmf_send = [\"inband\"]\n",
        kamailio.sip_port()
    ))?;
    let line = Line { kamailio, gateway };
    let callee = line.callee("PCMU")?;
    let (mut ws, session_id, call_id) = started_call(&line, "2000").await?;
    callee.wait_call_established(REPLY)?;
    ws.send_json(&json!({"type": "SEND_DTMF_SIGNAL", "sessionId": session_id, "callId": call_id, "dtmfString": "159#"}))
        .await?;
    // 4 digits × (100 ms tone + 100 ms gap), with margin; then the recording is closed.
    ws.expect_no_message(Duration::from_millis(2000)).await?;
    ws.send_json(&json!({"type": "HANGUP_CALL", "sessionId": session_id, "callId": call_id}))
        .await?;
    ws.recv_type("CALL_FINISHED", REPLY).await?;
    let recording = callee.wait_heard_recording_finished(REPLY)?;
    let heard = dtmf_in_wav(&recording)?;
    ensure!(
        heard == ['1', '5', '9', '#'],
        "baresip heard the digits {heard:?}"
    );
    ensure!(
        callee.received_dtmf().is_empty(),
        "digits should not arrive as events"
    );
    Ok(())
}

#[tokio::test]
async fn inband_tones_from_the_far_end_reach_the_client() -> anyhow::Result<()> {
    let kamailio = Kamailio::start(KamailioOptions::default())?;
    let gateway = Gateway::start(&format!(
        "{LOOPBACK}t1_ms = 100\n[registrar]\naddress = \"sip:127.0.0.1:{}\"\n[media]\ninband_detection = \"always\"\n",
        kamailio.sip_port()
    ))?;
    let source = tempfile::NamedTempFile::with_suffix(".wav")?;
    write_dtmf_wav(source.path(), "37*", 10.0)?;
    let line = Line { kamailio, gateway };
    // G.711 is scanned as it comes, Opus after going down to 8 kHz.
    for codec in ["PCMU", "opus/48000/2"] {
        let callee = Baresip::start(BaresipOptions {
            account: Some(BaresipAccount::rig_user("2000", line.kamailio.sip_addr())?),
            auto_answer: true,
            codecs: vec![codec.to_string()],
            audio_source: Some(source.path().to_path_buf()),
            ..Default::default()
        })?;
        let (mut ws, session_id, call_id) = started_call(&line, "2000").await?;
        for expected in ["3", "7", "*"] {
            let digit = ws.recv_type("DTMF_RECEIVED", REPLY).await?;
            ensure!(
                digit["digit"] == expected
                    && digit["method"] == "INBAND"
                    && digit["callId"] == call_id.as_str(),
                "{codec}: {digit}"
            );
        }
        ws.send_json(&json!({"type": "HANGUP_CALL", "sessionId": session_id, "callId": call_id}))
            .await?;
        ws.recv_type("CALL_FINISHED", REPLY).await?;
        callee.wait_call_closed(REPLY)?;
    }
    Ok(())
}

#[tokio::test]
async fn callees_spoken_prompt_reaches_the_clients_rtp_point() -> anyhow::Result<()> {
    let line = Line::start()?;
    let prompt = tempfile::NamedTempFile::with_suffix(".wav")?;
    speech_wav(
        prompt.path(),
        "Welcome to the test line. Please enter your digits.",
        10.0,
    )?;
    let callee = Baresip::start(BaresipOptions {
        account: Some(BaresipAccount::rig_user("2000", line.kamailio.sip_addr())?),
        auto_answer: true,
        codecs: vec!["PCMU".to_string()],
        audio_source: Some(prompt.path().to_path_buf()),
        ..Default::default()
    })?;
    let peer = RtpPeer::bind(Codec::Opus).await?;
    let (mut ws, session_id) = open_session(&line).await?;
    let (call_id, point) = start_rtp_call(&mut ws, &session_id, "2000", &peer).await?;
    callee.wait_call_established(REPLY)?;
    // The client speaks Opus, the callee PCMU: the prompt is transcoded.
    let heard = peer.exchange(point, TONE_HZ, 3.0, 0).await?;
    let level = rms_dbfs(&heard, Codec::Opus.sample_rate().hz());
    ensure!(level > -40.0, "the client heard {level:.1} dBFS: no speech");
    ws.send_json(&json!({"type": "HANGUP_CALL", "sessionId": session_id, "callId": call_id}))
        .await?;
    ws.recv_type("CALL_FINISHED", REPLY).await?;
    Ok(())
}
