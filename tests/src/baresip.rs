//! A private baresip 1.0 softphone per test: a real SIP peer that registers at the rig's
//! Kamailio, calls and answers, plays a WAV file and records what it hears.
//!
//! The config is `tests/rig/baresip/config` + `accounts` (compiled in), filled per instance
//! and written to a temp dir (`baresip -f DIR`). Everything is on 127.0.0.1 in one block of
//! [`PORT_BLOCK`] free ports ([`crate::ports::free_port_block`]): SIP (UDP+TCP), SIP/TLS on
//! SIP + 1 (baresip 1.0 always opens it), ctrl_tcp, cons, and [`RTP_PORTS`] ports for RTP/RTCP.
//!
//! Control and events go over baresip's `ctrl_tcp` module: netstring-framed JSON
//! (`LEN:{...},`). Commands are `{"command":"dial","params":"sip:..","token":"rigN"}`, answered
//! by `{"response":true,"ok":true,"data":"..","token":"rigN"}`. Events look like
//! `{"event":true,"type":"CALL_ESTABLISHED","class":"call","accountaor":"sip:1001@127.0.0.1:5060",
//! "direction":"outgoing","peeruri":"sip:2000@127.0.0.1:5060","id":"b10b8f12f1083ec1",
//! "param":"sip:2000@127.0.0.1:5060"}` (see [`Baresip::events`] for the types seen).
//! ctrl_tcp serves one connection at a time and drops the older one when another client
//! connects: don't point `bsctl.py` at a rig instance.
//!
//! Quirks of baresip 1.0 worth knowing:
//! - the `aufile` source needs 16-bit PCM WAV and does not loop: when the file ends the call is
//!   hung up (event `AUDIO_ERROR` `"0,end of file"`, then `CALL_CLOSED` `"end of file"`), so the
//!   source must be longer than the call (default: a [`DEFAULT_TONE_SECONDS`] s tone);
//! - `CALL_INCOMING` is only emitted when the account does not auto-answer;
//! - registration at startup usually completes before the ctrl_tcp connection is accepted, so
//!   its `REGISTER_OK` event is often missed: readiness also accepts the log line;
//! - it sends DTMF only as RFC 4733 events (`sndcode`); received RFC 4733 and SIP INFO
//!   (`application/dtmf-relay`) DTMF both produce `CALL_DTMF_START` events (RFC 4733 also
//!   `CALL_DTMF_END`);
//! - its DNS client binds two ephemeral UDP sockets on the wildcard address (not
//!   configurable); nothing is sent from them on loopback-only tests.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use crate::process::{ChildGuard, Logged};

/// The config templates (committed at `tests/rig/baresip/`).
const CONFIG_TEMPLATE: &str = include_str!("../rig/baresip/config");
const ACCOUNTS_TEMPLATE: &str = include_str!("../rig/baresip/accounts");

/// The baresip binary (Debian package `baresip-core`, version 1.0).
pub const BARESIP_BIN: &str = "/usr/bin/baresip";

/// Deadline for baresip to accept the ctrl_tcp connection and, with an account, register.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one connect to ctrl_tcp may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Deadline for the response to one ctrl_tcp command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`Baresip::stop`] waits after `quit` before signalling, and after SIGTERM before
/// SIGKILL. `quit` and SIGTERM normally take well under a second (un-REGISTER included).
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// Registration interval (seconds) of rig accounts: short, so a refresh is seen in tests that
/// run a minute, but far above any test's waits.
pub const REGINT: u32 = 60;

/// Default audio source: a tone of this frequency...
pub const DEFAULT_TONE_HZ: f64 = 440.0;
/// ...this long (calls end when the file does: pass a longer file for longer calls)...
pub const DEFAULT_TONE_SECONDS: f64 = 30.0;
/// ...at this sample rate (mono, 16-bit), matching G.711.
pub const DEFAULT_TONE_RATE: u32 = 8000;

/// Ports per instance: SIP, SIP/TLS (SIP + 1), ctrl_tcp, cons, then [`RTP_PORTS`].
pub const PORT_BLOCK: u16 = 4 + RTP_PORTS;

/// RTP/RTCP ports per instance (`rtp_ports`), room for several calls. baresip picks a random
/// even port in the range for RTP and the next one for RTCP, retrying on bind failures. The
/// range is free when the instance starts ([`crate::ports::free_port_block`]) but not
/// reserved: a process outside the rig could bind one of them meanwhile; baresip then retries
/// another port, and only a fully taken range would fail a call.
pub const RTP_PORTS: u16 = 20;

/// Longest netstring accepted from ctrl_tcp (a reply to `help` or `reginfo` is a few KB).
const MAX_NETSTRING: usize = 16 * 1024 * 1024;

/// The account an instance uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaresipAccount {
    pub user: String,
    pub password: String,
    /// The registrar (the rig's Kamailio), also the account's domain: calls to
    /// `sip:<user>@<registrar>` reach this instance once registered.
    pub registrar: SocketAddr,
}

