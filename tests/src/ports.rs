//! Free loopback ports for the processes a test starts.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::{Mutex, OnceLock};

/// Ports already handed out by this process. The kernel may give the same ephemeral port again
/// once our probe sockets close, and two tests of one binary running in parallel must not get
/// the same port before either has bound it.
fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static SET: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    SET.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Returns a port that is currently free on 127.0.0.1 for **both** UDP and TCP (SIP listens on
/// both) and that this process has not handed out before.
///
/// Candidates are drawn at random from *below* the kernel's ephemeral range
/// (`ip_local_port_range`), so the port is never in use as the source port of some outgoing
/// connection, nor picked as one between our check and the caller's bind. The port is released
/// before returning; another process could still take it first, which random choice makes rare.
///
/// # Panics
/// If no such port is found in 1000 attempts (the machine is out of ports).
pub fn free_port() -> u16 {
    let (low, high) = candidate_window();
    for _ in 0..1000 {
        let span = u64::from(high - low) + 1;
        let Ok(port) = u16::try_from(u64::from(low) + next_random() % span) else {
            continue;
        };
        // Hold the TCP socket while probing UDP so the port is checked for both at once.
        let Ok(_tcp) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) else {
            continue;
        };
        if UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
            continue;
        }
        let mut set = handed_out().lock().unwrap_or_else(|e| e.into_inner());
        if set.insert(port) {
            return port;
        }
    }
    panic!("free_port: no port free for both UDP and TCP on 127.0.0.1 after 1000 attempts");
}

/// Returns the first of `n` consecutive ports (`base..base + n`) that are all currently free on
/// 127.0.0.1 for both UDP and TCP and that this process has not handed out before; all `n` are
/// marked handed out. `base` is even, so RTP/RTCP pairs inside the block line up.
///
/// For peers that need neighbouring ports: baresip listens for SIP/TLS on its SIP port + 1 and
/// takes RTP ports from a range; SIPp's RTP echo uses its media port and media port + 2.
/// Like [`free_port`], the ports are released before returning, so another *process* could
/// still take one of them before the caller binds it; random placement makes that rare.
///
/// # Panics
/// If `n` is 0 or no such block is found in 1000 attempts.
pub fn free_port_block(n: u16) -> u16 {
    assert!(n > 0, "free_port_block: empty block");
    let (low, high) = candidate_window();
    let high = high.saturating_sub(n - 1);
    'attempt: for _ in 0..1000 {
        let span = u64::from(high.saturating_sub(low)) + 1;
        let Ok(base) = u16::try_from(u64::from(low) + next_random() % span) else {
            continue;
        };
        let base = base & !1;
        if base < low {
            continue;
        }
        {
            let set = handed_out().lock().unwrap_or_else(|e| e.into_inner());
            if (base..base + n).any(|p| set.contains(&p)) {
                continue;
            }
        }
        // Hold every probe socket until the whole block has been checked.
        let mut probes = Vec::with_capacity(usize::from(n) * 2);
        for port in base..base + n {
            let Ok(tcp) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) else {
                continue 'attempt;
            };
            let Ok(udp) = UdpSocket::bind((Ipv4Addr::LOCALHOST, port)) else {
                continue 'attempt;
            };
            probes.push((tcp, udp));
        }
        let mut set = handed_out().lock().unwrap_or_else(|e| e.into_inner());
        if (base..base + n).any(|p| set.contains(&p)) {
            continue;
        }
        set.extend(base..base + n);
        return base;
    }
    panic!("free_port_block: no {n} consecutive ports free on 127.0.0.1 after 1000 attempts");
}

/// Ports outside the ephemeral range: below it if there is room, else above it.
fn candidate_window() -> (u16, u16) {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok();
    let mut parts = range.iter().flat_map(|r| r.split_whitespace());
    let low: u16 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(32768);
    let high: u16 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(60999);
    if low >= 11_000 {
        (10_000, low - 1)
    } else if high <= 64_535 {
        (high + 1, 65_535)
    } else {
        (10_000, 65_535)
    }
}

/// xorshift64*, seeded from the clock and PID so parallel test processes diverge.
fn next_random() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        x = nanos ^ (u64::from(std::process::id()) << 32) | 1;
    }
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    STATE.store(x, Ordering::Relaxed);
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_even_distinct_and_bindable() -> std::io::Result<()> {
        let a = free_port_block(24);
        let b = free_port_block(5);
        assert_eq!(a % 2, 0);
        assert_eq!(b % 2, 0);
        assert!(b + 5 <= a || a + 24 <= b, "blocks overlap: {a}+24, {b}+5");
        for p in (a..a + 24).chain(b..b + 5) {
            let _t = TcpListener::bind((Ipv4Addr::LOCALHOST, p))?;
            let _u = UdpSocket::bind((Ipv4Addr::LOCALHOST, p))?;
        }
        Ok(())
    }

    #[test]
    fn ports_are_distinct_and_bindable() -> std::io::Result<()> {
        let a = free_port();
        let b = free_port();
        assert_ne!(a, b);
        for p in [a, b] {
            let _t = TcpListener::bind((Ipv4Addr::LOCALHOST, p))?;
            let _u = UdpSocket::bind((Ipv4Addr::LOCALHOST, p))?;
        }
        Ok(())
    }
}
