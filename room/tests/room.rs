//! The room driven as its drivers drive it, with simulated time and no
//! sockets: datagrams in with `now`, transmits and events polled out.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dialtone_codecs::{linear_to_ulaw, ulaw_to_linear, Codec};
use dialtone_room::offload::{Offload, OffloadProgress, OFFLOAD_AFTER};
use dialtone_room::rtp::{RtpHeader, RtpPacket};
use dialtone_room::srtp::{MasterKey, SrtpKeys, SrtpProfile, SrtpSession};
use dialtone_room::symmetric::LatchConfig;
use dialtone_room::telephone_event::TelephoneEvent;
use dialtone_room::{
    DigitMethod, Event, Input, Line, Output, PointConfig, PointId, PointUpdate, Role, Room,
    RoomError, Socket, WatchConfig, FRAME, RECORDING_RATE,
};

const SIP: PointId = PointId(0);
const CLIENT: PointId = PointId(1);
const THIRD: PointId = PointId(2);
const PCMU: Option<(u8, Codec)> = Some((0, Codec::Pcmu));
const PCMA: Option<(u8, Codec)> = Some((8, Codec::Pcma));
const G722: Option<(u8, Codec)> = Some((9, Codec::G722));
const EVENTS: Option<u8> = Some(101);

fn address(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

const SIP_FAR_END: u16 = 40_000;
const CLIENT_END: u16 = 40_100;
const THIRD_END: u16 = 40_200;

/// A packet as it left the room.
#[derive(Debug, Clone)]
struct Sent {
    point: PointId,
    socket: Socket,
    destination: SocketAddr,
    header: RtpHeader,
    payload: Vec<u8>,
    /// The datagram as it went out.
    data: Vec<u8>,
}

/// A room under test and its simulated clock.
struct Harness {
    room: Room,
    now: Instant,
    sent: Vec<Sent>,
    events: Vec<Event>,
    recorded: Vec<i16>,
    offloads: Vec<Offload>,
    reclaimed: Vec<PointId>,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            room: Room::new(),
            now: Instant::now(),
            sent: Vec::new(),
            events: Vec::new(),
            recorded: Vec::new(),
            offloads: Vec::new(),
            reclaimed: Vec::new(),
        }
    }

    /// A SIP leg (watched) and a client RTP point, both `audio`.
    fn bridge(sip: Option<(u8, Codec)>, client: Option<(u8, Codec)>) -> Harness {
        let mut harness = Harness::new();
        harness.add(SIP, sip_leg(sip, true));
        harness.add(
            CLIENT,
            PointConfig::rtp(address(CLIENT_END), client, EVENTS),
        );
        harness
    }

    fn add(&mut self, id: PointId, config: PointConfig) {
        assert_eq!(self.room.add_point(self.now, id, config), Ok(()));
        self.drain();
    }

    fn input(&mut self, input: Input<'_>) {
        self.room.handle_input(self.now, input);
        self.drain();
    }

    fn datagram(&mut self, point: PointId, from: u16, data: &[u8]) {
        self.input(Input::Datagram {
            point,
            source: address(from),
            data,
        });
    }

    /// Moves the clock on to `until`, firing every timeout on the way.
    fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        while let Some(at) = self.room.poll_timeout().filter(|at| *at <= until) {
            self.now = self.now.max(at);
            self.input(Input::Timeout);
        }
        self.now = until;
    }

    fn drain(&mut self) {
        while let Some(output) = self.room.poll_output() {
            match output {
                Output::Transmit(transmit) => {
                    let (header, payload) = match RtpPacket::parse(transmit.data) {
                        Ok(packet) => (packet.header, packet.payload.to_vec()),
                        // RTCP: only its destination matters here.
                        Err(_) => (
                            RtpHeader {
                                marker: false,
                                payload_type: 0,
                                sequence: 0,
                                timestamp: 0,
                                ssrc: 0,
                            },
                            transmit.data.to_vec(),
                        ),
                    };
                    self.sent.push(Sent {
                        point: transmit.point,
                        socket: transmit.socket,
                        destination: transmit.destination,
                        header,
                        payload,
                        data: transmit.data.to_vec(),
                    });
                }
                Output::Flv { .. } => {}
                Output::Event(event) => self.events.push(event),
                Output::Recorded { samples, .. } => self.recorded.extend(samples),
                Output::Offload(offload) => self.offloads.push(offload),
                Output::Reclaim(point) => self.reclaimed.push(point),
            }
        }
    }

    /// RTP packets sent to `point` so far, taken out.
    fn take_rtp(&mut self, point: PointId) -> Vec<Sent> {
        let (taken, kept) = std::mem::take(&mut self.sent)
            .into_iter()
            .partition(|sent| sent.point == point && sent.socket == Socket::Rtp);
        self.sent = kept;
        taken
    }

    fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }
}

fn sip_leg(audio: Option<(u8, Codec)>, sends: bool) -> PointConfig {
    PointConfig::rtp(address(SIP_FAR_END), audio, EVENTS).watched(WatchConfig {
        rtp_timeout: Duration::from_secs(5),
        sends,
        rtcp: true,
    })
}

fn rtp(header: RtpHeader, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 12 + payload.len()];
    let length = header.write_packet(payload, &mut out).unwrap_or_default();
    out.truncate(length);
    out
}

fn header(payload_type: u8, sequence: u16, timestamp: u32, ssrc: u32) -> RtpHeader {
    RtpHeader {
        marker: false,
        payload_type,
        sequence,
        timestamp,
        ssrc,
    }
}

/// A far end's PCMU stream as a real one sends it: `ptime` ms packets of
/// `ptime * 8` samples; the indexes in `missing` never sent.
fn pcmu_stream(ptime: u32, count: u16, missing: &[u16]) -> Vec<(RtpHeader, Vec<u8>)> {
    (0..count)
        .filter(|index| !missing.contains(index))
        .map(|index| {
            let mut header = header(
                0,
                60_000u16.wrapping_add(index),
                1000 + u32::from(index) * ptime * 8,
                0xfeed,
            );
            header.marker = index == 0;
            (header, vec![index as u8; (ptime * 8) as usize])
        })
        .collect()
}

#[test]
fn relay_keeps_gaps_order_ptime_and_marker_in_both_directions() {
    for (from, from_port, to) in [(CLIENT, CLIENT_END, SIP), (SIP, SIP_FAR_END, CLIENT)] {
        let mut room = Harness::bridge(PCMU, PCMU);
        let mut stream = pcmu_stream(30, 40, &[10, 20, 30]);
        stream.swap(15, 16);
        for (header, payload) in &stream {
            room.datagram(from, from_port, &rtp(*header, payload));
            room.now += Duration::from_millis(30);
        }
        let received = room.take_rtp(to);
        assert_eq!(received.len(), stream.len(), "every packet relayed");
        assert!(
            received[0].header.marker,
            "the first packet keeps its marker"
        );
        assert!(received.iter().skip(1).all(|sent| !sent.header.marker));
        for (sent, (original, payload)) in received.iter().zip(&stream) {
            assert_eq!(&sent.payload, payload, "payload as it came");
            let sequence_offset = sent.header.sequence.wrapping_sub(original.sequence);
            let timestamp_offset = sent.header.timestamp.wrapping_sub(original.timestamp);
            assert_eq!(
                sequence_offset,
                received[0]
                    .header
                    .sequence
                    .wrapping_sub(stream[0].0.sequence),
                "sequence numbers offset-mapped, gaps and order kept"
            );
            assert_eq!(
                timestamp_offset,
                received[0]
                    .header
                    .timestamp
                    .wrapping_sub(stream[0].0.timestamp),
                "timestamps offset-mapped: 240 per 30 ms packet"
            );
        }
        let ssrcs: std::collections::HashSet<u32> =
            received.iter().map(|s| s.header.ssrc).collect();
        assert_eq!(ssrcs.len(), 1);
    }
}

