struct Orders;

#[marty::service]
impl Orders {
    #[get]
    async fn list(&self) -> &'static str {
        "[]"
    }
}

fn main() {}
