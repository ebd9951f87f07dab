struct Orders;

#[marty::service(nmae = "orders")]
impl Orders {
    #[get("/orders")]
    async fn list(&self) -> &'static str {
        "[]"
    }
}

fn main() {}
