struct Orders;

#[marty::service]
impl Orders {
    #[get("/orders/{id}")]
    async fn get(&self) -> &'static str {
        ""
    }

    #[delete("/orders/{order_id}")]
    async fn remove(&self) -> &'static str {
        ""
    }
}

fn main() {}
