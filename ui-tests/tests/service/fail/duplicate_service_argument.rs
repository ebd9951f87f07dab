struct Orders;

#[marty::service(name = "orders", name = "billing")]
impl Orders {
    #[get("/orders")]
    async fn list(&self) -> &'static str {
        "[]"
    }
}

fn main() {}
