//! The media relay as a far end's jitter buffer sees it, end to end: what the gateway forwards
//! between a client's RTP point and a real SIP far end must keep the sender's timing, its gaps
//! and its order (sequence numbers and timestamps offset-mapped into the gateway's stream), and
//! digits sent with SEND_DTMF_SIGNAL must end even when the client sends no audio at all. The
//! same holds once a steady relay is carried by the kernel's fast path, and when digits take it
//! back.
//!
//! The SIP far end is a SIPp callee whose SDP names a socket this test owns
//! ([`SippOptions::media_port`]), so the test sees every packet the gateway sends it and sends
//! the far end's own stream; or baresip through Kamailio, for what a softphone makes of digits.
//!
//! Why a digit can fail to end although its end packets were sent: a far end with a jitter
//! buffer (baresip, most phones) plays a packet out only when later packets push it through.
//! A gateway that sends the digits' events and then nothing, because the client sends no
//! audio, leaves the last digit's end packets in that buffer: the far end never sees the end.

use std::time::Duration;

use anyhow::{ensure, Context};
use dialtone_codecs::Codec;
use dialtone_tests::baresip::{Baresip, BaresipAccount, BaresipOptions};
use dialtone_tests::gateway::{proxy_config, registrar_config, Gateway, LOOPBACK};
use dialtone_tests::kamailio::{Kamailio, KamailioOptions};
use dialtone_tests::rtp_peer::{
    dominant_hz, offer_rtp_call, sdp_audio_addr, start_rtp_call, start_unanswered_rtp_call, RtpPeer,
};
use dialtone_tests::rtp_stream::{
    check_telephone_events, ReceivedRtp, RelayReport, ScriptedStream, TelephoneEvent,
};
use dialtone_tests::sipp::{Sipp, SippOptions, UasScenario};
use dialtone_tests::wait::wait_until;
use dialtone_tests::ws_client::WsClient;
use serde_json::json;

const REPLY: Duration = Duration::from_secs(10);
const PEER: Duration = Duration::from_secs(10);

/// The digits of the DTMF tests; the last one, `*`, is the one whose end went missing.
const DIGITS: &str = "1234#*";

/// A SIPp callee running `scenario` whose media is `far_end`'s socket, and a gateway that
/// sends its calls straight to it.
fn sipp_far_end(scenario: UasScenario, far_end: &RtpPeer) -> anyhow::Result<(Sipp, Gateway)> {
    sipp_far_end_with(scenario, far_end, "")
}

/// [`sipp_far_end`] with `sections` appended to the gateway's configuration.
fn sipp_far_end_with(
    scenario: UasScenario,
    far_end: &RtpPeer,
    sections: &str,
) -> anyhow::Result<(Sipp, Gateway)> {
    let sipp = Sipp::uas(
        scenario,
        SippOptions {
            media_port: Some(far_end.local_addr()?.port()),
            ..Default::default()
        },
    )?;
    let gateway = Gateway::start(&format!("{}{sections}", proxy_config(sipp.sip_addr(), "")))?;
    Ok((sipp, gateway))
}

/// Where the gateway's SIP side listens for the far end's RTP: the SDP of its INVITE.
fn gateway_sip_point(sipp: &Sipp) -> anyhow::Result<std::net::SocketAddr> {
    let invite = sipp.wait_for_message("INVITE sip:", PEER)?;
    sdp_audio_addr(invite.body()).context("the gateway's INVITE")
}

async fn hang_up(
    ws: &mut WsClient,
    session_id: &str,
    call_id: &str,
    sipp: &Sipp,
) -> anyhow::Result<()> {
    ws.send_json(&json!({"type": "HANGUP_CALL", "sessionId": session_id, "callId": call_id}))
        .await?;
    ws.recv_type_skipping("CALL_FINISHED", &["DTMF_RECEIVED"], REPLY)
        .await?;
    sipp.wait_success(PEER)
}