#[test]
fn relay_keeps_dtx_pauses_and_follows_a_new_sender_ssrc_without_stepping_back() {
    let mut room = Harness::bridge(Some((111, Codec::Opus)), Some((111, Codec::Opus)));
    // Opus with DTX: 20 ms packets, then 400 ms of nothing, then more.
    let mut timestamps = vec![0u32, 960, 1920];
    timestamps.extend([21_120, 22_080]);
    for (index, timestamp) in timestamps.iter().enumerate() {
        let packet = rtp(
            header(111, 7 + index as u16, *timestamp, 0xaaaa),
            &[1, 2, 3],
        );
        room.datagram(CLIENT, CLIENT_END, &packet);
    }
    // The client restarts its stream with a new SSRC and numbering.
    room.datagram(CLIENT, CLIENT_END, &rtp(header(111, 5, 77, 0xbbbb), &[4]));
    room.datagram(
        CLIENT,
        CLIENT_END,
        &rtp(header(111, 6, 77 + 960, 0xbbbb), &[5]),
    );
    let received = room.take_rtp(SIP);
    let steps: Vec<u32> = received
        .windows(2)
        .map(|pair| {
            pair[1]
                .header
                .timestamp
                .wrapping_sub(pair[0].header.timestamp)
        })
        .collect();
    assert_eq!(&steps[..4], &[960, 960, 19_200, 960], "the DTX pause kept");
    assert!(
        (steps[4] as i32) > 0,
        "the new SSRC does not step back in time"
    );
    assert_eq!(steps[5], 960);
    let sequences: Vec<u16> = received.iter().map(|s| s.header.sequence).collect();
    for pair in sequences.windows(2) {
        assert_eq!(
            pair[1],
            pair[0].wrapping_add(1),
            "one stream, no gap at the restart"
        );
    }
    assert!(received[5].header.marker, "the restart is flagged");
}

#[test]
fn different_codecs_are_transcoded_on_the_20_ms_tick() {
    let mut room = Harness::bridge(PCMA, PCMU);
    for (header, payload) in pcmu_stream(20, 25, &[]) {
        room.datagram(CLIENT, CLIENT_END, &rtp(header, &payload));
        room.advance(FRAME);
    }
    room.advance(Duration::from_millis(200));
    let received = room.take_rtp(SIP);
    assert!(received.len() >= 20, "{} frames transcoded", received.len());
    assert!(received.iter().all(|sent| sent.header.payload_type == 8));
    assert!(received.iter().all(|sent| sent.payload.len() == 160));
    for pair in received.windows(2) {
        assert_eq!(
            pair[1].header.sequence,
            pair[0].header.sequence.wrapping_add(1)
        );
        assert_eq!(
            pair[1]
                .header
                .timestamp
                .wrapping_sub(pair[0].header.timestamp),
            160
        );
    }
    assert!(received[0].header.marker);
}

/// The telephone-events among `sent`: their timestamp, event and end bit.
fn events(sent: &[Sent]) -> Vec<(u32, TelephoneEvent, bool)> {
    sent.iter()
        .filter(|sent| Some(sent.header.payload_type) == EVENTS)
        .filter_map(|sent| {
            let event = TelephoneEvent::parse(&sent.payload).ok()?;
            Some((sent.header.timestamp, event, sent.header.marker))
        })
        .collect()
}

#[test]
fn every_digit_ends_and_silence_follows_when_no_audio_flows() {
    let mut room = Harness::bridge(PCMU, PCMU);
    room.room
        .send_digits(room.now, SIP, "1*")
        .expect("digits queued");
    room.advance(Duration::from_secs(2));
    let sent = room.take_rtp(SIP);
    let digit_events = events(&sent);
    for code in [1u8, 10] {
        let of_digit: Vec<_> = digit_events
            .iter()
            .filter(|(_, e, _)| e.event == code)
            .collect();
        assert!(of_digit[0].2, "marker on the first packet of event {code}");
        assert!(of_digit.iter().skip(1).all(|(_, _, marker)| !marker));
        let timestamps: std::collections::HashSet<u32> =
            of_digit.iter().map(|(ts, _, _)| *ts).collect();
        assert_eq!(timestamps.len(), 1, "one timestamp per event");
        let ends = of_digit.iter().filter(|(_, e, _)| e.end).count();
        assert_eq!(ends, 3, "three end packets for event {code}");
        assert!(of_digit.last().is_some_and(|(_, e, _)| e.end));
    }
    let last_end = sent
        .iter()
        .rposition(|sent| Some(sent.header.payload_type) == EVENTS)
        .expect("events");
    let after: Vec<_> = sent[last_end + 1..].iter().collect();
    assert!(
        after.len() >= 10,
        "silence after the last digit: {} packets",
        after.len()
    );
    assert!(after
        .iter()
        .all(|sent| sent.header.payload_type == 0 && sent.payload == [0xff; 160]));
    for pair in sent.windows(2) {
        assert_eq!(
            pair[1].header.sequence,
            pair[0].header.sequence.wrapping_add(1)
        );
    }
    room.advance(Duration::from_secs(1));
    assert!(
        room.take_rtp(SIP).is_empty(),
        "the stream stops once digits are done"
    );
}

#[test]
fn digits_interleave_with_relayed_audio_and_still_end() {
    let mut room = Harness::bridge(PCMU, PCMU);
    room.room.send_digits(room.now, SIP, "5").expect("queued");
    for (header, payload) in pcmu_stream(20, 40, &[]) {
        room.datagram(CLIENT, CLIENT_END, &rtp(header, &payload));
        room.advance(FRAME);
    }
    let sent = room.take_rtp(SIP);
    let digit_events = events(&sent);
    assert_eq!(digit_events.iter().filter(|(_, e, _)| e.end).count(), 3);
    for pair in sent.windows(2) {
        assert_eq!(
            pair[1].header.sequence,
            pair[0].header.sequence.wrapping_add(1),
            "no gap, no duplicate"
        );
    }
}

