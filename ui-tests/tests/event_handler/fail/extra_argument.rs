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
    #[event_handler(inbox = "orders_db")]
    async fn on_placed(&self, event: OrderPlaced, tx: &mut marty::sqlx::Transaction<'_, marty::sqlx::Sqlite>, attempt: u32) -> Result<(), String> {
        let _ = (event.order_id, tx, attempt);
        Ok(())
    }
}

fn main() {}
