//! Cost of the WebRTC ↔ SIP media path per 20 ms frame, on the gateway's
//! side: str0m in RTP mode (SRTP protect / unprotect, its timers) plus the
//! Opus ↔ PCMU transcoding the media room does for a browser on Opus and a
//! SIP leg on PCMU.
//!
//! Two str0m `Rtc`s are connected in memory: the "gateway" (ICE-lite, RTP
//! mode, configured as `room/src/webrtc.rs` does) offers, the "browser"
//! (full ICE, RTP mode, Opus) answers; ICE and DTLS run to `Connected` over
//! fake 127.0.0.1 addresses. Each timed iteration is one 20 ms frame: the
//! simulated clock moves on by 20 ms, and only the gateway's work is timed
//! (what the browser does, and carrying datagrams between the two, is not).
//!
//! Run with `cargo bench -p dialtone-room --bench webrtc_path`.

use std::error::Error;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::Criterion;
use dialtone_codecs::{new_encoder, voice_like_frames, Codec, Transcoder, MAX_PAYLOAD_LEN};
use dialtone_room::webrtc::{audio_mid, point_config};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::Codec as RtcCodec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig, RtcError};

type BenchResult<T> = Result<T, Box<dyn Error>>;

/// One frame of audio.
const FRAME: Duration = Duration::from_millis(20);
/// One second of payloads to cycle through.
const FRAMES: usize = 50;
/// Opus's RTP clock advance per 20 ms frame.
const OPUS_TICKS: u32 = 960;
/// Timer rounds `drain` allows before it calls str0m stuck.
const MAX_TICKS: usize = 8;

/// Whether a datagram is SRTP media (RFC 7983: first byte 128..=191; RFC
/// 5761: RTCP payload types 192..=223 in the second byte).
fn is_rtp(datagram: &[u8]) -> bool {
    matches!(datagram, [first, second, ..]
        if (128..=191).contains(first) && !(192..=223).contains(second))
}

/// An RTP header's length: fixed part, CSRCs, header extension.
fn rtp_header_len(packet: &[u8]) -> usize {
    let Some(&first) = packet.first() else {
        return 0;
    };
    let fixed = 12 + 4 * usize::from(first & 0x0f);
    if first & 0x10 == 0 {
        return fixed;
    }
    let words = packet.get(fixed + 2..fixed + 4).map_or(0, |length| {
        usize::from(u16::from_be_bytes([length[0], length[1]]))
    });
    fixed + 4 + 4 * words
}

/// One side of the link: its `Rtc`, its address, what it has to send.
struct Side {
    rtc: Rtc,
    address: SocketAddr,
    outbox: Vec<Vec<u8>>,
    connected: bool,
}

/// What one `drain` saw.
#[derive(Default, Clone, Copy)]
struct Drained {
    /// SRTP media datagrams among those sent.
    rtp_datagrams: usize,
    /// `Event::RtpPacket`s (decrypted RTP).
    rtp_packets: usize,
    /// Times str0m asked for a timer that was already due.
    timer_rounds: usize,
}

impl Side {
    fn new(rtc: Rtc, address: SocketAddr) -> BenchResult<Side> {
        let mut side = Side {
            rtc,
            address,
            outbox: Vec::new(),
            connected: false,
        };
        side.rtc
            .add_local_candidate(Candidate::host(address, "udp")?);
        Ok(side)
    }

    /// A datagram from `source`, arrived at `now`.
    fn receive(&mut self, now: Instant, source: SocketAddr, datagram: &[u8]) -> BenchResult<()> {
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.address,
                contents: datagram.try_into()?,
            },
        );
        self.rtc.handle_input(input)?;
        Ok(())
    }

    /// Polls str0m until it has nothing more before `now`: datagrams go to
    /// the outbox, decrypted RTP to `on_rtp`. A timer at or before `now`
    /// (str0m asks for one to flush what `write_rtp` queued) is handed
    /// `Input::Timeout(now)`, as the room does with the transport's
    /// deadline.
    fn drain(
        &mut self,
        now: Instant,
        mut on_rtp: impl FnMut(&[u8]) -> BenchResult<()>,
    ) -> BenchResult<Drained> {
        let mut drained = Drained::default();
        loop {
            match self.rtc.poll_output()? {
                Output::Timeout(at) if at <= now => {
                    drained.timer_rounds += 1;
                    if drained.timer_rounds > MAX_TICKS {
                        return Err("str0m keeps asking for a timer that is already due".into());
                    }
                    self.rtc.handle_input(Input::Timeout(now))?;
                }
                Output::Timeout(_) => return Ok(drained),
                Output::Transmit(transmit) => {
                    if is_rtp(&transmit.contents) {
                        drained.rtp_datagrams += 1;
                    }
                    self.outbox.push(transmit.contents.into());
                }
                Output::Event(Event::Connected) => self.connected = true,
                Output::Event(Event::RtpPacket(packet)) => {
                    drained.rtp_packets += 1;
                    on_rtp(&packet.payload)?;
                }
                Output::Event(_) => {}
            }
        }
    }

    /// Moves this side's clock to `now`.
    fn tick(&mut self, now: Instant) -> Result<(), RtcError> {
        self.rtc.handle_input(Input::Timeout(now))
    }

    fn write_rtp(&mut self, mid: Mid, write: RtpWrite) -> BenchResult<()> {
        let mut api = self.rtc.direct_api();
        let stream = api
            .stream_tx_by_mid(mid, None)
            .ok_or("no send stream for the audio mid")?;
        stream.write_rtp(write);
        Ok(())
    }
}

