//! Side by side: Dialtone's media relay against sipwise rtpengine (userspace
//! forwarding), the same load generator driving both in one sitting.
//!
//! For each call count N, runs Dialtone, rtpengine, Dialtone, rtpengine
//! (`--rounds` pairs), each with a fresh relay process, and prints one row per
//! run and a summary with the ratio Dialtone / rtpengine.
//!
//! - **Dialtone**: the release gateway in open mode on 127.0.0.1, the per-client
//!   caps and rate limits lifted; each call is a WebSocket session (START_SESSION,
//!   START_CALL with a client RTP point offering PCMU, SDP_ANSWER naming the
//!   generator's caller socket), and the SIP far end is this tool's own minimal
//!   UDP UAS (100/200 with an SDP naming the generator's callee socket, ACK,
//!   BYE 200). Both sides PCMU: the gateway forwards, it does not transcode.
//! - **rtpengine**: `rtpengine` in the foreground on 127.0.0.1, `--table=-1`
//!   (no kernel module), driven by its ng protocol (bencode over UDP): `offer`
//!   with the caller socket's SDP, `answer` with the callee socket's, `delete`
//!   at the end.
//!
//! The generator is one thread (tokio `current_thread`), one task per socket:
//! each of the 2 N sockets sends 20 ms PCMU packets (172 bytes) to the relay for
//! `--seconds` and records what arrives, so each call carries four streams (both
//! legs, both directions) and the relay forwards 100 packets/s per call. Streams
//! start staggered over one 20 ms period. The payload carries the stream, the
//! packet's index, its scheduled slot and the time it was actually sent, so
//! what is measured does not depend on how a relay renumbers RTP.
//!
//! Per run: packets sent / received, loss, reordered (arrived after a later
//! one), duplicates, late (arrived more than 40 ms after its 20 ms slot),
//! delay variation p50 / p99 as packet delay variation (RFC 5481 PDV: each
//! packet's one-way delay, arrival minus actual send time on the one clock of
//! this process, minus the smallest delay of its stream), the relay's CPU
//! (utime + stime from /proc/PID/stat, all threads) per forwarded packet and
//! per call over the steady window (after a 1 s warm-up to the end of sending),
//! calls per core at that CPU, the relay's RSS per call (VmRSS during the calls
//! minus VmRSS before the first), the generator's own CPU, and the machine's
//! state: the 1-minute load average before and after, and whether a `rustc` or
//! `cargo` process was running (read from /proc; nothing is stopped).
//!
//! `--mode transcode`: the callee leg is Opus (the UAS, or rtpengine's
//! answer, takes `opus/48000/2` only; rtpengine is asked to offer it with the
//! flag `codec-transcode-opus/48000/2/<bitrate>`), so each relay decodes and
//! encodes both directions. The callee socket sends one second of voice-like
//! audio coded by libopus, in a loop; what arrives was made by the relay's
//! encoder, so it is measured by its RTP header alone: loss and duplicates by
//! sequence number, delay variation as each packet's transit (arrival minus
//! its RTP timestamp's media time) less the stream's least, and late as a
//! variation over 40 ms. `--opus-complexity` and `--opus-bitrate` set
//! Dialtone's encoder (and the bitrate asked of rtpengine, whose libopus runs
//! at libavcodec's default complexity, 10). The mean Opus payload size and
//! the stereo flag of what arrives are printed, to show both encoders' work.
//! `--media-threads N` sets Dialtone's `[media] threads`.
//!
//! Dialtone runs with its kernel fast path (`[media] kernel_fast_path`, on
//! as in service; `--kernel-fast-path false` for its userspace relay): its
//! CPU is then its process's plus the time its TC program ran (read from
//! the program's fdinfo with `kernel.bpf_stats_enabled` set for the
//! sitting), since the program runs in whichever context receives the
//! packet, mostly the generator's `sendto`, and no relay process shows it.
//! rtpengine runs without its kernel module, as the issue asks. The program's
//! time is not all the work it moves out of the relay (the rewritten packet
//! is delivered in the sender's context too), so each run also records the
//! machine's busy time (`/proc/stat`), and the summary gives Dialtone's cost
//! with the work moved elsewhere: its process, plus the larger of its
//! program's time and what the rest of the machine spent per packet beyond
//! the rest in rtpengine's runs.
//!
//! `--setup-at-once N` sets N calls up at once (default 1: one after another,
//! so each set-up time is the gateway's own); the datagrams the kernel
//! dropped for full receive buffers during the set-up are counted.
//! `--setup-per-second R` paces Dialtone's set-ups, R calls a second, as calls
//! arrive in service (its media loops place rooms by measured load, which a
//! burst outruns); rtpengine's are not paced.
//!
//! ```sh
//! cargo build --release -p dialtone-gateway -p dialtone-tests --bin dialtone --bin relay_bench
//! DIALTONE_BIN=$PWD/target/release/dialtone target/release/relay_bench --calls 50,200 --seconds 20
//! DIALTONE_BIN=$PWD/target/release/dialtone target/release/relay_bench --mode transcode --calls 50
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use dialtone_tests::gateway::{Gateway, LOOPBACK};
use dialtone_tests::ports::free_port;
use dialtone_tests::process::ChildGuard;
use dialtone_tests::rtp_peer::{offer_rtp_call, sdp_audio_addr};
use dialtone_tests::ws_client::WsClient;
use futures_util::StreamExt as _;
use serde_json::json;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// 20 ms of PCMU.
const PTIME: Duration = Duration::from_millis(20);
const PAYLOAD: usize = 160;
const HEADER: usize = 12;
/// A packet arriving this long after its slot is late.
const LATE: Duration = Duration::from_millis(40);
/// CPU is measured from this long after the media starts.
const WARM_UP: Duration = Duration::from_secs(1);
/// Receiving goes on this long after the last packet was sent.
const DRAIN: Duration = Duration::from_millis(300);
const REPLY: Duration = Duration::from_secs(10);
/// Media port ranges of the two relays (disjoint, both skip ports in use).
const DIALTONE_PORTS: (u16, u16) = (40_000, 44_999);
const RTPENGINE_PORTS: (u16, u16) = (45_000, 49_999);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Relay {
    Dialtone,
    Rtpengine,
}

impl Relay {
    fn name(self) -> &'static str {
        match self {
            Relay::Dialtone => "Dialtone",
            Relay::Rtpengine => "rtpengine",
        }
    }
}

/// What the relays carry: PCMU on both legs (forwarded), or PCMU on the
/// caller's leg and Opus on the callee's (transcoded both ways).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Relay,
    Transcode,
}

/// The Opus encoder settings Dialtone is started with (its defaults when
/// unset); rtpengine encodes at libavcodec's libopus defaults (complexity
/// 10) and the bitrate asked for in its codec string.
#[derive(Clone, Copy, Debug)]
struct GatewayTuning {
    complexity: Option<u8>,
    bitrate: i32,
    /// Dialtone's `[media] threads`; its default when unset.
    media_threads: Option<usize>,
    /// Dialtone's `[media] kernel_fast_path` (on by default, as in service).
    kernel_fast_path: bool,
}

