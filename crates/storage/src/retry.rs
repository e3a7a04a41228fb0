//! Jittered exponential backoff for transient storage errors: [`retry`] gives up after a number
//! of attempts; [`retry_until`] keeps going until the operation lands or fails for good, and
//! retries at once when told to stop (a shutdown must not wait out a 30 s backoff when the
//! endpoint is back).
//!
//! Both call the *same* operation each time. For a write that is what makes an unknown outcome
//! safe: a create-only PUT whose answer was lost is retried with the same key and the same
//! bytes, and lands as [`PutOutcome::AlreadyExisted`](crate::PutOutcome::AlreadyExisted) if
//! the first attempt did land. Never build a different object for a retry.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// How to retry.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// Delay before the second attempt; doubled each time after.
    pub initial: Duration,
    /// Longest delay between attempts.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `n` (1-based, `n >= 2`), with up to 50% random jitter.
    pub fn delay(&self, n: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << (n.saturating_sub(2)).min(16));
        let d = exp.min(self.max);
        let jitter = rand::random::<f64>() * 0.5;
        d.mul_f64(1.0 - jitter / 2.0)
    }
}

/// Runs `op` until it succeeds, fails with a permanent error, or runs out of attempts.
pub async fn retry<T, F, Fut>(policy: RetryPolicy, what: &str, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut n = 1;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && n < policy.attempts => {
                n += 1;
                let d = policy.delay(n);
                tracing::warn!(error = %e, attempt = n, backoff = ?d, "{what} failed, retrying");
                tokio::time::sleep(d).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs `op` until it succeeds or fails with an error that is not transient, backing off
/// between attempts from `policy.initial` up to `policy.max` (doubling, with up to 25% jitter;
/// `policy.attempts` is not used: there is no limit).
///
/// The contract:
/// - `op` is called again with nothing changed; it must be the same operation (same key, same
///   bytes) each time, so that an attempt whose outcome was unknown is resolved by the next.
/// - Returns `Ok` with the first success, or the first non-transient error (a
///   [`Conflict`](Error::Conflict), a set-up mistake, ...). A transient error is never returned.
/// - Once `stop` is cancelled (before or during a backoff), the pending backoff ends at once and
///   `op` is retried immediately; later backoffs start again from `policy.initial` (so a stopping
///   agent retries promptly, without a busy loop, while the endpoint is still away). It does
///   not give up on `stop`: to bound a shutdown, wrap the call in [`tokio::time::timeout`].
/// - Cancel-safe between attempts. Dropping the future during an attempt leaves that attempt's
///   outcome unknown: a later call must retry the same operation, not a different one.
pub async fn retry_until<T, F, Fut>(
    policy: RetryPolicy,
    what: &str,
    stop: &CancellationToken,
    mut op: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut n: u32 = 1;
    // The attempt number the backoff counts from: reset when `stop` fires.
    let mut base: u32 = 0;
    let mut stopped = stop.is_cancelled();
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() => {
                n = n.saturating_add(1);
                if !stopped && stop.is_cancelled() {
                    stopped = true;
                    base = n - 1;
                }
                let d = policy.delay(n - base);
                tracing::warn!(error = %e, attempt = n, backoff = ?d, stopping = stopped, "{what} failed, retrying");
                if stopped {
                    tokio::time::sleep(d).await;
                } else {
                    tokio::select! {
                        () = tokio::time::sleep(d) => {}
                        () = stop.cancelled() => {
                            stopped = true;
                            base = n;
                            tracing::info!(attempt = n, "{what}: stopping, retrying at once");
                        }
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether an error is worth retrying; used by callers that keep their own loop.
pub fn transient(e: &Error) -> bool {
    e.is_transient()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn retries_transient_then_succeeds() {
        let calls = AtomicU32::new(0);
        let r = retry(RetryPolicy::default(), "op", || async {
            down_for(&calls, 2).map(|()| 7)
        })
        .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let r: Result<()> = retry(RetryPolicy::default(), "op", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Error::NotFound { key: "k".into() })
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// One call of an operation whose endpoint is down for the first `failures` calls.
    fn down_for(calls: &AtomicU32, failures: u32) -> Result<()> {
        if calls.fetch_add(1, Ordering::SeqCst) < failures {
            Err(down())
        } else {
            Ok(())
        }
    }

    fn policy(attempts: u32, initial: Duration, max: Duration) -> RetryPolicy {
        RetryPolicy {
            attempts,
            initial,
            max,
        }
    }

    fn down() -> Error {
        Error::Backend {
            op: "put",
            key: "k".into(),
            message: "timed out".into(),
            transient: true,
            source: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_until_keeps_going_past_the_attempt_limit_with_a_capped_backoff() {
        let calls = AtomicU32::new(0);
        let policy = policy(2, Duration::from_millis(100), Duration::from_secs(2));
        let started = tokio::time::Instant::now();
        let r = retry_until(policy, "op", &CancellationToken::new(), || async {
            down_for(&calls, 20).map(|()| "landed")
        })
        .await;
        assert_eq!(r.unwrap(), "landed");
        assert_eq!(calls.load(Ordering::SeqCst), 21);
        let waited = started.elapsed();
        // 0.1 + 0.2 + 0.4 + 0.8 + 1.6, then 15 waits capped at 2 s, less up to 25% jitter each.
        assert!(
            waited <= Duration::from_millis(3100 + 15 * 2000),
            "{waited:?}"
        );
        assert!(
            waited >= Duration::from_millis((3100 + 15 * 2000) * 3 / 4),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retry_until_returns_permanent_errors() {
        let r: Result<()> = retry_until(
            RetryPolicy::default(),
            "op",
            &CancellationToken::new(),
            || async { Err(Error::Conflict { key: "k".into() }) },
        )
        .await;
        assert!(matches!(r, Err(Error::Conflict { .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_cuts_a_long_backoff_short_and_retries_at_once() {
        let policy = policy(0, Duration::from_secs(30), Duration::from_secs(30));
        let stop = CancellationToken::new();
        let calls = std::sync::Arc::new(AtomicU32::new(0));
        let task = {
            let (stop, calls) = (stop.clone(), calls.clone());
            tokio::spawn(async move {
                retry_until(policy, "op", &stop, || {
                    let calls = calls.clone();
                    // Down for the first attempt only: the endpoint is back by the stop.
                    async move { down_for(&calls, 1) }
                })
                .await
            })
        };
        // Let the first attempt fail and the 22-30 s backoff begin.
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "still backing off");
        let stopped_at = tokio::time::Instant::now();
        stop.cancel();
        task.await.unwrap().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(
            stopped_at.elapsed(),
            Duration::ZERO,
            "the retry came at once, not after the backoff"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_stop_backoff_starts_again_from_the_initial_delay() {
        let policy = policy(0, Duration::from_millis(100), Duration::from_secs(30));
        let stop = CancellationToken::new();
        stop.cancel();
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        retry_until(policy, "op", &stop, || async { down_for(&calls, 3) })
            .await
            .unwrap();
        // 0.1 + 0.2 + 0.4 s at most: short, but not a busy loop.
        let waited = started.elapsed();
        assert!(waited <= Duration::from_millis(700), "{waited:?}");
        assert!(waited >= Duration::from_millis(700 * 3 / 4), "{waited:?}");
    }
}
