//! Bounded, jittered exponential backoff for transient storage errors.

use std::future::Future;
use std::time::Duration;

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
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(Error::Backend {
                    op: "get",
                    key: "k".into(),
                    message: "503".into(),
                    transient: true,
                })
            } else {
                Ok(7)
            }
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
}
