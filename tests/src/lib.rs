//! `dialtone-tests`: the real-peer end-to-end test rig for Dialtone.
//!
//! This crate owns everything the integration tests (`tests/tests/*.rs`) need to exercise the
//! gateway against real peers: it starts a private Kamailio registrar/proxy
//! ([`kamailio::Kamailio`]), runs the gateway *binary* ([`gateway::Gateway`]), drives
//! WebSocket clients ([`ws_client::WsClient`]), and runs SIP peers on the other side: baresip
//! softphones that register, call, answer and record audio ([`baresip::Baresip`], checked with
//! [`audio`]) and SIPp callees that fail in scripted ways ([`sipp::Sipp`]). WebRTC tests drive
//! headless Chromium ([`browser::Browser`]) inside a private network namespace
//! ([`netns::in_private_netns`]).
//!
//! It deliberately does **not** know gateway internals: it never links the `gateway`, `ws` or
//! `sip` crates and talks to the gateway only over sockets (WebSocket, HTTP, SIP) and through the
//! binary's CLI (`dialtone --config FILE`). That keeps the end-to-end tests honest: they see
//! exactly what a real client, registrar or operator sees.
//!
//! Rules the rig enforces so tests stay reliable and can run in parallel:
//! - everything binds to 127.0.0.1 on free ports ([`ports::free_port`]);
//! - waits are on events (a log line, a socket answer, a registration) with deadlines
//!   ([`wait`]), never fixed sleeps;
//! - every process started is stopped by its PID when its guard drops, even while a test panics
//!   ([`process::ChildGuard`]); nothing is ever killed by name. Don't keep guards in `static`s:
//!   statics are never dropped.
//!
//! When a test panics, each guard prints the tail of its process log and the rig keeps the
//! instance's temp dir (config + full log) and prints its path. Set `DIALTONE_KEEP_LOGS=1` to
//! keep the temp dirs of passing tests too.

pub mod asterisk_conf;
pub mod audio;
pub mod baresip;
pub mod browser;
pub mod deploy;
pub mod dnsmasq;
pub mod ffmpeg;
pub mod gateway;
mod http;
pub mod kamailio;
pub mod netns;
pub mod nginx;
pub mod pki;
pub mod ports;
pub mod process;
pub mod rtp_peer;
pub mod rtp_stream;
pub mod sipp;
pub mod soak;
pub mod wait;
pub mod webrtc_peer;
pub mod ws_client;

pub use audio::AudioReport;
pub use baresip::{Baresip, BaresipAccount, BaresipOptions};
pub use gateway::Gateway;
pub use kamailio::{ContactInfo, DigestAlgorithm, Kamailio, KamailioOptions, OwnConfig};
pub use nginx::Nginx;
pub use ports::{free_port, free_port_block};
pub use process::{ChildGuard, LogMark, Logged};
pub use sipp::{Sipp, SippOptions, TracedMessage, UacScenario, UasScenario};
pub use ws_client::{SilentWs, WsClient};

/// Whether a test rig object should keep its temp dir when dropped: always while panicking (so
/// the log survives for the post-mortem), or when `DIALTONE_KEEP_LOGS` is set to a non-empty,
/// non-"0" value.
pub(crate) fn keep_artifacts() -> bool {
    std::thread::panicking()
        || std::env::var("DIALTONE_KEEP_LOGS").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Creates the per-instance temp dir. Kept short (under /tmp) because Kamailio puts unix
/// sockets in it and `sun_path` is limited to 108 bytes.
pub(crate) fn instance_dir(prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    use anyhow::Context as _;
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(std::env::temp_dir())
        .context("creating temp dir")
}

/// Keeps `dir` on disk instead of deleting it, announcing where it is.
pub(crate) fn retain_dir(dir: tempfile::TempDir, what: &str) {
    let path = dir.keep();
    eprintln!("[dialtone-tests] kept {what} files in {}", path.display());
}
