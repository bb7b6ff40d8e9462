//! The geo-router's benchmarks, on real processes (four `walletd` nodes in three regions,
//! three shards, a router per region):
//!
//! - **failover**: for each fault (the SIGKILL of a shard leader, a SIGSTOP of one, the loss of
//!   a whole region), `--trials` times: writers keep one bet in flight per shard through a
//!   router outside the faulted region; the RTO of each affected shard is the time from the
//!   fault to the first bet acknowledged whose successful attempt started after the fault.
//!   Run with the cluster's timing set for `--rtt-ms` (50 by default; 1 for LAN timing).
//! - **throughput**: closed-loop bets from `--clients` clients through the router, against
//!   calling a random node (which forwards) and calling each shard's leader directly. With
//!   `--pin`, the nodes run on CPU 0 and the routers and the load on CPU 1, so the router has
//!   a core the nodes do not share (as deployed), for every path alike. With `--batch N`, a last
//!   run sends `PlaceBets` calls of N bets each through the router.
//!
//! `cargo bench --workspace --bench router -- [failover|throughput] [--trials 20] [--rtt-ms 50]
//! [--clients 64] [--secs 8] [--rounds 1] [--pin] [--batch 100]`

// Floats here are rates, durations and percentiles for the report, never money.
#![allow(clippy::float_arithmetic)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e_tests::pin;
use e2e_tests::router::{GeoRouter, Layout, RouterCluster};
use hdrhistogram::Histogram;
use tonic::Code;
use tonic::transport::Channel;
use wallet_api::api::auth::Rpc;
use wallet_api::api::client::{Credentials, connect};
use wallet_api::api::pb::{self, wallet_client::WalletClient};

const SHARDS: u32 = 3;
const LAYOUT: Layout = &[("eu", &[(1, "eu-a"), (4, "eu-b")]), ("us", &[(2, "us-a")]), ("ap", &[(3, "ap-a")])];
const REGIONS: [&str; 3] = ["eu", "us", "ap"];
/// A trial whose shards have not all recovered by then counts as failed.
const RTO_MAX: Duration = Duration::from_secs(10);

struct Args {
    what: String,
    trials: usize,
    rtt_ms: u64,
    clients: usize,
    secs: u64,
    /// Nodes on CPU 0; the routers and the load on CPU 1 (a router on cores of its own, as
    /// deployed, instead of sharing the nodes' cores).
    pin: bool,
    /// Rounds of the alternating paths in a throughput run.
    rounds: usize,
    /// Bets per `PlaceBets` call in a last throughput run through the router (0: none).
    batch: usize,
}

