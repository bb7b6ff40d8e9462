//! Compiles `proto/casino/wallet/v1/wallet.proto` (and `routing.proto`, the routers' feed, and
//! `proto/casino/session/v1/session.proto`, the session service) into tonic clients and servers, and
//! writes its encoded descriptor set, which server reflection serves to `grpcurl`.
//!
//! protox parses the file in pure Rust, so building needs no `protoc` on the machine.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        root.join("casino/wallet/v1/wallet.proto"),
        root.join("casino/wallet/v1/routing.proto"),
        root.join("casino/session/v1/session.proto"),
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let fds = protox::compile(&files, [&root])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("wallet_descriptor.bin"), fds.encode_to_vec())?;
    // Our codec: prost's, with decode failures answered as MALFORMED_REQUEST (src/api/codec.rs).
    tonic_prost_build::configure().codec_path("crate::api::codec::WalletCodec").compile_fds(fds)?;
    Ok(())
}
