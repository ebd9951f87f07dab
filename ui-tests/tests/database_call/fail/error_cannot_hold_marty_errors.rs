#[derive(Debug)]
struct PlainError;

impl marty::Classify for PlainError {
    fn classify(&self) -> marty::ErrorClass {
        marty::ErrorClass::Failure
    }
}

#[marty::database_call(dependency = "orders_db")]
async fn load() -> Result<u32, PlainError> {
    Ok(1)
}

fn main() {}
