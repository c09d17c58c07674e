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
//! Strict source (the default, as rtpengine's `strict-source` and
//! Asterisk's `strictrtp`): a new SSRC moves the destination only during a
//! short learning window that opens with the first packet latched (after
//! the point is added, or after a new SDP from the far end); once it has
//! closed, only packets from the latched address are taken. Without it,
//! anyone who guesses the port could take the media over at any time just
//! by sending with an SSRC of their own: the real far end would then be
//! refused as the retired SSRC and the attacker would hear the call. The
//! window keeps what latching is for: a far end whose first packets come
//! from elsewhere than its steady stream (a relay or a second NAT mapping
//! taking over at the start) is still followed.
//!
//! The room latches RTP; its RTCP goes next to where RTP goes (port + 1).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long after the first latch a new SSRC from another address may
/// still move it, in strict mode. A far end's steady stream is known within
/// a few packets (20 ms each); two seconds leave room for a relay or a
/// second NAT mapping to take over at the start of the media, and are short
/// enough that a port guesser must hit the first moments of a call.
pub const DEFAULT_LEARNING_WINDOW: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatchConfig {
    /// Accept (and latch onto) only sources with the IP address the SDP
    /// announced, any port: safer, but breaks far ends whose SDP shows a
    /// private address.
    pub require_signalled_ip: bool,
    /// Strict source: a new SSRC from another address moves the latch only
    /// within `learning_window` of the first latch; after that only the
    /// latched address is heard. Off: it moves the latch at any time
    /// (loose symmetric RTP).
    pub strict_source: bool,
    pub learning_window: Duration,
}

impl Default for LatchConfig {
    /// Strict, with the [`DEFAULT_LEARNING_WINDOW`]: the safe choice.
    fn default() -> Self {
        LatchConfig {
            require_signalled_ip: false,
            strict_source: true,
            learning_window: DEFAULT_LEARNING_WINDOW,
        }
    }
}

impl LatchConfig {
    /// The default, with strict source on or off.
    pub fn strict(strict_source: bool) -> Self {
        LatchConfig {
            strict_source,
            ..LatchConfig::default()
        }
    }
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
    /// When the learning window closes: set by the first latch since the
    /// latch was made or last given a new SDP.
    learning_until: Option<Instant>,
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
            learning_until: None,
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

    /// Whether a new SSRC from another address may still move the latch at
    /// `now`: always without strict source; with it, until the first packet
    /// latched and for the learning window after.
    pub fn is_learning(&self, now: Instant) -> bool {
        !self.config.strict_source || self.learning_until.is_none_or(|until| now < until)
    }

    /// A new SDP from the far end (re-INVITE): it may have moved, so the
    /// new address is the destination until packets say otherwise, and
    /// learning starts over (the far end's new stream may come from
    /// anywhere its signalling, not its old packets, says).
    pub fn update_signalled(&mut self, signalled: Option<SocketAddr>) {
        self.signalled = signalled.filter(is_usable);
        self.latched = None;
        self.retired_ssrc = None;
        self.learning_until = None;
    }

    /// Decides on a packet that already parsed as valid RTP (or RTCP) from
    /// `source`, whose (sender) SSRC is `ssrc`, arrived at `now`.
    pub fn on_packet(&mut self, now: Instant, source: SocketAddr, ssrc: u32) -> LatchDecision {
        let learning = self.is_learning(now);
        if let Some(latched) = &mut self.latched {
            if latched.source == source {
                // The far end may restart its stream on the same address.
                latched.ssrc = ssrc;
                return LatchDecision::Accept;
            }
            if latched.ssrc == ssrc || !learning {
                return LatchDecision::Reject;
            }
        }
        if self.retired_ssrc == Some(ssrc) || !self.source_allowed(source) {
            return LatchDecision::Reject;
        }
        let previous = self.destination();
        if self.latched.is_none() {
            // The first latch since the start or the last SDP: learning
            // goes on for the window, not longer.
            // (A window past the clock's end closes at once: the safe way.)
            self.learning_until = Some(now.checked_add(self.config.learning_window).unwrap_or(now));
        }
        self.retired_ssrc = self.latched.map(|latched| latched.ssrc);
        self.latched = Some(Latched { source, ssrc });
        LatchDecision::Latched {
            previous,
            destination: source,
        }
    }

