//! The real node code under turmoil: a 3-node shard elects a leader, replicates, survives a
//! crash of its leader (which loses whatever it had not fsynced), and the crashed node comes back
//! from its simulated disk and catches up.
//!
//! The seeded simulator with scenarios and checks after every step is issue 7; this test shows
//! that time, randomness, the network and the disk are all injected, so the same node code runs
//! unchanged inside the simulation.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use ledger_core::{AccountRef, Amount, ClusterTime, Command, Currency, Outcome, PlayerId, RoundId, TxId};
use raft_ledger::client::{ClientOptions, LedgerClient};
use raft_ledger::net::env::{Listener, Net};
use raft_ledger::node::{LedgerNode, NodeConfig, NodeEnv};
use raft_ledger::raft::{NodeId, NodeInfo, seed_thread_rng};

const PORT: u16 = 9000;
const EPOCH_MS: u64 = 1_800_000_000_000;

fn members() -> BTreeMap<NodeId, NodeInfo> {
    (1..=3)
        .map(|id| {
            let info = NodeInfo::new(format!("node{id}:{PORT}"), format!("r{id}"), format!("z{id}"));
            (id, info)
        })
        .collect()
}

async fn run_node(id: NodeId) -> turmoil::Result {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    let mut config = NodeConfig::new(id, members()[&id].clone(), "/data", 1);
    config.rtt_ms = 20;
    config.tick_interval = Duration::from_millis(100);
    let env = NodeEnv::turmoil(ClusterTime::from_millis(EPOCH_MS), key());
    let node = LedgerNode::start(config, env).await?;
    // Safe on every node and every boot: only never-initialized shards are initialized.
    node.bootstrap(&members()).await?;
    node.serve(Listener::Turmoil(listener)).await?;
    Ok(())
}

#[derive(Default)]
struct Control {
    crash: Option<NodeId>,
    crashed: bool,
    bounced: bool,
}

fn cmd_bet(i: usize) -> Command {
    Command::Bet {
        tx: TxId::new(format!("bet-{i}")).unwrap(),
        player: PlayerId::new("alice").unwrap(),
        round: RoundId::new(format!("round-{i}")).unwrap(),
        currency: Currency::new("EUR").unwrap(),
        amount: Amount::new(10).unwrap(),
    }
}

async fn wait<F: std::future::Future<Output = bool>>(mut cond: impl FnMut() -> F) {
    for _ in 0..600 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("condition not reached in simulated time");
}

#[test]
fn t10_a_three_node_shard_elects_replicates_and_survives_a_leader_crash() {
    seed_thread_rng(7);
    let mut sim = turmoil::Builder::new()
        .rng_seed(7)
        .epoch(UNIX_EPOCH + Duration::from_millis(EPOCH_MS))
        .simulation_duration(Duration::from_secs(300))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(10))
        .build();
    for id in 1..=3 {
        sim.host(format!("node{id}"), move || run_node(id));
    }
    let control = Arc::new(Mutex::new(Control::default()));
    let ctl = control.clone();
    sim.client("client", async move {
        let addrs: Vec<String> = members().values().map(|m| m.addr.clone()).collect();
        let options =
            ClientOptions { net: Net::Turmoil, deadline: Duration::from_secs(60), ..ClientOptions::new(key()) };
        let client = LedgerClient::connect(addrs.clone(), options).await?;
        let eur = Currency::new("EUR").unwrap();
        let alice = PlayerId::new("alice").unwrap();
        let open = Command::OpenAccount { tx: TxId::new("open").unwrap(), player: alice.clone(), currency: eur };
        assert!(matches!(client.submit(open).await?, Outcome::Applied(_)));
        let dep = Command::Deposit {
            tx: TxId::new("dep").unwrap(),
            player: alice.clone(),
            currency: eur,
            amount: Amount::new(1_000).unwrap(),
        };
        assert!(matches!(client.submit(dep).await?, Outcome::Applied(_)));
        for i in 0..10 {
            assert!(matches!(client.submit(cmd_bet(i)).await?, Outcome::Applied(_)));
        }

        let leader = client.status(&addrs[0]).await?.shard(0).and_then(|s| s.leader).expect("a leader was elected");
        ctl.lock().unwrap().crash = Some(leader);
        wait(|| {
            let ctl = ctl.clone();
            async move { ctl.lock().unwrap().crashed }
        })
        .await;

        // The surviving majority elects a new leader; the client finds it and keeps going.
        for i in 10..20 {
            let o = client.submit(cmd_bet(i)).await?;
            assert!(matches!(o, Outcome::Applied(_) | Outcome::Duplicate(_)), "{o:?}");
        }
        let survivor = addrs.iter().find(|a| !a.starts_with(&format!("node{leader}"))).unwrap();
        let new_leader = client.status(survivor).await?.shard(0).and_then(|s| s.leader);
        assert!(new_leader.is_some_and(|l| l != leader), "leadership moved off the crashed node: {new_leader:?}");
        eprintln!("leader node{leader} crashed; node{} leads now", new_leader.unwrap());
        let wallet = AccountRef::player(alice.clone(), eur);
        let view = client.balance(&wallet, None).await?;
        assert_eq!(view.balance.unwrap().posted, 1_000 - 20 * 10, "every acknowledged bet is there, once");

        // The crashed node restarts from what its simulated disk kept, and catches up.
        wait(|| {
            let ctl = ctl.clone();
            async move { ctl.lock().unwrap().bounced }
        })
        .await;
        wait(|| {
            let client = &client;
            let addrs = &addrs;
            async move {
                let mut heads = Vec::new();
                for a in addrs {
                    match client.status(a).await {
                        Ok(s) => match s.shard(0) {
                            Some(r) => heads.push((r.head_hash.clone(), r.journal_len)),
                            None => return false,
                        },
                        Err(_) => return false,
                    }
                }
                heads.windows(2).all(|w| w[0] == w[1]) && heads[0].1 == 22
            }
        })
        .await;
        for a in &addrs {
            let report = client.verify(a, 0).await?;
            assert!(report.ok(), "{a}: {report:?}");
        }
        Ok(())
    });

    let mut crashed: Option<(String, Duration)> = None;
    let mut bounced = false;
    loop {
        let done = sim.step().expect("simulation step");
        if done {
            break;
        }
        let request = control.lock().unwrap().crash;
        if let (None, Some(id)) = (&crashed, request) {
            let host = format!("node{id}");
            sim.crash(host.as_str());
            eprintln!("crashed {host} at {:?} of simulated time", sim.elapsed());
            crashed = Some((host, sim.elapsed()));
            control.lock().unwrap().crashed = true;
        }
        if let Some((host, at)) = &crashed
            && !bounced
            && sim.elapsed() > *at + Duration::from_secs(5)
        {
            sim.bounce(host.as_str());
            eprintln!("restarted {host} at {:?}", sim.elapsed());
            bounced = true;
            control.lock().unwrap().bounced = true;
        }
    }
    assert!(bounced, "the leader was crashed and restarted");
    eprintln!("simulation finished at {:?} of simulated time", sim.elapsed());
}

/// The simulated cluster's key.
fn key() -> raft_ledger::net::member::ClusterKey {
    raft_ledger::net::member::ClusterKey::from_secret(&[7; 32]).expect("long enough")
}
