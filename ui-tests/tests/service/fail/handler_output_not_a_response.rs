struct Orders;
struct NotAResponse;

#[marty::service]
impl Orders {
    #[get("/orders")]
    async fn list(&self) -> NotAResponse {
        NotAResponse
    }
}

fn main() {}
