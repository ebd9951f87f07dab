struct Orders;

#[marty::service(config = "../../../../ui-tests/secured.toml")]
impl Orders {
    #[marty::get("/orders")]
    #[marty::authorize(roles = "clerk")]
    async fn list(&self) -> &'static str {
        "[]"
    }

    #[marty::get("/orders/{id}")]
    #[marty::authorize(role = ["clerk"])]
    async fn get(&self) -> &'static str {
        "{}"
    }

    #[marty::public]
    async fn helper(&self) {}
}

fn main() {}
