struct Orders;

const FILE_DESCRIPTOR_SET: &[u8] = &[];

#[marty::service(reflection = FILE_DESCRIPTOR_SET)]
impl Orders {
    #[get("/orders")]
    async fn list(&self) -> &'static str {
        "[]"
    }
}

fn main() {}
