use marty::axum::http::StatusCode;
use marty::security::Principal;

struct Orders;

#[marty::service(config = "../../../../ui-tests/secured.toml")]
impl Orders {
    #[marty::get("/catalog")]
    #[marty::public]
    async fn catalog(&self, caller: Option<Principal>) -> String {
        caller.map_or_else(|| "anyone".to_owned(), |caller| caller.subject().to_owned())
    }

    #[marty::get("/orders")]
    #[marty::authorize]
    async fn list(&self, caller: Principal) -> String {
        caller.subject().to_owned()
    }

    #[marty::post("/orders")]
    #[marty::authorize(roles = ["admin", "clerk"], scopes = ["orders:write"])]
    async fn place(&self) -> StatusCode {
        StatusCode::CREATED
    }
}

fn main() {
    use marty::service::Routes;
    assert_eq!(Orders::ACCESS.len(), 3);
}
