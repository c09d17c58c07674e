//! `dialtone [--config FILE]`: runs the gateway until SIGINT or SIGTERM.

use std::path::PathBuf;

use anyhow::bail;
use dialtone_gateway::config::{Config, ENV_OVERRIDES};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

const USAGE: &str = "usage: dialtone [--config FILE]

Runs the Dialtone WebSocket-to-SIP gateway. Without a file it listens on
127.0.0.1 (HTTP/WebSocket 8080, SIP 5060) and accepts any user name.
See dialtone.example.toml for every setting.";

fn main() -> anyhow::Result<()> {
    let mut config_path: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => match args.next() {
                Some(path) => config_path = Some(PathBuf::from(path)),
                None => bail!("--config needs a file\n\n{USAGE}"),
            },
            "--help" | "-h" => {
                println!("{USAGE}\n\nEnvironment overrides:");
                for (name, setting) in ENV_OVERRIDES {
                    println!("  {name:<24} {setting}");
                }
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    let config = Config::load(config_path.as_deref(), |name| std::env::var(name).ok())?;
    let filter =
        EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&config.log.level))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(
            std::env::var_os("NO_COLOR").is_none()
                && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        )
        .init();

    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let stop = CancellationToken::new();
        let on_signal = stop.clone();
        let mut terminate = signal(SignalKind::terminate())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            on_signal.cancel();
        });
        dialtone_gateway::run(config, stop).await
    })
}
