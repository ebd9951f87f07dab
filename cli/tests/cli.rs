//! `cargo marty` as a developer's CI and an operator run it: the binary, its exit codes and output,
//! against files and a real SQLite database holding Marty's tables.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use marty::sqlx::{self, AssertSqlSafe};
use marty::store::schema::{ddl, Database};

fn cargo_marty(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cargo-marty")).args(args).output().expect("run cargo-marty")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// The JSON a command printed.
fn json_of(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| panic!("{error}: {}", text(output)))
}

fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("marty-cli-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn every_command_explains_itself() {
    for command in
        [&["--help"][..], &["marty", "--help"], &["check", "--help"], &["new", "--help"], &["schema", "--help"]]
    {
        let output = cargo_marty(command);
        assert!(output.status.success(), "{command:?}: {}", text(&output));
    }
    for command in [
        &["outbox", "--help"][..],
        &["outbox", "replay", "--help"],
        &["saga", "show", "--help"],
        &["openapi", "--help"],
    ] {
        let output = cargo_marty(command);
        assert!(
            output.status.success() && text(&output).contains("Usage: cargo marty"),
            "{command:?}: {}",
            text(&output)
        );
    }
    let wrong = cargo_marty(&["chekc"]);
    assert_eq!(wrong.status.code(), Some(2), "a mistake is exit 2: {}", text(&wrong));
    assert!(text(&wrong).contains("check"), "the nearest command: {}", text(&wrong));
}

