//! `walletd demo`: a three-region cluster on this machine, with embedded storage, that shows
//! what the ledger does and then keeps serving until Ctrl-C.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use ledger_core::placement::{NodeSpec, RegionSpec, Topology};
use ledger_core::{AccountRef, Amount, Command, Currency, Outcome, PlayerId, RoundId, TxId};
use raft_ledger::client::{ClientOptions, LedgerClient};
use raft_ledger::net::env::Listener;
use raft_ledger::node::{LedgerNode, NodeConfig, NodeEnv};
use raft_ledger::raft::{NodeId, NodeInfo};

use std::sync::Arc;

use tokio::sync::watch;

use crate::cli::render_outcome;
use raft_ledger::net::member::ClusterKey;
use wallet_api::api::auth::{Authenticator, OperatorKey, Role, Sessions};
use wallet_api::api::client::Credentials;
use wallet_api::api::service::{WalletService, serve};
use wallet_api::session::audit::SecurityLog;
use wallet_api::session::pb::sessions_client::SessionsClient;
use wallet_api::session::service::SessionApi;

/// Options of `walletd demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Keep the cluster's data here instead of a temporary directory.
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
    /// Number of shards.
    #[arg(long, default_value_t = 4)]
    pub(crate) shards: u32,
    /// Exit after the walkthrough instead of serving until Ctrl-C.
    #[arg(long)]
    pub(crate) no_wait: bool,
    /// After the walkthrough, drive a bet/win/rollback workload through the wallet API and show
    /// ops/s, p99 latency and errors live, until Ctrl-C (or --load-secs).
    #[arg(long)]
    pub(crate) load: bool,
    /// Concurrent clients of the load.
    #[arg(long, default_value_t = 64)]
    pub(crate) clients: usize,
    /// Stop the load after this many seconds instead of at Ctrl-C.
    #[arg(long)]
    pub(crate) load_secs: Option<u64>,
}

const REGIONS: [(&str, &str); 3] = [("eu-west", "eu-west-1a"), ("us-east", "us-east-1b"), ("ap-south", "ap-south-1a")];

struct DemoNode {
    id: NodeId,
    info: NodeInfo,
    dir: PathBuf,
    node: Option<LedgerNode>,
    server: Option<tokio::task::JoinHandle<()>>,
    api: Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>,
}

/// What every demo node's wallet API trusts: one operator key with every role, and an
/// in-process session store for player tokens, which every node's session service serves and
/// whose security events go to one log.
#[derive(Clone)]
struct DemoAuth {
    key_id: String,
    secret: Vec<u8>,
    sessions: Sessions,
    log: SecurityLog,
    log_path: PathBuf,
    /// The cluster's key, shared by the nodes and written where `walletd client` can read it.
    cluster_key: ClusterKey,
    cluster_secret_hex: String,
}

impl DemoAuth {
    fn new(root: &std::path::Path) -> Result<Self, String> {
        let mut secret = vec![0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| e.to_string())?;
        let mut session_key = [0u8; 32];
        getrandom::fill(&mut session_key).map_err(|e| e.to_string())?;
        let keys = session_store::Keyring::new("demo", session_key).map_err(|_| "session key id".to_string())?;
        // Real settings: 5-minute access tokens, which the session service refreshes.
        let store = session_store::SessionStore::new(
            session_store::MemoryBackend::new(),
            keys,
            session_store::SessionConfig::default(),
            Arc::new(session_store::SystemClock),
        );
        let log_path = root.join("security-events.log");
        let (log, _) = SecurityLog::open(&log_path, "walletd demo")?;
        store.set_event_sink(log.sink());
        let (cluster_key, cluster_secret_hex) = ClusterKey::generate();
        Ok(Self {
            key_id: "demo-operator".into(),
            secret,
            sessions: Sessions::Memory(store),
            log,
            log_path,
            cluster_key,
            cluster_secret_hex,
        })
    }

    fn keys(&self) -> Vec<OperatorKey> {
        vec![OperatorKey {
            id: self.key_id.clone(),
            secret: hex::encode(&self.secret),
            roles: [Role::Game, Role::Cashier, Role::Audit, Role::Session].into_iter().collect(),
        }]
    }

    fn authenticator(&self) -> Authenticator {
        Authenticator::new(self.keys(), Some(self.sessions.clone()))
    }

