//! Locating SIP servers (RFC 3263) without I/O: what to look up for a
//! registrar or proxy, in what order SRV answers are tried (RFC 2782:
//! priority, then weighted random), and when a request moves on to the next
//! server. The lookups themselves are in `dns.rs`.

use std::cmp::Reverse;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::target::{SipTarget, TransportKind};

/// The port of a `sip:` URI that names none and has no SRV record.
pub const DEFAULT_PORT: u16 = 5060;

/// Where one request goes: an address and the transport to reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destination {
    pub addr: SocketAddr,
    pub transport: TransportKind,
}

/// What to look up for a target (RFC 3263 sections 4.1 and 4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// A numeric host: nothing to look up.
    Literal(Destination),
    /// An explicit port: the host's A/AAAA records only.
    Address {
        host: String,
        port: u16,
        transport: TransportKind,
    },
    /// An explicit transport, no port: that transport's SRV records, else
    /// the host's addresses on 5060.
    Srv {
        host: String,
        transport: TransportKind,
    },
    /// Neither: NAPTR records choose the transports (else one SRV lookup
    /// per transport we speak), else the host's addresses on 5060 over UDP.
    Naptr { host: String },
}

pub fn plan(target: &SipTarget) -> Plan {
    let host = target.host.clone();
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Plan::Literal(Destination {
            addr: SocketAddr::new(ip, target.port.unwrap_or(DEFAULT_PORT)),
            transport: target.transport.unwrap_or_default(),
        });
    }
    match (target.port, target.transport) {
        (Some(port), transport) => Plan::Address {
            host,
            port,
            transport: transport.unwrap_or_default(),
        },
        (None, Some(transport)) => Plan::Srv { host, transport },
        (None, None) => Plan::Naptr { host },
    }
}

/// The SRV name of SIP over `transport` at `host`.
pub fn srv_name(host: &str, transport: TransportKind) -> String {
    match transport {
        TransportKind::Udp => format!("_sip._udp.{host}"),
        TransportKind::Tcp => format!("_sip._tcp.{host}"),
        // Not looked up: a TLS target goes where it is written (see
        // `SipTarget::is_tls`).
        TransportKind::Tls => format!("_sips._tcp.{host}"),
    }
}

/// The SRV names to try when the domain has no (usable) NAPTR records:
/// every transport we speak, UDP first as RFC 3263 suggests for `sip:`.
pub fn srv_names_without_naptr(host: &str) -> Vec<(String, TransportKind)> {
    [TransportKind::Udp, TransportKind::Tcp]
        .into_iter()
        .map(|transport| (srv_name(host, transport), transport))
        .collect()
}

/// One NAPTR record as the DNS gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naptr {
    pub order: u16,
    pub preference: u16,
    pub flags: String,
    pub services: String,
    /// The SRV name the record points at (trailing dot removed).
    pub replacement: String,
}

/// The transport a NAPTR service names, when we speak it. `SIPS+D2T`
/// (TLS) is skipped: this user agent has no TLS transport.
fn naptr_transport(service: &str) -> Option<TransportKind> {
    match service.to_ascii_uppercase().as_str() {
        "SIP+D2U" => Some(TransportKind::Udp),
        "SIP+D2T" => Some(TransportKind::Tcp),
        _ => None,
    }
}

/// The SRV names NAPTR records lead to, in the order they are to be tried
/// (order, then preference); records that are not terminal SRV pointers
/// (flag `S`) or name a service we do not speak are dropped.
pub fn srv_names_from_naptr(records: &[Naptr]) -> Vec<(String, TransportKind)> {
    let mut usable: Vec<(&Naptr, TransportKind)> = records
        .iter()
        .filter(|record| record.flags.eq_ignore_ascii_case("s"))
        .filter(|record| !record.replacement.is_empty())
        .filter_map(|record| Some((record, naptr_transport(&record.services)?)))
        .collect();
    usable.sort_by_key(|(record, _)| (record.order, record.preference));
    usable
        .into_iter()
        .map(|(record, transport)| (record.replacement.clone(), transport))
        .collect()
}

/// One SRV record as the DNS gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// The host (trailing dot removed); `.` (empty) means "no service".
    pub target: String,
}

