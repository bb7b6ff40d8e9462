//! Replica changes with `walletd admin` on real processes while clients keep writing: add a
//! node, remove one, replace a SIGKILLed and wiped node under a new id, move one shard's
//! replica. Afterwards every acknowledged deposit is in the ledger exactly once, every final
//! replica holds the same verified chain, and a node claiming a member's id from another
//! address is refused.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use e2e_tests::{Walletd, free_port, walletd_command};
use ledger_core::{AccountRef, Amount, Command, Currency, Outcome, PlayerId, TxId};
use raft_ledger::client::{ClientError, ClientOptions, LedgerClient};

const SHARDS: u32 = 2;
const PLAYERS: usize = 6;

fn eur() -> Currency {
    Currency::new("EUR").unwrap()
}

fn pid(i: usize) -> PlayerId {
    PlayerId::new(format!("member-player-{i}")).unwrap()
}

/// `walletd admin ...` against `nodes`; returns (exit code, stdout, stderr).
fn admin(nodes: &[String], args: &[&str]) -> (i32, String, String) {
    let out = walletd_command()
        .args(["admin", "--nodes", &nodes.join(","), "--timeout-secs", "60"])
        .args(args)
        .output()
        .expect("run walletd admin");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

fn admin_ok(nodes: &[String], args: &[&str]) -> String {
    let (code, out, err) = admin(nodes, args);
    assert_eq!(code, 0, "walletd admin {args:?} failed:\n{out}\n{err}");
    out
}

/// Each shard's voters as its leader reports them.
fn voters(nodes: &[String]) -> BTreeMap<u32, Vec<u64>> {
    let out = admin_ok(nodes, &["--json", "members"]);
    let shards: Vec<raft_ledger::api::ShardStatus> = serde_json::from_str(out.trim()).expect("members json");
    shards.into_iter().map(|s| (s.shard, s.voters)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t50_add_remove_replace_and_move_replicas_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let addrs: BTreeMap<u64, String> = (1..=7).map(|id| (id, format!("127.0.0.1:{}", free_port()))).collect();
    let peers: Vec<(u64, String)> = (1..=3).map(|id| (id, addrs[&id].clone())).collect();
    let mut nodes: BTreeMap<u64, Walletd> = BTreeMap::new();
    for id in 1..=3 {
        nodes.insert(id, Walletd::start(id, &addrs[&id], &dir.path().join(format!("n{id}")), SHARDS, &peers, true));
    }
    let all: Vec<String> = addrs.values().cloned().collect();
    let options = ClientOptions { deadline: Duration::from_secs(30), ..e2e_tests::client_options() };
    let client = Arc::new(LedgerClient::connect(all[..6].to_vec(), options).await.unwrap());
    for i in 0..PLAYERS {
        let open =
            Command::OpenAccount { tx: TxId::new(format!("open-{i}")).unwrap(), player: pid(i), currency: eur() };
        assert!(matches!(client.submit(open).await.unwrap(), Outcome::Applied(_)));
    }

    // Load: deposits of 1..=9 cents round-robin over the players until told to stop. Every
    // acknowledgement is recorded; an indeterminate one is retried with the same id until
    // definite, so at the end each deposit is known applied or not.
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..3usize {
        let (client, stop) = (client.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut acked: BTreeMap<usize, i64> = BTreeMap::new();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let p = (w + n) % PLAYERS;
                let amount = (n % 9 + 1) as i64;
                let cmd = Command::Deposit {
                    tx: TxId::new(format!("dep-{w}-{n}")).unwrap(),
                    player: pid(p),
                    currency: eur(),
                    amount: Amount::new(amount).unwrap(),
                };
                let outcome = loop {
                    match client.submit(cmd.clone()).await {
                        Ok(o) => break o,
                        Err(ClientError::Indeterminate(..)) => continue,
                        Err(e) => panic!("{cmd:?}: {e}"),
                    }
                };
                assert!(matches!(outcome, Outcome::Applied(_) | Outcome::Duplicate(_)), "{outcome:?}");
                *acked.entry(p).or_default() += amount;
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Add node 4 to every shard: learner, caught up, voter.
    let dir4 = dir.path().join("n4");
    nodes.insert(4, Walletd::start(4, &addrs[&4], &dir4, SHARDS, &[], false));
    admin_ok(&all, &["add-node", &addrs[&4]]);
    assert!(voters(&all).values().all(|v| v.contains(&4)), "node 4 votes everywhere");

    // Remove node 1 everywhere, then stop it.
    admin_ok(&all, &["remove-node", "1"]);
    assert!(voters(&all).values().all(|v| !v.contains(&1) && v.len() == 3));
    nodes.get_mut(&1).unwrap().stop();
    // Removing it again is refused, not reported as done.
    let (code, _, err) = admin(&all, &["remove-node", "1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a member"), "{err}");

    // Node 2 dies and loses its disk; node 5 replaces it.
    let dead = nodes.get_mut(&2).unwrap();
    dead.kill();
    std::fs::remove_dir_all(&dead.dir).unwrap();
    nodes.insert(5, Walletd::start(5, &addrs[&5], &dir.path().join("n5"), SHARDS, &[], false));
    admin_ok(&all, &["replace-node", "2", &addrs[&5]]);
    let v = voters(&all);
    assert!(v.values().all(|v| *v == vec![3, 4, 5]), "{v:?}");

    // Move shard 0's replica from node 3 to node 6.
    nodes.insert(6, Walletd::start(6, &addrs[&6], &dir.path().join("n6"), SHARDS, &[], false));
    admin_ok(&all, &["move-replica", "0", "3", &addrs[&6]]);
    let v = voters(&all);
    assert_eq!(v[&0], vec![4, 5, 6]);
    assert_eq!(v[&1], vec![3, 4, 5]);

    // A node claiming member 3's id from another address is refused, and changes nothing.
    let mut impostor = Walletd::start(3, &addrs[&7], &dir.path().join("n7"), SHARDS, &[], false);
    let (code, _, err) = admin(&all, &["add-node", &addrs[&7], "--shards", "1"]);
    assert_eq!(code, 2, "a refused change exits 2: {err}");
    assert!(err.contains("needs a new id"), "{err}");
    impostor.kill();
    assert_eq!(voters(&all), v);

    stop.store(true, Ordering::Relaxed);
    let mut expected: BTreeMap<usize, i64> = BTreeMap::new();
    for w in workers {
        for (p, a) in w.await.unwrap() {
            *expected.entry(p).or_default() += a;
        }
    }
    assert!(expected.values().sum::<i64>() > 0, "the load made progress");
    for (p, want) in &expected {
        let view = client.balance(&AccountRef::player(pid(*p), eur()), None).await.unwrap();
        assert_eq!(view.balance.unwrap().posted, *want, "player {p}: every acknowledged deposit, once");
    }

    // Every final replica holds the same verified chain.
    for (shard, members) in &v {
        let mut heads = Vec::new();
        for id in members {
            let addr = &addrs[id];
            let head = wait_applied(&client, addr, *shard, &v, &addrs).await;
            let report = client.verify(addr, *shard).await.unwrap();
            assert!(report.ok(), "node {id} shard {shard}: {report:?}");
            heads.push(head);
        }
        assert!(heads.windows(2).all(|w| w[0] == w[1]), "shard {shard}: {heads:?}");
    }
}

/// The replica's (journal length, head hash) once it has applied everything its shard's leader
/// has committed.
async fn wait_applied(
    client: &LedgerClient,
    addr: &str,
    shard: u32,
    voters: &BTreeMap<u32, Vec<u64>>,
    addrs: &BTreeMap<u64, String>,
) -> (u64, String) {
    let leader_addrs: Vec<&String> = voters[&shard].iter().map(|id| &addrs[id]).collect();
    for _ in 0..200 {
        let mut committed = 0;
        for a in &leader_addrs {
            if let Ok(st) = client.status(a).await
                && let Some(s) =
                    st.shards.iter().find(|s| s.shard == shard && s.state == raft_ledger::api::ReplicaRole::Leader)
            {
                committed = s.committed.unwrap_or(0);
            }
        }
        let st = client.status(addr).await.unwrap();
        let s = st.shards.iter().find(|s| s.shard == shard).expect("replica hosted");
        if committed > 0 && s.applied.unwrap_or(0) >= committed {
            return (s.journal_len, s.head_hash.clone());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{addr} did not catch up on shard {shard}");
}