impl BaresipAccount {
    /// One of the rig Kamailio's users ([`crate::kamailio::password_for`]), e.g. `"1001"`.
    pub fn rig_user(user: &str, registrar: SocketAddr) -> anyhow::Result<BaresipAccount> {
        let password = crate::kamailio::password_for(user)
            .with_context(|| format!("{user:?} is not a user of the rig's Kamailio"))?;
        Ok(BaresipAccount {
            user: user.to_owned(),
            password,
            registrar,
        })
    }
}

/// How to configure a [`Baresip`] instance.
#[derive(Debug, Clone)]
pub struct BaresipOptions {
    /// Register at a registrar with this account. `None`: an unregistered account with user
    /// `baresip` on the instance's own address, which answers calls sent straight to
    /// [`Baresip::sip_uri`] and can dial any URI (through Kamailio without a challenge, as
    /// Kamailio only challenges its known users).
    pub account: Option<BaresipAccount>,
    /// Answer incoming calls at once (`answermode=auto`); otherwise they ring until
    /// [`Baresip::accept`] (`answermode=manual`).
    pub auto_answer: bool,
    /// A 16-bit PCM WAV file to send in calls. `None`: a [`DEFAULT_TONE_SECONDS`] s
    /// [`DEFAULT_TONE_HZ`] Hz tone generated into the temp dir (see [`crate::audio::tone_wav`]
    /// to make another one).
    pub audio_source: Option<PathBuf>,
    /// Audio codecs offered and accepted, in order (the account's `audio_codecs=`); the G.711
    /// and Opus modules are loaded, so `PCMU`, `PCMA` and/or `opus/48000/2`.
    pub codecs: Vec<String>,
    /// Record every call with the `sndfile` module into [`Baresip::rec_dir`]: per call
    /// `dump-<timestamp>-dec.wav` (what it heard, decoded from the peer's RTP) and
    /// `dump-<timestamp>-enc.wav` (what it sent, before encoding).
    pub record: bool,
    /// The account's `mediaenc`: `srtp-mand` makes it offer and insist on RTP/SAVP with
    /// SDES keys (the `srtp` module is always loaded). `None`: plain RTP.
    pub media_encryption: Option<String>,
}

impl Default for BaresipOptions {
    /// No account, manual answer, default tone, PCMU+PCMA, no recording.
    fn default() -> Self {
        BaresipOptions {
            account: None,
            auto_answer: false,
            audio_source: None,
            codecs: vec!["PCMU".to_owned(), "PCMA".to_owned()],
            record: false,
            media_encryption: None,
        }
    }
}

/// Position in an instance's event list, for [`Baresip::wait_event_since`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct EventMark(pub usize);

/// A running baresip with an open ctrl_tcp connection; stopped on drop (`quit`, then SIGTERM,
/// then SIGKILL, by PID).
pub struct Baresip {
    guard: ChildGuard,
    ctrl: Ctrl,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    rec_dir: PathBuf,
    user: String,
    aor: String,
    sip_port: u16,
    ctrl_port: u16,
    rtp_ports: (u16, u16),
    /// Per event type, the index after the last event returned by a `wait_*` convenience.
    cursors: Mutex<HashMap<&'static str, usize>>,
    stopped: bool,
    keep_dir: bool,
}

impl Baresip {
    /// Writes the config into a fresh temp dir, starts baresip, connects to ctrl_tcp and, with
    /// an account, waits until it has registered (up to [`READY_TIMEOUT`]; the error has the
    /// log tail).
    ///
    /// baresip 1.0 has been seen (once, on CI) to die right after opening ctrl_tcp, before any
    /// call: such a start is reported on stderr and tried once more.
    pub fn start(opts: BaresipOptions) -> anyhow::Result<Baresip> {
        match Self::start_once(opts.clone()) {
            Err(e) if e.downcast_ref::<StartupCrash>().is_some() => {
                eprintln!("[dialtone-tests] baresip died starting up, starting it again: {e:#}");
                Self::start_once(opts)
            }
            started => started,
        }
    }