/// Same codec on both sides (PCMU), so the gateway relays packet by packet: each direction
/// must arrive as the sender made it, in the gateway's numbering (offset-mapped sequence
/// numbers and timestamps, one SSRC), with 240-sample steps, the sender's gaps and order, the
/// marker on the first packet, and the payloads intact.
#[tokio::test]
async fn ptime_30_relay_keeps_timing_gaps_and_order_both_ways() -> anyhow::Result<()> {
    let far_end = RtpPeer::bind(Codec::Pcmu).await?;
    let (sipp, gateway) = sipp_far_end(UasScenario::AnswerPtime30, &far_end)?;
    let client = RtpPeer::bind(Codec::Pcmu).await?.with_ptime(30);
    let (mut ws, session_id) = WsClient::start_session(&gateway.ws_url(), "alice", "x").await?;
    let (call_id, client_point) = start_rtp_call(&mut ws, &session_id, "3000", &client).await?;
    let sip_point = gateway_sip_point(&sipp)?;

    // Each side a real sender at ptime 30 with every 10th packet lost on the way and one pair
    // overtaking each other; the far end's numbers wrap (16-bit sequence, 32-bit timestamp)
    // within the stream, as a randomly started stream's may.
    let up = ScriptedStream::pcmu_ptime_30(0x00c1_1e47, 1000, 160_000);
    let down = ScriptedStream::pcmu_ptime_30(0x0fa7_e4d0, 65_500, u32::MAX - 4800);
    let (heard_by_client, heard_by_far_end) = tokio::try_join!(
        client.play_and_record(client_point, &up, down.sent_order().len()),
        far_end.play_and_record(sip_point, &down, up.sent_order().len()),
    )?;
    let upstream = RelayReport::check(&up, &heard_by_far_end);
    let downstream = RelayReport::check(&down, &heard_by_client);
    ensure!(
        upstream.is_faithful() && downstream.is_faithful(),
        "the relay is not faithful to the sender's stream\n\
         client → far end (faithful: {}):\n{upstream}\
         far end → client (faithful: {}):\n{downstream}",
        upstream.is_faithful(),
        downstream.is_faithful(),
    );
    hang_up(&mut ws, &session_id, &call_id, &sipp).await
}

