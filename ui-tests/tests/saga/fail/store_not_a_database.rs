use marty::saga::StepError;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct PlaceOrder {
    order_id: u64,
}

struct Clients;

#[marty::saga(store = "payments_api")]
impl PlaceOrder {
    #[saga_step]
    async fn reserve_stock(&mut self) -> Result<(), StepError> {
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct ShipOrder;

#[marty::saga(store = "orders")]
impl ShipOrder {
    #[saga_step]
    async fn ship(&mut self) -> Result<(), StepError> {
        Ok(())
    }
}

fn main() {}
