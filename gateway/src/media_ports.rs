//! The pool of RTP/RTCP port pairs. A lease holds both sockets bound, so
//! the ports are really ours while a call uses them, and gives the pair
//! back when dropped, whatever ended the call.
//!
//! Leases are drawn at random among the free pairs (thread RNG, a CSPRNG):
//! ports handed out in sequence tell whoever saw one call's port where the
//! next calls' media will be, and a port just given back would be reused at
//! once, where a far end's late packets may still arrive. Strict source
//! (see `dialtone_room::symmetric`) is what keeps a stranger out; not
//! knowing the port makes the attempt harder to begin with.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::metrics::gauge::Gauge;

pub struct PortPool {
    ip: IpAddr,
    /// The even ports not leased, in no particular order.
    free: Mutex<Vec<u16>>,
    in_use: Gauge,
}

/// An RTP port (even) and its RTCP port (the next one), bound; or the RTP
/// port alone, for a point that carries its RTCP on it (rtcp-mux).
pub struct PortLease {
    pool: Arc<PortPool>,
    rtp_port: u16,
    rtp: UdpSocket,
    rtcp: Option<UdpSocket>,
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

    /// A free pair at random, skipping ports another program holds;
    /// `None` when the pool is exhausted.
    pub fn lease(self: &Arc<Self>) -> Option<PortLease> {
        self.take(true)
    }

    /// A free RTP port at random, its RTCP port left unbound: for a point
    /// that muxes RTCP (WebRTC requires it), which would never read it.
    pub fn lease_muxed(self: &Arc<Self>) -> Option<PortLease> {
        self.take(false)
    }

    fn take(self: &Arc<Self>, with_rtcp: bool) -> Option<PortLease> {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        let mut busy_elsewhere = Vec::new();
        let mut lease = None;
        while !free.is_empty() {
            let drawn = rand::random_range(..free.len());
            let port = free.swap_remove(drawn);
            let rtp = UdpSocket::bind(SocketAddr::new(self.ip, port));
            let rtcp = with_rtcp
                .then(|| UdpSocket::bind(SocketAddr::new(self.ip, port + 1)))
                .transpose();
            match (rtp, rtcp) {
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
        // Ports someone else held go back: they may be free later.
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

    /// The RTP socket, non-blocking, for a media loop; the lease keeps
    /// the port reserved until both are gone.
    pub fn rtp_socket(&self) -> std::io::Result<UdpSocket> {
        non_blocking(&self.rtp)
    }

    /// The RTCP socket (RTP port + 1), likewise; an error for a muxed lease.
    pub fn rtcp_socket(&self) -> std::io::Result<UdpSocket> {
        match &self.rtcp {
            Some(rtcp) => non_blocking(rtcp),
            None => Err(std::io::Error::other(
                "this lease muxes RTCP on its RTP port",
            )),
        }
    }
}

fn non_blocking(socket: &UdpSocket) -> std::io::Result<UdpSocket> {
    let socket = socket.try_clone()?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

impl Drop for PortLease {
    fn drop(&mut self) {
        self.pool.in_use.dec();
        self.pool
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(self.rtp_port);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn pool(min: u16, max: u16, in_use: Gauge) -> Arc<PortPool> {
        PortPool::new("127.0.0.1".parse().unwrap(), min, max, in_use)
    }

    #[test]
    fn leases_pairs_and_takes_them_back() {
        let in_use = Gauge::default();
        let pool = pool(41001, 41006, in_use.clone());
        let first = pool.lease().unwrap();
        let second = pool.lease().unwrap();
        let leased: BTreeSet<u16> = [first.rtp_port(), second.rtp_port()].into();
        assert_eq!(leased, [41002, 41004].into());
        assert!(
            pool.lease().is_none(),
            "41006 would need 41007, beyond the range"
        );
        assert_eq!(in_use.get(), 2);
        let given_back = first.rtp_port();
        drop(first);
        assert_eq!(pool.lease().unwrap().rtp_port(), given_back);
        assert_eq!(in_use.get(), 1);
    }

    #[test]
    fn a_muxed_lease_binds_its_rtp_port_alone() {
        let pool = pool(41051, 41054, Gauge::default());
        let lease = pool.lease_muxed().unwrap();
        assert_eq!(lease.rtp_port(), 41052);
        assert!(UdpSocket::bind("127.0.0.1:41052").is_err(), "RTP is bound");
        assert!(UdpSocket::bind("127.0.0.1:41053").is_ok(), "RTCP is not");
        assert!(lease.rtcp_socket().is_err());
        drop(lease);
        // The pair goes back whole: a paired lease takes it again.
        let paired = pool.lease().unwrap();
        assert_eq!(paired.rtp_port(), 41052);
        assert!(paired.rtcp_socket().is_ok());
    }

    #[test]
    fn skips_ports_other_programs_hold() {
        let squatter = UdpSocket::bind("127.0.0.1:41102").unwrap();
        let pool = pool(41102, 41106, Gauge::default());
        let lease = pool.lease().unwrap();
        assert_eq!(lease.rtp_port(), 41104);
        assert!(pool.lease().is_none(), "41102 is held");
        drop(squatter);
        assert_eq!(pool.lease().unwrap().rtp_port(), 41102, "and free again");
    }

    #[test]
    fn leases_come_at_random_not_in_sequence() {
        // 50 pairs. Drawn in sequence, the first lease would always be 41200 and each next
        // one 2 above; at random, 20 fresh pools starting at the same port, or a whole pool
        // drawn in rising order, are chances of 50^-19 and 1/50!.
        let (min, max) = (41200, 41300);
        let firsts: BTreeSet<u16> = (0..20)
            .filter_map(|_| pool(min, max, Gauge::default()).lease())
            .map(|lease| lease.rtp_port())
            .collect();
        assert!(firsts.len() > 1, "every pool began at {firsts:?}");

        let pool = pool(min, max, Gauge::default());
        let leases: Vec<PortLease> = std::iter::from_fn(|| pool.lease()).collect();
        let ports: Vec<u16> = leases.iter().map(PortLease::rtp_port).collect();
        assert!(ports.len() > 2, "leased {ports:?}");
        assert!(ports
            .iter()
            .all(|port| port % 2 == 0 && (min..max).contains(port)));
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "no port leased twice");
        assert!(
            ports.windows(2).any(|pair| pair[0] > pair[1]),
            "leased in sequence: {ports:?}"
        );
    }
}
