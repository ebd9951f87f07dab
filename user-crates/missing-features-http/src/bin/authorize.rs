//! expect: `#[public]` and `#[authorize]` need marty's `security` feature
struct Orders;

#[marty::service]
impl Orders {
    #[get("/orders")]
    #[marty::authorize(roles = ["clerk"])]
    async fn list(&self) -> &'static str {
        "[]"
    }
}

fn main() {}
