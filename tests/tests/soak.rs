//! A small soak (the full one is `scripts/soak.sh`): 300 short calls to the
//! `tone` line, 30 % of the clients vanishing mid-setup or mid-call; the
//! gateway must let go of everything and still take calls.

use std::time::Duration;

use dialtone_tests::gateway::Gateway;
use dialtone_tests::soak::{self, SoakOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_calls_with_abrupt_drops_leave_nothing_behind() -> anyhow::Result<()> {
    let gateway = Gateway::start(&soak::gateway_config())?;
    let options = SoakOptions {
        calls: 300,
        concurrency: 10,
        max_hold: Duration::from_millis(200),
        ..SoakOptions::default()
    };
    let report = soak::run(&gateway, &options).await?;
    println!("{report}");
    Ok(())
}
