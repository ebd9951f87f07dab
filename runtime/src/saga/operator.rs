//! What an operator reads and does to the sagas in a database, whatever their types: the rows as
//! stored (state as its JSON), their history, and resuming a parked one. `cargo marty saga` is
//! built on these; a service's own code uses its typed [`Orchestrator`](super::Orchestrator).

use std::time::SystemTime;

use super::orchestrator::{time_of, HistoryEntry};
use super::record::{self, SagaRow};
use crate::store::{unix_millis, Store};

/// A saga as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SagaRecord {
    /// Its id.
    pub id: String,
    /// Its type's name (`#[saga(name = ..)]`).
    pub name: String,
    /// `running`, `compensating`, `completed`, `compensated` or `parked`.
    pub status: String,
    /// The index of the step running or being undone (its name is in the history).
    pub step: u32,
    /// The attempt of that step.
    pub attempt: u32,
    /// Why it is compensating or parked.
    pub error: Option<String>,
    /// Its state, as the JSON it is saved in.
    pub state: String,
    /// When it started.
    pub created_at: SystemTime,
    /// When it last changed.
    pub updated_at: SystemTime,
}

impl From<SagaRow> for SagaRecord {
    fn from(row: SagaRow) -> Self {
        SagaRecord {
            id: row.id,
            name: row.name,
            status: row.status,
            step: row.step.max(0) as u32,
            attempt: row.attempt.max(0) as u32,
            error: row.error,
            state: row.state,
            created_at: time_of(row.created_at),
            updated_at: time_of(row.updated_at),
        }
    }
}

/// Up to `limit` sagas, newest first; only those with `status` when given.
pub async fn list(store: &Store, status: Option<&str>, limit: u32) -> Result<Vec<SagaRecord>, sqlx::Error> {
    Ok(record::list(store, status, i64::from(limit)).await?.into_iter().map(SagaRecord::from).collect())
}

/// Saga `id`, if there is one.
pub async fn get(store: &Store, id: &str) -> Result<Option<SagaRecord>, sqlx::Error> {
    Ok(record::load_any(store, id).await?.map(SagaRecord::from))
}

/// Saga `id`'s history, oldest first (empty when there is no such saga).
pub async fn history(store: &Store, id: &str) -> Result<Vec<HistoryEntry>, sqlx::Error> {
    Ok(record::history(store, id).await?.into_iter().map(HistoryEntry::from).collect())
}

/// Resumes parked saga `id`, as [`Orchestrator::resume`](super::Orchestrator::resume) does: its
/// compensations are tried again, with fresh attempts, by the first replica of its service to take
/// it. `false` when it is not parked.
pub async fn resume(store: &Store, id: &str) -> Result<bool, sqlx::Error> {
    let Some(saga) = record::load_any(store, id).await? else { return Ok(false) };
    let resumed = record::resume(store, &saga.name, id, unix_millis()).await?;
    if resumed {
        tracing::info!(saga = %saga.name, saga.id = %id, "parked saga resumed by an operator");
    }
    Ok(resumed)
}
