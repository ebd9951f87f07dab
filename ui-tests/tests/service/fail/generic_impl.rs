struct Orders<S> {
    store: S,
}

#[marty::service]
impl<S: Send + Sync + 'static> Orders<S> {
    #[get("/orders")]
    async fn list(&self) -> &'static str {
        let _ = &self.store;
        "[]"
    }
}

fn main() {}
