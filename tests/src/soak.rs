//! Soak: many short calls through the gateway to its built-in `tone` line,
//! with clients vanishing at random mid-setup and mid-call, then a check
//! that the gateway let go of everything: `/status` back to zero, file
//! descriptors back to the baseline, resident memory near it, and a call
//! still working. Run by `scripts/soak.sh` (the `soak` binary) at full
//! size, and by `tests/tests/soak.rs` small.
//!
//! Each worker keeps one WebSocket session and places calls one after
//! another; a client that drops (abruptly, FIN or RST) takes its session
//! and call with it, and the worker reconnects for the next call.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde_json::json;
use tokio::net::UdpSocket;

use crate::gateway::{Gateway, LOOPBACK};
use crate::ws_client::WsClient;

/// How a soak runs.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    pub calls: u64,
    /// Calls in progress at once (one WebSocket session each).
    pub concurrency: usize,
    /// The share of calls whose client vanishes, half during set-up and
    /// half during the call.
    pub drop_rate: f64,
    /// Longest time a call is held (each call holds a random time up to it).
    pub max_hold: Duration,
    /// Seeds the choices, so a run can be repeated.
    pub seed: u64,
    /// How far the peak of resident memory during the second half of the
    /// calls may exceed its peak during the first half. Freed memory stays
    /// with the allocator, so RSS rises to the working set of the load and
    /// stays there; what grows from one half to the next is memory the
    /// calls left behind.
    pub max_rss_growth_kib: u64,
}

impl Default for SoakOptions {
    fn default() -> Self {
        SoakOptions {
            calls: 10_000,
            concurrency: 50,
            drop_rate: 0.3,
            max_hold: Duration::from_millis(300),
            seed: 1,
            max_rss_growth_kib: 16 * 1024,
        }
    }
}

/// What a soak saw.
#[derive(Debug, Default)]
pub struct SoakReport {
    pub elapsed: Duration,
    /// Count per outcome (`hung_up`, `dropped_in_setup`, `dropped_in_call`,
    /// `failed …`).
    pub outcomes: BTreeMap<String, u64>,
    pub fds_baseline: usize,
    pub fds_after: usize,
    /// Before any call.
    pub rss_idle_kib: u64,
    /// After the warm-up.
    pub rss_baseline_kib: u64,
    pub rss_first_half_peak_kib: u64,
    pub rss_peak_kib: u64,
    pub rss_after_kib: u64,
    /// How long the gateway took to release everything after the last call.
    pub released_within: Duration,
}

impl std::fmt::Display for SoakReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let calls: u64 = self.outcomes.values().sum();
        writeln!(
            f,
            "{calls} calls in {:.1} s ({:.1} calls/s): {:?}",
            self.elapsed.as_secs_f64(),
            calls as f64 / self.elapsed.as_secs_f64(),
            self.outcomes
        )?;
        writeln!(
            f,
            "released everything {:.1} s after the last call",
            self.released_within.as_secs_f64()
        )?;
        writeln!(
            f,
            "fds: baseline {} after {}",
            self.fds_baseline, self.fds_after
        )?;
        write!(
            f,
            "RSS: idle {} KiB, after the warm-up {} KiB, peak in the first half {} KiB, \
             peak {} KiB, after {} KiB",
            self.rss_idle_kib,
            self.rss_baseline_kib,
            self.rss_first_half_peak_kib,
            self.rss_peak_kib,
            self.rss_after_kib
        )
    }
}

/// Holds during the whole run: the gateway's counters that must all be back
/// at zero afterwards.
const RELEASED: [&str; 7] = [
    "wsConnections",
    "sessions",
    "calls",
    "sipDialogs",
    "mediaPorts",
    "tasks",
    "sipTransactions",
];
const REPLY: Duration = Duration::from_secs(20);
/// The gateway's own test line that answers every call and streams a tone.
const LINE: &str = "tone";

/// The gateway a soak runs against: open mode on loopback (so the test
/// lines answer), a short T1 so finished transactions leave within seconds,
/// a wide port pool, and the per-address limits lifted (every client comes
/// from 127.0.0.1, thousands of sessions a minute on purpose).
pub fn gateway_config() -> String {
    format!(
        "{LOOPBACK}t1_ms = 100\n[media]\nrtp_port_min = 40000\nrtp_port_max = 49999\n\
         [sessions]\nstart_burst = 1000000\nstarts_per_minute = 1000000\n\
         [calls]\nstart_burst = 1000000\nstarts_per_minute = 1000000\n\
         [limits]\nmax_connections_per_ip = 10000\n"
    )
}

