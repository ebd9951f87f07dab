struct Orders;

#[marty::service(config = "../../../../ui-tests/secured.toml")]
impl Orders {
    #[marty::get("/orders")]
    #[marty::authorize(roles = ["clerk"])]
    #[marty::public]
    async fn list(&self) -> &'static str {
        "[]"
    }
}

fn main() {}