#[test]
fn digits_cross_the_room_as_events_or_for_signalling() {
    let mut room = Harness::new();
    room.add(SIP, sip_leg(PCMU, true));
    // The client's point takes no events: the digit is for its signalling.
    room.add(CLIENT, PointConfig::rtp(address(CLIENT_END), PCMU, None));
    let mut start = header(101, 1, 500, 0x5151);
    start.marker = true;
    room.datagram(SIP, SIP_FAR_END, &rtp(start, &[5, 10, 0, 160]));
    let events = room.take_events();
    assert!(events.contains(&Event::Digit {
        point: SIP,
        digit: '5',
        method: DigitMethod::Rfc4733
    }));
    assert!(events.contains(&Event::DigitForSignalling {
        point: CLIENT,
        digit: '5'
    }));
    // A digit by INFO goes on as an event to a point that takes them.
    room.room
        .digit_from(room.now, CLIENT, '7')
        .expect("known point");
    room.drain();
    room.advance(Duration::from_millis(500));
    let to_sip = events_of(&room.take_rtp(SIP));
    assert!(to_sip.iter().any(|e| e.event == 7 && e.end));
    assert_eq!(
        room.room.send_digits(room.now, CLIENT, "1"),
        Err(RoomError::NoEvents(CLIENT))
    );
}

fn events_of(sent: &[Sent]) -> Vec<TelephoneEvent> {
    events(sent)
        .into_iter()
        .map(|(_, event, _)| event)
        .collect()
}

#[test]
fn media_goes_where_the_far_end_sends_from() {
    let mut room = Harness::bridge(PCMU, PCMU);
    let behind_nat = 41_000;
    room.datagram(SIP, behind_nat, &rtp(header(0, 1, 0, 0x77), &[0; 160]));
    room.datagram(CLIENT, CLIENT_END, &rtp(header(0, 1, 0, 0x88), &[0; 160]));
    let to_sip = room.take_rtp(SIP);
    assert_eq!(to_sip[0].destination, address(behind_nat), "latched");
    // Someone else with the latched SSRC cannot take the media away.
    room.datagram(SIP, 41_500, &rtp(header(0, 2, 160, 0x77), &[0; 160]));
    room.datagram(CLIENT, CLIENT_END, &rtp(header(0, 2, 160, 0x88), &[0; 160]));
    assert_eq!(room.take_rtp(SIP)[0].destination, address(behind_nat));
    // RTCP goes next to where RTP goes.
    room.advance(Duration::from_secs(12));
    let rtcp: Vec<_> = room
        .sent
        .iter()
        .filter(|s| s.socket == Socket::Rtcp)
        .collect();
    assert!(!rtcp.is_empty(), "RTCP reports sent");
    assert!(rtcp
        .iter()
        .all(|s| s.destination == address(behind_nat + 1)));
}

#[test]
fn a_silent_far_end_times_out_but_not_while_on_hold() {
    let mut room = Harness::bridge(PCMU, PCMU);
    room.advance(Duration::from_secs(6));
    assert!(room
        .take_events()
        .iter()
        .any(|e| matches!(e, Event::MediaTimeout { point: SIP, .. })));

    let mut room = Harness::new();
    room.add(SIP, sip_leg(PCMU, false));
    room.advance(Duration::from_secs(30));
    assert!(
        !room
            .take_events()
            .iter()
            .any(|e| matches!(e, Event::MediaTimeout { .. })),
        "on hold is not dead"
    );
    let resume = PointUpdate {
        remote: address(SIP_FAR_END),
        audio: PCMU,
        telephone_event: EVENTS,
        sends: true,
    };
    room.room
        .update_point(room.now, SIP, resume)
        .expect("known point");
    room.advance(Duration::from_secs(6));
    assert!(
        room.take_events()
            .iter()
            .any(|e| matches!(e, Event::MediaTimeout { point: SIP, .. })),
        "off hold and silent"
    );
}

#[test]
fn a_codec_change_from_the_far_end_reroutes_the_room() {
    let mut room = Harness::bridge(PCMU, PCMU);
    for (header, payload) in pcmu_stream(20, 5, &[]) {
        room.datagram(CLIENT, CLIENT_END, &rtp(header, &payload));
    }
    let before = room.take_rtp(SIP);
    assert!(before.iter().all(|s| s.header.payload_type == 0));
    // A re-INVITE moves the far end to G.722 at a new address.
    let moved = PointUpdate {
        remote: address(SIP_FAR_END + 10),
        audio: G722,
        telephone_event: EVENTS,
        sends: true,
    };
    room.room
        .update_point(room.now, SIP, moved)
        .expect("known point");
    for (header, payload) in pcmu_stream(20, 30, &[]).into_iter().skip(5) {
        room.datagram(CLIENT, CLIENT_END, &rtp(header, &payload));
        room.advance(FRAME);
    }
    let after = room.take_rtp(SIP);
    assert!(after.len() >= 20);
    assert!(
        after.iter().all(|s| s.header.payload_type == 9),
        "now G.722"
    );
    assert!(after
        .iter()
        .all(|s| s.destination == address(SIP_FAR_END + 10)));
    let ssrcs: std::collections::HashSet<u32> =
        before.iter().chain(&after).map(|s| s.header.ssrc).collect();
    assert_eq!(ssrcs.len(), 1, "one stream across the change");
    // The G.722 far end's audio reaches the PCMU client transcoded.
    for index in 0..10u16 {
        room.datagram(
            SIP,
            SIP_FAR_END + 10,
            &rtp(header(9, index, u32::from(index) * 160, 3), &[0; 160]),
        );
        room.advance(FRAME);
    }
    let to_client = room.take_rtp(CLIENT);
    assert!(!to_client.is_empty());
    assert!(to_client.iter().all(|s| s.header.payload_type == 0));
}

/// 20 ms of a PCMU tone at `hz`, frame `index` of its stream.
fn pcmu_tone(hz: f64, index: u32) -> Vec<u8> {
    (0..160u32)
        .map(|n| {
            let t = f64::from(index * 160 + n) / 8000.0;
            let sample = (std::f64::consts::TAU * hz * t).sin() * 6000.0;
            linear_to_ulaw(sample as i16)
        })
        .collect()
}

/// The power of `hz` in 8 kHz `samples` (Goertzel).
fn power_at(samples: &[i16], hz: f64, rate: f64) -> f64 {
    let coefficient = 2.0 * (std::f64::consts::TAU * hz / rate).cos();
    let (mut previous, mut before) = (0.0f64, 0.0f64);
    for sample in samples {
        let current = f64::from(*sample) + coefficient * previous - before;
        before = previous;
        previous = current;
    }
    previous * previous + before * before - coefficient * previous * before
}

/// The tones of `hz` heard in what a point received, as powers relative to
/// the loudest.
fn heard(sent: &[Sent], tones: &[f64]) -> Vec<f64> {
    let samples: Vec<i16> = sent
        .iter()
        .filter(|s| s.header.payload_type == 0)
        .flat_map(|s| s.payload.iter().map(|code| ulaw_to_linear(*code)))
        .collect();
    let powers: Vec<f64> = tones
        .iter()
        .map(|hz| power_at(&samples, *hz, 8000.0))
        .collect();
    let loudest = powers.iter().copied().fold(f64::MIN, f64::max).max(1.0);
    powers.iter().map(|power| power / loudest).collect()
}

