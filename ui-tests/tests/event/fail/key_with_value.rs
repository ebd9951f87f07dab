use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, marty::Event)]
#[event(topic = "orders.created")]
struct OrderCreated {
    #[event(key = true)]
    order_id: u64,
}

fn main() {}
