//! `walletd start`: run one node until SIGINT or SIGTERM.
//!
//! Shutdown drains: the wallet API stops taking calls and finishes those in flight (their Raft
//! proposals included) before the node's Raft groups stop.

use std::collections::BTreeMap;
use std::time::Duration;

use raft_ledger::client::{ClientOptions, LedgerClient};
use raft_ledger::net::env::Listener;
use raft_ledger::node::{LedgerNode, NodeEnv};
use raft_ledger::raft::{NodeId, NodeInfo};
use tokio::sync::watch;

use crate::config::{ApiConfig, StartConfig};
use wallet_api::api::auth::{Authenticator, OperatorKey, Sessions, load_keys, redis_sessions};
use wallet_api::api::service::{WalletService, serve};
use wallet_api::session::audit::SecurityLog;
use wallet_api::session::service::SessionApi;

/// How long in-flight wallet calls may take to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// What the public API trusts: operator keys and, with a session store, players' tokens.
struct ApiAuth {
    keys: Vec<OperatorKey>,
    sessions: Option<Sessions>,
    /// The security event log the session store writes to.
    log: Option<SecurityLog>,
}

async fn api_auth(api: &ApiConfig, node_name: &str) -> Result<ApiAuth, String> {
    let keys = match &api.operator_keys {
        Some(path) => load_keys(path)?,
        None => Vec::new(),
    };
    let sessions = match (&api.redis_url, &api.session_key) {
        (Some(url), Some(key)) => Some(redis_sessions(url, key).await?),
        _ => None,
    };
    if keys.is_empty() && sessions.is_none() {
        tracing::warn!("wallet API has no operator keys and no session store: every call will be refused");
    }
    // Every security event this node's store sees (logins, step-ups, revocations, reuse, device
    // and IP changes, from either service) goes to its hash-chained log.
    let log = match &sessions {
        Some(s) => {
            let (log, report) = SecurityLog::open(&api.security_log, node_name)?;
            tracing::info!(path = %api.security_log.display(), records = report.records, "security event log opened");
            s.set_event_sink(log.sink());
            Some(log)
        }
        None => None,
    };
    Ok(ApiAuth { keys, sessions, log })
}

/// Bootstrap by topology, for shards this node is not a first voter of: asks one of each
/// shard's first voters to initialize it, retrying until each has answered (the others may
/// still be starting). Initializing twice with the same voters is harmless, so a restart that
/// repeats this changes nothing.
async fn bootstrap_elsewhere(node: LedgerNode, me: String, plan: BTreeMap<u32, BTreeMap<NodeId, NodeInfo>>) {
    let options = ClientOptions { deadline: Duration::from_secs(3600), ..node.client_options() };
    let client = match LedgerClient::connect(vec![me], options).await {
        Ok(c) => c,
        Err(e) => return tracing::error!("bootstrap: cannot reach this node's own API: {e}"),
    };
    for (shard, members) in plan {
        'shard: loop {
            for (id, info) in &members {
                match client.initialize(&info.addr, shard, &members).await {
                    Ok(done) => {
                        let what = if done { "initialized" } else { "already initialized" };
                        tracing::info!(shard, node = id, "bootstrap: shard {what} on its first voter");
                        break 'shard;
                    }
                    Err(e) => tracing::debug!(shard, node = id, "bootstrap: not yet: {e}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Starts a node, serves it, bootstraps the cluster if asked, and shuts down cleanly on a signal.
pub(crate) async fn run(config: StartConfig) -> Result<(), String> {
    let listener =
        Listener::bind_tcp(&config.listen).await.map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let api_listener = match &config.api {
        Some(api) => Some(
            tokio::net::TcpListener::bind(&api.listen)
                .await
                .map_err(|e| format!("cannot listen on {} for the wallet API: {e}", api.listen))?,
        ),
        None => None,
    };
    let node_name = format!("node {}", config.node.node_id);
    let auth = match &config.api {
        Some(api) => Some((api_auth(api, &node_name).await?, api.session_api)),
        None => None,
    };
    let node_id = config.node.node_id;
    let advertised = config.node.info.addr.clone();
    let mut env = NodeEnv::production(config.cluster_key.clone());
    if let Some(file) = std::env::var_os(raft_ledger::OffsetClock::ENV) {
        // A fault-injection hook for chaos runs (`chaos/`): the cluster time this node stamps
        // when it leads is its wall clock plus the offset in the file.
        tracing::warn!(file = %std::path::Path::new(&file).display(), "cluster time follows a clock offset file");
        env.clock = std::sync::Arc::new(raft_ledger::OffsetClock::watching(file.into()));
    }
    let node = LedgerNode::start(config.node, env).await.map_err(|e| e.to_string())?;
    let serving = node.clone();
    let server = tokio::spawn(async move { serving.serve(listener).await });
    let (draining_tx, draining) = watch::channel(false);
    let api_server = match (api_listener, auth) {
        (Some(l), Some((auth, session_api))) => {
            let addr = l.local_addr().map_err(|e| e.to_string())?;
            let sessions = match (&auth.sessions, session_api) {
                (Some(store), true) => Some(SessionApi::new(
                    store,
                    Authenticator::new(auth.keys.clone(), None),
                    auth.log.clone(),
                    draining.clone(),
                )),
                _ => None,
            };
            let serves_sessions = if sessions.is_some() { " and session service" } else { "" };
            let wallet = Authenticator::new(auth.keys, auth.sessions);
            let service = WalletService::new(node.clone(), config.seeds.clone(), wallet, draining.clone());
            println!("walletd node {node_id} wallet API{serves_sessions} on {addr}");
            Some(tokio::spawn(serve(service, sessions, l, draining.clone())))
        }
        _ => None,
    };
    if let Some(members) = &config.bootstrap {
        let elsewhere = node.bootstrap_placed(members).await.map_err(|e| e.to_string())?;
        if !elsewhere.is_empty() {
            tokio::spawn(bootstrap_elsewhere(node.clone(), advertised.clone(), elsewhere));
        }
    }
    // Scripts and tests wait for this line.
    println!("walletd node {node_id} ready on {advertised}");
    let failed = tokio::select! {
        () = wait_for_signal() => {
            tracing::info!("signal received; draining the wallet API");
            None
        }
        why = node.storage_failure() => {
            // Nothing more can be made durable here, so nothing more may be acknowledged: stop,
            // and let the other replicas carry the shards until this one is restarted.
            tracing::error!("{why}; stopping this node (free the disk or fix it, then start it again)");
            Some(why)
        }
    };
    draining_tx.send_replace(true);
    if let Some(api) = api_server {
        // After a storage failure nothing in flight here can commit; do not hold the exit.
        let drain = if failed.is_some() { Duration::from_secs(2) } else { DRAIN_TIMEOUT };
        match tokio::time::timeout(drain, api).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!("wallet API server: {e}"),
            Ok(Err(e)) => tracing::warn!("wallet API task: {e}"),
            Err(_) => tracing::warn!("calls still in flight after {drain:?}; stopping anyway"),
        }
    }
    tracing::info!("shutting down the node");
    node.shutdown().await;
    if let Some(why) = failed {
        let _ = server.await;
        return Err(format!("stopped: {why}"));
    }
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