    /// The session service every demo node serves.
    fn session_api(&self, draining: watch::Receiver<bool>) -> SessionApi {
        SessionApi::new(&self.sessions, Authenticator::new(self.keys(), None), Some(self.log.clone()), draining)
    }

    fn credentials(&self) -> Credentials {
        Credentials::Operator { key_id: self.key_id.clone(), secret: self.secret.clone() }
    }
}

async fn launch(
    n: &mut DemoNode,
    topo: &Topology,
    listener: Listener,
    api_listener: tokio::net::TcpListener,
    auth: &DemoAuth,
) -> Result<(), String> {
    let mut config = NodeConfig::new(n.id, n.info.clone(), &n.dir, topo.shards);
    config.cluster_name = "walletd-demo".into();
    // What `walletd start --topology` does: home regions dealt round-robin, so every region
    // leads some shards, and each node's place in every shard's succession.
    config.place(topo);
    let node =
        LedgerNode::start(config, NodeEnv::production(auth.cluster_key.clone())).await.map_err(|e| e.to_string())?;
    let serving = node.clone();
    n.server = Some(tokio::spawn(async move {
        if let Err(e) = serving.serve(listener).await {
            eprintln!("node server stopped: {e}");
        }
    }));
    let (draining_tx, draining) = watch::channel(false);
    let service = WalletService::new(node.clone(), vec![n.info.addr.clone()], auth.authenticator(), draining.clone());
    let sessions = auth.session_api(draining.clone());
    let api = tokio::spawn(async move {
        if let Err(e) = serve(service, Some(sessions), api_listener, draining).await {
            eprintln!("wallet API stopped: {e}");
        }
    });
    n.api = Some((draining_tx, api));
    n.node = Some(node);
    Ok(())
}

/// Drains the node's wallet API, then stops the node.
async fn stop(n: &mut DemoNode) {
    if let Some((draining, api)) = n.api.take() {
        draining.send_replace(true);
        let _ = api.await;
    }
    if let Some(node) = n.node.take() {
        node.shutdown().await;
    }
    if let Some(server) = n.server.take() {
        let _ = server.await;
    }
}

