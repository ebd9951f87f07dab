//! Whether a retried call may have taken effect. The error a retried call finally returns speaks
//! only of its last attempt: after a first attempt lost its connection once the request was sent,
//! a second one turned away by the breaker (or refused) says "certainly not applied" although the
//! first may have applied. So every retry is noted here, for whoever watches the calls a piece of
//! work makes: a saga step, which is then compensated if the saga gives up on it.
//!
//! This module owns the note and nothing else; retries write it (the policy's and `RetryLayer`'s),
//! the saga orchestrator reads it.

use std::cell::Cell;
use std::future::Future;

tokio::task_local! {
    static RETRIED: Cell<bool>;
}

/// Runs `future`, and says whether a call it made was retried (after an attempt that, being
/// transient, may have taken effect).
#[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
pub(crate) async fn watch<F: Future>(future: F) -> (F::Output, bool) {
    RETRIED
        .scope(Cell::new(false), async {
            let output = future.await;
            (output, RETRIED.with(Cell::get))
        })
        .await
}

/// Notes that a call is being retried after a failed attempt that may have taken effect; a no-op
/// outside [`watch`].
pub(crate) fn note_retry() {
    let _ = RETRIED.try_with(|retried| retried.set(true));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_retry_is_seen_by_its_watcher_only() {
        let (value, retried) = watch(async {
            note_retry();
            7
        })
        .await;
        assert_eq!((value, retried), (7, true));
        assert_eq!(watch(async {}).await, ((), false));
        note_retry(); // outside a watch: nothing to tell, nothing breaks
    }
}