    fn start_once(opts: BaresipOptions) -> anyhow::Result<Baresip> {
        if !Path::new(BARESIP_BIN).exists() {
            bail!("{BARESIP_BIN} not found: install baresip 1.0 (apt-get install baresip-core)");
        }
        if opts.codecs.is_empty() {
            bail!("BaresipOptions::codecs is empty");
        }
        let dir = crate::instance_dir("baresip-")?;
        let dir_path = dir.path().to_owned();
        let rec_dir = dir_path.join("rec");
        std::fs::create_dir(&rec_dir).context("creating rec dir")?;
        let source = match &opts.audio_source {
            Some(path) => {
                if !path.is_file() {
                    bail!("audio source {} does not exist", path.display());
                }
                path.clone()
            }
            None => {
                let path = dir_path.join("tone.wav");
                crate::audio::tone_wav(
                    &path,
                    DEFAULT_TONE_HZ,
                    DEFAULT_TONE_SECONDS,
                    DEFAULT_TONE_RATE,
                )?;
                path
            }
        };

        let base = crate::ports::free_port_block(PORT_BLOCK);
        let ports = Ports {
            sip: base,
            ctrl: base + 2,
            cons: base + 3,
            rtp: (base + 4, base + PORT_BLOCK - 1),
        };
        let (user, domain, password, regint) = match &opts.account {
            Some(a) => (
                a.user.clone(),
                a.registrar.to_string(),
                a.password.clone(),
                REGINT,
            ),
            None => (
                "baresip".to_owned(),
                format!("127.0.0.1:{}", ports.sip),
                "none".to_owned(),
                0,
            ),
        };
        let config = render(
            CONFIG_TEMPLATE,
            &[
                ("SIP_PORT", ports.sip.to_string()),
                ("CTRL_PORT", ports.ctrl.to_string()),
                ("CONS_PORT", ports.cons.to_string()),
                ("RTP_MIN", ports.rtp.0.to_string()),
                ("RTP_MAX", ports.rtp.1.to_string()),
                ("AUDIO_SOURCE", path_str(&source)?.to_owned()),
                ("REC_DIR", path_str(&rec_dir)?.to_owned()),
                (
                    "SNDFILE_MODULE",
                    if opts.record {
                        "module\t\t\tsndfile.so".to_owned()
                    } else {
                        "# (sndfile not loaded: record is off)".to_owned()
                    },
                ),
            ],
        )?;
        let accounts = render(
            ACCOUNTS_TEMPLATE,
            &[
                ("USER", user.clone()),
                ("DOMAIN", domain.clone()),
                ("PASSWORD", password),
                (
                    "ANSWERMODE",
                    if opts.auto_answer { "auto" } else { "manual" }.to_owned(),
                ),
                ("REGINT", regint.to_string()),
                ("CODECS", opts.codecs.join(",")),
                (
                    "MEDIAENC",
                    opts.media_encryption
                        .as_ref()
                        .map(|mode| format!(";mediaenc={mode}"))
                        .unwrap_or_default(),
                ),
            ],
        )?;
        std::fs::write(dir_path.join("config"), config).context("writing baresip config")?;
        std::fs::write(dir_path.join("accounts"), accounts).context("writing baresip accounts")?;

        let mut cmd = Command::new(BARESIP_BIN);
        cmd.arg("-f").arg(&dir_path).current_dir(&dir_path);
        let guard = ChildGuard::spawn("baresip", cmd, &dir_path.join("baresip.log"))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        let ctrl = match Ctrl::connect(&guard, ports.ctrl, &dir_path, deadline) {
            Ok(ctrl) => ctrl,
            Err(e) => {
                // The error names the log file: keep it for the post-mortem.
                crate::retain_dir(dir, "baresip");
                return Err(e);
            }
        };
        let mut bs = Baresip {
            guard,
            ctrl,
            dir: Some(dir),
            dir_path,
            rec_dir,
            aor: format!("sip:{user}@{domain}"),
            user,
            sip_port: ports.sip,
            ctrl_port: ports.ctrl,
            rtp_ports: ports.rtp,
            cursors: Mutex::new(HashMap::new()),
            stopped: false,
            keep_dir: false,
        };
        if opts.account.is_some() {
            if let Err(e) = bs.wait_registered(deadline) {
                bs.keep_dir = true;
                return Err(e);
            }
        }
        Ok(bs)
    }