async fn rebind_api(addr: &str) -> Result<tokio::net::TcpListener, String> {
    for _ in 0..50 {
        if let Ok(l) = tokio::net::TcpListener::bind(addr).await {
            return Ok(l);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("could not listen on {addr}"))
}

fn step(title: &str) {
    println!("\n== {title}");
}

fn show(label: &str, shard: u32, o: &Outcome) {
    let (text, _) = render_outcome(shard, o);
    println!("  {label:<44} {}", text.replace('\n', "\n  "));
}

fn id<T>(s: &str, f: impl Fn(&str) -> Result<T, ledger_core::Rejection>) -> T {
    f(s).expect("demo ids are valid")
}

/// Runs the demo.
pub(crate) async fn run(args: DemoArgs) -> Result<(), String> {
    let tmp;
    let root = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new().prefix("walletd-demo-").tempdir().map_err(|e| e.to_string())?;
            tmp.path().to_path_buf()
        }
    };
    println!("walletd demo: 3 regions, 1 node each, {} shards, data in {}", args.shards, root.display());
    std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    let auth = DemoAuth::new(&root)?;
    let key_file = root.join("cluster.key");
    std::fs::write(&key_file, format!("{}\n", auth.cluster_secret_hex))
        .map_err(|e| format!("{}: {e}", key_file.display()))?;
    let mut nodes = Vec::new();
    for (i, (region, zone)) in REGIONS.iter().enumerate() {
        let listener = Listener::bind_tcp("127.0.0.1:0").await.map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?.to_string();
        // Bound before the node starts: the wallet API address is part of the node's identity
        // in every membership, so NOT_LEADER can name it.
        let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
        let api_addr = api_listener.local_addr().map_err(|e| e.to_string())?.to_string();
        let id = i as NodeId + 1;
        let n = DemoNode {
            id,
            info: NodeInfo { addr, region: region.to_string(), zone: zone.to_string(), api_addr },
            dir: root.join(format!("node-{id}")),
            node: None,
            server: None,
            api: None,
        };
        nodes.push((n, listener, api_listener));
    }
    // The demo's topology: one node per region, every link on loopback.
    let topo = Topology {
        shards: args.shards,
        replication: 3,
        regions: nodes
            .iter()
            .map(|(n, _, _)| RegionSpec {
                name: n.info.region.clone(),
                nodes: vec![NodeSpec {
                    id: n.id,
                    addr: n.info.addr.clone(),
                    zone: n.info.zone.clone(),
                    api: Some(n.info.api_addr.clone()),
                }],
            })
            .collect(),
        rtt_ms: [(0, 1), (0, 2), (1, 2)]
            .into_iter()
            .map(|(a, b)| (format!("{}/{}", REGIONS[a].0, REGIONS[b].0), 1))
            .collect(),
    };
    topo.validate().map_err(|e| e.to_string())?;
    let mut launched = Vec::new();
    for (mut n, listener, api_listener) in nodes {
        launch(&mut n, &topo, listener, api_listener, &auth).await?;
        println!(
            "  node {}  {:<9} {:<12} node port {}  wallet API {}",
            n.id, n.info.region, n.info.zone, n.info.addr, n.info.api_addr
        );
        launched.push(n);
    }
    let mut nodes = launched;
    nodes[0]
        .node
        .as_ref()
        .expect("running")
        .bootstrap_placed(&topo.bootstrap_plan())
        .await
        .map_err(|e| e.to_string())?;
    let addrs: Vec<String> = nodes.iter().map(|n| n.info.addr.clone()).collect();
    let client = LedgerClient::connect(addrs.clone(), ClientOptions::new(auth.cluster_key.clone()))
        .await
        .map_err(|e| e.to_string())?;
    show_leaders(&nodes, &topo).await;
    regional_players(&client, &nodes, &topo).await?;

    let eur = Currency::new("EUR").expect("EUR");
    let alice = id("alice", |s| PlayerId::new(s));
    let shard = client.shard_for(&alice).map_err(|e| e.to_string())?;
    // Transfers stay inside one shard, so alice's payee is a player who lives in hers.
    let payee = payee_in(&client, shard)?;
    let t = |s: &str| id(s, |s| TxId::new(s));
    let amount = |minor: i64| Amount::new(minor).expect("demo amounts are positive");
    let run = |cmd: Command| {
        let client = &client;
        async move { client.submit(cmd).await.map_err(|e| e.to_string()) }
    };
    let show = |label: &str, o: &Outcome| show(label, shard, o);

    step("wallets and a game round (amounts in EUR; every command carries its idempotency key)");
    println!("  alice lives in shard {shard}; so does {payee}, whom she pays below");
    show(
        "open alice EUR",
        &run(Command::OpenAccount { tx: t("open-alice"), player: alice.clone(), currency: eur }).await?,
    );
    show(
        &format!("open {payee} EUR"),
        &run(Command::OpenAccount { tx: t("open-payee"), player: payee.clone(), currency: eur }).await?,
    );
    show(
        "deposit 100.00 to alice",
        &run(Command::Deposit { tx: t("dep-1"), player: alice.clone(), currency: eur, amount: amount(10_000) }).await?,
    );
    let r1 = id("round-1", |s| RoundId::new(s));
    let bet =
        Command::Bet { tx: t("bet-1"), player: alice.clone(), round: r1.clone(), currency: eur, amount: amount(2_500) };
    show("bet 25.00 on round-1", &run(bet.clone()).await?);
    show(
        "win 40.00 on round-1",
        &run(Command::Win {
            tx: t("win-1"),
            player: alice.clone(),
            round: r1.clone(),
            currency: eur,
            amount: amount(4_000),
        })
        .await?,
    );
    show(
        &format!("transfer 5.00 to {payee}"),
        &run(Command::Transfer {
            tx: t("tr-1"),
            from: alice.clone(),
            to: payee.clone(),
            currency: eur,
            amount: amount(500),
        })
        .await?,
    );

    step("idempotency: retries return the original result; reused ids with new payloads are refused");
    show("retry bet-1 (same payload)", &run(bet).await?);
    show(
        "bet-1 again with 99.00",
        &run(Command::Bet { tx: t("bet-1"), player: alice.clone(), round: r1, currency: eur, amount: amount(9_900) })
            .await?,
    );
    let big = Command::Bet {
        tx: t("bet-big"),
        player: alice.clone(),
        round: id("round-2", |s| RoundId::new(s)),
        currency: eur,
        amount: amount(1_000_000),
    };
    show("bet 10000.00 (too much)", &run(big.clone()).await?);
    show("retry it after a deposit", &{
        run(Command::Deposit { tx: t("dep-2"), player: alice.clone(), currency: eur, amount: amount(2_000_000) })
            .await?;
        run(big).await?
    });

    step("a rollback that overtakes its bet makes the late bet fail (aggregators require this)");
    let r3 = id("round-3", |s| RoundId::new(s));
    show(
        "rollback of bet-3 (not seen yet)",
        &run(Command::Rollback { tx: t("rb-3"), player: alice.clone(), round: r3.clone(), bet: t("bet-3") }).await?,
    );
    show(
        "bet-3 arrives late",
        &run(Command::Bet { tx: t("bet-3"), player: alice.clone(), round: r3, currency: eur, amount: amount(500) })
            .await?,
    );

    step("withdrawal: reserve, then commit");
    show(
        "reserve 50.00",
        &run(Command::ReserveWithdrawal {
            tx: t("wd-1"),
            player: alice.clone(),
            currency: eur,
            amount: amount(5_000),
            timeout_ms: 60_000,
        })
        .await?,
    );
    show(
        "commit it",
        &run(Command::CommitWithdrawal { tx: t("wd-1-commit"), player: alice.clone(), hold: t("wd-1") }).await?,
    );

    step("losing a leader loses no acknowledged money");
    let leader = nodes[0].node.as_ref().expect("running").status().shard(shard).and_then(|s| s.leader);
    let leader = leader.ok_or("no leader known for alice's shard")?;
    let victim = nodes.iter_mut().find(|n| n.id == leader).expect("leader is a demo node");
    println!("  alice lives in shard {shard}; its leader is node {leader} ({}); stopping it", victim.info.region);
    stop(victim).await;
    let started = Instant::now();
    let after = run(Command::Bet {
        tx: t("bet-after-failover"),
        player: alice.clone(),
        round: id("round-4", |s| RoundId::new(s)),
        currency: eur,
        amount: amount(1_000),
    })
    .await?;
    println!("  first write acknowledged {} ms after the leader stopped", started.elapsed().as_millis());
    show("bet 10.00 on round-4", &after);
    let wallet = AccountRef::player(alice.clone(), eur);
    let view = client.balance(&wallet, None).await.map_err(|e| e.to_string())?;
    if let Some(b) = view.balance {
        println!("  alice's balance, read linearizably from the new leader: {}", eur.format(b.posted));
    }

    step("the stopped node restarts from its disk and catches up");
    let victim = nodes.iter_mut().find(|n| n.id == leader).expect("leader is a demo node");
    let listener = rebind(&victim.info.addr).await?;
    let api_listener = rebind_api(&victim.info.api_addr).await?;
    launch(victim, &topo, listener, api_listener, &auth).await?;
    wait_converged(&nodes, shard).await?;
    println!("  node {leader} is back and holds the same chain as the others");

    step("every replica re-verifies every shard's hash chain and balances");
    for n in &nodes {
        let node = n.node.as_ref().expect("running");
        for s in 0..args.shards {
            let report = node.verify(s).map_err(|e| e.to_string())?;
            let status = if report.ok() { "OK" } else { "FAILED" };
            println!(
                "  node {} shard {s}: {status:<6} {:>3} entries  head {}",
                n.id,
                report.entries,
                &report.head_hash[..16]
            );
        }
    }

    step("geo-routers: one address per region, every call sent straight to its shard's leader");
    let (routers_stop, routers_stopped) = watch::channel(false);
    let mut router_addrs = Vec::new();
    for (region, _) in REGIONS {
        let router = geo_router::Router::new(geo_router::RouterConfig {
            topology: topo.clone(),
            region: region.to_string(),
            member_token: geo_router::member_token(&auth.cluster_secret_hex)?,
            policy: geo_router::health::HealthPolicy::default(),
            in_flight_max: 20_000,
        })?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?.to_string();
        let stopped = routers_stopped.clone();
        tokio::spawn(async move {
            if let Err(e) = geo_router::serve(router, listener, stopped).await {
                eprintln!("geo-router stopped: {e}");
            }
        });
        println!("  router {region:<9} {addr}");
        router_addrs.push(addr);
    }
    println!("  (the commands below go through the eu-west router; any router takes any call)");

    step("the wallet API (gRPC, casino.wallet.v1) is served by every node and every router");
    let api_addr = router_addrs[0].clone();
    // alice's session, opened the way a casino's login front-end opens one: CreateSession on
    // casino.session.v1, signed with an operator key holding the session role.
    let channel = wallet_api::api::client::channel(&api_addr).await.map_err(|e| e.to_string())?;
    let create = wallet_api::session::pb::CreateSessionRequest {
        player_id: "alice".into(),
        device_fingerprint: "demo-device".into(),
        ip: "127.0.0.1".into(),
        auth_level: 1,
        auth_time_ms: 0,
    };
    let path = wallet_api::session::path("CreateSession");
    let tokens = SessionsClient::new(channel)
        .create_session(auth.credentials().request_at(&path, create, Duration::from_secs(10)))
        .await
        .map_err(|s| format!("CreateSession: {}", s.message()))?
        .into_inner();
    let bin = walletctl_on_path(&root)?;
    println!(
        "  operator key {} (roles game, cashier, audit, session); alice's session {} was opened through the session service (casino.session.v1 CreateSession)",
        auth.key_id, tokens.session_id
    );
    println!("  In another terminal, while the demo runs:");
    println!("  export PATH={}:$PATH", bin.display());
    println!(
        "  export WALLET_ADDR={api_addr} WALLET_KEY_ID={} WALLET_KEY_SECRET={}",
        auth.key_id,
        hex::encode(&auth.secret)
    );
    println!("  walletctl balance alice EUR");
    println!("  walletctl history alice");
    println!("  walletctl bet alice round-9 EUR 2.50");
    println!("  walletctl transfer alice {payee} EUR 1.00");
    println!("  walletctl watch alice          # follows new entries; Ctrl-C to stop");
    println!("  walletctl proof {shard} 1");
    println!("  walletctl call GetBalance '{{\"playerId\":\"alice\",\"currency\":\"EUR\"}}'");
    println!(
        "  As alice: her access token lasts {} s; a refresh gives new tokens (each refresh token works once):",
        tokens.access_expires_in_s
    );
    println!("  export WALLET_DEVICE=demo-device WALLET_REFRESH_TOKEN={}", tokens.refresh_token);
    println!("  WALLET_TOKEN={} walletctl balance alice EUR", tokens.access_token);
    println!("  eval \"$(walletctl session refresh --export)\"   # new tokens in WALLET_TOKEN / WALLET_REFRESH_TOKEN");
    println!("  walletctl balance alice EUR          # now as alice");
    println!("  walletctl session list               # where alice is logged in");
    println!(
        "  eval \"$(walletctl session step-up --export)\"   # after a second factor (operator call); needed to withdraw"
    );
    println!("  unset WALLET_TOKEN                   # back to the operator key");
    println!("  walletd security-log {}   # the hash-chained security events", auth.log_path.display());
    // Reflection is served by the nodes (a router forwards the wallet and session services only).
    println!("  grpcurl -plaintext {} list", nodes[0].info.api_addr);
    println!("  The node port, for walletd client and admin (it takes the cluster key):");
    println!("  export WALLETD_NODES={} WALLETD_CLUSTER_KEY_FILE={}", addrs.join(","), key_file.display());
    println!("  walletd client status");

    if args.load {
        crate::load::demo(&api_addr_list(&nodes), auth.credentials(), args.clients, args.load_secs).await?;
    } else if args.no_wait {
        println!("\ndemo finished; shutting down");
    } else {
        println!("\nthe cluster keeps running. Press Ctrl-C to stop");
        tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
        println!("\nstopping");
    }
    let _ = routers_stop.send(true);
    for n in &mut nodes {
        stop(n).await;
    }
    Ok(())
}

