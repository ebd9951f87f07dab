use marty::service;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, marty::Event)]
#[event(topic = "orders.placed")]
struct OrderPlaced {
    #[event(key)]
    order_id: u64,
}

struct Billing;

#[service]
impl Billing {
    #[event_handler(inbox = "payments_api")]
    async fn on_placed(&self, event: OrderPlaced, tx: &mut marty::sqlx::Transaction<'_, marty::sqlx::Sqlite>) -> Result<(), String> {
        let _ = (event.order_id, tx);
        Ok(())
    }
}

fn main() {}