    fn wait_registered(&self, deadline: Instant) -> anyhow::Result<()> {
        loop {
            let ours = |e: &Value| e["accountaor"].as_str() == Some(self.aor.as_str());
            let events = self.events();
            if events.iter().any(|e| ours(e) && e["type"] == "REGISTER_OK") {
                return Ok(());
            }
            if let Some(fail) = events
                .iter()
                .find(|e| ours(e) && e["type"] == "REGISTER_FAIL")
            {
                bail!(
                    "baresip {} failed to register: {fail}\n{}",
                    self.aor,
                    self.guard.tail_report()
                );
            }
            // Log: `2000@127.0.0.1: {0/UDP/v4} 200 OK (kamailio ...) [1 binding]` on success,
            // `reg: sip:2000@127.0.0.1:5060: 401 Unauthorized (...)` on failure.
            let log = self.guard.log_text();
            if log.lines().any(|l| l.contains("{0/UDP/v4} 200 OK")) {
                return Ok(());
            }
            if let Some(line) = log.lines().find(|l| l.starts_with("reg: ")) {
                bail!(
                    "baresip {} failed to register: {line}\n{}",
                    self.aor,
                    self.guard.tail_report()
                );
            }
            if let Some(status) = self.guard.try_wait()? {
                bail!(
                    "baresip exited ({status}) before registering\n{}",
                    self.guard.tail_report()
                );
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "baresip {} did not register within {READY_TIMEOUT:?}\n{}",
                    self.aor,
                    self.guard.tail_report()
                );
            }
            self.ctrl
                .wait_change(Duration::from_millis(20).min(deadline - now));
        }
    }

    /// `127.0.0.1:<sip port>` (UDP and TCP).
    pub fn sip_addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.sip_port))
    }

    /// `sip:<user>@127.0.0.1:<sip port>`: calls sent straight to this URI reach this instance
    /// (baresip 1.0 answers only R-URI users of its account; others get 404).
    pub fn sip_uri(&self) -> String {
        format!("sip:{}@{}", self.user, self.sip_addr())
    }

    /// The account's address of record, e.g. `sip:1001@127.0.0.1:5060` (the `accountaor`
    /// of its events).
    pub fn aor(&self) -> &str {
        &self.aor
    }

    /// The account's user (`baresip` without an account).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The ctrl_tcp port.
    pub fn ctrl_port(&self) -> u16 {
        self.ctrl_port
    }

    /// The RTP port range (inclusive) given to this instance.
    pub fn rtp_ports(&self) -> (u16, u16) {
        self.rtp_ports
    }

    /// OS process id.
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// The instance's temp dir (config, accounts, `baresip.log`, `events.jsonl`: every ctrl_tcp
    /// message received, one JSON per line; `rec/`).
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    /// Where `sndfile` writes recordings (empty unless [`BaresipOptions::record`]).
    pub fn rec_dir(&self) -> &Path {
        &self.rec_dir
    }

    // ----- ctrl_tcp -----

    /// Sends a ctrl_tcp command (a menu command: `dial`, `hangup`, `accept`, `sndcode`,
    /// `reginfo`, `listcalls`, `callstat`, `quit`, ... ; `help` lists most) and returns the
    /// whole response, `{"response":true,"ok":bool,"data":"...","token":".."}`. Waits up to
    /// [`COMMAND_TIMEOUT`]. `ok: false` is returned, not an error: see [`Baresip::command_ok`].
    pub fn command(&self, cmd: &str, params: &str) -> anyhow::Result<Value> {
        self.ctrl
            .command(cmd, params)
            .with_context(|| format!("baresip {} command {cmd:?} {params:?}", self.aor))
    }

    /// Like [`Baresip::command`], but fails unless `ok` is true; returns `data`.
    pub fn command_ok(&self, cmd: &str, params: &str) -> anyhow::Result<String> {
        let resp = self.command(cmd, params)?;
        if resp["ok"] != true {
            bail!(
                "baresip {} command {cmd:?} {params:?} failed: {resp}\n{}",
                self.aor,
                self.guard.tail_report()
            );
        }
        Ok(resp["data"].as_str().unwrap_or_default().to_owned())
    }

    /// Every event received so far, in order. Types seen from baresip 1.0: `REGISTERING`,
    /// `REGISTER_OK` / `REGISTER_FAIL` (param `"200 OK"` / `"401 Unauthorized"`, no `id`),
    /// `CALL_INCOMING`, `CALL_RINGING`, `CALL_LOCAL_SDP` / `CALL_REMOTE_SDP` (param `"offer"` /
    /// `"answer"`), `CALL_ESTABLISHED` (param: peer URI), `CALL_RTPESTAB` (param `"audio"`),
    /// `CALL_RTCP` (every 5 s, with `rtcp_stats`), `CALL_DTMF_START` (param: the digit),
    /// `CALL_DTMF_END`, `AUDIO_ERROR`, `CALL_CLOSED` (param: the reason, e.g.
    /// `"486 Busy Here"`, `"Connection reset by user"` after our hangup, `"Connection reset by
    /// peer"` after a BYE). Call events carry `direction` (`incoming`/`outgoing`), `peeruri`,
    /// `id` (the SIP Call-ID) and, if the peer has a display name, `peerdisplayname`.
    pub fn events(&self) -> Vec<Value> {
        self.ctrl.state().events.clone()
    }

    /// Marks the end of the event list so far.
    pub fn event_mark(&self) -> EventMark {
        EventMark(self.ctrl.state().events.len())
    }

    /// Waits until some event (received at any time) satisfies `pred`; returns it.
    pub fn wait_event(
        &self,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        self.wait_event_since(EventMark(0), pred, timeout)
    }

    /// Like [`Baresip::wait_event`], but only considers events received after `mark`.
    pub fn wait_event_since(
        &self,
        mark: EventMark,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        self.wait_event_index(mark.0, &pred, timeout, "a matching event")
            .map(|(_, e)| e)
    }

    fn wait_event_index(
        &self,
        from: usize,
        pred: &dyn Fn(&Value) -> bool,
        timeout: Duration,
        what: &str,
    ) -> anyhow::Result<(usize, Value)> {
        let deadline = Instant::now() + timeout;
        let mut state = self.ctrl.state();
        loop {
            if let Some((i, e)) = state
                .events
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, e)| pred(e))
            {
                return Ok((i, e.clone()));
            }
            let closed = state.closed.clone();
            let now = Instant::now();
            if closed.is_some() || now >= deadline {
                let recent: Vec<String> = state
                    .events
                    .iter()
                    .skip(from)
                    .filter(|e| e["type"] != "CALL_RTCP")
                    .map(|e| e.to_string())
                    .collect();
                drop(state);
                let why = match closed {
                    Some(reason) => format!("ctrl_tcp connection closed ({reason})"),
                    None => format!("timed out after {timeout:?}"),
                };
                bail!(
                    "baresip {}: {why} waiting for {what}; events since: [{}]\n{}",
                    self.aor,
                    recent.join(", "),
                    self.guard.tail_report()
                );
            }
            state = self.ctrl.wait_locked(state, deadline - now);
        }
    }

    /// Waits for the next event of type `kind` after the one the previous call for this
    /// `kind` returned (the first one for the first call): successive calls walk through
    /// successive calls' events.
    pub fn wait_next(&self, kind: &'static str, timeout: Duration) -> anyhow::Result<Value> {
        let from = *lock(&self.cursors).get(kind).unwrap_or(&0);
        let (i, e) = self.wait_event_index(
            from,
            &|e: &Value| e["type"] == kind,
            timeout,
            &format!("event {kind}"),
        )?;
        lock(&self.cursors).insert(kind, i + 1);
        Ok(e)
    }

    /// Dials `uri` (e.g. `sip:2000@127.0.0.1:5060`); returns once baresip has sent the
    /// INVITE. Use [`Baresip::wait_call_established`] / [`Baresip::wait_call_closed`].
    pub fn dial(&self, uri: &str) -> anyhow::Result<()> {
        self.command_ok("dial", uri).map(drop)
    }

    /// Hangs up the current call (BYE, or CANCEL while ringing, or a rejection of an incoming
    /// call that was not accepted).
    pub fn hangup(&self) -> anyhow::Result<()> {
        self.command_ok("hangup", "").map(drop)
    }

    /// Answers the ringing incoming call (for instances without `auto_answer`).
    pub fn accept(&self) -> anyhow::Result<()> {
        self.command_ok("accept", "").map(drop)
    }

    /// Sends `digits` (`0-9`, `*`, `#`, `A-D`) in the current call as RFC 4733 events
    /// (baresip 1.0 cannot send SIP INFO DTMF). Returns once queued.
    pub fn send_dtmf(&self, digits: &str) -> anyhow::Result<()> {
        if digits.is_empty()
            || !digits
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D'))
        {
            bail!("send_dtmf: bad digits {digits:?}");
        }
        self.command_ok("sndcode", digits).map(drop)
    }

    /// Next `CALL_INCOMING` (see [`Baresip::wait_next`]). Only emitted without `auto_answer`.
    pub fn wait_incoming(&self, timeout: Duration) -> anyhow::Result<Value> {
        self.wait_next("CALL_INCOMING", timeout)
    }

    /// Next `CALL_RINGING` (the peer sent 180; see [`Baresip::wait_next`]).
    pub fn wait_ringing(&self, timeout: Duration) -> anyhow::Result<Value> {
        self.wait_next("CALL_RINGING", timeout)
    }

    /// Next `CALL_ESTABLISHED` (see [`Baresip::wait_next`]).
    pub fn wait_call_established(&self, timeout: Duration) -> anyhow::Result<Value> {
        self.wait_next("CALL_ESTABLISHED", timeout)
    }

    /// Next `CALL_CLOSED` (see [`Baresip::wait_next`]); its `param` is the reason, e.g.
    /// `"486 Busy Here"` when the callee rejected the call.
    pub fn wait_call_closed(&self, timeout: Duration) -> anyhow::Result<Value> {
        self.wait_next("CALL_CLOSED", timeout)
    }

    /// DTMF digits received so far (from `CALL_DTMF_START` events: RFC 4733 and SIP INFO).
    pub fn received_dtmf(&self) -> Vec<char> {
        self.ctrl
            .state()
            .events
            .iter()
            .filter(|e| e["type"] == "CALL_DTMF_START")
            .filter_map(|e| e["param"].as_str()?.chars().next())
            .collect()
    }

    /// RFC 4733 events received so far, as baresip logs them (`received event: '1' (end=0)`
    /// when a digit starts, `(end=1)` when its end packets come): (key, ended) per line, in
    /// order. SIP INFO digits are not among them (see [`Baresip::received_dtmf`]).
    pub fn received_events(&self) -> Vec<(char, bool)> {
        parse_received_events(&self.guard.log_text())
    }

    // ----- recordings -----

    /// All WAV files in [`Baresip::rec_dir`], oldest first (by name: they are named by time).
    /// File names have one-second resolution: two calls of one instance starting in the same
    /// second share (overwrite) a file.
    pub fn recordings(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.rec_dir)
            .map(|rd| {
                rd.filter_map(|e| Some(e.ok()?.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "wav"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }

    /// Recordings of what this instance heard (`*-dec.wav`), oldest first.
    pub fn heard_recordings(&self) -> Vec<PathBuf> {
        self.recordings_ending("-dec.wav")
    }

    /// Recordings of what this instance sent (`*-enc.wav`), oldest first.
    pub fn sent_recordings(&self) -> Vec<PathBuf> {
        self.recordings_ending("-enc.wav")
    }

    fn recordings_ending(&self, suffix: &str) -> Vec<PathBuf> {
        self.recordings()
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(suffix))
            .collect()
    }

    /// Waits until the newest heard recording holds at least `seconds` of audio (while the
    /// call is still up), so a test can hang up after enough audio instead of sleeping.
    pub fn wait_heard_audio(&self, seconds: f64, timeout: Duration) -> anyhow::Result<PathBuf> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(path) = self.heard_recordings().pop() {
                if wav_seconds_written(&path).is_some_and(|s| s >= seconds) {
                    return Ok(path);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "baresip {}: no recording with {seconds} s of heard audio within {timeout:?} \
                     (recordings: {:?})\n{}",
                    self.aor,
                    self.recordings(),
                    self.guard.tail_report()
                );
            }
            std::thread::sleep(crate::wait::POLL_INTERVAL.min(deadline - now));
        }
    }

    /// Waits until the newest heard recording is finished (the call ended and libsndfile
    /// closed it, fixing the WAV header) and returns it, ready for [`crate::audio::analyze`].
    pub fn wait_heard_recording_finished(&self, timeout: Duration) -> anyhow::Result<PathBuf> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(path) = self.heard_recordings().pop() {
                if crate::audio::finished_wav_data_len(&path).is_some_and(|n| n > 0) {
                    return Ok(path);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "baresip {}: no finished heard recording within {timeout:?} (recordings: {:?})",
                    self.aor,
                    self.recordings()
                );
            }
            std::thread::sleep(crate::wait::POLL_INTERVAL.min(deadline - now));
        }
    }

    // ----- log -----

    /// Whether the process still runs.
    pub fn is_running(&self) -> anyhow::Result<bool> {
        Ok(self.guard.try_wait()?.is_none())
    }

    /// Kills baresip at once by PID (SIGKILL): a phone that dies mid-call, sending no BYE,
    /// no un-REGISTER and no more RTP. Returns the exit status; drop does nothing more.
    pub fn kill_hard(&mut self) -> anyhow::Result<ExitStatus> {
        self.stopped = true;
        let status = self.guard.kill_hard();
        self.ctrl.shutdown();
        status
    }

    /// Stops baresip: `quit` over ctrl_tcp (it un-REGISTERs and exits), then SIGTERM and
    /// SIGKILL by PID if it is still there after [`STOP_GRACE`] each. Returns the exit status.
    /// Idempotent; drop calls it too.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        if !self.stopped {
            self.stopped = true;
            // No response awaited: baresip may exit before sending it.
            let _ = self.ctrl.send("quit", "");
            if self.guard.wait_exit(STOP_GRACE).is_err() {
                eprintln!(
                    "[dialtone-tests] baresip (pid {}) still running {STOP_GRACE:?} after quit; \
                     sending SIGTERM",
                    self.guard.pid()
                );
            }
            self.ctrl.shutdown();
        }
        self.guard.stop(STOP_GRACE)
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("[dialtone-tests] stopping baresip {}: {e:#}", self.aor);
        }
        if self.keep_dir || crate::keep_artifacts() {
            if let Some(dir) = self.dir.take() {
                crate::retain_dir(dir, "baresip");
            }
        }
    }
}

