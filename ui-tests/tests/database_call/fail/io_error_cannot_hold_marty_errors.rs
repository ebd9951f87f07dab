#[marty::database_call(dependency = "orders_db")]
async fn load() -> std::io::Result<u32> {
    Ok(1)
}

fn main() {}
