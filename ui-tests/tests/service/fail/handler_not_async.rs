struct Orders;

#[marty::service]
impl Orders {
    #[get("/orders")]
    fn list(&self) -> &'static str {
        "[]"
    }
}

fn main() {}
