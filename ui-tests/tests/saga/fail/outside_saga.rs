use marty::saga::StepError;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct PlaceOrder {
    order_id: u64,
}

struct Clients;

impl PlaceOrder {
    #[marty::saga_step]
    async fn reserve_stock(&mut self) -> Result<(), StepError> {
        Ok(())
    }
}

fn main() {}