/// SRV records in the order RFC 2782 says to try them: lowest priority
/// first; within a priority, each next record drawn with a chance
/// proportional to its weight. `draw(total)` returns a number in
/// `0..=total`, uniformly. A lone record naming `.` (no service) yields
/// nothing.
pub fn order_srv(records: &[Srv], draw: &mut impl FnMut(u32) -> u32) -> Vec<Srv> {
    let mut remaining: Vec<Srv> = records
        .iter()
        .filter(|record| !record.target.is_empty())
        .cloned()
        .collect();
    // Weight 0 first within a priority (RFC 2782), so that a draw of 0 can
    // pick one and heavier records still win in proportion.
    remaining.sort_by_key(|record| (record.priority, Reverse(record.weight == 0)));
    let mut ordered = Vec::with_capacity(remaining.len());
    while let Some(priority) = remaining.first().map(|record| record.priority) {
        let group_len = remaining
            .iter()
            .take_while(|record| record.priority == priority)
            .count();
        let mut group: Vec<Srv> = remaining.drain(..group_len).collect();
        while !group.is_empty() {
            let total: u32 = group.iter().map(|record| u32::from(record.weight)).sum();
            let drawn = draw(total).min(total);
            let mut running = 0;
            let chosen = group
                .iter()
                .position(|record| {
                    running += u32::from(record.weight);
                    running >= drawn
                })
                .unwrap_or(0);
            ordered.push(group.remove(chosen));
        }
    }
    ordered
}

/// Why a request to one destination did not get through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No answer in time (the transaction's timer, or our patience).
    Timeout,
    /// The transport refused (connection refused, ICMP unreachable).
    Unreachable,
    /// A final response.
    Status(u16),
}

impl Failure {
    /// RFC 3263 section 4.3: a timeout, a transport error or a 503 sends
    /// the request to the next destination; any other answer is the
    /// server's word.
    pub fn moves_on(self) -> bool {
        matches!(
            self,
            Failure::Timeout | Failure::Unreachable | Failure::Status(503)
        )
    }
}

/// The destinations of one request, in order, and the one in use.
#[derive(Debug, Clone)]
pub struct Failover<T> {
    targets: Vec<T>,
    current: usize,
}

impl<T> Failover<T> {
    /// `None` when there is nowhere to go.
    pub fn new(targets: Vec<T>) -> Option<Failover<T>> {
        (!targets.is_empty()).then_some(Failover {
            targets,
            current: 0,
        })
    }

    pub fn current(&self) -> &T {
        // `new` refuses an empty list and `next_after` never passes the end.
        &self.targets[self.current]
    }

    pub fn is_last(&self) -> bool {
        self.current + 1 >= self.targets.len()
    }

    /// How long a request waits for any answer from the current
    /// destination before moving on; the last one gets the request's whole
    /// time (`None`).
    pub fn patience(&self, per_destination: Duration) -> Option<Duration> {
        (!self.is_last()).then_some(per_destination)
    }