/// The gateway's `Rtc`, configured as its WebRTC points are.
fn gateway_rtc(now: Instant) -> Rtc {
    point_config(&[]).build(now)
}

/// A browser: full ICE, RTP mode, Opus.
fn browser_rtc(now: Instant) -> Rtc {
    RtcConfig::new()
        .set_rtp_mode(true)
        .set_stats_interval(None)
        .clear_codecs()
        .enable_opus(true, false)
        .build(now)
}

/// The gateway and a browser, connected; time is simulated.
struct Link {
    gateway: Side,
    browser: Side,
    now: Instant,
    mid: Mid,
    /// Opus's payload type on the link.
    opus: Pt,
    /// Next RTP sequence numbers (extended), browser's and gateway's.
    browser_sequence: u64,
    gateway_sequence: u64,
}

impl Link {
    fn connect() -> BenchResult<Link> {
        str0m::crypto::from_feature_flags().install_process_default();
        let start = Instant::now();
        let mut gateway = Side::new(gateway_rtc(start), "127.0.0.1:40000".parse()?)?;
        let mut browser = Side::new(browser_rtc(start), "127.0.0.1:50000".parse()?)?;

        let mut change = gateway.rtc.sdp_api();
        change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let (offer, pending) = change.apply().ok_or("the gateway made no offer")?;
        let offer = SdpOffer::from_sdp_string(&offer.to_sdp_string())?;
        let answer = browser.rtc.sdp_api().accept_offer(offer)?.to_sdp_string();
        let mid = audio_mid(&answer).ok_or("the answer has no audio")?;
        gateway
            .rtc
            .sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(&answer)?)?;

        let opus = browser
            .rtc
            .codec_config()
            .find(|params| params.spec().codec == RtcCodec::Opus)
            .map(|params| params.pt())
            .ok_or("the browser has no Opus")?;
        let media = gateway
            .rtc
            .media(mid)
            .ok_or("no audio media on the gateway")?;
        if !media.remote_pts().contains(&opus) {
            return Err("Opus was not negotiated".into());
        }

