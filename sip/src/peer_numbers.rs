//! Numbers a SIP peer sends us, read so that no value can panic or stall a
//! call: every reader returns `None` on malformed input, saturates instead of
//! overflowing, and clamps to bounds we chose (docs/decisions.md, "SIP").
//!
//! The call reads `Session-Expires` (RFC 4028) from 2xx responses and
//! re-INVITE / UPDATE requests; the registration reads the lifetime the
//! registrar granted (`Expires` / Contact `expires`, parsed by rsipstack as a
//! `u32`). `Min-SE` and `Retry-After` are not read: we never send a
//! Session-Expires of our own (so never get a 422), and a refused REGISTER or
//! INVITE is reported, not retried on the peer's schedule.

use std::time::Duration;

use tokio::time::Instant;

/// The shortest session interval we watch: 1 s, the smallest the grammar
/// means (0 is refused). RFC 4028's 90 s Min-SE limits what a peer may ask
/// of a *refresher*; we only watch intervals the far end refreshes itself,
/// so its promise is taken as given: raising it would only keep a dead
/// peer's call longer. (The rig's session-timer test uses 3 s.)
pub const MIN_SESSION_INTERVAL: Duration = Duration::from_secs(1);

/// The longest session interval we watch. A peer that has not refreshed for
/// a day is not one to keep; the in-dialog OPTIONS keepalive guards liveness
/// anyway.
pub const MAX_SESSION_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

/// The shortest registration lifetime we act on. A registrar's grant is
/// honoured however short (refreshing later than it says loses the
/// binding); only a grant below a second is read as one.
pub const MIN_REGISTRATION_SECS: u32 = 1;

/// The longest registration lifetime we act on: a binding is refreshed at
/// least every 18 h (three quarters of a day), whatever the registrar says.
pub const MAX_REGISTRATION_SECS: u32 = 24 * 60 * 60;

/// Who refreshes a session (the `refresher` parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    Uac,
    Uas,
}

/// A `Session-Expires` header value, clamped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionExpires {
    /// Within [`MIN_SESSION_INTERVAL`]..=[`MAX_SESSION_INTERVAL`].
    pub interval: Duration,
    pub refresher: Option<Refresher>,
}

/// RFC 3261 `delta-seconds` (`1*DIGIT`): any number of digits, saturating at
/// `u64::MAX` rather than failing on values that do not fit, since "huge"
/// is what a peer meant. Anything but digits (and surrounding blanks) is
/// `None`.
pub fn delta_seconds(text: &str) -> Option<u64> {
    let digits = text.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(digits.bytes().fold(0u64, |value, digit| {
        value
            .saturating_mul(10)
            .saturating_add(u64::from(digit - b'0'))
    }))
}

/// Reads `delta-seconds *(;param)` (RFC 4028 section 4). An interval of 0
/// is malformed (the grammar allows it, but it asks for nothing).
pub fn parse_session_expires(value: &str) -> Option<SessionExpires> {
    let mut parts = value.split(';');
    let seconds = delta_seconds(parts.next()?)?;
    if seconds == 0 {
        return None;
    }
    let refresher = parts.find_map(|param| {
        let (name, value) = param.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("refresher") {
            return None;
        }
        let value = value.trim();
        if value.eq_ignore_ascii_case("uac") {
            Some(Refresher::Uac)
        } else if value.eq_ignore_ascii_case("uas") {
            Some(Refresher::Uas)
        } else {
            None
        }
    });
    Some(SessionExpires {
        interval: Duration::from_secs(seconds).clamp(MIN_SESSION_INTERVAL, MAX_SESSION_INTERVAL),
        refresher,
    })
}

/// When a session the far end refreshes is dead: it must refresh before the
/// interval less min(32 s, interval / 3) passes (RFC 4028 section 10).
/// `None` (no deadline) only if `now + interval` does not fit an `Instant`,
/// which the clamp makes impossible in practice.
pub fn session_expiry(now: Instant, interval: Duration) -> Option<Instant> {
    let interval = interval.min(MAX_SESSION_INTERVAL);
    let grace = (interval / 3).min(Duration::from_secs(32));
    now.checked_add(interval.saturating_sub(grace))
}

/// The registration lifetime to act on, from what the registrar granted
/// (`None`: nothing known) and what we asked for. A 2xx granting 0 to a
/// REGISTER that asked for a binding is taken as our request: the binding
/// exists, the registrar just did not say for how long.
pub fn registration_lifetime(granted: Option<u32>, requested: u32) -> u32 {
    let lifetime = match granted {
        Some(0) | None => requested,
        Some(granted) => granted,
    };
    lifetime.clamp(MIN_REGISTRATION_SECS, MAX_REGISTRATION_SECS)
}