/// Every point of `room` sends its tone for `frames` frames of 20 ms.
fn all_send(room: &mut Harness, speakers: &[(PointId, u16, f64)], frames: u32) {
    for frame in 0..frames {
        for (index, (point, port, hz)) in speakers.iter().enumerate() {
            let ssrc = 100 + index as u32;
            let packet = rtp(
                header(0, frame as u16, frame * 160, ssrc),
                &pcmu_tone(*hz, frame),
            );
            room.datagram(*point, *port, &packet);
        }
        room.advance(FRAME);
    }
}

const SPEAKERS: [(PointId, u16, f64); 3] = [
    (SIP, SIP_FAR_END, 1000.0),
    (CLIENT, CLIENT_END, 440.0),
    (THIRD, THIRD_END, 700.0),
];
const TONES: [f64; 3] = [1000.0, 440.0, 700.0];

#[test]
fn three_points_each_hear_the_other_two_and_never_themselves() {
    let mut room = Harness::bridge(PCMU, PCMU);
    room.add(THIRD, PointConfig::rtp(address(THIRD_END), PCMU, None));
    all_send(&mut room, &SPEAKERS, 100);
    for (own, (point, ..)) in SPEAKERS.iter().enumerate() {
        let sent = room.take_rtp(*point);
        let powers = heard(&sent, &TONES);
        for (tone, power) in powers.iter().enumerate() {
            if tone == own {
                assert!(*power < 0.001, "{point} hears itself: {powers:?}");
            } else {
                assert!(
                    *power > 0.3,
                    "{point} misses {} Hz: {powers:?}",
                    TONES[tone]
                );
            }
        }
        // One mixed frame per tick, numbered without gaps, 160 units apart.
        assert!(sent.len() >= 90, "{point}: {} frames", sent.len());
        for pair in sent.windows(2) {
            assert_eq!(
                pair[1].header.sequence,
                pair[0].header.sequence.wrapping_add(1)
            );
            assert_eq!(
                pair[1].header.timestamp,
                pair[0].header.timestamp.wrapping_add(160)
            );
            assert_eq!(pair[1].header.ssrc, pair[0].header.ssrc);
        }
    }
}

#[test]
fn a_listen_only_point_hears_both_and_is_heard_by_none() {
    let mut room = Harness::bridge(PCMU, PCMU);
    room.add(
        THIRD,
        PointConfig::rtp(address(THIRD_END), PCMU, None).with_role(Role::ListenOnly),
    );
    all_send(&mut room, &SPEAKERS, 100);
    let to_sip = heard(&room.take_rtp(SIP), &TONES);
    let to_client = heard(&room.take_rtp(CLIENT), &TONES);
    let to_third = heard(&room.take_rtp(THIRD), &TONES);
    assert!(
        to_sip[1] > 0.99 && to_sip[0] < 0.001 && to_sip[2] < 0.001,
        "{to_sip:?}"
    );
    assert!(
        to_client[0] > 0.99 && to_client[1] < 0.001 && to_client[2] < 0.001,
        "{to_client:?}"
    );
    assert!(
        to_third[0] > 0.3 && to_third[1] > 0.3 && to_third[2] < 0.001,
        "{to_third:?}"
    );
}

#[test]
fn a_whisper_reaches_its_target_only() {
    let mut room = Harness::bridge(PCMU, PCMU);
    room.add(
        THIRD,
        PointConfig::rtp(address(THIRD_END), PCMU, None).with_role(Role::Whisper(CLIENT)),
    );
    all_send(&mut room, &SPEAKERS, 100);
    let to_sip = heard(&room.take_rtp(SIP), &TONES);
    let to_client = heard(&room.take_rtp(CLIENT), &TONES);
    let to_third = heard(&room.take_rtp(THIRD), &TONES);
    assert!(
        to_sip[2] < 0.001 && to_sip[1] > 0.99,
        "the far end never hears the coach: {to_sip:?}"
    );
    assert!(to_client[0] > 0.3 && to_client[2] > 0.3, "{to_client:?}");
    assert!(to_third[0] > 0.3 && to_third[1] > 0.3, "{to_third:?}");
}

#[test]
fn loud_voices_are_scaled_down_rather_than_clipped() {
    let mut room = Harness::bridge(PCMU, PCMU);
    room.add(THIRD, PointConfig::rtp(address(THIRD_END), PCMU, None));
    // Two full-scale square waves in phase would wrap or clip if summed
    // naively.
    let loud = [0x80u8; 160]; // µ-law for +32124
    for frame in 0..20u32 {
        for (index, (point, port, _)) in SPEAKERS[..2].iter().enumerate() {
            let packet = rtp(
                header(0, frame as u16, frame * 160, 7 + index as u32),
                &loud,
            );
            room.datagram(*point, *port, &packet);
        }
        room.advance(FRAME);
    }
    let to_third = room.take_rtp(THIRD);
    assert!(!to_third.is_empty());
    for sent in &to_third {
        for code in &sent.payload {
            assert!(ulaw_to_linear(*code) > 0, "wrapped round to negative");
        }
    }
}

#[test]
fn a_point_moves_between_rooms_with_its_stream_unbroken() {
    let mut first = Harness::bridge(PCMU, PCMU);
    first.datagram(SIP, SIP_FAR_END, &rtp(header(0, 1, 0, 1), &[1; 160]));
    let before = first.take_rtp(CLIENT);
    let moved = first
        .room
        .take_point(first.now, CLIENT)
        .expect("known point");
    first.datagram(SIP, SIP_FAR_END, &rtp(header(0, 2, 160, 1), &[1; 160]));
    assert!(
        first.take_rtp(CLIENT).is_empty(),
        "gone from the first room"
    );

    let mut second = Harness::new();
    second.now = first.now;
    second.add(THIRD, PointConfig::rtp(address(THIRD_END), PCMU, None));
    assert_eq!(
        second.room.insert_point(second.now, PointId(7), moved),
        Ok(())
    );
    second.datagram(THIRD, THIRD_END, &rtp(header(0, 1, 0, 3), &[3; 160]));
    let after = second.take_rtp(PointId(7));
    assert_eq!(after.len(), 1, "it hears the second room");
    assert_eq!(after[0].destination, address(CLIENT_END));
    assert_eq!(
        after[0].header.ssrc, before[0].header.ssrc,
        "the same stream"
    );
    assert_eq!(
        after[0].header.sequence,
        before[0].header.sequence.wrapping_add(1),
        "numbered on without a gap"
    );
    second.datagram(
        PointId(7),
        CLIENT_END,
        &rtp(header(0, 9, 900, 2), &[2; 160]),
    );
    assert_eq!(second.take_rtp(THIRD).len(), 1, "and is heard there");
    assert_eq!(
        first.room.remove_point(first.now, CLIENT),
        Err(RoomError::UnknownPoint(CLIENT))
    );
}

