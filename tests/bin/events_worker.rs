//! A process the reliability tests start, kill with SIGKILL and start again: an outbox relay
//! (PostgreSQL -> NATS JetStream) or a consumer whose effect commits with its inbox record.
//!
//! `events_worker relay|consume`, configured by the environment: `WORKER_PG_URL`, `WORKER_SCHEMA`,
//! `WORKER_BROKER` (nats or rabbitmq), `WORKER_BROKER_URL`, `WORKER_GROUP`, `WORKER_HANDLER_DELAY_MS`.

use std::sync::Arc;
use std::time::Duration;

use marty::events::broker::RabbitMqBroker;
use marty::events::{Broker, EventHandler, Handled, HandlerError, HandlerOptions, Message, NatsBroker};
use marty::metrics::EventMetrics;
use marty::outbox::{Relay, RelayOptions};
use serde::{Deserialize, Serialize};

/// The event the reliability tests write: a per-account sequence number.
#[derive(Debug, Serialize, Deserialize, marty::Event)]
#[event(topic = "reliability.credited")]
struct Credited {
    #[event(key)]
    account: String,
    seq: i64,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

#[tokio::main]
async fn main() {
    // Warnings (a broker lost, a consumer resubscribing) to stderr, which the tests pass through:
    // a run that stalls then says what the workers saw.
    marty::telemetry::init_writing_to("events_worker", &Default::default(), std::io::stderr);
    let mode = std::env::args().nth(1).expect("relay or consume");
    let pool = marty_tests::pool_in_schema(&var("WORKER_PG_URL"), &var("WORKER_SCHEMA"), 6)
        .await
        .expect("connect to PostgreSQL");
    let store = marty::store::register(&var("WORKER_SCHEMA"), pool.clone()).await.expect("migrate");
    let url = var("WORKER_BROKER_URL");
    let broker: Arc<dyn Broker> = match var("WORKER_BROKER").as_str() {
        "nats" => Arc::new(NatsBroker::connect(&url).await.expect("NATS")),
        "rabbitmq" => Arc::new(RabbitMqBroker::connect(&url).await.expect("RabbitMQ")),
        other => panic!("unknown broker {other}"),
    };
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let task = match mode.as_str() {
        "relay" => {
            let options = RelayOptions::default().batch_size(50).poll_interval(Duration::from_millis(100));
            Relay::new(store, broker, options, EventMetrics::default()).start(shutdown)
        }
        "consume" => {
            let delay = Duration::from_millis(var("WORKER_HANDLER_DELAY_MS").parse().unwrap());
            let group = var("WORKER_GROUP");
            let invoke: marty::events::Invoke = Arc::new({
                let group = group.clone();
                move |message: Message| {
                    let (pool, group) = (pool.clone(), group.clone());
                    Box::pin(async move {
                        let event: Credited = marty::Event::decode(&message.payload)
                            .map_err(|error| HandlerError::Undecodable(error.to_string()))?;
                        let failed = |error: sqlx::Error| HandlerError::Failed(error.to_string());
                        let Some(mut tx) = marty::inbox::begin(&pool, &group, &message.id).await.map_err(failed)?
                        else {
                            return Ok(Handled::Duplicate);
                        };
                        sqlx::query("insert into effects (event_id, account, seq) values ($1, $2, $3)")
                            .bind(&message.id)
                            .bind(&event.account)
                            .bind(event.seq)
                            .execute(&mut *tx)
                            .await
                            .map_err(failed)?;
                        // Widen the windows in which a SIGKILL lands mid-handler, and between the
                        // commit and the acknowledgement (the effect done, the broker not told).
                        tokio::time::sleep(delay).await;
                        tx.commit().await.map_err(failed)?;
                        tokio::time::sleep(delay).await;
                        Ok(Handled::Done)
                    })
                }
            });
            let options = HandlerOptions::default().concurrency(4).ack_wait(Duration::from_secs(2)).max_attempts(3);
            EventHandler::new(<Credited as marty::Event>::TOPIC, &group, "reliability", options, invoke)
                .start(broker, EventMetrics::default(), shutdown)
                .await
        }
        other => panic!("unknown mode {other}"),
    };
    println!("ready");
    task.await.unwrap();
}
