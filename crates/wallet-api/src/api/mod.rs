//! The public gRPC wallet API (`casino.wallet.v1.Wallet`): generated code, the pure mapping
//! between protobuf messages and ledger commands, caller authentication, and the service.
//!
//! Layering: [`convert`] and [`errors`] are pure (no IO), [`auth`] reads only the operator key
//! file and the session store, and [`service`] is the only part that talks to the ledger node.

pub mod auth;
pub mod client;
pub mod codec;
pub mod convert;
pub mod edge;
pub mod errors;
pub mod routing;
pub mod service;

/// Code generated from `proto/casino/wallet/v1/wallet.proto` and `routing.proto`.
#[allow(unreachable_pub, missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("casino.wallet.v1");

    /// The encoded descriptor set of `wallet.proto`, `routing.proto` and `session.proto`, for
    /// server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/wallet_descriptor.bin"));

    impl BatchResponse {
        /// How many items succeeded (applied now or replayed); the rest carry an error each.
        pub fn succeeded(&self) -> usize {
            self.results.iter().filter(|r| matches!(r.result, Some(batch_item_result::Result::Ok(_)))).count()
        }
    }
}

/// Every message of the wallet API and of `google.rpc`'s error details, for JSON in and out.
pub fn descriptors() -> &'static prost_reflect::DescriptorPool {
    static POOL: std::sync::OnceLock<prost_reflect::DescriptorPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let mut pool = prost_reflect::DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).expect("built-in descriptors");
        pool.decode_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET).expect("google.rpc descriptors");
        pool
    })
}

/// The fully qualified service name, as health checks and reflection know it.
pub const SERVICE_NAME: &str = "casino.wallet.v1.Wallet";
/// Largest request the API decodes. Wallet calls are a few hundred bytes; anything near this is
/// a mistake or an attack.
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024;