#[test]
fn a_recording_holds_every_voice_and_the_time_it_ran() {
    let mut room = Harness::bridge(PCMU, PCMU);
    room.add(THIRD, PointConfig::rtp(address(THIRD_END), PCMU, None));
    assert_eq!(room.room.start_recording(room.now, 1), Ok(()));
    assert_eq!(
        room.room.start_recording(room.now, 1),
        Err(RoomError::DuplicateRecording(1))
    );
    all_send(&mut room, &SPEAKERS, 100);
    // A second of nobody speaking is recorded as silence.
    room.advance(Duration::from_secs(1));
    assert_eq!(room.room.stop_recording(room.now, 1), Ok(()));
    room.advance(Duration::from_secs(1));
    let samples = std::mem::take(&mut room.recorded);
    let seconds = samples.len() as f64 / f64::from(RECORDING_RATE.hz());
    assert!((1.9..=3.1).contains(&seconds), "{seconds} s recorded");
    let voiced = &samples[..samples.len() / 2];
    for hz in TONES {
        let power = power_at(voiced, hz, f64::from(RECORDING_RATE.hz()));
        let other = power_at(voiced, 1234.0, f64::from(RECORDING_RATE.hz()));
        assert!(power > 1000.0 * other, "{hz} Hz missing from the recording");
    }
    assert!(samples[samples.len() - 4000..].iter().all(|s| s.abs() < 50));
}

#[test]
fn test_lines_are_points_of_the_room() {
    let mut room = Harness::new();
    room.add(SIP, PointConfig::rtp(address(SIP_FAR_END), PCMU, EVENTS));
    room.add(CLIENT, PointConfig::line(Line::Echo, PCMU, EVENTS));
    room.datagram(SIP, SIP_FAR_END, &rtp(header(0, 9, 900, 1), &[42; 160]));
    let echoed = room.take_rtp(SIP);
    assert_eq!(echoed.len(), 1);
    assert_eq!(echoed[0].payload, vec![42; 160]);

    let mut room = Harness::new();
    room.add(SIP, PointConfig::rtp(address(SIP_FAR_END), PCMU, EVENTS));
    room.add(CLIENT, PointConfig::line(Line::Digits, PCMU, EVENTS));
    let mut start = header(101, 1, 500, 1);
    start.marker = true;
    room.datagram(SIP, SIP_FAR_END, &rtp(start, &[3, 10, 0, 160]));
    room.advance(Duration::from_millis(500));
    assert!(events_of(&room.take_rtp(SIP))
        .iter()
        .any(|e| e.event == 3 && e.end));

    let mut room = Harness::new();
    room.add(SIP, PointConfig::rtp(address(SIP_FAR_END), PCMU, EVENTS));
    room.add(CLIENT, PointConfig::line(Line::Tone, PCMU, EVENTS));
    room.advance(Duration::from_millis(1000));
    let tone = room.take_rtp(SIP);
    assert!(
        (45..=55).contains(&tone.len()),
        "{} tone frames in a second",
        tone.len()
    );
}

#[test]
fn garbage_and_unknown_points_change_nothing() {
    let mut room = Harness::bridge(PCMU, PCMU);
    for garbage in [&[][..], &[0x80][..], &[0xff; 12][..], &[0x80, 0, 0, 1][..]] {
        room.datagram(CLIENT, CLIENT_END, garbage);
        room.input(Input::Flv {
            point: CLIENT,
            timestamp: 0,
            data: garbage,
        });
        room.input(Input::Rtcp {
            point: SIP,
            data: garbage,
        });
    }
    room.datagram(PointId(99), CLIENT_END, &rtp(header(0, 1, 0, 1), &[0; 160]));
    assert!(room.take_rtp(SIP).is_empty());
    assert_eq!(
        room.room.add_point(room.now, SIP, sip_leg(PCMU, true)),
        Err(RoomError::Duplicate(SIP))
    );
}

#[test]
fn digits_after_a_move_to_opus_are_timed_at_48_khz() {
    let mut room = Harness::bridge(PCMU, PCMU);
    let opus = PointUpdate {
        remote: address(SIP_FAR_END),
        audio: Some((111, Codec::Opus)),
        telephone_event: EVENTS,
        sends: true,
    };
    room.room
        .update_point(room.now, SIP, opus)
        .expect("known point");
    room.room.send_digits(room.now, SIP, "1").expect("queued");
    room.advance(Duration::from_millis(500));
    let last = events_of(&room.take_rtp(SIP))
        .into_iter()
        .rfind(|event| event.end)
        .expect("the digit ended");
    assert_eq!(last.duration, 4800, "100 ms at 48 kHz");
}

/// Who sends in the strict-source tests, by the byte their payloads are made of.
const FAR_END_BYTE: u8 = 0x11;
const CLIENT_BYTE: u8 = 0x22;
const ATTACKER_BYTE: u8 = 0xee;
const ATTACKER: u16 = 45_000;

/// One 20 ms frame: the far end (from `far_end`, SSRC `far_ssrc`) and the client each send a
/// packet, then the clock moves on.
fn both_talk(room: &mut Harness, frame: u16, far_end: u16, far_ssrc: u32) {
    let timestamp = u32::from(frame) * 160;
    room.datagram(
        SIP,
        far_end,
        &rtp(header(0, frame, timestamp, far_ssrc), &[FAR_END_BYTE; 160]),
    );
    room.datagram(
        CLIENT,
        CLIENT_END,
        &rtp(header(0, frame, timestamp, 0x88), &[CLIENT_BYTE; 160]),
    );
    room.advance(FRAME);
}

/// An attacker's packet with an SSRC of its own to both points.
fn attack(room: &mut Harness, frame: u16) {
    let packet = rtp(
        header(0, frame, u32::from(frame) * 160, 0xbad),
        &[ATTACKER_BYTE; 160],
    );
    room.datagram(SIP, ATTACKER, &packet);
    room.datagram(CLIENT, ATTACKER, &packet);
}

/// Where packets went (in order, repeats folded) and whose payloads they carried (by the
/// byte they are made of).
fn destinations_and_senders(sent: &[Sent]) -> (Vec<SocketAddr>, Vec<u8>) {
    let mut destinations: Vec<SocketAddr> = sent.iter().map(|s| s.destination).collect();
    destinations.dedup();
    let mut senders: Vec<u8> = sent
        .iter()
        .filter_map(|s| s.payload.first().copied())
        .collect();
    senders.sort_unstable();
    senders.dedup();
    (destinations, senders)
}

#[test]
fn after_the_learning_window_an_attacker_with_its_own_ssrc_takes_nothing() {
    for strict in [true, false] {
        let mut room = Harness::new();
        room.add(
            SIP,
            sip_leg(PCMU, true).latching(LatchConfig::strict(strict)),
        );
        room.add(
            CLIENT,
            PointConfig::rtp(address(CLIENT_END), PCMU, EVENTS)
                .latching(LatchConfig::strict(strict)),
        );
        // Three seconds of media both ways: the window (2 s) has closed.
        for frame in 0..150 {
            both_talk(&mut room, frame, SIP_FAR_END, 0x77);
        }
        room.take_rtp(SIP);
        room.take_rtp(CLIENT);
        for frame in 150..250 {
            attack(&mut room, frame);
            both_talk(&mut room, frame, SIP_FAR_END, 0x77);
        }
        let to_far_end = destinations_and_senders(&room.take_rtp(SIP));
        let to_client = destinations_and_senders(&room.take_rtp(CLIENT));
        if strict {
            assert_eq!(to_far_end, (vec![address(SIP_FAR_END)], vec![CLIENT_BYTE]));
            assert_eq!(to_client, (vec![address(CLIENT_END)], vec![FAR_END_BYTE]));
        } else {
            // Loose symmetric RTP, kept for who asks for it: the attacker's first packets
            // move both points to it, the real ends are refused from then on (theirs are
            // now the retired SSRCs), and the attacker hears itself through the room.
            assert_eq!(to_far_end.0.last(), Some(&address(ATTACKER)));
            assert_eq!(to_client.0.last(), Some(&address(ATTACKER)));
            assert_eq!(
                (to_far_end.1, to_client.1),
                (vec![ATTACKER_BYTE], vec![ATTACKER_BYTE])
            );
        }
    }
}

