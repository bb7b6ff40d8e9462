//! Three `walletd` processes on loopback, concurrent clients that retry, and the leader SIGKILLed
//! again and again. Afterwards:
//! - every acknowledged transaction is in the ledger exactly once, and nothing else is;
//! - balances equal an independent replay of the acknowledged transactions;
//! - every replica verifies its hash chain and balances.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e_tests::{Walletd, free_port};
use ledger_core::{
    AccountRef, Amount, Command, Currency, EntryKind, Outcome, PlayerId, Receipt, RoundId, TxId, shard_for_player,
};
use raft_ledger::client::{ClientError, ClientOptions, LedgerClient};

const SHARDS: u32 = 2;
const PLAYERS: usize = 8;
const WORKERS: usize = 6;
const OPS_PER_WORKER: usize = 48;
const KILLS: usize = 4;

fn eur() -> Currency {
    Currency::new("EUR").unwrap()
}

fn pid(i: usize) -> PlayerId {
    PlayerId::new(format!("player-{i}")).unwrap()
}

fn tx(s: String) -> TxId {
    TxId::new(s).unwrap()
}

fn amount(a: i64) -> Amount {
    Amount::new(a).unwrap()
}

/// Submits until the outcome is definite. Retrying is safe: the id is the idempotency key.
async fn resolve(client: &LedgerClient, cmd: &Command) -> Outcome {
    loop {
        match client.submit(cmd.clone()).await {
            Ok(o) => return o,
            Err(ClientError::Indeterminate(..)) => continue,
            Err(e) => panic!("{cmd:?}: {e}"),
        }
    }
}

/// What the cluster acknowledged for each transaction id: the receipt, or the rejection code.
type Acks = Arc<Mutex<Vec<(Command, Result<Receipt, String>)>>>;

fn record(acks: &Acks, cmd: &Command, outcome: &Outcome) {
    let result = match outcome {
        // A duplicate on the first definite answer means an earlier attempt applied and its
        // reply was lost; the duplicate carries that original receipt.
        Outcome::Applied(r) | Outcome::Duplicate(r) => Ok(r.clone()),
        Outcome::Rejected(x) | Outcome::AlreadyFailed(x) => Err(x.code().to_string()),
        Outcome::Conflict => panic!("{cmd:?}: ids are never reused with another payload here"),
    };
    acks.lock().unwrap().push((cmd.clone(), result));
}

async fn worker(w: usize, client: Arc<LedgerClient>, acks: Acks) {
    let mut last_bet: Option<(TxId, PlayerId, RoundId)> = None;
    let mut mine: Vec<(Command, Outcome)> = Vec::new();
    for i in 0..OPS_PER_WORKER {
        let p = pid((w + i) % PLAYERS);
        let t = |k: &str| tx(format!("w{w}-{i}-{k}"));
        let cmds: Vec<Command> = match i % 6 {
            0 | 1 => {
                let round = RoundId::new(format!("r-{w}-{i}")).unwrap();
                last_bet = Some((t("bet"), p.clone(), round.clone()));
                vec![Command::Bet { tx: t("bet"), player: p, round, currency: eur(), amount: amount(100) }]
            }
            2 => match &last_bet {
                Some((_, bp, round)) => vec![Command::Win {
                    tx: t("win"),
                    player: bp.clone(),
                    round: round.clone(),
                    currency: eur(),
                    amount: amount(150),
                }],
                None => vec![],
            },
            3 => match last_bet.take() {
                Some((bet, bp, round)) if i % 12 == 3 => {
                    vec![Command::Rollback { tx: t("rollback"), player: bp, round, bet }]
                }
                _ => vec![Command::Deposit { tx: t("dep"), player: p, currency: eur(), amount: amount(500) }],
            },
            4 => {
                let home = shard_for_player(&p, SHARDS);
                match (0..PLAYERS).map(pid).find(|q| *q != p && shard_for_player(q, SHARDS) == home) {
                    Some(to) => {
                        vec![Command::Transfer { tx: t("xfer"), from: p, to, currency: eur(), amount: amount(10) }]
                    }
                    None => vec![],
                }
            }
            _ => {
                let reserve = Command::ReserveWithdrawal {
                    tx: t("hold"),
                    player: p.clone(),
                    currency: eur(),
                    amount: amount(100),
                    timeout_ms: 600_000,
                };
                let settle = if i % 2 == 0 {
                    Command::CommitWithdrawal { tx: t("commit"), player: p, hold: t("hold") }
                } else {
                    Command::CancelWithdrawal { tx: t("cancel"), player: p, hold: t("hold") }
                };
                vec![reserve, settle]
            }
        };
        for cmd in cmds {
            let outcome = resolve(&client, &cmd).await;
            record(&acks, &cmd, &outcome);
            mine.push((cmd, outcome));
        }
        // Deliberately repeat an earlier command: it must return the original result.
        if i % 7 == 6 {
            let (cmd, first) = &mine[(i * 31 + w) % mine.len()];
            let again = resolve(&client, cmd).await;
            let expected = match first {
                Outcome::Applied(r) | Outcome::Duplicate(r) => Outcome::Duplicate(r.clone()),
                Outcome::Rejected(x) | Outcome::AlreadyFailed(x) => Outcome::AlreadyFailed(*x),
                Outcome::Conflict => unreachable!(),
            };
            assert_eq!(again, expected, "retry of {cmd:?}");
        }
    }
}

