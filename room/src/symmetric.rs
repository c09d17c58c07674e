//! Symmetric RTP (RFC 4961): send to the address packets come from, so a
//! far end behind NAT is reached through the mapping its own packets
//! opened, whatever private address its SDP announced.
//!
//! The address from SDP is only the first guess. The source of the first
//! valid packet becomes the destination ("latching"), and a packet from
//! elsewhere only moves the destination when it carries a new SSRC: the far
//! side restarted its stream, or a media relay took over. Packets from
//! other addresses with the latched SSRC are refused, so a stray or spoofed
//! datagram cannot hijack the call's media, and so are those of the SSRC
//! just latched away from, so the old stream's last packets cannot pull
//! the destination back. (A NAT rebinding that keeps the SSRC is therefore
//! not followed; the far end's next SSRC or re-INVITE fixes it.)
//!
//! One latch serves RTP; a second one, fed with RTCP sender SSRCs, serves
//! RTCP.

use std::net::SocketAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LatchConfig {
    /// Accept (and latch onto) only sources with the IP address the SDP
    /// announced, any port: safer, but breaks far ends whose SDP shows a
    /// private address.
    pub require_signalled_ip: bool,
}

/// What to do with a received packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatchDecision {
    /// From the current destination: use it.
    Accept,
    /// Use it; media now goes to the packet's source.
    Latched {
        previous: Option<SocketAddr>,
        destination: SocketAddr,
    },
    /// Not from our peer as far as we can tell: drop it.
    Reject,
}

#[derive(Debug, Clone)]
pub struct RtpLatch {
    config: LatchConfig,
    signalled: Option<SocketAddr>,
    latched: Option<Latched>,
    /// The SSRC we latched away from: its packets still in flight must not
    /// pull the destination back.
    retired_ssrc: Option<u32>,
}

#[derive(Debug, Clone, Copy)]
struct Latched {
    source: SocketAddr,
    ssrc: u32,
}

impl RtpLatch {
    /// `signalled` is the address from the far end's SDP; `None`, an
    /// unspecified IP (`c=0.0.0.0`, hold) or port 0 means "nowhere yet".
    pub fn new(signalled: Option<SocketAddr>, config: LatchConfig) -> Self {
        Self {
            config,
            signalled: signalled.filter(is_usable),
            latched: None,
            retired_ssrc: None,
        }
    }

    /// Where to send media now, if anywhere.
    pub fn destination(&self) -> Option<SocketAddr> {
        self.latched
            .map(|latched| latched.source)
            .or(self.signalled)
    }

    pub fn is_latched(&self) -> bool {
        self.latched.is_some()
    }

    /// A new SDP from the far end (re-INVITE): it may have moved, so the
    /// new address is the destination until packets say otherwise.
    pub fn update_signalled(&mut self, signalled: Option<SocketAddr>) {
        self.signalled = signalled.filter(is_usable);
        self.latched = None;
        self.retired_ssrc = None;
    }

    /// Decides on a packet that already parsed as valid RTP (or RTCP) from
    /// `source`, whose (sender) SSRC is `ssrc`.
    pub fn on_packet(&mut self, source: SocketAddr, ssrc: u32) -> LatchDecision {
        if let Some(latched) = &mut self.latched {
            if latched.source == source {
                // The far end may restart its stream on the same address.
                latched.ssrc = ssrc;
                return LatchDecision::Accept;
            }
            if latched.ssrc == ssrc {
                return LatchDecision::Reject;
            }
        }
        if self.retired_ssrc == Some(ssrc) || !self.source_allowed(source) {
            return LatchDecision::Reject;
        }
        let previous = self.destination();
        self.retired_ssrc = self.latched.map(|latched| latched.ssrc);
        self.latched = Some(Latched { source, ssrc });
        LatchDecision::Latched {
            previous,
            destination: source,
        }
    }

    fn source_allowed(&self, source: SocketAddr) -> bool {
        if !self.config.require_signalled_ip {
            return true;
        }
        self.signalled
            .is_some_and(|signalled| signalled.ip() == source.ip())
    }
}

