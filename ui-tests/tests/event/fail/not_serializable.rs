#[derive(marty::Event)]
#[event(topic = "orders.created")]
struct OrderCreated {
    order_id: u64,
}

fn main() {}
