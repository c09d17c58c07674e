//! The gateway under test, run as its real binary: `dialtone --config FILE`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::process::{ChildGuard, Logged, STOP_GRACE};

/// Deadline for the gateway to log `dialtone ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Connect/read/write timeout of one HTTP request to the gateway.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// How many of the gateway's log lines a test's output ends with.
const LOG_TAIL_ON_DROP: usize = 80;

/// `RUST_LOG` given to the gateway unless the test environment sets one.
pub const DEFAULT_RUST_LOG: &str = "info,dialtone=debug";

/// The gateway binary: `$DIALTONE_BIN` if set, else `<workspace>/target/debug/dialtone`
/// (`$CARGO_TARGET_DIR/debug/dialtone` if that is set to an absolute path). Errors if missing:
/// `cargo test` does not build other packages' binaries.
pub fn binary_path() -> anyhow::Result<PathBuf> {
    let path = if let Some(bin) = std::env::var_os("DIALTONE_BIN") {
        PathBuf::from(bin)
    } else {
        let target = match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
            Some(dir) if dir.is_absolute() => dir,
            _ => Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .context("manifest dir has no parent")?
                .join("target"),
        };
        target.join("debug").join("dialtone")
    };
    if !path.is_file() {
        bail!(
            "gateway binary {} not found: build it first: cargo build -p dialtone-gateway \
             (or point DIALTONE_BIN at it)",
            path.display()
        );
    }
    Ok(path)
}

/// The start of a test configuration: HTTP and SIP on free loopback ports.
/// Keys written right after it belong to `[sip]`.
pub const LOOPBACK: &str = "[http]\nlisten = \"127.0.0.1:0\"\n[sip]\nlisten = \"127.0.0.1:0\"\n";

/// A test configuration that sends every call straight to `proxy` (a SIPp callee, say) over
/// UDP, with a short T1 so finished transactions leave the stack within seconds. `sip_extra`
/// goes into `[sip]`; other sections may be appended to the result.
pub fn proxy_config(proxy: SocketAddr, sip_extra: &str) -> String {
    format!("{LOOPBACK}t1_ms = 100\n{sip_extra}[calls]\nproxy = \"sip:{proxy};transport=udp\"\n")
}

/// A test configuration that registers sessions at `registrar` (the rig's Kamailio) over UDP,
/// with a short T1 as in [`proxy_config`]; other sections may be appended to the result.
pub fn registrar_config(registrar: SocketAddr) -> String {
    format!("{LOOPBACK}t1_ms = 100\n[registrar]\naddress = \"sip:{registrar};transport=udp\"\n")
}

/// A running gateway process, stopped by PID on drop.
///
/// Readiness is the log line containing `dialtone ready` with fields `http=IP:PORT` and
/// `sip=IP:PORT` (any order; quoted or JSON-style `"http":"IP:PORT"` also accepted).
pub struct Gateway {
    guard: ChildGuard,
    dir: Option<tempfile::TempDir>,
    config_path: PathBuf,
    http: SocketAddr,
    sip: SocketAddr,
    /// RTMP and RTMPS listeners, when on.
    rtmp: Option<SocketAddr>,
    rtmps: Option<SocketAddr>,
    keep_dir: bool,
}

impl Gateway {
    /// Writes `config_toml` to a temp file, runs the binary on it and waits (up to
    /// [`READY_TIMEOUT`]) for the ready line. Fails early if the process exits; errors carry
    /// the log tail.
    pub fn start(config_toml: &str) -> anyhow::Result<Gateway> {
        Self::start_with_env(Some(config_toml), &[])
    }

