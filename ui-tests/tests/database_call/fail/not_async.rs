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

#[marty::database_call(dependency = "orders_db")]
fn load() -> Result<u32, AppError> {
    Ok(1)
}

fn main() {}
