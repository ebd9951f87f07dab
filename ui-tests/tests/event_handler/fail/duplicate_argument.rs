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
    #[event_handler(group = "billing", max_attempts = 3, group = "invoices")]
    async fn on_placed(&self, event: OrderPlaced) -> Result<(), String> {
        let _ = event.order_id;
        Ok(())
    }
}

fn main() {}