struct Options {
    mode: Mode,
    tuning: GatewayTuning,
    calls: Vec<usize>,
    seconds: u64,
    rounds: usize,
    /// Dialtone calls set up at once: 1 (one after another, as one client
    /// would, so each set-up time is the gateway's and not a queue's), or
    /// all of them for a burst.
    setup_at_once: usize,
    /// 0: as fast as they go.
    setup_per_second: u32,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options {
        mode: Mode::Relay,
        tuning: GatewayTuning {
            complexity: None,
            bitrate: 32_000,
            media_threads: None,
            kernel_fast_path: true,
        },
        calls: vec![50],
        seconds: 20,
        rounds: 2,
        setup_at_once: 1,
        setup_per_second: 0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--calls" => {
                options.calls = value
                    .split(',')
                    .map(|n| n.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("--calls {value}"))?;
            }
            "--seconds" => options.seconds = value.parse()?,
            "--rounds" => options.rounds = value.parse()?,
            "--setup-at-once" => options.setup_at_once = value.parse()?,
            "--setup-per-second" => options.setup_per_second = value.parse()?,
            "--mode" => {
                options.mode = match value.as_str() {
                    "relay" => Mode::Relay,
                    "transcode" => Mode::Transcode,
                    other => bail!("--mode {other}: relay or transcode"),
                }
            }
            "--opus-complexity" => options.tuning.complexity = Some(value.parse()?),
            "--opus-bitrate" => options.tuning.bitrate = value.parse()?,
            "--media-threads" => options.tuning.media_threads = Some(value.parse()?),
            "--kernel-fast-path" => options.tuning.kernel_fast_path = value.parse()?,
            other => bail!(
                "unknown flag {other}; use --mode relay|transcode --calls N[,N...] --seconds T \
                 --rounds R --setup-at-once N --opus-complexity C --opus-bitrate B \
                 --media-threads N --setup-per-second R --kernel-fast-path true|false"
            ),
        }
    }
    ensure!(
        options.seconds >= 3,
        "--seconds must be at least 3 (1 s warm-up)"
    );
    ensure!(
        options.calls.iter().all(|&n| n > 0) && options.setup_at_once > 0,
        "--calls and --setup-at-once must be positive"
    );
    Ok(options)
}

fn main() -> anyhow::Result<()> {
    let options = options()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(sitting(options))
}

async fn sitting(options: Options) -> anyhow::Result<()> {
    let _stats = BpfStats::enable();
    let mut results = Vec::new();
    for &calls in &options.calls {
        for round in 0..options.rounds {
            for relay in [Relay::Dialtone, Relay::Rtpengine] {
                eprintln!(
                    "[relay_bench] {} {calls} calls, {} s (round {})",
                    relay.name(),
                    options.seconds,
                    round + 1
                );
                let run = Run {
                    relay,
                    mode: options.mode,
                    tuning: options.tuning,
                    calls,
                    seconds: options.seconds,
                    setup_at_once: options.setup_at_once,
                    setup_per_second: options.setup_per_second,
                };
                let result = run_once(&run)
                    .await
                    .with_context(|| format!("{} with {calls} calls", relay.name()))?;
                eprintln!("[relay_bench]   {}", result.row());
                results.push(result);
            }
        }
    }
    print_table(&results, options.seconds);
    Ok(())
}

// ---------------------------------------------------------------- one run

struct RunResult {
    relay: Relay,
    calls: usize,
    sent: u64,
    received: u64,
    duplicates: u64,
    reordered: u64,
    late: u64,
    foreign: u64,
    pdv_p50_ms: f64,
    pdv_p99_ms: f64,
    send_lag_p99_ms: f64,
    /// Relay CPU seconds over the window (its process, plus the time its
    /// kernel fast path's program ran), and the window.
    cpu_s: f64,
    /// Of which the kernel program's.
    kernel_program_s: f64,
    /// Every core's busy time over the window, whoever it was for.
    machine_cpu_s: f64,
    window_s: f64,
    forwarded_in_window: u64,
    generator_cpu_s: f64,
    rss_before_kib: u64,
    rss_during_kib: u64,
    calls_dropped: usize,
    /// Per call: Dialtone, START_CALL sent to CALL_STARTED received (the
    /// SDP_OFFER answered at once, the SIP far end answering at once);
    /// rtpengine, its ng offer and answer.
    setup_p50_ms: f64,
    setup_p99_ms: f64,
    /// Datagrams the kernel dropped for a full receive buffer during the
    /// set-up (`RcvbufErrors` of /proc/net/snmp: every UDP socket of the
    /// machine, so only meaningful on a quiet one).
    setup_udp_drops: u64,
    before: Quiet,
    after: Quiet,
}

impl RunResult {
    fn loss(&self) -> u64 {
        self.sent.saturating_sub(self.received - self.duplicates)
    }
    fn cpu_us_per_packet(&self) -> f64 {
        self.per_packet_us(self.cpu_s)
    }
    fn per_packet_us(&self, seconds: f64) -> f64 {
        seconds * 1e6 / self.forwarded_in_window.max(1) as f64
    }
    /// The relay process's own CPU per packet, its kernel program left out.
    fn process_us_per_packet(&self) -> f64 {
        self.per_packet_us(self.cpu_s - self.kernel_program_s)
    }
    /// Every other CPU of the machine per packet: the generator, and the
    /// kernel work done in its context or in softirqs (where a kernel fast
    /// path's forwarding lands).
    fn outside_us_per_packet(&self) -> f64 {
        self.per_packet_us(self.machine_cpu_s) - self.process_us_per_packet()
    }
    /// Share of one core per call.
    fn core_per_call(&self) -> f64 {
        self.cpu_s / self.window_s / self.calls as f64
    }
    fn calls_per_core(&self) -> f64 {
        1.0 / self.core_per_call()
    }
    fn rss_per_call_kib(&self) -> f64 {
        self.rss_during_kib.saturating_sub(self.rss_before_kib) as f64 / self.calls as f64
    }
    fn row(&self) -> String {
        format!(
            "| {} | {} | {} | {} | {:.3} % | {} | {} | {:.2} / {:.2} | {:.2} | {:.1} % | {:.2} | {:.2} | {:.2} | {:.3} % | {:.0} | {} → {} KiB, {:.0} | {:.1} % | {:.2} / {:.2} | {} | {:.2}{} / {:.2}{} |",
            self.relay.name(),
            self.calls,
            self.sent,
            self.received,
            self.loss() as f64 * 100.0 / self.sent.max(1) as f64,
            self.reordered,
            self.late,
            self.pdv_p50_ms,
            self.pdv_p99_ms,
            self.send_lag_p99_ms,
            self.cpu_s / self.window_s * 100.0,
            self.cpu_us_per_packet(),
            self.per_packet_us(self.kernel_program_s),
            self.per_packet_us(self.machine_cpu_s),
            self.core_per_call() * 100.0,
            self.calls_per_core(),
            self.rss_before_kib,
            self.rss_during_kib,
            self.rss_per_call_kib(),
            self.generator_cpu_s / self.window_s * 100.0,
            self.setup_p50_ms,
            self.setup_p99_ms,
            self.setup_udp_drops,
            self.before.load1,
            if self.before.rust_running { "*" } else { "" },
            self.after.load1,
            if self.after.rust_running { "*" } else { "" },
        ) + &if self.duplicates + self.foreign + self.calls_dropped as u64 > 0 {
            format!(
                " duplicates {} foreign {} calls dropped {}",
                self.duplicates, self.foreign, self.calls_dropped
            )
        } else {
            String::new()
        }
    }
}

const HEAD: &str = "| relay | calls | sent | received | loss | reordered | late > 40 ms | PDV p50 / p99 ms | generator send lag p99 ms | relay CPU | CPU µs / forwarded packet | of which kernel program | machine CPU µs / packet | core per call | calls per core | RSS before → during, per call | generator CPU | set-up p50 / p99 ms | UDP drops in set-up | load1 before / after |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";