/// Posted and held balances implied by the acknowledged commands alone.
fn model(acks: &[(Command, Result<Receipt, String>)]) -> BTreeMap<(u32, AccountRef), (i128, i128)> {
    let mut bal: BTreeMap<(u32, AccountRef), (i128, i128)> = BTreeMap::new();
    let mut bets: BTreeMap<TxId, (u32, AccountRef, i128)> = BTreeMap::new();
    let mut holds: BTreeMap<TxId, (u32, AccountRef, i128)> = BTreeMap::new();
    let wallet = |p: &PlayerId| (shard_for_player(p, SHARDS).0, AccountRef::player(p.clone(), eur()));
    let mut mv = |shard: u32, from: AccountRef, to: AccountRef, a: i128| {
        bal.entry((shard, from)).or_default().0 -= a;
        bal.entry((shard, to)).or_default().0 += a;
    };
    let mut held: BTreeMap<(u32, AccountRef), i128> = BTreeMap::new();
    for (cmd, result) in acks {
        let Ok(receipt) = result else { continue };
        let a = |x: &Amount| i128::from(x.minor());
        match cmd {
            Command::OpenAccount { .. } => {}
            Command::Deposit { player, amount, .. } => {
                let (s, w) = wallet(player);
                mv(s, AccountRef::External(eur()), w, a(amount));
            }
            Command::Bet { tx, player, amount, .. } => {
                let (s, w) = wallet(player);
                mv(s, w.clone(), AccountRef::House(eur()), a(amount));
                bets.insert(tx.clone(), (s, w, a(amount)));
            }
            Command::Win { player, amount, .. } => {
                let (s, w) = wallet(player);
                mv(s, AccountRef::House(eur()), w, a(amount));
            }
            Command::Rollback { bet, .. } => {
                if receipt.seq.is_some() {
                    let (s, w, x) = bets[bet].clone();
                    mv(s, AccountRef::House(eur()), w, x);
                }
            }
            Command::Transfer { from, to, amount, .. } => {
                let (s, f) = wallet(from);
                let (_, t) = wallet(to);
                mv(s, f, t, a(amount));
            }
            Command::ReserveWithdrawal { tx, player, amount, .. } => {
                let (s, w) = wallet(player);
                *held.entry((s, w.clone())).or_default() += a(amount);
                holds.insert(tx.clone(), (s, w, a(amount)));
            }
            Command::CommitWithdrawal { hold, .. } => {
                let (s, w, x) = holds.remove(hold).expect("committed hold was reserved");
                *held.entry((s, w.clone())).or_default() -= x;
                mv(s, w, AccountRef::External(eur()), x);
            }
            Command::CancelWithdrawal { hold, .. } => {
                let (s, w, x) = holds.remove(hold).expect("cancelled hold was reserved");
                *held.entry((s, w)).or_default() -= x;
            }
            Command::Adjust { .. } => unreachable!("not used here"),
        }
    }
    for (k, h) in held {
        bal.entry(k).or_default().1 = h;
    }
    bal
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t30_sigkilled_leaders_lose_no_acknowledged_money() {
    sigkilled_leaders(&[]).await;
}

/// The same with every shard's retained state on disk and a checkpoint every 40 log entries,
/// so leaders are killed between checkpoints and restart from the last one plus the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t31_with_the_state_on_disk_sigkilled_leaders_lose_no_acknowledged_money() {
    let flags = ["--state", "disk", "--state-cache-mb", "8", "--snapshot-every", "40"];
    sigkilled_leaders(&flags.map(String::from)).await;
}

