//! Media source protection end to end (issue 14, "RTP hijack"): once a call's media flows, a
//! stranger who knows the gateway's RTP ports and sends RTP there with an SSRC of its own must
//! take nothing over, on either side of the call.
//!
//! Both ends are sockets the test owns: the client's plain RTP point, and a SIPp callee whose
//! SDP names the test's far-end socket ([`SippOptions::media_port`]), as in `relay.rs`. A third
//! socket, the attacker, sends to the gateway's SIP-side port (from the gateway's INVITE) and to
//! the client point's port (from its SDP_OFFER).
//!
//! Why this needs strict source: with loose symmetric RTP a packet with a new SSRC from any
//! address moves the latch to its sender; the real end's packets then carry the SSRC latched
//! away from and are refused, so it is locked out, and the attacker hears the other party.
//! With strict source (the default) a new source is learnt only in the first 2 s of the
//! media, so the attacker waits here until both ends have heard 3 s of each other.

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::{ensure, Context};
use dialtone_codecs::Codec;
use dialtone_tests::gateway::{proxy_config, Gateway};
use dialtone_tests::rtp_peer::{sdp_audio_addr, start_rtp_call, RtpPeer};
use dialtone_tests::rtp_stream::{ReceivedRtp, ScriptedStream};
use dialtone_tests::sipp::{Sipp, SippOptions, UasScenario};
use dialtone_tests::ws_client::WsClient;
use serde_json::json;
use tokio::sync::watch;

const REPLY: Duration = Duration::from_secs(10);
const PEER: Duration = Duration::from_secs(10);

/// Packets each real end sends: 6 s at 20 ms.
const CALL_PACKETS: usize = 300;
/// Packets each real end must have heard before the attack: 3 s of media, so the gateway's
/// learning window (2 s from the first packet) has closed on both points.
const FLOWING: usize = 150;
/// Packets the attacker sends to each port, 5 ms apart: over by about 4.5 s into the call,
/// so the real ends still talk for a while after it.
const ATTACK_PACKETS: usize = 300;
const ATTACK_PACE: Duration = Duration::from_millis(5);

/// A PCMU stream at 20 ms with nothing lost or reordered, whose payloads say which packet of
/// which stream they are.
fn pcmu_stream(ssrc: u32, first_sequence: u16, packets: usize) -> ScriptedStream {
    ScriptedStream {
        payload_type: 0,
        ssrc,
        first_sequence,
        first_timestamp: 0x1000_0000 ^ ssrc,
        units_per_packet: 160,
        packet_time: Duration::from_millis(20),
        payload_len: 160,
        packets,
        drop_every: 0,
        swap_at: None,
    }
}

/// What one real end heard: how much of the other end's stream, how much of the attacker's,
/// and what else.
struct Heard {
    of_peer: BTreeSet<usize>,
    of_attacker: usize,
    unknown: usize,
}

impl Heard {
    fn tally(received: &[ReceivedRtp], peer: &ScriptedStream, attacker: &ScriptedStream) -> Heard {
        let mut heard = Heard {
            of_peer: BTreeSet::new(),
            of_attacker: 0,
            unknown: 0,
        };
        for packet in received {
            if let Some(index) = peer.identify(&packet.payload) {
                heard.of_peer.insert(index);
            } else if attacker.identify(&packet.payload).is_some() {
                heard.of_attacker += 1;
            } else {
                heard.unknown += 1;
            }
        }
        heard
    }

    fn is_whole(&self) -> bool {
        self.of_peer.len() == CALL_PACKETS && self.of_attacker == 0 && self.unknown == 0
    }

    /// The other end's packets that never came, as ranges of indexes.
    fn missing(&self) -> Vec<(usize, usize)> {
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        for index in (0..CALL_PACKETS).filter(|index| !self.of_peer.contains(index)) {
            match ranges.last_mut() {
                Some((_, end)) if *end + 1 == index => *end = index,
                _ => ranges.push((index, index)),
            }
        }
        ranges
    }
}

impl std::fmt::Display for Heard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of the other end's {CALL_PACKETS} packets (missing {:?}), {} of the attacker's, \
             {} unknown",
            self.of_peer.len(),
            self.missing(),
            self.of_attacker,
            self.unknown
        )
    }
}

