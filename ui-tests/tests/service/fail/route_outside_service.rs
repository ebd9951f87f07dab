struct Orders;

impl Orders {
    #[marty::get("/orders")]
    async fn list(&self) -> &'static str {
        "[]"
    }
}

fn main() {}
