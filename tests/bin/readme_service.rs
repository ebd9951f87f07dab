//! A service whose `main` is written as the README writes it, started by `startup_config_error.rs`
//! with a `marty.toml` that does not load: what the user sees is what `fn main() -> Result<(),
//! ServeError>` prints.

struct Hello;

#[marty::service]
impl Hello {
    #[marty::get("/hello")]
    async fn hello(&self) -> &'static str {
        "hello"
    }
}

#[tokio::main]
async fn main() -> Result<(), marty::service::ServeError> {
    marty::service::serve(Hello).await
}
