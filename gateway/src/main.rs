//! `dialtone [--config FILE] [--check-config]`: runs the gateway; SIGTERM
//! drains it, SIGINT (or a second SIGTERM) stops it at once.

use std::path::PathBuf;

use anyhow::bail;
use dialtone_gateway::config::{Config, ENV_OVERRIDES};
use dialtone_gateway::Shutdown;
use tokio::signal::unix::{signal, SignalKind};

const USAGE: &str = "usage: dialtone [--config FILE] [--check-config]

Runs the Dialtone WebSocket-to-SIP gateway. Without a file it listens on
127.0.0.1 (HTTP/WebSocket 8080, SIP 5060) and accepts any user name.
See dialtone.example.toml for every setting.

  --check-config  load and check the file and the DIALTONE_* variables,
                  print a one-line summary and exit (non-zero on an error)

SIGTERM drains: no new sessions, calls in progress go on (at most
shutdown.drain_timeout_ms), then the gateway exits. SIGINT stops at once.";

fn main() -> anyhow::Result<()> {
    let mut config_path: Option<PathBuf> = None;
    let mut check_only = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => match args.next() {
                Some(path) => config_path = Some(PathBuf::from(path)),
                None => bail!("--config needs a file\n\n{USAGE}"),
            },
            "--check-config" => check_only = true,
            "--help" | "-h" => {
                println!("{USAGE}\n\nEnvironment overrides:");
                for (name, setting) in ENV_OVERRIDES {
                    println!("  {name:<26} {setting}");
                }
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    let config = Config::load(config_path.as_deref(), |name| std::env::var(name).ok())?;
    if check_only {
        println!("{}", config.summary());
        return Ok(());
    }
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| config.log.level.clone());
    let ansi = std::env::var_os("NO_COLOR").is_none()
        && std::io::IsTerminal::is_terminal(&std::io::stderr());
    dialtone_gateway::logging::init(&directives, config.log.max_line_chars, ansi)?;

    dialtone_gateway::limit_malloc_arenas();
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(async move {
        let shutdown = Shutdown::default();
        let on_signal = shutdown.clone();
        let mut terminate = signal(SignalKind::terminate())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async {
                    terminate.recv().await;
                    on_signal.drain.cancel();
                    // An operator who insists means it.
                    terminate.recv().await;
                } => {}
            }
            on_signal.stop.cancel();
        });
        dialtone_gateway::run(config, shutdown).await
    });
    // Whatever is still running (a blocking lookup, a task past the grace)
    // must not hold the exit.
    runtime.shutdown_timeout(RUNTIME_EXIT);
    result
}

/// How long the exit waits for the runtime's last tasks.
const RUNTIME_EXIT: std::time::Duration = std::time::Duration::from_secs(1);
