#[marty::service]
struct Orders;

fn main() {}
