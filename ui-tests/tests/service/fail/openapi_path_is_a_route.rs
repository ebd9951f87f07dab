struct Orders;

#[marty::service(config = "../../../../ui-tests/described.toml")]
impl Orders {
    #[marty::get("/openapi.json")]
    async fn spec(&self) -> &'static str {
        "{}"
    }
}

fn main() {}
