use marty::saga::StepError;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct PlaceOrder {
    order_id: u64,
}

trait Steps {
    async fn reserve_stock(&mut self) -> Result<(), StepError>;
}

#[marty::saga(store = "orders_db")]
impl Steps for PlaceOrder {
    #[saga_step]
    async fn reserve_stock(&mut self) -> Result<(), StepError> {
        Ok(())
    }
}

fn main() {}