    /// Whether `source` is where the latch took the far end's media from.
    pub fn is_latched_to(&self, source: SocketAddr) -> bool {
        self.latched.is_some_and(|latched| latched.source == source)
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

    /// One instant for the tests where time does not matter: all inside
    /// the learning window.
    fn now() -> Instant {
        thread_local!(static START: Instant = Instant::now());
        START.with(|start| *start)
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
            latch.on_packet(now(), addr("203.0.113.9:61000"), 7),
            LatchDecision::Latched {
                previous: Some(addr("10.0.0.5:4000")),
                destination: addr("203.0.113.9:61000"),
            }
        );
        assert_eq!(latch.destination(), Some(addr("203.0.113.9:61000")));
        assert_eq!(
            latch.on_packet(now(), addr("203.0.113.9:61000"), 7),
            LatchDecision::Accept
        );
    }

    #[test]
    fn other_source_with_same_ssrc_is_rejected() {
        let mut latch = RtpLatch::new(Some(addr("10.0.0.5:4000")), LatchConfig::default());
        latch.on_packet(now(), addr("203.0.113.9:61000"), 7);
        assert_eq!(
            latch.on_packet(now(), addr("198.51.100.1:5000"), 7),
            LatchDecision::Reject
        );
        assert_eq!(latch.destination(), Some(addr("203.0.113.9:61000")));
    }

    #[test]
    fn ssrc_change_from_a_new_source_relatches() {
        let mut latch = RtpLatch::new(Some(addr("10.0.0.5:4000")), LatchConfig::default());
        latch.on_packet(now(), addr("203.0.113.9:61000"), 7);
        assert_eq!(
            latch.on_packet(now(), addr("203.0.113.9:62000"), 8),
            LatchDecision::Latched {
                previous: Some(addr("203.0.113.9:61000")),
                destination: addr("203.0.113.9:62000"),
            }
        );
        assert_eq!(
            latch.on_packet(now(), addr("203.0.113.9:62000"), 8),
            LatchDecision::Accept
        );
        // The old stream's packets still in flight cannot pull it back.
        assert_eq!(
            latch.on_packet(now(), addr("203.0.113.9:61000"), 7),
            LatchDecision::Reject
        );
        assert_eq!(latch.destination(), Some(addr("203.0.113.9:62000")));
        // A third stream may take over again.
        assert!(matches!(
            latch.on_packet(now(), addr("203.0.113.9:63000"), 9),
            LatchDecision::Latched { .. }
        ));
    }

    #[test]
    fn ssrc_change_on_the_same_source_is_accepted_in_place() {
        let mut latch = RtpLatch::new(None, LatchConfig::default());
        latch.on_packet(now(), addr("203.0.113.9:61000"), 7);
        assert_eq!(
            latch.on_packet(now(), addr("203.0.113.9:61000"), 9),
            LatchDecision::Accept
        );
        // The new SSRC is now the latched one.
        assert_eq!(
            latch.on_packet(now(), addr("198.51.100.1:5000"), 9),
            LatchDecision::Reject
        );
    }

    #[test]
    fn restricted_latch_accepts_only_the_signalled_ip() {
        let config = LatchConfig {
            require_signalled_ip: true,
            ..LatchConfig::default()
        };
        let mut latch = RtpLatch::new(Some(addr("192.0.2.10:4000")), config);
        assert_eq!(
            latch.on_packet(now(), addr("198.51.100.1:4000"), 1),
            LatchDecision::Reject
        );
        assert!(!latch.is_latched());
        assert!(matches!(
            latch.on_packet(now(), addr("192.0.2.10:4100"), 1),
            LatchDecision::Latched { .. }
        ));
        // A new SSRC from a foreign IP cannot move it either.
        assert_eq!(
            latch.on_packet(now(), addr("198.51.100.1:4000"), 2),
            LatchDecision::Reject
        );
        assert_eq!(latch.destination(), Some(addr("192.0.2.10:4100")));
    }

    #[test]
    fn restricted_latch_without_signalled_address_accepts_nothing() {
        let config = LatchConfig {
            require_signalled_ip: true,
            ..LatchConfig::default()
        };
        let mut latch = RtpLatch::new(None, config);
        assert_eq!(
            latch.on_packet(now(), addr("192.0.2.10:4000"), 1),
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
            latch.on_packet(now(), addr("[2001:db8::1]:5000"), 3),
            LatchDecision::Latched {
                previous: None,
                destination: addr("[2001:db8::1]:5000"),
            }
        );
    }

    #[test]
    fn new_sdp_resets_the_latch() {
        let mut latch = RtpLatch::new(Some(addr("10.0.0.5:4000")), LatchConfig::default());
        latch.on_packet(now(), addr("203.0.113.9:61000"), 7);
        latch.update_signalled(Some(addr("10.0.0.6:4002")));
        assert!(!latch.is_latched());
        assert_eq!(latch.destination(), Some(addr("10.0.0.6:4002")));
        // Even the same SSRC from a new address latches again.
        assert!(matches!(
            latch.on_packet(now(), addr("203.0.113.9:61002"), 7),
            LatchDecision::Latched { .. }
        ));
    }