struct Ports {
    sip: u16,
    ctrl: u16,
    cons: u16,
    rtp: (u16, u16),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    let s = path
        .to_str()
        .with_context(|| format!("path {} is not UTF-8", path.display()))?;
    if s.chars().any(char::is_whitespace) {
        bail!("path {s:?} contains whitespace, which baresip's config cannot hold");
    }
    Ok(s)
}

/// Fills `@NAME@` placeholders; fails on any left over.
fn render(template: &str, values: &[(&str, String)]) -> anyhow::Result<String> {
    let mut out = template.to_owned();
    for (name, value) in values {
        out = out.replace(&format!("@{name}@"), value);
    }
    if let Some(left) = crate::kamailio::find_placeholder(&out) {
        bail!("baresip template has an unknown placeholder {left}");
    }
    Ok(out)
}

/// `(key, end)` of each `received event: 'K' (end=N)` line of a baresip log.
fn parse_received_events(log: &str) -> Vec<(char, bool)> {
    log.lines()
        .filter_map(|line| {
            let rest = line.split_once("received event: '")?.1;
            let mut chars = rest.chars();
            let key = chars.next()?;
            let end = chars.as_str().strip_prefix("' (end=")?.chars().next()?;
            Some((key, end == '1'))
        })
        .collect()
}

