struct Orders;

#[marty::service]
impl Orders {
    #[get("/orders")]
    async fn list(&self, _filter: &str) -> &'static str {
        "[]"
    }
}

fn main() {}
