//! What the integration tests and the `events_worker` they start share: PostgreSQL schemas of their
//! own, so tests running at once never see each other's tables; the saga the saga tests run; an
//! OTLP collector and a gRPC proxy that drops replies (the examples' tests use both too); test
//! certificates and a TLS-terminating proxy.

#[path = "otlp.rs"]
pub mod otlp;
#[path = "reply_dropper.rs"]
pub mod reply_dropper;
#[path = "tls.rs"]
pub mod tls;
#[path = "trip.rs"]
pub mod trip;

/// Drops schema `schema` with everything in it, and creates it empty.
pub async fn fresh_schema(url: &str, schema: &str) -> Result<(), sqlx::Error> {
    let admin = sqlx::PgPool::connect(url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("drop schema if exists {schema} cascade; create schema {schema}")))
        .execute(&admin)
        .await?;
    admin.close().await;
    Ok(())
}

/// A pool whose connections work in schema `schema` (their `search_path`).
pub async fn pool_in_schema(url: &str, schema: &str, max_connections: u32) -> Result<sqlx::PgPool, sqlx::Error> {
    let schema = schema.to_owned();
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(max_connections)
        .after_connect(move |connection, _| {
            let schema = schema.clone();
            Box::pin(async move {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("set search_path to {schema}"))).execute(connection).await?;
                Ok(())
            })
        })
        .connect(url)
        .await
}

/// An empty SQLite file and, when `MARTY_TEST_POSTGRES_URL` is set (`.ci/run` sets it), an empty
/// PostgreSQL schema, both named after `name`: pools with none of Marty's tables yet.
pub async fn empty_stores(name: &str) -> Vec<marty::store::Store> {
    let dir = std::env::temp_dir().join(format!("marty-stores-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the test's directory");
    let path = dir.join(format!("{name}.db"));
    let _ = std::fs::remove_file(&path);
    let sqlite = marty::store::connect(&format!("sqlite://{}?mode=rwc", path.display())).await.expect("open SQLite");
    let mut stores = vec![sqlite];
    match std::env::var("MARTY_TEST_POSTGRES_URL") {
        Ok(url) => {
            let schema = format!("stores_{name}");
            fresh_schema(&url, &schema).await.expect("create the schema");
            stores.push(marty::store::Store::Postgres(pool_in_schema(&url, &schema, 4).await.expect("connect")));
        }
        Err(_) => eprintln!("PostgreSQL skipped: MARTY_TEST_POSTGRES_URL is not set (.ci/run sets it)"),
    }
    stores
}