/// Seconds of audio written so far to a WAV file still being recorded (from the file size and
/// the format in its header; libsndfile only fixes the sizes on close).
fn wav_seconds_written(path: &Path) -> Option<f64> {
    let mut header = [0u8; 44];
    let mut file = File::open(path).ok()?;
    file.read_exact(&mut header).ok()?;
    let len = file.metadata().ok()?.len();
    let rate = u32::from_le_bytes(header.get(24..28)?.try_into().ok()?);
    let block_align = u16::from_le_bytes(header.get(32..34)?.try_into().ok()?);
    if rate == 0 || block_align == 0 {
        return None;
    }
    let data = len.saturating_sub(44);
    Some(data as f64 / f64::from(block_align) / f64::from(rate))
}

// ----- ctrl_tcp connection -----

/// The ctrl_tcp connection: a writer plus a reader thread that files every message.
struct Ctrl {
    writer: Mutex<TcpStream>,
    shared: Arc<CtrlShared>,
    next_token: AtomicU64,
}

/// baresip ended by itself while starting up (not a refused configuration: that fails later).
#[derive(Debug)]
struct StartupCrash(String);

impl std::fmt::Display for StartupCrash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartupCrash {}

#[derive(Default)]
struct CtrlShared {
    state: Mutex<CtrlState>,
    changed: Condvar,
}

#[derive(Default)]
struct CtrlState {
    events: Vec<Value>,
    responses: HashMap<String, Value>,
    /// Set when the reader stops (EOF, error, bad framing): why.
    closed: Option<String>,
}