async fn sigkilled_leaders(flags: &[String]) {
    let tmp = tempfile::tempdir().unwrap();
    let addrs: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let peers: Vec<(u64, String)> = addrs.iter().enumerate().map(|(i, a)| (i as u64 + 1, a.clone())).collect();
    let nodes: Arc<Mutex<Vec<Walletd>>> = Arc::new(Mutex::new(
        peers
            .iter()
            .map(|(id, addr)| {
                let dir = tmp.path().join(format!("node-{id}"));
                Walletd::start_with(*id, addr, &dir, SHARDS, &peers, *id == 1, flags)
            })
            .collect(),
    ));
    let options = ClientOptions { deadline: Duration::from_secs(20), ..e2e_tests::client_options() };
    let client = Arc::new(LedgerClient::connect(addrs.clone(), options).await.unwrap());
    let acks: Acks = Arc::default();

    for i in 0..PLAYERS {
        let open = Command::OpenAccount { tx: tx(format!("open-{i}")), player: pid(i), currency: eur() };
        let o = resolve(&client, &open).await;
        record(&acks, &open, &o);
        let dep = Command::Deposit {
            tx: tx(format!("seed-{i}")),
            player: pid(i),
            currency: eur(),
            amount: amount(1_000_000),
        };
        let o = resolve(&client, &dep).await;
        record(&acks, &dep, &o);
    }

    let chaos = {
        let nodes = nodes.clone();
        let client = client.clone();
        let addrs = addrs.clone();
        tokio::spawn(async move {
            let mut killed = Vec::new();
            for k in 0..KILLS {
                tokio::time::sleep(Duration::from_millis(900)).await;
                let shard = (k as u32) % SHARDS;
                let mut leader = None;
                for addr in &addrs {
                    if let Ok(status) = client.status(addr).await
                        && let Some(l) = status.shard(shard).and_then(|s| s.leader)
                    {
                        leader = Some(l);
                        break;
                    }
                }
                let mut views = Vec::new();
                for addr in &addrs {
                    if let Ok(status) = client.status(addr).await
                        && let Some(st) = status.shard(shard)
                    {
                        views.push((status.node_id, st.state, st.term, st.leader));
                    }
                }
                eprintln!("before kill {k}, shard {shard} (node, role, term, leader): {views:?}");
                let Some(leader) = leader else { continue };
                let nodes = nodes.clone();
                tokio::task::spawn_blocking(move || {
                    let mut nodes = nodes.lock().unwrap();
                    let node = nodes.iter_mut().find(|n| n.id == leader).unwrap();
                    node.kill();
                    std::thread::sleep(Duration::from_millis(250));
                    node.restart();
                })
                .await
                .unwrap();
                killed.push(leader);
            }
            killed
        })
    };
    let workers: Vec<_> = (0..WORKERS).map(|w| tokio::spawn(worker(w, client.clone(), acks.clone()))).collect();
    for w in workers {
        w.await.unwrap();
    }
    let killed = chaos.await.unwrap();
    assert!(killed.len() >= 3, "the leader was killed only {} times", killed.len());
    // Each kill cost its shard an election: a restarted leader never resumes without a vote.
    let status = client.status(&addrs[1]).await.unwrap();
    for s in &status.shards {
        assert!(s.term >= 3, "shard {} never re-elected after its leader was killed: term {}", s.shard, s.term);
    }

    // Wait until every replica of every shard holds the same chain.
    let mut heads = BTreeMap::new();
    for _ in 0..400 {
        heads.clear();
        for addr in &addrs {
            if let Ok(status) = client.status(addr).await {
                for s in status.shards {
                    heads.entry(s.shard).or_insert_with(Vec::new).push((s.head_hash, s.journal_len, s.applied));
                }
            }
        }
        if heads.len() == SHARDS as usize && heads.values().all(|v| v.len() == 3 && v.windows(2).all(|w| w[0] == w[1]))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(heads.values().all(|v| v.len() == 3 && v.windows(2).all(|w| w[0] == w[1])), "replicas diverge: {heads:?}");

    let acks = acks.lock().unwrap().clone();
    let by_tx: BTreeMap<TxId, &Result<Receipt, String>> = acks.iter().map(|(c, r)| (c.tx().clone(), r)).collect();
    assert_eq!(by_tx.len(), acks.len(), "every transaction id is used once");
    for shard in 0..SHARDS {
        let chains: Vec<_> = futures_join(addrs.iter().map(|a| client.entries(a, shard, 1, 100_000)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert!(chains.windows(2).all(|w| w[0] == w[1]), "shard {shard}: replicas hold different entries");
        let mut seen: BTreeMap<&TxId, u64> = BTreeMap::new();
        for e in &chains[0] {
            assert_ne!(e.kind, EntryKind::WithdrawalExpire, "no hold lived long enough to expire");
            let ack = by_tx.get(&e.tx).unwrap_or_else(|| panic!("entry {} for unacknowledged tx {}", e.seq, e.tx));
            let receipt = ack.as_ref().unwrap_or_else(|x| panic!("entry {} for rejected tx {} ({x})", e.seq, e.tx));
            assert_eq!(receipt.seq, Some(e.seq), "tx {} acknowledged at another position", e.tx);
            *seen.entry(&e.tx).or_default() += 1;
        }
        for (cmd, result) in &acks {
            if shard_for_player(cmd.player().unwrap(), SHARDS).0 != shard {
                continue;
            }
            let expected = match result {
                Ok(r) if r.seq.is_some() => 1,
                _ => 0,
            };
            assert_eq!(seen.get(cmd.tx()).copied().unwrap_or(0), expected, "{cmd:?} -> {result:?}");
        }
        for addr in &addrs {
            let report = client.verify(addr, shard).await.unwrap();
            assert!(report.ok(), "{addr} shard {shard}: {report:?}");
        }
    }

    if flags.contains(&"disk".to_string()) {
        // The run crossed checkpoints: every replica took one and keeps its state on disk.
        for addr in &addrs {
            let status = client.status(addr).await.unwrap();
            for s in &status.shards {
                assert!(s.snapshot.is_some(), "{addr} shard {}: no checkpoint", s.shard);
            }
        }
        for id in 1..=3 {
            for s in 0..SHARDS {
                let shard = tmp.path().join(format!("node-{id}/shards/{s}"));
                assert!(shard.join("state").is_dir(), "node {id} shard {s}: no on-disk state");
                assert!(!shard.join("snapshot.bin").exists(), "node {id} shard {s}: an image was written");
            }
        }
    }

    let expected = model(&acks);
    for ((shard, account), (posted, held)) in &expected {
        let view = client.balance(account, Some(*shard)).await.unwrap();
        let b = view.balance.unwrap_or_else(|| panic!("{account} missing"));
        assert_eq!((i128::from(b.posted), i128::from(b.held)), (*posted, *held), "{account} in shard {shard}");
    }
    let applied = acks.iter().filter(|(_, r)| r.is_ok()).count();
    eprintln!(
        "audit: {} acknowledged ({} applied), leader killed {} times ({killed:?}), {} accounts match the model",
        acks.len(),
        applied,
        killed.len(),
        expected.len()
    );
    for n in nodes.lock().unwrap().iter_mut() {
        n.stop();
    }
}

async fn futures_join<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    for f in futs {
        out.push(f.await);
    }
    out
}
