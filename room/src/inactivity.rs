//! The RTP inactivity timer: a call whose far end stopped sending media
//! (crashed phone, lost network, a NAT binding gone) never sends BYE, so
//! silence on the RTP port is what ends it.
//!
//! Two limits: media must start within `start_timeout` of arming (the
//! answer), and once started must not pause for `stop_timeout`. On hold
//! the far end may legitimately send nothing, so the caller disarms the
//! timer with [`InactivityTimer::set_expecting_media`].

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InactivityConfig {
    /// Longest wait for the first packet.
    pub start_timeout: Duration,
    /// Longest gap between packets once media flowed.
    pub stop_timeout: Duration,
}

impl Default for InactivityConfig {
    /// 30 s each: far beyond any talk-spurt pause of senders with silence
    /// suppression (which send comfort noise or DTX frames every few
    /// hundred ms), well within what a caller tolerates on a dead line.
    fn default() -> Self {
        Self {
            start_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaTimeoutReason {
    NeverStarted,
    Stopped,
}

/// The media is dead: end the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaTimeout {
    pub reason: MediaTimeoutReason,
    /// Time since the last packet, or since arming if none came.
    pub silent_for: Duration,
}

#[derive(Debug, Clone)]
pub struct InactivityTimer {
    config: InactivityConfig,
    /// When media became expected; `None` while disarmed (hold).
    armed_at: Option<Instant>,
    last_packet: Option<Instant>,
    fired: bool,
}

impl InactivityTimer {
    /// Armed from `now`: call when the call is answered.
    pub fn new(config: InactivityConfig, now: Instant) -> Self {
        Self {
            config,
            armed_at: Some(now),
            last_packet: None,
            fired: false,
        }
    }

    /// Every valid RTP packet from the far end counts. A packet after a
    /// timeout re-arms the timer.
    pub fn on_packet(&mut self, now: Instant) {
        self.last_packet = Some(now);
        self.fired = false;
    }

    /// Disarms (hold, `a=recvonly`/`inactive`) or re-arms (resume): on
    /// resume the far end gets the full timeout again from `now`.
    pub fn set_expecting_media(&mut self, expecting: bool, now: Instant) {
        if !expecting {
            self.armed_at = None;
            return;
        }
        if self.armed_at.is_none() {
            // Deadlines count from the later of arming and the last packet.
            self.armed_at = Some(now);
            self.fired = false;
        }
    }

    /// When [`Self::poll`] next needs calling; `None` while disarmed, after
    /// firing, or if the deadline lies beyond what `Instant` can hold.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.fired {
            return None;
        }
        let armed_at = self.armed_at?;
        match self.last_packet {
            Some(last) => last.max(armed_at).checked_add(self.config.stop_timeout),
            None => armed_at.checked_add(self.config.start_timeout),
        }
    }

    /// Reports the timeout once when its deadline has passed.
    pub fn poll(&mut self, now: Instant) -> Option<MediaTimeout> {
        let deadline = self.next_deadline()?;
        if now < deadline {
            return None;
        }
        self.fired = true;
        let (reason, since) = match (self.last_packet, self.armed_at) {
            (Some(last), Some(armed_at)) => (MediaTimeoutReason::Stopped, last.max(armed_at)),
            (None, Some(armed_at)) => (MediaTimeoutReason::NeverStarted, armed_at),
            // next_deadline() returned None when disarmed.
            (_, None) => return None,
        };
        Some(MediaTimeout {
            reason,
            silent_for: now.saturating_duration_since(since),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> InactivityConfig {
        InactivityConfig {
            start_timeout: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn fires_once_when_media_never_starts() {
        let start = Instant::now();
        let mut timer = InactivityTimer::new(config(), start);
        assert_eq!(timer.next_deadline(), Some(start + Duration::from_secs(10)));
        assert_eq!(timer.poll(start + Duration::from_millis(9999)), None);
        let at = start + Duration::from_secs(11);
        assert_eq!(
            timer.poll(at),
            Some(MediaTimeout {
                reason: MediaTimeoutReason::NeverStarted,
                silent_for: Duration::from_secs(11),
            })
        );
        assert_eq!(timer.poll(at), None);
        assert_eq!(timer.next_deadline(), None);
    }

    #[test]
    fn packets_push_the_deadline_and_silence_fires() {
        let start = Instant::now();
        let mut timer = InactivityTimer::new(config(), start);
        for second in 1..=20 {
            let now = start + Duration::from_secs(second);
            timer.on_packet(now);
            assert_eq!(timer.poll(now), None);
        }
        let last = start + Duration::from_secs(20);
        assert_eq!(timer.next_deadline(), Some(last + Duration::from_secs(5)));
        assert_eq!(timer.poll(last + Duration::from_millis(4999)), None);
        assert_eq!(
            timer.poll(last + Duration::from_secs(5)),
            Some(MediaTimeout {
                reason: MediaTimeoutReason::Stopped,
                silent_for: Duration::from_secs(5),
            })
        );
    }

    #[test]
    fn hold_disarms_and_resume_gives_the_full_timeout_again() {
        let start = Instant::now();
        let mut timer = InactivityTimer::new(config(), start);
        timer.on_packet(start);
        timer.set_expecting_media(false, start + Duration::from_secs(1));
        assert_eq!(timer.next_deadline(), None);
        assert_eq!(timer.poll(start + Duration::from_secs(600)), None);
        let resumed = start + Duration::from_secs(600);
        timer.set_expecting_media(true, resumed);
        assert_eq!(
            timer.next_deadline(),
            Some(resumed + Duration::from_secs(5))
        );
        // Re-asserting while armed changes nothing.
        timer.set_expecting_media(true, resumed + Duration::from_secs(3));
        assert_eq!(
            timer.next_deadline(),
            Some(resumed + Duration::from_secs(5))
        );
        assert_eq!(
            timer
                .poll(resumed + Duration::from_secs(5))
                .map(|t| t.reason),
            Some(MediaTimeoutReason::Stopped)
        );
    }

    #[test]
    fn a_packet_after_the_timeout_rearms() {
        let start = Instant::now();
        let mut timer = InactivityTimer::new(config(), start);
        assert!(timer.poll(start + Duration::from_secs(10)).is_some());
        let late = start + Duration::from_secs(12);
        timer.on_packet(late);
        assert_eq!(timer.next_deadline(), Some(late + Duration::from_secs(5)));
    }

    #[test]
    fn huge_timeouts_mean_no_deadline_instead_of_overflow() {
        let start = Instant::now();
        let mut timer = InactivityTimer::new(
            InactivityConfig {
                start_timeout: Duration::MAX,
                stop_timeout: Duration::MAX,
            },
            start,
        );
        assert_eq!(timer.next_deadline(), None);
        assert_eq!(timer.poll(start + Duration::from_secs(1_000_000)), None);
    }
}