fn is_usable(addr: &SocketAddr) -> bool {
    !addr.ip().is_unspecified() && addr.port() != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn sdp_address_is_the_destination_until_a_packet_arrives() {
        let latch = RtpLatch::new(Some(addr("10.0.0.5:4000")), LatchConfig::default());
        assert_eq!(latch.destination(), Some(addr("10.0.0.5:4000")));
        assert!(!latch.is_latched());
    }

    #[test]
    fn first_packet_source_becomes_the_destination() {
        let mut latch = RtpLatch::new(Some(addr("10.0.0.5:4000")), LatchConfig::default());
        assert_eq!(
            latch.on_packet(addr("203.0.113.9:61000"), 7),
            LatchDecision::Latched {
                previous: Some(addr("10.0.0.5:4000")),
                destination: addr("203.0.113.9:61000"),
            }
        );
        assert_eq!(latch.destination(), Some(addr("203.0.113.9:61000")));
        assert_eq!(
            latch.on_packet(addr("203.0.113.9:61000"), 7),
            LatchDecision::Accept
        );
    }

    #[test]
    fn other_source_with_same_ssrc_is_rejected() {
        let mut latch = RtpLatch::new(Some(addr("10.0.0.5:4000")), LatchConfig::default());
        latch.on_packet(addr("203.0.113.9:61000"), 7);
        assert_eq!(
            latch.on_packet(addr("198.51.100.1:5000"), 7),
            LatchDecision::Reject
        );
        assert_eq!(latch.destination(), Some(addr("203.0.113.9:61000")));
    }

    #[test]
    fn ssrc_change_from_a_new_source_relatches() {
        let mut latch = RtpLatch::new(Some(addr("10.0.0.5:4000")), LatchConfig::default());
        latch.on_packet(addr("203.0.113.9:61000"), 7);
        assert_eq!(
            latch.on_packet(addr("203.0.113.9:62000"), 8),
            LatchDecision::Latched {
                previous: Some(addr("203.0.113.9:61000")),
                destination: addr("203.0.113.9:62000"),
            }
        );
        assert_eq!(
            latch.on_packet(addr("203.0.113.9:62000"), 8),
            LatchDecision::Accept
        );
        // The old stream's packets still in flight cannot pull it back.
        assert_eq!(
            latch.on_packet(addr("203.0.113.9:61000"), 7),
            LatchDecision::Reject
        );
        assert_eq!(latch.destination(), Some(addr("203.0.113.9:62000")));
        // A third stream may take over again.
        assert!(matches!(
            latch.on_packet(addr("203.0.113.9:63000"), 9),
            LatchDecision::Latched { .. }
        ));
    }

    #[test]
    fn ssrc_change_on_the_same_source_is_accepted_in_place() {
        let mut latch = RtpLatch::new(None, LatchConfig::default());
        latch.on_packet(addr("203.0.113.9:61000"), 7);
        assert_eq!(
            latch.on_packet(addr("203.0.113.9:61000"), 9),
            LatchDecision::Accept
        );
        // The new SSRC is now the latched one.
        assert_eq!(
            latch.on_packet(addr("198.51.100.1:5000"), 9),
            LatchDecision::Reject
        );
    }

    #[test]
    fn restricted_latch_accepts_only_the_signalled_ip() {
        let config = LatchConfig {
            require_signalled_ip: true,
        };
        let mut latch = RtpLatch::new(Some(addr("192.0.2.10:4000")), config);
        assert_eq!(
            latch.on_packet(addr("198.51.100.1:4000"), 1),
            LatchDecision::Reject
        );
        assert!(!latch.is_latched());
        assert!(matches!(
            latch.on_packet(addr("192.0.2.10:4100"), 1),
            LatchDecision::Latched { .. }
        ));
        // A new SSRC from a foreign IP cannot move it either.
        assert_eq!(
            latch.on_packet(addr("198.51.100.1:4000"), 2),
            LatchDecision::Reject
        );
        assert_eq!(latch.destination(), Some(addr("192.0.2.10:4100")));
    }

    #[test]
    fn restricted_latch_without_signalled_address_accepts_nothing() {
        let config = LatchConfig {
            require_signalled_ip: true,
        };
        let mut latch = RtpLatch::new(None, config);
        assert_eq!(
            latch.on_packet(addr("192.0.2.10:4000"), 1),
            LatchDecision::Reject
        );
    }

    #[test]
    fn unspecified_or_zero_port_sdp_address_means_no_destination() {
        let held = RtpLatch::new(Some(addr("0.0.0.0:4000")), LatchConfig::default());
        assert_eq!(held.destination(), None);
        let rejected = RtpLatch::new(Some(addr("192.0.2.1:0")), LatchConfig::default());
        assert_eq!(rejected.destination(), None);
        let mut latch = RtpLatch::new(Some(addr("[::]:4000")), LatchConfig::default());
        assert_eq!(
            latch.on_packet(addr("[2001:db8::1]:5000"), 3),
            LatchDecision::Latched {
                previous: None,
                destination: addr("[2001:db8::1]:5000"),
            }
        );
    }

    #[test]
    fn new_sdp_resets_the_latch() {
        let mut latch = RtpLatch::new(Some(addr("10.0.0.5:4000")), LatchConfig::default());
        latch.on_packet(addr("203.0.113.9:61000"), 7);
        latch.update_signalled(Some(addr("10.0.0.6:4002")));
        assert!(!latch.is_latched());
        assert_eq!(latch.destination(), Some(addr("10.0.0.6:4002")));
        // Even the same SSRC from a new address latches again.
        assert!(matches!(
            latch.on_packet(addr("203.0.113.9:61002"), 7),
            LatchDecision::Latched { .. }
        ));
    }
}
