//! An order placed over HTTP writes its row and its event in one PostgreSQL transaction; the relay
//! publishes the event to NATS JetStream and the consumer records it through the inbox. The pool
//! connects over TLS (`sslmode=require`).
//! Needs `MARTY_TEST_POSTGRES_URL` and `MARTY_TEST_NATS_URL` (`.ci/run` sets them).

use std::time::{Duration, Instant};

use marty::axum::extract::Path;
use marty::service::Problem;
use marty::sqlx::{self, PgPool, Postgres, Transaction};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Serialize, Deserialize, marty::Event)]
#[event(topic = "user_crates.orders.placed")]
struct OrderPlaced {
    #[event(key)]
    order_id: i64,
}

struct Orders {
    pool: PgPool,
}

fn failed(error: impl std::fmt::Display) -> Problem {
    Problem::new(marty::axum::http::StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
}

#[marty::service]
impl Orders {
    #[post("/orders/{id}")]
    async fn place(&self, Path(id): Path<i64>) -> Result<(), Problem> {
        let mut tx = self.pool.begin().await.map_err(failed)?;
        sqlx::query("insert into user_crate_orders (id) values ($1)").bind(id).execute(&mut *tx).await.map_err(failed)?;
        marty::outbox::publish(&mut *tx, &OrderPlaced { order_id: id }).await.map_err(failed)?;
        tx.commit().await.map_err(failed)
    }

    #[event_handler(group = "user-crate-audit", inbox = "orders_db")]
    async fn audit(&self, event: OrderPlaced, tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
        sqlx::query("insert into user_crate_audit (order_id) values ($1) on conflict do nothing")
            .bind(event.order_id)
            .execute(&mut **tx)
            .await
            .map(drop)
    }
}

#[tokio::main]
async fn main() {
    let url = std::env::var("MARTY_TEST_POSTGRES_URL").expect("MARTY_TEST_POSTGRES_URL is set");
    std::env::var("MARTY_TEST_NATS_URL").expect("MARTY_TEST_NATS_URL is set");
    // Over TLS, as a production database asks: the `postgres` feature brings sqlx's rustls.
    let separator = if url.contains('?') { '&' } else { '?' };
    let pool = PgPool::connect(&format!("{url}{separator}sslmode=require")).await.expect("PostgreSQL over TLS");
    let encrypted: bool = sqlx::query_scalar("select ssl from pg_stat_ssl where pid = pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(encrypted, "the connection is encrypted");
    sqlx::raw_sql(
        "create table if not exists user_crate_orders (id bigint primary key);
         create table if not exists user_crate_audit (order_id bigint primary key);",
    )
    .execute(&pool)
    .await
    .unwrap();
    let order_id: i64 = sqlx::query_scalar("select coalesce(max(id), 0) + 1 from user_crate_orders")
        .fetch_one(&pool)
        .await
        .unwrap();
    marty::store::register("orders_db", pool.clone()).await.unwrap();
    let server = marty::service::server(Orders { pool: pool.clone() }).expect("marty.toml loads");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = server.start(listener).unwrap();

    let mut stream = tokio::net::TcpStream::connect(running.addr()).await.unwrap();
    let request = format!("POST /orders/{order_id} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    let started = Instant::now();
    loop {
        let audited: bool = sqlx::query_scalar("select exists (select 1 from user_crate_audit where order_id = $1)")
            .bind(order_id)
            .fetch_one(&pool)
            .await
            .unwrap();
        if audited {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "order {order_id}'s event never reached the consumer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.shutdown().await.unwrap();
    println!("postgres-nats: ok");
}
