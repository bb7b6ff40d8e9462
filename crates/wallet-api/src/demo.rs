//! `walletd demo`: a three-region cluster on this machine, with embedded storage, that shows
//! what the ledger does and then keeps serving until Ctrl-C.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use raft_ledger::client::{ClientOptions, LedgerClient};
use raft_ledger::net::env::Listener;
use raft_ledger::node::{LedgerNode, NodeConfig, NodeEnv};
use raft_ledger::raft::{NodeId, NodeInfo};
use raft_ledger::{AccountRef, Amount, Command, Currency, Outcome, PlayerId, RoundId, TxId, shard_for_player};

use crate::cli::render_outcome;

/// Options of `walletd demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the cluster's data here instead of a temporary directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Number of shards.
    #[arg(long, default_value_t = 4)]
    pub shards: u32,
    /// Exit after the walkthrough instead of serving until Ctrl-C.
    #[arg(long)]
    pub no_wait: bool,
}

const REGIONS: [(&str, &str); 3] = [("eu-west", "eu-west-1a"), ("us-east", "us-east-1b"), ("ap-south", "ap-south-1a")];

struct DemoNode {
    id: NodeId,
    info: NodeInfo,
    dir: PathBuf,
    node: Option<LedgerNode>,
    server: Option<tokio::task::JoinHandle<()>>,
}

async fn launch(n: &mut DemoNode, shards: u32, listener: Listener) -> Result<(), String> {
    let mut config = NodeConfig::new(n.id, n.info.clone(), &n.dir, shards);
    config.cluster_name = "walletd-demo".into();
    let node = LedgerNode::start(config, NodeEnv::production()).await.map_err(|e| e.to_string())?;
    let serving = node.clone();
    n.server = Some(tokio::spawn(async move {
        if let Err(e) = serving.serve(listener).await {
            eprintln!("node server stopped: {e}");
        }
    }));
    n.node = Some(node);
    Ok(())
}

fn step(title: &str) {
    println!("\n== {title}");
}

fn show(label: &str, o: &Outcome) {
    let (text, _) = render_outcome(o);
    println!("  {label:<44} {}", text.replace('\n', "\n  "));
}

fn id<T>(s: &str, f: impl Fn(&str) -> Result<T, raft_ledger::Rejection>) -> T {
    f(s).expect("demo ids are valid")
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> Result<(), String> {
    let tmp;
    let root = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new().prefix("walletd-demo-").tempdir().map_err(|e| e.to_string())?;
            tmp.path().to_path_buf()
        }
    };
    println!("walletd demo: 3 regions, 1 node each, {} shards, data in {}", args.shards, root.display());
    let mut nodes = Vec::new();
    for (i, (region, zone)) in REGIONS.iter().enumerate() {
        let listener = Listener::bind_tcp("127.0.0.1:0").await.map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?.to_string();
        let id = i as NodeId + 1;
        let mut n = DemoNode {
            id,
            info: NodeInfo { addr, region: region.to_string(), zone: zone.to_string() },
            dir: root.join(format!("node-{id}")),
            node: None,
            server: None,
        };
        launch(&mut n, args.shards, listener).await?;
        println!("  node {id}  {:<9} {:<12} listening on {}", region, zone, n.info.addr);
        nodes.push(n);
    }
    let members: BTreeMap<NodeId, NodeInfo> = nodes.iter().map(|n| (n.id, n.info.clone())).collect();
    nodes[0].node.as_ref().expect("running").bootstrap(&members).await.map_err(|e| e.to_string())?;
    let addrs: Vec<String> = nodes.iter().map(|n| n.info.addr.clone()).collect();
    let client = LedgerClient::connect(addrs.clone(), ClientOptions::default()).await.map_err(|e| e.to_string())?;

    let eur = Currency::new("EUR").expect("EUR");
    let alice = id("alice", |s| PlayerId::new(s));
    let bob = id("bob", |s| PlayerId::new(s));
    let t = |s: &str| id(s, |s| TxId::new(s));
    let amount = |minor: i64| Amount::new(minor).expect("demo amounts are positive");
    let run = |cmd: Command| {
        let client = &client;
        async move { client.submit(cmd).await.map_err(|e| e.to_string()) }
    };

    step("wallets and a game round (amounts in cents; every command carries its idempotency key)");
    show(
        "open alice EUR",
        &run(Command::OpenAccount { tx: t("open-alice"), player: alice.clone(), currency: eur }).await?,
    );
    show("open bob EUR", &run(Command::OpenAccount { tx: t("open-bob"), player: bob.clone(), currency: eur }).await?);
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
    let shard = shard_for_player(&alice, args.shards).0;
    let leader = nodes[0].node.as_ref().expect("running").status().shards[shard as usize].leader;
    let leader = leader.ok_or("no leader known for alice's shard")?;
    let victim = nodes.iter_mut().find(|n| n.id == leader).expect("leader is a demo node");
    println!("  alice lives in shard {shard}; its leader is node {leader} ({}); stopping it", victim.info.region);
    if let Some(node) = victim.node.take() {
        node.shutdown().await;
    }
    if let Some(server) = victim.server.take() {
        let _ = server.await;
    }
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
    let listener = rebind(&victim_addr(&nodes, leader)).await?;
    let victim = nodes.iter_mut().find(|n| n.id == leader).expect("leader is a demo node");
    launch(victim, args.shards, listener).await?;
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

    if args.no_wait {
        println!("\ndemo finished; shutting down");
    } else {
        println!("\nthe cluster keeps running. Try, in another terminal:");
        println!("  walletd client --nodes {} balance --player alice --currency EUR", addrs.join(","));
        println!("  walletd client --nodes {} status", addrs[0]);
        println!("  walletd client --nodes {} entries --shard {shard}", addrs[0]);
        println!("press Ctrl-C to stop");
        tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
        println!("\nstopping");
    }
    for n in &mut nodes {
        if let Some(node) = n.node.take() {
            node.shutdown().await;
        }
        if let Some(server) = n.server.take() {
            let _ = server.await;
        }
    }
    Ok(())
}

fn victim_addr(nodes: &[DemoNode], id: NodeId) -> String {
    nodes.iter().find(|n| n.id == id).map(|n| n.info.addr.clone()).unwrap_or_default()
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
