use marty::axum::extract::{Json, Query};

#[derive(serde::Deserialize)]
struct NewOrder {
    item: String,
}

#[derive(serde::Deserialize)]
struct Page {
    after: Option<String>,
}

struct Orders;

#[marty::service(config = "../../../../ui-tests/described.toml")]
impl Orders {
    #[marty::post("/orders")]
    async fn place(&self, Json(order): Json<NewOrder>) -> String {
        order.item
    }

    #[marty::get("/orders")]
    async fn list(&self, Query(page): Query<Page>) -> String {
        page.after.unwrap_or_default()
    }
}

fn main() {}
