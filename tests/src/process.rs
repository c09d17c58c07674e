//! Child processes that are always stopped by PID, with their output captured for assertions.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// How long [`ChildGuard`]'s drop waits after SIGTERM before it sends SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Lines printed from a process log in error messages and panic reports.
const TAIL_LINES: usize = 40;

/// Poll interval for log and exit waits: short, so waits end promptly after the event.
const POLL: Duration = Duration::from_millis(20);

/// A position in a process log (its line count at some moment), to wait only for lines logged
/// after it. See [`ChildGuard::log_mark`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct LogMark(pub usize);

/// Captured output of one process: every line of stdout and stderr, in arrival order.
struct LogState {
    lines: Mutex<Vec<String>>,
    file: Mutex<File>,
    /// stdout/stderr readers still running; 0 once both pipes hit EOF.
    open_streams: AtomicUsize,
}

impl LogState {
    fn push(&self, line: String) {
        // Best effort: the in-memory copy is what assertions use; the file is for humans.
        let _ = writeln!(lock(&self.file), "{line}");
        lock(&self.lines).push(line);
    }
}

struct ChildState {
    child: Child,
    /// Set once the child has been reaped; after that its PID may belong to someone else and
    /// must never be signalled again.
    status: Option<ExitStatus>,
}

/// Owns a child process: captures its stdout and stderr (ANSI colours stripped) into memory and
/// into a log file, and stops it **by its PID** when dropped (SIGTERM, up to [`STOP_GRACE`],
/// then SIGKILL, then reaps it), also while a test panics.
///
/// Log patterns are plain substrings (no regex), matched line by line.
pub struct ChildGuard {
    name: String,
    pid: u32,
    state: Mutex<ChildState>,
    log: Arc<LogState>,
    log_path: PathBuf,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not make the guard unusable (it still has to stop the child).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ChildGuard {
    /// Spawns `cmd` (stdin closed, stdout and stderr captured) and writes its output to
    /// `log_path`. `name` labels the process in messages.
    pub fn spawn(name: &str, mut cmd: Command, log_path: &Path) -> anyhow::Result<ChildGuard> {
        let file = File::create(log_path)
            .with_context(|| format!("creating log file {}", log_path.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        let log = Arc::new(LogState {
            lines: Mutex::new(Vec::new()),
            file: Mutex::new(file),
            open_streams: AtomicUsize::new(0),
        });
        let streams: [Option<Box<dyn Read + Send>>; 2] = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ];
        let guard = ChildGuard {
            name: name.to_owned(),
            pid: child.id(),
            state: Mutex::new(ChildState {
                child,
                status: None,
            }),
            log: Arc::clone(&log),
            log_path: log_path.to_owned(),
        };
        for (stream, label) in streams.into_iter().zip(["stdout", "stderr"]) {
            let Some(stream) = stream else { continue };
            log.open_streams.fetch_add(1, Ordering::SeqCst);
            let thread_log = Arc::clone(&log);
            // Detached on purpose: a grandchild may hold the pipe open after the child is
            // gone, and the thread ends by itself at EOF.
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{label}"))
                .spawn(move || read_lines(stream, &thread_log));
            if let Err(e) = spawned {
                log.open_streams.fetch_sub(1, Ordering::SeqCst);
                // `guard` drops here and stops the child.
                return Err(e).context("spawning log reader thread");
            }
        }
        Ok(guard)
    }

    /// The label given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// OS process id of the child.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Path of the log file (all captured lines).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything logged so far, one line per captured line.
    pub fn log_text(&self) -> String {
        let lines = lock(&self.log.lines);
        let mut s = lines.join("\n");
        if !s.is_empty() {
            s.push('\n');
        }
        s
    }

    /// The last `n` lines logged.
    pub fn log_tail(&self, n: usize) -> String {
        let lines = lock(&self.log.lines);
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Number of lines logged so far that contain `pattern`.
    pub fn count_log(&self, pattern: &str) -> usize {
        lock(&self.log.lines)
            .iter()
            .filter(|l| l.contains(pattern))
            .count()
    }

    /// Marks the current end of the log, for [`ChildGuard::wait_for_log_since`].
    pub fn log_mark(&self) -> LogMark {
        LogMark(lock(&self.log.lines).len())
    }

    /// Waits until some line (logged at any time) contains `pattern`; returns that line.
    /// Fails at the deadline, or early if the process exits without logging it; the error
    /// includes the log tail.
    pub fn wait_for_log(&self, pattern: &str, timeout: Duration) -> anyhow::Result<String> {
        self.wait_for_log_since(LogMark(0), pattern, timeout)
    }

    /// Like [`ChildGuard::wait_for_log`], but only considers lines logged after `mark`.
    pub fn wait_for_log_since(
        &self,
        mark: LogMark,
        pattern: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        let mut next = mark.0;
        let mut exited_at: Option<(Instant, ExitStatus)> = None;
        loop {
            {
                let lines = lock(&self.log.lines);
                if let Some(line) = lines.iter().skip(next).find(|l| l.contains(pattern)) {
                    return Ok(line.clone());
                }
                next = next.max(lines.len());
            }
            if let Some((at, status)) = exited_at {
                // Give the readers a moment to drain the pipes before declaring it missing.
                let drained = self.log.open_streams.load(Ordering::SeqCst) == 0;
                if drained || at.elapsed() > Duration::from_secs(1) {
                    bail!(
                        "{} (pid {}) exited ({status}) without logging a line containing {pattern:?}\n{}",
                        self.name,
                        self.pid,
                        self.tail_report()
                    );
                }
            } else if let Some(status) = self.try_wait()? {
                exited_at = Some((Instant::now(), status));
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {} (pid {}) to log a line containing {pattern:?}\n{}",
                    self.name,
                    self.pid,
                    self.tail_report()
                );
            }
            std::thread::sleep(POLL.min(deadline - now));
        }
    }

    /// The last lines of the log with a header naming the full log file; for error messages.
    pub fn tail_report(&self) -> String {
        format!(
            "--- last {TAIL_LINES} lines of {} log ({}) ---\n{}\n--- end of {} log ---",
            self.name,
            self.log_path.display(),
            self.log_tail(TAIL_LINES),
            self.name
        )
    }

    /// The exit status if the child has exited (reaping it), `None` while it runs.
    pub fn try_wait(&self) -> anyhow::Result<Option<ExitStatus>> {
        let mut st = lock(&self.state);
        Self::try_reap(&mut st)
    }

    fn try_reap(st: &mut ChildState) -> anyhow::Result<Option<ExitStatus>> {
        if st.status.is_none() {
            st.status = st.child.try_wait().context("waiting for child")?;
        }
        Ok(st.status)
    }

    /// Waits (polling) until the child exits by itself. Its output is captured by then.
    pub fn wait_exit(&self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                self.drain_output();
                return Ok(status);
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "{} (pid {}) still running after {timeout:?}\n{}",
                    self.name,
                    self.pid,
                    self.tail_report()
                );
            }
            std::thread::sleep(POLL.min(deadline - now));
        }
    }

    /// After exit: gives the reader threads a moment to capture the last lines, so that log
    /// assertions right after a stop see everything. Bounded, since a grandchild may keep the
    /// pipes open.
    fn drain_output(&self) {
        let deadline = Instant::now() + Duration::from_millis(500);
        while self.log.open_streams.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `signal` to the child's PID unless it has already been reaped. Holding the state
    /// lock while signalling guarantees the PID still names our (possibly zombie) child.
    pub fn signal(&self, signal: i32) -> anyhow::Result<()> {
        let mut st = lock(&self.state);
        if Self::try_reap(&mut st)?.is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.pid).context("pid out of range")?;
        // SAFETY: plain syscall; `pid` is our unreaped child, so it cannot have been recycled.
        if unsafe { libc::kill(pid, signal) } != 0 {
            let err = std::io::Error::last_os_error();
            bail!("kill({pid}, {signal}) failed: {err}");
        }
        Ok(())
    }

    /// Graceful stop: SIGTERM, wait up to `grace`, then SIGKILL; always reaps the child.
    /// Returns its exit status (immediately if it had already exited).
    pub fn stop(&self, grace: Duration) -> anyhow::Result<ExitStatus> {
        self.stop_with(libc::SIGTERM, grace)
    }

    /// Like [`ChildGuard::stop`] with another first signal, for programs whose SIGTERM means
    /// something slower than "stop now" (the gateway drains on SIGTERM).
    pub fn stop_with(&self, signal: i32, grace: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        self.signal(signal)?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait()? {
                self.drain_output();
                return Ok(status);
            }
            std::thread::sleep(POLL);
        }
        eprintln!(
            "[dialtone-tests] {} (pid {}) ignored signal {signal} for {grace:?}; sending SIGKILL",
            self.name, self.pid
        );
        self.kill_hard()
    }

    /// SIGKILL by PID, then reap. Returns the exit status.
    pub fn kill_hard(&self) -> anyhow::Result<ExitStatus> {
        let mut st = lock(&self.state);
        if let Some(status) = Self::try_reap(&mut st)? {
            return Ok(status);
        }
        // std's Child::kill sends SIGKILL to this child's PID.
        st.child.kill().context("SIGKILL")?;
        let status = st.child.wait().context("reaping child")?;
        st.status = Some(status);
        drop(st);
        self.drain_output();
        Ok(status)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Err(e) = self.stop(STOP_GRACE) {
            eprintln!(
                "[dialtone-tests] stopping {} (pid {}) failed: {e:#}",
                self.name, self.pid
            );
        }
        if std::thread::panicking() {
            eprintln!("[dialtone-tests] test panicked; {}", self.tail_report());
        }
    }
}

