struct Orders;

#[marty::service]
impl Orders {
    #[get("/orders")]
    async fn list() -> &'static str {
        "[]"
    }
}

fn main() {}