    /// Like [`Gateway::start`], with extra environment variables for the process; with
    /// `config_toml: None` the binary runs without `--config` (defaults + environment only).
    pub fn start_with_env(
        config_toml: Option<&str>,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Gateway> {
        let (guard, dir, config_path) = spawn(config_toml, env)?;
        let ready = guard.wait_for_log("dialtone ready", READY_TIMEOUT);
        let ready_line = ready.as_ref().ok().cloned().unwrap_or_default();
        let addrs = ready.and_then(|line| {
            parse_ready(&line).with_context(|| {
                format!(
                    "ready line lacks http=IP:PORT / sip=IP:PORT: {line:?}\n{}",
                    guard.tail_report()
                )
            })
        });
        match addrs {
            Ok((http, sip)) => Ok(Gateway {
                rtmp: field_addr(&ready_line, "rtmp"),
                rtmps: field_addr(&ready_line, "rtmps"),
                guard,
                dir: Some(dir),
                config_path,
                http,
                sip,
                keep_dir: false,
            }),
            Err(e) => {
                drop(guard);
                // The error names the log file: keep it for the post-mortem.
                crate::retain_dir(dir, "gateway");
                Err(e.context("gateway did not become ready"))
            }
        }
    }

    /// Runs the binary on `config_toml` and waits for it to exit by itself (e.g. on a bad
    /// config); returns its exit status and log. Errors if it still runs after `timeout`.
    pub fn run_to_exit(
        config_toml: &str,
        timeout: Duration,
    ) -> anyhow::Result<(ExitStatus, String)> {
        let (guard, _dir, _config) = spawn(Some(config_toml), &[])?;
        let status = guard.wait_exit(timeout)?;
        Ok((status, guard.log_text()))
    }

    /// The HTTP/WebSocket listener from the ready line.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// The RTMP listener from the ready line (`rtmp=off` when off).
    pub fn rtmp_addr(&self) -> anyhow::Result<SocketAddr> {
        self.rtmp.context("the gateway does not listen for RTMP")
    }

    /// The RTMPS listener from the ready line.
    pub fn rtmps_addr(&self) -> anyhow::Result<SocketAddr> {
        self.rtmps.context("the gateway does not listen for RTMPS")
    }

    /// The SIP socket from the ready line.
    pub fn sip_addr(&self) -> SocketAddr {
        self.sip
    }

    /// `ws://<http_addr>/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http)
    }

