//! Admission of connections: a listener's total and per-source-address
//! caps, and the process's limits (file descriptors, malloc's arenas).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use tracing::{info, warn};

/// Counts a listener's open connections, in total and per source address.
pub struct ConnectionGate {
    /// What the gate guards, for logs (`HTTP`, `RTMP`, ...).
    name: &'static str,
    max_total: usize,
    max_per_ip: usize,
    /// Addresses held only to the total: a reverse proxy carries many
    /// clients' connections from one address.
    proxies: Vec<IpAddr>,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it frees its place.
pub struct Admission {
    gate: Arc<ConnectionGate>,
    ip: IpAddr,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Total(usize),
    PerIp(usize),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Total(max) => write!(f, "the listener holds its maximum of {max}"),
            Refusal::PerIp(max) => write!(f, "the address holds its maximum of {max}"),
        }
    }
}

impl ConnectionGate {
    pub fn new(name: &'static str, max_total: usize, max_per_ip: usize) -> Arc<ConnectionGate> {
        ConnectionGate::behind_proxies(name, max_total, max_per_ip, Vec::new())
    }

    /// A gate whose per-address cap does not apply to `proxies`.
    pub fn behind_proxies(
        name: &'static str,
        max_total: usize,
        max_per_ip: usize,
        proxies: Vec<IpAddr>,
    ) -> Arc<ConnectionGate> {
        Arc::new(ConnectionGate {
            name,
            max_total,
            max_per_ip,
            proxies,
            open: Mutex::default(),
        })
    }

    fn open(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for a connection from `ip`, or why there is none (logged
    /// at debug: a flood must not fill the log).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, Refusal> {
        let mut open = self.open();
        let from_ip = open.per_ip.get(&ip).copied().unwrap_or(0);
        let refusal = if open.total >= self.max_total {
            Some(Refusal::Total(self.max_total))
        } else if from_ip >= self.max_per_ip && !self.proxies.contains(&ip) {
            Some(Refusal::PerIp(self.max_per_ip))
        } else {
            None
        };
        if let Some(refusal) = refusal {
            tracing::debug!(listener = self.name, %ip, %refusal, "connection refused");
            return Err(refusal);
        }
        open.total += 1;
        open.per_ip.insert(ip, from_ip + 1);
        Ok(Admission {
            gate: self.clone(),
            ip,
        })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut open = self.gate.open();
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.per_ip.remove(&self.ip);
            }
        }
    }
}

/// Connections the kernel completes for a listener before it accepts them.
/// std's and tokio's 128 overflows under a burst of connects (1 000 at once
/// in the tests): the kernel then drops handshakes that the client believes
/// complete. The kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// A TCP listener on `address` with a backlog for bursts.
pub fn listen(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Raises the soft limit on open files to the hard limit: every WebSocket,
/// SIP connection and RTP socket is a descriptor, and distributions start
/// processes at 1024. Logs what the process got.
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        warn!(error = %std::io::Error::last_os_error(), "cannot read the open files limit");
        return;
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            warn!(error = %std::io::Error::last_os_error(), soft = before, hard = limit.rlim_max, "cannot raise the open files limit");
            return;
        }
    }
    info!(
        open_files = limit.rlim_cur,
        was = before,
        "open files limit"
    );
}

/// glibc's malloc arenas the process may have, unless `MALLOC_ARENA_MAX` in
/// the environment says otherwise. glibc gives each thread that allocates
/// while another holds an arena one of its own, up to 8 a core, and each
/// keeps what its thread freed: the gateway's tokio workers, media loops
/// and blocking threads spread a call's memory over several. Two arenas
/// held a relayed call in 8 KiB less (docs/performance.md, session 10).
const MALLOC_ARENAS: libc::c_int = 2;

/// Caps glibc's malloc arenas at [`MALLOC_ARENAS`], before the threads start.
pub fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    // SAFETY: mallopt takes a parameter and a value; it changes only
    // malloc's tuning.
    if unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) } != 1 {
        warn!("cannot limit malloc's arenas");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fd_soft_limit_is_raised_to_the_hard_limit() {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain rlimit calls on structs we own.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
            let hard = limit.rlim_max;
            limit.rlim_cur = limit.rlim_cur.min(hard).min(256);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
            raise_fd_limit();
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
            assert_eq!(limit.rlim_cur, hard);
        }
    }

    #[test]
    fn caps_hold_in_total_and_per_address_and_free_on_drop() {
        let gate = ConnectionGate::new("test", 3, 2);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let first = gate.admit(a).unwrap();
        let _second = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).err(), Some(Refusal::PerIp(2)));
        let _third = gate.admit(b).unwrap();
        assert_eq!(gate.admit(b).err(), Some(Refusal::Total(3)));
        drop(first);
        let _again = gate.admit(a).unwrap();
        assert_eq!(gate.admit(b).err(), Some(Refusal::Total(3)));

        let proxied = ConnectionGate::behind_proxies("test", 3, 1, vec![a]);
        let _through_proxy = [proxied.admit(a).unwrap(), proxied.admit(a).unwrap()];
        let _direct = proxied.admit(b).unwrap();
        assert_eq!(proxied.admit(a).err(), Some(Refusal::Total(3)));
    }
}