fn print_table(results: &[RunResult], seconds: u64) {
    println!("\n{seconds} s of media per run; * = a rustc or cargo process was running\n");
    println!("{HEAD}");
    for result in results {
        println!("{}", result.row());
    }
    println!("\n| calls | CPU µs / packet D / R | ratio | D with the work it moves elsewhere | ratio | calls per core D / R | ratio | RSS KiB / call D / R | ratio |\n|---|---|---|---|---|---|---|---|---|");
    let mut counts: Vec<usize> = results.iter().map(|r| r.calls).collect();
    counts.dedup();
    for calls in counts {
        let mean = |relay: Relay, f: &dyn Fn(&RunResult) -> f64| {
            let values: Vec<f64> = results
                .iter()
                .filter(|r| r.relay == relay && r.calls == calls)
                .map(f)
                .collect();
            values.iter().sum::<f64>() / values.len().max(1) as f64
        };
        let per_packet = (
            mean(Relay::Dialtone, &RunResult::cpu_us_per_packet),
            mean(Relay::Rtpengine, &RunResult::cpu_us_per_packet),
        );
        // Dialtone's process, plus the larger of its kernel program's time
        // and what the rest of the machine spent beyond the rest in
        // rtpengine's runs: a fast path's forwarding runs in the sender's
        // context, where it costs more than the program alone (the packet's
        // delivery) or less (no wake-up of a relay process).
        let moved = mean(Relay::Dialtone, &RunResult::process_us_per_packet)
            + mean(Relay::Dialtone, &|r| r.per_packet_us(r.kernel_program_s)).max(
                mean(Relay::Dialtone, &RunResult::outside_us_per_packet)
                    - mean(Relay::Rtpengine, &RunResult::outside_us_per_packet),
            );
        let per_core = (
            mean(Relay::Dialtone, &RunResult::calls_per_core),
            mean(Relay::Rtpengine, &RunResult::calls_per_core),
        );
        let rss = (
            mean(Relay::Dialtone, &RunResult::rss_per_call_kib),
            mean(Relay::Rtpengine, &RunResult::rss_per_call_kib),
        );
        println!(
            "| {calls} | {:.2} / {:.2} | {:.2} | {:.2} | {:.2} | {:.0} / {:.0} | {:.2} | {:.0} / {:.0} | {:.2} |",
            per_packet.0,
            per_packet.1,
            per_packet.0 / per_packet.1,
            moved,
            moved / per_packet.1,
            per_core.0,
            per_core.1,
            per_core.0 / per_core.1,
            rss.0,
            rss.1,
            rss.0 / rss.1,
        );
    }
}

/// The two generator sockets of a call and where each sends (the relay's
/// address for it).
struct CallMedia {
    caller: UdpSocket,
    callee: UdpSocket,
    caller_to: SocketAddr,
    callee_to: SocketAddr,
}

/// One run's settings.
struct Run {
    relay: Relay,
    mode: Mode,
    tuning: GatewayTuning,
    calls: usize,
    seconds: u64,
    setup_at_once: usize,
    /// 0: as fast as they go.
    setup_per_second: u32,
}

async fn run_once(run: &Run) -> anyhow::Result<RunResult> {
    let &Run {
        relay,
        mode,
        calls,
        seconds,
        setup_at_once,
        setup_per_second,
        ..
    } = run;
    let before = Quiet::now();
    let mut sockets = Vec::with_capacity(calls);
    for _ in 0..calls {
        sockets.push((
            UdpSocket::bind("127.0.0.1:0").await?,
            UdpSocket::bind("127.0.0.1:0").await?,
        ));
    }
    let addresses: Vec<(SocketAddr, SocketAddr)> = sockets
        .iter()
        .map(|(a, b)| Ok((a.local_addr()?, b.local_addr()?)))
        .collect::<anyhow::Result<_>>()?;

    let mut relay_process = match relay {
        Relay::Dialtone => RelayProcess::dialtone(&addresses, mode, run.tuning).await?,
        Relay::Rtpengine => RelayProcess::rtpengine(mode, run.tuning).await?,
    };
    let pid = relay_process.pid();
    // Let it settle before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before_kib = resident_kib(pid)?;
    let drops_before = udp_receive_buffer_errors()?;
    let (relay_addresses, mut setup_us) = relay_process
        .set_up(&addresses, setup_at_once, setup_per_second)
        .await?;
    let setup_udp_drops = udp_receive_buffer_errors()?.saturating_sub(drops_before);
    let media: Vec<CallMedia> = sockets
        .into_iter()
        .zip(relay_addresses)
        .map(|((caller, callee), (caller_to, callee_to))| CallMedia {
            caller,
            callee,
            caller_to,
            callee_to,
        })
        .collect();

    let frames = u32::try_from(seconds * 50)?;
    let opus_frames = Arc::new(opus_frames()?);
    let origin = Instant::now();
    let start = origin + Duration::from_millis(100);
    let streams = media.len() * 2;
    let received_total = Arc::new(AtomicU64::new(0));
    let mut legs = Vec::with_capacity(streams);
    for (index, call) in media.into_iter().enumerate() {
        for (side, socket, to) in [
            (0, call.caller, call.caller_to),
            (1, call.callee, call.callee_to),
        ] {
            let stream = index * 2 + side;
            let sends = match (mode, side) {
                (Mode::Transcode, 1) => Sends::Opus(opus_frames.clone()),
                _ => Sends::Pcmu,
            };
            let leg = Leg {
                socket,
                to,
                sends,
                marked: mode == Mode::Relay,
                stream: u32::try_from(stream)?,
                origin,
                start: start + PTIME * u32::try_from(stream)? / u32::try_from(streams)?,
                frames,
                stop: start + PTIME * frames + DRAIN,
                received_total: received_total.clone(),
            };
            legs.push(tokio::spawn(leg.run()));
        }
    }

    let clock = clock_ticks()?;
    tokio::time::sleep_until(start + WARM_UP).await;
    let window_began = Instant::now();
    let cpu0 = cpu_ticks(pid)?;
    let machine0 = machine_busy_ticks()?;
    let kernel0 = bpf_run_ns(pid);
    let generator0 = cpu_ticks(std::process::id())?;
    let received0 = received_total.load(Ordering::Relaxed);
    tokio::time::sleep_until(start + PTIME * frames / 2).await;
    let rss_during_kib = resident_kib(pid)?;
    tokio::time::sleep_until(start + PTIME * frames).await;
    let cpu1 = cpu_ticks(pid)?;
    let machine1 = machine_busy_ticks()?;
    let kernel1 = bpf_run_ns(pid);
    let generator1 = cpu_ticks(std::process::id())?;
    let received1 = received_total.load(Ordering::Relaxed);
    let window_s = window_began.elapsed().as_secs_f64();

    let mut stats = Vec::with_capacity(streams);
    for leg in legs {
        stats.push(leg.await??);
    }
    let calls_dropped = relay_process.calls_dropped();
    relay_process.tear_down().await;
    drop(relay_process);
    let after = Quiet::now();

    let mut pdv = Vec::new();
    let mut send_lag = Vec::new();
    let opus_received: (u64, u64, u64) = stats.iter().fold((0, 0, 0), |sum, leg| {
        (
            sum.0 + leg.opus_packets,
            sum.1 + leg.opus_bytes,
            sum.2 + leg.opus_stereo,
        )
    });
    if opus_received.0 > 0 {
        eprintln!(
            "[relay_bench]   Opus received: {} packets, {:.1} bytes of payload on average, {} stereo",
            opus_received.0,
            opus_received.1 as f64 / opus_received.0 as f64,
            opus_received.2
        );
    }
    let mut result = RunResult {
        relay,
        calls,
        sent: 0,
        received: 0,
        duplicates: 0,
        reordered: 0,
        late: 0,
        foreign: 0,
        pdv_p50_ms: 0.0,
        pdv_p99_ms: 0.0,
        send_lag_p99_ms: 0.0,
        cpu_s: cpu1.saturating_sub(cpu0) as f64 / clock
            + kernel1.saturating_sub(kernel0) as f64 / 1e9,
        kernel_program_s: kernel1.saturating_sub(kernel0) as f64 / 1e9,
        machine_cpu_s: machine1.saturating_sub(machine0) as f64 / clock,
        window_s,
        forwarded_in_window: received1 - received0,
        generator_cpu_s: generator1.saturating_sub(generator0) as f64 / clock,
        rss_before_kib,
        rss_during_kib,
        calls_dropped,
        setup_p50_ms: percentile(&mut setup_us, 0.50) / 1000.0,
        setup_p99_ms: percentile(&mut setup_us, 0.99) / 1000.0,
        setup_udp_drops,
        before,
        after,
    };
    // Where packets went missing: each stream against what its peer (the
    // other socket of the call) sent.
    let sent_by: Vec<u64> = stats.iter().map(|leg| leg.sent).collect();
    let mut lossy = 0;
    for (stream, leg) in stats.iter().enumerate() {
        let peer_sent = sent_by.get(stream ^ 1).copied().unwrap_or_default();
        let unique = leg.received - leg.duplicates;
        if unique < peer_sent || leg.foreign + leg.receive_errors > 0 {
            lossy += 1;
            if lossy <= 10 {
                eprintln!(
                    "[relay_bench]   stream {stream} (call {}, {}): received {unique} of {peer_sent}, \
                     indices {:?}, foreign {}, receive errors {}",
                    stream / 2,
                    if stream % 2 == 0 { "caller" } else { "callee" },
                    leg.first_last,
                    leg.foreign,
                    leg.receive_errors
                );
            }
        }
    }
    if lossy > 10 {
        eprintln!("[relay_bench]   ... {lossy} streams with loss or stray datagrams in all");
    }
    for leg in stats {
        result.foreign += leg.receive_errors;
        result.sent += leg.sent;
        result.received += leg.received;
        result.duplicates += leg.duplicates;
        result.reordered += leg.reordered;
        result.late += leg.late;
        result.foreign += leg.foreign;
        if let Some(&least) = leg.delays_us.iter().min() {
            pdv.extend(leg.delays_us.iter().map(|&d| d - least));
        }
        send_lag.extend(leg.send_lag_us);
    }
    result.pdv_p50_ms = percentile(&mut pdv, 0.50) / 1000.0;
    result.pdv_p99_ms = percentile(&mut pdv, 0.99) / 1000.0;
    result.send_lag_p99_ms = percentile(&mut send_lag, 0.99) / 1000.0;
    Ok(result)
}

