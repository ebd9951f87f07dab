//! The store demo while the services its saga calls fail under load, on SQLite and PostgreSQL:
//!
//! - **killed**: inventory and payments are SIGKILLed at random, in the middle of calls, and started
//!   again after outages of up to 1.5 s, while orders pour in;
//! - **answers lost after the work was done**: a proxy in front of each forwards every request and
//!   drops a share of the replies once the service has acted (the window between a remote commit
//!   and its answer), on every step and every compensation; for two stretches it drops them all,
//!   so sagas give up on steps that did take effect.
//!
//! Then every order has settled, none is parked, and the books balance: no compensated order keeps a
//! charge or stock, every completed order has both once, and no unit of stock is lost.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use marty_tests::reply_dropper::ReplyDropper;
use support::store::{check_settled_and_balanced, report_of, Databases, Process, Stack};

#[test]
fn killing_inventory_and_payments_under_load_keeps_the_books_on_sqlite() {
    kill_under_load(Databases::sqlite("store-kills"));
}

#[test]
#[ignore = "needs MARTY_TEST_POSTGRES_URL"]
fn killing_inventory_and_payments_under_load_keeps_the_books_on_postgres() {
    let url = marty_tests::server_env("MARTY_TEST_POSTGRES_URL");
    kill_under_load(Databases::postgres(&url, "marty_store_kills"));
}

#[test]
fn answers_lost_after_the_services_acted_keep_the_books_on_sqlite() {
    lose_answers_under_load(Databases::sqlite("store-lost-answers"));
}

#[test]
#[ignore = "needs MARTY_TEST_POSTGRES_URL"]
fn answers_lost_after_the_services_acted_keep_the_books_on_postgres() {
    let url = marty_tests::server_env("MARTY_TEST_POSTGRES_URL");
    lose_answers_under_load(Databases::postgres(&url, "marty_store_lost_answers"));
}

const ORDERS: u64 = 600;

fn kill_under_load(databases: Databases) {
    // Breakers that let trial calls through 2 s after they open, rather than the default 30 s, so
    // that the test rides out several outages (the sagas wait each one out either way).
    let stack = Stack::new(
        databases,
        &[
            ("MARTY__DEPENDENCIES__INVENTORY_API__CIRCUIT_BREAKER__OPEN_FOR", "2s"),
            ("MARTY__DEPENDENCIES__PAYMENTS_API__CIRCUIT_BREAKER__OPEN_FOR", "2s"),
        ],
    );
    let names = ["inventory", "payments"];
    let mut services: Vec<Process> = names.iter().map(|name| stack.start(name)).collect();
    let _orders = stack.start("orders");
    let (report, kills) = std::thread::scope(|scope| {
        let load = scope.spawn(|| stack.load(&["--orders", &ORDERS.to_string(), "--concurrency", "32"]));
        let mut kills = Vec::new();
        // Kills while the first 80% of the orders are placed; the rest run with both services up.
        while sagas_started(stack.orders) < ORDERS * 8 / 10 && !load.is_finished() {
            std::thread::sleep(Duration::from_millis(fastrand::u64(300..1200)));
            let victim = fastrand::usize(..names.len());
            services[victim].kill();
            let outage = Duration::from_millis(fastrand::u64(100..1500));
            std::thread::sleep(outage);
            services[victim] = stack.start(names[victim]);
            kills.push(format!("{} for {outage:?}", names[victim]));
        }
        (report_of(&load.join().expect("the load thread")), kills)
    });
    eprintln!("{} kills: {kills:?}\nreport: {report}", kills.len());
    assert!(kills.len() >= 3, "the load ended before the services were killed often enough: {kills:?}");
    check_settled_and_balanced(&report, ORDERS);
    let metrics = support::request(stack.orders, "GET", "/metrics", None).unwrap().body;
    let troubled = ["failed", "timed_out", "compensation_failed", "turned_away"]
        .iter()
        .map(|outcome| counter_sum(&metrics, "marty_saga_steps_total", &format!("outcome=\"{outcome}\"")))
        .sum::<u64>();
    assert!(troubled > 0, "no saga step noticed the kills:\n{metrics}");
}

