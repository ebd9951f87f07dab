//! `cargo marty outbox ..` and `cargo marty saga ..`: what an operator reads and does against a
//! service's database, through the runtime's own functions (`marty::outbox`,
//! `marty::saga::operator`), so the SQL is the runtime's.

use clap::{Args, Subcommand};
use marty::outbox::OutboxEntry;
use marty::saga::operator::{self, SagaRecord};
use marty::store::Store;
use serde_json::json;

use crate::output::{self, rfc3339};
use crate::Outcome;

#[derive(Args)]
pub(crate) struct DatabaseArgs {
    /// The service's database (`postgres://..` or `sqlite://..`), the one holding Marty's tables.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// Print JSON (one line) instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
pub(crate) enum OutboxCommand {
    /// Rows waiting to be published, oldest first.
    Pending {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Rows the relay gave up on (the broker refused them every time), oldest first.
    Parked,
    /// Puts a parked row back in line, its attempts reset.
    Replay {
        /// The row's id (from `parked`).
        id: i64,
    },
}

#[derive(Subcommand)]
pub(crate) enum SagaCommand {
    /// Sagas, newest first.
    List {
        /// Only those with this status.
        #[arg(long, value_parser = ["running", "compensating", "completed", "compensated", "parked"])]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One saga: its state and its history.
    Show {
        /// The saga's id.
        id: String,
    },
    /// Sagas whose compensation kept failing, waiting for an operator.
    Parked {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Tries a parked saga's compensations again, with fresh attempts, on its service's replicas.
    Resume {
        /// The saga's id.
        id: String,
    },
}

pub(crate) fn outbox(database: &DatabaseArgs, command: OutboxCommand) -> Result<Outcome, String> {
    with_store(database, |store| async move {
        match command {
            OutboxCommand::Pending { limit } => {
                print_entries(database, &marty::outbox::pending(&store, limit).await.map_err(text)?);
                Ok(Outcome::Done)
            }
            OutboxCommand::Parked => {
                print_entries(database, &marty::outbox::parked(&store).await.map_err(text)?);
                Ok(Outcome::Done)
            }
            OutboxCommand::Replay { id } => {
                let replayed = marty::outbox::replay(&store, id).await.map_err(text)?;
                report(database, "replayed", &id.to_string(), replayed, &format!("no parked outbox row {id}"))
            }
        }
    })
}

pub(crate) fn saga(database: &DatabaseArgs, command: SagaCommand) -> Result<Outcome, String> {
    with_store(database, |store| async move {
        match command {
            SagaCommand::List { status, limit } => {
                print_sagas(database, &operator::list(&store, status.as_deref(), limit).await.map_err(text)?);
                Ok(Outcome::Done)
            }
            SagaCommand::Parked { limit } => {
                print_sagas(database, &operator::list(&store, Some("parked"), limit).await.map_err(text)?);
                Ok(Outcome::Done)
            }
            SagaCommand::Show { id } => {
                let Some(saga) = operator::get(&store, &id).await.map_err(text)? else {
                    eprintln!("no saga {id}");
                    return Ok(Outcome::Finding);
                };
                let history = operator::history(&store, &id).await.map_err(text)?;
                show_saga(database, &saga, &history);
                Ok(Outcome::Done)
            }
            SagaCommand::Resume { id } => {
                let resumed = operator::resume(&store, &id).await.map_err(text)?;
                report(database, "resumed", &id, resumed, &format!("no parked saga {id}"))
            }
        }
    })
}

/// Connects to `--database-url` and runs `command` on a runtime of its own.
fn with_store<F, Fut>(database: &DatabaseArgs, command: F) -> Result<Outcome, String>
where
    F: FnOnce(Store) -> Fut,
    Fut: std::future::Future<Output = Result<Outcome, String>>,
{
    let Some(url) = &database.database_url else {
        return Err("name the database: --database-url postgres://.. (or DATABASE_URL)".to_owned());
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(text)?;
    runtime.block_on(async {
        let store = marty::store::connect(url).await.map_err(|error| format!("cannot open the database: {error}"))?;
        command(store).await
    })
}

fn text(error: impl std::fmt::Display) -> String {
    error.to_string()
}

/// What a replay or resume did: done, or a finding when there was nothing to do.
fn report(database: &DatabaseArgs, done: &str, id: &str, happened: bool, otherwise: &str) -> Result<Outcome, String> {
    match (database.json, happened) {
        (true, _) => output::json(&json!({ "id": id, done: happened })),
        (false, true) => println!("{id}: {done}"),
        (false, false) => eprintln!("{otherwise}"),
    }
    Ok(if happened { Outcome::Done } else { Outcome::Finding })
}

fn print_entries(database: &DatabaseArgs, entries: &[OutboxEntry]) {
    if database.json {
        let entries: Vec<_> = entries
            .iter()
            .map(|entry| {
                json!({
                    "id": entry.id, "event_id": entry.event_id, "topic": entry.topic, "key": entry.key,
                    "attempts": entry.attempts, "last_error": entry.last_error,
                })
            })
            .collect();
        return output::json(&json!(entries));
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|entry| {
            vec![
                entry.id.to_string(),
                entry.event_id.clone(),
                entry.topic.clone(),
                entry.key.clone().unwrap_or_default(),
                entry.attempts.to_string(),
                entry.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    output::table(&["ID", "EVENT", "TOPIC", "KEY", "ATTEMPTS", "LAST ERROR"], &rows);
}

fn saga_json(saga: &SagaRecord) -> serde_json::Value {
    let state = serde_json::from_str::<serde_json::Value>(&saga.state).unwrap_or_else(|_| json!(saga.state));
    json!({
        "id": saga.id, "name": saga.name, "status": saga.status, "step": saga.step, "attempt": saga.attempt,
        "error": saga.error, "state": state,
        "created_at": rfc3339(saga.created_at), "updated_at": rfc3339(saga.updated_at),
    })
}

fn print_sagas(database: &DatabaseArgs, sagas: &[SagaRecord]) {
    if database.json {
        return output::json(&json!(sagas.iter().map(saga_json).collect::<Vec<_>>()));
    }
    let rows: Vec<Vec<String>> = sagas
        .iter()
        .map(|saga| {
            vec![
                saga.id.clone(),
                saga.name.clone(),
                saga.status.clone(),
                saga.step.to_string(),
                saga.attempt.to_string(),
                rfc3339(saga.updated_at),
                saga.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    output::table(&["ID", "SAGA", "STATUS", "STEP", "ATTEMPT", "UPDATED", "ERROR"], &rows);
}

fn show_saga(database: &DatabaseArgs, saga: &SagaRecord, history: &[marty::saga::HistoryEntry]) {
    if database.json {
        let lines: Vec<serde_json::Value> = history
            .iter()
            .map(|line| {
                json!({
                    "at": rfc3339(line.at), "step": line.step, "kind": line.kind, "attempt": line.attempt,
                    "detail": line.detail,
                })
            })
            .collect();
        return output::json(&json!({ "saga": saga_json(saga), "history": lines }));
    }
    println!("saga     {} ({})", saga.id, saga.name);
    println!("status   {} at step {}, attempt {}", saga.status, saga.step, saga.attempt);
    if let Some(error) = &saga.error {
        println!("error    {error}");
    }
    println!("started  {}", rfc3339(saga.created_at));
    println!("updated  {}", rfc3339(saga.updated_at));
    println!("state    {}", saga.state);
    println!();
    let rows: Vec<Vec<String>> = history
        .iter()
        .map(|line| {
            vec![
                rfc3339(line.at),
                line.step.clone().unwrap_or_default(),
                line.kind.clone(),
                line.attempt.to_string(),
                line.detail.clone().unwrap_or_default(),
            ]
        })
        .collect();
    output::table(&["AT", "STEP", "WHAT", "ATTEMPT", "DETAIL"], &rows);
}
