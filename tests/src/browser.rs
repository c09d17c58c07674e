//! Headless Chromium driven through Playwright, for end-to-end WebRTC tests.
//!
//! [`Browser::launch`] runs `node tests/browser/driver.js FAKE_MIC.wav`: the driver starts
//! `/usr/bin/chromium` (Debian package `chromium`) with a fresh temporary profile and fake media
//! devices (the microphone plays the given WAV in a loop; permission prompts are accepted;
//! loopback ICE candidates are allowed; audio autoplays), then obeys one JSON command per line
//! on stdin and answers one JSON line per command on stdout. `playwright-core` is pinned in
//! `tests/browser/package.json`; `scripts/test.sh` installs it (`npm ci`).
//!
//! The methods block the calling thread until the browser answers, each with a deadline
//! ([`CALL_TIMEOUT`], or a `wait_for`'s own timeout plus [`WAIT_SLACK`]), so a hung browser
//! fails the test instead of hanging it. They fit the rest of the rig (like
//! [`crate::Baresip`]'s waits): call them directly from a `#[test]`, or from a `#[tokio::test]`
//! when no task of the test itself has to run meanwhile (the gateway, Kamailio and Chromium
//! are other processes, so they keep running). When the test's own tasks must progress during a
//! long wait, move the browser into `tokio::task::spawn_blocking` (`Browser` is `Send`).
//!
//! Chromium also gathers the machine's non-loopback addresses as ICE candidates: run browser
//! tests inside [`crate::netns::in_private_netns`] so that only 127.0.0.1 exists.
//!
//! ```no_run
//! # fn demo(wav: &std::path::Path) -> anyhow::Result<()> {
//! use std::time::Duration;
//! use dialtone_tests::browser::Browser;
//! let mut browser = Browser::launch(wav)?;
//! browser.goto("http://127.0.0.1:8080/")?;
//! browser.fill("#number", "2000")?;
//! browser.click("#call")?;
//! let state = browser.wait_for("window.callState === 'up' && window.callState", Duration::from_secs(10))?;
//! assert_eq!(state, "up");
//! # Ok(()) }
//! ```
//!
//! The driver's stderr (its own messages, and the page's console lines and uncaught errors
//! prefixed `[page]`) goes to `browser.log` in the instance's temp dir; its tail is part of
//! every error and is printed when a test panics.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

/// The Chromium the driver starts (Debian package `chromium`).
pub const CHROMIUM_BIN: &str = "/usr/bin/chromium";

/// Deadline for Chromium to start and the driver to announce itself.
pub const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Deadline of one command (except [`Browser::wait_for`]).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Added to a [`Browser::wait_for`] timeout for the answer to arrive.
pub const WAIT_SLACK: Duration = Duration::from_secs(10);

/// How long dropping a [`Browser`] waits for the driver to close Chromium by itself (stdin
/// closed), and then again after SIGTERM, before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Log lines shown in errors and panic reports.
const TAIL_LINES: usize = 40;

const POLL: Duration = Duration::from_millis(20);

/// `tests/browser`: the driver script and its `package.json`.
pub fn driver_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// A headless Chromium with one page, driven over the driver's stdin/stdout. Dropping it closes
/// Chromium (the driver exits when its stdin closes) and stops the driver by PID if it lingers.
pub struct Browser {
    driver: Driver,
    replies: Receiver<String>,
    next_id: u64,
    version: String,
    log_path: PathBuf,
    dir: Option<tempfile::TempDir>,
}