fn lose_answers_under_load(databases: Databases) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // Without breakers: every lost answer is an attempt the saga counts, so steps run out of
    // attempts while every answer is lost (the kill test covers waiting out open breakers).
    let mut stack = Stack::new(
        databases,
        &[
            ("MARTY__DEPENDENCIES__INVENTORY_API__CIRCUIT_BREAKER__ENABLED", "false"),
            ("MARTY__DEPENDENCIES__PAYMENTS_API__CIRCUIT_BREAKER__ENABLED", "false"),
        ],
    );
    let _inventory = stack.start("inventory");
    let _payments = stack.start("payments");
    let (inventory, payments) = runtime.block_on(async {
        (ReplyDropper::start(stack.inventory, 150).await, ReplyDropper::start(stack.payments, 150).await)
    });
    stack.set_env("MARTY__DEPENDENCIES__INVENTORY_API__URL", &format!("http://{}", inventory.addr()));
    stack.set_env("MARTY__DEPENDENCIES__PAYMENTS_API__URL", &format!("http://{}", payments.addr()));
    let _orders = stack.start("orders");
    let report = std::thread::scope(|scope| {
        let load = scope.spawn(|| stack.load(&["--orders", &ORDERS.to_string(), "--concurrency", "32"]));
        // A quarter in, payments loses every answer for 4 s; past half way, inventory does.
        for (at, proxy) in [(ORDERS / 4, &payments), (ORDERS * 11 / 20, &inventory)] {
            while sagas_started(stack.orders) < at && !load.is_finished() {
                std::thread::sleep(Duration::from_millis(50));
            }
            proxy.set_drop_rate(1000);
            std::thread::sleep(Duration::from_secs(4));
            proxy.set_drop_rate(150);
        }
        report_of(&load.join().expect("the load thread"))
    });
    eprintln!(
        "dropped {} of {} inventory answers and {} of {} payments answers\nreport: {report}",
        inventory.dropped(),
        inventory.replies(),
        payments.dropped(),
        payments.replies()
    );
    check_settled_and_balanced(&report, ORDERS);
    assert!(report["books"]["refunds"].as_u64() > Some(0), "no charge whose answer was lost was refunded: {report}");
    // Every step and every compensation lost answers, and the sagas saw them as transport errors (a
    // compensation's history lines name the step it undoes: `release_stock` undoes `reserve_stock`).
    let lost = runtime.block_on(lost_answers_by_step(&stack.databases.url("orders")));
    for (step, kind) in [
        ("reserve_stock", "step_failed"),
        ("charge_payment", "step_failed"),
        ("reserve_stock", "compensation_failed"),
        ("charge_payment", "compensation_failed"),
    ] {
        let seen = lost.iter().find(|(s, k, _)| s == step && k == kind).map_or(0, |(_, _, count)| *count);
        assert!(seen > 0, "no `{kind}` of `{step}` on a lost answer: {lost:?}");
    }
}

/// `(step, kind, count)` of the saga history lines that record a lost answer.
async fn lost_answers_by_step(url: &str) -> Vec<(String, String, i64)> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let rows = sqlx::query_as(
        "select step, kind, count(*) from marty_saga_history where detail like '%transport error%'
         group by step, kind order by step, kind",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows
}

/// Sagas the orders service has started, from its `/metrics`.
fn sagas_started(orders: SocketAddr) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(response) = support::request(orders, "GET", "/metrics", None) {
            return counter_sum(&response.body, "marty_sagas_started_total", "saga=\"place_order\"");
        }
        assert!(Instant::now() < deadline, "the orders service does not answer");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The sum of the samples of counter `name` whose labels contain `label`.
fn counter_sum(exposition: &str, name: &str, label: &str) -> u64 {
    exposition
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
