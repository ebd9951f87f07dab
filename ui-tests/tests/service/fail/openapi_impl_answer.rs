use marty::axum::response::IntoResponse;

struct Orders;

#[marty::service(config = "../../../../ui-tests/described.toml")]
impl Orders {
    #[marty::get("/orders/{id}/page")]
    async fn page(&self) -> impl IntoResponse {
        "<html></html>"
    }
}

fn main() {}
