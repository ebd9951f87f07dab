use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, marty::Event)]
#[event(topic = "orders.created", version = 0)]
struct OrderCreated {
    order_id: u64,
}

fn main() {}
