use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, marty::Event)]
#[event(topic = "orders.created")]
struct OrderCreated<T> {
    order_id: T,
}

fn main() {}
