//! expect: `grpc(..)` needs marty's `grpc` feature
struct Orders;

mod pb {
    pub struct OrdersServer;
}

#[marty::service(grpc(pb::OrdersServer))]
impl Orders {
    #[get("/orders")]
    async fn list(&self) -> &'static str {
        "[]"
    }
}

fn main() {}
