//! What `#[database_call]` adds to a call, next to a bare async fn, the same policies written by
//! hand with the runtime's primitives, and a tower `ConcurrencyLimit` + `Timeout` stack: measured
//! interleaved in one process, medians of several rounds. Last stdout line: one JSON object.

use std::hint::black_box;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use marty::circuit_breaker::CallOutcome;
use marty::config::{Config, DependencyConfig};
use marty::metrics::{CallMetrics, Metrics, Outcome};
use marty::policy::Dependency;
use marty::timeout::{Deadline, WithDeadline};
use marty::{Classify, DependencyRegistry, ErrorClass};
use marty_bench::{allocations, json, median, CountingAllocator, Value};
use tower::{Service, ServiceExt};
use tracing::Instrument;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const CALLS_PER_ROUND: u64 = 200_000;
const ROUNDS: usize = 7;

#[derive(Debug)]
struct BenchError(#[allow(dead_code)] marty::Error);

impl From<marty::Error> for BenchError {
    fn from(error: marty::Error) -> Self {
        BenchError(error)
    }
}

impl Classify for BenchError {
    fn classify(&self) -> ErrorClass {
        self.0.classify()
    }
}

#[inline(never)]
async fn raw(x: u64) -> Result<u64, BenchError> {
    Ok(black_box(x))
}

#[marty::database_call(dependency = "bench_db")]
#[inline(never)]
async fn through_marty(x: u64) -> Result<u64, BenchError> {
    Ok(black_box(x))
}

/// The same policies as `through_marty`, written out with the runtime's primitives and no macro.
struct HandWritten {
    dependency: Dependency,
    metrics: CallMetrics,
    max_attempts: u32,
}

impl HandWritten {
    fn new(config: DependencyConfig) -> Self {
        let metrics = Metrics::new().call_metrics(&"bench_db".into(), &"hand".into());
        HandWritten { max_attempts: config.retry.max_attempts, dependency: Dependency::new(config), metrics }
    }

    #[inline(never)]
    async fn call(&self, x: u64) -> Result<u64, BenchError> {
        let dependency = &self.dependency;
        dependency.retry_budget().deposit();
        let span = tracing::info_span!("hand.call", attempt = tracing::field::Empty);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let permit = dependency.circuit_breaker().try_acquire()?;
            let start = tokio::time::Instant::now();
            let deadline = Deadline::after(start, dependency.timeout());
            let bulkhead_permit = match dependency.bulkhead().try_acquire() {
                Some(permit) => permit,
                None => dependency.bulkhead().wait_for_permit(Some(deadline)).await?,
            };
            let result =
                WithDeadline::new(async { Ok::<_, BenchError>(black_box(x)) }.instrument(span.clone()), deadline.at)
                    .await;
            drop(bulkhead_permit);
            let elapsed = start.elapsed();
            let (outcome, class, result) = match result {
                Ok(Ok(value)) => (Outcome::Success, None, Ok(value)),
                Ok(Err(error)) => (Outcome::Error, Some(error.classify()), Err(error)),
                Err(_) => (
                    Outcome::Timeout,
                    Some(ErrorClass::Transient),
                    Err(deadline.elapsed_error(dependency.name()).into()),
                ),
            };
            permit.record(CallOutcome::new(class, elapsed, dependency.circuit_breaker().slow_call_duration()));
            self.metrics.record(outcome, Some(elapsed));
            let retry = class.is_some_and(ErrorClass::is_transient)
                && attempt < self.max_attempts
                && dependency.retry_budget().try_withdraw();
            match if retry { ControlFlow::Continue(()) } else { ControlFlow::Break(result) } {
                ControlFlow::Break(result) => return result,
                ControlFlow::Continue(()) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

type TowerStack = tower::timeout::Timeout<
    tower::limit::ConcurrencyLimit<tower::util::ServiceFn<fn(u64) -> std::future::Ready<Result<u64, tower::BoxError>>>>,
>;

fn tower_stack() -> TowerStack {
    fn call(x: u64) -> std::future::Ready<Result<u64, tower::BoxError>> {
        std::future::ready(Ok(black_box(x)))
    }
    tower::ServiceBuilder::new()
        .timeout(Duration::from_secs(10))
        .concurrency_limit(1000)
        .service(tower::service_fn(call as fn(u64) -> _))
}

/// Nanoseconds per call of `f` over one round.
async fn time_round<F, Fut>(mut f: F) -> f64
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    for i in 0..CALLS_PER_ROUND {
        f(i).await;
    }
    start.elapsed().as_nanos() as f64 / CALLS_PER_ROUND as f64
}

/// Calls per second of `threads` threads, each on its own single-threaded runtime, all calling the
/// same `#[database_call]` fn (and so sharing one bulkhead, breaker and set of metrics).
fn throughput(threads: usize) -> f64 {
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
                runtime.block_on(async {
                    for i in 0..CALLS_PER_ROUND {
                        black_box(through_marty(i).await.unwrap());
                    }
                });
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    (threads as u64 * CALLS_PER_ROUND) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    // Tracing off, as a service runs it when it filters spans out: a subscriber is set (every service
    // sets one) and enables nothing. With none set at all, tracing's `log` fallback (which sqlx
    // turns on) formats every disabled span's fields for a logger that is not there either.
    tracing::subscriber::set_global_default(tracing::subscriber::NoSubscriber::new()).expect("first subscriber");
    let config_path = concat!(env!("CARGO_MANIFEST_DIR"), "/marty.toml");
    let config = Config::load(config_path.as_ref()).expect("bench/marty.toml is valid");
    let dependency_config = config.dependency("bench_db").unwrap().clone();
    DependencyRegistry::from_config(config).install_global().expect("first install");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let hand = HandWritten::new(dependency_config);
    let mut tower = tower_stack();
    let (mut raw_ns, mut marty_ns, mut hand_ns, mut tower_ns) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut marty_allocs = 0.0;
    runtime.block_on(async {
        // Warm up: resolves the call site's policy and metric handles once, as a service's first call does.
        through_marty(0).await.unwrap();
        eprintln!("SIZE {}", std::mem::size_of_val(&through_marty(0)));
        for _ in 0..ROUNDS {
            raw_ns.push(
                time_round(|i| async move {
                    black_box(raw(i).await.unwrap());
                })
                .await,
            );
            let before = allocations();
            marty_ns.push(
                time_round(|i| async move {
                    black_box(through_marty(i).await.unwrap());
                })
                .await,
            );
            marty_allocs = (allocations() - before) as f64 / CALLS_PER_ROUND as f64;
            hand_ns.push(
                time_round(|i| {
                    let hand = &hand;
                    async move {
                        black_box(hand.call(i).await.unwrap());
                    }
                })
                .await,
            );
            // Written out: a tower service is borrowed mutably per call, which a closure cannot lend.
            let start = Instant::now();
            for i in 0..CALLS_PER_ROUND {
                black_box(tower.ready().await.unwrap().call(i).await.unwrap());
            }
            tower_ns.push(start.elapsed().as_nanos() as f64 / CALLS_PER_ROUND as f64);
        }
    });
    let (raw, marty, hand, tower) =
        (median(&mut raw_ns), median(&mut marty_ns), median(&mut hand_ns), median(&mut tower_ns));

    let mut scaling = Vec::new();
    for _ in 0..3 {
        let one = throughput(1);
        let two = throughput(2);
        scaling.push(two / one);
    }
    let scaling = median(&mut scaling);

    println!("rounds: {ROUNDS} x {CALLS_PER_ROUND} calls per variant, interleaved; medians in ns per call");
    println!("raw {raw:.1}  marty {marty:.1}  hand {hand:.1}  tower {tower:.1}");
    println!(
        "{}",
        json(&[
            ("bench", Value::Text("call_overhead".into())),
            ("raw_ns", Value::Number(raw)),
            ("marty_ns", Value::Number(marty)),
            ("hand_ns", Value::Number(hand)),
            ("tower_ns", Value::Number(tower)),
            ("marty_added_ns", Value::Number(marty - raw)),
            ("tower_added_ns", Value::Number(tower - raw)),
            ("ratio_vs_tower", Value::Number((marty - raw) / (tower - raw))),
            ("ratio_vs_hand", Value::Number(marty / hand)),
            ("marty_allocs_per_call", Value::Number(marty_allocs)),
            ("scaling_2_workers", Value::Number(scaling)),
        ])
    );
}
