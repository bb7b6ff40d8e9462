//! The geo-router in front of real `walletd` processes: bets flow through two routers while
//! faults hit the cluster. Every bet is retried with its own key until acknowledged; afterwards
//! each one is in the ledger exactly once, balances add up, no call failed with a code other
//! than the retryable ones, and the routers' tables name the leaders the cluster reports.
//!
//! - t80, on loopback: a shard leader SIGKILLed, then another frozen with SIGSTOP (a gray
//!   failure: it keeps its sockets and answers nothing), then a whole region killed.
//! - t81, with one node on a host of its own (a network namespace; root and iptables only,
//!   skipped with a message otherwise): that node cut off (an iptables DROP blackhole), its TCP
//!   connections reset (iptables REJECT with tcp-reset, and `ss -K`), and its link flapping.

// Amounts are written as euros_cents: 100_00 is 100.00 EUR.
#![allow(clippy::inconsistent_digit_grouping)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use e2e_tests::router::{GeoRouter, Layout, Netns, RouterCluster};
use tonic::Code;
use wallet_api::api::auth::Rpc;
use wallet_api::api::client::{Credentials, connect};
use wallet_api::api::pb;

const SHARDS: u32 = 3;
const T: Duration = Duration::from_secs(5);
const PLAYERS: usize = 6;
/// Each player's deposit: enough for a bet of 1.00 every few ms for minutes, however slow the machine.
const DEPOSIT: i64 = 1_000_000_00;

/// Bets from one task per player, alternating between routers, each retried with its key.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(String, u64, Vec<String>)>>,
    players: Vec<String>,
}