/// Sends [`ATTACK_PACKETS`] of `stream` to both of the gateway's ports, once both real ends
/// have heard [`FLOWING`] packets. The attacker's socket is a non-blocking std one, so that
/// what reached it can be counted afterwards without waiting.
async fn attack(
    attacker: &UdpSocket,
    stream: &ScriptedStream,
    ports: [SocketAddr; 2],
    mut heard: [watch::Receiver<usize>; 2],
) -> anyhow::Result<()> {
    for progress in &mut heard {
        progress
            .wait_for(|count| *count >= FLOWING)
            .await
            .context("the call's media ended before it flowed both ways")?;
    }
    let mut ticks = tokio::time::interval(ATTACK_PACE);
    for index in 0..stream.packets {
        ticks.tick().await;
        let packet = stream.packet(index);
        for port in ports {
            attacker.send_to(&packet, port)?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn an_attacker_with_its_own_ssrc_takes_over_neither_side_of_a_call() -> anyhow::Result<()> {
    let far_end = RtpPeer::bind(Codec::Pcmu).await?;
    let sipp = Sipp::uas(
        UasScenario::Answer,
        SippOptions {
            media_port: Some(far_end.local_addr()?.port()),
            ..Default::default()
        },
    )?;
    let gateway = Gateway::start(&proxy_config(sipp.sip_addr(), ""))?;
    let client = RtpPeer::bind(Codec::Pcmu).await?;
    let attacker = UdpSocket::bind("127.0.0.1:0")?;
    attacker.set_nonblocking(true)?;
    let (mut ws, session_id) = WsClient::start_session(&gateway.ws_url(), "alice", "x").await?;
    let (call_id, client_point) = start_rtp_call(&mut ws, &session_id, "3000", &client).await?;
    let invite = sipp.wait_for_message("INVITE sip:", PEER)?;
    let sip_point = sdp_audio_addr(invite.body()).context("the gateway's INVITE")?;

    let up = pcmu_stream(0x00c1_1e47, 1000, CALL_PACKETS);
    let down = pcmu_stream(0x0fa7_e4d0, 50_000, CALL_PACKETS);
    let forged = pcmu_stream(0x0bad_5eed, 7, ATTACK_PACKETS);
    let (client_progress, client_heard) = watch::channel(0);
    let (far_end_progress, far_end_heard) = watch::channel(0);
    // Each progress sender goes with its recording, so the attack gives up if a recording
    // ends before the media flowed.
    let (up_stream, down_stream) = (&up, &down);
    let (heard_by_client, heard_by_far_end, ()) = tokio::try_join!(
        async move {
            client
                .play_and_record_reporting(client_point, up_stream, CALL_PACKETS, &client_progress)
                .await
        },
        async move {
            far_end
                .play_and_record_reporting(sip_point, down_stream, CALL_PACKETS, &far_end_progress)
                .await
        },
        attack(
            &attacker,
            &forged,
            [sip_point, client_point],
            [client_heard, far_end_heard],
        ),
    )?;
    // Both recordings ended after the attack did, at least a second later: whatever the
    // gateway sent the attacker is in its socket by now.
    let mut buffer = [0u8; 2048];
    let mut to_attacker = 0;
    while attacker.recv_from(&mut buffer).is_ok() {
        to_attacker += 1;
    }

    let client_heard = Heard::tally(&heard_by_client, &down, &forged);
    let far_end_heard = Heard::tally(&heard_by_far_end, &up, &forged);
    ensure!(
        client_heard.is_whole() && far_end_heard.is_whole() && to_attacker == 0,
        "an attacker sending {ATTACK_PACKETS} packets with its own SSRC to the SIP side \
         ({sip_point}) and to the client point ({client_point}) after the media flowed took \
         some of it over:\n\
         the client heard {client_heard}\n\
         the far end heard {far_end_heard}\n\
         the attacker got {to_attacker} datagrams (want 0)"
    );

    ws.send_json(&json!({"type": "HANGUP_CALL", "sessionId": session_id, "callId": call_id}))
        .await?;
    ws.recv_type("CALL_FINISHED", REPLY).await?;
    sipp.wait_success(PEER)
}
