struct Orders;

#[marty::service(config = "../../../../ui-tests/secured.toml")]
impl Orders {
    #[marty::post("/orders")]
    #[marty::authorize(roles = ["admn", "clerk"], scopes = ["orders:wrte"])]
    async fn place(&self) -> &'static str {
        "placed"
    }
}

fn main() {}
