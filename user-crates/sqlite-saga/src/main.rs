//! An order placed over HTTP writes its row and its event in one SQLite transaction; the relay
//! brings the event to a consumer that records it through the inbox, and a saga runs for the
//! order: completed when the charge goes through, compensated when it is declined.

use std::time::{Duration, Instant};

use marty::axum::extract::Path;
use marty::saga::{Orchestrator, Status, StepContext, StepError};
use marty::service::Problem;
use marty::sqlx::{self, Sqlite, SqlitePool, Transaction};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Serialize, Deserialize, marty::Event)]
#[event(topic = "orders.placed")]
struct OrderPlaced {
    #[event(key)]
    order_id: i64,
}

/// Reserve stock, then charge; a declined charge releases the stock.
#[derive(Serialize, Deserialize)]
struct PlaceOrder {
    order_id: i64,
    decline: bool,
}

#[marty::saga(store = "orders_db", timeout = "30s")]
impl PlaceOrder {
    #[saga_step(compensate = release)]
    async fn reserve(&mut self, ctx: &mut StepContext<SqlitePool>) -> Result<(), StepError> {
        record(ctx.env(), self.order_id, "reserved").await
    }

    async fn release(&mut self, ctx: &mut StepContext<SqlitePool>) -> Result<(), StepError> {
        record(ctx.env(), self.order_id, "released").await
    }

    #[saga_step]
    async fn charge(&mut self, ctx: &mut StepContext<SqlitePool>) -> Result<(), StepError> {
        if self.decline {
            return Err(StepError::permanent("card declined"));
        }
        record(ctx.env(), self.order_id, "charged").await
    }
}

async fn record(pool: &SqlitePool, order_id: i64, what: &str) -> Result<(), StepError> {
    sqlx::query("insert into stock_log (order_id, what) values (?, ?)")
        .bind(order_id)
        .bind(what)
        .execute(pool)
        .await
        .map(drop)
        .map_err(|error| StepError::permanent(error.to_string()))
}

struct Orders {
    pool: SqlitePool,
    sagas: Orchestrator<PlaceOrder>,
}

fn failed(error: impl std::fmt::Display) -> Problem {
    Problem::new(marty::axum::http::StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
}

#[marty::service]
impl Orders {
    #[post("/orders/{id}")]
    async fn place(&self, Path(id): Path<i64>) -> Result<String, Problem> {
        let mut tx = self.pool.begin().await.map_err(failed)?;
        sqlx::query("insert into orders (id) values (?)").bind(id).execute(&mut *tx).await.map_err(failed)?;
        marty::outbox::publish(&mut tx, &OrderPlaced { order_id: id }).await.map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        self.sagas.start(PlaceOrder { order_id: id, decline: id % 2 == 0 }).await.map_err(failed)
    }

    #[event_handler(group = "audit", inbox = "orders_db")]
    async fn audit(&self, event: OrderPlaced, tx: &mut Transaction<'_, Sqlite>) -> Result<(), sqlx::Error> {
        sqlx::query("insert into audit (order_id) values (?)").bind(event.order_id).execute(&mut **tx).await.map(drop)
    }
}

async fn post(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::main]
async fn main() {
    let dir = std::env::temp_dir().join(format!("user-sqlite-saga-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::env::set_var("ORDERS_DB_FILE", dir.join("orders.db"));
    let server = marty::service::server_with(|registry| async move {
        let url = registry.dependency("orders_db").and_then(|db| db.config().url).unwrap();
        let pool = SqlitePool::connect(&url).await?;
        sqlx::raw_sql(
            "create table orders (id integer primary key);
             create table audit (order_id integer primary key);
             create table stock_log (order_id integer not null, what text not null);",
        )
        .execute(&pool)
        .await?;
        marty::store::register("orders_db", pool.clone()).await?;
        let sagas = Orchestrator::<PlaceOrder>::new(pool.clone()).await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Orders { pool, sagas })
    })
    .await
    .expect("the service starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = server.start(listener).unwrap();
    let (completed, compensated) = (post(running.addr(), "/orders/1").await, post(running.addr(), "/orders/2").await);
    assert!(completed.starts_with("HTTP/1.1 200"), "{completed}");
    assert!(compensated.starts_with("HTTP/1.1 200"), "{compensated}");
    let saga_id = |response: &str| response.split("\r\n\r\n").nth(1).unwrap().to_owned();
    let pool = SqlitePool::connect(&format!("sqlite://{}", dir.join("orders.db").display())).await.unwrap();
    let sagas = Orchestrator::<PlaceOrder>::new(pool.clone()).await.unwrap();
    assert_eq!(sagas.wait(&saga_id(&completed)).await.unwrap(), Status::Completed);
    assert_eq!(sagas.wait(&saga_id(&compensated)).await.unwrap(), Status::Compensated);
    let log: Vec<(i64, String)> =
        sqlx::query_as("select order_id, what from stock_log order by rowid").fetch_all(&pool).await.unwrap();
    assert!(log.contains(&(2, "released".into())) && log.contains(&(1, "charged".into())), "{log:?}");
    let started = Instant::now();
    loop {
        let audited: i64 = sqlx::query_scalar("select count(*) from audit").fetch_one(&pool).await.unwrap();
        if audited == 2 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the events never reached the consumer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.shutdown().await.unwrap();
    println!("sqlite-saga: ok");
}