        let mut link = Link {
            gateway,
            browser,
            now: start,
            mid,
            opus,
            browser_sequence: 1,
            gateway_sequence: 1,
        };
        // ICE and DTLS, 10 ms at a time, a few seconds at most.
        for _ in 0..500 {
            if link.gateway.connected && link.browser.connected {
                break;
            }
            link.now += Duration::from_millis(10);
            link.gateway.tick(link.now)?;
            link.browser.tick(link.now)?;
            link.settle()?;
        }
        if !(link.gateway.connected && link.browser.connected) {
            return Err("ICE and DTLS did not connect".into());
        }
        // Let the handshake's last flights and first checks pass.
        for _ in 0..50 {
            link.frame_untimed()?;
        }
        Ok(link)
    }

    /// Carries datagrams both ways until neither side has any to send;
    /// media is counted, payloads dropped (nothing here is timed).
    fn settle(&mut self) -> BenchResult<Drained> {
        let mut seen = Drained::default();
        for _ in 0..64 {
            let gateway = self.gateway.drain(self.now, |_| Ok(()))?;
            let browser = self.browser.drain(self.now, |_| Ok(()))?;
            seen.rtp_datagrams += gateway.rtp_datagrams + browser.rtp_datagrams;
            seen.rtp_packets += gateway.rtp_packets + browser.rtp_packets;
            if self.gateway.outbox.is_empty() && self.browser.outbox.is_empty() {
                return Ok(seen);
            }
            for datagram in std::mem::take(&mut self.gateway.outbox) {
                self.browser
                    .receive(self.now, self.gateway.address, &datagram)?;
            }
            for datagram in std::mem::take(&mut self.browser.outbox) {
                self.gateway
                    .receive(self.now, self.browser.address, &datagram)?;
            }
        }
        Err("the two sides keep sending each other datagrams".into())
    }

    /// Moves both clocks on by one frame with no media.
    fn frame_untimed(&mut self) -> BenchResult<()> {
        self.now += FRAME;
        self.gateway.tick(self.now)?;
        self.browser.tick(self.now)?;
        self.settle()?;
        Ok(())
    }

    /// The browser's part of a frame, untimed: its clock moves on, it sends
    /// `payload` as the next Opus packet, and everything but that packet
    /// (STUN checks, RTCP) is carried to and handled by the gateway. The
    /// gateway's clock is moved on too, so that the timed part handles the
    /// media packet only. Returns the SRTP datagram of the packet.
    fn browser_sends(&mut self, payload: &[u8]) -> BenchResult<Vec<u8>> {
        self.now += FRAME;
        self.browser.tick(self.now)?;
        self.gateway.tick(self.now)?;
        self.settle()?;
        let sequence = self.browser_sequence;
        self.browser_sequence += 1;
        let write = RtpWrite::new(
            self.opus,
            sequence.into(),
            (sequence as u32).wrapping_mul(OPUS_TICKS),
            self.now,
            payload,
        );
        self.browser.write_rtp(self.mid, write)?;
        let drained = self.browser.drain(self.now, |_| Ok(()))?;
        if drained.rtp_datagrams != 1 {
            return Err(format!(
                "the browser sent {} RTP datagrams for one packet",
                drained.rtp_datagrams
            )
            .into());
        }
        let mut media = None;
        for datagram in std::mem::take(&mut self.browser.outbox) {
            if is_rtp(&datagram) {
                media = Some(datagram);
            } else {
                self.gateway
                    .receive(self.now, self.browser.address, &datagram)?;
            }
        }
        self.settle()?;
        media.ok_or_else(|| "the browser's RTP datagram went missing".into())
    }

    /// The gateway's part of browser → SIP (timed): the SRTP datagram in,
    /// the decrypted payload out to `on_payload`.
    fn gateway_receives(
        &mut self,
        datagram: &[u8],
        on_payload: impl FnMut(&[u8]) -> BenchResult<()>,
    ) -> BenchResult<Drained> {
        self.gateway
            .receive(self.now, self.browser.address, datagram)?;
        self.gateway.drain(self.now, on_payload)
    }

    /// The gateway's part of SIP → browser (timed): `payload` is written as
    /// the next Opus packet and comes out SRTP-protected. `write_rtp` only
    /// queues it: str0m then asks for a timer that is already due, and the
    /// `Input::Timeout(now)` that `drain` hands it (as the room does on the
    /// transport's deadline) moves its clock to this frame and sends it.
    fn gateway_sends(&mut self, payload: &[u8]) -> BenchResult<Drained> {
        let sequence = self.gateway_sequence;
        self.gateway_sequence += 1;
        let write = RtpWrite::new(
            self.opus,
            sequence.into(),
            (sequence as u32).wrapping_mul(OPUS_TICKS),
            self.now,
            payload,
        );
        self.gateway.write_rtp(self.mid, write)?;
        self.gateway.drain(self.now, |_| Ok(()))
    }

    /// Before SIP → browser: the browser's part of the frame, untimed.
    fn browser_idles(&mut self) -> BenchResult<()> {
        self.now += FRAME;
        self.browser.tick(self.now)?;
        // The gateway's clock is not moved here: the timed part does it.
        let drained = self.browser.drain(self.now, |_| Ok(()))?;
        if drained.rtp_datagrams != 0 {
            return Err("the browser sent media unasked".into());
        }
        // Its STUN checks and RTCP (one every second or so) reach the
        // gateway now; the gateway's answers are polled in the timed part.
        for datagram in std::mem::take(&mut self.browser.outbox) {
            self.gateway
                .receive(self.now, self.browser.address, &datagram)?;
        }
        Ok(())
    }

    /// After SIP → browser: the gateway's datagrams to the browser, which
    /// decrypts the media (untimed).
    fn deliver_to_browser(&mut self) -> BenchResult<Drained> {
        self.settle()
    }
}

