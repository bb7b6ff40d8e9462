//! `walletd start`: run one node until SIGINT or SIGTERM.

use raft_ledger::net::env::Listener;
use raft_ledger::node::{LedgerNode, NodeEnv};

use crate::config::StartConfig;

/// Starts a node, serves it, bootstraps the cluster if asked, and shuts down cleanly on a signal.
pub async fn run(config: StartConfig) -> Result<(), String> {
    let listener =
        Listener::bind_tcp(&config.listen).await.map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let node_id = config.node.node_id;
    let advertised = config.node.info.addr.clone();
    let node = LedgerNode::start(config.node, NodeEnv::production()).await.map_err(|e| e.to_string())?;
    let serving = node.clone();
    let server = tokio::spawn(async move { serving.serve(listener).await });
    if let Some(members) = &config.bootstrap {
        node.bootstrap(members).await.map_err(|e| e.to_string())?;
    }
    // Scripts and tests wait for this line.
    println!("walletd node {node_id} ready on {advertised}");
    wait_for_signal().await;
    tracing::info!("signal received; shutting down");
    node.shutdown().await;
    match server.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("server task failed: {e}")),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
