//! Compiles `proto/casino/rng/v1/beacon.proto` into the beacon's tonic client and server, and
//! writes its encoded descriptor set, which server reflection serves.
//!
//! protox parses the file in pure Rust, so building needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = root.join("casino/rng/v1/beacon.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&root])?;
    // The encoded descriptors, for server reflection (grpcurl).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("beacon_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