/// A steady same-codec relay is handed to the kernel's fast path (a TC program; the suite runs
/// as root, so the gateway may load it): what reaches each side must be exactly what the
/// gateway itself would send (the same checks as above, with the sequence number and timestamp
/// wraps and the swapped pair falling after the hand-over), the kernel must really have carried
/// it (its forwarded-packet count), digits sent meanwhile must take the relay back into the
/// gateway and reach the far end whole, a new stream must be handed over again, and no kernel
/// rule may outlive the call.
#[tokio::test]
async fn the_kernel_relays_a_steady_call_as_the_gateway_would_and_gives_it_back_for_digits(
) -> anyhow::Result<()> {
    const FORWARDED: &str = "dialtone_kernel_forwarded_packets_total";
    const RELAYS: &str = "dialtone_kernel_relays";
    let far_end = RtpPeer::bind(Codec::Pcmu).await?;
    let (sipp, gateway) = sipp_far_end(UasScenario::AnswerPtime30, &far_end)?;
    ensure!(
        gateway.count_log("kernel fast path on") == 1,
        "the gateway did not load its kernel fast path (run the suite as root on Linux >= 6.6)"
    );
    let client = RtpPeer::bind(Codec::Pcmu).await?.with_ptime(30);
    let (mut ws, session_id) = WsClient::start_session(&gateway.ws_url(), "alice", "x").await?;
    let (call_id, client_point) = start_rtp_call(&mut ws, &session_id, "3000", &client).await?;
    let sip_point = gateway_sip_point(&sipp)?;

    let relay_both_ways = async |up: &ScriptedStream, down: &ScriptedStream| {
        let (heard_by_client, heard_by_far_end) = tokio::try_join!(
            client.play_and_record(client_point, up, down.sent_order().len()),
            far_end.play_and_record(sip_point, down, up.sent_order().len()),
        )?;
        let upstream = RelayReport::check(up, &heard_by_far_end);
        let downstream = RelayReport::check(down, &heard_by_client);
        ensure!(
            upstream.is_faithful() && downstream.is_faithful(),
            "the kernel's relay is not faithful to the sender's stream\n\
             client → far end:\n{upstream}far end → client:\n{downstream}"
        );
        anyhow::Ok(())
    };
    // 250 packets: the first 50 or so go through the gateway, the rest through the kernel,
    // where the far end's sequence numbers (from packet 136) and timestamps (from 120) wrap
    // and packets 180 and 181 overtake each other.
    let up = ScriptedStream {
        packets: 250,
        swap_at: Some(180),
        ..ScriptedStream::pcmu_ptime_30(0x00c1_1e47, 1000, 160_000)
    };
    let down = ScriptedStream {
        packets: 250,
        swap_at: Some(180),
        ..ScriptedStream::pcmu_ptime_30(0x0fa7_e4d0, 65_400, u32::MAX - 240 * 120)
    };
    relay_both_ways(&up, &down).await?;
    // Counted as the gateway reads the kernel's counters back, within about a second.
    let carried = 2.0 * 150.0;
    wait_until(PEER, || Ok(gateway.metric(FORWARDED)? >= carried))
        .with_context(|| format!("the kernel forwarded fewer than {carried} packets"))?;

    let received = send_digits_and_record(&mut ws, &session_id, &call_id, &far_end).await?;
    check_telephone_events(&received, 101, DIGITS).map_err(|problems| {
        anyhow::anyhow!("digits sent while the kernel had the relay:\n{problems}")
    })?;
    ensure!(
        gateway.metric(RELAYS)? == 0.0,
        "the relays are back in the gateway while digits go out and nothing is relayed"
    );

    let before = gateway.metric(FORWARDED)?;
    let up = ScriptedStream {
        packets: 150,
        swap_at: None,
        ..ScriptedStream::pcmu_ptime_30(0x00c1_1e48, 7000, 9_000_000)
    };
    let down = ScriptedStream {
        packets: 150,
        swap_at: None,
        ..ScriptedStream::pcmu_ptime_30(0x0fa7_e4d1, 300, 77_000)
    };
    relay_both_ways(&up, &down).await?;
    wait_until(PEER, || {
        Ok(gateway.metric(FORWARDED)? >= before + 2.0 * 60.0)
    })
    .context("the new streams were not handed to the kernel again")?;

    hang_up(&mut ws, &session_id, &call_id, &sipp).await?;
    wait_until(PEER, || Ok(gateway.metric(RELAYS)? == 0.0))
        .context("a kernel rule outlived its call")?;
    ws.close().await?;
    gateway.wait_all_released(PEER)
}

