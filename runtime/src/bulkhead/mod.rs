//! The bulkhead: at most `max_concurrent` calls to one dependency at once; a call waits at most
//! `max_wait` for a permit (and never past its deadline), then is rejected.

mod layer;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::Error;
use crate::stripe::{self, Padded, STRIPES};
use crate::timeout::{Deadline, WithDeadline};

pub use layer::{BulkheadLayer, BulkheadService};

pub use crate::BoxFuture;

/// Takes one permit from a counter of free permits, if it holds any.
#[inline]
fn take_one(free: &AtomicUsize) -> bool {
    let mut current = free.load(Ordering::Acquire);
    while current > 0 {
        match free.compare_exchange_weak(current, current - 1, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(actual) => current = actual,
        }
    }
    false
}

/// One dependency's bulkhead, shared by every call to it.
///
/// Free permits live in a shared pool and in per-thread stripes. A call takes a permit from its
/// thread's stripe (one uncontended compare-and-swap), refills the stripe from the pool in batches,
/// and only when both are empty takes an idle permit from another thread's stripe; a release returns
/// the permit to the releasing thread's stripe, surplus to the pool. Permits are conserved, so at
/// most `max_concurrent` calls run at once, and a call is rejected only when none is free anywhere.
/// A single shared counter would be exact too, but its cache line bouncing between cores made two
/// threads slower than one in the `call_overhead` benchmark.
///
/// Waiters (only with `max_wait` > 0) park on a `Notify`; they are woken in no particular order, and
/// a newly arriving call may take a freed permit first.
#[derive(Debug)]
pub struct Bulkhead {
    dependency: Arc<str>,
    pool: AtomicUsize,
    stripes: Box<[Padded<AtomicUsize>; STRIPES]>,
    /// Permits a stripe takes from the pool at once, and keeps at most twice of.
    batch: usize,
    max_concurrent: AtomicUsize,
    /// `max_wait` in nanoseconds.
    max_wait_nanos: AtomicU64,
    /// Permits to destroy on release, left when the bulkhead shrank below what was in use.
    debt: AtomicUsize,
    /// Calls parked waiting for a permit; releases only notify when there are some.
    waiting: AtomicUsize,
    released: Notify,
}

/// A bulkhead permit; dropping it frees the slot.
#[derive(Debug)]
#[must_use = "the permit is released when dropped"]
pub struct BulkheadPermit<'a> {
    bulkhead: &'a Bulkhead,
}

impl Drop for BulkheadPermit<'_> {
    fn drop(&mut self) {
        self.bulkhead.release();
    }
}

/// A bulkhead permit that holds its bulkhead, so it can move into a spawned task (as tokio's
/// `OwnedSemaphorePermit` can); dropping it frees the slot.
#[derive(Debug)]
#[must_use = "the permit is released when dropped"]
pub struct OwnedBulkheadPermit {
    bulkhead: Arc<Bulkhead>,
}

impl Drop for OwnedBulkheadPermit {
    fn drop(&mut self) {
        self.bulkhead.release();
    }
}

impl Bulkhead {
    /// A bulkhead of `max_concurrent` permits where a call may wait `max_wait` for one.
    pub fn new(dependency: impl Into<Arc<str>>, max_concurrent: usize, max_wait: Duration) -> Self {
        Bulkhead {
            dependency: dependency.into(),
            pool: AtomicUsize::new(max_concurrent),
            stripes: Box::default(),
            batch: (max_concurrent / (2 * STRIPES)).max(1),
            max_concurrent: AtomicUsize::new(max_concurrent),
            max_wait_nanos: AtomicU64::new(u64::try_from(max_wait.as_nanos()).unwrap_or(u64::MAX)),
            debt: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            released: Notify::new(),
        }
    }

    /// Permits free right now (the `marty_bulkhead_available` gauge); a snapshot while calls run.
    pub fn available(&self) -> usize {
        self.pool.load(Ordering::Acquire)
            + self.stripes.iter().map(|stripe| stripe.0.load(Ordering::Acquire)).sum::<usize>()
    }

