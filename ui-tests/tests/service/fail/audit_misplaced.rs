struct Orders;

#[marty::service(config = "../../../../ui-tests/secured.toml")]
impl Orders {
    #[marty::post("/orders")]
    #[marty::audit(always)]
    async fn place(&self) -> &'static str {
        "placed"
    }

    #[marty::audit]
    async fn helper(&self) -> u32 {
        7
    }
}

fn main() {}
