//! No event lost when the REST example stops under POST load, on the default in-process broker:
//! after a SIGTERM every committed order's `OrderPlaced` has been handled by the audit consumer or is
//! still in the outbox, and after a SIGKILL too; once restarted, every one is handled, exactly once.

mod support;

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::Service;

const BINARY: &str = env!("CARGO_BIN_EXE_rest_orders");

/// Clients placing orders as fast as the service takes them, until it stops answering.
struct Load {
    running: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Vec<i64>>>,
    clients: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(service: &Service, clients: usize) -> Load {
        let running = Arc::new(AtomicBool::new(true));
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let clients = (0..clients)
            .map(|client| {
                let (addr, running, acknowledged) = (service.addr, running.clone(), acknowledged.clone());
                std::thread::spawn(move || {
                    let body = format!(r#"{{"item":"client-{client}","quantity":1}}"#);
                    while running.load(Ordering::Relaxed) {
                        let Ok(response) = support::request(addr, "POST", "/orders", Some(&body)) else { return };
                        if response.status == 201 {
                            let id = response.body.split(['{', ':', ',']).nth(2).and_then(|id| id.parse().ok());
                            acknowledged.lock().unwrap().push(id.expect("a created order has an id"));
                        }
                    }
                })
            })
            .collect();
        Load { running, acknowledged, clients }
    }

    /// Stops the clients (those still connected stop at their next answer) and gives the ids of
    /// the orders the service acknowledged.
    fn stop(self) -> Vec<i64> {
        self.running.store(false, Ordering::Relaxed);
        for client in self.clients {
            client.join().unwrap();
        }
        Arc::try_unwrap(self.acknowledged).unwrap().into_inner().unwrap()
    }
}

/// What the database says, read from outside the service.
#[derive(Debug)]
struct Counts {
    orders: i64,
    audited: i64,
    /// Orders with neither an audit row nor a pending outbox row: events lost.
    lost: i64,
    /// Audit rows applied more than once.
    applied_twice: i64,
}

fn counts(dir: &std::path::Path) -> Counts {
    let url = format!("sqlite://{}/orders.db", dir.display());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let (orders, audited, lost, applied_twice) = sqlx::query_as(
            "select (select count(*) from orders),
                    (select count(*) from order_audit),
                    (select count(*) from orders o
                     where not exists (select 1 from order_audit a where a.order_id = o.id)
                       and not exists (select 1 from marty_outbox b where b.state = 0
                                       and json_extract(cast(b.payload as text), '$.order_id') = o.id)),
                    (select count(*) from order_audit where applied > 1)",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        pool.close().await;
        Counts { orders, audited, lost, applied_twice }
    })
}

fn fresh_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("marty-shutdown-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Restarts the service on `dir` and waits until the audit consumer has handled every order's event.
fn restart_and_wait_for_every_event(dir: &std::path::Path, within: Duration) -> Counts {
    let _service = Service::start_in(BINARY, dir, Stdio::null(), None, &[]);
    let deadline = Instant::now() + within;
    loop {
        let counts = counts(dir);
        if counts.audited == counts.orders {
            return counts;
        }
        assert!(Instant::now() < deadline, "after the restart, not every event was handled: {counts:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs POST load for a while, then sends `signal` with the load still running.
fn stop_under_load(dir: &std::path::Path, signal: &str) -> (Vec<i64>, std::process::ExitStatus) {
    let mut service = Service::start_in(BINARY, dir, Stdio::null(), None, &[]);
    support::wait_for_status(service.addr, "/readyz", 200);
    let load = Load::start(&service, 16);
    std::thread::sleep(Duration::from_millis(1500));
    service.signal(signal);
    let exited = service.child.wait().unwrap();
    let acknowledged = load.stop();
    assert!(acknowledged.len() > 100, "the load placed only {} orders", acknowledged.len());
    (acknowledged, exited)
}

#[test]
fn sigterm_under_load_leaves_every_event_handled_or_in_the_outbox() {
    let dir = fresh_dir("term");
    let (acknowledged, exited) = stop_under_load(&dir, "-TERM");
    assert!(exited.success(), "a SIGTERM exits cleanly: {exited:?}");
    let stopped = counts(&dir);
    assert!(stopped.orders >= acknowledged.len() as i64, "every acknowledged order committed: {stopped:?}");
    assert_eq!(stopped.lost, 0, "each order's event was handled or is still in the outbox: {stopped:?}");
    assert_eq!(stopped.applied_twice, 0, "{stopped:?}");

    let restarted = restart_and_wait_for_every_event(&dir, Duration::from_secs(30));
    assert_eq!(restarted.applied_twice, 0, "the inbox makes a redelivered event harmless: {restarted:?}");
}

#[test]
fn sigkill_under_load_loses_no_event_once_restarted() {
    let dir = fresh_dir("kill");
    let (acknowledged, _) = stop_under_load(&dir, "-KILL");
    let killed = counts(&dir);
    assert!(killed.orders >= acknowledged.len() as i64, "every acknowledged order committed: {killed:?}");
    assert_eq!(killed.lost, 0, "each order's event was handled or is still in the outbox: {killed:?}");

    // Rows the killed relay had claimed wait out its claim (30 s) before they are taken again.
    let restarted = restart_and_wait_for_every_event(&dir, Duration::from_secs(90));
    assert_eq!(restarted.applied_twice, 0, "the inbox makes a redelivered event harmless: {restarted:?}");
}