/// Encoded once, up front.
fn payloads(codec: Codec) -> BenchResult<Vec<Vec<u8>>> {
    let mut encoder = new_encoder(codec)?;
    let mut buffer = [0u8; MAX_PAYLOAD_LEN];
    voice_like_frames(codec, FRAMES)
        .iter()
        .map(|frame| {
            let length = encoder.encode(frame, &mut buffer)?;
            Ok(buffer[..length].to_vec())
        })
        .collect()
}

/// Counts over a whole measurement, checked after it.
#[derive(Default)]
struct Tally {
    frames: u64,
    /// Frames that did not give exactly one RTP datagram / packet (or,
    /// for the bare timer, sent media).
    wrong: u64,
    error: Option<String>,
}

impl Tally {
    fn frame(&mut self, result: BenchResult<usize>) {
        self.frames += 1;
        match result {
            Ok(1) => {}
            Ok(_) => self.wrong += 1,
            Err(error) => {
                self.wrong += 1;
                self.error.get_or_insert(error.to_string());
            }
        }
    }

    fn check(&self, name: &str) -> BenchResult<()> {
        if let Some(error) = &self.error {
            return Err(format!("{name}: {error}").into());
        }
        if self.wrong > 0 {
            return Err(format!(
                "{name}: {} of {} frames did not carry exactly one packet",
                self.wrong, self.frames
            )
            .into());
        }
        println!("{name}: {} frames, each as expected", self.frames);
        Ok(())
    }
}

/// Browser → SIP: the gateway unprotects the browser's SRTP packet and,
/// when `transcoder` is given, transcodes its Opus payload to PCMU.
fn bench_browser_to_sip(
    criterion: &mut Criterion,
    link: &mut Link,
    name: &str,
    opus: &[Vec<u8>],
    mut transcoder: Option<Transcoder>,
) -> BenchResult<()> {
    let mut out = [0u8; MAX_PAYLOAD_LEN];
    let mut next = opus.iter().cycle();
    // Setup check: one datagram in gives one RtpPacket (and one PCMU frame).
    for index in 0..FRAMES {
        let payload = next.next().ok_or("no payloads")?;
        let datagram = link.browser_sends(payload)?;
        if index == 0 {
            let overhead = datagram
                .len()
                .saturating_sub(rtp_header_len(&datagram) + payload.len());
            println!(
                "{name}: SRTP adds {overhead} bytes to a {}-byte Opus payload \
                 (16: AEAD-GCM tag, 10: AES-CM/HMAC-SHA1-80)",
                payload.len()
            );
        }
        let mut pcmu = 0;
        let drained = link.gateway_receives(&datagram, |payload| {
            if payload.len() < 20 {
                return Err(format!("payload of {} bytes, not Opus", payload.len()).into());
            }
            if let Some(transcoder) = transcoder.as_mut() {
                if transcoder.transcode(payload, &mut out)? != 160 {
                    return Err("not one 20 ms PCMU frame".into());
                }
                pcmu += 1;
            }
            Ok(())
        })?;
        if drained.rtp_packets != 1 || (transcoder.is_some() && pcmu != 1) {
            return Err(format!(
                "{name}: {} RTP packets from one datagram",
                drained.rtp_packets
            )
            .into());
        }
        link.settle()?;
    }

    let mut tally = Tally::default();
    criterion.bench_function(name, |bencher| {
        bencher.iter_custom(|iterations| {
            let mut timed = Duration::ZERO;
            for _ in 0..iterations {
                let payload = next.next().map_or(&[][..], Vec::as_slice);
                let datagram = match link.browser_sends(payload) {
                    Ok(datagram) => datagram,
                    Err(error) => {
                        tally.frame(Err(error));
                        continue;
                    }
                };
                let start = Instant::now();
                let result = link.gateway_receives(black_box(&datagram), |payload| {
                    if let Some(transcoder) = transcoder.as_mut() {
                        black_box(transcoder.transcode(payload, &mut out)?);
                    }
                    Ok(())
                });
                timed += start.elapsed();
                tally.frame(result.map(|drained| drained.rtp_packets));
                if let Err(error) = link.settle() {
                    tally.frame(Err(error));
                }
            }
            timed
        });
    });
    tally.check(name)
}

