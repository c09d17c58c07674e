//! Rate limits against guessing and floods, sans-IO: every method takes
//! `now`, so the tests drive a simulated clock.
//!
//! - [`TokenBucket`]: a burst, then a steady rate (START_CALL per session,
//!   and the base of the login limits);
//! - [`LoginLimiter`]: START_SESSION per user name and per source IP, a
//!   bucket each, plus a lockout after repeated refused logins that
//!   doubles with each lockout.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A burst of `capacity`, refilled at `per_minute`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(capacity: u32, per_minute: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            capacity: f64::from(capacity),
            per_second: f64::from(per_minute) / 60.0,
            tokens: f64::from(capacity),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.last = now;
    }

    /// How long until a token is there; zero when one is.
    fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((1.0 - self.tokens) / self.per_second.max(f64::MIN_POSITIVE))
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        match self.wait(now) {
            Duration::ZERO => {
                self.tokens -= 1.0;
                Ok(())
            }
            wait => Err(wait),
        }
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.capacity
    }
}

/// The login limits, from `[sessions]`.
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    pub burst: u32,
    pub per_minute: u32,
    pub max_failures: u32,
    pub failure_window: Duration,
    pub lockout: Duration,
    pub lockout_max: Duration,
}

/// More keys than this are not tracked: entries at rest are dropped
/// first, and if none is, a new key waits (each source IP can only add
/// user names at its own rate, so filling it takes many addresses).
const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    User(String),
    Ip(IpAddr),
}

#[derive(Debug)]
struct Entry {
    bucket: TokenBucket,
    /// Refused logins within the failure window, oldest first.
    failures: Vec<Instant>,
    locked_until: Option<Instant>,
    /// Lockouts so far: each doubles the next one.
    lockouts: u32,
    last_failure: Option<Instant>,
}

/// START_SESSION limits per user name and per source IP.
#[derive(Debug)]
pub struct LoginLimiter {
    limits: LoginLimits,
    entries: HashMap<Key, Entry>,
}

impl LoginLimiter {
    pub fn new(limits: LoginLimits) -> LoginLimiter {
        LoginLimiter {
            limits,
            entries: HashMap::new(),
        }
    }

    /// Whether a login of `user` from `ip` may go to the check (and the
    /// registrar) now; else how long to wait. Takes a token of both
    /// buckets only when both have one.
    pub fn admit(&mut self, user: &str, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let keys = [Key::User(user.to_string()), Key::Ip(ip)];
        let mut wait = Duration::ZERO;
        for key in &keys {
            let Some(entry) = self.entry(key, now) else {
                return Err(Duration::from_secs(1));
            };
            let locked = entry
                .locked_until
                .map_or(Duration::ZERO, |until| until.saturating_duration_since(now));
            wait = wait.max(locked).max(entry.bucket.wait(now));
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        for key in &keys {
            if let Some(entry) = self.entries.get_mut(key) {
                // Checked above: a token is there.
                let _ = entry.bucket.take(now);
            }
        }
        Ok(())
    }

    /// A login was refused (wrong password, unknown user).
    pub fn failed(&mut self, user: &str, ip: IpAddr, now: Instant) {
        let limits = self.limits;
        for key in [Key::User(user.to_string()), Key::Ip(ip)] {
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            entry
                .failures
                .retain(|at| now.saturating_duration_since(*at) < limits.failure_window);
            entry.failures.push(now);
            entry.last_failure = Some(now);
            if entry.failures.len() >= limits.max_failures as usize {
                let factor = 2u32.saturating_pow(entry.lockouts.min(31));
                let lockout = limits
                    .lockout
                    .saturating_mul(factor)
                    .min(limits.lockout_max);
                entry.locked_until = Some(now + lockout);
                entry.lockouts = entry.lockouts.saturating_add(1);
                entry.failures.clear();
            }
        }
    }

    /// A login of `user` succeeded: the user's failures are forgotten.
    /// The address's are not, so a guesser holding one valid account
    /// cannot wipe its record by logging in between guesses.
    pub fn succeeded(&mut self, user: &str) {
        if let Some(entry) = self.entries.get_mut(&Key::User(user.to_string())) {
            entry.failures.clear();
            entry.lockouts = 0;
        }
    }

    /// The key's entry, made if need be; `None` when the table is full of
    /// entries in use.
    fn entry(&mut self, key: &Key, now: Instant) -> Option<&mut Entry> {
        if !self.entries.contains_key(key) {
            if self.entries.len() >= MAX_KEYS {
                self.forget_at_rest(now);
                if self.entries.len() >= MAX_KEYS {
                    return None;
                }
            }
            let limits = self.limits;
            self.entries.insert(
                key.clone(),
                Entry {
                    bucket: TokenBucket::new(limits.burst, limits.per_minute, now),
                    failures: Vec::new(),
                    locked_until: None,
                    lockouts: 0,
                    last_failure: None,
                },
            );
        }
        self.entries.get_mut(key)
    }

    /// Drops entries that hold nothing worth keeping: a full bucket and no
    /// failure for as long as the longest lockout.
    fn forget_at_rest(&mut self, now: Instant) {
        let memory = self.limits.lockout_max.max(self.limits.failure_window);
        self.entries.retain(|_, entry| {
            let recent_failure = entry
                .last_failure
                .is_some_and(|at| now.saturating_duration_since(at) < memory);
            recent_failure || !entry.bucket.is_full(now)
        });
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: LoginLimits = LoginLimits {
        burst: 10,
        per_minute: 60,
        max_failures: 5,
        failure_window: Duration::from_secs(60),
        lockout: Duration::from_secs(30),
        lockout_max: Duration::from_secs(120),
    };

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn a_bucket_gives_a_burst_then_its_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(3, 60, start);
        for _ in 0..3 {
            assert_eq!(bucket.take(start), Ok(()));
        }
        let wait = bucket.take(start).unwrap_err();
        assert!(wait > Duration::from_millis(990) && wait <= Duration::from_secs(1));
        assert_eq!(bucket.take(start + Duration::from_secs(1)), Ok(()));
        // Idle time fills it only up to the burst.
        let later = start + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(bucket.take(later), Ok(()));
        }
        assert!(bucket.take(later).is_err());
    }

