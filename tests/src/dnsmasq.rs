//! dnsmasq (Debian package `dnsmasq-base`) as the DNS server of a test domain: NAPTR, SRV and
//! A records given on its command line, served on 127.0.0.1 only, with no upstream server
//! (`--no-resolv`), so no query leaves the machine. Every query is logged (`--log-queries`),
//! for tests that check what was asked. Stopped by PID when dropped.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::process::{ChildGuard, STOP_GRACE};

pub const DNSMASQ_BIN: &str = "/usr/sbin/dnsmasq";

/// Deadline for dnsmasq to log that it started (it binds its sockets first).
pub const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Records of the test domain, each in dnsmasq's own option syntax.
#[derive(Debug, Clone, Default)]
pub struct DnsRecords {
    args: Vec<String>,
}

impl DnsRecords {
    /// A NAPTR record of `name` pointing (flag `S`) at the SRV name `replacement`, for
    /// `service` (`SIP+D2U`, `SIP+D2T`, `SIPS+D2T`).
    pub fn naptr(
        mut self,
        name: &str,
        order: u16,
        preference: u16,
        service: &str,
        replacement: &str,
    ) -> Self {
        self.args.push(format!(
            "--naptr-record={name},{order},{preference},S,{service},,{replacement}"
        ));
        self
    }

    /// An SRV record `name` (e.g. `_sip._udp.example.test`) naming `target:port`.
    pub fn srv(mut self, name: &str, target: &str, port: u16, priority: u16, weight: u16) -> Self {
        self.args.push(format!(
            "--srv-host={name},{target},{port},{priority},{weight}"
        ));
        self
    }

    /// An A record `name` → `address`.
    /// `_sip._udp.dialtone.test` served by a dead server first (priority 10) and a live one
    /// second (priority 20), both on 127.0.0.1.
    pub fn dead_then_live(self, dead_port: u16, live_port: u16) -> Self {
        self.srv(
            "_sip._udp.dialtone.test",
            "dead.dialtone.test",
            dead_port,
            10,
            10,
        )
        .srv(
            "_sip._udp.dialtone.test",
            "live.dialtone.test",
            live_port,
            20,
            10,
        )
        .host("dead.dialtone.test", Ipv4Addr::LOCALHOST)
        .host("live.dialtone.test", Ipv4Addr::LOCALHOST)
    }

    pub fn host(mut self, name: &str, address: Ipv4Addr) -> Self {
        self.args.push(format!("--host-record={name},{address}"));
        self
    }
}

/// A running dnsmasq; stopped by PID when dropped.
pub struct Dnsmasq {
    guard: ChildGuard,
    dir: Option<tempfile::TempDir>,
    port: u16,
}

impl Dnsmasq {
    /// Serves `records` on 127.0.0.1 (UDP and TCP) on a free port, answers them with a TTL of
    /// 60 s, and refuses (no upstream) every other name.
    pub fn start(records: &DnsRecords) -> anyhow::Result<Dnsmasq> {
        if !Path::new(DNSMASQ_BIN).exists() {
            bail!("{DNSMASQ_BIN} not found: install dnsmasq (apt-get install dnsmasq-base)");
        }
        let dir = crate::instance_dir("dnsmasq-")?;
        let port = crate::free_port();
        let mut cmd = Command::new(DNSMASQ_BIN);
        cmd.arg("--conf-file=/dev/null")
            .args(["--no-resolv", "--no-hosts", "--keep-in-foreground"])
            .arg(format!("--port={port}"))
            .args(["--listen-address=127.0.0.1", "--bind-interfaces"])
            .arg(format!(
                "--pid-file={}",
                dir.path().join("dnsmasq.pid").display()
            ))
            .args(["--log-facility=-", "--log-queries", "--local-ttl=60"])
            .args(&records.args);
        let guard = ChildGuard::spawn("dnsmasq", cmd, &dir.path().join("dnsmasq.log"))?;
        let dnsmasq = Dnsmasq {
            guard,
            dir: Some(dir),
            port,
        };
        dnsmasq
            .guard
            .wait_for_log("started, version", READY_TIMEOUT)
            .context("dnsmasq did not start")?;
        Ok(dnsmasq)
    }

    /// Where it answers: `127.0.0.1:port`, for `[sip] dns_servers`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// How many logged lines contain `pattern` (queries look like `query[SRV] name from ...`).
    pub fn count_log(&self, pattern: &str) -> usize {
        self.guard.count_log(pattern)
    }

    pub fn log_text(&self) -> String {
        self.guard.log_text()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        if let Err(e) = self.guard.stop(STOP_GRACE) {
            eprintln!("[dialtone-tests] stopping dnsmasq: {e:#}");
        }
        if crate::keep_artifacts() {
            if let Some(dir) = self.dir.take() {
                crate::retain_dir(dir, "dnsmasq");
            }
        }
    }
}