/// The machine's count of UDP datagrams dropped for a full receive buffer.
fn udp_receive_buffer_errors() -> anyhow::Result<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp")?;
    let mut udp = snmp.lines().filter(|line| line.starts_with("Udp:"));
    let (names, values) = (udp.next(), udp.next());
    let (Some(names), Some(values)) = (names, values) else {
        bail!("no Udp lines in /proc/net/snmp");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "RcvbufErrors")
        .context("no RcvbufErrors in /proc/net/snmp")?
        .1
        .parse()
        .context("RcvbufErrors")
}

fn percentile(values: &mut [u32], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_unstable();
    let at = ((values.len() - 1) as f64 * p).round() as usize;
    values.get(at).map_or(f64::NAN, |&v| f64::from(v))
}

// ---------------------------------------------------------------- media

/// One generator socket: sends `frames` packets to `to`, one per 20 ms slot
/// from `start`, and records every packet that arrives until `stop`.
struct Leg {
    socket: UdpSocket,
    to: SocketAddr,
    sends: Sends,
    /// Whether what arrives carries our marks (forwarded unchanged), or was
    /// made anew by a transcoder and is measured by its RTP header alone.
    marked: bool,
    stream: u32,
    origin: Instant,
    start: Instant,
    frames: u32,
    stop: Instant,
    received_total: Arc<AtomicU64>,
}

#[derive(Default)]
struct LegStats {
    sent: u64,
    received: u64,
    duplicates: u64,
    reordered: u64,
    late: u64,
    /// Datagrams that are not this benchmark's packets.
    foreign: u64,
    /// Receive errors on the socket (an ICMP error, say).
    receive_errors: u64,
    /// The lowest and highest index received.
    first_last: Option<(u32, u32)>,
    delays_us: Vec<u32>,
    send_lag_us: Vec<u32>,
    /// Opus packets received, their payload bytes, and how many were coded
    /// in stereo (the TOC byte's s bit): what a relay's encoder did.
    opus_packets: u64,
    opus_bytes: u64,
    opus_stereo: u64,
}

impl LegStats {
    fn count_opus(&mut self, payload: Option<&[u8]>) {
        if let Some(payload) = payload {
            self.opus_packets += 1;
            self.opus_bytes += payload.len() as u64;
            if payload.first().is_some_and(|toc| toc & 0x04 != 0) {
                self.opus_stereo += 1;
            }
        }
    }
}

/// When a packet that arrived was due: by the marks it carries (sent as
/// it is), or by its RTP timestamp (made anew by a transcoder).
enum Arrival {
    Marked { slot_ns: u64, sent_ns: u64 },
    Made { media_us: i64 },
}

/// What a generator socket sends.
enum Sends {
    /// 20 ms PCMU packets whose payload carries the marks.
    Pcmu,
    /// 20 ms Opus packets (PT 111), one second of voice-like audio in a loop.
    Opus(Arc<Vec<Vec<u8>>>),
}

const OPUS_PAYLOAD_TYPE: u8 = 111;

/// One second of voice-like audio coded by libopus at 48 kHz (complexity
/// and rate at Dialtone's defaults; only the relays' encoders are compared).
fn opus_frames() -> anyhow::Result<Vec<Vec<u8>>> {
    use dialtone_codecs::{voice_like_frames, Codec, Encoder as _, OpusEncoder};
    let mut encoder = OpusEncoder::new()?;
    let mut payload = [0u8; 1275];
    voice_like_frames(Codec::Opus, 50)
        .iter()
        .map(|pcm| {
            let length = encoder.encode(pcm, &mut payload)?;
            Ok(payload[..length].to_vec())
        })
        .collect()
}

/// Sequence number, RTP timestamp and clock rate of an RTP packet a
/// transcoder made, with its Opus payload if it is one.
fn rtp_header(datagram: &[u8]) -> Option<(u16, u32, u32, Option<&[u8]>)> {
    if datagram.len() < HEADER || datagram[0] >> 6 != 2 {
        return None;
    }
    let sequence = u16::from_be_bytes([datagram[2], datagram[3]]);
    let timestamp = u32::from_be_bytes(datagram[4..8].try_into().ok()?);
    match datagram[1] & 0x7f {
        0 => Some((sequence, timestamp, 8000, None)),
        OPUS_PAYLOAD_TYPE => Some((sequence, timestamp, 48_000, Some(&datagram[HEADER..]))),
        _ => None,
    }
}

