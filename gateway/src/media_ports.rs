//! The pool of RTP/RTCP port pairs. A lease holds both sockets bound, so
//! the ports are really ours while a call uses them, and gives the pair
//! back when dropped, whatever ended the call.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::metrics::gauge::Gauge;

pub struct PortPool {
    ip: IpAddr,
    free: Mutex<VecDeque<u16>>,
    in_use: Gauge,
}

/// An RTP port (even) and its RTCP port (the next one), bound.
pub struct PortLease {
    pool: Arc<PortPool>,
    rtp_port: u16,
    rtp: UdpSocket,
    rtcp: UdpSocket,
}

impl PortPool {
    /// Even ports from `min` to `max`, bound on `ip`.
    pub fn new(ip: IpAddr, min: u16, max: u16, in_use: Gauge) -> Arc<PortPool> {
        let first_even = min + min % 2;
        let free = (first_even..max).step_by(2).collect();
        Arc::new(PortPool {
            ip,
            free: Mutex::new(free),
            in_use,
        })
    }

    /// A free pair, skipping ports another program holds; `None` when the
    /// pool is exhausted.
    pub fn lease(self: &Arc<Self>) -> Option<PortLease> {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        let mut busy_elsewhere = Vec::new();
        let mut lease = None;
        while let Some(port) = free.pop_front() {
            match (
                UdpSocket::bind(SocketAddr::new(self.ip, port)),
                UdpSocket::bind(SocketAddr::new(self.ip, port + 1)),
            ) {
                (Ok(rtp), Ok(rtcp)) => {
                    lease = Some(PortLease {
                        pool: self.clone(),
                        rtp_port: port,
                        rtp,
                        rtcp,
                    });
                    break;
                }
                _ => busy_elsewhere.push(port),
            }
        }
        // Ports someone else held go to the back: they may be free later.
        free.extend(busy_elsewhere);
        if lease.is_some() {
            self.in_use.inc();
        }
        lease
    }
}

impl PortLease {
    pub fn rtp_port(&self) -> u16 {
        self.rtp_port
    }

    /// Where the RTP socket is bound.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.rtp
            .local_addr()
            .unwrap_or_else(|_| std::net::SocketAddr::new(self.pool.ip, self.rtp_port))
    }

    /// The RTP socket for async use; the lease keeps the port reserved
    /// until both are gone.
    pub fn rtp_socket(&self) -> std::io::Result<tokio::net::UdpSocket> {
        async_socket(&self.rtp)
    }

    /// The RTCP socket (RTP port + 1), likewise.
    pub fn rtcp_socket(&self) -> std::io::Result<tokio::net::UdpSocket> {
        async_socket(&self.rtcp)
    }
}

fn async_socket(socket: &UdpSocket) -> std::io::Result<tokio::net::UdpSocket> {
    let socket = socket.try_clone()?;
    socket.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(socket)
}

impl Drop for PortLease {
    fn drop(&mut self) {
        self.pool.in_use.dec();
        self.pool
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(self.rtp_port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_pairs_and_takes_them_back() {
        let in_use = Gauge::default();
        let pool = PortPool::new("127.0.0.1".parse().unwrap(), 41001, 41006, in_use.clone());
        let first = pool.lease().unwrap();
        let second = pool.lease().unwrap();
        assert_eq!((first.rtp_port(), second.rtp_port()), (41002, 41004));
        assert!(
            pool.lease().is_none(),
            "41006 would need 41007, beyond the range"
        );
        assert_eq!(in_use.get(), 2);
        drop(first);
        assert_eq!(pool.lease().unwrap().rtp_port(), 41002);
        assert_eq!(in_use.get(), 1);
    }

    #[test]
    fn skips_ports_other_programs_hold() {
        let squatter = UdpSocket::bind("127.0.0.1:41102").unwrap();
        let pool = PortPool::new("127.0.0.1".parse().unwrap(), 41102, 41106, Gauge::default());
        assert_eq!(pool.lease().unwrap().rtp_port(), 41104);
        drop(squatter);
    }
}
