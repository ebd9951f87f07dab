//! Compiles `proto/` with protox, a protobuf compiler in Rust, so a machine without `protoc` builds.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // One descriptor set per API: what each service's reflection serves.
    for (proto, descriptor) in [("orders.proto", "orders_descriptor.bin"), ("store.proto", "store_descriptor.bin")] {
        let descriptors = protox::compile([proto], ["proto"])?;
        std::fs::write(out_dir.join(descriptor), descriptors.encode_to_vec())?;
        tonic_prost_build::configure().build_transport(false).compile_fds(descriptors)?;
    }
    Ok(())
}
