//! expect: #[saga] needs marty's `sqlite` or `postgres` feature
struct PlaceOrder;

#[marty::saga(store = "orders_db")]
impl PlaceOrder {
    #[saga_step]
    async fn reserve(&mut self) -> Result<(), std::io::Error> {
        Ok(())
    }
}

fn main() {}