impl Ctrl {
    /// Connects (retrying until `deadline` while baresip starts), starts the reader and checks
    /// that baresip answers.
    ///
    /// A connection that baresip resets at the first command while it keeps running is opened
    /// again (reported on stderr). Seen twice on CI, never here. One way it can happen: ctrl_tcp
    /// drops its older connection whenever a newer one arrives, and under load the std connect
    /// timeout can expire after the kernel has already queued the connection, so a stale
    /// attempt and the next one race inside baresip.
    fn connect(
        guard: &ChildGuard,
        port: u16,
        dir: &Path,
        deadline: Instant,
    ) -> anyhow::Result<Ctrl> {
        const ATTEMPTS: usize = 3;
        let mut attempt = 1;
        loop {
            let ctrl = Self::open(guard, port, dir, deadline)?;
            // A port taken by someone else would still accept: make sure baresip answers.
            let error = match ctrl.command("reginfo", "") {
                Ok(resp) if resp["response"] == true => return Ok(ctrl),
                Ok(resp) => bail!("unexpected ctrl_tcp answer {resp}"),
                Err(e) => e,
            };
            ctrl.shutdown();
            if let Ok(status) = guard.wait_exit(Duration::from_secs(1)) {
                return Err(anyhow::Error::new(StartupCrash(format!(
                    "baresip exited ({status}) at its first ctrl_tcp command ({error:#})\n{}",
                    guard.tail_report()
                ))));
            }
            if attempt == ATTEMPTS || Instant::now() >= deadline {
                return Err(error.context(format!(
                    "first ctrl_tcp command, attempt {attempt}\n{}",
                    guard.tail_report()
                )));
            }
            eprintln!(
                "[dialtone-tests] baresip ctrl_tcp {port} failed its first command while \
                 baresip runs ({error:#}); connecting again"
            );
            attempt += 1;
        }
    }

