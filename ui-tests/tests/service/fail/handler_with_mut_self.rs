struct Orders;

#[marty::service]
impl Orders {
    #[get("/orders")]
    async fn list(&mut self) -> &'static str {
        "[]"
    }
}

fn main() {}