impl Load {
    async fn start(ops: &Credentials, routers: &[&GeoRouter]) -> Self {
        let players: Vec<String> = (0..PLAYERS).map(|i| format!("{}:p{i}", ["eu", "us", "ap"][i % 3])).collect();
        let mut c = connect(&routers[0].addr).await.unwrap();
        for p in &players {
            let open = pb::OpenWalletRequest {
                idempotency_key: format!("open-{p}"),
                player_id: p.clone(),
                currency: "EUR".into(),
            };
            c.open_wallet(ops.request(Rpc::OpenWallet, open, T)).await.expect("open through the router");
            let dep = pb::DepositRequest {
                idempotency_key: format!("dep-{p}"),
                player_id: p.clone(),
                currency: "EUR".into(),
                amount: DEPOSIT,
            };
            c.deposit(ops.request(Rpc::Deposit, dep, T)).await.expect("deposit through the router");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let addrs: Vec<String> = routers.iter().map(|r| r.addr.clone()).collect();
        let mut tasks = Vec::new();
        for (i, p) in players.iter().cloned().enumerate() {
            let (stop, ops, addrs) = (stop.clone(), ops.clone(), addrs.clone());
            tasks.push(tokio::spawn(async move {
                let mut bets = 0u64;
                let mut bad = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("bet-{p}-{bets}");
                    let started = Instant::now();
                    loop {
                        let router = &addrs[(i + bets as usize) % addrs.len()];
                        let Ok(mut c) = connect(router).await else { continue };
                        let bet = pb::PlaceBetRequest {
                            idempotency_key: key.clone(),
                            player_id: p.clone(),
                            currency: "EUR".into(),
                            amount: 1_00,
                            round_id: format!("r-{bets}"),
                        };
                        match c.place_bet(ops.request(Rpc::PlaceBet, bet, T)).await {
                            Ok(_) => break,
                            Err(e) if matches!(e.code(), Code::Unavailable | Code::DeadlineExceeded) => {}
                            Err(e) => {
                                bad.push(format!("{key}: {:?} {}", e.code(), e.message()));
                                break;
                            }
                        }
                        assert!(started.elapsed() < Duration::from_secs(30), "bet {key} not acknowledged within 30 s");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    bets += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (p, bets, bad)
            }));
        }
        Self { stop, tasks, players }
    }

    /// Stops the load and checks exactly-once through `router`: each player's balance is the
    /// deposit minus one euro per acknowledged bet, and the ledger holds exactly that many bet
    /// entries for them, under distinct keys.
    async fn finish_and_audit(self, ops: &Credentials, router: &GeoRouter) {
        self.stop.store(true, Ordering::Relaxed);
        let mut expected: BTreeMap<String, u64> = BTreeMap::new();
        for t in self.tasks {
            let (p, bets, bad) = t.await.unwrap();
            assert!(bad.is_empty(), "calls failed with a wrong answer: {bad:?}");
            assert!(bets > 10, "{p} made progress: {bets} bets");
            expected.insert(p, bets);
        }
        assert_eq!(expected.len(), self.players.len());
        let mut c = connect(&router.addr).await.unwrap();
        for (p, bets) in &expected {
            let get = pb::GetBalanceRequest { player_id: p.clone(), currency: "EUR".into(), ..Default::default() };
            let b = c.get_balance(ops.request(Rpc::GetBalance, get, T)).await.expect("balance").into_inner();
            assert_eq!(b.balance.unwrap().available, DEPOSIT - *bets as i64 * 1_00, "{p}: {bets} bets");
            let mut seen = std::collections::BTreeSet::new();
            let mut from = 1;
            loop {
                let list = pb::ListEntriesRequest {
                    player_id: p.clone(),
                    from_seq: from,
                    page_size: 1000,
                    ..Default::default()
                };
                let page = c.list_entries(ops.request(Rpc::ListEntries, list, T)).await.expect("list").into_inner();
                for e in &page.entries {
                    if e.kind == pb::EntryKind::Bet as i32 {
                        assert!(seen.insert(e.tx_id.clone()), "{} twice", e.tx_id);
                    }
                }
                if page.next_seq > page.head_seq {
                    break;
                }
                from = page.next_seq;
            }
            assert_eq!(seen.len() as u64, *bets, "{p}: every acknowledged bet once, nothing else");
        }
    }
}

/// Waits (blocking) until `cond` holds, or fails with `what`.
fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    tokio::task::block_in_place(|| {
        while !cond() {
            assert!(started.elapsed() < within, "{what}: not within {within:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    started.elapsed()
}

/// Waits until both routers name, for `shard`, a leader other than `old` that the cluster
/// reports; returns it.
fn wait_new_leader(cl: &RouterCluster, routers: &[&GeoRouter], shard: u32, old: u64) -> u64 {
    let mut found = 0;
    wait_until("the routers follow the shard to a new leader", Duration::from_secs(30), || {
        match cl.members().get(&shard).and_then(|s| s.leader).filter(|l| *l != old) {
            Some(l) if routers.iter().all(|r| r.leader(shard) == Some(l)) => {
                found = l;
                true
            }
            _ => false,
        }
    });
    found
}

const LOOPBACK: Layout = &[("eu", &[(1, "eu-a"), (4, "eu-b")]), ("us", &[(2, "us-a")]), ("ap", &[(3, "ap-a")])];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t80_routers_follow_leaders_through_a_kill_a_freeze_and_a_region_loss() {
    let mut cl = RouterCluster::start(LOOPBACK, SHARDS, 10);
    let ops = cl.ops.clone();
    let eu = GeoRouter::start(&cl.topology, "eu");
    let us = GeoRouter::start(&cl.topology, "us");
    let routers = [&eu, &us];
    let leaders = tokio::task::block_in_place(|| cl.wait_settled(&routers, Duration::from_secs(60)));
    // The status names the cluster's internals: another cluster's key does not read it.
    let other_key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(other_key.path(), hex::encode([3u8; 32])).unwrap();
    let refused = std::process::Command::new(e2e_tests::geo_router_bin())
        .args(["status", "--router", &eu.addr, "--cluster-key-file", &other_key.path().display().to_string()])
        .output()
        .unwrap();
    assert!(!refused.status.success(), "status without the cluster key must be refused");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("cluster key"), "{refused:?}");
    let load = Load::start(&ops, &routers).await;

    // SIGKILL the leader of shard 0: the routers move to the new leader.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = leaders[&0];
    cl.nodes.get_mut(&victim).unwrap().kill();
    let t0 = Instant::now();
    let next = wait_new_leader(&cl, &routers, 0, victim);
    eprintln!("SIGKILL of node {victim}: routers on node {next} after {:?}", t0.elapsed());
    // One fault, one route change: each router moved shard 0 to a new leader exactly once.
    let since_ms = t0.elapsed().as_millis() as u64;
    for r in routers {
        let status = r.status();
        let moves = status["failovers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["shard"] == 0 && !f["to"].is_null() && f["ago_ms"].as_u64().unwrap() <= since_ms)
            .count();
        assert_eq!(moves, 1, "router {} moved shard 0 {moves} times: {}", r.region, status["failovers"]);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    cl.nodes.get_mut(&victim).unwrap().restart();

    // SIGSTOP the leader of shard 1 for 4 s: the routers take it out of rotation and follow
    // the new leader; after SIGCONT it comes back into rotation.
    let leaders = tokio::task::block_in_place(|| cl.wait_settled(&routers, Duration::from_secs(60)));
    let frozen = leaders[&1];
    cl.nodes[&frozen].signal("-STOP");
    let t0 = Instant::now();
    let next = wait_new_leader(&cl, &routers, 1, frozen);
    eprintln!("SIGSTOP of node {frozen}: routers on node {next} after {:?}", t0.elapsed());
    for r in routers {
        assert_eq!(r.in_rotation(frozen), Some(false), "router {} still routes to the frozen node", r.region);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    cl.nodes[&frozen].signal("-CONT");
    let back = wait_until("the thawed node returns to rotation", Duration::from_secs(15), || {
        routers.iter().all(|r| r.in_rotation(frozen) == Some(true))
    });
    eprintln!("SIGCONT of node {frozen}: back in rotation after {back:?}");

    // Region eu (nodes 1 and 4) is lost: every shard keeps a quorum in us and ap, and the
    // routers follow the shards eu led. The eu router itself stays up and routes elsewhere.
    let leaders = tokio::task::block_in_place(|| cl.wait_settled(&routers, Duration::from_secs(60)));
    for id in [1, 4] {
        cl.nodes.get_mut(&id).unwrap().kill();
    }
    let t0 = Instant::now();
    for (shard, leader) in &leaders {
        if [1, 4].contains(leader) {
            let next = wait_new_leader(&cl, &routers, *shard, *leader);
            eprintln!("region eu lost: shard {shard} routed to node {next} after {:?}", t0.elapsed());
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for id in [1, 4] {
        cl.nodes.get_mut(&id).unwrap().restart();
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    load.finish_and_audit(&ops, &us).await;
    assert!(!eu.status()["failovers"].as_array().unwrap().is_empty(), "the router records its route changes");
}

const NETNS: Layout = &[("eu", &[(1, "eu-a")]), ("us", &[(2, "us-a")]), ("ap", &[(3, "ap-a")])];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t81_routers_survive_a_blackhole_resets_and_a_flapping_link() {
    let tag = (std::process::id() % 4000) as u16 + 1;
    let ns = match Netns::create(tag) {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("SKIPPED t81: it needs root, a network namespace and iptables ({e})");
            return;
        }
    };
    // Nodes 1 and 2 here, on this side of the link; node 3 (region ap) behind it.
    let placed: BTreeMap<u64, (String, Option<String>)> = [
        (1, (ns.host_ip.clone(), None)),
        (2, (ns.host_ip.clone(), None)),
        (3, (ns.ns_ip.clone(), Some(ns.name.clone()))),
    ]
    .into_iter()
    .collect();
    let cl = RouterCluster::start_on(NETNS, SHARDS, 10, &placed);
    let ops = cl.ops.clone();
    let eu = GeoRouter::start(&cl.topology, "eu");
    let us = GeoRouter::start(&cl.topology, "us");
    let routers = [&eu, &us];
    let load = Load::start(&ops, &routers).await;
    // Every shard led from home, so node 3 leads region ap's shard when its link is cut.
    let leaders = tokio::task::block_in_place(|| cl.wait_home(&routers, Duration::from_secs(60)));
    assert!(leaders.values().any(|l| *l == 3), "node 3 leads a shard: {leaders:?}");

    // A blackhole: iptables drops every packet to and from node 3; nothing is refused.
    let led_by_3: Vec<u32> = leaders.iter().filter(|(_, l)| **l == 3).map(|(s, _)| *s).collect();
    ns.cut();
    let t0 = Instant::now();
    wait_until("the routers take the cut-off node out of rotation", Duration::from_secs(5), || {
        routers.iter().all(|r| r.in_rotation(3) == Some(false))
    });
    eprintln!("blackhole: node 3 out of rotation after {:?}", t0.elapsed());
    for shard in &led_by_3 {
        let next = wait_new_leader(&cl, &routers, *shard, 3);
        eprintln!("blackhole: shard {shard} routed to node {next} after {:?}", t0.elapsed());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    ns.heal();
    let back = wait_until("the healed node returns to rotation", Duration::from_secs(20), || {
        routers.iter().all(|r| r.in_rotation(3) == Some(true))
    });
    eprintln!("blackhole healed: node 3 back in rotation after {back:?}");

    // TCP resets: every connection to node 3 is reset (and new ones refused for 200 ms), five
    // times while bets flow.
    for _ in 0..5 {
        tokio::task::block_in_place(|| ns.reset_connections(Duration::from_millis(200)));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // A flapping link: down and up every 300 ms for 4 s. The routers take node 3 out once and
    // do not bring it back while the link flaps (SERVING never holds for the rise time).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut returns = 0;
    let mut was_in = true;
    let flap_end = Instant::now() + Duration::from_secs(4);
    let mut down = false;
    while Instant::now() < flap_end {
        ns.link(down);
        down = !down;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now_in = eu.in_rotation(3) == Some(true);
        if now_in && !was_in {
            returns += 1;
        }
        was_in = now_in;
    }
    ns.link(true);
    assert!(returns <= 1, "node 3 came back into rotation {returns} times while its link flapped");
    wait_until("node 3 returns to rotation after the flapping", Duration::from_secs(20), || {
        routers.iter().all(|r| r.in_rotation(3) == Some(true))
    });

    tokio::time::sleep(Duration::from_secs(1)).await;
    load.finish_and_audit(&ops, &eu).await;
}
