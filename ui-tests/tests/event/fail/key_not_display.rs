use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, marty::Event)]
#[event(topic = "orders.created")]
struct OrderCreated {
    #[event(key)]
    order_ids: Vec<u64>,
}

fn main() {}