/// Within the learning window, datagrams from elsewhere that are not the far end's media move
/// nothing: an RTCP report (another call's, sent to port + 1 of some peer that happens to be
/// this RTP port: seen under load, where it cut a relayed call in both directions) and RTP of a
/// payload type this point never negotiated.
#[test]
fn within_the_learning_window_stray_rtcp_and_unnegotiated_payloads_move_nothing() {
    let mut room = Harness::bridge(PCMU, PCMU);
    for frame in 0..10 {
        both_talk(&mut room, frame, SIP_FAR_END, 0x77);
    }
    room.take_rtp(SIP);
    room.take_rtp(CLIENT);
    // A sender report: version 2, PT 200, length 6, SSRC 0x0bad, NTP, RTP time, counts.
    let mut report = vec![0x80, 200, 0, 6, 0, 0, 0x0b, 0xad];
    report.extend_from_slice(&[0; 20]);
    let unnegotiated = rtp(header(96, 1, 0, 0x0bae), &[ATTACKER_BYTE; 160]);
    for frame in 10..150 {
        if frame % 10 == 0 {
            for point in [SIP, CLIENT] {
                room.datagram(point, ATTACKER, &report);
                room.datagram(point, ATTACKER + 2, &unnegotiated);
            }
        }
        both_talk(&mut room, frame, SIP_FAR_END, 0x77);
    }
    let to_far_end = destinations_and_senders(&room.take_rtp(SIP));
    let to_client = destinations_and_senders(&room.take_rtp(CLIENT));
    assert_eq!(to_far_end, (vec![address(SIP_FAR_END)], vec![CLIENT_BYTE]));
    assert_eq!(to_client, (vec![address(CLIENT_END)], vec![FAR_END_BYTE]));
}

#[test]
fn within_the_learning_window_a_far_end_moving_with_a_new_ssrc_is_followed() {
    let mut room = Harness::bridge(PCMU, PCMU);
    // Behind NAT: its first packets by one mapping, its steady stream by another (a relay or
    // a second NAT taking over), a second later and with a new SSRC.
    let first_mapping = 41_000;
    let steady_mapping = 41_002;
    for frame in 0..50 {
        both_talk(&mut room, frame, first_mapping, 0x77);
    }
    assert_eq!(
        room.take_rtp(SIP).last().map(|s| s.destination),
        Some(address(first_mapping))
    );
    for frame in 50..200 {
        both_talk(&mut room, frame, steady_mapping, 0x78);
    }
    let to_far_end = destinations_and_senders(&room.take_rtp(SIP));
    assert_eq!(
        to_far_end,
        (vec![address(steady_mapping)], vec![CLIENT_BYTE])
    );
    let to_client = destinations_and_senders(&room.take_rtp(CLIENT));
    assert_eq!(to_client, (vec![address(CLIENT_END)], vec![FAR_END_BYTE]));
    // Its window has closed since: another move is refused.
    attack(&mut room, 200);
    both_talk(&mut room, 200, steady_mapping, 0x78);
    assert_eq!(
        destinations_and_senders(&room.take_rtp(SIP)).0,
        vec![address(steady_mapping)]
    );
}

#[test]
fn a_reinvite_reopens_learning_for_the_far_end_s_new_stream() {
    let mut room = Harness::bridge(PCMU, PCMU);
    for frame in 0..150 {
        both_talk(&mut room, frame, SIP_FAR_END, 0x77);
    }
    room.take_rtp(SIP);
    room.take_rtp(CLIENT);
    // Long after the window, a re-INVITE: the far end moved (a transfer, a new relay), and
    // its new stream comes through a NAT mapping its SDP does not show.
    let moved = PointUpdate {
        remote: address(SIP_FAR_END + 10),
        audio: PCMU,
        telephone_event: EVENTS,
        sends: true,
    };
    room.room
        .update_point(room.now, SIP, moved)
        .expect("known point");
    // The client talks on; the far end's new stream starts a little later.
    for frame in 150..155 {
        room.datagram(
            CLIENT,
            CLIENT_END,
            &rtp(
                header(0, frame, u32::from(frame) * 160, 0x88),
                &[CLIENT_BYTE; 160],
            ),
        );
        room.advance(FRAME);
    }
    let behind_nat = SIP_FAR_END + 20;
    for frame in 155..300 {
        both_talk(&mut room, frame, behind_nat, 0x99);
    }
    let to_far_end = destinations_and_senders(&room.take_rtp(SIP));
    // The client's packets right after the re-INVITE went to the new SDP address, until
    // the far end's first packet latched.
    assert_eq!(
        to_far_end,
        (
            vec![address(SIP_FAR_END + 10), address(behind_nat)],
            vec![CLIENT_BYTE]
        )
    );
    // Learning has closed again: the attacker is refused.
    for frame in 300..350 {
        attack(&mut room, frame);
        both_talk(&mut room, frame, behind_nat, 0x99);
    }
    assert_eq!(
        destinations_and_senders(&room.take_rtp(SIP)),
        (vec![address(behind_nat)], vec![CLIENT_BYTE])
    );
    assert_eq!(
        destinations_and_senders(&room.take_rtp(CLIENT)),
        (vec![address(CLIENT_END)], vec![FAR_END_BYTE])
    );
}

#[test]
fn a_deaf_point_hears_nobody_until_it_hears_again() {
    let mut room = Harness::bridge(PCMU, PCMU);
    assert_eq!(room.room.set_deaf(room.now, SIP, true), Ok(()));
    room.datagram(CLIENT, CLIENT_END, &rtp(header(0, 1, 0, 2), &[2; 160]));
    assert!(
        room.take_rtp(SIP).is_empty(),
        "a far end on hold hears nothing"
    );
    room.datagram(SIP, SIP_FAR_END, &rtp(header(0, 1, 0, 1), &[1; 160]));
    assert_eq!(
        room.take_rtp(CLIENT).len(),
        1,
        "and is still heard if it speaks"
    );
    assert_eq!(room.room.set_deaf(room.now, SIP, false), Ok(()));
    room.datagram(CLIENT, CLIENT_END, &rtp(header(0, 2, 160, 2), &[2; 160]));
    assert_eq!(room.take_rtp(SIP).len(), 1);
}