    const WINDOW: Duration = DEFAULT_LEARNING_WINDOW;

    #[test]
    fn strict_source_refuses_a_new_ssrc_from_elsewhere_after_the_window() {
        let start = now();
        let mut latch = RtpLatch::new(Some(addr("10.0.0.5:4000")), LatchConfig::default());
        assert!(latch.is_learning(start));
        latch.on_packet(start, addr("203.0.113.9:61000"), 7);
        let after = start + WINDOW;
        assert!(!latch.is_learning(after));
        assert_eq!(
            latch.on_packet(after, addr("198.51.100.1:5000"), 0xbad),
            LatchDecision::Reject,
            "an attacker's own SSRC no longer moves it"
        );
        assert_eq!(latch.destination(), Some(addr("203.0.113.9:61000")));
        assert_eq!(
            latch.on_packet(after, addr("203.0.113.9:61000"), 7),
            LatchDecision::Accept,
            "the real far end is still heard"
        );
        // The far end restarting its stream on its address is still fine.
        assert_eq!(
            latch.on_packet(after, addr("203.0.113.9:61000"), 8),
            LatchDecision::Accept
        );
    }

    #[test]
    fn strict_source_follows_a_new_source_within_the_window() {
        let start = now();
        let mut latch = RtpLatch::new(Some(addr("10.0.0.5:4000")), LatchConfig::default());
        // The far end's first packets come through one NAT mapping, its
        // steady stream through another, with a new SSRC.
        latch.on_packet(start, addr("203.0.113.9:61000"), 7);
        let moved = start + WINDOW / 2;
        assert_eq!(
            latch.on_packet(moved, addr("203.0.113.9:62000"), 8),
            LatchDecision::Latched {
                previous: Some(addr("203.0.113.9:61000")),
                destination: addr("203.0.113.9:62000"),
            }
        );
        // The window runs from the first latch: moving does not extend it.
        assert_eq!(
            latch.on_packet(start + WINDOW, addr("203.0.113.9:63000"), 9),
            LatchDecision::Reject
        );
        assert_eq!(latch.destination(), Some(addr("203.0.113.9:62000")));
    }

    #[test]
    fn strict_source_window_opens_with_the_first_packet_not_before() {
        let start = now();
        let mut latch = RtpLatch::new(Some(addr("10.0.0.5:4000")), LatchConfig::default());
        // A far end that starts sending late is still learnt.
        let late = start + 10 * WINDOW;
        assert!(latch.is_learning(late));
        assert!(matches!(
            latch.on_packet(late, addr("203.0.113.9:61000"), 7),
            LatchDecision::Latched { .. }
        ));
        assert!(latch.is_learning(late + WINDOW / 2));
        assert!(!latch.is_learning(late + WINDOW));
    }

    #[test]
    fn a_new_sdp_reopens_learning() {
        let start = now();
        let mut latch = RtpLatch::new(Some(addr("10.0.0.5:4000")), LatchConfig::default());
        latch.on_packet(start, addr("203.0.113.9:61000"), 7);
        let reinvite = start + 5 * WINDOW;
        assert!(!latch.is_learning(reinvite));
        latch.update_signalled(Some(addr("10.0.0.6:4002")));
        assert!(latch.is_learning(reinvite));
        assert_eq!(latch.destination(), Some(addr("10.0.0.6:4002")));
        assert!(matches!(
            latch.on_packet(reinvite, addr("203.0.113.9:61002"), 7),
            LatchDecision::Latched { .. }
        ));
        assert!(matches!(
            latch.on_packet(reinvite + WINDOW / 2, addr("203.0.113.9:61004"), 8),
            LatchDecision::Latched { .. }
        ));
        assert_eq!(
            latch.on_packet(reinvite + WINDOW, addr("198.51.100.1:5000"), 9),
            LatchDecision::Reject
        );
        assert_eq!(latch.destination(), Some(addr("203.0.113.9:61004")));
    }

    #[test]
    fn without_strict_source_a_new_ssrc_moves_it_at_any_time() {
        let start = now();
        let mut latch = RtpLatch::new(Some(addr("10.0.0.5:4000")), LatchConfig::strict(false));
        latch.on_packet(start, addr("203.0.113.9:61000"), 7);
        let much_later = start + 100 * WINDOW;
        assert!(latch.is_learning(much_later));
        assert!(matches!(
            latch.on_packet(much_later, addr("198.51.100.1:5000"), 8),
            LatchDecision::Latched { .. }
        ));
        // The latched SSRC from elsewhere is refused, as before.
        assert_eq!(
            latch.on_packet(much_later, addr("203.0.113.9:61000"), 8),
            LatchDecision::Reject
        );
    }
}
