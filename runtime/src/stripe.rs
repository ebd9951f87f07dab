//! Per-thread stripes for hot shared state: each thread writes its own cache line, so worker threads
//! calling the same dependency do not serialise on one line bouncing between cores.

use std::sync::atomic::{AtomicUsize, Ordering};

/// How many stripes hot state is spread over.
pub(crate) const STRIPES: usize = 8;

thread_local! {
    static STRIPE: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES
    };
}

/// This thread's stripe.
#[inline]
pub(crate) fn current() -> usize {
    STRIPE.with(|stripe| *stripe)
}

/// One cache line (two, against adjacent-line prefetch) per value, so neighbours do not share it.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);
