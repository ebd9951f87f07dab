use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, marty::Event)]
#[event(topic = "orders.created")]
struct OrderCreated {
    #[event(key)]
    order_id: u64,
    #[event(key)]
    customer_id: u64,
}

fn main() {}
