//! `[storage] migrate = false`: Marty creates none of its tables, refuses a database whose tables are
//! not at the version it needs (saying what to apply), and works on tables made from its DDL text.
//! (Its own test binary: the configuration is the process's global registry.)

use marty::config::Config;
use marty::store::schema::{self, Database};
use marty::store::Store;
use marty::DependencyRegistry;

const CONFIG: &str = "[storage]\nmigrate = false\n";

#[derive(serde::Serialize, serde::Deserialize, marty::Event)]
#[event(topic = "orders.placed")]
struct OrderPlaced {
    order_id: i64,
}

fn install() {
    let config = Config::parse(CONFIG, "marty.toml").unwrap();
    let _ = DependencyRegistry::from_config(config).install_global();
}

fn database_of(store: &Store) -> Database {
    match store {
        Store::Postgres(_) => Database::Postgres,
        Store::Sqlite(_) => Database::Sqlite,
        _ => unreachable!("the tests build both features only"),
    }
}

async fn run(store: &Store, sql: &str) {
    match store {
        Store::Postgres(pool) => sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(pool).await.map(drop),
        Store::Sqlite(pool) => sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(pool).await.map(drop),
        _ => unreachable!(),
    }
    .expect("the DDL applies")
}

marty_tests::on_each_store! {
    stores: marty_tests::empty_sqlite, marty_tests::empty_postgres;

    #[tokio::test]
    async fn an_empty_database_is_refused_with_the_migrations_to_apply(store = "external_empty") {
        install();
        let database = database_of(&store);
        let error = marty::store::register("orders_db", store.clone()).await.unwrap_err().to_string();
        let needed = schema::version(database);
        assert!(
            error.contains(&format!("at version 0, and this build needs version {needed}"))
                && error.contains(&format!("apply migrations 1 to {needed}"))
                && error.contains("marty::store::schema::migrations"),
            "{error}"
        );
        // Only the first migrations applied: the rest is asked for.
        for migration in &schema::migrations(database)[..2] {
            run(&store, &migration.sql).await;
        }
        let error = marty::store::register("orders_db", store).await.unwrap_err().to_string();
        assert!(error.contains(&format!("apply migrations 3 to {needed}")), "{error}");
    }
}

marty_tests::on_each_store! {
    stores: marty_tests::empty_sqlite, marty_tests::empty_postgres;

    #[tokio::test]
    async fn tables_made_from_the_ddl_text_are_the_ones_marty_uses(store = "external_ddl") {
        install();
        run(&store, &schema::ddl(database_of(&store))).await;
        let store = marty::store::register("orders_db", store).await.expect("the tables are at the version needed");
        // The outbox and the inbox work on them.
        macro_rules! exercise {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await.unwrap();
                marty::outbox::publish(&mut tx, &OrderPlaced { order_id: 7 }).await.unwrap();
                tx.commit().await.unwrap();
                let tx = marty::inbox::begin($pool, "audit", "event-1").await.unwrap().expect("new event");
                tx.commit().await.unwrap();
                assert!(marty::inbox::begin($pool, "audit", "event-1").await.unwrap().is_none(), "a redelivery");
                let pending: i64 =
                    sqlx::query_scalar("select count(*) from marty_outbox").fetch_one($pool).await.unwrap();
                assert_eq!(pending, 1);
            }};
        }
        match &store {
            Store::Postgres(pool) => exercise!(pool),
            Store::Sqlite(pool) => exercise!(pool),
            _ => unreachable!(),
        }
        assert!(marty::inbox::handled(&store, "audit", "event-1").await.unwrap());
    }
}
