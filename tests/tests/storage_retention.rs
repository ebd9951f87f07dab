//! `[storage]` retention: inbox records and finished sagas (with their history) older than it are
//! pruned, by `marty::store::prune::prune` and by the task every registered store gets; running and
//! parked sagas are kept. And a replica of the previous release never lowers the schema's version.
//! (Its own test binary: the configuration is the process's global registry.)

use std::time::{Duration, Instant};

use marty::config::{Config, StorageConfig};
use marty::store::prune::{prune, Pruned};
use marty::store::schema::{self, Database};
use marty::store::Store;
use marty::DependencyRegistry;

const CONFIG: &str = "[storage]\ninbox_retention = \"1s\"\nsaga_retention = \"1s\"\n";

fn storage() -> StorageConfig {
    let config = Config::parse(CONFIG, "marty.toml").unwrap();
    let storage = config.storage.clone();
    let _ = DependencyRegistry::from_config(config).install_global();
    storage
}

/// Runs one statement on `store` (SQLite takes the same `$N` parameters as PostgreSQL).
async fn execute(store: &Store, sql: &str, values: &[i64]) -> u64 {
    macro_rules! on {
        ($pool:expr) => {{
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()));
            for value in values {
                query = query.bind(*value);
            }
            query.execute($pool).await.expect(sql).rows_affected()
        }};
    }
    match store {
        Store::Postgres(pool) => on!(pool),
        Store::Sqlite(pool) => on!(pool),
        _ => unreachable!("the tests build both features only"),
    }
}

async fn count(store: &Store, sql: &str) -> i64 {
    match store {
        Store::Postgres(pool) => sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(pool).await,
        Store::Sqlite(pool) => sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(pool).await,
        _ => unreachable!(),
    }
    .expect(sql)
}

async fn ids(store: &Store, sql: &str) -> Vec<String> {
    match store {
        Store::Postgres(pool) => sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_all(pool).await,
        Store::Sqlite(pool) => sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_all(pool).await,
        _ => unreachable!(),
    }
    .expect(sql)
}

/// Marty's tables from its DDL text, as a team that owns its migrations makes them.
async fn create_tables(store: &Store) {
    let done = match store {
        Store::Postgres(pool) => {
            sqlx::raw_sql(sqlx::AssertSqlSafe(schema::ddl(Database::Postgres))).execute(pool).await.map(drop)
        }
        Store::Sqlite(pool) => {
            sqlx::raw_sql(sqlx::AssertSqlSafe(schema::ddl(Database::Sqlite))).execute(pool).await.map(drop)
        }
        _ => unreachable!(),
    };
    done.expect("the DDL applies");
}

async fn handle(store: &Store, event_id: &str) {
    let done = match store {
        Store::Postgres(pool) => marty::inbox::begin(pool, "audit", event_id).await.unwrap().unwrap().commit().await,
        Store::Sqlite(pool) => marty::inbox::begin(pool, "audit", event_id).await.unwrap().unwrap().commit().await,
        _ => unreachable!(),
    };
    done.unwrap();
}

/// A saga row `id` in `status`, last written `age` ago, with two history lines.
async fn saga(store: &Store, id: &str, status: &str, age: Duration) {
    let at = now_millis() - age.as_millis() as i64;
    let insert = format!(
        "insert into marty_saga (id, name, state, status, step, attempt, next_attempt_at, lease_until, created_at,
             updated_at) values ('{id}', 'trip', '{{}}', '{status}', 0, 1, $1, 0, $1, $1)"
    );
    execute(store, &insert, &[at]).await;
    for seq in [1, 2] {
        let line = format!(
            "insert into marty_saga_history (saga_id, seq, at, kind, attempt) values ('{id}', {seq}, $1, 'x', 1)"
        );
        execute(store, &line, &[at]).await;
    }
}

fn now_millis() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

marty_tests::on_each_store! {
    stores: marty_tests::empty_sqlite, marty_tests::empty_postgres;

    #[tokio::test]
    async fn records_and_finished_sagas_past_retention_go_and_the_rest_stays(store = "retention_prune") {
        let storage = storage();
        // Not registered: the background task would race this test's own `prune`.
        create_tables(&store).await;
        for event in ["old-1", "old-2", "new"] {
            handle(&store, event).await;
        }
        let (long_ago, just_now) = (Duration::from_secs(3600), Duration::ZERO);
        // The inbox's clock: timestamptz on PostgreSQL, Unix seconds on SQLite.
        let age = match &store {
            Store::Postgres(_) => {
                "update marty_inbox set handled_at = now() - interval '1 hour' where event_id like 'old-%'"
            }
            _ => "update marty_inbox set handled_at = handled_at - 3600 where event_id like 'old-%'",
        };
        execute(&store, age, &[]).await;
        for (id, status, age) in [
            ("completed-old", "completed", long_ago),
            ("compensated-old", "compensated", long_ago),
            ("completed-new", "completed", just_now),
            ("parked-old", "parked", long_ago),
            ("running-old", "running", long_ago),
            ("compensating-old", "compensating", long_ago),
        ] {
            saga(&store, id, status, age).await;
        }

        assert_eq!(prune(&store, &storage).await.unwrap(), Pruned { inbox: 2, sagas: 2 });
        assert!(marty::inbox::handled(&store, "audit", "new").await.unwrap());
        assert!(!marty::inbox::handled(&store, "audit", "old-1").await.unwrap());
        let kept = ["compensating-old", "completed-new", "parked-old", "running-old"];
        assert_eq!(ids(&store, "select id from marty_saga order by id").await, kept);
        let history = "select distinct saga_id from marty_saga_history order by saga_id";
        assert_eq!(ids(&store, history).await, kept, "the history of those that stay stays");
        assert_eq!(prune(&store, &storage).await.unwrap(), Pruned::default(), "nothing more to prune");
    }
}

marty_tests::on_each_store! {
    stores: marty_tests::empty_sqlite, marty_tests::empty_postgres;

    #[tokio::test]
    async fn a_registered_store_is_pruned_in_the_background(store = "retention_background") {
        storage();
        // A name per database: the SQLite and the PostgreSQL run of this test run at once.
        let name = if matches!(store, Store::Postgres(_)) { "background_postgres" } else { "background_sqlite" };
        let store = marty::store::register(name, store).await.unwrap();
        handle(&store, "event-1").await;
        saga(&store, "done", "completed", Duration::ZERO).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while marty::inbox::handled(&store, "audit", "event-1").await.unwrap()
            || count(&store, "select count(*) from marty_saga").await > 0
        {
            assert!(Instant::now() < deadline, "a 1s retention is pruned within seconds");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(count(&store, "select count(*) from marty_saga_history").await, 0);
    }
}

marty_tests::on_each_store! {
    stores: marty_tests::empty_sqlite, marty_tests::empty_postgres;

    #[tokio::test]
    async fn a_replica_of_the_previous_release_does_not_lower_the_schema_version(store = "retention_versions") {
        storage();
        let database = if matches!(store, Store::Postgres(_)) { Database::Postgres } else { Database::Sqlite };
        let name = if database == Database::Postgres { "versions_postgres" } else { "versions_sqlite" };
        let store = marty::store::register(name, store).await.unwrap();
        let newer = i64::from(schema::version(database)) + 1;
        // The next release migrated first; this one starts after it.
        execute(&store, "update marty_schema set version = $1 where component = 'events'", &[newer]).await;
        marty::store::register(name, store.clone()).await.expect("a newer schema is accepted");
        assert_eq!(count(&store, "select cast(version as bigint) from marty_schema").await, newer);
    }
}
