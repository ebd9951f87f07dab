//! expect: `#[event_handler]` needs marty's `events` feature
struct Audit;

#[derive(serde::Deserialize)]
struct OrderPlaced {
    order_id: i64,
}

#[marty::service]
impl Audit {
    #[event_handler(topic = "orders.placed")]
    async fn record(&self, event: OrderPlaced) -> Result<(), std::io::Error> {
        let _ = event.order_id;
        Ok(())
    }
}

fn main() {}