    #[test]
    fn failures_lock_the_user_and_the_address_out_with_growing_lockouts() {
        let mut now = Instant::now();
        let mut limiter = LoginLimiter::new(LIMITS);
        for _ in 0..5 {
            assert_eq!(limiter.admit("alice", ip(1), now), Ok(()));
            limiter.failed("alice", ip(1), now);
            now += Duration::from_secs(1);
        }
        // The fifth failure was a second ago: 29 s of the 30 s lockout left.
        let wait = limiter.admit("alice", ip(1), now).unwrap_err();
        assert_eq!(wait, Duration::from_secs(29));
        // The user name from elsewhere, and the address for another user.
        assert!(limiter.admit("alice", ip(2), now).is_err());
        assert!(limiter.admit("bob", ip(1), now).is_err());
        // Someone else is not affected.
        assert_eq!(limiter.admit("bob", ip(2), now), Ok(()));
        // After the lockout, five more failures lock out twice as long...
        now += wait;
        for _ in 0..5 {
            assert_eq!(limiter.admit("alice", ip(1), now), Ok(()));
            limiter.failed("alice", ip(1), now);
        }
        assert_eq!(
            limiter.admit("alice", ip(1), now),
            Err(Duration::from_secs(60))
        );
        // ...up to the cap.
        for _ in 0..3 {
            now += Duration::from_secs(120);
            for _ in 0..5 {
                limiter.failed("alice", ip(1), now);
            }
        }
        assert_eq!(
            limiter.admit("alice", ip(1), now),
            Err(Duration::from_secs(120))
        );
    }

    #[test]
    fn failures_spread_wider_than_the_window_do_not_lock() {
        let mut now = Instant::now();
        let mut limiter = LoginLimiter::new(LIMITS);
        for _ in 0..20 {
            assert_eq!(limiter.admit("alice", ip(1), now), Ok(()));
            limiter.failed("alice", ip(1), now);
            now += Duration::from_secs(15);
        }
    }

    #[test]
    fn success_forgives_the_user_not_the_address() {
        let now = Instant::now();
        let mut limiter = LoginLimiter::new(LIMITS);
        for _ in 0..4 {
            assert_eq!(limiter.admit("alice", ip(1), now), Ok(()));
            limiter.failed("alice", ip(1), now);
        }
        assert_eq!(limiter.admit("alice", ip(1), now), Ok(()));
        limiter.succeeded("alice");
        limiter.failed("alice", ip(2), now);
        assert_eq!(limiter.admit("alice", ip(2), now), Ok(()));
        limiter.failed("carol", ip(1), now);
        assert!(limiter.admit("dave", ip(1), now).is_err());
    }

    #[test]
    fn the_rate_applies_without_failures() {
        let now = Instant::now();
        let mut limiter = LoginLimiter::new(LIMITS);
        for n in 0..10 {
            assert_eq!(limiter.admit(&format!("user{n}"), ip(1), now), Ok(()));
        }
        assert_eq!(
            limiter.admit("user10", ip(1), now),
            Err(Duration::from_secs(1))
        );
        // A refused attempt took no token from the user's bucket either.
        assert_eq!(limiter.admit("user10", ip(2), now), Ok(()));
    }

    #[test]
    fn entries_at_rest_are_forgotten_when_the_table_fills() {
        let now = Instant::now();
        let mut limiter = LoginLimiter::new(LoginLimits {
            burst: 1,
            per_minute: 60,
            ..LIMITS
        });
        for n in 0..MAX_KEYS / 2 {
            let last = IpAddr::from(std::net::Ipv4Addr::from(n as u32));
            assert_eq!(limiter.admit(&format!("u{n}"), last, now), Ok(()));
        }
        assert_eq!(limiter.tracked(), MAX_KEYS);
        // Full, and every bucket still empty: a newcomer waits.
        assert!(limiter.admit("late", ip(9), now).is_err());
        // A second on, the buckets are full again and their entries go.
        assert_eq!(
            limiter.admit("late", ip(9), now + Duration::from_secs(1)),
            Ok(())
        );
        assert_eq!(limiter.tracked(), 2);
    }
}