/// While the kernel carries a call, the gateway must still defend it and watch it. A stranger
/// who finds the SIP side's port (its own SSRC, then the far end's SSRC from another port) gets
/// none of its packets to the client, and the call's streams stay exactly as sent. And when the
/// far end falls silent, the call ends with CALL_FAILED `MEDIA_FAILED` after the media timeout,
/// which here (800 ms) is shorter than the second between two readings of the kernel's
/// counters: the room must not take a call the kernel is carrying for silent, nor miss a
/// silence.
#[tokio::test]
async fn while_the_kernel_relays_a_stranger_gets_nothing_in_and_silence_still_ends_the_call(
) -> anyhow::Result<()> {
    let far_end = RtpPeer::bind(Codec::Pcmu).await?;
    let (sipp, gateway) = sipp_far_end_with(
        UasScenario::AnswerPtime30,
        &far_end,
        "[media]\nrtp_timeout_ms = 800\n",
    )?;
    ensure!(
        gateway.count_log("kernel fast path on") == 1,
        "the gateway did not load its kernel fast path (run the suite as root on Linux >= 6.6)"
    );
    let client = RtpPeer::bind(Codec::Pcmu).await?.with_ptime(30);
    let (mut ws, session_id) = WsClient::start_session(&gateway.ws_url(), "alice", "x").await?;
    let (call_id, client_point) = start_rtp_call(&mut ws, &session_id, "3000", &client).await?;
    let sip_point = gateway_sip_point(&sipp)?;

    let up = ScriptedStream {
        packets: 200,
        swap_at: None,
        ..ScriptedStream::pcmu_ptime_30(0x00c1_1e47, 1000, 160_000)
    };
    let down = ScriptedStream {
        packets: 200,
        swap_at: None,
        ..ScriptedStream::pcmu_ptime_30(0x0fa7_e4d0, 20_000, 90_000)
    };
    // The stranger starts once the client has heard 100 packets (3 s: past the latch's 2 s of
    // learning, and the kernel has had the relay for a second and a half).
    let (heard, mut heard_so_far) = tokio::sync::watch::channel(0);
    let stranger = async {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        tokio::time::timeout(PEER, heard_so_far.wait_for(|heard| *heard >= 100))
            .await
            .context("the client never heard 100 packets of the far end")??;
        let own = ScriptedStream {
            packets: 20,
            ..ScriptedStream::pcmu_ptime_30(0x5157_4a4e, 20_100, 114_000)
        };
        for index in 0..20 {
            socket.send_to(&own.packet(index), sip_point).await?;
            // The far end's SSRC and numbering, from the wrong port, with a payload of its own.
            let mut spoofed = down.packet(110 + index);
            spoofed[12..].fill(0xee);
            socket.send_to(&spoofed, sip_point).await?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        anyhow::Ok(())
    };
    let (heard_by_client, heard_by_far_end, ()) = tokio::try_join!(
        client.play_and_record_reporting(client_point, &up, down.sent_order().len(), &heard),
        far_end.play_and_record(sip_point, &down, up.sent_order().len()),
        stranger,
    )?;
    let upstream = RelayReport::check(&up, &heard_by_far_end);
    let downstream = RelayReport::check(&down, &heard_by_client);
    ensure!(
        upstream.is_faithful() && downstream.is_faithful(),
        "a stranger's packets changed the call\n\
         client → far end:\n{upstream}far end → client:\n{downstream}"
    );
    let strangers = heard_by_client
        .iter()
        .filter(|packet| {
            packet.payload.iter().all(|byte| *byte == 0xee)
                || down.identify(&packet.payload).is_none()
        })
        .count();
    ensure!(
        strangers == 0,
        "{strangers} of the stranger's packets reached the client"
    );
    ensure!(
        gateway.metric("dialtone_kernel_forwarded_packets_total")? > 0.0,
        "the kernel carried none of the call"
    );

    // Silence from here on: both sides stopped with their streams.
    let failed = ws
        .recv_type_skipping("CALL_FAILED", &["DTMF_RECEIVED"], Duration::from_secs(5))
        .await?;
    ensure!(
        failed["callId"] == call_id.as_str() && failed["reason"] == "MEDIA_FAILED",
        "{failed}"
    );
    sipp.wait_success(PEER)
        .context("the far end should get a BYE")?;
    wait_until(
        PEER,
        || Ok(gateway.metric("dialtone_kernel_relays")? == 0.0),
    )
    .context("a kernel rule outlived its call")?;
    ws.close().await?;
    gateway.wait_all_released(PEER)
}

/// A softphone as the far end must see every digit start and end, in order, when the client
/// never answers its point (so it never sends audio).
#[tokio::test]
async fn last_digit_ends_at_baresip_without_client_audio() -> anyhow::Result<()> {
    let kamailio = Kamailio::start(KamailioOptions::default())?;
    let callee = Baresip::start(BaresipOptions {
        account: Some(BaresipAccount::rig_user("2000", kamailio.sip_addr())?),
        auto_answer: true,
        ..Default::default()
    })?;
    let gateway = Gateway::start(&registrar_config(kamailio.sip_addr()))?;
    let (mut ws, session_id) =
        WsClient::start_session(&gateway.ws_url(), "1001", "secret1001").await?;
    // The client's point is offered and never answered: no client audio ever reaches the room.
    let call_id = start_unanswered_rtp_call(&mut ws, &session_id, "2000", "PCMU/8000").await?;
    callee.wait_call_established(PEER)?;
    ws.send_json(&json!({"type": "SEND_DTMF_SIGNAL", "sessionId": session_id, "callId": call_id, "dtmfString": DIGITS}))
        .await?;

    let keys: Vec<char> = DIGITS.chars().collect();
    let ended = |events: &[(char, bool)]| -> Vec<char> {
        events
            .iter()
            .filter(|(_, end)| *end)
            .map(|(key, _)| *key)
            .collect()
    };
    // Each digit takes about 200 ms; the deadline is ample. A timeout is no failure by itself:
    // the checks below say what arrived.
    let _ = wait_until(PEER, || {
        Ok(ended(&callee.received_events()).len() >= keys.len())
    });
    let events = callee.received_events();
    let started: Vec<char> = events
        .iter()
        .filter(|(_, end)| !*end)
        .map(|(key, _)| *key)
        .collect();
    ensure!(
        callee.received_dtmf() == keys && started == keys && ended(&events) == keys,
        "baresip got the digits {:?} (CALL_DTMF_START), started {started:?}, ended {:?}; \
         want {keys:?} each started and ended; its event lines (key, end): {events:?}",
        callee.received_dtmf(),
        ended(&events),
    );
    // The room writes the SIP leg's statistics where /status and CALL_FINISHED read them.
    gateway
        .wait_media_received(&call_id, PEER)
        .context("/status never showed baresip's audio reaching the gateway")?;
    ws.send_json(&json!({"type": "HANGUP_CALL", "sessionId": session_id, "callId": call_id}))
        .await?;
    let finished = ws.recv_type("CALL_FINISHED", REPLY).await?;
    ensure!(
        finished["quality"]["packetsReceived"]
            .as_u64()
            .is_some_and(|received| received > 0),
        "CALL_FINISHED carries no statistics of the audio baresip sent: {finished}"
    );
    callee.wait_call_closed(PEER)?;
    Ok(())
}

/// Audio packets a far end must get after the last digit's end packets, at least: a receiver
/// with a jitter buffer plays a packet out only once later ones push it through (baresip holds
/// up to 10, `jitter_buffer_delay 5-10`), so an end with nothing after it is never seen.
const PACKETS_AFTER_LAST_DIGIT: usize = 10;

/// SEND_DTMF_SIGNAL [`DIGITS`] in a call whose client point is never answered, to a SIPp far
/// end whose media is the test's; returns every RTP packet the far end got, once the call is
/// hung up.
async fn digits_at_the_far_end_without_client_audio() -> anyhow::Result<Vec<ReceivedRtp>> {
    let far_end = RtpPeer::bind(Codec::Pcmu).await?;
    // SIPp's callee answers with PCMU and telephone-event/101.
    let (sipp, gateway) = sipp_far_end(UasScenario::Answer, &far_end)?;
    let (mut ws, session_id) = WsClient::start_session(&gateway.ws_url(), "alice", "x").await?;
    let call_id = start_unanswered_rtp_call(&mut ws, &session_id, "3000", "PCMU/8000").await?;
    let received = send_digits_and_record(&mut ws, &session_id, &call_id, &far_end).await?;
    hang_up(&mut ws, &session_id, &call_id, &sipp).await?;
    Ok(received)
}

/// SEND_DTMF_SIGNAL [`DIGITS`]; returns what `far_end` received until every digit's three end
/// packets came and enough packets followed them (else until the gateway falls silent).
async fn send_digits_and_record(
    ws: &mut WsClient,
    session_id: &str,
    call_id: &str,
    far_end: &RtpPeer,
) -> anyhow::Result<Vec<ReceivedRtp>> {
    ws.send_json(&json!({"type": "SEND_DTMF_SIGNAL", "sessionId": session_id, "callId": call_id, "dtmfString": DIGITS}))
        .await?;
    far_end
        .record_until(|received| {
            after_the_ends(received).is_some_and(|after| after.len() >= PACKETS_AFTER_LAST_DIGIT)
        })
        .await
}

/// The packets after the last of the end packets of all [`DIGITS`] (three per digit), once
/// they all came.
fn after_the_ends(received: &[ReceivedRtp]) -> Option<&[ReceivedRtp]> {
    let last_end = received
        .iter()
        .enumerate()
        .filter(|(_, p)| p.payload_type == 101)
        .filter(|(_, p)| TelephoneEvent::parse(&p.payload).is_ok_and(|e| e.end))
        .nth(3 * DIGITS.len() - 1)?
        .0;
    received.get(last_end + 1..)
}

/// The telephone-event packets themselves, as the far end receives them with no client audio:
/// RFC 4733's marker, one timestamp per digit, rising durations, three end packets, and
/// contiguous sequence numbers.
#[tokio::test]
async fn digits_without_client_audio_reach_the_far_end_as_complete_rfc_4733_events(
) -> anyhow::Result<()> {
    let received = digits_at_the_far_end_without_client_audio().await?;
    check_telephone_events(&received, 101, DIGITS).map_err(|problems| {
        anyhow::anyhow!("the far end's telephone-events for {DIGITS:?} are wrong:\n{problems}")
    })
}

/// With no client audio, the SIP side's stream must go on after the last digit (silence in the
/// call's codec), so a far end's jitter buffer lets the last end packets through: see the
/// module doc.
#[tokio::test]
async fn far_end_gets_audio_after_the_last_digit_without_client_audio() -> anyhow::Result<()> {
    let received = digits_at_the_far_end_without_client_audio().await?;
    let after = after_the_ends(&received).unwrap_or_default();
    let audio_after = after.iter().filter(|p| p.payload_type == 0).count();
    // Payload types in arrival order, run-length: [(101, 42)] is 42 events and nothing else.
    let mut runs: Vec<(u8, usize)> = Vec::new();
    for packet in &received {
        match runs.last_mut() {
            Some((kind, count)) if *kind == packet.payload_type => *count += 1,
            _ => runs.push((packet.payload_type, 1)),
        }
    }
    ensure!(
        audio_after >= PACKETS_AFTER_LAST_DIGIT,
        "{audio_after} PCMU packets followed the last digit's end packets, want at least \
         {PACKETS_AFTER_LAST_DIGIT} so a far end's jitter buffer plays the end out; \
         all {} packets received as (payload type, count) in order: {runs:?}",
        received.len(),
    );
    Ok(())
}

/// A far end that sends early media (183 with SDP, then audio, the 200 four seconds later, as
/// a carrier's ringback or announcement): the client's point hears it before CALL_STARTED, and
/// the same stream goes on after the answer.
#[tokio::test]
async fn early_media_reaches_the_client_before_the_answer() -> anyhow::Result<()> {
    early_media(UasScenario::EarlyMedia).await
}

/// The same with a far end that requires 100rel (RFC 3262): its reliable 183 gets a PRACK.
#[tokio::test]
async fn a_reliable_183_is_pracked_and_its_early_media_heard() -> anyhow::Result<()> {
    early_media(UasScenario::EarlyMedia100rel).await
}

async fn early_media(scenario: UasScenario) -> anyhow::Result<()> {
    let far_end = RtpPeer::bind(Codec::Pcmu).await?;
    let (sipp, gateway) = sipp_far_end(scenario, &far_end)?;
    let client = RtpPeer::bind(Codec::Pcmu).await?;
    let (mut ws, session_id) = WsClient::start_session(&gateway.ws_url(), "alice", "x").await?;
    let (call_id, offer) = offer_rtp_call(&mut ws, &session_id, "early", client.label()).await?;
    let client_point = sdp_audio_addr(&offer)?;
    ws.send_json(&json!({
        "type": "SDP_ANSWER", "sessionId": session_id, "callId": call_id, "sdp": client.answer_sdp()?,
    }))
    .await?;
    let progress = ws.recv_type_skipping("CALL_STARTING", &[], REPLY).await?;
    let progress = if progress["stage"] == "TRYING" {
        ws.recv_type("CALL_STARTING", REPLY).await?
    } else {
        progress
    };
    ensure!(progress["stage"] == "SESSION_PROGRESS", "{progress}");
    let sip_point = gateway_sip_point(&sipp)?;
    let (early, _) = tokio::join!(
        client.exchange(client_point, 440.0, 1.5, 0),
        far_end.exchange(sip_point, 1000.0, 1.5, 0),
    );
    let early = early?;
    ensure!(
        ws.expect_no_message(Duration::from_millis(10))
            .await
            .is_ok(),
        "the call was answered before the early media was checked"
    );
    let heard = dominant_hz(&early, 8000).context("early media")?;
    ensure!(
        (heard - 1000.0).abs() < 15.0,
        "the client heard {heard} Hz before the answer"
    );
    ws.recv_type("CALL_STARTED", REPLY).await?;
    let (after, _) = tokio::join!(
        client.exchange(client_point, 440.0, 2.0, 0),
        far_end.exchange(sip_point, 1000.0, 2.0, 0),
    );
    let heard = dominant_hz(&after?, 8000).context("after the answer")?;
    ensure!(
        (heard - 1000.0).abs() < 15.0,
        "after the answer the client heard {heard} Hz"
    );
    hang_up(&mut ws, &session_id, &call_id, &sipp).await?;
    ws.close().await?;
    gateway.wait_all_released(REPLY)?;
    Ok(())
}

/// While the far end rings without early media (180, no SDP) the client hears ringback when
/// the gateway is set to (`calls.ringback = "us"`: 440 + 480 Hz, 2 s on, 4 s off).
#[tokio::test]
async fn a_silent_ringing_far_end_gives_the_client_ringback() -> anyhow::Result<()> {
    let sipp = Sipp::uas(UasScenario::RingForever, SippOptions::default())?;
    // The default T1 (500 ms): a CANCEL retransmitted on a busy machine would reach SIPp's
    // scenario after its 487, as an unexpected message.
    let gateway = Gateway::start(&format!(
        "{LOOPBACK}[calls]\nproxy = \"sip:{};transport=udp\"\nringback = \"us\"\n",
        sipp.sip_addr()
    ))?;
    let client = RtpPeer::bind(Codec::Pcmu).await?;
    let (mut ws, session_id) = WsClient::start_session(&gateway.ws_url(), "alice", "x").await?;
    // The callee's own address in the Request-URI: where the CANCEL goes.
    let callee = format!("sip:3000@{}", sipp.sip_addr());
    let (call_id, offer) = offer_rtp_call(&mut ws, &session_id, &callee, client.label()).await?;
    ws.send_json(&json!({
        "type": "SDP_ANSWER", "sessionId": session_id, "callId": call_id, "sdp": client.answer_sdp()?,
    }))
    .await?;
    let ringing = ws.recv_type("CALL_STARTING", REPLY).await?;
    ensure!(ringing["stage"] == "RINGING", "{ringing}");
    // Three seconds: two of ringback, then the start of the four silent ones.
    let (heard, packets) = client
        .exchange_packets(sdp_audio_addr(&offer)?, 1000.0, 3.0, 0)
        .await?;
    ensure!(
        (85..=110).contains(&packets.len()),
        "{} packets of ringback in 3 s: not the 2 s on of its cadence",
        packets.len()
    );
    let shares = dialtone_tests::audio::tone_shares(&heard, 8000, &[440.0, 480.0, 1000.0]);
    ensure!(
        shares[0] > 0.2 && shares[1] > 0.2 && shares[2] < 0.01,
        "ringback heard as {shares:?} (440, 480, the client's own 1000 Hz)"
    );
    ws.send_json(&json!({"type": "HANGUP_CALL", "sessionId": session_id, "callId": call_id}))
        .await?;
    ws.recv_type("CALL_FINISHED", REPLY).await?;
    sipp.wait_success(PEER)?;
    ws.close().await?;
    gateway.wait_all_released(REPLY)?;
    Ok(())
}
