use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, marty::Event)]
#[event(topic = "orders.changed")]
enum OrderChanged {
    Created {
        #[event(key)]
        order_id: u64,
    },
}

fn main() {}
