use marty::saga::StepError;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct PlaceOrder {
    order_id: u64,
}

struct Clients;

#[marty::saga(store = "orders_db")]
impl PlaceOrder {
    #[saga_step]
    #[saga_step(max_attempts = 2)]
    async fn reserve_stock(&mut self) -> Result<(), StepError> {
        Ok(())
    }
}

fn main() {}
