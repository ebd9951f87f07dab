//! Runtimes of their own: two services in one process, each with its configuration, metrics, stores,
//! in-process broker and event handlers, share nothing with each other or with the global runtime
//! the macros use.

mod support;

use std::sync::Arc;
use std::time::Duration;

use marty::config::Config;
use marty::events::{EventHandler, Handled, HandlerError, HandlerOptions, Message};
use marty::service::Server;
use marty::{DependencyRegistry, Runtime};
use tokio::sync::mpsc;

/// A runtime for a service whose one database dependency is named `ledger`, next to `other`.
fn runtime(other: &str) -> Runtime {
    let text = format!(
        "[service]\nname = \"svc\"\n\n[dependencies.ledger]\nkind = \"database\"\n\n[dependencies.{other}]\nkind = \"api\"\n"
    );
    Runtime::new(DependencyRegistry::from_config(Config::parse(&text, "marty.toml").expect("valid")))
}

/// An in-memory SQLite database holding one row that says which it is.
async fn database(name: &str) -> sqlx::SqlitePool {
    let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await.unwrap();
    sqlx::query("create table whoami (name text)").execute(&pool).await.unwrap();
    sqlx::query("insert into whoami values (?)").bind(name).execute(&pool).await.unwrap();
    pool
}

async fn whoami(pool: &sqlx::SqlitePool) -> String {
    sqlx::query_scalar("select name from whoami").fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn two_runtimes_share_nothing_and_leave_the_global_alone() {
    let (first, second) = (runtime("payments"), runtime("shipping"));
    first.register_store("ledger", database("first").await).await.unwrap();
    second.register_store("ledger", database("second").await).await.unwrap();

    // Each runtime's `ledger` is its own database, with Marty's tables created in each.
    assert_eq!(whoami(&first.pool::<sqlx::Sqlite>("ledger").await.unwrap()).await, "first");
    assert_eq!(whoami(&second.pool::<sqlx::Sqlite>("ledger").await.unwrap()).await, "second");
    let error = Runtime::global().store("ledger").await.unwrap_err().to_string();
    assert!(error.contains("no pool was registered"), "the global runtime has no `ledger`: {error}");

    // Each server reports its own runtime's dependencies.
    let serve = |runtime: &Runtime| {
        let server = Server::new(marty::axum::Router::new(), runtime).expect("the runtime has its configuration");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        server.start(tokio::net::TcpListener::from_std(listener).unwrap()).unwrap()
    };
    let (first_server, second_server) = (serve(&first), serve(&second));
    let first_metrics = support::http::get(first_server.addr(), "/metrics").await.body;
    let second_metrics = support::http::get(second_server.addr(), "/metrics").await.body;
    assert!(first_metrics.contains("dependency=\"payments\"") && !first_metrics.contains("shipping"));
    assert!(second_metrics.contains("dependency=\"shipping\"") && !second_metrics.contains("payments"));
    first_server.shutdown().await.unwrap();
    second_server.shutdown().await.unwrap();

    // Their in-process brokers are distinct.
    assert!(Arc::ptr_eq(&first.memory_broker(), &first.memory_broker()));
    assert!(!Arc::ptr_eq(&first.memory_broker(), &second.memory_broker()));

    assert!(Runtime::global().registry().is_none(), "nothing above loaded or installed the global configuration");
}

#[tokio::test]
async fn an_event_handler_runs_in_the_runtime_it_was_started_in() {
    let (first, second) = (runtime("payments"), runtime("shipping"));
    first.register_store("ledger", database("first").await).await.unwrap();
    second.register_store("ledger", database("second").await).await.unwrap();
    let (seen, mut saw) = mpsc::unbounded_channel();
    let invoke: marty::events::Invoke = Arc::new(move |_message: Message| {
        let seen = seen.clone();
        Box::pin(async move {
            // What the inbox of a `#[event_handler]` does: ask the current runtime for its pool.
            let pool = marty::store::pool::<sqlx::Sqlite>("ledger")
                .await
                .map_err(|error| HandlerError::Failed(error.to_string()))?;
            seen.send(whoami(&pool).await).unwrap();
            Ok::<_, HandlerError>(Handled::Done)
        })
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let broker: Arc<dyn marty::events::Broker> = second.memory_broker();
    let handler = EventHandler::new("ledger.moved", "ledger", "ledger_moved", HandlerOptions::default(), invoke);
    let task = handler.start_in(second.clone(), broker.clone(), Default::default(), stopped).await;
    let message = Message {
        id: marty::events::new_event_id(),
        topic: "ledger.moved".into(),
        key: None,
        version: 1,
        payload: b"{}".to_vec(),
        traceparent: None,
        tracestate: None,
    };
    assert!(broker.publish(&[message]).await.into_iter().all(|published| published.is_ok()));
    let handled_in = tokio::time::timeout(Duration::from_secs(10), saw.recv()).await.expect("handled").unwrap();
    assert_eq!(handled_in, "second");
    stop.send_replace(true);
    task.await.unwrap();
    let _ = first;
}
