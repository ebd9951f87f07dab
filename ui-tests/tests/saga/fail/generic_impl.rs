use marty::saga::StepError;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct PlaceOrder<T> {
    order: T,
}

#[marty::saga(store = "orders_db")]
impl<T: Serialize + for<'de> Deserialize<'de> + Send + Sync + 'static> PlaceOrder<T> {
    #[saga_step]
    async fn reserve_stock(&mut self) -> Result<(), StepError> {
        Ok(())
    }
}

fn main() {}
