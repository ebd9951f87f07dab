struct Orders;

#[marty::service]
impl Orders {
    #[get("/orders")]
    async fn list(&self) -> &'static str {
        "[]"
    }

    #[get("/orders")]
    async fn list_again(&self) -> &'static str {
        "[]"
    }
}

fn main() {}
