//! The gateway's own web page in headless Chromium (fake microphone: a
//! 1 kHz tone), everything in a private network namespace with only `lo`:
//! it logs in, calls baresip through Kamailio, talks, sends keypad digits
//! and hangs up; it rings for a call from baresip and answers it; it calls
//! the built-in echo line. What is checked is what a person would: what
//! baresip recorded and received, what the page heard, that packets flowed
//! both ways, and that nothing is left in the gateway afterwards.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context};
use dialtone_tests::audio::{analyze, tone_wav};
use dialtone_tests::baresip::{Baresip, BaresipAccount, BaresipOptions};
use dialtone_tests::browser::Browser;
use dialtone_tests::gateway::{Gateway, LOOPBACK};
use dialtone_tests::kamailio::{Kamailio, KamailioOptions};
use dialtone_tests::netns;
use dialtone_tests::rtp_peer::speech_wav;
use dialtone_tests::wait::wait_until;
use serde_json::Value;

const TONE_HZ: f64 = 1000.0;
/// baresip's own source when it has no file: a 440 Hz tone.
const BARESIP_TONE_HZ: f64 = 440.0;
const STEP: Duration = Duration::from_secs(20);
const PEER: Duration = Duration::from_secs(15);

/// Where screenshots of the page are kept after the run.
fn artifacts_dir() -> anyhow::Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn registrar_gateway(kamailio: &Kamailio) -> anyhow::Result<Gateway> {
    Gateway::start(&format!(
        "{LOOPBACK}t1_ms = 100\n[registrar]\naddress = \"sip:127.0.0.1:{};transport=udp\"\n",
        kamailio.sip_port()
    ))
}

fn assert_nothing_held(gateway: &Gateway) -> anyhow::Result<()> {
    gateway.wait_released(
        &["calls", "sipDialogs", "mediaPorts"],
        Duration::from_secs(40),
    )
}

/// The page, opened and logged in as `user`.
fn logged_in_page(
    gateway: &Gateway,
    mic: &Path,
    user: &str,
    password: &str,
) -> anyhow::Result<Browser> {
    let mut page = Browser::launch(mic)?;
    page.goto(&format!("http://{}/", gateway.http_addr()))?;
    page.wait_for(
        "document.querySelector('#connection-state').textContent.includes('connected')",
        STEP,
    )?;
    page.fill("#username", user)?;
    page.fill("#password", password)?;
    page.click("#login")?;
    wait_state(&mut page, "session", "logged-in")?;
    Ok(page)
}

/// Waits for `window.dialtone.state()[key] == value`; the error shows the page's state.
fn wait_state(page: &mut Browser, key: &str, value: &str) -> anyhow::Result<()> {
    let condition = format!("window.dialtone.state().{key} === '{value}'");
    if let Err(error) = page.wait_for(&condition, STEP) {
        let state = page
            .eval("JSON.stringify({...window.dialtone.state(), messages: window.dialtone.state().messages.slice(-6)})")
            .unwrap_or_default();
        return Err(error.context(format!("waiting for {key} = {value}; page state {state}")));
    }
    Ok(())
}

fn mic_tone(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("mic-1k.wav");
    tone_wav(&path, TONE_HZ, 60.0, 48_000)?;
    Ok(path)
}

fn number(value: &Value, key: &str) -> f64 {
    value[key].as_f64().unwrap_or_default()
}

#[test]
fn page_calls_baresip_talks_sends_digits_and_hangs_up() {
    if !netns::in_private_netns("page_calls_baresip_talks_sends_digits_and_hangs_up") {
        return;
    }
    if let Err(error) = page_calls_baresip() {
        panic!("{error:?}");
    }
}

