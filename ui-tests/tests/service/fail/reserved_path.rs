struct Orders;

#[marty::service]
impl Orders {
    #[get("/healthz")]
    async fn health(&self) -> &'static str {
        "mine"
    }
}

fn main() {}
