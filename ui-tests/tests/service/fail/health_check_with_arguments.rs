struct Orders;

#[marty::service]
impl Orders {
    #[health_check]
    async fn database(&self, _deep: bool) -> Result<(), String> {
        Ok(())
    }
}

fn main() {}
