//! Soak: thousands of short calls to the gateway's `tone` line with
//! clients vanishing mid-setup and mid-call; fails unless the gateway lets
//! go of everything afterwards (see `dialtone_tests::soak`). Usually run
//! through `scripts/soak.sh`:
//!
//! ```sh
//! DIALTONE_BIN=target/release/dialtone cargo run --release -p dialtone-tests --bin soak -- \
//!     --calls 10000 --concurrency 50 --drop-rate 0.3
//! ```

use std::time::Duration;

use anyhow::{bail, Context};
use dialtone_tests::gateway::Gateway;
use dialtone_tests::soak::{self, SoakOptions};

fn options() -> anyhow::Result<SoakOptions> {
    let mut options = SoakOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--calls" => options.calls = value.parse()?,
            "--concurrency" => options.concurrency = value.parse()?,
            "--drop-rate" => options.drop_rate = value.parse()?,
            "--max-hold-ms" => options.max_hold = Duration::from_millis(value.parse()?),
            "--seed" => options.seed = value.parse()?,
            "--max-rss-growth-mib" => options.max_rss_growth_kib = value.parse::<u64>()? * 1024,
            other => bail!(
                "unknown flag {other}; use --calls N --concurrency N --drop-rate 0..1 \
                 --max-hold-ms N --seed N --max-rss-growth-mib N"
            ),
        }
    }
    Ok(options)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = options()?;
    println!("soak: {options:?}");
    let gateway = Gateway::start(&soak::gateway_config())?;
    let report = soak::run(&gateway, &options).await?;
    println!("{report}");
    println!("soak passed: /status back to zero, fds at the baseline, RSS within bounds");
    Ok(())
}