#[test]
fn check_reads_files_and_config_maps_as_the_service_would_and_exits_one_on_a_problem() {
    let dir = temp_dir("check");
    let good = write(
        &dir,
        "good.toml",
        "[service]\nname = \"orders\"\n[dependencies.db]\nkind = \"database\"\nurl = \"${DATABASE_URL}\"\n",
    );
    let env = write(&dir, "deploy.env", "# what the deployment sets\nexport DATABASE_URL=\"postgres://db/orders\"\n");
    let output = cargo_marty(&["check", &good, "--env-file", &env]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("good.toml: ok: service `orders`"), "{}", text(&output));

    let bad = write(&dir, "bad.toml", "[service]\nname = \"orders\"\n\n[dependencies.db]\nkind = \"databse\"\n");
    let output = cargo_marty(&["check", &good, &bad, "--env-file", &env]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let report = text(&output);
    assert!(report.contains("bad.toml:5: key `dependencies.db.kind`: unknown value `databse`"), "{report}");
    assert!(report.contains("good.toml: ok"), "every file is checked: {report}");

    // The store's Kubernetes ConfigMaps, with the variables their Deployments set.
    let config_maps = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/deploy/kubernetes/config.yaml");
    let env = write(&dir, "store.env", "DATABASE_URL=postgres://store@db/store\nSTORE_CLIENT_SECRET=s\n");
    let output = cargo_marty(&["check", config_maps, "--env-file", &env]);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(text(&output).matches(": ok: service").count(), 3, "orders, inventory, payments: {}", text(&output));

    // A mistake in a ConfigMap is reported at the YAML file's line.
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: orders\ndata:\n  marty.toml: |\n    [service]\n    name = \"orders\"\n    drain_delay = \"5 seconds\"\n";
    let config_map = write(&dir, "orders.yaml", yaml);
    let output = cargo_marty(&["check", &config_map]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("orders.yaml:9: key `service.drain_delay`"), "{}", text(&output));

    let missing = cargo_marty(&["check", &dir.join("nowhere.toml").display().to_string()]);
    assert_eq!(missing.status.code(), Some(2), "a file that cannot be read: {}", text(&missing));
}

#[test]
fn schema_prints_the_ddl_of_either_database() {
    let sqlite = cargo_marty(&["schema", "--sqlite"]);
    assert!(sqlite.status.success());
    assert_eq!(String::from_utf8_lossy(&sqlite.stdout), ddl(Database::Sqlite));
    let postgres = cargo_marty(&["schema", "--postgres"]);
    assert_eq!(String::from_utf8_lossy(&postgres.stdout), ddl(Database::Postgres));
    assert_eq!(cargo_marty(&["schema"]).status.code(), Some(2), "which database must be said");
}

/// A SQLite database with Marty's tables, a pending and a parked outbox row, and a parked saga.
async fn operated_database(dir: &Path) -> String {
    let url = format!("sqlite://{}?mode=rwc", dir.join("service.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(ddl(Database::Sqlite))).execute(&pool).await.unwrap();
    let insert = "insert into marty_outbox (event_id, topic, key, version, payload, state, attempts, last_error)
        values ($1, 'orders.placed', 'order-1', 1, x'7b7d', $2, $3, $4)";
    for (event, state, attempts, error) in [("e-pending", 0, 0, None), ("e-parked", 2, 10, Some("message too large"))] {
        sqlx::query(insert).bind(event).bind(state).bind(attempts).bind(error).execute(&pool).await.unwrap();
    }
    sqlx::query(
        "insert into marty_saga (id, name, state, status, step, attempt, error, next_attempt_at, lease_until,
             created_at, updated_at)
         values ('order-7', 'place_order', '{\"item\":\"book\"}', 'parked', 1, 10, 'refund refused', 0, 0, 1000, 2000)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    url
}

#[test]
fn an_operator_lists_replays_and_resumes_what_is_parked() {
    let dir = temp_dir("operator");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let url = runtime.block_on(operated_database(&dir));
    let db = ["--database-url", url.as_str()];

    let pending = cargo_marty(&[&["outbox", "pending", "--json"][..], &db].concat());
    let rows = json_of(&pending);
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    assert_eq!(rows[0]["event_id"], "e-pending");

    let parked = cargo_marty(&[&["outbox", "parked"][..], &db].concat());
    let table = text(&parked);
    assert!(table.starts_with("ID") && table.contains("e-parked") && table.contains("message too large"), "{table}");
    let id = table.lines().nth(1).and_then(|line| line.split_whitespace().next()).unwrap().to_owned();
    let replay = cargo_marty(&[&["outbox", "replay", &id][..], &db].concat());
    assert!(replay.status.success(), "{}", text(&replay));
    let again = cargo_marty(&[&["outbox", "replay", &id][..], &db].concat());
    assert_eq!(again.status.code(), Some(1), "nothing parked to replay: {}", text(&again));
    let pending = cargo_marty(&[&["outbox", "pending", "--json"][..], &db].concat());
    assert_eq!(json_of(&pending).as_array().map(Vec::len), Some(2), "the replayed row is back in line");

    let sagas = cargo_marty(&[&["saga", "parked", "--json"][..], &db].concat());
    let sagas = json_of(&sagas);
    assert_eq!(sagas[0]["id"], "order-7");
    assert_eq!(sagas[0]["state"]["item"], "book", "the state as JSON");
    assert_eq!(sagas[0]["updated_at"], "1970-01-01T00:00:02.000Z");
    let resume = cargo_marty(&[&["saga", "resume", "order-7"][..], &db].concat());
    assert!(resume.status.success(), "{}", text(&resume));
    let show = cargo_marty(&[&["saga", "show", "order-7", "--json"][..], &db].concat());
    let shown = json_of(&show);
    assert_eq!(shown["saga"]["status"], "compensating", "back in its service's hands: {shown}");
    assert_eq!(shown["history"][0]["kind"], "resumed", "{shown}");
    let again = cargo_marty(&[&["saga", "resume", "order-7"][..], &db].concat());
    assert_eq!(again.status.code(), Some(1), "not parked any more: {}", text(&again));
    let unknown = cargo_marty(&[&["saga", "show", "order-8"][..], &db].concat());
    assert_eq!(unknown.status.code(), Some(1));

    let nowhere = cargo_marty(&["saga", "list", "--database-url", "sqlite:///nonexistent/dir/x.db"]);
    assert_eq!(nowhere.status.code(), Some(2), "{}", text(&nowhere));
    let no_url = Command::new(env!("CARGO_BIN_EXE_cargo-marty"))
        .args(["saga", "list"])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert_eq!(no_url.status.code(), Some(2));
    assert!(text(&no_url).contains("--database-url"), "{}", text(&no_url));
}

#[test]
fn new_generates_what_each_flag_asks_and_refuses_what_it_does_not_generate() {
    let dir = temp_dir("new");
    let new = |name: &str, flags: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cargo-marty"))
            .current_dir(&dir)
            .args(["marty", "new", name])
            .args(flags)
            .output()
            .expect("run cargo-marty")
    };
    let shop = new("shop", &["--events", "nats", "--saga"]);
    assert!(shop.status.success(), "{}", text(&shop));
    let read = |path: &str| std::fs::read_to_string(dir.join(path)).unwrap();
    assert!(
        read("shop/Cargo.toml").contains(r#"features = ["openapi", "sqlite", "nats"]"#),
        "{}",
        read("shop/Cargo.toml")
    );
    let config = read("shop/marty.toml");
    assert!(
        config.starts_with("# Checked when the service compiles") && config.contains("[service]\nname = \"shop\""),
        "{config}"
    );
    assert!(
        config.contains("broker = \"nats\"\nurl = \"nats://127.0.0.1:4222\"") && config.contains("[outbox]"),
        "{config}"
    );
    let lib = read("shop/src/lib.rs");
    assert!(lib.contains("#[event_handler(") && lib.contains("#[marty::saga(") && !lib.contains("@events"), "{lib}");

    let orders = new("orders", &["--saga"]);
    assert!(orders.status.success(), "{}", text(&orders));
    let lib = read("orders/src/lib.rs");
    assert!(
        lib.contains("#[marty::saga(") && !lib.contains("Greeted") && !read("orders/marty.toml").contains("[events]"),
        "{lib}"
    );

    let refused = new("both", &["--grpc", "--events", "memory"]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(
        text(&refused).contains("`--grpc` is not generated together with `--events` or `--saga`"),
        "{}",
        text(&refused)
    );
    assert!(!dir.join("both").exists(), "nothing is written");
}