/// Runs the soak against `gateway` (open mode, test lines on) and checks
/// that it let go of everything; the report comes with the verdict.
pub async fn run(gateway: &Gateway, options: &SoakOptions) -> anyhow::Result<SoakReport> {
    ensure!(options.concurrency > 0, "concurrency must be at least 1");
    // Where the client's RTP points send (the tone line's audio): one
    // socket that nobody reads, so media flows as it would to a real client.
    let media_sink = UdpSocket::bind("127.0.0.1:0").await?;
    let sink_port = media_sink.local_addr()?.port();

    let rss_idle_kib = rss_kib(gateway)?;
    // Warm-up at full concurrency, so the fd baseline holds what the first
    // calls set up once (thread pools, sockets).
    let warm_up = SoakOptions {
        calls: (options.concurrency as u64 * 4).min(options.calls),
        ..options.clone()
    };
    run_calls(gateway, &warm_up, sink_port, &plans(&warm_up)).await?;
    gateway.wait_released(&RELEASED, Duration::from_secs(60))?;
    let fds_at_baseline = gateway.fd_targets()?;
    let mut report = SoakReport {
        fds_baseline: gateway.open_fds()?,
        rss_idle_kib,
        rss_baseline_kib: rss_kib(gateway)?,
        ..SoakReport::default()
    };

    let began = Instant::now();
    let plans = plans(options);
    let sampler = RssSampler::start(gateway.pid());
    let (first_half, second_half) = plans.split_at(plans.len() / 2);
    for (index, half) in [first_half, second_half].into_iter().enumerate() {
        let half_options = SoakOptions {
            calls: half.len() as u64,
            ..options.clone()
        };
        for (outcome, count) in run_calls(gateway, &half_options, sink_port, half).await? {
            *report.outcomes.entry(outcome).or_default() += count;
        }
        if index == 0 {
            report.rss_first_half_peak_kib = sampler.peak();
        }
    }
    report.elapsed = began.elapsed();

    let last_call = Instant::now();
    gateway.wait_released(&RELEASED, Duration::from_secs(120))?;
    report.released_within = last_call.elapsed();
    report.rss_peak_kib = sampler.stop();
    crate::wait::wait_until(Duration::from_secs(10), || {
        report.fds_after = gateway.open_fds()?;
        Ok(report.fds_after <= report.fds_baseline)
    })
    .with_context(|| {
        let held: Vec<String> = gateway
            .fd_targets()
            .unwrap_or_default()
            .into_iter()
            .filter(|target| !fds_at_baseline.contains(target))
            .collect();
        format!("file descriptors leaked: {held:?}\n{report}")
    })?;
    report.rss_after_kib = rss_kib(gateway)?;
    ensure!(
        report.rss_peak_kib <= report.rss_first_half_peak_kib + options.max_rss_growth_kib,
        "resident memory grew by {} KiB from the first half of the calls to the second \
         (at most {} allowed)\n{report}",
        report
            .rss_peak_kib
            .saturating_sub(report.rss_first_half_peak_kib),
        options.max_rss_growth_kib
    );
    let unexpected: u64 = report
        .outcomes
        .iter()
        .filter(|(outcome, _)| outcome.starts_with("failed"))
        .map(|(_, count)| count)
        .sum();
    ensure!(unexpected == 0, "calls failed\n{report}");
    // And the gateway still takes calls.
    let one_call = SoakOptions {
        calls: 1,
        concurrency: 1,
        ..options.clone()
    };
    let after = run_calls(gateway, &one_call, sink_port, &[Plan::HangUp]).await?;
    ensure!(
        after.get("hung_up") == Some(&1),
        "no call after the soak: {after:?}"
    );
    Ok(report)
}

/// What the client does with one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Held, then HANGUP_CALL and CALL_FINISHED.
    HangUp,
    /// The client vanishes before CALL_STARTED.
    DropInSetup,
    /// The client vanishes during the call.
    DropInCall,
}

/// One plan per call, drawn from the seed.
fn plans(options: &SoakOptions) -> Vec<Plan> {
    let mut random = SplitMix64(options.seed);
    (0..options.calls)
        .map(|_| {
            let draw = random.unit();
            if draw < options.drop_rate / 2.0 {
                Plan::DropInSetup
            } else if draw < options.drop_rate {
                Plan::DropInCall
            } else {
                Plan::HangUp
            }
        })
        .collect()
}

