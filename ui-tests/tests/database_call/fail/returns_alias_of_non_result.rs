type Count = u64;

#[marty::database_call(dependency = "orders_db")]
async fn count() -> Count {
    0
}

fn main() {}
