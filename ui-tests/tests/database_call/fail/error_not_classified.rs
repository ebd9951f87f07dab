#[derive(Debug)]
struct UnclassifiedError;

impl From<marty::Error> for UnclassifiedError {
    fn from(_: marty::Error) -> Self {
        UnclassifiedError
    }
}

#[marty::database_call(dependency = "orders_db")]
async fn load() -> Result<u32, UnclassifiedError> {
    Ok(1)
}

fn main() {}
