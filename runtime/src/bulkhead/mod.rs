//! The bulkhead: at most `max_concurrent` calls to one dependency at once; a call waits at most
//! `max_wait` for a permit (and never past its deadline), then is rejected.

mod layer;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use crate::error::Error;
use crate::timeout::{Deadline, WithDeadline};

pub use layer::{BulkheadLayer, BulkheadService};

/// One dependency's bulkhead, shared by every call to it.
#[derive(Debug)]
pub struct Bulkhead {
    dependency: Arc<str>,
    semaphore: Semaphore,
    max_concurrent: usize,
    max_wait: Duration,
}

impl Bulkhead {
    /// A bulkhead of `max_concurrent` permits where a call may wait `max_wait` for one.
    pub fn new(dependency: impl Into<Arc<str>>, max_concurrent: usize, max_wait: Duration) -> Self {
        Bulkhead { dependency: dependency.into(), semaphore: Semaphore::new(max_concurrent), max_concurrent, max_wait }
    }

    /// Permits free right now (the `marty_bulkhead_available` gauge).
    pub fn available(&self) -> usize {
        self.semaphore.available_permits()
    }

    /// The bulkhead's size.
    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }

    /// Takes a permit, waiting up to `max_wait` but never past `deadline`: [`Error::Rejected`] when
    /// `max_wait` ran out, [`Error::Timeout`] when the call's deadline did.
    #[inline]
    pub async fn acquire(&self, deadline: Option<Deadline>) -> Result<SemaphorePermit<'_>, Error> {
        match self.semaphore.try_acquire() {
            Ok(permit) => Ok(permit),
            Err(_) => self.wait_for_permit(deadline).await,
        }
    }

    async fn wait_for_permit(&self, deadline: Option<Deadline>) -> Result<SemaphorePermit<'_>, Error> {
        let rejected = || Error::Rejected { dependency: self.dependency.clone(), max_concurrent: self.max_concurrent };
        if self.max_wait.is_zero() {
            return Err(rejected());
        }
        let wait_until = Instant::now() + self.max_wait;
        let (until, cut_by_deadline) = match deadline {
            Some(deadline) if deadline.at <= wait_until => (deadline.at, Some(deadline)),
            _ => (wait_until, None),
        };
        match WithDeadline::new(self.semaphore.acquire(), until).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed while the bulkhead lives.
            Ok(Err(_closed)) => Err(rejected()),
            Err(_) => Err(match cut_by_deadline {
                Some(deadline) => deadline.elapsed_error(&self.dependency),
                None => rejected(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_full_bulkhead_rejects_at_once_without_max_wait() {
        let bulkhead = Bulkhead::new("db", 1, Duration::ZERO);
        let held = bulkhead.acquire(None).await.unwrap();
        let start = Instant::now();
        assert!(matches!(bulkhead.acquire(None).await, Err(Error::Rejected { max_concurrent: 1, .. })));
        assert_eq!(start.elapsed(), Duration::ZERO);
        drop(held);
        assert!(bulkhead.acquire(None).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_call_gets_a_permit_freed_within_max_wait() {
        let bulkhead = Arc::new(Bulkhead::new("db", 1, Duration::from_millis(100)));
        let held = bulkhead.acquire(None).await.unwrap();
        let waiter = {
            let bulkhead = bulkhead.clone();
            tokio::spawn(async move { bulkhead.acquire(None).await.map(drop).is_ok() })
        };
        tokio::time::sleep(Duration::from_millis(60)).await;
        drop(held);
        assert!(waiter.await.unwrap(), "the permit freed after 60ms reaches the waiter");
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_ends_at_max_wait_or_at_the_deadline_whichever_is_first() {
        let bulkhead = Bulkhead::new("db", 1, Duration::from_millis(100));
        let _held = bulkhead.acquire(None).await.unwrap();
        let start = Instant::now();
        assert!(matches!(bulkhead.acquire(None).await, Err(Error::Rejected { .. })));
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        let start = Instant::now();
        let deadline = Deadline::after(start, Duration::from_millis(30));
        assert!(
            matches!(bulkhead.acquire(Some(deadline)).await, Err(Error::Timeout { .. })),
            "bulkhead wait counts against the timeout"
        );
        assert_eq!(start.elapsed(), Duration::from_millis(30));
    }
}
