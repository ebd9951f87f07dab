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
    #[event_handler(max_attempts = 0, backoff = "soon", ack_wait = "0s")]
    async fn on_placed(&self, event: OrderPlaced) -> Result<(), String> {
        let _ = event.order_id;
        Ok(())
    }
}

fn main() {}
