struct Orders;

// `Orders` does not implement the `Health` trait the named server serves.
#[marty::service(grpc(tonic_health::pb::health_server::HealthServer))]
impl Orders {}

fn main() {}