/// A player who lives in `shard`, for a transfer from alice.
fn payee_in(client: &LedgerClient, shard: u32) -> Result<PlayerId, String> {
    const NAMES: [&str; 12] = ["bob", "carl", "dora", "eddie", "fay", "gus", "hal", "ivy", "jack", "kim", "lou", "max"];
    let names = NAMES.iter().map(|n| n.to_string()).chain((2..1000).map(|i| format!("bob{i}")));
    for name in names {
        let p = PlayerId::new(name.as_str()).map_err(|e| e.to_string())?;
        if client.shard_for(&p).map_err(|e| e.to_string())? == shard {
            return Ok(p);
        }
    }
    Err(format!("no player name found in shard {shard}"))
}

/// Puts `walletctl` and `walletd` on a path the demo prints: links to this very executable,
/// which acts as `walletctl` when called by that name (so the demo's one build command serves
/// both).
fn walletctl_on_path(root: &std::path::Path) -> Result<PathBuf, String> {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("locating walletd: {e}"))?;
    for name in ["walletctl", "walletd"] {
        let link = bin.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&exe, &link).map_err(|e| format!("{}: {e}", link.display()))?;
    }
    Ok(bin)
}

fn api_addr_list(nodes: &[DemoNode]) -> Vec<String> {
    nodes.iter().map(|n| n.info.api_addr.clone()).collect()
}

