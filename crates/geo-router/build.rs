//! Compiles the routing feed's client from `proto/casino/wallet/v1/routing.proto` (protox: no
//! `protoc` needed). The wallet service itself is forwarded as bytes, so its proto is not
//! compiled here.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = root.join("casino/wallet/v1/routing.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&root])?;
    tonic_prost_build::configure().build_server(false).compile_fds(fds)?;
    Ok(())
}