    /// The bulkhead's size.
    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent.load(Ordering::Relaxed)
    }

    /// How long a call may wait for a permit.
    pub fn max_wait(&self) -> Duration {
        Duration::from_nanos(self.max_wait_nanos.load(Ordering::Relaxed))
    }

    /// Resizes the bulkhead while calls run. Growing frees new permits at once; shrinking takes free
    /// permits away and, when more are in use than the new size allows, retires permits as their
    /// calls finish: no call in flight is cut short.
    pub fn reconfigure(&self, max_concurrent: usize, max_wait: Duration) {
        self.max_wait_nanos.store(u64::try_from(max_wait.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        let old = self.max_concurrent.swap(max_concurrent, Ordering::AcqRel);
        if max_concurrent > old {
            let mut grow = max_concurrent - old;
            // Cancel outstanding debt first, then add what is left.
            while grow > 0 && take_one(&self.debt) {
                grow -= 1;
            }
            self.pool.fetch_add(grow, Ordering::AcqRel);
            self.released.notify_waiters();
        } else {
            let mut shrink = old - max_concurrent;
            while shrink > 0 && (take_one(&self.pool) || self.stripes.iter().any(|stripe| take_one(&stripe.0))) {
                shrink -= 1;
            }
            self.debt.fetch_add(shrink, Ordering::AcqRel);
        }
    }

    /// Takes a permit if one is free, without waiting.
    #[inline]
    pub fn try_acquire(&self) -> Option<BulkheadPermit<'_>> {
        if take_one(&self.stripes[stripe::current()].0) {
            return Some(BulkheadPermit { bulkhead: self });
        }
        self.try_acquire_shared()
    }

    #[cold]
    fn try_acquire_shared(&self) -> Option<BulkheadPermit<'_>> {
        let mut free = self.pool.load(Ordering::Acquire);
        while free > 0 {
            let take = free.min(self.batch);
            match self.pool.compare_exchange_weak(free, free - take, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    if take > 1 {
                        self.stripes[stripe::current()].0.fetch_add(take - 1, Ordering::AcqRel);
                    }
                    return Some(BulkheadPermit { bulkhead: self });
                }
                Err(actual) => free = actual,
            }
        }
        // The pool is empty: borrow a permit another thread's stripe holds idle.
        // `then`, not `then_some`: a permit built eagerly and dropped would release a slot never taken.
        self.stripes.iter().any(|stripe| take_one(&stripe.0)).then(|| BulkheadPermit { bulkhead: self })
    }

    fn release(&self) {
        // A bulkhead that shrank retires this permit instead of handing it on.
        if self.debt.load(Ordering::Relaxed) > 0 && take_one(&self.debt) {
            return;
        }
        let stripe = &self.stripes[stripe::current()].0;
        let held = stripe.fetch_add(1, Ordering::AcqRel) + 1;
        if held > 2 * self.batch {
            // Keep one batch; the rest goes back to the pool for other threads.
            if stripe.compare_exchange(held, self.batch, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                self.pool.fetch_add(held - self.batch, Ordering::AcqRel);
            }
        }
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.released.notify_one();
        }
    }

    /// Takes a permit, waiting up to `max_wait` but never past `deadline`: [`Error::Rejected`] when
    /// `max_wait` ran out, [`Error::Timeout`] when the call's deadline did.
    #[inline]
    pub async fn acquire(&self, deadline: Option<Deadline>) -> Result<BulkheadPermit<'_>, Error> {
        match self.try_acquire() {
            Some(permit) => Ok(permit),
            None => self.wait_for_permit(deadline).await,
        }
    }

    /// [`Self::try_acquire`], with a permit that holds the bulkhead.
    pub fn try_acquire_owned(self: &Arc<Self>) -> Option<OwnedBulkheadPermit> {
        let permit = self.try_acquire()?;
        Some(self.own(permit))
    }

    /// [`Self::acquire`], with a permit that holds the bulkhead: for work handed to another task.
    pub async fn acquire_owned(self: &Arc<Self>, deadline: Option<Deadline>) -> Result<OwnedBulkheadPermit, Error> {
        let permit = self.acquire(deadline).await?;
        Ok(self.own(permit))
    }

    /// The slot `permit` holds, now held by an owned permit (which releases it).
    fn own(self: &Arc<Self>, permit: BulkheadPermit<'_>) -> OwnedBulkheadPermit {
        std::mem::forget(permit);
        OwnedBulkheadPermit { bulkhead: self.clone() }
    }

    /// Waits for a permit after [`Self::try_acquire`] found none. Boxed: the wait's timer and waiter
    /// would otherwise make every caller's future larger, and every call pays to move it, while only
    /// a call that actually waits (with `max_wait` > 0) pays for the box.
    pub fn wait_for_permit(&self, deadline: Option<Deadline>) -> BoxFuture<'_, Result<BulkheadPermit<'_>, Error>> {
        Box::pin(self.wait_for_permit_inner(deadline))
    }

    async fn wait_for_permit_inner(&self, deadline: Option<Deadline>) -> Result<BulkheadPermit<'_>, Error> {
        let rejected =
            || Error::Rejected { dependency: self.dependency.clone(), max_concurrent: self.max_concurrent() };
        let max_wait = self.max_wait();
        if max_wait.is_zero() {
            return Err(rejected());
        }
        let wait_until = Instant::now() + max_wait;
        let (until, cut_by_deadline) = match deadline {
            Some(deadline) if deadline.at <= wait_until => (deadline.at, Some(deadline)),
            _ => (wait_until, None),
        };
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let acquired = WithDeadline::new(self.park_until_free(), until).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match acquired {
            Ok(permit) => Ok(permit),
            Err(_) => Err(match cut_by_deadline {
                Some(deadline) => deadline.elapsed_error(&self.dependency),
                None => rejected(),
            }),
        }
    }

    async fn park_until_free(&self) -> BulkheadPermit<'_> {
        loop {
            // Register interest before trying, so a release between the try and the wait is not lost.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some(permit) = self.try_acquire() {
                return permit;
            }
            released.await;
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
    async fn an_owned_permit_holds_its_slot_in_a_spawned_task_until_dropped() {
        let bulkhead = Arc::new(Bulkhead::new("db", 1, Duration::ZERO));
        let permit = bulkhead.acquire_owned(None).await.unwrap();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _held = permit;
            let _ = released.await;
        });
        tokio::task::yield_now().await;
        assert!(bulkhead.try_acquire_owned().is_none(), "the task holds the only slot");
        release.send(()).unwrap();
        task.await.unwrap();
        assert!(bulkhead.try_acquire_owned().is_some(), "the task's end freed it");
        assert_eq!(bulkhead.available(), 1, "and the probe's permit was dropped again");
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

    #[test]
    fn permits_are_conserved_across_threads_and_never_exceed_the_limit() {
        // Stripes move permits between threads; this checks none is created or lost on the way.
        use std::sync::atomic::AtomicUsize;
        let bulkhead = Arc::new(Bulkhead::new("db", 5, Duration::ZERO));
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (bulkhead, running, peak) = (bulkhead.clone(), running.clone(), peak.clone());
                std::thread::spawn(move || {
                    let mut admitted = 0;
                    for _ in 0..20_000 {
                        if let Some(_permit) = bulkhead.try_acquire() {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::SeqCst);
                            std::hint::spin_loop();
                            running.fetch_sub(1, Ordering::SeqCst);
                            admitted += 1;
                        }
                    }
                    admitted
                })
            })
            .collect();
        let admitted: usize = threads.into_iter().map(|thread| thread.join().unwrap()).sum();
        assert!(peak.load(Ordering::SeqCst) <= 5, "{} calls ran at once", peak.load(Ordering::SeqCst));
        assert!(admitted > 0);
        assert_eq!(bulkhead.available(), 5, "every permit came back");
        let held: Vec<_> = (0..5).map(|_| bulkhead.try_acquire().expect("all 5 are free again")).collect();
        assert!(bulkhead.try_acquire().is_none(), "and there is no sixth");
        drop(held);
    }

    #[tokio::test(start_paused = true)]
    async fn resizing_applies_to_new_calls_and_lets_calls_in_flight_finish() {
        let bulkhead = Arc::new(Bulkhead::new("db", 2, Duration::from_secs(1)));
        let first = bulkhead.try_acquire().unwrap();
        let second = bulkhead.try_acquire().unwrap();
        bulkhead.reconfigure(1, Duration::ZERO);
        assert!(bulkhead.try_acquire().is_none());
        drop(first);
        assert!(bulkhead.try_acquire().is_none(), "2 in flight against a limit of 1: the first release is retired");
        drop(second);
        let only = bulkhead.try_acquire().expect("one permit once the calls in flight finished");
        assert!(bulkhead.try_acquire().is_none());
        assert!(
            matches!(bulkhead.acquire(None).await, Err(Error::Rejected { max_concurrent: 1, .. })),
            "max_wait 0 now"
        );

        let waiter = {
            let bulkhead = bulkhead.clone();
            tokio::spawn(async move { bulkhead.reconfigure(3, Duration::from_secs(1)) })
        };
        waiter.await.unwrap();
        let more: Vec<_> = (0..2).map(|_| bulkhead.try_acquire().expect("grown to 3")).collect();
        assert!(bulkhead.try_acquire().is_none());
        drop((only, more));
        assert_eq!(bulkhead.available(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_ends_at_max_wait_or_at_the_deadline_whichever_is_first() {
        let bulkhead = Bulkhead::new("db", 1, Duration::from_millis(100));
        let _held = bulkhead.acquire(None).await.unwrap();
        let start = Instant::now();
        let second = bulkhead.acquire(None).await;
        assert!(matches!(second, Err(Error::Rejected { .. })), "{second:?} avail {}", bulkhead.available());
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
