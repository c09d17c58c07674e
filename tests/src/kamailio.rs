//! A private Kamailio 5.6 registrar/proxy per test, on a free loopback port.
//!
//! The config is `tests/rig/kamailio.cfg` (compiled in), with placeholders filled per instance:
//! `@PORT@`, `@DIR@`, `@ALGORITHM@`, `@CALLEE@`. Users: `1001`/`secret1001`,
//! `1002`/`secret1002`, `2000`/`secret2000`, and any `load<N>` with password `pw-load<N>`
//! (see [`password_for`]). Digest challenges carry `qop="auth"` and the chosen algorithm.
//!
//! Registrations are read over Kamailio's JSON-RPC FIFO (`ul.dump`), not `kamcmd`: kamcmd's
//! binrpc client refuses replies over 64 KB ("reply too big"), i.e. a few hundred contacts,
//! which load tests exceed.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::process::{ChildGuard, Logged, STOP_GRACE};

/// The config template (committed at `tests/rig/kamailio.cfg`).
const TEMPLATE: &str = include_str!("../rig/kamailio.cfg");

/// The Kamailio binary (Debian package `kamailio`).
pub const KAMAILIO_BIN: &str = "/usr/sbin/kamailio";

/// Where R-URI user `3000` is sent unless [`KamailioOptions::fixed_callee`] says otherwise.
pub const DEFAULT_FIXED_CALLEE: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 5090));

/// Deadline for Kamailio to answer after spawning.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Deadline for one JSON-RPC call.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// Users with fixed passwords, as in the team's reference rig.
pub const USERS: [(&str, &str); 3] = [
    ("1001", "secret1001"),
    ("1002", "secret1002"),
    ("2000", "secret2000"),
];

/// The password Kamailio accepts for `user`: one of [`USERS`], or `pw-load<N>` for `load<N>`.
pub fn password_for(user: &str) -> Option<String> {
    if let Some((_, pw)) = USERS.iter().find(|(u, _)| *u == user) {
        return Some((*pw).to_owned());
    }
    let n = user.strip_prefix("load")?;
    (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then(|| format!("pw-{user}"))
}

/// Digest hash algorithm Kamailio challenges with (auth module `algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DigestAlgorithm {
    #[default]
    Md5,
    Sha256,
}

impl DigestAlgorithm {
    /// The value as it appears in the config and in the challenge (`MD5` / `SHA-256`).
    pub fn as_str(self) -> &'static str {
        match self {
            DigestAlgorithm::Md5 => "MD5",
            DigestAlgorithm::Sha256 => "SHA-256",
        }
    }
}

/// How to configure a [`Kamailio`] instance. `Default` = MD5, callee 127.0.0.1:5090.
#[derive(Debug, Clone, Default)]
pub struct KamailioOptions {
    pub algorithm: DigestAlgorithm,
    /// Where requests for R-URI user `3000` go; default [`DEFAULT_FIXED_CALLEE`].
    pub fixed_callee: Option<SocketAddr>,
    /// Challenge REGISTER with 407 Proxy-Authenticate instead of 401, as
    /// some proxies in front of registrars do.
    pub register_with_407: bool,
    /// Listen on this SIP port instead of a free one: a registrar restarted where the gateway
    /// still sends its REGISTERs (the port must be free again by then).
    pub sip_port: Option<u16>,
    /// Run this config instead of the rig's template (the other options then do not apply).
    pub own_config: Option<OwnConfig>,
    /// Also listen for SIP over TLS (module `tls.so`, package `kamailio-tls-modules`).
    pub tls: Option<KamailioTls>,
}

/// A TLS listener of the rig's Kamailio.
#[derive(Debug, Clone)]
pub struct KamailioTls {
    pub port: u16,
    /// PEM certificate chain and key (PKCS#8) Kamailio presents.
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// Require a client certificate signed by one of these PEM CAs; `None`: ask for none.
    pub client_ca: Option<PathBuf>,
}

