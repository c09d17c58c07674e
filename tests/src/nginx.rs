//! A private nginx per test (Debian package `nginx`), e.g. as the WebSocket balancer in front
//! of several gateways.
//!
//! The test gives an http-level configuration (upstreams and servers, such as
//! `deploy/nginx/dialtone.conf` with its addresses replaced); the rig wraps it in a main
//! configuration that keeps the pid file, the logs and every temp directory in the instance's
//! temp dir, so nothing needs root-only paths. nginx runs in the foreground (`daemon off`) and
//! is stopped by PID (SIGTERM: its master ends its worker first).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::process::{ChildGuard, Logged, STOP_GRACE};

/// The nginx binary.
pub const NGINX_BIN: &str = "/usr/sbin/nginx";

/// Deadline for nginx to accept connections after spawning.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running nginx, stopped by PID on drop.
pub struct Nginx {
    guard: ChildGuard,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
}

impl Nginx {
    /// Runs nginx on `http_conf` and waits until it accepts TCP on `listen` (an address the
    /// configuration listens on).
    pub fn start(http_conf: &str, listen: SocketAddr) -> anyhow::Result<Nginx> {
        let dir = crate::instance_dir("nginx-")?;
        let dir_path = dir.path().to_owned();
        let main_conf = write_configs(&dir_path, http_conf)?;
        let mut cmd = nginx_command(&dir_path, &main_conf);
        cmd.args(["-g", "daemon off;"]);
        let guard = ChildGuard::spawn("nginx", cmd, &dir_path.join("nginx.out"))?;
        let nginx = Nginx {
            guard,
            dir: Some(dir),
            dir_path,
        };
        crate::wait::wait_until(READY_TIMEOUT, || {
            if let Some(status) = nginx.guard.try_wait()? {
                bail!("nginx exited ({status})\n{}", nginx.error_log());
            }
            Ok(TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok())
        })
        .with_context(|| format!("nginx did not listen on {listen}\n{}", nginx.error_log()))?;
        Ok(nginx)
    }

    /// `nginx -t` on `http_conf`: Ok when nginx accepts the configuration.
    pub fn check(http_conf: &str) -> anyhow::Result<()> {
        let dir = crate::instance_dir("nginx-check-")?;
        let main_conf = write_configs(dir.path(), http_conf)?;
        let output = nginx_command(dir.path(), &main_conf)
            .arg("-t")
            .output()
            .with_context(|| format!("running {NGINX_BIN} (apt-get install nginx)"))?;
        if !output.status.success() {
            bail!(
                "nginx -t refused the configuration: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// PID of the master process.
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// nginx's error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir_path.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Err(e) = self.guard.stop(STOP_GRACE) {
            eprintln!("[dialtone-tests] stopping nginx: {e:#}");
        }
        if crate::keep_artifacts() {
            if let Some(dir) = self.dir.take() {
                crate::retain_dir(dir, "nginx");
            }
        }
    }
}

impl Logged for Nginx {
    fn process(&self) -> &ChildGuard {
        &self.guard
    }
}

/// Writes the test's http-level file and the main configuration around it; returns the
/// main configuration's path.
fn write_configs(dir: &Path, http_conf: &str) -> anyhow::Result<PathBuf> {
    let dir_text = dir.to_str().context("temp dir path is not UTF-8")?;
    let site = dir.join("site.conf");
    std::fs::write(&site, http_conf).context("writing nginx site.conf")?;
    let main = format!(
        "worker_processes 1;\n\
         pid {dir_text}/nginx.pid;\n\
         error_log {dir_text}/error.log info;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n\
         \x20   access_log {dir_text}/access.log;\n\
         \x20   client_body_temp_path {dir_text}/client_body;\n\
         \x20   proxy_temp_path {dir_text}/proxy;\n\
         \x20   fastcgi_temp_path {dir_text}/fastcgi;\n\
         \x20   uwsgi_temp_path {dir_text}/uwsgi;\n\
         \x20   scgi_temp_path {dir_text}/scgi;\n\
         \x20   include {dir_text}/site.conf;\n\
         }}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, main).context("writing nginx.conf")?;
    Ok(path)
}

/// nginx with its prefix, configuration and early error log in `dir`.
fn nginx_command(dir: &Path, main_conf: &Path) -> Command {
    let mut cmd = Command::new(NGINX_BIN);
    cmd.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(main_conf)
        .arg("-e")
        .arg(dir.join("error.log"))
        .current_dir(dir);
    cmd
}
