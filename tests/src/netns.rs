//! Running one test inside a private network namespace that has only `lo` (127.0.0.1, ::1).
//!
//! Chromium gathers ICE candidates on every interface of the machine; a test that drives it
//! must not send media anywhere but 127.0.0.1. [`in_private_netns`] re-executes the current
//! test binary, for just that one test, under `unshare -n` with only `lo` up. The **whole
//! test** then runs in the namespace — the gateway, Kamailio, baresip, Chromium and the test's
//! own sockets — so 127.0.0.1 there is private to the test: nothing else on the machine can
//! reach it, and it cannot reach anything else.
//!
//! ```no_run
//! use dialtone_tests::netns;
//!
//! #[test]
//! fn browser_calls_baresip() {
//!     if !netns::in_private_netns("browser_calls_baresip") {
//!         return; // the test ran (and passed) in the namespace
//!     }
//!     // ... the test body, now inside the namespace ...
//! }
//! ```
//!
//! `#[tokio::test] async fn` works the same way (the outer run blocks its runtime while the
//! inner one runs, which is fine since it does nothing else). The name is the test's path as
//! libtest prints it (`module::name` for a test inside a module).
//!
//! Needs root for `unshare -n`, or else unprivileged user namespaces (`unshare -r -n` is used
//! then). Packages: `util-linux` (unshare) and `iproute2` (ip).

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// Set (to `1`) in the re-executed test binary.
pub const ENV_IN_NETNS: &str = "DIALTONE_IN_NETNS";

/// Overall deadline of the inner run, in seconds (default [`DEFAULT_TIMEOUT`]).
pub const ENV_TIMEOUT_SECS: &str = "DIALTONE_NETNS_TIMEOUT_SECS";

/// Deadline of the inner run unless [`ENV_TIMEOUT_SECS`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Output lines repeated in the panic message.
const TAIL_LINES: usize = 60;

/// Grace after SIGTERM before SIGKILL when the inner run has to be stopped.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Whether the caller should run the test body now.
///
/// Inside the namespace (env [`ENV_IN_NETNS`]`=1`) it checks that the namespace really has no
/// interface but `lo` and returns `true`. Outside, it runs the test binary again for
/// `test_name` only (`--exact --include-ignored --nocapture --test-threads=1`) under
/// `unshare -n`, printing its output as it comes, and returns `false` once that run passed;
/// it panics with the tail of the output if the run failed, did not report exactly
/// `1 passed`, or outlived its deadline ([`DEFAULT_TIMEOUT`], env [`ENV_TIMEOUT_SECS`]).
///
/// The inner run is its own process group, stopped by its PID (SIGTERM, then SIGKILL to that
/// group) when the deadline passes or the outer test thread panics, and it gets SIGTERM if the
/// outer test process dies.
pub fn in_private_netns(test_name: &str) -> bool {
    if std::env::var(ENV_IN_NETNS).is_ok_and(|v| v == "1") {
        if let Err(e) = check_private() {
            panic!("{ENV_IN_NETNS}=1 but not in a private network namespace: {e:#}");
        }
        return true;
    }
    if let Err(e) = run_inner(test_name) {
        panic!("test {test_name} in a private network namespace: {e:#}");
    }
    false
}

/// Fails unless `lo` is the only network interface of this process's namespace.
fn check_private() -> anyhow::Result<()> {
    // /proc/self/net follows the calling process's namespace (/sys/class/net does not).
    let dev =
        std::fs::read_to_string("/proc/self/net/dev").context("reading /proc/self/net/dev")?;
    let ifaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    anyhow::ensure!(ifaces == ["lo"], "interfaces: {ifaces:?}");
    Ok(())
}

fn timeout() -> anyhow::Result<Duration> {
    match std::env::var(ENV_TIMEOUT_SECS) {
        Ok(v) => Ok(Duration::from_secs(v.trim().parse().with_context(
            || format!("{ENV_TIMEOUT_SECS}={v:?} is not a number"),
        )?)),
        Err(_) => Ok(DEFAULT_TIMEOUT),
    }
}