impl Browser {
    /// Starts the driver and Chromium with `fake_audio_wav` as the microphone (a PCM WAV;
    /// Chromium loops it). Waits up to [`LAUNCH_TIMEOUT`] for Chromium to be up.
    pub fn launch(fake_audio_wav: &Path) -> anyhow::Result<Browser> {
        let driver_dir = driver_dir();
        let script = driver_dir.join("driver.js");
        if !driver_dir.join("node_modules/playwright-core").is_dir() {
            bail!(
                "{} is missing: run scripts/test.sh, or `npm ci` in {}",
                driver_dir.join("node_modules/playwright-core").display(),
                driver_dir.display()
            );
        }
        if !Path::new(CHROMIUM_BIN).is_file() {
            bail!("{CHROMIUM_BIN} not found: apt-get install chromium (or run scripts/test.sh)");
        }
        let wav = fake_audio_wav
            .canonicalize()
            .with_context(|| format!("fake microphone file {}", fake_audio_wav.display()))?;

        let dir = crate::instance_dir("dialtone-browser-")?;
        let log_path = dir.path().join("browser.log");
        let log = File::create(&log_path)
            .with_context(|| format!("creating log file {}", log_path.display()))?;
        let mut cmd = Command::new("node");
        cmd.arg(&script)
            .arg(&wav)
            .current_dir(&driver_dir)
            // Chromium's profile (and its other temp files) go under the instance dir, so
            // nothing is left in /tmp even if the driver is killed.
            .env("TMPDIR", dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {cmd:?} (apt-get install nodejs)"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        // From here on, dropping `driver` stops the process.
        let driver = Driver {
            child,
            stdin,
            status: None,
        };
        let Some(stdout) = stdout else {
            bail!("driver stdout not captured");
        };
        let (tx, replies) = mpsc::channel();
        // Detached: ends by itself at EOF, when the driver exits.
        std::thread::Builder::new()
            .name("browser-stdout".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .context("spawning browser reader thread")?;

        let mut browser = Browser {
            driver,
            replies,
            next_id: 1,
            version: String::new(),
            log_path,
            dir: Some(dir),
        };
        let ready = browser.await_reply(0, LAUNCH_TIMEOUT, "launch");
        match ready {
            Ok(value) => {
                browser.version = value
                    .get("version")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown")
                    .to_owned();
                Ok(browser)
            }
            Err(e) => {
                browser.stop();
                if let Some(dir) = browser.dir.take() {
                    crate::retain_dir(dir, "browser");
                }
                Err(e.context("Chromium did not start"))
            }
        }
    }

    /// Chromium's version, as reported by Playwright.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// OS process id of the driver (`node`); Chromium runs as its child.
    pub fn pid(&self) -> u32 {
        self.driver.child.id()
    }

    /// The instance's temp dir (holds `browser.log`; a handy place for screenshots).
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new("/"), |d| d.path())
    }

    /// The driver's log: its messages and the page's console output (`[page] ...`).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn tail_report(&self) -> String {
        format!(
            "--- last {TAIL_LINES} lines of browser log ({}) ---\n{}\n--- end of browser log ---",
            self.log_path.display(),
            self.log_tail(TAIL_LINES)
        )
    }

    /// Loads `url` in the page and waits for its `load` event.
    pub fn goto(&mut self, url: &str) -> anyhow::Result<()> {
        self.call("goto", json!({ "url": url }), CALL_TIMEOUT)
            .map(drop)
    }

    /// Evaluates the JavaScript expression `js` in the page (a promise is awaited) and returns
    /// its value as JSON (`undefined` and non-serialisable values give `null`). A thrown
    /// exception or rejected promise is an `Err` carrying its message.
    pub fn eval(&mut self, js: &str) -> anyhow::Result<Value> {
        self.call("eval", json!({ "js": js }), CALL_TIMEOUT)
    }

    /// Clicks the first element matching the Playwright `selector` (waiting for it to be
    /// visible, stable and enabled).
    pub fn click(&mut self, selector: &str) -> anyhow::Result<()> {
        self.call("click", json!({ "selector": selector }), CALL_TIMEOUT)
            .map(drop)
    }

    /// Replaces the value of the input matching `selector` with `text`.
    pub fn fill(&mut self, selector: &str, text: &str) -> anyhow::Result<()> {
        self.call(
            "fill",
            json!({ "selector": selector, "text": text }),
            CALL_TIMEOUT,
        )
        .map(drop)
    }

    /// Selects the option with value (or label) `value` in the `<select>` matching `selector`.
    pub fn select(&mut self, selector: &str, value: &str) -> anyhow::Result<()> {
        self.call(
            "select",
            json!({ "selector": selector, "value": value }),
            CALL_TIMEOUT,
        )
        .map(drop)
    }

    /// Evaluates the JavaScript expression `js` in the page every 50 ms (promises awaited, so
    /// `(async () => ...)()` works) until it is truthy and returns that value; an `Err` if
    /// `timeout` passes first (the message has the last value) or the expression throws.
    pub fn wait_for(&mut self, js: &str, timeout: Duration) -> anyhow::Result<Value> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.call(
            "waitFor",
            json!({ "js": js, "timeoutMs": timeout_ms }),
            timeout + WAIT_SLACK,
        )
    }

    /// Saves a PNG screenshot of the page's viewport to `path`.
    pub fn screenshot(&mut self, path: &Path) -> anyhow::Result<()> {
        let path = path
            .to_str()
            .with_context(|| format!("screenshot path {} is not UTF-8", path.display()))?;
        self.call("screenshot", json!({ "path": path }), CALL_TIMEOUT)
            .map(drop)
    }

    /// Closes Chromium and waits for the driver to exit; errors if it did not exit cleanly.
    /// (Dropping the browser does the same, without reporting.)
    pub fn close(mut self) -> anyhow::Result<()> {
        self.call("close", json!({}), CALL_TIMEOUT)?;
        let status = self.driver.wait_exit(STOP_GRACE + STOP_GRACE)?;
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => bail!("browser driver exited with {s}\n{}", self.tail_report()),
            None => bail!(
                "browser driver did not exit after close\n{}",
                self.tail_report()
            ),
        }
    }

    /// Sends one command and waits up to `timeout` for its answer.
    fn call(&mut self, cmd: &str, fields: Value, timeout: Duration) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = fields;
        msg["id"] = json!(id);
        msg["cmd"] = json!(cmd);
        let what = describe(&msg);
        let mut line = msg.to_string();
        line.push('\n');
        let sent = match self.driver.stdin.as_mut() {
            Some(stdin) => stdin
                .write_all(line.as_bytes())
                .and_then(|()| stdin.flush()),
            None => Err(std::io::Error::other("driver stdin closed")),
        };
        if let Err(e) = sent {
            bail!(
                "sending {what} to the browser driver failed ({e}); driver status: {}\n{}",
                self.driver.status_text(),
                self.tail_report()
            );
        }
        self.await_reply(id, timeout, &what)
    }

    /// Waits for the reply with `id`; skips late replies to earlier (timed out) commands.
    fn await_reply(&mut self, id: u64, timeout: Duration, what: &str) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.replies.recv_timeout(left) {
                Ok(line) => line,
                Err(RecvTimeoutError::Timeout) => bail!(
                    "browser: no answer to {what} within {timeout:?}\n{}",
                    self.tail_report()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    // EOF on stdout: the driver is exiting; let it finish for the status.
                    let _ = self.driver.wait_exit(Duration::from_secs(2));
                    bail!(
                        "browser driver ended ({}) before answering {what}\n{}",
                        self.driver.status_text(),
                        self.tail_report()
                    )
                }
            };
            let reply: Value = match serde_json::from_str(&line) {
                Ok(v) => v,
                Err(e) => bail!(
                    "browser driver wrote a non-JSON line ({e}) while awaiting {what}: {line:?}"
                ),
            };
            match reply.get("id").and_then(Value::as_u64) {
                Some(got) if got == id => {}
                Some(got) if got < id => continue,
                _ => bail!("browser driver answered {what} with unexpected reply {line}"),
            }
            if reply.get("ok").and_then(Value::as_bool) == Some(true) {
                return Ok(reply.get("value").cloned().unwrap_or(Value::Null));
            }
            let error = reply
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("(no error message)");
            bail!("browser {what} failed: {error}");
        }
    }

    /// Closes stdin (the driver then closes Chromium and exits), then SIGTERM and SIGKILL by
    /// PID if it lingers; always reaps it.
    fn stop(&mut self) {
        if let Err(e) = self.driver.stop() {
            eprintln!(
                "[dialtone-tests] stopping browser driver (pid {}) failed: {e:#}",
                self.pid()
            );
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("[dialtone-tests] test panicked; {}", self.tail_report());
        }
        if let Some(dir) = self.dir.take() {
            if crate::keep_artifacts() {
                crate::retain_dir(dir, "browser");
            }
        }
    }
}