    /// GET `path` (e.g. `/status`); returns (status code, body) whatever the code.
    pub fn http_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        crate::http::get(self.http, path, HTTP_TIMEOUT)
    }

    /// GET `path` with extra request headers (Origin, Authorization, ...); returns (status
    /// code, body) whatever the code.
    pub fn http_get_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(u16, String)> {
        crate::http::request(self.http, "GET", path, headers, HTTP_TIMEOUT)
    }

    /// POST `path` with no body, with `Authorization: Bearer <token>` when given; returns
    /// (status code, body) whatever the code.
    pub fn http_post(&self, path: &str, bearer: Option<&str>) -> anyhow::Result<(u16, String)> {
        let authorization = bearer.map(|token| format!("Bearer {token}"));
        let headers: Vec<(&str, &str)> = authorization
            .iter()
            .map(|value| ("Authorization", value.as_str()))
            .collect();
        crate::http::request(self.http, "POST", path, &headers, HTTP_TIMEOUT)
    }

    /// GET /status, which must answer 200 with JSON.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let (code, body) = self.http_get("/status")?;
        if code != 200 {
            bail!("GET /status answered {code}: {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("GET /status: not JSON: {body}"))
    }

    /// Waits until every `/status` counter named in `keys` is 0 (calls,
    /// dialogs, media ports, ...); the error shows the last status.
    pub fn wait_released(&self, keys: &[&str], timeout: Duration) -> anyhow::Result<()> {
        let mut last = serde_json::Value::Null;
        crate::wait::wait_until(timeout, || {
            last = self.status()?;
            Ok(keys.iter().all(|key| last[*key] == 0))
        })
        .with_context(|| format!("gateway still holds resources: {last}"))
    }

    /// Waits until the gateway holds nothing a session with calls takes:
    /// no call, dialog, media port, session, registration, task or SIP
    /// transaction.
    pub fn wait_all_released(&self, timeout: Duration) -> anyhow::Result<()> {
        let keys = [
            "calls",
            "sipDialogs",
            "mediaPorts",
            "sessions",
            "registrations",
            "tasks",
            "sipTransactions",
            "rooms",
            "roomMembers",
            "mediaPoints",
            "recordings",
        ];
        self.wait_released(&keys, timeout)
    }

    /// Waits until `/status` shows RTP from the far end of `call_id`
    /// counted by its room.
    pub fn wait_media_received(&self, call_id: &str, timeout: Duration) -> anyhow::Result<()> {
        crate::wait::wait_until(timeout, || {
            let status = self.status()?;
            Ok(status["media"][call_id]["packetsReceived"]
                .as_u64()
                .is_some_and(|received| received > 0))
        })
    }

    /// GET /metrics, which must answer 200; returns the Prometheus text.
    pub fn metrics_text(&self) -> anyhow::Result<String> {
        let (code, body) = self.http_get("/metrics")?;
        if code != 200 {
            bail!("GET /metrics answered {code}: {body}");
        }
        Ok(body)
    }

    /// The value of an unlabelled metric of /metrics (`dialtone_` prefix included).
    pub fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let text = self.metrics_text()?;
        let line = text
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .with_context(|| format!("no metric {name} in /metrics"))?;
        line.trim()
            .parse()
            .with_context(|| format!("metric {name} = {line:?}"))
    }

    /// PID of the gateway process.
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// The config file the gateway was started with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Number of open file descriptors (entries of /proc/PID/fd), for leak checks.
    pub fn open_fds(&self) -> anyhow::Result<usize> {
        let dir = format!("/proc/{}/fd", self.guard.pid());
        Ok(std::fs::read_dir(&dir)
            .with_context(|| format!("reading {dir}"))?
            .count())
    }

    /// What each of the gateway's open file descriptors is (`socket:[inode]`, a path, …),
    /// for a report of what it still holds.
    pub fn fd_targets(&self) -> anyhow::Result<Vec<String>> {
        let dir = format!("/proc/{}/fd", self.guard.pid());
        let mut targets: Vec<String> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {dir}"))?
            .flatten()
            .filter_map(|entry| std::fs::read_link(entry.path()).ok())
            .map(|target| target.display().to_string())
            .collect();
        targets.sort();
        Ok(targets)
    }

    /// How many lines of the gateway's log contain `pattern`.
    pub fn count_log(&self, pattern: &str) -> usize {
        self.guard.count_log(pattern)
    }

    /// The exit status if the gateway has exited (e.g. crashed), `None` while it runs.
    pub fn try_wait(&self) -> anyhow::Result<Option<ExitStatus>> {
        self.guard.try_wait()
    }

    /// Stop now: SIGINT (which, unlike SIGTERM, does not wait for calls to end), up to
    /// [`STOP_GRACE`], then SIGKILL. Returns the exit status.
    pub fn stop(&self) -> anyhow::Result<ExitStatus> {
        self.guard.stop_with(libc::SIGINT, STOP_GRACE)
    }

    /// SIGTERM, which starts a drain; does not wait. See [`Gateway::wait_exit`].
    pub fn terminate(&self) -> anyhow::Result<()> {
        self.guard.signal(libc::SIGTERM)
    }

    /// Waits until the gateway exits by itself (the end of a drain); returns its status.
    pub fn wait_exit(&self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.guard.wait_exit(timeout)
    }

    /// SIGKILL by PID (no chance to clean up), then reap. Returns the exit status.
    pub fn kill_hard(&self) -> anyhow::Result<ExitStatus> {
        self.guard.kill_hard()
    }

    /// Keeps the temp dir (config + log) after drop even if the test passes.
    pub fn keep_files(&mut self) {
        self.keep_dir = true;
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("[dialtone-tests] stopping gateway: {e:#}");
        }
        // The test harness shows a test's output only when it fails: then
        // this is the gateway's side of the story, CI's runs included.
        eprintln!(
            "[dialtone-tests] the gateway's last log lines:\n{}",
            self.guard.log_tail(LOG_TAIL_ON_DROP)
        );
        if self.keep_dir || crate::keep_artifacts() {
            if let Some(dir) = self.dir.take() {
                crate::retain_dir(dir, "gateway");
            }
        }
    }
}

