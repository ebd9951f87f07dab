//! The events promise under failure, against real PostgreSQL and a NATS JetStream server of the
//! test's own: thousands of events written by concurrent transactions (some held open so they
//! commit out of order), two relays on one table, a consumer whose effect commits with its inbox
//! record, and meanwhile relays and the consumer killed with SIGKILL at random moments and the
//! broker stopped and restarted. Then a set checker: every committed event's effect exactly once,
//! each account's sequence in order, and the poison event dead-lettered.
//!
//! Needs `MARTY_TEST_POSTGRES_URL` and `MARTY_TEST_NATS_SERVER` (the `nats-server` binary); .ci/run
//! sets both. The broker is stopped with SIGTERM, not SIGKILL: the machine's NATS (2.9) has no
//! `sync_interval: always`, and without it JetStream itself loses acknowledged writes on SIGKILL.

use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

const WORKER: &str = env!("CARGO_BIN_EXE_events_worker");
const SCHEMA: &str = "reliability";
const GROUP: &str = "ledger";
const WRITERS: i64 = 8;
const EVENTS_PER_WRITER: i64 = 400;
const ACCOUNTS_PER_WRITER: i64 = 5;

#[derive(Debug, Serialize, Deserialize, marty::Event)]
#[event(topic = "reliability.credited")]
struct Credited {
    #[event(key)]
    account: String,
    seq: i64,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A JetStream server of the test's own, so stopping it disturbs nothing else.
struct Nats {
    binary: String,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Nats {
    fn start(binary: String) -> Nats {
        let dir = std::env::temp_dir().join(format!("marty-reliability-nats-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut nats = Nats { binary, port: free_port(), dir, child: None };
        nats.restart();
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let child = Command::new(&self.binary)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        wait_for_port(self.port, "nats-server");
    }

    /// A graceful stop (SIGTERM): JetStream flushes what it acknowledged.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "TERM");
            let _ = child.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

/// An `events_worker` process.
struct Worker {
    mode: &'static str,
    env: Vec<(&'static str, String)>,
    child: Child,
}

impl Worker {
    fn start(mode: &'static str, env: Vec<(&'static str, String)>) -> Worker {
        let child = spawn_worker(mode, &env);
        Worker { mode, env, child }
    }

    /// SIGKILL, then a fresh process in its place.
    fn kill_and_restart(&mut self) {
        self.child.kill().unwrap();
        let _ = self.child.wait();
        self.child = spawn_worker(self.mode, &self.env);
    }
}

fn spawn_worker(mode: &str, env: &[(&'static str, String)]) -> Child {
    Command::new(WORKER)
        .arg(mode)
        .envs(env.iter().map(|(key, value)| (*key, value)))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start events_worker")
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn pool(url: &str) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(12)
        .after_connect(|connection, _| {
            Box::pin(async move {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("set search_path to {SCHEMA}"))).execute(connection).await?;
                Ok(())
            })
        })
        .connect(url)
        .await
        .unwrap()
}

/// Writes events in business transactions; every 40th is held open while others commit, so
/// transactions commit out of order. Returns the ids of the committed events.
async fn produce(pool: sqlx::PgPool, writer: i64) -> Vec<String> {
    let mut committed = Vec::new();
    for n in 0..EVENTS_PER_WRITER {
        let event =
            Credited { account: format!("acct-{writer}-{}", n % ACCOUNTS_PER_WRITER), seq: n / ACCOUNTS_PER_WRITER };
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("insert into balances (account, seq) values ($1, $2)")
            .bind(&event.account)
            .bind(event.seq)
            .execute(&mut *tx)
            .await
            .unwrap();
        marty::outbox::publish(&mut *tx, &event).await.unwrap();
        let message_id: String = sqlx::query_scalar("select event_id from marty_outbox where id = lastval()")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        if n % 40 == 7 {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        tx.commit().await.unwrap();
        committed.push(message_id);
    }
    committed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_lost_nothing_twice_order_held_through_sigkills_and_a_broker_restart() {
    let (Ok(pg_url), Ok(nats_binary)) =
        (std::env::var("MARTY_TEST_POSTGRES_URL"), std::env::var("MARTY_TEST_NATS_SERVER"))
    else {
        eprintln!("skipped: MARTY_TEST_POSTGRES_URL and MARTY_TEST_NATS_SERVER are needed (.ci/run sets them)");
        return;
    };
    let admin = sqlx::PgPool::connect(&pg_url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("drop schema if exists {SCHEMA} cascade; create schema {SCHEMA}")))
        .execute(&admin)
        .await
        .unwrap();
    let pool = pool(&pg_url).await;
    sqlx::raw_sql(
        "create table balances (account text not null, seq bigint not null);
         create table effects (id bigserial primary key, event_id text not null, account text not null, seq bigint not null);",
    )
    .execute(&pool)
    .await
    .unwrap();
    marty::store::register("reliability", pool.clone()).await.unwrap();

    let mut nats = tokio::task::block_in_place(|| Nats::start(nats_binary));
    let env = vec![
        ("WORKER_PG_URL", pg_url.clone()),
        ("WORKER_SCHEMA", SCHEMA.to_owned()),
        ("WORKER_NATS_URL", nats.url()),
        ("WORKER_GROUP", GROUP.to_owned()),
        ("WORKER_HANDLER_DELAY_MS", "2".to_owned()),
    ];
    let mut workers =
        [Worker::start("relay", env.clone()), Worker::start("relay", env.clone()), Worker::start("consume", env)];

    // A poison event: not a `Credited`, so the consumer must dead-letter it and carry on.
    let poison_id = marty::events::new_event_id();
    sqlx::query("insert into marty_outbox (event_id, topic, key, version, payload) values ($1, 'reliability.credited', 'poison', 1, 'not json')")
        .bind(&poison_id)
        .execute(&pool)
        .await
        .unwrap();

    let producers: Vec<_> = (0..WRITERS).map(|writer| tokio::spawn(produce(pool.clone(), writer))).collect();
    // Chaos while the events flow: SIGKILL a relay or the consumer every 300ms, and stop the
    // broker for a second and a half once.
    let mut rounds = 0;
    while !producers.iter().all(|producer| producer.is_finished()) || rounds < 12 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        rounds += 1;
        if rounds == 5 {
            tokio::task::block_in_place(|| nats.stop());
            tokio::time::sleep(Duration::from_millis(1500)).await;
            tokio::task::block_in_place(|| nats.restart());
            continue;
        }
        let victim = fastrand::usize(..workers.len());
        tokio::task::block_in_place(|| workers[victim].kill_and_restart());
    }
    let mut committed = HashSet::new();
    for producer in producers {
        committed.extend(producer.await.unwrap());
    }
    assert_eq!(committed.len() as i64, WRITERS * EVENTS_PER_WRITER);

    // Let the survivors drain everything.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let distinct: i64 =
            sqlx::query_scalar("select count(distinct event_id) from effects").fetch_one(&pool).await.unwrap();
        if distinct >= committed.len() as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "only {distinct} of {} events were handled", committed.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let effects: Vec<(String, String, i64)> =
        sqlx::query_as("select event_id, account, seq from effects order by id").fetch_all(&pool).await.unwrap();
    let handled: HashSet<String> = effects.iter().map(|(id, _, _)| id.clone()).collect();
    assert_eq!(effects.len(), handled.len(), "every side effect exactly once");
    assert_eq!(handled, committed, "every committed event handled, and nothing else");
    let mut by_account: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (_, account, seq) in &effects {
        by_account.entry(account).or_default().push(*seq);
    }
    assert_eq!(by_account.len() as i64, WRITERS * ACCOUNTS_PER_WRITER);
    let per_account = EVENTS_PER_WRITER / ACCOUNTS_PER_WRITER;
    for (account, seqs) in by_account {
        assert_eq!(seqs, (0..per_account).collect::<Vec<_>>(), "{account}: applied in order");
    }
    let unsent: i64 =
        sqlx::query_scalar("select count(*) from marty_outbox where state <> 1").fetch_one(&pool).await.unwrap();
    assert_eq!(unsent, 0, "every outbox row marked sent, none parked");

    // The poison event sits in the dead-letter stream, once, with the reason.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let mut dead_letters = jetstream.get_stream(marty::events::broker::DEAD_LETTER_STREAM).await.unwrap();
    assert_eq!(dead_letters.info().await.unwrap().state.messages, 1);
    let subject = format!("marty.dead_letter.{GROUP}.reliability.credited");
    let dead = dead_letters.get_last_raw_message_by_subject(&subject).await.unwrap();
    let headers = dead.headers;
    let header = |name: &str| headers.get(name).map(|value| value.as_str().to_owned());
    assert_eq!(header(marty::events::headers::ID).as_deref(), Some(poison_id.as_str()));
    assert!(header(marty::events::headers::DEAD_LETTER_REASON).is_some_and(|reason| reason.contains("undecodable")));
}