/// Places `plans.len()` calls (the plans in turn, repeated if fewer than
/// `options.calls`) from `options.concurrency` workers; returns the count
/// of each outcome.
async fn run_calls(
    gateway: &Gateway,
    options: &SoakOptions,
    sink_port: u16,
    plans: &[Plan],
) -> anyhow::Result<BTreeMap<String, u64>> {
    let plans: Arc<Vec<Plan>> = Arc::new(plans.to_vec());
    let next = Arc::new(AtomicU64::new(0));
    let outcomes = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let mut workers = Vec::new();
    for worker in 0..options.concurrency {
        let (plans, next, outcomes) = (plans.clone(), next.clone(), outcomes.clone());
        let url = gateway.ws_url();
        let mut random = SplitMix64(options.seed ^ (worker as u64 + 1) << 32);
        let max_hold = options.max_hold;
        let total = options.calls.min(plans.len() as u64);
        workers.push(tokio::spawn(async move {
            let mut session: Option<(WsClient, String)> = None;
            loop {
                let number = next.fetch_add(1, Ordering::Relaxed);
                if number >= total {
                    break;
                }
                let plan = plans[number as usize];
                let (client, session_id) = match session.take() {
                    Some(open) => open,
                    None => WsClient::start_session(&url, &format!("soak{worker}"), "")
                        .await
                        .with_context(|| format!("worker {worker}: starting a session"))?,
                };
                let hold = max_hold.mul_f64(random.unit());
                let outcome =
                    match one_call(client, &session_id, plan, hold, sink_port, &mut random).await {
                        Ok((outcome, kept)) => {
                            session = kept.map(|client| (client, session_id));
                            outcome.to_owned()
                        }
                        Err(error) => format!("failed: {error:#}"),
                    };
                *outcomes
                    .lock()
                    .map_err(|_| anyhow::anyhow!("a worker panicked"))?
                    .entry(outcome)
                    .or_default() += 1;
            }
            if let Some((client, _)) = session {
                client.close().await?;
            }
            anyhow::Ok(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    let outcomes = outcomes
        .lock()
        .map_err(|_| anyhow::anyhow!("a worker panicked"))?
        .clone();
    Ok(outcomes)
}

/// One call as `plan` says; returns its outcome and the client when it is
/// still connected.
async fn one_call(
    mut client: WsClient,
    session_id: &str,
    plan: Plan,
    hold: Duration,
    sink_port: u16,
    random: &mut SplitMix64,
) -> anyhow::Result<(&'static str, Option<WsClient>)> {
    let call_id = client
        .start_call(
            &json!({
                "type": "START_CALL", "sessionId": session_id, "bUri": LINE,
                "cc": {"audioCodecs": ["PCMU/8000"], "mediaTransport": ["RTP"]},
            }),
            REPLY,
        )
        .await?;
    if plan == Plan::DropInSetup {
        // Right after CALL_STARTING, or once the INVITE is out (the
        // gateway's SDP_OFFER for the client point comes with it).
        if random.unit() < 0.5 {
            client
                .recv_type_skipping("SDP_OFFER", &["CALL_STARTING"], REPLY)
                .await?;
        }
        vanish(client, random)?;
        return Ok(("dropped_in_setup", None));
    }
    client
        .recv_type_skipping("SDP_OFFER", &["CALL_STARTING"], REPLY)
        .await?;
    client
        .send_json(&json!({
            "type": "SDP_ANSWER", "sessionId": session_id, "callId": call_id,
            "sdp": format!(
                "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                 m=audio {sink_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
            ),
        }))
        .await?;
    client
        .recv_type_skipping("CALL_STARTED", &["CALL_STARTING"], REPLY)
        .await?;
    tokio::time::sleep(hold).await;
    if plan == Plan::DropInCall {
        vanish(client, random)?;
        return Ok(("dropped_in_call", None));
    }
    client
        .send_json(&json!({"type": "HANGUP_CALL", "sessionId": session_id, "callId": call_id}))
        .await?;
    client
        .recv_type_skipping("CALL_FINISHED", &["CALL_STARTING", "DTMF_RECEIVED"], REPLY)
        .await?;
    Ok(("hung_up", Some(client)))
}

/// The client disappears as a closed tab (FIN) or a lost network (RST).
fn vanish(client: WsClient, random: &mut SplitMix64) -> anyhow::Result<()> {
    if random.unit() < 0.5 {
        client.drop_abruptly();
        Ok(())
    } else {
        client.reset()
    }
}

/// The gateway's resident memory, from /proc.
fn rss_kib(gateway: &Gateway) -> anyhow::Result<u64> {
    process_rss_kib(gateway.pid())
}

fn process_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let Some(line) = status.lines().find(|line| line.starts_with("VmRSS:")) else {
        bail!("no VmRSS in {path}");
    };
    line.split_whitespace()
        .nth(1)
        .and_then(|kib| kib.parse().ok())
        .with_context(|| format!("unreadable {line:?}"))
}

/// Samples the gateway's RSS every 200 ms on a thread, for the peak.
struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sampled, stopped) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                sampled.fetch_max(process_rss_kib(pid).unwrap_or(0), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        RssSampler { peak, stop, thread }
    }

    /// The peak so far (to the last sample).
    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.peak.load(Ordering::Relaxed)
    }
}

/// A small seeded generator (SplitMix64), so a soak's choices repeat.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}