/// Spawns the binary in a fresh temp dir (its working directory). Returns the config path,
/// which does not exist when `config_toml` is `None`.
fn spawn(
    config_toml: Option<&str>,
    env: &[(&str, &str)],
) -> anyhow::Result<(ChildGuard, tempfile::TempDir, PathBuf)> {
    let bin = binary_path()?;
    let dir = crate::instance_dir("gw-")?;
    let config_path = dir.path().join("dialtone.toml");
    let mut cmd = Command::new(&bin);
    if let Some(config_toml) = config_toml {
        std::fs::write(&config_path, config_toml).context("writing gateway config")?;
        cmd.arg("--config").arg(&config_path);
    }
    cmd.current_dir(dir.path()).env("NO_COLOR", "1");
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", DEFAULT_RUST_LOG);
    }
    // Many gateways run at once: RTMP on a port of its own unless a test says otherwise.
    cmd.env("DIALTONE_RTMP_LISTEN", "127.0.0.1:0");
    cmd.envs(env.iter().copied());
    let guard = ChildGuard::spawn("gateway", cmd, &dir.path().join("gateway.log"))?;
    Ok((guard, dir, config_path))
}

/// Extracts (http, sip) from the ready line.
fn parse_ready(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    Some((field_addr(line, "http")?, field_addr(line, "sip")?))
}

/// Finds `key=ADDR`, `key="ADDR"` or `"key":"ADDR"` as a whole word and parses ADDR.
fn field_addr(line: &str, key: &str) -> Option<SocketAddr> {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
    let mut from = 0;
    while let Some(pos) = line[from..].find(key) {
        let start = from + pos;
        from = start + key.len();
        if line[..start].chars().next_back().is_some_and(is_word) {
            continue;
        }
        let rest = line[from..].strip_prefix('"').unwrap_or(&line[from..]);
        let Some(rest) = rest.strip_prefix('=').or_else(|| rest.strip_prefix(':')) else {
            continue;
        };
        let rest = rest.trim_start_matches([' ', '"']);
        let end = rest
            .find(|c: char| !(c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']')))
            .unwrap_or(rest.len());
        if let Ok(addr) = rest[..end].parse() {
            return Some(addr);
        }
    }
    None
}

impl Logged for Gateway {
    fn process(&self) -> &ChildGuard {
        &self.guard
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ready_lines() -> anyhow::Result<()> {
        let http: SocketAddr = "127.0.0.1:43211".parse()?;
        let sip: SocketAddr = "127.0.0.1:40123".parse()?;
        for line in [
            "2026-01-01T00:00:00Z  INFO dialtone_gateway: dialtone ready http=127.0.0.1:43211 sip=127.0.0.1:40123",
            "INFO dialtone ready sip=127.0.0.1:40123 http=127.0.0.1:43211 version=0.1.0",
            r#"INFO dialtone ready http="127.0.0.1:43211", sip="127.0.0.1:40123""#,
            r#"{"level":"INFO","fields":{"message":"dialtone ready","http":"127.0.0.1:43211","sip":"127.0.0.1:40123"}}"#,
            "INFO dialtone ready http_max=9 http=127.0.0.1:43211 wssip=1.2.3.4:5 sip=127.0.0.1:40123",
        ] {
            assert_eq!(parse_ready(line), Some((http, sip)), "{line}");
        }
        assert_eq!(
            field_addr("ready http=[::1]:80", "http"),
            Some("[::1]:80".parse()?)
        );
        assert_eq!(parse_ready("dialtone ready http=127.0.0.1:1"), None);
        Ok(())
    }
}