fn read_lines(stream: Box<dyn Read + Send>, log: &LogState) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    buf.pop();
                }
                log.push(strip_ansi(&String::from_utf8_lossy(&buf)));
            }
        }
    }
    log.open_streams.fetch_sub(1, Ordering::SeqCst);
}

/// Removes ANSI escape sequences (colours), so patterns like `http=` match even if the process
/// ignores `NO_COLOR`.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'[') {
            chars.next();
            // CSI: parameters/intermediates until a final byte in '@'..='~'.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            chars.next();
        }
    }
    out
}

/// A peer run as a child process, whose log every test reads the same way.
pub trait Logged {
    fn process(&self) -> &ChildGuard;

    /// The whole log (stdout and stderr, ANSI colours stripped).
    fn log_text(&self) -> String {
        self.process().log_text()
    }

    /// See [`ChildGuard::wait_for_log`].
    fn wait_for_log(&self, pattern: &str, timeout: Duration) -> anyhow::Result<String> {
        self.process().wait_for_log(pattern, timeout)
    }

    /// See [`ChildGuard::wait_for_log_since`].
    fn wait_for_log_since(
        &self,
        mark: LogMark,
        pattern: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        self.process().wait_for_log_since(mark, pattern, timeout)
    }

    /// Marks the end of the log so far.
    fn log_mark(&self) -> LogMark {
        self.process().log_mark()
    }

