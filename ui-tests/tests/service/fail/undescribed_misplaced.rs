struct Orders;

#[marty::service(config = "../../../../ui-tests/described.toml")]
impl Orders {
    #[marty::get("/orders")]
    #[marty::undescribed(body)]
    async fn list(&self) -> &'static str {
        "[]"
    }

    #[marty::undescribed]
    async fn helper(&self) {}
}

fn main() {}
