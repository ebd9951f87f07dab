use marty::saga::StepError;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct PlaceOrder {
    order_id: u64,
}

struct Clients;

#[marty::saga(store = "orders_db", timeout = "forever")]
impl PlaceOrder {
    #[saga_step(timeout = "0s", max_attempts = 0)]
    async fn reserve_stock(&mut self) -> Result<(), StepError> {
        Ok(())
    }

    #[saga_step(timeout = "5 minutes")]
    async fn charge(&mut self) -> Result<(), StepError> {
        Ok(())
    }
}

fn main() {}