impl Leg {
    async fn run(self) -> anyhow::Result<LegStats> {
        let mut stats = LegStats {
            delays_us: Vec::with_capacity(self.frames as usize),
            send_lag_us: Vec::with_capacity(self.frames as usize),
            ..LegStats::default()
        };
        let mut seen = vec![false; self.frames as usize];
        let mut highest: Option<u32> = None;
        let mut packet = vec![0xffu8; HEADER + PAYLOAD];
        packet[0] = 0x80;
        packet[1] = match self.sends {
            Sends::Pcmu => 0,
            Sends::Opus(_) => OPUS_PAYLOAD_TYPE,
        };
        packet[8..12].copy_from_slice(&self.stream.to_be_bytes());
        // Of packets a transcoder made: the first one's timestamp, the last
        // one's sequence number and its index from the first (steps taken
        // as signed 16-bit differences, so wraps and reordering count), and
        // each packet's transit (arrival minus its media time) in µs.
        let mut first_timestamp: Option<u32> = None;
        let mut last: Option<(u16, i64)> = None;
        let mut transits: Vec<i64> = Vec::new();
        let mut incoming = [0u8; 2048];
        let mut next = 0u32;
        let slot = |index: u32| self.start + PTIME * index;
        let send_timer = tokio::time::sleep_until(self.start);
        tokio::pin!(send_timer);
        let stop_timer = tokio::time::sleep_until(self.stop);
        tokio::pin!(stop_timer);
        loop {
            tokio::select! {
                () = &mut send_timer, if next < self.frames => {
                    let now = Instant::now();
                    let slot_ns = nanos(slot(next) - self.origin);
                    packet[2..4].copy_from_slice(&(next as u16).to_be_bytes());
                    match &self.sends {
                        Sends::Pcmu => {
                            packet[4..8].copy_from_slice(&next.wrapping_mul(160).to_be_bytes());
                            packet[12..16].copy_from_slice(&self.stream.to_be_bytes());
                            packet[16..20].copy_from_slice(&next.to_be_bytes());
                            packet[20..28].copy_from_slice(&slot_ns.to_be_bytes());
                            packet[28..36].copy_from_slice(&nanos(now - self.origin).to_be_bytes());
                        }
                        Sends::Opus(frames) => {
                            packet[4..8].copy_from_slice(&next.wrapping_mul(960).to_be_bytes());
                            let frame = &frames[next as usize % frames.len()];
                            packet.truncate(HEADER);
                            packet.extend_from_slice(frame);
                        }
                    }
                    // A full socket buffer counts as a packet lost, not an error.
                    if self.socket.try_send_to(&packet, self.to).is_ok()
                        || self.socket.send_to(&packet, self.to).await.is_ok()
                    {
                        stats.sent += 1;
                    }
                    stats.send_lag_us.push(micros(now.saturating_duration_since(slot(next))));
                    next += 1;
                    send_timer.as_mut().reset(slot(next));
                }
                received = self.socket.recv_from(&mut incoming) => {
                    let now = Instant::now();
                    // A stray ICMP error on the socket is no packet of ours.
                    let Ok((length, _)) = received else {
                        stats.receive_errors += 1;
                        continue;
                    };
                    let datagram = &incoming[..length];
                    let arrival = if self.marked {
                        parse(datagram).map(|(index, slot_ns, sent_ns)| (index, Arrival::Marked { slot_ns, sent_ns }))
                    } else {
                        rtp_header(datagram).and_then(|(sequence, timestamp, clock, opus)| {
                            stats.count_opus(opus);
                            let index = last.map_or(0, |(previous, index)| {
                                index + i64::from(sequence.wrapping_sub(previous) as i16)
                            });
                            last = Some((sequence, index));
                            let origin = *first_timestamp.get_or_insert(timestamp);
                            let index = u32::try_from(index).ok()?;
                            let media_us = i64::from(timestamp.wrapping_sub(origin) as i32) * 1_000_000 / i64::from(clock);
                            Some((index, Arrival::Made { media_us }))
                        })
                    };
                    let Some((index, arrival)) = arrival else {
                        stats.foreign += 1;
                        continue;
                    };
                    let Some(mark) = seen.get_mut(index as usize) else {
                        stats.foreign += 1;
                        continue;
                    };
                    self.received_total.fetch_add(1, Ordering::Relaxed);
                    stats.received += 1;
                    if *mark {
                        stats.duplicates += 1;
                        continue;
                    }
                    *mark = true;
                    stats.first_last = Some(match stats.first_last {
                        Some((first, last)) => (first.min(index), last.max(index)),
                        None => (index, index),
                    });
                    match highest {
                        Some(h) if index < h => stats.reordered += 1,
                        _ => highest = Some(index),
                    }
                    let arrival_ns = nanos(now - self.origin);
                    match arrival {
                        Arrival::Marked { slot_ns, sent_ns } => {
                            if arrival_ns.saturating_sub(slot_ns) > nanos(LATE) {
                                stats.late += 1;
                            }
                            stats.delays_us.push(u32::try_from(arrival_ns.saturating_sub(sent_ns) / 1000).unwrap_or(u32::MAX));
                        }
                        Arrival::Made { media_us } => {
                            let arrival_us = i64::try_from(arrival_ns / 1000).unwrap_or(i64::MAX);
                            transits.push(arrival_us - media_us);
                        }
                    }
                }
                () = &mut stop_timer => {
                    // A made stream has no send times: its delay variation is
                    // each packet's transit less the stream's least, and
                    // late is a variation over the late limit.
                    if let Some(&least) = transits.iter().min() {
                        for transit in transits {
                            let variation = u32::try_from(transit - least).unwrap_or(u32::MAX);
                            if u64::from(variation) * 1000 > nanos(LATE) {
                                stats.late += 1;
                            }
                            stats.delays_us.push(variation);
                        }
                    }
                    return Ok(stats);
                }
            }
        }
    }
}

