//! Call load: the gateway as a UAC toward SIPp's built-in UAS.
//!
//! Starts SIPp (`-sn uas`: 180, 200, waits for BYE) and the gateway (open
//! mode, INVITEs straight to SIPp), opens WebSocket sessions, and places
//! calls at a fixed rate; each call is held, then hung up. Prints how many
//! calls were placed, established, failed and finished, the set-up latency,
//! and what the gateway still holds afterwards.
//!
//! ```sh
//! cargo build --release -p dialtone-gateway
//! DIALTONE_BIN=target/release/dialtone cargo run --release -p dialtone-tests --bin call_load -- \
//!     --rate 50 --seconds 20 --hold-ms 2000
//! ```

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use dialtone_tests::gateway::{Gateway, LOOPBACK};
use dialtone_tests::ports::free_port;
use dialtone_tests::process::ChildGuard;
use dialtone_tests::wait::wait_until;
use dialtone_tests::ws_client::WsClient;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Mutex};

const SESSIONS: usize = 20;

struct Options {
    rate: f64,
    seconds: u64,
    hold: Duration,
}

#[derive(Default)]
struct Tally {
    placed: u64,
    established: u64,
    failed: u64,
    finished: u64,
    setup_ms: Vec<f64>,
    failures: HashMap<String, u64>,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options {
        rate: 20.0,
        seconds: 10,
        hold: Duration::from_millis(1000),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--rate" => options.rate = value.parse()?,
            "--seconds" => options.seconds = value.parse()?,
            "--hold-ms" => options.hold = Duration::from_millis(value.parse()?),
            other => bail!("unknown flag {other}; use --rate N --seconds N --hold-ms N"),
        }
    }
    Ok(options)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = options()?;
    let dir = tempfile::tempdir()?;
    let sipp_port = free_port();
    let mut sipp = Command::new("sipp");
    sipp.args([
        "-sn",
        "uas",
        "-i",
        "127.0.0.1",
        "-p",
        &sipp_port.to_string(),
    ])
    .args(["-nostdin", "-timeout", "600s", "-max_socket", "2000"]);
    let sipp = ChildGuard::spawn("sipp-uas", sipp, &dir.path().join("sipp.log"))?;

    let gateway = Gateway::start(&format!(
        r#"
{LOOPBACK}[calls]
proxy = "sip:127.0.0.1:{sipp_port};transport=udp"
# A load generator is one heavy client: lift the per-client abuse limits.
max_calls_per_session = 100000
max_calls_per_connection = 100000
max_calls = 100000
start_burst = 100000
starts_per_minute = 1000000
[sessions]
start_burst = 100000
[media]
rtp_port_min = 40000
rtp_port_max = 49999
[log]
level = "warn"
"#
    ))?;

    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut orders = Vec::new();
    let mut sessions = Vec::new();
    for index in 0..SESSIONS {
        let (client, session_id) =
            WsClient::start_session(&gateway.ws_url(), &format!("load{index}"), "x").await?;
        let (order_sender, order_receiver) = mpsc::unbounded_channel();
        orders.push(order_sender.clone());
        sessions.push(tokio::spawn(drive_session(
            client,
            session_id,
            order_receiver,
            order_sender,
            tally.clone(),
            options.hold,
        )));
    }

    let began = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / options.rate);
    let total = (options.rate * options.seconds as f64) as u64;
    let mut ticker = tokio::time::interval(interval);
    for number in 0..total {
        ticker.tick().await;
        let _ = orders[number as usize % SESSIONS].send(Order::Place(number));
    }
    let offered_for = began.elapsed();
    // Let the last calls finish: hold time plus set-up.
    let drained = wait_until(options.hold + Duration::from_secs(30), || {
        let tally = tally.try_lock();
        Ok(tally.is_ok_and(|t| t.finished + t.failed >= t.placed))
    });
    for order in &orders {
        let _ = order.send(Order::Stop);
    }
    for session in sessions {
        let _ = session.await;
    }

    let tally = tally.lock().await;
    let mut setup = tally.setup_ms.clone();
    setup.sort_by(f64::total_cmp);
    let percentile = |p: f64| {
        setup
            .get(((setup.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "offered {:.1} calls/s for {:.1} s, hold {} ms",
        options.rate,
        offered_for.as_secs_f64(),
        options.hold.as_millis()
    );
    println!(
        "placed {} established {} failed {} finished {} (drained: {})",
        tally.placed,
        tally.established,
        tally.failed,
        tally.finished,
        drained.is_ok()
    );
    println!(
        "achieved {:.1} established calls/s; set-up latency p50 {:.1} ms p95 {:.1} ms max {:.1} ms",
        tally.established as f64 / offered_for.as_secs_f64(),
        percentile(0.5),
        percentile(0.95),
        percentile(1.0)
    );
    if !tally.failures.is_empty() {
        println!("failures: {:?}", tally.failures);
    }
    let mut status = Value::Null;
    let _ = wait_until(Duration::from_secs(40), || {
        status = gateway.status()?;
        Ok(status["calls"] == 0 && status["sipDialogs"] == 0 && status["mediaPorts"] == 0)
    });
    println!("gateway afterwards: {status}");
    drop(sipp);
    Ok(())
}

enum Order {
    Place(u64),
    Hangup(String),
    Stop,
}

/// One WebSocket session placing the calls it is told to, hanging each up
/// after the hold time.
async fn drive_session(
    mut client: WsClient,
    session_id: String,
    mut orders: mpsc::UnboundedReceiver<Order>,
    own_orders: mpsc::UnboundedSender<Order>,
    tally: Arc<Mutex<Tally>>,
    hold: Duration,
) -> anyhow::Result<()> {
    let mut placed_at: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::select! {
            order = orders.recv() => match order {
                Some(Order::Place(number)) => {
                    let client_call_id = format!("call-{number}");
                    placed_at.insert(client_call_id.clone(), Instant::now());
                    tally.lock().await.placed += 1;
                    client.send_json(&json!({
                        "type": "START_CALL", "sessionId": session_id,
                        "bUri": format!("load{number}"), "clientCallId": client_call_id,
                    })).await?;
                }
                Some(Order::Hangup(call_id)) => {
                    client.send_json(&json!({"type": "HANGUP_CALL", "sessionId": session_id, "callId": call_id})).await?;
                }
                Some(Order::Stop) | None => return Ok(()),
            },
            message = client.recv_json(Duration::from_secs(3600)) => {
                let message = message?;
                let client_call_id = message["clientCallId"].as_str().unwrap_or_default().to_string();
                match message["type"].as_str() {
                    Some("CALL_STARTED") => {
                        let mut tally = tally.lock().await;
                        tally.established += 1;
                        if let Some(at) = placed_at.get(&client_call_id) {
                            tally.setup_ms.push(at.elapsed().as_secs_f64() * 1000.0);
                        }
                        let call_id = message["callId"].as_str().unwrap_or_default().to_string();
                        let orders = own_orders.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(hold).await;
                            let _ = orders.send(Order::Hangup(call_id));
                        });
                    }
                    Some("CALL_FAILED") => {
                        let mut tally = tally.lock().await;
                        tally.failed += 1;
                        let key = format!("{} {}", message["reason"], message["sipStatus"]);
                        *tally.failures.entry(key).or_default() += 1;
                    }
                    Some("CALL_FINISHED") => tally.lock().await.finished += 1,
                    _ => {}
                }
            }
        }
    }
}
