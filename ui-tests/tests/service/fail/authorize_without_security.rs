struct Orders;

// The crate's marty.toml has no `[security]`: nothing could authenticate the caller.
#[marty::service]
impl Orders {
    #[marty::get("/orders")]
    #[marty::authorize(roles = ["clerk"])]
    async fn list(&self) -> &'static str {
        "[]"
    }
}

fn main() {}