fn run_inner(test_name: &str) -> anyhow::Result<()> {
    let timeout = timeout()?;
    let exe = std::env::current_exe().context("locating the test binary")?;
    let mut cmd = Command::new("unshare");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // Not root: a user namespace mapping us to root grants the network namespace.
        cmd.arg("-r");
    }
    cmd.args([
        "-n",
        "--",
        "sh",
        "-c",
        r#"ip link set lo up && exec "$0" "$@""#,
    ])
    .arg(&exe)
    .args([
        test_name,
        "--exact",
        "--include-ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ENV_IN_NETNS, "1")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    {
        use std::os::unix::process::CommandExt as _;
        // Own process group, so that stopping it reaches the processes the inner test started
        // even if it dies before its guards run.
        cmd.process_group(0);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // SIGTERM to the inner run if the outer test's thread goes away.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("spawning {cmd:?} (apt-get install util-linux iproute2)"))?;
    let mut inner = Inner {
        child,
        exited: false,
    };

    let (tx, rx) = mpsc::channel::<String>();
    let streams: [Option<Box<dyn Read + Send>>; 2] = [
        inner
            .child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        inner
            .child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ];
    for (stream, label) in streams.into_iter().zip(["stdout", "stderr"]) {
        let Some(stream) = stream else { continue };
        let tx = tx.clone();
        std::thread::Builder::new()
            .name(format!("netns-{label}"))
            .spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut buf = Vec::new();
                while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                    let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                    buf.clear();
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .context("spawning output reader")?;
    }
    drop(tx);

    let deadline = Instant::now() + timeout;
    let mut lines: Vec<String> = Vec::new();
    let mut status: Option<ExitStatus> = None;
    let mut exited_at: Option<Instant> = None;
    loop {
        // Output ends when every holder of the pipes is gone; the exit status is checked too,
        // since a leftover grandchild could keep the pipes open after the inner run ended.
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                println!("[netns] {line}");
                lines.push(line);
            }
            Err(RecvTimeoutError::Disconnected) => {
                if status.is_none() {
                    status = inner.wait_deadline(deadline)?;
                }
                break;
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        if status.is_none() {
            status = inner.try_exited()?;
            if status.is_some() {
                exited_at = Some(Instant::now());
            }
        }
        if exited_at.is_some_and(|at| at.elapsed() > Duration::from_secs(2)) {
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    // Stops leftovers in the group, and the inner run itself after a timeout.
    drop(inner);
    let tail = {
        let from = lines.len().saturating_sub(TAIL_LINES);
        lines[from..].join("\n")
    };
    let Some(status) = status else {
        anyhow::bail!("still running after {timeout:?}; stopped. Output tail:\n{tail}");
    };
    anyhow::ensure!(
        status.success(),
        "the inner run failed ({status}). Output tail:\n{tail}"
    );
    anyhow::ensure!(
        lines
            .iter()
            .any(|l| l.contains("test result: ok. 1 passed;")),
        "the inner run did not report exactly 1 passed test (is {test_name:?} the exact test \
         name?). Output tail:\n{tail}"
    );
    Ok(())
}

/// The inner run: leader of its own process group (pgid == its pid).
struct Inner {
    child: Child,
    /// Reaped: its PID (and group id) may now name something else.
    exited: bool,
}

impl Inner {
    fn pid(&self) -> libc::pid_t {
        // PIDs fit in pid_t on Linux; 0 (never a valid child) makes the callers do nothing.
        libc::pid_t::try_from(self.child.id()).unwrap_or(0)
    }

    /// Whether the leader has ended, observed with `WNOWAIT`: it stays an unreaped zombie, so
    /// its PID and group id stay ours until [`Inner::reap`].
    fn leader_ended(&self) -> anyhow::Result<bool> {
        let pid = self.pid();
        if self.exited || pid <= 0 {
            return Ok(true);
        }
        // SAFETY: zeroed siginfo_t is a valid out-parameter for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: plain syscall on our own child.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("waitid on the inner run");
        }
        // SAFETY: waitid filled `info`; si_pid is 0 while the child still runs.
        Ok(unsafe { info.si_pid() } != 0)
    }

    /// The exit status once the leader has ended: whatever it left in its group is killed
    /// first (while the zombie leader still holds the group id), then it is reaped.
    /// Call only while not yet `exited`.
    fn try_exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        anyhow::ensure!(!self.exited, "the inner run was already reaped");
        if !self.leader_ended()? {
            return Ok(None);
        }
        self.kill_group_leftovers();
        self.reap().map(Some)
    }

    fn reap(&mut self) -> anyhow::Result<ExitStatus> {
        let status = self.child.wait().context("reaping the inner run")?;
        self.exited = true;
        Ok(status)
    }

    /// Waits until the inner run exits or `deadline` passes.
    fn wait_deadline(&mut self, deadline: Instant) -> anyhow::Result<Option<ExitStatus>> {
        loop {
            if let Some(status) = self.try_exited()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL to whatever is left in the group besides the (zombie) leader: processes the
    /// inner test failed to stop. Only while the leader is unreaped, so the group id is ours.
    fn kill_group_leftovers(&self) {
        let pid = self.pid();
        if self.exited || pid <= 0 {
            return;
        }
        let left = group_members(pid);
        if left.is_empty() {
            return;
        }
        eprintln!(
            "[dialtone-tests] the netns test left processes {left:?} in its group {pid}: killing them"
        );
        // SAFETY: plain syscall on our own (zombie-led) process group.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let pid = self.pid();
        if self.exited || pid <= 0 {
            return;
        }
        // Still running (deadline passed, or the outer test is panicking): SIGTERM to the
        // group (the inner test binary and the peers it started, which then close their own
        // children), up to STOP_GRACE for all of them to end, then SIGKILL to what is left.
        // SAFETY: the leader is our unreaped child, so the group id cannot have been recycled.
        unsafe {
            libc::kill(-pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            let ended = self.leader_ended().unwrap_or(true);
            if ended && group_members(pid).is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !self.leader_ended().unwrap_or(true) {
            // SAFETY: as above.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        self.kill_group_leftovers();
        let _ = self.reap();
    }
}

/// PIDs of the processes in process group `pgid` other than its leader (from /proc).
fn group_members(pgid: libc::pid_t) -> Vec<libc::pid_t> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|&p| p != pgid)
        .filter(|&p| {
            // Fields after the parenthesised command name: state, ppid, pgrp, ...
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(2)?.parse().ok())
                    == Some(pgid)
            })
        })
        .collect()
}

/// A second network namespace beside the test's private one, joined to it by a veth pair:
/// a host on a network of its own (`10.0.0.0/24` here, private to the two namespaces), for
/// what crosses a real interface rather than `lo`. Made inside [`in_private_netns`] only, so
/// that nothing of it is seen outside the test. Its namespace lives as long as a `sleep`
/// holding it, stopped by its PID when the neighbour is dropped; the veth pair goes with it.
pub struct Neighbour {
    holder: crate::process::ChildGuard,
    _logs: tempfile::TempDir,
    pub address: std::net::Ipv4Addr,
    pub our_address: std::net::Ipv4Addr,
}

impl Neighbour {
    /// Our end `veth-near` gets `our_address`/24, theirs `address`/24; both up.
    pub fn create(
        our_address: std::net::Ipv4Addr,
        address: std::net::Ipv4Addr,
    ) -> anyhow::Result<Neighbour> {
        anyhow::ensure!(
            std::env::var(ENV_IN_NETNS).as_deref() == Ok("1"),
            "a neighbour is made inside the test's private namespace only"
        );
        let logs = tempfile::tempdir()?;
        let mut holder = Command::new("unshare");
        holder.args(["-n", "sleep", "3600"]);
        let holder = crate::process::ChildGuard::spawn(
            "netns holder",
            holder,
            &logs.path().join("holder.log"),
        )?;
        let pid = holder.pid().to_string();
        // The holder's namespace exists once unshare has exec'd sleep.
        crate::wait::wait_until(Duration::from_secs(5), || {
            let ours = std::fs::read_link("/proc/self/ns/net")?;
            let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net"))?;
            let command = std::fs::read_to_string(format!("/proc/{pid}/comm"))?;
            Ok(ours != theirs && command.trim() == "sleep")
        })?;
        let ip = |args: &[&str]| -> anyhow::Result<()> {
            let status = Command::new("ip").args(args).status().context("ip")?;
            anyhow::ensure!(status.success(), "ip {args:?}: {status}");
            Ok(())
        };
        let inside = |args: &[&str]| -> anyhow::Result<()> {
            let status = Command::new("nsenter")
                .args(["-t", &pid, "-n", "ip"])
                .args(args)
                .status()
                .context("nsenter")?;
            anyhow::ensure!(status.success(), "ip {args:?} in the neighbour: {status}");
            Ok(())
        };
        ip(&[
            "link",
            "add",
            "veth-near",
            "type",
            "veth",
            "peer",
            "name",
            "veth-far",
            "netns",
            &pid,
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{our_address}/24"),
            "dev",
            "veth-near",
        ])?;
        ip(&["link", "set", "veth-near", "up"])?;
        inside(&["addr", "add", &format!("{address}/24"), "dev", "veth-far"])?;
        inside(&["link", "set", "veth-far", "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(Neighbour {
            holder,
            _logs: logs,
            address,
            our_address,
        })
    }

    /// A UDP socket of the neighbour's, bound to its address: made on a thread that enters
    /// the neighbour's namespace for the bind alone (a socket stays in the namespace it was
    /// made in).
    pub fn udp_socket(&self) -> anyhow::Result<std::net::UdpSocket> {
        let path = format!("/proc/{}/ns/net", self.holder.pid());
        let address = self.address;
        std::thread::spawn(move || -> anyhow::Result<std::net::UdpSocket> {
            let namespace = std::fs::File::open(&path).with_context(|| path.clone())?;
            // SAFETY: setns on a namespace file descriptor; it changes only this thread,
            // which ends after the bind.
            let entered = unsafe {
                libc::setns(
                    std::os::fd::AsRawFd::as_raw_fd(&namespace),
                    libc::CLONE_NEWNET,
                )
            };
            anyhow::ensure!(entered == 0, "setns: {}", std::io::Error::last_os_error());
            let socket = std::net::UdpSocket::bind((address, 0))?;
            socket.set_nonblocking(true)?;
            Ok(socket)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
    }
}
