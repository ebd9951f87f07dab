use marty::saga::{StepContext, StepError};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct PlaceOrder {
    order_id: u64,
}

struct Clients;

struct Other;

#[marty::saga(store = "orders_db", env = Clients)]
impl PlaceOrder {
    #[saga_step]
    async fn reserve_stock(&mut self, ctx: &mut StepContext<Other>) -> Result<(), StepError> {
        let _ = ctx;
        Ok(())
    }
}

fn main() {}