/// A command for messages: its name and a short form of its arguments.
fn describe(msg: &Value) -> String {
    let mut s = msg.to_string();
    if s.len() > 300 {
        let cut = (0..=300)
            .rev()
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(0);
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// The driver process with its stdin. Signals go to its PID only while it is unreaped, so the
/// PID cannot belong to another process.
struct Driver {
    child: Child,
    stdin: Option<ChildStdin>,
    status: Option<ExitStatus>,
}

impl Driver {
    fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .context("waiting for browser driver")?;
        }
        Ok(self.status)
    }

    /// Polls for exit up to `timeout`; `None` if still running.
    fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            std::thread::sleep(POLL.min(deadline - now));
        }
    }

    fn status_text(&mut self) -> String {
        match self.try_wait() {
            Ok(Some(s)) => format!("exited: {s}"),
            Ok(None) => "still running".to_owned(),
            Err(e) => format!("unknown: {e:#}"),
        }
    }

    fn signal(&mut self, signal: i32) -> anyhow::Result<()> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: plain syscall; `pid` is our unreaped child, so it cannot have been recycled.
        if unsafe { libc::kill(pid, signal) } != 0 {
            let err = std::io::Error::last_os_error();
            bail!("kill({pid}, {signal}) failed: {err}");
        }
        Ok(())
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        // EOF on stdin: the driver closes Chromium (removing its profile) and exits.
        drop(self.stdin.take());
        if self.wait_exit(STOP_GRACE)?.is_some() {
            return Ok(());
        }
        self.signal(libc::SIGTERM)?;
        if self.wait_exit(STOP_GRACE)?.is_some() {
            return Ok(());
        }
        self.signal(libc::SIGKILL)?;
        self.status = Some(self.child.wait().context("reaping browser driver")?);
        Ok(())
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!(
                "[dialtone-tests] stopping browser driver (pid {}) failed: {e:#}",
                self.child.id()
            );
        }
    }
}