/// (index, slot, sent) of one of our packets, whatever RTP header the relay
/// wrote.
fn parse(datagram: &[u8]) -> Option<(u32, u64, u64)> {
    if datagram.len() != HEADER + PAYLOAD || datagram[0] >> 6 != 2 || datagram[1] & 0x7f != 0 {
        return None;
    }
    let field = |from: usize, to: usize| datagram.get(from..to);
    let index = u32::from_be_bytes(field(16, 20)?.try_into().ok()?);
    let slot = u64::from_be_bytes(field(20, 28)?.try_into().ok()?);
    let sent = u64::from_be_bytes(field(28, 36)?.try_into().ok()?);
    Some((index, slot, sent))
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

fn micros(duration: Duration) -> u32 {
    u32::try_from(duration.as_micros()).unwrap_or(u32::MAX)
}

/// Opus (mono, as RFC 7587 writes it) at `address`: the callee leg of a
/// transcoded call.
fn opus_sdp(address: SocketAddr, session: u64) -> String {
    format!(
        "v=0\r\no=bench {session} 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP {OPUS_PAYLOAD_TYPE}\r\na=rtpmap:{OPUS_PAYLOAD_TYPE} opus/48000/2\r\n\
         a=fmtp:{OPUS_PAYLOAD_TYPE} stereo=0;sprop-stereo=0\r\na=ptime:20\r\na=sendrecv\r\n",
        ip = address.ip(),
        port = address.port()
    )
}

/// The callee leg's SDP in `mode`.
fn callee_sdp(mode: Mode, address: SocketAddr, session: u64) -> String {
    match mode {
        Mode::Relay => sdp(address, session),
        Mode::Transcode => opus_sdp(address, session),
    }
}

/// PCMU/8000 (and telephone-event) at `address`.
fn sdp(address: SocketAddr, session: u64) -> String {
    format!(
        "v=0\r\no=bench {session} 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n",
        ip = address.ip(),
        port = address.port()
    )
}

// ---------------------------------------------------------------- relays

enum RelayProcess {
    Dialtone {
        gateway: Gateway,
        uas: tokio::task::JoinHandle<()>,
        uas_state: Arc<Mutex<UasState>>,
        clients: Vec<ClientCall>,
    },
    Rtpengine {
        guard: ChildGuard,
        _dir: tempfile::TempDir,
        ng: NgClient,
        calls: usize,
        mode: Mode,
        tuning: GatewayTuning,
    },
}

/// A call's WebSocket client, kept reading (pings) by its task until told to
/// hang up.
struct ClientCall {
    hang_up: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<bool>>,
}

impl RelayProcess {
    async fn dialtone(
        addresses: &[(SocketAddr, SocketAddr)],
        mode: Mode,
        tuning: GatewayTuning,
    ) -> anyhow::Result<RelayProcess> {
        let uas_socket = UdpSocket::bind("127.0.0.1:0").await?;
        // Sized like the gateway's own SIP socket: the UAS is the bench's, and
        // its drops in a burst would be counted against the relay.
        socket2::SockRef::from(&uas_socket)
            .set_recv_buffer_size(UAS_RECEIVE_BUFFER)
            .context("UAS receive buffer")?;
        let uas_address = uas_socket.local_addr()?;
        let uas_state = Arc::new(Mutex::new(UasState {
            callees: addresses.iter().map(|&(_, callee)| callee).collect(),
            mode: Some(mode),
            ..UasState::default()
        }));
        let uas = tokio::spawn(run_uas(uas_socket, uas_state.clone()));
        let (min, max) = DIALTONE_PORTS;
        let config = format!(
            r#"{LOOPBACK}[calls]
proxy = "sip:{uas_address};transport=udp"
# A load generator is one heavy client: lift the per-client limits.
max_calls_per_session = 100000
max_calls_per_connection = 100000
max_calls = 100000
start_burst = 1000000
starts_per_minute = 1000000
[sessions]
start_burst = 1000000
starts_per_minute = 1000000
[limits]
max_connections_per_ip = 100000
[media]
rtp_port_min = {min}
rtp_port_max = {max}
{complexity}opus_bitrate = {bitrate}
kernel_fast_path = {fast_path}
{threads}[log]
level = "warn"
"#,
            complexity = tuning
                .complexity
                .map(|complexity| format!("opus_complexity = {complexity}\n"))
                .unwrap_or_default(),
            bitrate = tuning.bitrate,
            fast_path = tuning.kernel_fast_path,
            threads = tuning
                .media_threads
                .map(|threads| format!("threads = {threads}\n"))
                .unwrap_or_default(),
        );
        let gateway =
            Gateway::start_with_env(Some(&config), &[("RUST_LOG", "warn,dialtone_gateway=info")]);
        let gateway = match gateway {
            Ok(gateway) => gateway,
            Err(e) => {
                uas.abort();
                return Err(e);
            }
        };
        Ok(RelayProcess::Dialtone {
            gateway,
            uas,
            uas_state,
            clients: Vec::new(),
        })
    }

    async fn rtpengine(mode: Mode, tuning: GatewayTuning) -> anyhow::Result<RelayProcess> {
        let dir = tempfile::Builder::new().prefix("rtpengine-").tempdir()?;
        let ng_port = free_port();
        let (min, max) = RTPENGINE_PORTS;
        let mut command = Command::new("rtpengine");
        command
            .arg("--config-file=none")
            .arg("--foreground")
            .arg("--log-stderr")
            .arg("--log-level=5")
            .arg("--interface=127.0.0.1")
            .arg(format!("--listen-ng=127.0.0.1:{ng_port}"))
            .arg(format!("--port-min={min}"))
            .arg(format!("--port-max={max}"))
            .arg("--table=-1")
            .arg("--delete-delay=0");
        let guard = ChildGuard::spawn("rtpengine", command, &dir.path().join("rtpengine.log"))?;
        // Ready when it answers an ng ping (its start-up line is below log level 5).
        let ng = NgClient::connect(SocketAddr::from(([127, 0, 0, 1], ng_port))).await?;
        let mut ready = ng.request(&[("command", "ping")], &[]).await;
        let deadline = Instant::now() + REPLY;
        while ready.is_err() && Instant::now() < deadline {
            if guard.try_wait()?.is_some() {
                bail!("rtpengine exited\n{}", guard.tail_report());
            }
            ready = ng.request(&[("command", "ping")], &[]).await;
        }
        ready.with_context(|| format!("rtpengine did not start\n{}", guard.tail_report()))?;
        Ok(RelayProcess::Rtpengine {
            guard,
            _dir: dir,
            ng,
            calls: 0,
            mode,
            tuning,
        })
    }

    fn pid(&self) -> u32 {
        match self {
            RelayProcess::Dialtone { gateway, .. } => gateway.pid(),
            RelayProcess::Rtpengine { guard, .. } => guard.pid(),
        }
    }

    /// Sets up one call per (caller, callee) pair; returns where each sends,
    /// and each call's set-up time in µs.
    async fn set_up(
        &mut self,
        addresses: &[(SocketAddr, SocketAddr)],
        at_once: usize,
        per_second: u32,
    ) -> anyhow::Result<(Vec<(SocketAddr, SocketAddr)>, Vec<u32>)> {
        match self {
            RelayProcess::Dialtone {
                gateway,
                uas_state,
                clients,
                ..
            } => {
                let url = gateway.ws_url();
                let start = tokio::time::Instant::now();
                let pace = (per_second > 0).then(|| Duration::from_secs(1) / per_second);
                let mut set_up = futures_util::stream::iter(addresses.iter().enumerate())
                    .map(|(index, &(caller, _))| {
                        let slot = pace.map(|pace| start + pace * index as u32);
                        let url = url.clone();
                        async move {
                            if let Some(slot) = slot {
                                tokio::time::sleep_until(slot).await;
                            }
                            dialtone_call(url, index, caller).await
                        }
                    })
                    .buffered(at_once);
                let mut caller_to = Vec::with_capacity(addresses.len());
                let mut setup_us = Vec::with_capacity(addresses.len());
                while let Some(call) = set_up.next().await {
                    let (client, to, took) = call?;
                    clients.push(client);
                    caller_to.push(to);
                    setup_us.push(micros(took));
                }
                let state = uas_state
                    .lock()
                    .map_err(|_| anyhow::anyhow!("UAS poisoned"))?;
                let pairs = caller_to
                    .into_iter()
                    .enumerate()
                    .map(|(index, to)| {
                        let callee_to = state
                            .offers
                            .get(&index)
                            .copied()
                            .with_context(|| format!("no SIP offer seen for call {index}"))?;
                        Ok((to, callee_to))
                    })
                    .collect::<anyhow::Result<_>>()?;
                Ok((pairs, setup_us))
            }
            RelayProcess::Rtpengine {
                ng,
                calls,
                mode,
                tuning,
                ..
            } => {
                // Transcoding: Opus offered to the callee beside PCMU, at the
                // bitrate asked for (rtpengine's codec string is
                // encoding/clock/channels/bitrate).
                let transcode = format!("codec-transcode-opus/48000/2/{}", tuning.bitrate);
                let flags: Vec<&str> = match mode {
                    Mode::Relay => Vec::new(),
                    Mode::Transcode => vec![&transcode],
                };
                let mut result = Vec::with_capacity(addresses.len());
                let mut setup_us = Vec::with_capacity(addresses.len());
                for (index, &(caller, callee)) in addresses.iter().enumerate() {
                    let call_id = format!("bench-{index}");
                    let started = Instant::now();
                    let offer = ng
                        .request(
                            &[
                                ("command", "offer"),
                                ("call-id", &call_id),
                                ("from-tag", "caller"),
                                ("sdp", &sdp(caller, index as u64)),
                            ],
                            &flags,
                        )
                        .await?;
                    let callee_to = sdp_audio_addr(&offer).context("rtpengine's offer")?;
                    let answer = ng
                        .request(
                            &[
                                ("command", "answer"),
                                ("call-id", &call_id),
                                ("from-tag", "caller"),
                                ("to-tag", "callee"),
                                ("sdp", &callee_sdp(*mode, callee, index as u64)),
                            ],
                            &[],
                        )
                        .await?;
                    let caller_to = sdp_audio_addr(&answer).context("rtpengine's answer")?;
                    setup_us.push(micros(started.elapsed()));
                    *calls += 1;
                    result.push((caller_to, callee_to));
                }
                Ok((result, setup_us))
            }
        }
    }

    /// Calls that ended before their hang-up (Dialtone: CALL_FAILED or
    /// CALL_FINISHED unasked).
    fn calls_dropped(&self) -> usize {
        match self {
            RelayProcess::Dialtone { clients, .. } => {
                clients.iter().filter(|c| c.task.is_finished()).count()
            }
            RelayProcess::Rtpengine { .. } => 0,
        }
    }

    /// Ends every call (errors are reported, not returned: the process stops
    /// anyway when dropped).
    async fn tear_down(&mut self) {
        match self {
            RelayProcess::Dialtone { clients, uas, .. } => {
                for client in clients.iter_mut() {
                    if let Some(hang_up) = client.hang_up.take() {
                        let _ = hang_up.send(());
                    }
                }
                let mut unfinished = 0;
                for client in clients.drain(..) {
                    if !matches!(client.task.await, Ok(Ok(true))) {
                        unfinished += 1;
                    }
                }
                if unfinished > 0 {
                    eprintln!("[relay_bench] {unfinished} calls did not finish cleanly");
                }
                uas.abort();
            }
            RelayProcess::Rtpengine { ng, calls, .. } => {
                for index in 0..*calls {
                    let call_id = format!("bench-{index}");
                    if let Err(e) = ng
                        .request(&[("command", "delete"), ("call-id", &call_id)], &[])
                        .await
                    {
                        eprintln!("[relay_bench] rtpengine delete {call_id}: {e:#}");
                    }
                }
                *calls = 0;
            }
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        // The gateway and rtpengine stop by PID when their guards drop.
        if let RelayProcess::Dialtone { uas, .. } = self {
            uas.abort();
        }
    }
}

/// One call through Dialtone from its own WebSocket session: the client point
/// answered for `caller`. Returns the client's task, where the caller sends
/// (the gateway's client point) and how long the call took to start.
async fn dialtone_call(
    url: String,
    index: usize,
    caller: SocketAddr,
) -> anyhow::Result<(ClientCall, SocketAddr, Duration)> {
    let (mut ws, session_id) = WsClient::start_session(&url, &format!("bench{index}"), "").await?;
    let started = Instant::now();
    let (call_id, offer) =
        offer_rtp_call(&mut ws, &session_id, &format!("bench{index}"), "PCMU/8000")
            .await
            .with_context(|| format!("call {index}"))?;
    let point = sdp_audio_addr(&offer).context("the gateway's SDP_OFFER")?;
    ws.send_json(&json!({
        "type": "SDP_ANSWER", "sessionId": session_id, "callId": call_id,
        "sdp": sdp(caller, index as u64),
    }))
    .await?;
    ws.recv_type_skipping("CALL_STARTED", &["CALL_STARTING", "CALL_RINGING"], REPLY)
        .await
        .with_context(|| format!("call {index}"))?;
    let set_up = started.elapsed();
    let (hang_up, mut told) = oneshot::channel();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut told => break,
                message = ws.recv_json(Duration::from_secs(3600)) => {
                    let message = message?;
                    if matches!(message["type"].as_str(), Some("CALL_FAILED" | "CALL_FINISHED")) {
                        eprintln!("[relay_bench] call {index} ended early: {message}");
                        return Ok(false);
                    }
                }
            }
        }
        ws.send_json(&json!({"type": "HANGUP_CALL", "sessionId": session_id, "callId": call_id}))
            .await?;
        let deadline = Instant::now() + REPLY;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = ws.recv_json(left).await?;
            if message["type"] == "CALL_FINISHED" {
                return Ok(true);
            }
        }
    });
    Ok((
        ClientCall {
            hang_up: Some(hang_up),
            task,
        },
        point,
        set_up,
    ))
}