/// Waits briefly for leaders to settle in their home regions, then shows where each shard is led.
async fn show_leaders(nodes: &[DemoNode], topo: &Topology) {
    step("active-active: each shard is led from its home region");
    let region_of = |id| nodes.iter().find(|n| n.id == id).map_or("?", |n| n.info.region.as_str());
    let homes = topo.homes();
    let home = |s: u32| homes[&s].as_str();
    let deadline = Instant::now() + Duration::from_secs(15);
    let leaders = loop {
        let status = nodes.iter().find_map(|n| n.node.as_ref()).map(|n| n.status());
        let leaders: Vec<Option<NodeId>> =
            (0..topo.shards).map(|s| status.as_ref().and_then(|st| st.shard(s)?.leader)).collect();
        let home_all = leaders.iter().enumerate().all(|(s, l)| l.is_some_and(|l| region_of(l) == home(s as u32)));
        if home_all || Instant::now() > deadline {
            break leaders;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for (s, l) in leaders.iter().enumerate() {
        let led = l.map_or("(electing)".to_string(), |l| format!("node {l} in {}", region_of(l)));
        println!("  shard {s}: home {:<9} led by {led}", home(s as u32));
    }
}

/// Players whose ids name a region live in a shard homed there, so their writes are led and
/// committed from their own region; an id naming a region the cluster lacks is refused.
async fn regional_players(client: &LedgerClient, nodes: &[DemoNode], topo: &Topology) -> Result<(), String> {
    step("a player id that names a region (\"eu-west:carol\") lives in a shard homed there");
    let homes = topo.homes();
    let eur = Currency::new("EUR").expect("EUR");
    let region_of = |id| nodes.iter().find(|n| n.id == id).map_or("?", |n| n.info.region.as_str());
    for (region, name) in [("eu-west", "carol"), ("us-east", "dave"), ("ap-south", "erin")] {
        let player = PlayerId::new(format!("{region}:{name}")).map_err(|e| e.to_string())?;
        let shard = client.shard_for(&player).map_err(|e| e.to_string())?;
        let open = Command::OpenAccount {
            tx: TxId::new(format!("open-{region}-{name}")).map_err(|e| e.to_string())?,
            player: player.clone(),
            currency: eur,
        };
        client.submit(open).await.map_err(|e| e.to_string())?;
        let leader = nodes.iter().find_map(|n| n.node.as_ref()?.status().shard(shard)?.leader);
        println!(
            "  {:<16} shard {shard} (home {}), led by {}",
            player.as_str(),
            homes[&shard],
            leader.map_or("(electing)".to_string(), |l| format!("node {l} in {}", region_of(l)))
        );
    }
    let nowhere = PlayerId::new("mars:zed").map_err(|e| e.to_string())?;
    let refused = client.submit(Command::OpenAccount {
        tx: TxId::new("open-mars-zed").map_err(|e| e.to_string())?,
        player: nowhere,
        currency: eur,
    });
    match refused.await {
        Err(e) => println!("  mars:zed         refused: {e}"),
        Ok(o) => return Err(format!("a player of an unknown region was accepted: {o:?}")),
    }
    Ok(())
}

async fn rebind(addr: &str) -> Result<Listener, String> {
    for _ in 0..50 {
        if let Ok(l) = Listener::bind_tcp(addr).await {
            return Ok(l);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("could not listen on {addr} again"))
}

async fn wait_converged(nodes: &[DemoNode], shard: u32) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let heads: Vec<_> = nodes.iter().filter_map(|n| n.node.as_ref()).map(|n| n.head(shard)).collect();
        if heads.windows(2).all(|w| w[0] == w[1]) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("replicas of shard {shard} did not converge"))
}
