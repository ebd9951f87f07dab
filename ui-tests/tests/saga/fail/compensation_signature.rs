use marty::saga::StepError;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct PlaceOrder {
    order_id: u64,
}

struct Clients;

#[marty::saga(store = "orders_db", env = Clients)]
impl PlaceOrder {
    #[saga_step(compensate = release_stock)]
    async fn reserve_stock(&mut self) -> Result<(), StepError> {
        Ok(())
    }

    fn release_stock(self, _reason: String, _code: u32) {}
}

fn main() {}
