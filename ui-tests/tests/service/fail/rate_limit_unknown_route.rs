struct Orders;

#[marty::service(config = "../../../../ui-tests/rate_limited.toml")]
impl Orders {
    #[marty::post("/orders")]
    async fn place(&self) -> &'static str {
        "placed"
    }

    #[marty::get("/orders/{id}")]
    async fn order(&self) -> &'static str {
        "an order"
    }
}

fn main() {}