fn page_calls_baresip() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mic = mic_tone(dir.path())?;
    let prompt = dir.path().join("prompt.wav");
    speech_wav(
        &prompt,
        "Welcome to the test line. Please enter your digits.",
        30.0,
    )?;
    let kamailio = Kamailio::start(KamailioOptions::default())?;
    let callee = Baresip::start(BaresipOptions {
        account: Some(BaresipAccount::rig_user("2000", kamailio.sip_addr())?),
        auto_answer: true,
        codecs: vec!["PCMU".to_string()],
        audio_source: Some(prompt),
        record: true,
        ..Default::default()
    })?;
    let gateway = registrar_gateway(&kamailio)?;
    let mut page = logged_in_page(&gateway, &mic, "1001", "secret1001")?;

    page.fill("#number", "2000")?;
    page.click("#call")?;
    wait_state(&mut page, "call", "connected")?;
    callee.wait_call_established(PEER)?;

    // baresip's spoken prompt reaches the page's analyser.
    page.wait_for("window.dialtone.levels().remoteDbfs > -45", STEP)
        .context("the page hears nothing of baresip's prompt")?;
    // Packets both ways, as the browser counts them.
    let stats = page.wait_for(
        "(async () => { const s = await window.dialtone.stats(); \
         return s.packetsSent > 100 && s.packetsReceived > 100 ? s : false; })()",
        STEP,
    )?;
    ensure!(
        number(&stats, "packetsSent") > 100.0 && number(&stats, "packetsReceived") > 100.0,
        "getStats: {stats}"
    );

    // Keypad digits, sent by the browser's RTCDTMFSender as RFC 4733.
    for digit in ["1", "5", "9", "#"] {
        page.click(&format!("button[data-digit=\"{digit}\"]"))?;
    }
    let expected = vec!['1', '5', '9', '#'];
    wait_until(PEER, || Ok(callee.received_dtmf() == expected))
        .with_context(|| format!("baresip received {:?}", callee.received_dtmf()))?;

    page.screenshot(&artifacts_dir()?.join("webrtc-page-in-call.png"))?;
    page.click("#hangup")?;
    wait_state(&mut page, "call", "finished")?;
    callee.wait_call_closed(PEER)?;

    let recording = callee.wait_heard_recording_finished(PEER)?;
    let heard = analyze(&recording, TONE_HZ)?;
    ensure!(
        (heard.dominant_hz - TONE_HZ).abs() < 15.0,
        "baresip heard {} Hz from the page's microphone",
        heard.dominant_hz
    );
    page.close()?;
    assert_nothing_held(&gateway)
}

#[test]
fn call_from_baresip_rings_in_the_page_and_is_answered_there() {
    if !netns::in_private_netns("call_from_baresip_rings_in_the_page_and_is_answered_there") {
        return;
    }
    if let Err(error) = incoming_call_answered_in_page() {
        panic!("{error:?}");
    }
}

fn incoming_call_answered_in_page() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mic = mic_tone(dir.path())?;
    let kamailio = Kamailio::start(KamailioOptions::default())?;
    let caller = Baresip::start(BaresipOptions {
        account: Some(BaresipAccount::rig_user("2000", kamailio.sip_addr())?),
        codecs: vec!["PCMU".to_string()],
        ..Default::default()
    })?;
    let gateway = registrar_gateway(&kamailio)?;
    let mut page = logged_in_page(&gateway, &mic, "1001", "secret1001")?;
    wait_until(PEER, || Ok(kamailio.contacts("1001")?.len() == 1))
        .context("the page's session did not register")?;

    caller.dial(&format!("sip:1001@{}", kamailio.sip_addr()))?;
    wait_state(&mut page, "call", "incoming")?;
    let from = page.eval("document.querySelector('#incoming-from').textContent")?;
    ensure!(
        from.as_str().unwrap_or_default().contains("2000"),
        "caller shown as {from}"
    );
    page.click("#accept")?;
    wait_state(&mut page, "call", "connected")?;
    caller.wait_call_established(PEER)?;
    // baresip's 440 Hz tone arrives in the page.
    page.wait_for(
        &format!("Math.abs((window.dialtone.remotePeakHz() || 0) - {BARESIP_TONE_HZ}) < 30"),
        STEP,
    )
    .context("the page does not hear the caller's tone")?;

    caller.hangup()?;
    wait_state(&mut page, "call", "finished")?;
    page.close()?;
    assert_nothing_held(&gateway)
}

#[test]
fn echo_line_called_from_the_page_returns_the_tone() {
    if !netns::in_private_netns("echo_line_called_from_the_page_returns_the_tone") {
        return;
    }
    if let Err(error) = echo_from_page() {
        panic!("{error:?}");
    }
}

fn echo_from_page() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mic = mic_tone(dir.path())?;
    let gateway = Gateway::start(LOOPBACK)?;
    let mut page = logged_in_page(&gateway, &mic, "visitor", "")?;
    page.fill("#number", "echo")?;
    page.click("#call")?;
    wait_state(&mut page, "call", "connected")?;
    page.wait_for(
        &format!("Math.abs((window.dialtone.remotePeakHz() || 0) - {TONE_HZ}) < 30"),
        STEP,
    )
    .context("the echo of the page's tone does not come back")?;
    page.click("#hangup")?;
    wait_state(&mut page, "call", "finished")?;
    page.close()?;
    assert_nothing_held(&gateway)
}
