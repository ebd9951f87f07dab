use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, marty::Event)]
struct OrderCreated {
    order_id: u64,
}

fn main() {}
