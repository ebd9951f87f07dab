//! Ownership across replicas: this replica renews the leases of the sagas it drives, and takes
//! over those whose owner stopped renewing.

use std::sync::Arc;

use super::drive::{run_of, spawn_drive};
use super::{millis, Inner};
use crate::saga::record::{self, SagaRow};
use crate::saga::Saga;
use crate::store::unix_millis;

/// Drives the sagas this replica just took (`why` says how, for the log); one that cannot be loaded
/// is left for another try.
async fn drive_claimed<S: Saga>(inner: &Arc<Inner<S>>, rows: Vec<SagaRow>, why: &'static str) {
    for row in rows {
        tracing::info!(saga = S::DEFINITION.name, saga.id = %row.id, status = %row.status, why);
        match run_of(inner, row).await {
            Ok(run) => spawn_drive(inner.clone(), run),
            Err(error) => tracing::warn!(%error, "cannot resume saga; another replica will try"),
        }
    }
}

/// The replica's stable name where the platform gives one: `POD_NAME` (from the Kubernetes downward
/// API), else `HOSTNAME` (a pod's name in Kubernetes; shells keep it unexported).
pub(super) fn replica_from_environment() -> Option<String> {
    ["POD_NAME", "HOSTNAME"]
        .into_iter()
        .filter_map(|key| std::env::var(key).ok())
        .find(|name| marty_config::is_replica_name(name))
}

/// Takes over, at start and every poll interval, unfinished sagas that no live replica owns: those
/// of an earlier run of this replica once it has missed two renewals, any other once its lease ran
/// out.
pub(super) async fn take_over<S: Saga>(inner: Arc<Inner<S>>) {
    let mut stop = inner.stop.subscribe();
    let poll = inner.settings.poll_interval;
    let lease = millis(inner.settings.lease);
    // An earlier run's leases were last renewed before this run started, so they have all run out
    // a lease later; from then on the plain claim below finds those sagas, and reclaiming stops.
    let reclaim_until = unix_millis() + lease;
    loop {
        let now = unix_millis();
        if let Some(prefix) = inner.replica_prefix.as_ref().filter(|_| now <= reclaim_until) {
            // A live run renews every sixth of a lease: more than a third of a lease without a
            // renewal means the run is gone (or a second replica runs under the same name).
            let stale_before = now + lease * 2 / 3;
            match record::reclaim(
                &inner.store,
                S::DEFINITION.name,
                &inner.owner,
                prefix,
                now,
                stale_before,
                now + lease,
            )
            .await
            {
                Ok(rows) => drive_claimed(&inner, rows, "taking back a saga of this replica's previous run").await,
                Err(error) => tracing::warn!(%error, "cannot look for this replica's earlier sagas"),
            }
        }
        match record::claim(&inner.store, S::DEFINITION.name, &inner.owner, now, now + lease, now + millis(poll), 64)
            .await
        {
            Ok(rows) => drive_claimed(&inner, rows, "taking over saga").await,
            Err(error) => tracing::warn!(%error, "cannot look for sagas to take over"),
        }
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// Renews this replica's leases every sixth of a lease (often enough that missing two renewals, a
/// third of a lease, tells a restarted run of the same replica that this one is gone).
pub(super) async fn renew_leases<S: Saga>(inner: Arc<Inner<S>>) {
    let mut stop = inner.stop.subscribe();
    loop {
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            _ = tokio::time::sleep(inner.settings.lease / 6) => {}
        }
        let lease_until = unix_millis() + millis(inner.settings.lease);
        if let Err(error) = record::renew(&inner.store, &inner.owner, lease_until).await {
            tracing::warn!(%error, "cannot renew saga leases; other replicas take the sagas over if this lasts");
        }
    }
}
