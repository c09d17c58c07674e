//! Polling with deadlines: the rig's replacement for fixed sleeps.
//!
//! The condition is checked first, then every [`POLL_INTERVAL`] until it holds or the deadline
//! passes (it is checked once more at the deadline). A condition that returns `Err` ends the
//! wait at once with that error: map transient errors to `Ok(false)` yourself if you mean to
//! tolerate them. The timeout error is generic; add `.context(..)` saying what was awaited.
//!
//! ```no_run
//! # async fn demo(gw: &dialtone_tests::Gateway) -> anyhow::Result<()> {
//! use std::time::Duration;
//! use dialtone_tests::wait::{wait_until, wait_until_async};
//! wait_until(Duration::from_secs(5), || Ok(gw.status()?["sessions"] == 0))?;
//! wait_until_async(Duration::from_secs(5), async || Ok(gw.status()?["calls"] == 0)).await?;
//! # Ok(()) }
//! ```

use std::time::{Duration, Instant};

use anyhow::bail;

/// How often conditions are re-checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Blocks until `cond` returns `Ok(true)`.
pub fn wait_until(
    timeout: Duration,
    mut cond: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    wait_for(timeout, || Ok(cond()?.then_some(())))
}

/// Blocks until `probe` returns `Ok(Some(value))` and returns the value.
pub fn wait_for<T>(
    timeout: Duration,
    mut probe: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe()? {
            return Ok(v);
        }
        let now = Instant::now();
        if now >= deadline {
            bail!("condition not met within {timeout:?}");
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

/// Async [`wait_until`]: sleeps with tokio between checks, so other tasks keep running.
pub async fn wait_until_async(
    timeout: Duration,
    mut cond: impl AsyncFnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    wait_for_async(timeout, async || Ok(cond().await?.then_some(()))).await
}

/// Async [`wait_for`].
pub async fn wait_for_async<T>(
    timeout: Duration,
    mut probe: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await? {
            return Ok(v);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            bail!("condition not met within {timeout:?}");
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_until_and_timeout() -> anyhow::Result<()> {
        let mut n = 0;
        wait_until(Duration::from_secs(5), || {
            n += 1;
            Ok(n >= 3)
        })?;
        assert_eq!(n, 3);
        let start = Instant::now();
        let err = wait_until(Duration::from_millis(120), || Ok(false))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("not met within"), "{err}");
        assert!(start.elapsed() >= Duration::from_millis(120));
        let failed = wait_until(Duration::from_secs(5), || anyhow::bail!("boom"));
        assert!(failed.is_err());
        Ok(())
    }

    #[tokio::test]
    async fn async_wait_for_returns_value() -> anyhow::Result<()> {
        let mut n = 0u32;
        let v = wait_for_async(Duration::from_secs(5), async || {
            n += 1;
            Ok((n >= 2).then_some(n * 10))
        })
        .await?;
        assert_eq!(v, 20);
        wait_until_async(Duration::from_secs(5), async || Ok(true)).await?;
        Ok(())
    }
}
