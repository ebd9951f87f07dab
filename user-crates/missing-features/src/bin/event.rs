//! expect: #[derive(Event)] needs marty's `events` feature
#[derive(serde::Serialize, serde::Deserialize, marty::Event)]
#[event(topic = "orders.placed")]
struct OrderPlaced {
    order_id: i64,
}

fn main() {}