// ---------------------------------------------------------------- SIP UAS

#[derive(Default)]
struct UasState {
    /// Relay: the UAS answers PCMU; transcode: Opus only.
    mode: Option<Mode>,
    /// The generator's callee socket of each call, by index (`bench<index>`
    /// in the Request-URI).
    callees: Vec<SocketAddr>,
    /// Where the gateway's SIP leg listens, from its offer, by call index.
    offers: HashMap<usize, SocketAddr>,
    /// The 200 sent for each INVITE's Call-ID, for retransmissions.
    answered: HashMap<String, Vec<u8>>,
}

/// A minimal UDP UAS: INVITE gets 100 and 200 with an SDP naming the call's
/// callee socket, ACK nothing, BYE (and anything else) 200.
/// The bench's UAS receive buffer (bytes); the kernel caps it at
/// `net.core.rmem_max`, and doubles it for its bookkeeping.
const UAS_RECEIVE_BUFFER: usize = 4 << 20;

async fn run_uas(socket: UdpSocket, state: Arc<Mutex<UasState>>) {
    let mut buffer = vec![0u8; 65_536];
    loop {
        let Ok((length, from)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        let replies = match handle_sip(&buffer[..length], &state) {
            Ok(replies) => replies,
            Err(e) => {
                eprintln!("[relay_bench] UAS: {e:#}");
                continue;
            }
        };
        for reply in replies {
            if let Err(e) = socket.send_to(&reply, from).await {
                eprintln!("[relay_bench] UAS send to {from}: {e}");
            }
        }
    }
}

fn handle_sip(datagram: &[u8], state: &Mutex<UasState>) -> anyhow::Result<Vec<Vec<u8>>> {
    let text = std::str::from_utf8(datagram).context("SIP message not UTF-8")?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    if request_line.starts_with("SIP/2.0") {
        return Ok(Vec::new()); // a response: nothing to do
    }
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default();
    let uri = parts.next().unwrap_or_default();
    let headers: Vec<(String, &str)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (expand_header(name.trim()), value.trim()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .with_context(|| format!("{method} without {name}"))
    };
    let call_id = header("call-id")?;
    let mut state = state.lock().map_err(|_| anyhow::anyhow!("UAS poisoned"))?;
    match method {
        "ACK" => Ok(Vec::new()),
        "INVITE" => {
            if let Some(answered) = state.answered.get(call_id) {
                return Ok(vec![answered.clone()]);
            }
            let index: usize = uri
                .split_once("bench")
                .and_then(|(_, rest)| {
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    digits.parse().ok()
                })
                .with_context(|| format!("INVITE to {uri}: no bench<index>"))?;
            let callee = state
                .callees
                .get(index)
                .copied()
                .with_context(|| format!("INVITE for call {index}: no such call"))?;
            let offer = sdp_audio_addr(body).context("the gateway's INVITE offer")?;
            state.offers.insert(index, offer);
            let trying = response(&headers, "100 Trying", None, None);
            let answer = callee_sdp(state.mode.unwrap_or(Mode::Relay), callee, index as u64);
            let ok = response(
                &headers,
                "200 OK",
                Some(&format!("bench{index}")),
                Some(&answer),
            );
            state.answered.insert(call_id.to_string(), ok.clone());
            Ok(vec![trying, ok])
        }
        _ => Ok(vec![response(&headers, "200 OK", None, None)]),
    }
}

/// Compact header forms to full names, lower case.
fn expand_header(name: &str) -> String {
    let name = name.to_ascii_lowercase();
    match name.as_str() {
        "v" => "via".into(),
        "f" => "from".into(),
        "t" => "to".into(),
        "i" => "call-id".into(),
        "m" => "contact".into(),
        "l" => "content-length".into(),
        "c" => "content-type".into(),
        _ => name,
    }
}

/// A response to the request with `headers`: its Via, From, To (with a tag
/// added when `tag` is given and it has none), Call-ID and CSeq; with a
/// Contact and an SDP body when `sdp` is given.
fn response(
    headers: &[(String, &str)],
    status: &str,
    tag: Option<&str>,
    sdp: Option<&str>,
) -> Vec<u8> {
    let mut out = format!("SIP/2.0 {status}\r\n");
    for (name, value) in headers {
        match name.as_str() {
            "via" => out += &format!("Via: {value}\r\n"),
            "from" => out += &format!("From: {value}\r\n"),
            "call-id" => out += &format!("Call-ID: {value}\r\n"),
            "cseq" => out += &format!("CSeq: {value}\r\n"),
            "to" => match tag {
                Some(tag) if !value.contains(";tag=") => {
                    out += &format!("To: {value};tag={tag}\r\n");
                }
                _ => out += &format!("To: {value}\r\n"),
            },
            _ => {}
        }
    }
    match sdp {
        Some(sdp) => {
            out += "Contact: <sip:bench@127.0.0.1>\r\nContent-Type: application/sdp\r\n";
            out += &format!("Content-Length: {}\r\n\r\n{sdp}", sdp.len());
        }
        None => out += "Content-Length: 0\r\n\r\n",
    }
    out.into_bytes()
}

// ---------------------------------------------------------------- rtpengine ng

/// rtpengine's ng control protocol: `<cookie> <bencoded dictionary>` over UDP.
struct NgClient {
    socket: UdpSocket,
    cookie: AtomicU64,
}

impl NgClient {
    async fn connect(to: SocketAddr) -> anyhow::Result<NgClient> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        socket.connect(to).await?;
        Ok(NgClient {
            socket,
            cookie: AtomicU64::new(1),
        })
    }

    /// Sends a dictionary of strings; returns the reply's `sdp` (empty if
    /// none) if its `result` is `ok` or `pong`.
    /// Sends a request of string `fields` and, when there are any, a
    /// `flags` list; gives back the reply's SDP.
    async fn request(&self, fields: &[(&str, &str)], flags: &[&str]) -> anyhow::Result<String> {
        let cookie = format!("c{}", self.cookie.fetch_add(1, Ordering::Relaxed));
        let string = |message: &mut Vec<u8>, item: &str| {
            message.extend_from_slice(format!("{}:", item.len()).as_bytes());
            message.extend_from_slice(item.as_bytes());
        };
        let mut sorted = fields.to_vec();
        sorted.sort_by_key(|(key, _)| *key);
        let mut message = format!("{cookie} d").into_bytes();
        for (key, value) in sorted {
            string(&mut message, key);
            string(&mut message, value);
        }
        if !flags.is_empty() {
            string(&mut message, "flags");
            message.push(b'l');
            for flag in flags {
                string(&mut message, flag);
            }
            message.push(b'e');
        }
        message.push(b'e');
        let mut buffer = vec![0u8; 65_536];
        for _attempt in 0..3 {
            self.socket.send(&message).await?;
            let deadline = Instant::now() + Duration::from_secs(2);
            while let Ok(received) =
                tokio::time::timeout_at(deadline, self.socket.recv(&mut buffer)).await
            {
                let length = received?;
                let reply = &buffer[..length];
                let Some(rest) = reply.strip_prefix(format!("{cookie} ").as_bytes()) else {
                    continue; // a late reply to an earlier attempt
                };
                let mut at = 0;
                let value = Bencode::parse(rest, &mut at).context("rtpengine's reply")?;
                let result = value.get("result").unwrap_or_default();
                if result != "ok" && result != "pong" {
                    bail!(
                        "rtpengine refused {fields:?}: {result} {}",
                        value.get("error-reason").unwrap_or_default()
                    );
                }
                return Ok(value.get("sdp").unwrap_or_default());
            }
        }
        bail!("rtpengine did not answer {fields:?}")
    }
}