/// SIP → browser: the gateway, when `transcoder` is given, transcodes a
/// PCMU payload to Opus (else sends a ready Opus payload), writes it and
/// takes the SRTP datagram.
fn bench_sip_to_browser(
    criterion: &mut Criterion,
    link: &mut Link,
    name: &str,
    payloads: &[Vec<u8>],
    mut transcoder: Option<Transcoder>,
) -> BenchResult<()> {
    let mut out = [0u8; MAX_PAYLOAD_LEN];
    let mut next = payloads.iter().cycle();
    let mut frame = |link: &mut Link, payload: &[u8]| -> BenchResult<Drained> {
        let payload = match transcoder.as_mut() {
            Some(transcoder) => {
                let length = transcoder.transcode(payload, &mut out)?;
                &out[..length]
            }
            None => payload,
        };
        link.gateway_sends(payload)
    };
    // Setup check: each frame gives one datagram, which the browser
    // decrypts into one RtpPacket.
    for _ in 0..FRAMES {
        let payload = next.next().ok_or("no payloads")?;
        link.browser_idles()?;
        let sent = frame(link, payload)?;
        let received = link.deliver_to_browser()?;
        if sent.rtp_datagrams != 1 || received.rtp_packets != 1 {
            return Err(format!(
                "{name}: {} RTP datagrams sent, {} packets received for one frame",
                sent.rtp_datagrams, received.rtp_packets
            )
            .into());
        }
        // `write_rtp` only queues: str0m's pacer snapshot is taken on a
        // timer, so the packet goes out after the `Input::Timeout` it asks
        // for, not before.
        if sent.timer_rounds == 0 {
            return Err(format!("{name}: a packet went out without a timer round").into());
        }
    }

    let mut tally = Tally::default();
    criterion.bench_function(name, |bencher| {
        bencher.iter_custom(|iterations| {
            let mut timed = Duration::ZERO;
            for _ in 0..iterations {
                let payload = next.next().map_or(&[][..], Vec::as_slice);
                if let Err(error) = link.browser_idles() {
                    tally.frame(Err(error));
                    continue;
                }
                let start = Instant::now();
                let result = frame(link, black_box(payload));
                timed += start.elapsed();
                tally.frame(result.map(|drained| drained.rtp_datagrams));
                if let Err(error) = link.deliver_to_browser() {
                    tally.frame(Err(error));
                }
            }
            timed
        });
    });
    tally.check(name)
}

/// The gateway's clock tick alone, no media: what both directions above
/// include once (browser → SIP before its timed part, SIP → browser in it).
fn bench_tick(criterion: &mut Criterion, link: &mut Link) -> BenchResult<()> {
    let name = "gateway timer tick per frame, no media";
    let mut tally = Tally::default();
    criterion.bench_function(name, |bencher| {
        bencher.iter_custom(|iterations| {
            let mut timed = Duration::ZERO;
            for _ in 0..iterations {
                if let Err(error) = link.browser_idles() {
                    tally.frame(Err(error));
                    continue;
                }
                let now = link.now;
                let start = Instant::now();
                let result = link
                    .gateway
                    .tick(now)
                    .map_err(Into::into)
                    .and_then(|()| link.gateway.drain(now, |_| Ok(())));
                timed += start.elapsed();
                tally.frame(result.map(|drained| 1 + drained.rtp_datagrams));
                if let Err(error) = link.deliver_to_browser() {
                    tally.frame(Err(error));
                }
            }
            timed
        });
    });
    tally.check(name)
}

fn main() -> BenchResult<()> {
    let mut criterion = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let opus = payloads(Codec::Opus)?;
    let pcmu = payloads(Codec::Pcmu)?;
    let mut link = Link::connect()?;

    bench_browser_to_sip(
        &mut criterion,
        &mut link,
        "browser -> SIP: SRTP unprotect only",
        &opus,
        None,
    )?;
    bench_browser_to_sip(
        &mut criterion,
        &mut link,
        "browser -> SIP: SRTP unprotect + Opus -> PCMU",
        &opus,
        Some(Transcoder::new(Codec::Opus, Codec::Pcmu)?),
    )?;
    bench_sip_to_browser(
        &mut criterion,
        &mut link,
        "SIP -> browser: SRTP protect only",
        &opus,
        None,
    )?;
    bench_sip_to_browser(
        &mut criterion,
        &mut link,
        "SIP -> browser: PCMU -> Opus + SRTP protect",
        &pcmu,
        Some(Transcoder::new(Codec::Pcmu, Codec::Opus)?),
    )?;
    bench_tick(&mut criterion, &mut link)?;
    criterion.final_summary();
    Ok(())
}