fn args() -> Args {
    let mut a =
        Args { what: "all".into(), trials: 20, rtt_ms: 50, clients: 64, secs: 8, pin: false, rounds: 1, batch: 0 };
    let mut it = std::env::args().skip(1).filter(|s| s != "--bench");
    while let Some(arg) = it.next() {
        let mut num = || it.next().and_then(|v| v.parse::<u64>().ok()).expect("a number");
        match arg.as_str() {
            "--trials" => a.trials = num() as usize,
            "--rtt-ms" => a.rtt_ms = num(),
            "--clients" => a.clients = num() as usize,
            "--secs" => a.secs = num(),
            "--pin" => a.pin = true,
            "--rounds" => a.rounds = num() as usize,
            "--batch" => a.batch = num() as usize,
            "failover" | "throughput" | "all" => a.what = arg,
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn bet(player: &str, key: String) -> pb::PlaceBetRequest {
    pb::PlaceBetRequest {
        idempotency_key: key,
        player_id: player.into(),
        round_id: "r".into(),
        currency: "EUR".into(),
        amount: 1,
    }
}

async fn open_and_fund(c: &mut WalletClient<Channel>, ops: &Credentials, player: &str) {
    let t = Duration::from_secs(10);
    let open = pb::OpenWalletRequest {
        idempotency_key: format!("open-{player}"),
        player_id: player.into(),
        currency: "EUR".into(),
    };
    c.open_wallet(ops.request(Rpc::OpenWallet, open, t)).await.expect("open");
    let dep = pb::DepositRequest {
        idempotency_key: format!("dep-{player}"),
        player_id: player.into(),
        currency: "EUR".into(),
        amount: 1_000_000_000,
    };
    c.deposit(ops.request(Rpc::Deposit, dep, t)).await.expect("deposit");
}

/// Acknowledged bets per shard: when the successful attempt started, and when it was acked.
type Acks = Arc<Mutex<BTreeMap<u32, Vec<(Instant, Instant)>>>>;

#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill,
    Stop,
    Region,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn failover(a: &Args) {
    let mut cl = RouterCluster::start(LAYOUT, SHARDS, a.rtt_ms);
    let routers: Vec<GeoRouter> = REGIONS.iter().map(|r| GeoRouter::start(&cl.topology, r)).collect();
    let refs: Vec<&GeoRouter> = routers.iter().collect();
    tokio::task::block_in_place(|| cl.wait_home(&refs, Duration::from_secs(120)));
    let homes =
        cl.members().into_iter().map(|(s, st)| (s, st.home_region.unwrap_or_default())).collect::<BTreeMap<_, _>>();
    // One writer per shard: the player named for the shard's home region lives in it.
    let via = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let acks: Acks = Arc::default();
    let addrs: Vec<String> = routers.iter().map(|r| r.addr.clone()).collect();
    let mut writers = Vec::new();
    for (shard, home) in &homes {
        let player = format!("{home}:writer");
        let mut c = connect(&addrs[0]).await.unwrap();
        open_and_fund(&mut c, &cl.ops, &player).await;
        let (via, stop, acks, addrs, ops, shard) =
            (via.clone(), stop.clone(), acks.clone(), addrs.clone(), cl.ops.clone(), *shard);
        writers.push(tokio::spawn(async move {
            let mut clients: Vec<WalletClient<Channel>> = Vec::new();
            for a in &addrs {
                clients.push(connect(a).await.unwrap());
            }
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = format!("w{shard}-{n}");
                loop {
                    let started = Instant::now();
                    let c = &mut clients[via.load(Ordering::Relaxed)];
                    let r = c
                        .place_bet(ops.request(Rpc::PlaceBet, bet(&player, key.clone()), Duration::from_millis(500)))
                        .await;
                    match r {
                        Ok(_) => {
                            acks.lock().unwrap().entry(shard).or_default().push((started, Instant::now()));
                            break;
                        }
                        Err(e)
                            if matches!(
                                e.code(),
                                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
                            ) =>
                        {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err(e) => panic!("bet {key}: {:?} {}", e.code(), e.message()),
                    }
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
            }
        }));
    }
    let mut results: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut failed: BTreeMap<&str, usize> = BTreeMap::new();
    for fault in [Fault::Kill, Fault::Stop, Fault::Region] {
        for trial in 0..a.trials {
            let leaders = tokio::task::block_in_place(|| cl.wait_home(&refs, Duration::from_secs(120)));
            // The victim: the leader of a shard that rotates with the trial, or its region.
            let shard = (trial as u32) % SHARDS;
            let leader = leaders[&shard];
            let region = cl.region[&leader].clone();
            let victims: Vec<u64> = match fault {
                Fault::Region => cl.region.iter().filter(|(_, r)| **r == region).map(|(id, _)| *id).collect(),
                _ => vec![leader],
            };
            let affected: Vec<u32> = leaders.iter().filter(|(_, l)| victims.contains(l)).map(|(s, _)| *s).collect();
            // Measure through a router in another region (a lost region's router is lost too).
            let measuring = REGIONS.iter().position(|r| *r != region).expect("three regions");
            via.store(measuring, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(300)).await;
            for v in &victims {
                match fault {
                    Fault::Stop => cl.nodes[v].signal("-STOP"),
                    _ => cl.nodes.get_mut(v).unwrap().kill(),
                }
            }
            // The fault is in place once the signal is delivered (`kill -STOP` is a process
            // of its own and takes milliseconds to run): the clock starts now.
            let t0 = Instant::now();
            let mut rto: BTreeMap<u32, Duration> = BTreeMap::new();
            while rto.len() < affected.len() && t0.elapsed() < RTO_MAX {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let acks = acks.lock().unwrap();
                for s in &affected {
                    if let Some((_, at)) = acks.get(s).and_then(|v| v.iter().find(|(started, _)| *started >= t0)) {
                        rto.entry(*s).or_insert(*at - t0);
                    }
                }
            }
            let name = match fault {
                Fault::Kill => "leader SIGKILL",
                Fault::Stop => "leader SIGSTOP",
                Fault::Region => "region loss",
            };
            if rto.len() < affected.len() {
                *failed.entry(name).or_default() += 1;
            }
            let worst = rto.values().max().copied().unwrap_or(RTO_MAX);
            eprintln!("{name} trial {trial}: node(s) {victims:?}, shards {affected:?}, RTO {:?}", rto);
            results.entry(name).or_default().extend(rto.values().map(|d| d.as_millis() as u64));
            let _ = worst;
            for v in &victims {
                match fault {
                    Fault::Stop => cl.nodes[v].signal("-CONT"),
                    _ => cl.nodes.get_mut(v).unwrap().restart(),
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    println!(
        "\nfailover through the geo-router: cluster timing for {} ms RTT, {} trials per fault",
        a.rtt_ms, a.trials
    );
    println!(
        "{:<16} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7}",
        "fault", "shards", "p50 ms", "p99 ms", "max ms", "min ms", "failed"
    );
    for (name, mut v) in results {
        v.sort_unstable();
        println!(
            "{name:<16} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7}",
            v.len(),
            percentile(&v, 50.0),
            percentile(&v, 99.0),
            v.last().copied().unwrap_or(0),
            v.first().copied().unwrap_or(0),
            failed.get(name).copied().unwrap_or(0)
        );
    }
}

/// Where a client sends its bets.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    Router,
    RandomNode,
    Leader,
    /// `PlaceBets` of this many bets through the router.
    RouterBatch(usize),
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Router => "router",
            Path::RandomNode => "random node",
            Path::Leader => "leader",
            Path::RouterBatch(_) => "router, batches",
        }
    }
}

async fn throughput(a: &Args) {
    let cl = RouterCluster::start(LAYOUT, SHARDS, 1);
    let routers: Vec<GeoRouter> = REGIONS.iter().map(|r| GeoRouter::start(&cl.topology, r)).collect();
    let refs: Vec<&GeoRouter> = routers.iter().collect();
    let leaders = tokio::task::block_in_place(|| cl.wait_home(&refs, Duration::from_secs(120)));
    if a.pin {
        for n in cl.nodes.values() {
            pin(n.pid().expect("running"), "0");
        }
        for r in &routers {
            pin(r.pid(), "1");
        }
        pin(std::process::id(), "1");
    }
    let mut setup = connect(&routers[0].addr).await.unwrap();
    let players: Vec<String> = (0..a.clients).map(|i| format!("{}:p{i}", REGIONS[i % 3])).collect();
    for p in &players {
        open_and_fund(&mut setup, &cl.ops, p).await;
    }
    // Each player's shard, from where the router put its wallet (the balance read says).
    let mut shard_of = BTreeMap::new();
    for p in &players {
        let get = pb::GetBalanceRequest { player_id: p.clone(), currency: "EUR".into(), ..Default::default() };
        let r = setup.get_balance(cl.ops.request(Rpc::GetBalance, get, Duration::from_secs(5))).await.unwrap();
        shard_of.insert(p.clone(), r.into_inner().shard);
    }
    let node_addrs: Vec<String> = cl.api.values().cloned().collect();
    let mut node_clients = Vec::new();
    for addr in &node_addrs {
        node_clients.push(connect(addr).await.unwrap());
    }
    let router_client = connect(&routers[0].addr).await.unwrap();
    println!(
        "\nbets through the geo-router against a random node and the leader: 4 nodes, 3 shards, {} s per run{}",
        a.secs,
        if a.pin { "; nodes on CPU 0, routers and load on CPU 1" } else { "" }
    );
    println!(
        "{:<14} {:>8} {:>10} {:>8} {:>8} {:>9} {:>7}",
        "path", "clients", "ops/s", "p50 ms", "p99 ms", "p999 ms", "errors"
    );
    // Rounds alternate the paths so drift shows; the summary compares medians.
    let mut rates: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let order = [Path::Leader, Path::Router, Path::RandomNode, Path::Router, Path::Leader];
    let batch = (a.batch > 0).then_some(Path::RouterBatch(a.batch));
    for path in (0..a.rounds).flat_map(|_| order).chain(batch) {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (i, p) in players.iter().cloned().enumerate() {
            let leader_idx = cl.api.keys().position(|id| *id == leaders[&shard_of[&p]]).unwrap();
            let (stop, ops) = (stop.clone(), cl.ops.clone());
            let (mut nodes, mut router) = (node_clients.clone(), router_client.clone());
            tasks.push(tokio::spawn(async move {
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                let (mut n, mut errors, mut bets) = (0u64, 0u64, 0u64);
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ i as u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    if let Path::RouterBatch(size) = path {
                        let items = (0..size).map(|k| bet(&p, format!("batch-{i}-{n}-{k}-{rng}"))).collect();
                        let req =
                            ops.request(Rpc::PlaceBets, pb::PlaceBetsRequest { bets: items }, Duration::from_secs(5));
                        let started = Instant::now();
                        match router.place_bets(req).await {
                            Ok(r) => {
                                let ok = r.get_ref().succeeded() as u64;
                                bets += ok;
                                errors += size as u64 - ok;
                                h.record(started.elapsed().as_micros() as u64).unwrap();
                            }
                            Err(_) => errors += size as u64,
                        }
                        continue;
                    }
                    let req = ops.request(
                        Rpc::PlaceBet,
                        bet(&p, format!("{path:?}-{i}-{n}-{}", rng)),
                        Duration::from_secs(5),
                    );
                    let started = Instant::now();
                    let r = match path {
                        Path::Router => router.place_bet(req).await,
                        Path::RouterBatch(_) => unreachable!("batches are sent above"),
                        Path::Leader => nodes[leader_idx].place_bet(req).await,
                        Path::RandomNode => {
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            let k = (rng % nodes.len() as u64) as usize;
                            nodes[k].place_bet(req).await
                        }
                    };
                    match r {
                        Ok(_) => {
                            bets += 1;
                            h.record(started.elapsed().as_micros() as u64).unwrap();
                        }
                        Err(_) => errors += 1,
                    }
                }
                (h, errors, bets)
            }));
        }
        let began = Instant::now();
        tokio::time::sleep(Duration::from_secs(a.secs)).await;
        stop.store(true, Ordering::Relaxed);
        let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        let (mut errors, mut bets) = (0, 0);
        for t in tasks {
            let (h, e, b) = t.await.unwrap();
            all.add(h).unwrap();
            errors += e;
            bets += b;
        }
        let secs = began.elapsed().as_secs_f64();
        // Rates are bets per second; a batch run's latency is per call.
        rates.entry(path.name()).or_default().push(bets as f64 / secs);
        let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{:<14} {:>8} {:>10.0} {:>8.2} {:>8.2} {:>9.2} {:>7}",
            format!("{path:?}"),
            a.clients,
            bets as f64 / secs,
            ms(0.5),
            ms(0.99),
            ms(0.999),
            errors
        );
    }
    let median = |path: Path| {
        let mut v = rates.get(path.name()).cloned().unwrap_or_default();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let leader = median(Path::Leader).max(1.0);
    println!(
        "medians: leader {:.0}/s, router {:.0}/s ({:.0}% of leader), random node {:.0}/s ({:.0}%)",
        leader,
        median(Path::Router),
        100.0 * median(Path::Router) / leader,
        median(Path::RandomNode),
        100.0 * median(Path::RandomNode) / leader
    );
    if let Some(b) = batch {
        println!("router, PlaceBets of {}: {:.0} bets/s", a.batch, median(b));
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    if a.what == "all" || a.what == "throughput" {
        throughput(&a).await;
    }
    if a.what == "all" || a.what == "failover" {
        failover(&a).await;
    }
}
