#![deny(warnings)]
//! Every argument of `#[event_handler]`: a plain handler, one with the inbox transaction, one with
//! every option; compiled with warnings denied, and the handlers listed at run time.

use std::sync::Arc;

use marty::service::Routes;
use marty::service;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, marty::Event)]
#[event(topic = "orders.placed")]
struct OrderPlaced {
    #[event(key)]
    order_id: u64,
}

#[derive(Serialize, Deserialize, marty::Event)]
#[event(topic = "payments.failed", version = 2)]
struct PaymentFailed {
    reason: String,
}

struct Billing;

#[service(name = "billing")]
impl Billing {
    #[event_handler]
    async fn on_placed(&self, event: OrderPlaced) -> Result<(), String> {
        let _ = event.order_id;
        Ok(())
    }

    #[event_handler(group = "billing-ledger", inbox = "orders_db")]
    async fn record_placed(
        &self,
        event: OrderPlaced,
        tx: &mut marty::sqlx::Transaction<'_, marty::sqlx::Sqlite>,
    ) -> Result<(), marty::sqlx::Error> {
        marty::sqlx::query("select ?").bind(event.order_id as i64).execute(&mut **tx).await.map(drop)
    }

    #[event_handler(topic = "payments.failed", group = "alerts", max_attempts = 3, concurrency = 2, backoff = "50ms", ack_wait = "1m")]
    async fn on_payment_failed(&self, event: PaymentFailed) -> Result<(), std::io::Error> {
        let _ = event.reason;
        Ok(())
    }
}

fn main() {
    let handlers = Arc::new(Billing).event_handlers();
    let listed: Vec<(String, String, &str, u32, usize)> = handlers
        .iter()
        .map(|handler| {
            (handler.topic.to_string(), handler.group.to_string(), handler.name, handler.options.max_attempts, handler.options.concurrency)
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("orders.placed".to_owned(), "billing".to_owned(), "billing::on_placed", 5, 8),
            ("orders.placed".to_owned(), "billing-ledger".to_owned(), "billing::record_placed", 5, 8),
            ("payments.failed".to_owned(), "alerts".to_owned(), "billing::on_payment_failed", 3, 2),
        ]
    );
}