    /// The destination to try after `failure`, if it calls for one and one
    /// is left.
    pub fn next_after(&mut self, failure: Failure) -> Option<&T> {
        if !failure.moves_on() || self.is_last() {
            return None;
        }
        self.current += 1;
        Some(self.current())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(text: &str) -> SipTarget {
        text.parse().unwrap()
    }

    fn srv(priority: u16, weight: u16, name: &str) -> Srv {
        Srv {
            priority,
            weight,
            port: 5060,
            target: name.to_string(),
        }
    }

    fn names(records: &[Srv]) -> Vec<&str> {
        records
            .iter()
            .map(|record| record.target.as_str())
            .collect()
    }

    #[test]
    fn plans_follow_rfc_3263() {
        assert_eq!(
            plan(&target("sip:127.0.0.1")),
            Plan::Literal(Destination {
                addr: "127.0.0.1:5060".parse().unwrap(),
                transport: TransportKind::Udp,
            })
        );
        assert_eq!(
            plan(&target("sip:127.0.0.1:5070;transport=tcp")),
            Plan::Literal(Destination {
                addr: "127.0.0.1:5070".parse().unwrap(),
                transport: TransportKind::Tcp,
            })
        );
        // An explicit port means A/AAAA only, UDP unless told.
        assert_eq!(
            plan(&target("sip:pbx.example:5080")),
            Plan::Address {
                host: "pbx.example".into(),
                port: 5080,
                transport: TransportKind::Udp,
            }
        );
        assert_eq!(
            plan(&target("sip:pbx.example;transport=tcp")),
            Plan::Srv {
                host: "pbx.example".into(),
                transport: TransportKind::Tcp,
            }
        );
        assert_eq!(
            plan(&target("pbx.example")),
            Plan::Naptr {
                host: "pbx.example".into()
            }
        );
        assert_eq!(
            srv_names_without_naptr("pbx.example"),
            vec![
                ("_sip._udp.pbx.example".to_string(), TransportKind::Udp),
                ("_sip._tcp.pbx.example".to_string(), TransportKind::Tcp),
            ]
        );
    }

    #[test]
    fn naptr_records_are_ordered_and_filtered() {
        let naptr = |order, preference, flags: &str, services: &str, replacement: &str| Naptr {
            order,
            preference,
            flags: flags.into(),
            services: services.into(),
            replacement: replacement.into(),
        };
        let records = [
            naptr(20, 10, "S", "SIP+D2U", "_sip._udp.example"),
            naptr(10, 20, "s", "SIP+D2T", "_sip._tcp.example"),
            // TLS: not spoken here.
            naptr(5, 10, "S", "SIPS+D2T", "_sips._tcp.example"),
            // Not an SRV pointer, or not SIP at all.
            naptr(1, 10, "U", "SIP+D2U", "_sip._udp.other"),
            naptr(1, 10, "S", "E2U+sip", "_sip._udp.other"),
            naptr(10, 10, "S", "SIP+D2U", "_sip._udp.first"),
        ];
        assert_eq!(
            srv_names_from_naptr(&records),
            vec![
                ("_sip._udp.first".to_string(), TransportKind::Udp),
                ("_sip._tcp.example".to_string(), TransportKind::Tcp),
                ("_sip._udp.example".to_string(), TransportKind::Udp),
            ]
        );
    }

    #[test]
    fn srv_priority_comes_first_whatever_the_draw() {
        let records = [
            srv(20, 100, "backup"),
            srv(10, 0, "main"),
            srv(30, 1, "last"),
        ];
        for fixed in [0, 1, 50, u32::MAX] {
            let ordered = order_srv(&records, &mut |_| fixed);
            assert_eq!(names(&ordered), ["main", "backup", "last"]);
        }
    }

    #[test]
    fn srv_weight_decides_with_the_draw() {
        let records = [
            srv(10, 10, "light"),
            srv(10, 90, "heavy"),
            srv(10, 0, "zero"),
        ];
        // Running sums after the zero-weight record moves first: zero 0,
        // light 10, heavy 100.
        assert_eq!(
            names(&order_srv(&records, &mut |_| 0)),
            ["zero", "light", "heavy"]
        );
        assert_eq!(
            names(&order_srv(&records, &mut |_| 5)),
            ["light", "heavy", "zero"]
        );
        assert_eq!(
            names(&order_srv(&records, &mut |total| total)),
            ["heavy", "light", "zero"]
        );
    }

    #[test]
    fn srv_weights_share_out_the_first_place() {
        // A deterministic "random" source that walks every draw.
        let records = [srv(10, 1, "one"), srv(10, 3, "three")];
        let mut firsts = std::collections::HashMap::new();
        for n in 0..=4 {
            let ordered = order_srv(&records, &mut |total| n.min(total));
            *firsts.entry(ordered[0].target.clone()).or_insert(0) += 1;
        }
        // Draws 0 and 1 land on "one" (running sum 1), 2..=4 on "three".
        assert_eq!(firsts["one"], 2);
        assert_eq!(firsts["three"], 3);
    }

    #[test]
    fn a_dot_target_means_no_service() {
        assert!(order_srv(&[srv(0, 0, "")], &mut |_| 0).is_empty());
    }

    #[test]
    fn failover_moves_on_after_timeouts_unreachables_and_503_only() {
        let mut failover = Failover::new(vec!["a", "b", "c"]).unwrap();
        assert_eq!(*failover.current(), "a");
        assert_eq!(
            failover.patience(Duration::from_secs(2)),
            Some(Duration::from_secs(2))
        );
        assert_eq!(failover.next_after(Failure::Status(486)), None);
        assert_eq!(failover.next_after(Failure::Status(403)), None);
        assert_eq!(*failover.current(), "a");
        assert_eq!(failover.next_after(Failure::Status(503)), Some(&"b"));
        assert_eq!(failover.next_after(Failure::Timeout), Some(&"c"));
        assert!(failover.is_last());
        assert_eq!(failover.patience(Duration::from_secs(2)), None);
        assert_eq!(failover.next_after(Failure::Unreachable), None);
        assert_eq!(*failover.current(), "c");
        assert!(Failover::<u8>::new(vec![]).is_none());
    }
}
