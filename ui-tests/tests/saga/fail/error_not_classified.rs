
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct PlaceOrder {
    order_id: u64,
}

struct Clients;

#[marty::saga(store = "orders_db")]
impl PlaceOrder {
    #[saga_step]
    async fn reserve_stock(&mut self) -> Result<(), String> {
        Ok(())
    }
}

fn main() {}
