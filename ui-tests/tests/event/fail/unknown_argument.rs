use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, marty::Event)]
#[event(topic = "orders.created", versoin = 2)]
struct OrderCreated {
    order_id: u64,
}

fn main() {}
