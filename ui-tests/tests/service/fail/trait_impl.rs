struct Orders;

trait Catalog {
    async fn list(&self) -> &'static str;
}

#[marty::service]
impl Catalog for Orders {
    #[get("/orders")]
    async fn list(&self) -> &'static str {
        "[]"
    }
}

fn main() {}