#[test]
fn a_held_far_end_hears_its_music_and_only_that() {
    const MUSIC: PointId = THIRD;
    let mut room = Harness::bridge(PCMU, PCMU);
    assert_eq!(room.room.set_deaf(room.now, SIP, true), Ok(()));
    // One second of 600 Hz at 8 kHz, played in a loop.
    let recording: std::sync::Arc<[i16]> = (0..8000u32)
        .map(|n| ((std::f64::consts::TAU * 600.0 * f64::from(n) / 8000.0).sin() * 6000.0) as i16)
        .collect();
    room.add(MUSIC, PointConfig::music(recording, (0, Codec::Pcmu), SIP));
    all_send(&mut room, &[(CLIENT, CLIENT_END, 440.0)], 100);
    let to_far_end = room.take_rtp(SIP);
    assert!(
        (95..=105).contains(&to_far_end.len()),
        "{} frames of music in 2 s",
        to_far_end.len()
    );
    let powers = heard(&to_far_end, &[600.0, 440.0]);
    assert!(
        powers[1] < 0.01,
        "the held far end hears the client: {powers:?}"
    );
    assert!(
        room.take_rtp(CLIENT).is_empty(),
        "the client hears the music"
    );
    // Resumed: the music goes, the client is heard again.
    assert_eq!(room.room.remove_point(room.now, MUSIC), Ok(()));
    assert_eq!(room.room.set_deaf(room.now, SIP, false), Ok(()));
    all_send(&mut room, &[(CLIENT, CLIENT_END, 440.0)], 50);
    let powers = heard(&room.take_rtp(SIP), &[600.0, 440.0]);
    assert!(
        powers[0] < 0.01 && powers[1] == 1.0,
        "after the resume: {powers:?}"
    );
}

/// An SRTP SIP leg: what its far end sends is authenticated and decrypted
/// before the room looks at it, what the room sends it (RTP and RTCP) is
/// protected, and forgeries are dropped and counted.
#[test]
fn an_srtp_leg_protects_what_goes_out_and_drops_what_fails_authentication() {
    let profile = SrtpProfile::AesCm128HmacSha1_80;
    let ours = MasterKey::new(profile, &[1; 30]).unwrap();
    let theirs = MasterKey::new(profile, &[2; 30]).unwrap();
    let mut far_end = SrtpSession::new(&SrtpKeys {
        send: theirs,
        receive: ours,
    })
    .unwrap();
    let mut room = Harness::new();
    room.add(
        SIP,
        sip_leg(PCMU, true).secured(SrtpKeys {
            send: ours,
            receive: theirs,
        }),
    );
    room.add(CLIENT, PointConfig::rtp(address(CLIENT_END), PCMU, EVENTS));

    let plain = rtp(header(0, 7, 1120, 99), &[0x42; 160]);
    let mut protected = plain.clone();
    protected.resize(plain.len() + 10, 0);
    let len = far_end.protect_rtp(&mut protected, plain.len()).unwrap();
    protected.truncate(len);
    let mut forged = protected.clone();
    forged[20] ^= 1;
    room.datagram(SIP, SIP_FAR_END, &forged);
    room.datagram(SIP, SIP_FAR_END, &plain);
    assert!(room.take_rtp(CLIENT).is_empty(), "forged and plain dropped");
    room.datagram(SIP, SIP_FAR_END, &protected);
    room.datagram(SIP, SIP_FAR_END, &protected);
    let relayed = room.take_rtp(CLIENT);
    assert_eq!(relayed.len(), 1, "the replay is dropped");
    assert_eq!(relayed[0].payload, vec![0x42; 160]);
    assert_eq!(room.room.stats(SIP).map(|s| s.srtp_rejected), Some(3));

    room.datagram(CLIENT, CLIENT_END, &rtp(header(0, 1, 160, 5), &[0x24; 160]));
    let sent = room.take_rtp(SIP);
    assert_eq!(sent.len(), 1);
    assert!(!sent[0].data.windows(16).any(|w| w == [0x24; 16]));
    let mut wire = sent[0].data.clone();
    let len = far_end.unprotect_rtp(&mut wire).unwrap();
    assert_eq!(
        RtpPacket::parse(&wire[..len]).unwrap().payload,
        &[0x24; 160]
    );

    room.advance(Duration::from_secs(12));
    let mut reports: Vec<Sent> = room
        .sent
        .iter()
        .filter(|sent| sent.point == SIP && sent.socket == Socket::Rtcp)
        .cloned()
        .collect();
    assert!(!reports.is_empty());
    for report in &mut reports {
        assert!(far_end.unprotect_rtcp(&mut report.data).is_ok());
    }
}

/// Rooms given one tick origin tick at the same instants, whenever their
/// ticking began, and stay on that grid after a late wake-up: a media loop
/// then serves all their ticks with one wake-up per frame.
#[test]
fn rooms_sharing_a_tick_origin_tick_together_and_stay_on_the_grid() {
    let origin = Instant::now();
    let on_grid = |at: Instant| {
        at.duration_since(origin)
            .as_nanos()
            .is_multiple_of(FRAME.as_nanos())
    };
    let mut rooms = Vec::new();
    for started in [3, 11] {
        let mut room = Room::with_tick_origin(origin);
        let now = origin + Duration::from_millis(started);
        let rtp = PointConfig::rtp(address(SIP_FAR_END), PCMU, EVENTS);
        assert_eq!(room.add_point(now, SIP, rtp), Ok(()));
        let line = PointConfig::line(Line::Tone, PCMU, EVENTS);
        assert_eq!(room.add_point(now, CLIENT, line), Ok(()));
        rooms.push(room);
    }
    let first = origin + FRAME;
    for room in &mut rooms {
        assert_eq!(room.poll_timeout(), Some(first));
        room.handle_input(first, Input::Timeout);
        assert_eq!(room.poll_timeout(), Some(first + FRAME));
        // Woken far too late: the missed ticks are skipped, onto the grid.
        let late = first + FRAME + Duration::from_millis(313);
        room.handle_input(late, Input::Timeout);
        let next = room.poll_timeout().unwrap();
        assert!(next > late && on_grid(next), "{:?}", next - origin);
    }
}

/// What a forwarder carrying `offload` has done after relaying `stream`
/// (the kernel's arithmetic, written out).
fn forwarded(offload: &Offload, stream: &[(RtpHeader, Vec<u8>)], at: Instant) -> OffloadProgress {
    let mut progress = OffloadProgress {
        extended_highest_sequence: offload.extended_highest_sequence,
        highest_timestamp: offload.mapping.highest_timestamp,
        anchor_sequence: offload.mapping.anchor_sequence,
        jitter_q4: offload.jitter_q4,
        ..OffloadProgress::default()
    };
    for (header, payload) in stream {
        let highest = progress.extended_highest_sequence as u16;
        if header.sequence < highest {
            progress.extended_highest_sequence += 0x1_0000;
        }
        progress.extended_highest_sequence =
            (progress.extended_highest_sequence & 0xffff_0000) | u32::from(header.sequence);
        progress.highest_timestamp = header.timestamp;
        progress.anchor_sequence = header.sequence.wrapping_sub(100);
        progress.packets += 1;
        progress.octets += payload.len() as u64;
    }
    progress.last_arrival = Some(at);
    progress
}