    /// Lines containing `pattern`.
    fn count_log(&self, pattern: &str) -> usize {
        self.process().count_log(pattern)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_ansi_colours() {
        assert_eq!(
            strip_ansi("\x1b[2m2024\x1b[0m \x1b[32m INFO\x1b[0m http\x1b[2m=\x1b[0m1.2.3.4:5"),
            "2024  INFO http=1.2.3.4:5"
        );
    }

    #[test]
    fn captures_output_and_stops_by_pid() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo hello; echo oops >&2; exec sleep 600"]);
        let guard = ChildGuard::spawn("sh", cmd, &dir.path().join("sh.log"))?;
        let line = guard.wait_for_log("oops", Duration::from_secs(5))?;
        assert_eq!(line, "oops");
        guard.wait_for_log("hello", Duration::from_secs(5))?;
        assert_eq!(guard.count_log("o"), 2);
        let mark = guard.log_mark();
        assert!(guard
            .wait_for_log_since(mark, "hello", Duration::from_millis(100))
            .is_err());
        let pid = guard.pid();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        let status = guard.stop(STOP_GRACE)?;
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGTERM)
        );
        drop(guard);
        assert!(std::fs::read_to_string(dir.path().join("sh.log"))?.contains("hello\n"));
        Ok(())
    }

    #[test]
    fn early_exit_fails_fast() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo bye; exit 3"]);
        let guard = ChildGuard::spawn("sh", cmd, &dir.path().join("sh.log"))?;
        let start = Instant::now();
        let err = match guard.wait_for_log("never", Duration::from_secs(30)) {
            Ok(line) => bail!("unexpected match {line:?}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(start.elapsed() < Duration::from_secs(5), "{err}");
        assert!(err.contains("exited") && err.contains("bye"), "{err}");
        Ok(())
    }
}
