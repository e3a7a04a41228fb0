//! The PUT budget: a token bucket per database (`puts-per-second`, `put-burst`) that paces
//! passes, so that after a quiet spell a commit ships at once and under steady writes uploads
//! coalesce to the budget (see `docs/design.md`, "Pacing and cost").

use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug)]
pub struct Budget {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Budget {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64) -> Budget {
        Budget {
            rate,
            burst: burst.max(1.0),
            tokens: burst.max(1.0),
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }

    /// How long until a token is available (zero if one is).
    pub fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 || self.rate <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }

    /// Spends `n` tokens (the balance may go negative: the next wait is longer).
    pub fn spend(&mut self, n: u32) {
        if self.rate > 0.0 {
            self.tokens -= f64::from(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_a_burst_then_paces_at_the_rate() {
        let t0 = Instant::now();
        let mut b = Budget::new(2.0, 3.0);
        for _ in 0..3 {
            assert_eq!(b.wait(t0), Duration::ZERO);
            b.spend(1);
        }
        // Spent: the next token comes at the rate (2 a second: half a second).
        let w = b.wait(t0);
        assert!(
            w > Duration::from_millis(490) && w <= Duration::from_millis(500),
            "{w:?}"
        );
        assert_eq!(b.wait(t0 + Duration::from_millis(500)), Duration::ZERO);
        // Refills never pass the burst.
        let mut b = Budget::new(2.0, 3.0);
        b.spend(3);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.wait(later), Duration::ZERO);
        b.spend(3);
        assert!(b.wait(later) > Duration::ZERO);
    }

    #[test]
    fn an_overspent_budget_waits_longer_and_a_zero_rate_never_waits() {
        let t0 = Instant::now();
        let mut b = Budget::new(1.0, 1.0);
        b.spend(3);
        let w = b.wait(t0);
        assert!(
            w > Duration::from_millis(2990) && w <= Duration::from_secs(3),
            "{w:?}"
        );
        let mut free = Budget::new(0.0, 1.0);
        free.spend(100);
        assert_eq!(free.wait(t0), Duration::ZERO);
    }
}