#[test]
fn a_steady_relay_is_handed_over_and_taken_back_where_the_forwarder_left_it() {
    let mut room = Harness::bridge(PCMU, PCMU);
    room.room.enable_offload();
    // Through the sequence number's wrap, while the forwarder has it.
    let stream = pcmu_stream(20, 5_610, &[]);
    let (before, rest) = stream.split_at(OFFLOAD_AFTER as usize);
    let (forwarded_part, after) = rest.split_at(5_500);
    for (index, (header, payload)) in before.iter().enumerate() {
        assert!(
            room.offloads.is_empty(),
            "not before {OFFLOAD_AFTER} packets"
        );
        room.datagram(SIP, SIP_FAR_END, &rtp(*header, payload));
        room.now += Duration::from_millis(20);
        assert_eq!(room.offloads.is_empty(), index + 1 < before.len());
    }
    let relayed = room.take_rtp(CLIENT);
    let last = relayed.last().expect("relayed before the hand-over");
    let offload = room.offloads.pop().expect("handed over");
    assert_eq!(
        (
            offload.from,
            offload.to,
            offload.source,
            offload.destination
        ),
        (SIP, CLIENT, address(SIP_FAR_END), address(CLIENT_END))
    );
    assert_eq!((offload.ssrc, offload.payload_type), (0xfeed, 0));
    assert_eq!(
        (offload.out_ssrc, offload.out_payload_type),
        (last.header.ssrc, 0)
    );
    let (last_in, _) = before[before.len() - 1];
    assert_eq!(
        last_in
            .sequence
            .wrapping_add(offload.mapping.sequence_offset),
        last.header.sequence,
        "the forwarder numbers as the room did"
    );
    assert_eq!(
        last_in
            .timestamp
            .wrapping_add(offload.mapping.timestamp_offset),
        last.header.timestamp
    );

    // The forwarder reports before each of the room's timers; the far end
    // is not silent to the room although no packet reaches it.
    for second in 1..=110 {
        let done = (second * 50).min(forwarded_part.len());
        room.now += Duration::from_secs(1);
        let progress = forwarded(&offload, &forwarded_part[..done], room.now);
        room.input(Input::Offloaded {
            point: SIP,
            progress,
            ended: false,
        });
        room.advance(Duration::ZERO);
    }
    assert!(
        !room
            .take_events()
            .iter()
            .any(|event| matches!(event, Event::MediaTimeout { .. })),
        "no media timeout while the forwarder carries the stream"
    );
    assert!(
        room.take_rtp(CLIENT).is_empty(),
        "the room sends nothing itself"
    );
    let stats = room.room.stats(SIP).expect("watched");
    assert_eq!(stats.packets_received, (OFFLOAD_AFTER as u64) + 5_500);
    assert_eq!(stats.lost, 0);
    let progress = forwarded(&offload, forwarded_part, room.now);
    room.input(Input::Offloaded {
        point: SIP,
        progress,
        ended: true,
    });

    for (header, payload) in after {
        room.datagram(SIP, SIP_FAR_END, &rtp(*header, payload));
        room.now += Duration::from_millis(20);
    }
    let relayed = room.take_rtp(CLIENT);
    assert_eq!(relayed.len(), after.len());
    let (forwarded_last, _) = forwarded_part[forwarded_part.len() - 1];
    assert_eq!(
        relayed[0].header.sequence,
        forwarded_last
            .sequence
            .wrapping_add(offload.mapping.sequence_offset)
            .wrapping_add(1),
        "the stream goes on without a gap after the forwarder's last"
    );
    assert!(!relayed[0].header.marker, "nor a discontinuity");
    assert_eq!(relayed[0].header.ssrc, offload.out_ssrc);
    let stats = room.room.stats(SIP).expect("watched");
    assert_eq!(stats.packets_received, stream.len() as u64);
    assert_eq!(stats.lost, 0);
    assert_eq!(room.offloads.len(), 1, "steady again: handed over anew");
}

#[test]
fn relays_that_need_the_room_stay_in_it() {
    // Transcoded: not a relay.
    let mut room = Harness::bridge(PCMU, PCMA);
    room.room.enable_offload();
    for (header, payload) in pcmu_stream(20, 100, &[]) {
        room.datagram(SIP, SIP_FAR_END, &rtp(header, &payload));
        room.now += Duration::from_millis(20);
    }
    assert!(room.offloads.is_empty(), "a transcoded leg");

    // Digits toward the listener interleave with the relay.
    let mut room = Harness::bridge(PCMU, PCMU);
    room.room.enable_offload();
    let stream = pcmu_stream(20, 100, &[]);
    for (index, (header, payload)) in stream.iter().enumerate() {
        if index == 10 {
            room.room
                .send_digits(room.now, CLIENT, "123")
                .expect("the client takes events");
        }
        room.datagram(SIP, SIP_FAR_END, &rtp(*header, payload));
        room.advance(Duration::from_millis(20));
    }
    assert!(room.offloads.is_empty(), "not while digits go out");

    // Three points: the speaker is mixed for two listeners.
    let mut room = Harness::bridge(PCMU, PCMU);
    room.room.enable_offload();
    room.add(THIRD, PointConfig::rtp(address(THIRD_END), PCMU, EVENTS));
    for (header, payload) in pcmu_stream(20, 100, &[]) {
        room.datagram(SIP, SIP_FAR_END, &rtp(header, &payload));
        room.advance(Duration::from_millis(20));
    }
    assert!(room.offloads.is_empty(), "a conference");

    // Not enabled: the driver has no forwarder.
    let mut room = Harness::bridge(PCMU, PCMU);
    for (header, payload) in pcmu_stream(20, 100, &[]) {
        room.datagram(SIP, SIP_FAR_END, &rtp(header, &payload));
        room.now += Duration::from_millis(20);
    }
    assert!(room.offloads.is_empty(), "no forwarder");
}

#[test]
fn a_listener_that_moves_takes_its_relay_back_into_the_room() {
    let loose = LatchConfig::strict(false);
    let mut room = Harness::new();
    room.room.enable_offload();
    room.add(SIP, sip_leg(PCMU, true));
    room.add(
        CLIENT,
        PointConfig::rtp(address(CLIENT_END), PCMU, EVENTS).latching(loose),
    );
    for (header, payload) in pcmu_stream(20, u16::from(OFFLOAD_AFTER as u8), &[]) {
        room.datagram(SIP, SIP_FAR_END, &rtp(header, &payload));
        room.now += Duration::from_millis(20);
    }
    assert_eq!(room.offloads.len(), 1);
    assert!(room.reclaimed.is_empty());
    // The client's far end speaks from a new address: what goes to it must
    // follow, which only the room knows.
    let moved = header(0, 7, 160, 0xc11e);
    room.datagram(CLIENT, CLIENT_END + 2, &rtp(moved, &[0xff; 160]));
    assert_eq!(room.reclaimed, vec![SIP]);
}