impl KamailioTls {
    /// The config lines: the listener and the module's settings (no `tls.cfg` file).
    fn config(&self) -> anyhow::Result<String> {
        let path = |p: &Path| {
            p.to_str()
                .filter(|s| !s.contains('"'))
                .map(str::to_owned)
                .with_context(|| format!("TLS file path {p:?} is not plain UTF-8"))
        };
        let mut cfg = format!(
            "enable_tls=yes\nlisten=tls:127.0.0.1:{port}\nloadmodule \"tls.so\"\n\
             modparam(\"tls\", \"certificate\", \"{cert}\")\n\
             modparam(\"tls\", \"private_key\", \"{key}\")\n\
             modparam(\"tls\", \"tls_method\", \"TLSv1.2+\")\n",
            port = self.port,
            cert = path(&self.certificate)?,
            key = path(&self.private_key)?,
        );
        match &self.client_ca {
            Some(ca) => cfg.push_str(&format!(
                "modparam(\"tls\", \"ca_list\", \"{}\")\n\
                 modparam(\"tls\", \"verify_certificate\", 1)\n\
                 modparam(\"tls\", \"require_certificate\", 1)\n",
                path(ca)?
            )),
            None => cfg.push_str(
                "modparam(\"tls\", \"verify_certificate\", 0)\n\
                 modparam(\"tls\", \"require_certificate\", 0)\n",
            ),
        }
        Ok(cfg)
    }
}

/// A config of the project's own, such as `deploy/kamailio/kamailio.cfg`, run as it is: what
/// differs per instance comes in as `-A` defines. The rig always defines `LISTEN_ADDR`
/// (127.0.0.1), `SIP_PORT`, and `RPC_FIFO`, `RPC_REPLY_DIR` and `CTL_SOCKET` in the instance
/// dir (the config must read them so that the rig can reach it).
#[derive(Debug, Clone)]
pub struct OwnConfig {
    /// The config file; copied into the instance dir.
    pub file: PathBuf,
    /// Files written next to it (what it includes or reads): (file name, content).
    pub files: Vec<(String, String)>,
    /// More defines, `NAME=VALUE` (a string value in double quotes); `@DIR@` in one becomes
    /// the instance dir.
    pub defines: Vec<String>,
}

/// One registered contact, as Kamailio's location table holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactInfo {
    /// The address-of-record, `1001` (or `1001@domain` if the registrar used domains).
    pub aor: String,
    /// The Contact URI, e.g. `sip:1001@127.0.0.1:40123;transport=udp`.
    pub uri: String,
    /// Seconds until it expires (`u64::MAX` for a permanent contact, which only `ul.add`
    /// makes).
    pub expires: u64,
    /// CSeq of the REGISTER that last refreshed it.
    pub cseq: u64,
    pub call_id: String,
    pub user_agent: String,
    /// Kamailio's socket it arrived on, e.g. `udp:127.0.0.1:5060`.
    pub socket: String,
    /// Transport it registered over: the socket's protocol (`udp`, `tcp`).
    pub transport: String,
    /// Source address Kamailio recorded (only set when NAT handling saved it).
    pub received: Option<String>,
}

/// A running Kamailio instance (main process plus its forked workers), stopped on drop.
///
/// Drop sends SIGTERM to the main process (which terminates its workers), then makes sure by
/// PID that none of the instance's processes remain (SIGKILL as a last resort).
pub struct Kamailio {
    guard: ChildGuard,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    cfg_path: PathBuf,
    port: u16,
    /// Every PID of the instance (from `core.psx`), main process included.
    pids: Vec<u32>,
    stopped: bool,
    keep_dir: bool,
}