enum Bencode {
    Integer,
    Bytes(Vec<u8>),
    List,
    Dictionary(Vec<(Vec<u8>, Bencode)>),
}

impl Bencode {
    fn parse(input: &[u8], at: &mut usize) -> anyhow::Result<Bencode> {
        let byte = |at: usize| input.get(at).copied().context("bencode cut short");
        match byte(*at)? {
            b'i' => {
                let end = input[*at..]
                    .iter()
                    .position(|&b| b == b'e')
                    .context("bencode integer without end")?;
                *at += end + 1;
                Ok(Bencode::Integer)
            }
            b'l' => {
                *at += 1;
                while byte(*at)? != b'e' {
                    Bencode::parse(input, at)?;
                }
                *at += 1;
                Ok(Bencode::List)
            }
            b'd' => {
                *at += 1;
                let mut entries = Vec::new();
                while byte(*at)? != b'e' {
                    let Bencode::Bytes(key) = Bencode::parse(input, at)? else {
                        bail!("bencode dictionary key is no string");
                    };
                    entries.push((key, Bencode::parse(input, at)?));
                }
                *at += 1;
                Ok(Bencode::Dictionary(entries))
            }
            b'0'..=b'9' => {
                let colon = input[*at..]
                    .iter()
                    .position(|&b| b == b':')
                    .context("bencode string without length")?;
                let length: usize = std::str::from_utf8(&input[*at..*at + colon])?.parse()?;
                let start = *at + colon + 1;
                let bytes = input
                    .get(start..start + length)
                    .context("bencode string cut short")?;
                *at = start + length;
                Ok(Bencode::Bytes(bytes.to_vec()))
            }
            other => bail!("bencode: unexpected byte {other:#x}"),
        }
    }

    /// A string entry of a dictionary.
    fn get(&self, key: &str) -> Option<String> {
        let Bencode::Dictionary(entries) = self else {
            return None;
        };
        entries.iter().find_map(|(k, v)| match v {
            Bencode::Bytes(bytes) if k == key.as_bytes() => {
                Some(String::from_utf8_lossy(bytes).into_owned())
            }
            _ => None,
        })
    }
}

// ---------------------------------------------------------------- /proc

/// How long the BPF programs a process holds have run, in ns: the kernel
/// fast path's work, which happens in whichever context receives the
/// packet (here, mostly the generator's `sendto`) and so shows in no relay
/// process's CPU time. Read from the programs' fdinfo, which counts while
/// `kernel.bpf_stats_enabled` is 1 ([`BpfStats`]); 0 for a process with no
/// program.
fn bpf_run_ns(pid: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .filter(|info| info.contains("prog_type:"))
        .filter_map(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("run_time_ns:"))
                .and_then(|value| value.trim().parse::<u64>().ok())
        })
        .sum()
}

/// `kernel.bpf_stats_enabled` on for the sitting (it costs each program run
/// two clock reads, charged to the fast path), set back as it was after.
struct BpfStats {
    was: Option<String>,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> BpfStats {
        let was = std::fs::read_to_string(BPF_STATS).ok();
        if std::fs::write(BPF_STATS, "1").is_err() {
            eprintln!(
                "[relay_bench] cannot enable {BPF_STATS}: a kernel fast path's work is not counted"
            );
        }
        BpfStats { was }
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Some(was) = &self.was {
            let _ = std::fs::write(BPF_STATS, was.trim());
        }
    }
}

/// Busy clock ticks of all cores (`/proc/stat`): user, nice, system, irq,
/// softirq and steal.
fn machine_busy_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("/proc/stat")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    ensure!(fields.len() >= 8, "/proc/stat: {line}");
    Ok(fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7])
}

/// utime + stime of a process (all its threads), in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        Ok(fields.get(n - 3).context("/proc/PID/stat field")?.parse()?)
    };
    Ok(field(14)? + field(15)?)
}

fn clock_ticks() -> anyhow::Result<f64> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ensure!(ticks > 0, "sysconf(_SC_CLK_TCK) failed");
    Ok(ticks as f64)
}

fn resident_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// Whether the machine was quiet: the 1-minute load average and whether a
/// compiler was running.
#[derive(Clone, Copy)]
struct Quiet {
    load1: f64,
    rust_running: bool,
}

impl Quiet {
    fn now() -> Quiet {
        let load1 = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse().ok())
            .unwrap_or(f64::NAN);
        let rust_running = std::fs::read_dir("/proc").is_ok_and(|entries| {
            entries.flatten().any(|entry| {
                std::fs::read_to_string(entry.path().join("comm"))
                    .is_ok_and(|comm| matches!(comm.trim(), "rustc" | "cargo"))
            })
        });
        Quiet {
            load1,
            rust_running,
        }
    }
}
