struct Orders;

#[marty::service]
impl Orders {
    #[get("/orders/:id")]
    async fn get(&self) -> &'static str {
        ""
    }
}

fn main() {}