/// When to refresh a binding of `lifetime` seconds: at three quarters.
pub fn registration_refresh(lifetime: u32) -> Duration {
    let lifetime = lifetime.clamp(MIN_REGISTRATION_SECS, MAX_REGISTRATION_SECS);
    Duration::from_millis(u64::from(lifetime) * 750)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn session_expires_is_read_and_clamped() {
        assert_eq!(
            parse_session_expires("1800;refresher=uas"),
            Some(SessionExpires {
                interval: Duration::from_secs(1800),
                refresher: Some(Refresher::Uas)
            })
        );
        assert_eq!(
            parse_session_expires(" 3 ; Refresher = UAC"),
            Some(SessionExpires {
                interval: Duration::from_secs(3),
                refresher: Some(Refresher::Uac)
            })
        );
        let huge = parse_session_expires("18446744073709551615;refresher=uas");
        assert_eq!(huge.map(|s| s.interval), Some(MAX_SESSION_INTERVAL));
        let beyond = parse_session_expires("99999999999999999999999999;refresher=uas");
        assert_eq!(beyond.map(|s| s.interval), Some(MAX_SESSION_INTERVAL));
        assert_eq!(parse_session_expires("90").map(|s| s.refresher), Some(None));
        for bad in ["", "0;refresher=uas", "-5", "soon", "1e9", "+90", "90x"] {
            assert_eq!(parse_session_expires(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_expiry_of_a_huge_interval_is_a_day_away_not_a_panic() {
        let now = Instant::now();
        let expiry = session_expiry(now, Duration::MAX);
        assert_eq!(
            expiry,
            Some(now + MAX_SESSION_INTERVAL - Duration::from_secs(32))
        );
        assert_eq!(
            session_expiry(now, Duration::from_secs(90)),
            Some(now + Duration::from_secs(60))
        );
    }

    #[test]
    fn registration_lifetimes_are_bounded() {
        assert_eq!(registration_lifetime(Some(3600), 600), 3600);
        assert_eq!(registration_lifetime(Some(0), 600), 600);
        assert_eq!(registration_lifetime(None, 600), 600);
        assert_eq!(
            registration_lifetime(Some(2), 600),
            2,
            "a short grant is honoured"
        );
        assert_eq!(
            registration_lifetime(Some(u32::MAX), 600),
            MAX_REGISTRATION_SECS
        );
        assert_eq!(registration_refresh(600), Duration::from_secs(450));
        assert_eq!(
            registration_refresh(u32::MAX),
            Duration::from_secs(18 * 60 * 60)
        );
    }

    proptest! {
        #[test]
        fn session_expires_never_panics_and_stays_in_bounds(value in ".*") {
            if let Some(parsed) = parse_session_expires(&value) {
                prop_assert!(parsed.interval >= MIN_SESSION_INTERVAL);
                prop_assert!(parsed.interval <= MAX_SESSION_INTERVAL);
                prop_assert!(session_expiry(Instant::now(), parsed.interval).is_some());
            }
        }

        #[test]
        fn any_digits_with_any_refresher_are_read(
            digits in "[0-9]{1,40}",
            refresher in "(uac|uas|UAS|other)",
            blanks in " {0,2}",
        ) {
            let value = format!("{digits}{blanks};refresher={refresher}");
            let parsed = parse_session_expires(&value);
            let zero = digits.bytes().all(|b| b == b'0');
            prop_assert_eq!(parsed.is_none(), zero);
            if let Some(parsed) = parsed {
                prop_assert_eq!(parsed.refresher.is_some(), refresher != "other");
                prop_assert!(session_expiry(Instant::now(), parsed.interval).is_some());
            }
        }

        #[test]
        fn any_expiry_is_representable(seconds in any::<u64>(), nanos in 0u32..1_000_000_000) {
            prop_assert!(session_expiry(Instant::now(), Duration::new(seconds, nanos)).is_some());
        }

        #[test]
        fn any_granted_lifetime_is_bounded(granted in any::<Option<u32>>(), requested in any::<u32>()) {
            let lifetime = registration_lifetime(granted, requested);
            prop_assert!((MIN_REGISTRATION_SECS..=MAX_REGISTRATION_SECS).contains(&lifetime));
            let refresh = registration_refresh(lifetime);
            prop_assert!(refresh < Duration::from_secs(u64::from(lifetime)));
            prop_assert!(Instant::now().checked_add(refresh).is_some());
        }
    }
}
