//! expect: #[service] needs marty's `http` feature
struct Orders;

#[marty::service]
impl Orders {
    #[get("/orders")]
    async fn list(&self) -> &'static str {
        "[]"
    }
}

fn main() {}
