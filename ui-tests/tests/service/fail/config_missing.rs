struct Orders;

#[marty::service(config = "nowhere.toml")]
impl Orders {
    #[get("/orders")]
    async fn list(&self) -> &'static str {
        "[]"
    }
}

fn main() {}