impl Kamailio {
    /// Writes the config into a fresh temp dir, starts Kamailio in the foreground on a free
    /// port and waits (up to [`READY_TIMEOUT`]) until it answers SIP OPTIONS and JSON-RPC.
    pub fn start(opts: KamailioOptions) -> anyhow::Result<Kamailio> {
        if !Path::new(KAMAILIO_BIN).exists() {
            bail!("{KAMAILIO_BIN} not found: install Kamailio 5.6 (apt-get install kamailio)");
        }
        let dir = crate::instance_dir("kam-")?;
        let dir_path = dir.path().to_owned();
        let port = opts.sip_port.unwrap_or_else(crate::free_port);
        let cfg_path = dir_path.join("kamailio.cfg");
        let mut cmd = Command::new(KAMAILIO_BIN);
        match &opts.own_config {
            Some(own) => {
                std::fs::copy(&own.file, &cfg_path)
                    .with_context(|| format!("copying {}", own.file.display()))?;
                for (name, content) in &own.files {
                    std::fs::write(dir_path.join(name), content)
                        .with_context(|| format!("writing {name}"))?;
                }
                for define in own_defines(own, port, &dir_path)? {
                    cmd.arg("-A").arg(define);
                }
            }
            None => {
                let cfg = render_config(&opts, port, &dir_path)?;
                std::fs::write(&cfg_path, cfg).context("writing kamailio.cfg")?;
            }
        }
        cmd.arg("-f")
            .arg(&cfg_path)
            .args(["-DD", "-E", "-w"])
            .arg(&dir_path)
            .arg("-P")
            .arg(dir_path.join("kamailio.pid"))
            .args(["-m", "64", "-M", "8"])
            .current_dir(&dir_path);
        let guard = ChildGuard::spawn("kamailio", cmd, &dir_path.join("kamailio.log"))?;
        let mut kam = Kamailio {
            pids: vec![guard.pid()],
            guard,
            dir: Some(dir),
            dir_path,
            cfg_path,
            port,
            stopped: false,
            keep_dir: false,
        };
        if let Err(e) = kam.wait_ready() {
            // The error names the log file: keep it for the post-mortem.
            kam.keep_dir = true;
            return Err(e);
        }
        Ok(kam)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let last_err = match self.options_ping(Duration::from_millis(200)) {
                Ok(status) if status.contains(" 200 ") => break,
                Ok(status) => format!("OPTIONS answered {status:?}"),
                Err(e) => format!("{e:#}"),
            };
            if let Some(status) = self.guard.try_wait()? {
                bail!(
                    "kamailio exited ({status}) during startup\n{}",
                    self.guard.tail_report()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "kamailio did not answer OPTIONS on udp:{} within {READY_TIMEOUT:?} (last: {last_err})\n{}",
                    self.sip_addr(),
                    self.guard.tail_report()
                );
            }
        }
        // The RPC FIFO process may come up a moment after the SIP workers.
        loop {
            let last_err = match self.process_list() {
                Ok(pids) => {
                    self.pids = pids;
                    return Ok(());
                }
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "kamailio JSON-RPC not answering within {READY_TIMEOUT:?}: {last_err}\n{}",
                    self.guard.tail_report()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The SIP port (UDP and TCP).
    pub fn sip_port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<sip_port>`.
    pub fn sip_addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// PID of the main process.
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// All PIDs of this instance as reported by `core.psx` at startup (main included).
    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    /// The instance's temp dir (config, log, control sockets).
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    /// The rendered config file.
    pub fn config_path(&self) -> &Path {
        &self.cfg_path
    }

    /// Sends one SIP OPTIONS over UDP from an ephemeral loopback port and returns the status
    /// line of the answer (a ready instance says `SIP/2.0 200 Keepalive`).
    pub fn options_ping(&self, timeout: Duration) -> anyhow::Result<String> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("binding UDP probe")?;
        let local = sock.local_addr()?;
        let call_id = format!("rig-ping-{}-{n}@127.0.0.1", std::process::id());
        let msg = format!(
            "OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK-rig-{n};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:rig@127.0.0.1>;tag=rig{n}\r\n\
             To: <sip:127.0.0.1:{port}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: 1 OPTIONS\r\n\
             Content-Length: 0\r\n\r\n",
            port = self.port
        );
        sock.send_to(msg.as_bytes(), self.sip_addr())
            .context("sending OPTIONS")?;
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65535];
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                bail!("no answer to OPTIONS within {timeout:?}");
            }
            sock.set_read_timeout(Some(remaining))?;
            let len = match sock.recv(&mut buf) {
                Ok(len) => len,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    bail!("no answer to OPTIONS within {timeout:?}")
                }
                // ECONNREFUSED from an earlier ICMP port-unreachable: not listening yet.
                Err(e) => bail!("OPTIONS probe: {e}"),
            };
            let text = String::from_utf8_lossy(&buf[..len]);
            let is_ours = text.lines().any(|l| {
                l.split_once(':').is_some_and(|(name, value)| {
                    (name.eq_ignore_ascii_case("call-id") || name.eq_ignore_ascii_case("i"))
                        && value.trim() == call_id
                })
            });
            if is_ours {
                return Ok(text.lines().next().unwrap_or_default().to_owned());
            }
        }
    }

    /// Calls a Kamailio RPC over the JSON-RPC FIFO and returns its `result`.
    /// E.g. `rpc("ul.rm", &["location".into(), "1001".into()])`.
    pub fn rpc(&self, method: &str, params: &[Value]) -> anyhow::Result<Value> {
        jsonrpc_fifo(&self.dir_path, method, params)
            .with_context(|| format!("kamailio RPC {method} on instance {}", self.port))
    }

    fn process_list(&self) -> anyhow::Result<Vec<u32>> {
        let psx = self.rpc("core.psx", &[])?;
        let pids: Vec<u32> = psx
            .as_array()
            .with_context(|| format!("core.psx: expected an array, got {psx}"))?
            .iter()
            .filter_map(|p| p.get("PID")?.as_u64())
            .filter_map(|p| u32::try_from(p).ok())
            .collect();
        if !pids.contains(&self.guard.pid()) {
            bail!(
                "core.psx does not list our main PID {}: {psx}",
                self.guard.pid()
            );
        }
        Ok(pids)
    }

    /// All live (not expired) contacts of every AOR, from `ul.dump`.
    pub fn all_contacts(&self) -> anyhow::Result<Vec<ContactInfo>> {
        let dump = self.rpc("ul.dump", &[])?;
        parse_ul_dump(&dump)
    }

    /// Live contacts registered for `user` (AOR `user` or `user@domain`) with their details.
    pub fn contact_details(&self, user: &str) -> anyhow::Result<Vec<ContactInfo>> {
        Ok(self
            .all_contacts()?
            .into_iter()
            .filter(|c| aor_matches(&c.aor, user))
            .collect())
    }

    /// Contact URIs registered for `user`.
    pub fn contacts(&self, user: &str) -> anyhow::Result<Vec<String>> {
        Ok(self
            .contact_details(user)?
            .into_iter()
            .map(|c| c.uri)
            .collect())
    }

    /// Polls [`Kamailio::contacts`] until `pred` accepts them; returns them. The timeout error
    /// shows the last contacts seen.
    pub fn wait_for_contacts(
        &self,
        user: &str,
        pred: impl Fn(&[String]) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let contacts = self.contacts(user)?;
            if pred(&contacts) {
                return Ok(contacts);
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for contacts of {user:?} to match; last seen: {contacts:?}"
                );
            }
            std::thread::sleep(crate::wait::POLL_INTERVAL.min(deadline - now));
        }
    }

    /// Number of live contacts over all AORs.
    pub fn total_contacts(&self) -> anyhow::Result<usize> {
        Ok(self.all_contacts()?.len())
    }

    /// PIDs of this instance that still run (checked in /proc: alive, not a zombie, and
    /// started with this instance's config file).
    pub fn running_pids(&self) -> Vec<u32> {
        let cfg = self.cfg_path.to_string_lossy().into_owned();
        let mut pids = self.pids.clone();
        // Also any child of the main process not in the psx snapshot.
        pids.extend(children_of(self.guard.pid()));
        pids.sort_unstable();
        pids.dedup();
        pids.into_iter()
            .filter(|pid| runs_with_arg(*pid, &cfg))
            .collect()
    }

    /// Stops the instance: SIGTERM to the main process (grace [`STOP_GRACE`], then SIGKILL),
    /// then checks by PID that no process of the instance remains. Stragglers are killed by PID
    /// and reported as an error. Idempotent; drop calls it too.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        // Snapshot the workers before the main process goes away (they get reparented then).
        let mut pids = self.pids.clone();
        pids.extend(children_of(self.guard.pid()));
        pids.sort_unstable();
        pids.dedup();
        self.pids = pids;
        self.guard.stop(STOP_GRACE)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let alive = self.running_pids();
            if alive.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                for pid in &alive {
                    if let Ok(pid) = libc::pid_t::try_from(*pid) {
                        // SAFETY: plain syscall on a PID just verified to run our config.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
                bail!("kamailio processes {alive:?} outlived the main process; killed by PID");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("[dialtone-tests] stopping kamailio: {e:#}");
        }
        if self.keep_dir || crate::keep_artifacts() {
            if let Some(dir) = self.dir.take() {
                crate::retain_dir(dir, "kamailio");
            }
        }
    }
}

/// The `-A` defines of an [`OwnConfig`] instance.
fn own_defines(own: &OwnConfig, port: u16, dir: &Path) -> anyhow::Result<Vec<String>> {
    let dir = dir.to_str().context("temp dir path is not UTF-8")?;
    let mut defines = vec![
        "LISTEN_ADDR=127.0.0.1".to_string(),
        format!("SIP_PORT={port}"),
        format!("RPC_FIFO=\"{dir}/kamailio_rpc.fifo\""),
        format!("RPC_REPLY_DIR=\"{dir}/\""),
        format!("CTL_SOCKET=\"unix:{dir}/kamailio_ctl\""),
    ];
    defines.extend(own.defines.iter().map(|d| d.replace("@DIR@", dir)));
    Ok(defines)
}

fn render_config(opts: &KamailioOptions, port: u16, dir: &Path) -> anyhow::Result<String> {
    let dir = dir.to_str().context("temp dir path is not UTF-8")?;
    if dir.contains('"') {
        bail!("temp dir path {dir:?} contains a quote");
    }
    let callee = opts.fixed_callee.unwrap_or(DEFAULT_FIXED_CALLEE);
    let (register_auth, register_challenge) = if opts.register_with_407 {
        (
            r#"pv_proxy_authenticate("$fd", "$var(pw)", "0")"#,
            "proxy_challenge",
        )
    } else {
        (
            r#"pv_auth_check("$fd", "$var(pw)", "0", "1")"#,
            "www_challenge",
        )
    };
    let cfg = TEMPLATE
        .replace("@PORT@", &port.to_string())
        .replace("@DIR@", dir)
        .replace("@ALGORITHM@", opts.algorithm.as_str())
        .replace("@CALLEE@", &callee.to_string())
        .replace("@REGISTER_AUTH@", register_auth)
        .replace("@REGISTER_CHALLENGE@", register_challenge)
        .replace(
            "@TLS@",
            &opts
                .tls
                .as_ref()
                .map(KamailioTls::config)
                .transpose()?
                .unwrap_or_default(),
        );
    if let Some(left) = find_placeholder(&cfg) {
        bail!("kamailio.cfg template has an unknown placeholder {left}");
    }
    Ok(cfg)
}

/// Finds a leftover `@NAME@` (uppercase) placeholder.
pub(crate) fn find_placeholder(cfg: &str) -> Option<&str> {
    let mut rest = cfg;
    while let Some(start) = rest.find('@') {
        let after = &rest[start + 1..];
        let name_len = after
            .bytes()
            .take_while(|b| b.is_ascii_uppercase() || *b == b'_')
            .count();
        if name_len > 0 && after.as_bytes().get(name_len) == Some(&b'@') {
            return Some(&rest[start..start + name_len + 2]);
        }
        rest = after;
    }
    None
}

fn aor_matches(aor: &str, user: &str) -> bool {
    aor == user || aor.strip_prefix(user).is_some_and(|r| r.starts_with('@'))
}

/// Parses the JSON `ul.dump` result:
/// `{"Domains":[{"Domain":{"Domain":"location","AoRs":[{"Info":{"AoR":"1001","Contacts":
/// [{"Contact":{"Address":..,"Expires":60|"expired"|"deleted"|"permanent","CSeq":2,..}}]}}]}}]}`.
/// Expired and deleted contacts (not yet purged by the usrloc timer) are left out.
fn parse_ul_dump(dump: &Value) -> anyhow::Result<Vec<ContactInfo>> {
    let domains = dump
        .get("Domains")
        .and_then(Value::as_array)
        .with_context(|| format!("ul.dump: no Domains array in {dump}"))?;
    let mut out = Vec::new();
    let empty = Vec::new();
    for domain in domains {
        let aors = domain
            .pointer("/Domain/AoRs")
            .and_then(Value::as_array)
            .unwrap_or(&empty);
        for info in aors {
            let info = info.get("Info").unwrap_or(info);
            let aor = str_field(info, "AoR")?;
            let contacts = info
                .get("Contacts")
                .and_then(Value::as_array)
                .unwrap_or(&empty);
            for contact in contacts {
                let c = contact.get("Contact").unwrap_or(contact);
                let expires = match c.get("Expires") {
                    Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
                    Some(Value::String(s)) if s == "permanent" => u64::MAX,
                    Some(Value::String(_)) => continue, // "expired" / "deleted"
                    other => bail!("ul.dump: bad Expires {other:?} in {c}"),
                };
                let socket = str_field(c, "Socket").unwrap_or_default();
                let received = str_field(c, "Received")
                    .ok()
                    .filter(|r| !r.is_empty() && r != "[not set]");
                out.push(ContactInfo {
                    aor: aor.clone(),
                    uri: str_field(c, "Address")?,
                    expires,
                    cseq: c
                        .get("CSeq")
                        .and_then(Value::as_u64)
                        .with_context(|| format!("ul.dump: no CSeq in {c}"))?,
                    call_id: str_field(c, "Call-ID").unwrap_or_default(),
                    user_agent: str_field(c, "User-Agent").unwrap_or_default(),
                    transport: socket.split(':').next().unwrap_or_default().to_owned(),
                    socket,
                    received,
                });
            }
        }
    }
    Ok(out)
}

fn str_field(v: &Value, name: &str) -> anyhow::Result<String> {
    match v.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Ok(other.to_string()),
        None => bail!("ul.dump: no {name} in {v}"),
    }
}

/// One JSON-RPC call through Kamailio's jsonrpcs FIFO in `dir` (`kamailio_rpc.fifo`, replies
/// in `dir` too, see the config).
fn jsonrpc_fifo(dir: &Path, method: &str, params: &[Value]) -> anyhow::Result<Value> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    // jsonrpcs rejects reply names containing '.' or '/' ("Forbidden reply fifo filename").
    let reply_name = format!("reply_{}_{n}", std::process::id());
    let reply_path = dir.join(&reply_name);
    let c_path = std::ffi::CString::new(reply_path.as_os_str().as_encoded_bytes())
        .context("reply FIFO path")?;
    // SAFETY: plain syscall with a valid NUL-terminated path.
    if unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) } != 0 {
        let err = std::io::Error::last_os_error();
        bail!("mkfifo {}: {err}", reply_path.display());
    }
    struct RemoveOnDrop(PathBuf);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _cleanup = RemoveOnDrop(reply_path.clone());
    // Opened read+write before sending the request: opening never blocks, Kamailio's
    // writer can connect at any time, and holding a write end means no spurious EOF before
    // it does. The end of the reply is found by parsing instead.
    let mut reply = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&reply_path)
        .with_context(|| format!("opening {}", reply_path.display()))?;
    let request = serde_json::json!({
        "jsonrpc": "2.0",
        "method": method,
        "params": params,
        "reply_name": reply_name,
        "id": n,
    });
    let server = dir.join("kamailio_rpc.fifo");
    // Non-blocking open fails (ENXIO) instead of hanging if Kamailio is not reading it.
    let mut fifo = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&server)
        .with_context(|| format!("opening {} (is kamailio running?)", server.display()))?;
    fifo.write_all(format!("{request}\n").as_bytes())
        .context("writing RPC request")?;
    drop(fifo);

    let deadline = Instant::now() + RPC_TIMEOUT;
    let mut data = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            bail!(
                "no complete reply within {RPC_TIMEOUT:?}; got {} bytes: {:?}",
                data.len(),
                String::from_utf8_lossy(&data[..data.len().min(300)])
            );
        }
        let mut pfd = libc::pollfd {
            fd: reply.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(remaining.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for an fd we own.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == ErrorKind::Interrupted {
                continue;
            }
            bail!("poll on reply FIFO: {err}");
        }
        match reply.read(&mut chunk) {
            Ok(0) => bail!("reply FIFO closed unexpectedly"),
            Ok(len) => data.extend_from_slice(&chunk[..len]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                continue
            }
            Err(e) => return Err(e).context("reading reply FIFO"),
        }
        if data.trim_ascii_end().ends_with(b"}") {
            if let Ok(v) = serde_json::from_slice::<Value>(&data) {
                if let Some(err) = v.get("error") {
                    bail!("error reply: {err}");
                }
                return v
                    .get("result")
                    .cloned()
                    .with_context(|| format!("reply without result: {v}"));
            }
        }
    }
}

/// PIDs whose parent is `ppid` (from /proc/*/stat).
fn children_of(ppid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| proc_stat(*pid).is_some_and(|(_, parent)| parent == ppid))
        .collect()
}

/// (state, ppid) from /proc/PID/stat.
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: parse after the last ')'.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether `pid` is a live (non-zombie) process with `arg` among its command-line arguments.
fn runs_with_arg(pid: u32, arg: &str) -> bool {
    match proc_stat(pid) {
        Some((state, _)) if state != 'Z' && state != 'X' => {}
        _ => return false,
    }
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmd| cmd.split(|b| *b == 0).any(|a| a == arg.as_bytes()))
}

impl Logged for Kamailio {
    fn process(&self) -> &ChildGuard {
        &self.guard
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords() {
        assert_eq!(password_for("1001").as_deref(), Some("secret1001"));
        assert_eq!(password_for("load17").as_deref(), Some("pw-load17"));
        assert_eq!(password_for("load"), None);
        assert_eq!(password_for("loadx"), None);
        assert_eq!(password_for("9999"), None);
    }

    #[test]
    fn template_renders_without_placeholders() -> anyhow::Result<()> {
        let opts = KamailioOptions {
            algorithm: DigestAlgorithm::Sha256,
            fixed_callee: Some("127.0.0.1:6000".parse()?),
            register_with_407: true,
            sip_port: None,
            own_config: None,
            tls: None,
        };
        let cfg = render_config(&opts, 15060, Path::new("/tmp/x"))?;
        assert!(cfg.contains("listen=udp:127.0.0.1:15060"));
        assert!(cfg.contains(r#"modparam("auth", "algorithm", "SHA-256")"#));
        assert!(cfg.contains(r#"#!define FIXED_CALLEE "sip:127.0.0.1:6000""#));
        assert!(cfg.contains("unix:/tmp/x/kamailio_ctl"));
        assert!(cfg.contains(r#"proxy_challenge("$fd", "1");"#));
        assert_eq!(find_placeholder("a@b.c @X@"), Some("@X@"));
        Ok(())
    }

    #[test]
    fn parses_ul_dump() -> anyhow::Result<()> {
        let dump = serde_json::json!({"Domains": [{"Domain": {"Domain": "location", "Size": 1024,
            "AoRs": [{"Info": {"AoR": "1001", "HashID": 1, "Contacts": [
                {"Contact": {"Address": "sip:1001@127.0.0.1:4000;transport=udp", "Expires": 57,
                  "CSeq": 3, "Call-ID": "c1", "User-Agent": "ua", "Received": "[not set]",
                  "Socket": "udp:127.0.0.1:5060"}},
                {"Contact": {"Address": "sip:1001@127.0.0.1:4001", "Expires": "expired",
                  "CSeq": 2, "Socket": "udp:127.0.0.1:5060"}}]}},
              {"Info": {"AoR": "1002@127.0.0.1", "Contacts": [
                {"Contact": {"Address": "sip:1002@127.0.0.1:4002;transport=tcp", "Expires": 5,
                  "CSeq": 9, "Socket": "tcp:127.0.0.1:5060"}}]}}]}}]});
        let all = parse_ul_dump(&dump)?;
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].expires, 57);
        assert_eq!(all[0].cseq, 3);
        assert_eq!(all[0].received, None);
        assert_eq!(all[1].transport, "tcp");
        assert!(aor_matches(&all[1].aor, "1002"));
        assert!(!aor_matches(&all[1].aor, "100"));
        let empty = serde_json::json!({"Domains": [{"Domain": {"Domain": "location"}}]});
        assert!(parse_ul_dump(&empty)?.is_empty());
        Ok(())
    }
}
