//! Retry: transient errors only, exponential backoff with full jitter, capped, and a budget that keeps
//! retries a bounded share of traffic so a failing dependency is not hit `max_attempts` times harder.

pub(crate) mod effects;
mod layer;

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use marty_config::{Backoff, RetryConfig};

pub use layer::{RetryLayer, RetryService};

/// When to try again and how long to wait first.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 means no retry.
    pub max_attempts: u32,
    /// How the wait grows.
    pub backoff: Backoff,
    /// The first wait.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
    /// Full jitter: a uniformly random wait up to the computed one.
    pub jitter: bool,
}

impl RetryPolicy {
    /// The policy `retry = { ... }` describes.
    pub fn from_config(config: &RetryConfig) -> Self {
        RetryPolicy {
            max_attempts: config.max_attempts,
            backoff: config.backoff,
            initial: config.initial,
            max: config.max,
            jitter: config.jitter,
        }
    }

    /// One attempt, no retry.
    pub fn disabled() -> Self {
        RetryPolicy {
            max_attempts: 1,
            backoff: Backoff::Fixed,
            initial: Duration::ZERO,
            max: Duration::ZERO,
            jitter: false,
        }
    }

    /// The wait before attempt number `attempt` (2 for the first retry), or `None` when the policy
    /// allows no such attempt.
    pub fn backoff_before_attempt(&self, attempt: u32) -> Option<Duration> {
        (attempt >= 2 && attempt <= self.max_attempts).then(|| self.backoff(attempt - 1))
    }

    /// The wait before retry number `retry` (1 for the wait after the first attempt).
    ///
    /// Exponential: `min(max, initial * 2^(retry-1))`; with jitter, uniformly random in `[0, that]`
    /// ("full jitter", which spreads synchronized clients best; see the AWS Architecture Blog,
    /// "Exponential Backoff And Jitter").
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = match self.backoff {
            Backoff::Fixed => self.initial,
            Backoff::Exponential => {
                let factor = 1u32.checked_shl(retry.saturating_sub(1)).unwrap_or(u32::MAX);
                self.initial.checked_mul(factor).unwrap_or(self.max).min(self.max)
            }
        };
        if self.jitter {
            Duration::from_nanos(fastrand::u64(..=ceiling.as_nanos().min(u128::from(u64::MAX)) as u64))
        } else {
            ceiling
        }
    }
}

/// Retries may spend what first attempts deposit: each first attempt adds `ratio` of a retry, each retry
/// costs one. A reserve lets a quiet service still retry; the balance is capped so a long healthy
/// stretch cannot bank a retry storm.
#[derive(Debug)]
pub struct RetryBudget {
    /// In thousandths of a retry.
    balance: AtomicI64,
    /// What a first attempt adds, in thousandths of a retry (the ratio; reconfigurable).
    deposit: AtomicI64,
    cap: i64,
}

const ONE_RETRY: i64 = 1000;

impl RetryBudget {
    /// Retries that are always available to a quiet dependency.
    pub const RESERVE: i64 = 10;
    /// The most retries the budget can bank.
    pub const CAP: i64 = 100;

    /// A budget where retries are at most `ratio` of first attempts (plus the reserve).
    pub fn new(ratio: f64) -> Self {
        RetryBudget {
            balance: AtomicI64::new(Self::RESERVE * ONE_RETRY),
            deposit: AtomicI64::new(deposit_for(ratio)),
            cap: Self::CAP * ONE_RETRY,
        }
    }

    /// Records a first attempt. Only reads when the budget is full, so a healthy dependency's calls do
    /// not write a shared cache line.
    #[inline]
    pub fn deposit(&self) {
        let deposit = self.deposit.load(Ordering::Relaxed);
        if deposit > 0 && self.balance.load(Ordering::Relaxed) < self.cap {
            self.balance.fetch_add(deposit, Ordering::Relaxed);
        }
    }

    /// Changes the share of first attempts retries may be; the balance stays.
    pub fn set_ratio(&self, ratio: f64) {
        self.deposit.store(deposit_for(ratio), Ordering::Relaxed);
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn try_withdraw(&self) -> bool {
        self.balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |balance| {
                (balance >= ONE_RETRY).then(|| balance - ONE_RETRY)
            })
            .is_ok()
    }

    /// Retries available now.
    pub fn available(&self) -> i64 {
        self.balance.load(Ordering::Relaxed) / ONE_RETRY
    }
}

fn deposit_for(ratio: f64) -> i64 {
    (ratio * ONE_RETRY as f64).round() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: bool) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 10,
            backoff: Backoff::Exponential,
            initial: Duration::from_millis(50),
            max: Duration::from_secs(2),
            jitter,
        }
    }

    #[test]
    fn exponential_backoff_doubles_up_to_the_cap() {
        let waits: Vec<_> = (1..=8).map(|retry| policy(false).backoff(retry).as_millis()).collect();
        assert_eq!(waits, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(policy(false).backoff(1000), Duration::from_secs(2), "huge retry numbers saturate, not overflow");
    }

    #[test]
    fn full_jitter_stays_within_zero_and_the_exponential_bound_and_varies() {
        let policy = policy(true);
        for retry in 1..=8 {
            let bound = (Duration::from_millis(50) * (1 << (retry - 1))).min(Duration::from_secs(2));
            let samples: Vec<_> = (0..200).map(|_| policy.backoff(retry)).collect();
            assert!(samples.iter().all(|wait| *wait <= bound), "retry {retry}: a wait exceeds {bound:?}");
            let distinct: std::collections::HashSet<_> = samples.iter().collect();
            assert!(distinct.len() > 100, "retry {retry}: jitter should spread waits, got {} distinct", distinct.len());
        }
    }

    #[test]
    fn fixed_backoff_waits_the_same() {
        let fixed = RetryPolicy { backoff: Backoff::Fixed, ..policy(false) };
        assert_eq!(fixed.backoff(5), Duration::from_millis(50));
    }

    #[test]
    fn the_budget_allows_the_reserve_then_ratio_of_first_attempts() {
        let budget = RetryBudget::new(0.2);
        let reserve = (0..1000).take_while(|_| budget.try_withdraw()).count();
        assert_eq!(reserve, RetryBudget::RESERVE as usize);
        for _ in 0..100 {
            budget.deposit();
        }
        let earned = (0..1000).take_while(|_| budget.try_withdraw()).count();
        assert_eq!(earned, 20, "100 first attempts at 20% buy 20 retries");
    }

    #[test]
    fn the_budget_is_capped() {
        let budget = RetryBudget::new(1.0);
        for _ in 0..10_000 {
            budget.deposit();
        }
        assert!(budget.available() <= RetryBudget::CAP + 1);
    }
}
