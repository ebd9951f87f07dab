#[derive(Debug)]
struct AppError(marty::Error);

impl From<marty::Error> for AppError {
    fn from(error: marty::Error) -> Self {
        AppError(error)
    }
}

impl marty::Classify for AppError {
    fn classify(&self) -> marty::ErrorClass {
        self.0.classify()
    }
}

#[marty::database_call(dependency = "orders_db", config = "../../../../ui-tests/invalid.toml")]
async fn load() -> Result<u32, AppError> {
    Ok(1)
}

// The same file again: its errors are reported once, at the first call site.
#[marty::database_call(dependency = "orders_db", config = "../../../../ui-tests/invalid.toml")]
async fn save() -> Result<u32, AppError> {
    Ok(2)
}

fn main() {}