    /// One connection (retrying while nothing listens yet) with its reader thread.
    fn open(guard: &ChildGuard, port: u16, dir: &Path, deadline: Instant) -> anyhow::Result<Ctrl> {
        let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
        let stream = loop {
            // A refused connect returns at once; the timeout only matters when this thread
            // stalls, and std gives up without polling once it has passed.
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(s) => break s,
                Err(e) => {
                    if let Some(status) = guard.try_wait()? {
                        return Err(anyhow::Error::new(StartupCrash(format!(
                            "baresip exited ({status}) during startup\n{}",
                            guard.tail_report()
                        ))));
                    }
                    if Instant::now() >= deadline {
                        bail!(
                            "baresip ctrl_tcp {addr} not accepting within {READY_TIMEOUT:?} \
                             (last: {e})\n{}",
                            guard.tail_report()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        let reader = stream.try_clone().context("cloning ctrl_tcp stream")?;
        let shared = Arc::new(CtrlShared::default());
        let thread_shared = Arc::clone(&shared);
        let events_log = File::options()
            .create(true)
            .append(true)
            .open(dir.join("events.jsonl"))
            .ok();
        std::thread::Builder::new()
            .name(format!("baresip-ctrl-{port}"))
            .spawn(move || read_messages(reader, &thread_shared, events_log))
            .context("spawning ctrl_tcp reader thread")?;
        Ok(Ctrl {
            writer: Mutex::new(stream),
            shared,
            next_token: AtomicU64::new(1),
        })
    }

    fn state(&self) -> MutexGuard<'_, CtrlState> {
        lock(&self.shared.state)
    }

    /// Waits for any new message (or `timeout`).
    fn wait_change(&self, timeout: Duration) {
        let state = self.state();
        drop(self.wait_locked(state, timeout));
    }

    fn wait_locked<'a>(
        &'a self,
        state: MutexGuard<'a, CtrlState>,
        timeout: Duration,
    ) -> MutexGuard<'a, CtrlState> {
        match self.shared.changed.wait_timeout(state, timeout) {
            Ok((state, _)) => state,
            Err(e) => e.into_inner().0,
        }
    }

    /// Sends a command; returns its token.
    fn send(&self, cmd: &str, params: &str) -> anyhow::Result<String> {
        let token = format!("rig{}", self.next_token.fetch_add(1, Ordering::Relaxed));
        let msg = json!({"command": cmd, "params": params, "token": token}).to_string();
        let frame = format!("{}:{msg},", msg.len());
        lock(&self.writer)
            .write_all(frame.as_bytes())
            .context("writing to ctrl_tcp")?;
        Ok(token)
    }

    fn command(&self, cmd: &str, params: &str) -> anyhow::Result<Value> {
        let token = self.send(cmd, params)?;
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let mut state = self.state();
        loop {
            if let Some(resp) = state.responses.remove(&token) {
                return Ok(resp);
            }
            if let Some(reason) = &state.closed {
                bail!("ctrl_tcp connection closed ({reason}) before the response");
            }
            let now = Instant::now();
            if now >= deadline {
                bail!("no response within {COMMAND_TIMEOUT:?}");
            }
            state = self.wait_locked(state, deadline - now);
        }
    }

    /// Closes the connection; the reader thread ends at EOF.
    fn shutdown(&self) {
        let _ = lock(&self.writer).shutdown(Shutdown::Both);
    }
}

impl Drop for Ctrl {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Reader thread: netstrings `LEN:JSON,` until EOF.
fn read_messages(stream: TcpStream, shared: &CtrlShared, mut events_log: Option<File>) {
    let mut reader = BufReader::new(stream);
    let reason = loop {
        let msg = match read_netstring(&mut reader) {
            Ok(Some(msg)) => msg,
            Ok(None) => break "EOF".to_owned(),
            Err(e) => break format!("{e:#}"),
        };
        let value: Value = match serde_json::from_slice(&msg) {
            Ok(v) => v,
            Err(e) => json!({
                "unparsed": String::from_utf8_lossy(&msg),
                "error": e.to_string(),
            }),
        };
        if let Some(log) = events_log.as_mut() {
            let _ = writeln!(log, "{value}");
        }
        let mut state = lock(&shared.state);
        if value["response"] == true {
            let token = value["token"].as_str().unwrap_or_default().to_owned();
            state.responses.insert(token, value);
        } else {
            state.events.push(value);
        }
        drop(state);
        shared.changed.notify_all();
    };
    lock(&shared.state).closed = Some(reason);
    shared.changed.notify_all();
}

/// One netstring; `None` at a clean EOF between messages.
fn read_netstring(reader: &mut impl BufRead) -> anyhow::Result<Option<Vec<u8>>> {
    let mut len_buf = Vec::new();
    reader
        .read_until(b':', &mut len_buf)
        .context("reading netstring length")?;
    if len_buf.is_empty() {
        return Ok(None);
    }
    if len_buf.pop() != Some(b':') {
        bail!("EOF inside netstring length");
    }
    let len: usize = std::str::from_utf8(&len_buf)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .with_context(|| {
            format!(
                "bad netstring length {:?}",
                String::from_utf8_lossy(&len_buf)
            )
        })?;
    if len > MAX_NETSTRING {
        bail!("netstring of {len} bytes is too long");
    }
    let mut msg = vec![0u8; len + 1];
    reader
        .read_exact(&mut msg)
        .context("reading netstring body")?;
    if msg.pop() != Some(b',') {
        bail!("netstring not terminated by ','");
    }
    Ok(Some(msg))
}

impl Logged for Baresip {
    fn process(&self) -> &ChildGuard {
        &self.guard
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_netstrings() -> anyhow::Result<()> {
        let mut input: &[u8] = b"7:{\"a\":1},2:{},";
        assert_eq!(read_netstring(&mut input)?, Some(b"{\"a\":1}".to_vec()));
        assert_eq!(read_netstring(&mut input)?, Some(b"{}".to_vec()));
        assert_eq!(read_netstring(&mut input)?, None);
        let mut bad: &[u8] = b"3:abcd";
        assert!(read_netstring(&mut bad).is_err());
        let mut bad: &[u8] = b"x:abc,";
        assert!(read_netstring(&mut bad).is_err());
        Ok(())
    }

    #[test]
    fn parses_received_event_lines() {
        let log = "call: received event: '1' (end=0)\n\
                   audio: received event: '1' (end=1)\n\
                   call: received DTMF: '5' (duration=250)\n\
                   received event: '*' (end=0)\n";
        assert_eq!(
            parse_received_events(log),
            [('1', false), ('1', true), ('*', false)]
        );
    }

    #[test]
    fn templates_render_without_placeholders() -> anyhow::Result<()> {
        let config = render(
            CONFIG_TEMPLATE,
            &[
                ("SIP_PORT", "15000".into()),
                ("CTRL_PORT", "15002".into()),
                ("CONS_PORT", "15003".into()),
                ("RTP_MIN", "15004".into()),
                ("RTP_MAX", "15023".into()),
                ("AUDIO_SOURCE", "/tmp/x/tone.wav".into()),
                ("REC_DIR", "/tmp/x/rec".into()),
                ("SNDFILE_MODULE", "module\t\t\tsndfile.so".into()),
            ],
        )?;
        assert!(config.contains("sip_listen\t\t127.0.0.1:15000\n"));
        assert!(config.contains("rtp_ports\t\t15004-15023\n"));
        assert!(config.contains("ctrl_tcp_listen\t\t127.0.0.1:15002\n"));
        let accounts = render(
            ACCOUNTS_TEMPLATE,
            &[
                ("USER", "1001".into()),
                ("DOMAIN", "127.0.0.1:5060".into()),
                ("PASSWORD", "secret1001".into()),
                ("ANSWERMODE", "auto".into()),
                ("REGINT", "60".into()),
                ("CODECS", "PCMU,PCMA".into()),
                ("MEDIAENC", ";mediaenc=srtp-mand".into()),
            ],
        )?;
        assert!(accounts.contains(
            "\n<sip:1001@127.0.0.1:5060>;auth_pass=secret1001;answermode=auto;regint=60;\
             audio_codecs=PCMU,PCMA;mediaenc=srtp-mand\n"
        ));
        assert!(render("@NOPE@", &[]).is_err());
        Ok(())
    }
}
