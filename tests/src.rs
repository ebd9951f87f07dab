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

/// What a test that needs a server reads from `variable` (its URL, or a binary). Such a test is
/// `#[ignore = "needs <variable>"]`, so a plain `cargo test` lists it as ignored rather than passing
/// it unrun; asked for (`--include-ignored`, as `.ci/run` does) without the variable, it fails here.
pub fn server_env(variable: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| {
        panic!("{variable} is not set: this test needs its server (.ci/run sets it; see CONTRIBUTING.md)")
    })
}

/// An empty SQLite file named after `name`: a pool with none of Marty's tables yet.
pub async fn empty_sqlite(name: &str) -> marty::store::Store {
    let dir = std::env::temp_dir().join(format!("marty-stores-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the test's directory");
    let path = dir.join(format!("{name}.db"));
    let _ = std::fs::remove_file(&path);
    marty::store::connect(&format!("sqlite://{}?mode=rwc", path.display())).await.expect("open SQLite")
}

/// An empty PostgreSQL schema named after `name`, at `MARTY_TEST_POSTGRES_URL`.
pub async fn empty_postgres(name: &str) -> marty::store::Store {
    let url = server_env("MARTY_TEST_POSTGRES_URL");
    let schema = format!("stores_{name}");
    fresh_schema(&url, &schema).await.expect("create the schema");
    marty::store::Store::Postgres(pool_in_schema(&url, &schema, 4).await.expect("connect"))
}

/// Each test twice, on a store from each constructor: `<name>::on_sqlite`, and
/// `<name>::on_postgres`, ignored unless asked for (it needs `MARTY_TEST_POSTGRES_URL`).
///
/// ```text
/// on_each_store! {
///     stores: marty_tests::empty_sqlite, marty_tests::empty_postgres;
///
///     #[tokio::test]
///     async fn the_outbox_works(store = "outbox_works") { .. }
/// }
/// ```
#[macro_export]
macro_rules! on_each_store {
    (stores: $sqlite:path, $postgres:path; $($(#[$attr:meta])* async fn $name:ident($store:ident = $schema:literal) $body:block)*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $(#[$attr])*
            async fn on_sqlite() {
                let $store = $sqlite($schema).await;
                $body
            }

            $(#[$attr])*
            #[ignore = "needs MARTY_TEST_POSTGRES_URL"]
            async fn on_postgres() {
                let $store = $postgres($schema).await;
                $body
            }
        }
    )*};
}
