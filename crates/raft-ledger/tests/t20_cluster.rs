//! In-process clusters of real nodes over real loopback sockets: failover, a full restart from
//! disk, and a wiped replica catching up by snapshot.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use ledger_core::{AccountRef, Balance, Command, Outcome, shard_for_player};
use raft_ledger::api::{LedgerError, ReadConsistency};

fn applied(o: &Outcome) -> bool {
    matches!(o, Outcome::Applied(_) | Outcome::Duplicate(_))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_leader_failover_keeps_every_acknowledged_write() {
    leader_failover(|_| {}).await;
}

/// The same with unary appends (`appends_in_flight = 1`) instead of the default ordered
/// streams: one AppendEntries call at a time per follower and shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_leader_failover_with_unary_appends() {
    leader_failover(|c| c.appends_in_flight = 1).await;
}

/// The same with node 3 refusing ordered streams, as a build from before them would (it answers
/// `Unimplemented`): leaders on nodes 1 and 2 must fall back to unary calls for it, or it never
/// catches up and the cluster does not converge. Node 3 itself sends unary calls when it leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_leader_failover_with_a_peer_that_takes_no_streams() {
    leader_failover(|c| {
        if c.node_id == 3 {
            c.appends_in_flight = 1;
        }
    })
    .await;
}

/// The same with no log entry held in memory once durable: the old leader catches up from
/// entries the new leader reads back from its segments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_leader_failover_with_the_log_read_back_from_disk() {
    leader_failover(|c| c.log_cache_bytes = 0).await;
    assert!(raft_ledger::store::entries_read_back() > 0, "the followers were sent entries read back from disk");
}

/// Writes, a stopped leader (its server must stop although peers stream to it), writes through
/// the new leader, the old one back: every acknowledged write applied once, chains verified.
async fn leader_failover(tune: fn(&mut raft_ledger::node::NodeConfig)) {
    let mut cluster = Cluster::start_with(3, 2, tune).await;
    let client = cluster.client().await;
    for (i, p) in ["alice", "bob"].iter().enumerate() {
        assert!(applied(&client.submit(open(&format!("open-{p}"), p)).await.unwrap()));
        assert!(applied(&client.submit(deposit(&format!("dep-{i}"), p, 1_000)).await.unwrap()));
    }
    let shard = shard_for_player(&player("alice"), 2).0;
    let old_leader = cluster.wait_leader(shard).await;

    // A follower refuses writes and says who leads.
    let follower = cluster.members.keys().copied().find(|id| *id != old_leader).unwrap();
    let err =
        cluster.node(follower).submit(None, bet("x", "alice", "r0", 1), Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(err, LedgerError::NotLeader { leader: Some(l), .. } if l == old_leader), "{err:?}");

    cluster.stop(old_leader).await;
    // The client finds the new leader by itself; every bet it gets an answer for is applied.
    for i in 0..20 {
        let o = client.submit(bet(&format!("bet-{i}"), "alice", &format!("r{i}"), 10)).await.unwrap();
        assert!(applied(&o), "{o:?}");
    }
    let new_leader = cluster.wait_leader(shard).await;
    assert_ne!(new_leader, old_leader);
    let view = client.balance(&AccountRef::player(player("alice"), eur()), None).await.unwrap();
    assert_eq!(view.balance, Some(Balance { posted: 800, held: 0 }));
    assert_eq!(view.consistency, ReadConsistency::Linearizable);

    cluster.restart(old_leader).await;
    let (seq, _) = cluster.wait_converged(shard).await;
    assert_eq!(seq, 22, "open + deposit + 20 bets");
    for node in cluster.running() {
        let report = node.verify(shard).unwrap();
        assert!(report.ok(), "node {}: {report:?}", node.id());
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t21_a_full_restart_from_disk_gives_the_identical_chain_head_and_balances() {
    full_restart(|_| {}).await;
}

/// The same with unary appends instead of the default ordered streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t21_a_full_restart_with_unary_appends() {
    full_restart(|c| c.appends_in_flight = 1).await;
}

/// The same with no log entry held in memory once durable: each node's replay after the restart
/// reads its log back from its segments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t21_a_full_restart_with_the_log_read_back_from_disk() {
    full_restart(|c| c.log_cache_bytes = 0).await;
    assert!(raft_ledger::store::entries_read_back() > 0, "the restarted nodes applied entries read back from disk");
}

async fn full_restart(tune: fn(&mut raft_ledger::node::NodeConfig)) {
    let mut cluster = Cluster::start_with(3, 2, tune).await;
    let client = cluster.client().await;
    let players = ["p1", "p2", "p3", "p4", "p5", "p6"];
    for p in players {
        client.submit(open(&format!("o-{p}"), p)).await.unwrap();
        client.submit(deposit(&format!("d-{p}"), p, 500)).await.unwrap();
        client.submit(bet(&format!("b-{p}"), p, "round-1", 120)).await.unwrap();
    }
    let before: Vec<_> = (0..2).map(|s| cluster.node(1).head(s).unwrap()).collect();
    for s in 0..2 {
        assert_eq!(cluster.wait_converged(s).await, before[s as usize]);
    }
    let balances_before: Vec<_> = (0..2).map(|s| cluster.node(2).balances(s).unwrap()).collect();
    drop(client);

    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
    for id in [1, 2, 3] {
        cluster.restart(id).await;
    }
    for s in 0..2 {
        cluster.wait_leader(s).await;
        assert_eq!(cluster.wait_converged(s).await, before[s as usize], "shard {s} head changed across restart");
        for node in cluster.running() {
            assert_eq!(node.balances(s).unwrap(), balances_before[s as usize], "node {} shard {s}", node.id());
            assert!(node.verify(s).unwrap().ok());
        }
    }
    // The restarted cluster keeps working, and still remembers ids from before the restart.
    let client = cluster.client().await;
    let again = client.submit(deposit("d-p1", "p1", 500)).await.unwrap();
    assert!(matches!(again, Outcome::Duplicate(_)), "{again:?}");
    assert!(applied(&client.submit(deposit("d2-p1", "p1", 1)).await.unwrap()));
    cluster.shutdown().await;
}

/// Stops a follower of shard 0, wipes its data directory, removes it from the shard and adds a
/// fresh node `new` in its place (learner, then voter). Adding the learner blocks until it has
/// caught up; with the leader's log purged, that is a snapshot install.
async fn replace_a_wiped_follower(cluster: &mut Cluster, leader: u64, new: u64) {
    let wiped = cluster.members.keys().copied().find(|id| *id != leader).unwrap();
    cluster.stop(wiped).await;
    std::fs::remove_dir_all(&cluster.members[&wiped].dir).unwrap();
    let raft = cluster.node(leader).raft(0).unwrap();
    let survivors: BTreeSet<u64> = cluster.members.keys().copied().filter(|id| *id != wiped).collect();
    raft.change_membership(survivors.clone(), false).await.unwrap();
    let info = cluster.add_member(new).await.info.clone();
    raft.add_learner(new, info, true).await.unwrap();
    let mut voters = survivors;
    voters.insert(new);
    raft.change_membership(voters, false).await.unwrap();
}

/// Snapshots every 20 entries, the log purged behind them, and sent in pieces of 1 KiB: every
/// snapshot these tests send arrives over many calls, each resuming where the last stopped.
fn small_snapshots(config: &mut raft_ledger::node::NodeConfig) {
    config.snapshot_every = 20;
    config.logs_kept_after_snapshot = 0;
    config.snapshot_piece_bytes = 1024;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t22_a_wiped_replica_rejoins_under_a_new_id_and_catches_up_by_snapshot() {
    let mut cluster = Cluster::start_with(3, 1, small_snapshots).await;
    let client = cluster.client().await;
    client.submit(open("o", "alice")).await.unwrap();
    for i in 0..60 {
        client.submit(deposit(&format!("d{i}"), "alice", 5)).await.unwrap();
    }
    let leader = cluster.wait_leader(0).await;
    wait_for(Duration::from_secs(10), || {
        let s = cluster.replica(leader, 0);
        s.purged.filter(|i| *i >= 40).map(|_| ())
    })
    .await
    .expect("the leader snapshots and purges its log");

    // A follower loses its disk. It may only come back under a new id.
    replace_a_wiped_follower(&mut cluster, leader, 4).await;

    client.submit(deposit("after", "alice", 1)).await.ok();
    let client = cluster.client().await;
    assert!(applied(&client.submit(deposit("after-2", "alice", 1)).await.unwrap()));
    let head = cluster.node(leader).head(0).unwrap();
    wait_for(Duration::from_secs(20), || (cluster.node(4).head(0) == cluster.node(leader).head(0)).then_some(()))
        .await
        .expect("the new replica converges");
    assert!(cluster.node(4).head(0).unwrap().0 >= head.0);
    let status = cluster.replica(4, 0);
    assert!(status.snapshot.is_some(), "node 4 installed a snapshot: {status:?}");
    let report = cluster.node(4).verify(0).unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(
        cluster.node(4).entries(0, 1, 1000).unwrap(),
        cluster.node(leader).entries(0, 1, 1000).unwrap(),
        "the new replica holds the whole history, not just the state"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t23_a_withdrawal_hold_expires_in_cluster_time_without_further_commands() {
    let cluster = Cluster::start(3, 1).await;
    let client = cluster.client().await;
    client.submit(open("o", "alice")).await.unwrap();
    client.submit(deposit("d", "alice", 100)).await.unwrap();
    let reserve = Command::ReserveWithdrawal {
        tx: tx("h1"),
        player: player("alice"),
        currency: eur(),
        amount: ledger_core::Amount::new(70).unwrap(),
        timeout_ms: 1_000,
    };
    client.submit(reserve).await.unwrap();
    let wallet = AccountRef::player(player("alice"), eur());
    assert_eq!(client.balance(&wallet, None).await.unwrap().balance.unwrap().held, 70);
    let mut released = false;
    for _ in 0..100 {
        if client.balance(&wallet, None).await.unwrap().balance.unwrap().held == 0 {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(released, "the hold was not released by a leader tick");
    let entries = cluster.node(1).entries(0, 1, 10).unwrap();
    assert_eq!(entries.last().unwrap().kind, ledger_core::EntryKind::WithdrawalExpire);
    cluster.shutdown().await;
}

fn newest_wal_segment(dir: &std::path::Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(dir.join("wal")).unwrap().map(|e| e.unwrap().path()).collect();
    segs.sort();
    segs.pop().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t24_damaged_files_at_restart_are_refused_clearly_or_their_torn_tail_is_cut() {
    let mut cluster = Cluster::start(3, 1).await;
    let client = cluster.client().await;
    client.submit(open("o", "alice")).await.unwrap();
    for i in 0..20 {
        client.submit(deposit(&format!("d{i}"), "alice", 3)).await.unwrap();
    }
    let leader = cluster.wait_leader(0).await;
    let victim = cluster.members.keys().copied().find(|id| *id != leader).unwrap();
    let head = cluster.wait_converged(0).await;
    cluster.stop(victim).await;
    let dir = cluster.members[&victim].dir.clone();
    let segment = newest_wal_segment(&dir);
    let original = std::fs::read(&segment).unwrap();

    // Damage in the middle, with acknowledged records after it: refuse to start, say why.
    let mut damaged = original.clone();
    damaged[original.len() / 3] ^= 0x5a;
    std::fs::write(&segment, &damaged).unwrap();
    let err = cluster.try_restart(victim).await.unwrap_err();
    let message = err.to_string();
    assert!(message.contains("corrupt") && message.contains("refuses to start"), "{message}");

    // A torn tail (a crash mid-write) is cut, and the node rejoins as if nothing happened.
    let mut torn = original.clone();
    torn.extend_from_slice(&original[..original.len().min(40)]);
    torn.truncate(torn.len() - 7);
    std::fs::write(&segment, &torn).unwrap();
    // A journal cut mid-entry past the last snapshot is simply re-applied from the log.
    let journal = dir.join("shards/0/journal.log");
    let jlen = std::fs::metadata(&journal).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&journal).unwrap().set_len(jlen - 50).unwrap();
    cluster.restart(victim).await;
    assert_eq!(cluster.wait_converged(0).await, head);
    assert_eq!(std::fs::read(&segment).unwrap()[..original.len()], original[..], "only the torn tail was cut");
    assert!(cluster.node(victim).verify(0).unwrap().ok());
    cluster.shutdown().await;
}

/// Raw gRPC access to the node API, so the test can send what no typed client can build.
mod raw {
    use bytes::{Buf, BufMut};
    use tonic::Status;
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    #[derive(Default)]
    pub(crate) struct Bytes;
    pub(crate) struct Enc;
    pub(crate) struct Dec;

    impl Codec for Bytes {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = Enc;
        type Decoder = Dec;
        fn encoder(&mut self) -> Enc {
            Enc
        }
        fn decoder(&mut self) -> Dec {
            Dec
        }
    }

    impl Encoder for Enc {
        type Item = Vec<u8>;
        type Error = Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            dst.put_slice(&item);
            Ok(())
        }
    }

    impl Decoder for Dec {
        type Item = Vec<u8>;
        type Error = Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
            Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
        }
    }

    /// Calls a node API method with the test cluster's key.
    pub(crate) async fn call(addr: &str, method: &str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
        call_as(Some(super::common::cluster_key()), addr, &format!("raftledger.v1.LedgerNode/{method}"), body).await
    }

    /// Calls `service/method` on a node's port with raw bytes, presenting `key` (or nothing).
    pub(crate) async fn call_as(
        key: Option<raft_ledger::net::member::ClusterKey>,
        addr: &str,
        method: &str,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, Status> {
        use tonic::service::Interceptor;
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let path = http::uri::PathAndQuery::from_maybe_shared(format!("/{method}")).unwrap();
        let mut request = tonic::Request::new(());
        if let Some(mut key) = key {
            request = key.call(request)?;
        }
        let (metadata, extensions, ()) = request.into_parts();
        grpc.unary(tonic::Request::from_parts(metadata, extensions, body), path, Bytes).await.map(|r| r.into_inner())
    }

    /// The wire shape of a submit request, with plain fields where the real types validate.
    #[derive(serde::Serialize)]
    pub(crate) struct Submit {
        pub(crate) shard: Option<u32>,
        pub(crate) command: Command,
        pub(crate) timeout_ms: u64,
    }

    #[derive(serde::Serialize)]
    pub(crate) enum Command {
        OpenAccount { tx: String, player: String, currency: String },
        Deposit { tx: String, player: String, currency: String, amount: u64 },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t25_bad_input_over_the_wire_is_refused_and_changes_nothing() {
    let cluster = Cluster::start(3, 1).await;
    let client = cluster.client().await;
    client.submit(open("o", "alice")).await.unwrap();
    client.submit(deposit("d", "alice", 100)).await.unwrap();
    let leader = cluster.wait_leader(0).await;
    let addr = cluster.members[&leader].info.addr.clone();
    let head = cluster.wait_converged(0).await;

    let deposit = |tx: &str, player: &str, currency: &str, amount: u64| {
        let cmd = raw::Command::Deposit { tx: tx.into(), player: player.into(), currency: currency.into(), amount };
        postcard::to_allocvec(&raw::Submit { shard: Some(0), command: cmd, timeout_ms: 1000 }).unwrap()
    };
    // The well-formed request goes through, so the refusals below are about their content.
    raw::call(&addr, "Submit", deposit("ok-1", "alice", "EUR", 1)).await.expect("a valid request is accepted");
    let head = cluster.wait_converged(0).await.0.max(head.0);

    let bad = [
        ("zero amount", deposit("bad-1", "alice", "EUR", 0)),
        ("amount beyond any balance", deposit("bad-2", "alice", "EUR", u64::MAX)),
        ("tx id of 65 bytes", deposit(&"t".repeat(65), "alice", "EUR", 5)),
        ("empty tx id", deposit("", "alice", "EUR", 5)),
        ("player id with a space", deposit("bad-3", "al ice", "EUR", 5)),
        ("unknown currency", deposit("bad-4", "alice", "XYZ", 5)),
        ("lower-case currency", deposit("bad-5", "alice", "eur", 5)),
    ];
    for (what, body) in bad {
        let status = raw::call(&addr, "Submit", body).await.expect_err(what);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{what}: {status}");
    }
    let oversized = postcard::to_allocvec(&raw::Submit {
        shard: Some(0),
        command: raw::Command::OpenAccount { tx: "x".repeat(2 << 20), player: "p".into(), currency: "EUR".into() },
        timeout_ms: 1000,
    })
    .unwrap();
    let status = raw::call(&addr, "Submit", oversized).await.expect_err("oversized");
    assert!(matches!(status.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted), "{status}");

    // Refused by validation before proposing: a transfer to oneself, and to another shard.
    let same = ledger_core::Command::Transfer {
        tx: tx("self"),
        from: player("alice"),
        to: player("alice"),
        currency: eur(),
        amount: ledger_core::Amount::new(1).unwrap(),
    };
    let err = cluster.node(leader).submit(None, same, Duration::from_secs(1)).await.unwrap_err();
    assert_eq!(err, LedgerError::Invalid(ledger_core::Rejection::SameAccount));
    // Only one shard here, so use a three-shard routing question directly.
    let cross = Cluster::start(3, 3).await;
    let (a, b) = (
        player("p0"),
        (1..100)
            .map(|i| player(&format!("p{i}")))
            .find(|p| shard_for_player(p, 3) != shard_for_player(&player("p0"), 3))
            .unwrap(),
    );
    let xfer = ledger_core::Command::Transfer {
        tx: tx("x"),
        from: a,
        to: b,
        currency: eur(),
        amount: ledger_core::Amount::new(1).unwrap(),
    };
    assert!(matches!(cross.node(1).route(None, &xfer), Err(LedgerError::WrongShard { .. })));
    cross.shutdown().await;

    assert_eq!(cluster.node(leader).head(0).unwrap().0, head, "bad input appended nothing");
    for node in cluster.running() {
        assert!(node.verify(0).unwrap().ok());
    }
    cluster.shutdown().await;
}

/// Homes dealt round-robin over the test regions: shard s lives in `region-{s % 3}`, where node
/// `s % 3` (or node 3 for region-0) sits.
fn homes(config: &mut raft_ledger::node::NodeConfig) {
    config.home_regions = (0..config.shards).map(|s| (s, format!("region-{}", s % 3))).collect();
}

fn home_node(shard: u32) -> raft_ledger::raft::NodeId {
    match shard % 3 {
        0 => 3,
        r => u64::from(r),
    }
}

async fn all_led_from_home(cluster: &Cluster) -> bool {
    common::wait_for(Duration::from_secs(30), || {
        (0..cluster.shards)
            .all(|s| cluster.running().all(|n| n.status().shard(s).is_some_and(|r| r.leader == Some(home_node(s)))))
            .then_some(())
    })
    .await
    .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t26_leaders_go_home_survive_losing_it_and_return_when_it_is_back() {
    let mut cluster = Cluster::start_with(3, 6, homes).await;
    assert!(all_led_from_home(&cluster).await, "every region leads its own shards: active-active");

    // Region 1 (node 1) is lost: its shards elect leaders in the surviving regions and keep
    // taking writes.
    cluster.stop(1).await;
    let client = cluster.client().await;
    let p = (0..).map(|i| format!("p{i}")).find(|p| shard_for_player(&player(p), 6).0 % 3 == 1).unwrap();
    assert!(applied(&client.submit(open("open-p", &p)).await.unwrap()));
    for s in [1, 4] {
        let l = cluster.wait_leader(s).await;
        assert_ne!(l, 1, "shard {s} leads from a surviving region");
    }

    // Region 1 returns: after the hysteresis, its shards go home again.
    cluster.restart(1).await;
    assert!(all_led_from_home(&cluster).await, "leaders returned home");
    // What operators see: each shard led from its home region, and the moves counted.
    let st = cluster.node(2).status();
    for s in &st.shards {
        assert!(s.home_region.is_some() && s.leader_region == s.home_region, "{s:?}");
    }
    let shard_1 = st.shard(1).expect("node 2 hosts shard 1");
    assert!(shard_1.leader_changes >= 2, "away and back: {shard_1:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t27_a_local_read_bounds_its_staleness_and_the_bound_holds() {
    let mut cluster = Cluster::start(3, 1).await;
    let client = cluster.client().await;
    assert!(applied(&client.submit(open("o", "alice")).await.unwrap()));
    let leader = cluster.wait_leader(0).await;
    let follower = cluster.members.keys().copied().find(|id| *id != leader).unwrap();
    let third = cluster.members.keys().copied().find(|id| *id != leader && *id != follower).unwrap();
    let wallet = AccountRef::player(player("alice"), eur());

    // The promise: a write acknowledged longer than `staleness` before the read began is in it,
    // however late the leader's messages reach this follower (the write may have been
    // committed on the other follower's answer alone). Reads right after the write, and after
    // pauses of one and seven heartbeats (idle, the bound is one to three heartbeats: a leader
    // vouches for an answer once a later heartbeat is acknowledged).
    let mut checked = 0;
    for i in 1..=30i64 {
        assert!(applied(&client.submit(deposit(&format!("d{i}"), "alice", 1)).await.unwrap()));
        let acked = tokio::time::Instant::now();
        match i % 3 {
            0 => tokio::time::sleep(Duration::from_millis(700)).await,
            1 => tokio::time::sleep(Duration::from_millis(100)).await,
            _ => {}
        }
        let read_at = tokio::time::Instant::now();
        let view = cluster.node(follower).balance(Some(0), &wallet, ReadConsistency::Local).await.unwrap();
        let staleness = Duration::from_millis(view.staleness_ms.expect("a follower that hears its leader bounds it"));
        assert!(staleness < Duration::from_secs(1), "heartbeats keep it fresh: {staleness:?}");
        if read_at.duration_since(acked) > staleness {
            assert_eq!(view.balance.unwrap().posted, i, "deposit {i} acked before the bound, yet missing");
            checked += 1;
        }
    }
    assert!(checked >= 5, "reads after seven heartbeats are old enough to test the promise: {checked}");
    let on_leader = cluster.node(leader).balance(Some(0), &wallet, ReadConsistency::Local).await.unwrap();
    assert!(on_leader.staleness_ms.is_some_and(|s| s < 1_000), "{on_leader:?}");

    // Without a leader, nothing refreshes a follower's bound: it grows until a leader vouches
    // for it again. With two of three nodes down no leader can be elected.
    cluster.stop(leader).await;
    cluster.stop(third).await;
    let grew = wait_for(Duration::from_secs(5), || {
        let s = cluster.node(follower).staleness(0)?;
        (s >= Duration::from_millis(1_500)).then_some(s)
    })
    .await;
    assert!(grew.is_some(), "a follower cut off from its leader reports growing staleness");
    cluster.restart(third).await;
    assert!(applied(&client.submit(deposit("after", "alice", 1)).await.unwrap()));
    let fresh = wait_for(Duration::from_secs(5), || {
        cluster.node(follower).staleness(0).filter(|s| *s < Duration::from_millis(500))
    })
    .await;
    assert!(fresh.is_some(), "fresh again under the new leader");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t28_the_node_port_refuses_callers_without_the_cluster_key() {
    let cluster = Cluster::start(3, 1).await;
    let client = cluster.client().await;
    client.submit(open("o", "alice")).await.unwrap();
    let leader = cluster.wait_leader(0).await;
    let addr = cluster.members[&leader].info.addr.clone();
    let head = cluster.wait_converged(0).await;
    let deposit = postcard::to_allocvec(&raw::Submit {
        shard: Some(0),
        command: raw::Command::Deposit {
            tx: "steal".into(),
            player: "alice".into(),
            currency: "EUR".into(),
            amount: 1_000_000,
        },
        timeout_ms: 1000,
    })
    .unwrap();
    let (other, _) = raft_ledger::net::member::ClusterKey::generate();
    // Money, membership, reads and the Raft transport itself: no key, or another cluster's.
    let calls = [
        ("raftledger.v1.LedgerNode/Submit", deposit.clone()),
        ("raftledger.v1.LedgerNode/Status", postcard::to_allocvec(&()).unwrap()),
        ("raftledger.v1.LedgerNode/ChangeMembership", vec![0, 1, 2]),
        ("raftledger.v1.RaftTransport/Vote", vec![0, 1, 2]),
        ("raftledger.v1.RaftTransport/Append", vec![0, 1, 2]),
    ];
    for (method, body) in calls {
        for key in [None, Some(other.clone())] {
            let refused = raw::call_as(key.clone(), &addr, method, body.clone()).await.expect_err(method);
            assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{method} with {key:?}: {refused}");
            assert!(refused.message().contains("members of its cluster"), "{refused}");
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(cluster.wait_converged(0).await, head, "nothing was applied");
    // The cluster's own key is accepted, so the refusals above were about the key alone.
    raw::call(&addr, "Submit", deposit).await.expect("with the key the same call is served");
    cluster.shutdown().await;
}

fn state_on_disk(config: &mut raft_ledger::node::NodeConfig) {
    small_snapshots(config);
    config.state = raft_ledger::node::StateStorage::Disk { cache_bytes: 8 << 20 };
}

/// The generations of a shard's on-disk state in a node's data directory.
fn state_generations(dir: &std::path::Path, shard: u32) -> Vec<String> {
    let root = dir.join("shards").join(shard.to_string()).join("state");
    let mut names: Vec<String> = std::fs::read_dir(root)
        .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t29_with_the_state_on_disk_nodes_checkpoint_restart_from_it_and_a_new_replica_catches_up() {
    let mut cluster = Cluster::start_with(3, 1, state_on_disk).await;
    let client = cluster.client().await;
    client.submit(open("o", "alice")).await.unwrap();
    for i in 0..60 {
        client.submit(deposit(&format!("d{i}"), "alice", 5)).await.unwrap();
        client.submit(bet(&format!("b{i}"), "alice", &format!("r{i}"), 1)).await.unwrap();
    }
    let leader = cluster.wait_leader(0).await;
    wait_for(Duration::from_secs(10), || cluster.replica(leader, 0).purged.filter(|i| *i >= 60).map(|_| ()))
        .await
        .expect("the leader checkpoints and purges its log");
    // Written after the last checkpoint: a restart finds them only by replaying the log.
    let late = ["late-1", "late-2", "late-3"];
    for t in late {
        assert!(applied(&client.submit(deposit(t, "alice", 1)).await.unwrap()));
    }
    let before = cluster.wait_converged(0).await;
    let balances = cluster.node(leader).balances(0).unwrap();
    drop(client);
    for id in [1, 2, 3] {
        let dir = &cluster.members[&id].dir;
        assert_eq!(state_generations(dir, 0), ["0"], "node {id}: the state is on disk");
        assert!(!dir.join("shards/0/snapshot.bin").exists(), "node {id}: no image is written");
    }

    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
    for id in [1, 2, 3] {
        cluster.restart(id).await;
    }
    cluster.wait_leader(0).await;
    assert_eq!(cluster.wait_converged(0).await, before, "the head changed across the restart");
    for node in cluster.running() {
        assert_eq!(node.balances(0).unwrap(), balances, "node {}", node.id());
        assert!(node.verify(0).unwrap().ok());
        for t in ["d0", "b0", "d59", "late-1", "late-3"] {
            let (_, recall) = node.recall(0, &tx(t)).unwrap();
            assert!(recall.is_some(), "node {} forgot {t} across the restart", node.id());
        }
    }
    let client = cluster.client().await;
    let again = client.submit(deposit("d0", "alice", 5)).await.unwrap();
    assert!(matches!(again, Outcome::Duplicate(_)), "{again:?}");
    let again = client.submit(deposit("late-2", "alice", 1)).await.unwrap();
    assert!(matches!(again, Outcome::Duplicate(_)), "{again:?}");

    // A replica that lost its disk comes back under a new id and is sent a checkpoint.
    let leader = cluster.wait_leader(0).await;
    let purged = cluster.replica(leader, 0).purged.unwrap_or(0);
    for i in 0..30 {
        client.submit(deposit(&format!("e{i}"), "alice", 1)).await.unwrap();
    }
    wait_for(Duration::from_secs(10), || cluster.replica(leader, 0).purged.filter(|i| *i > purged).map(|_| ()))
        .await
        .expect("the leader checkpoints again");
    replace_a_wiped_follower(&mut cluster, leader, 4).await;
    assert!(applied(&client.submit(deposit("after", "alice", 1)).await.unwrap()));
    wait_for(Duration::from_secs(20), || (cluster.node(4).head(0) == cluster.node(leader).head(0)).then_some(()))
        .await
        .expect("the new replica converges");
    assert!(cluster.replica(4, 0).snapshot.is_some(), "node 4 installed a snapshot");
    assert_eq!(state_generations(&cluster.members[&4].dir, 0), ["1"], "installed into a new generation");
    assert!(cluster.node(4).verify(0).unwrap().ok());
    assert_eq!(cluster.node(4).balances(0).unwrap(), cluster.node(leader).balances(0).unwrap());
    for t in ["d0", "b59", "late-1", "e0", "e29"] {
        let (_, recall) = cluster.node(4).recall(0, &tx(t)).unwrap();
        assert!(recall.is_some(), "the new replica does not remember {t}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t30_a_node_that_kept_its_state_in_memory_moves_it_onto_disk_and_back_is_refused() {
    let mut cluster = Cluster::start_with(3, 1, small_snapshots).await;
    let client = cluster.client().await;
    client.submit(open("o", "alice")).await.unwrap();
    for i in 0..40 {
        client.submit(deposit(&format!("d{i}"), "alice", 5)).await.unwrap();
    }
    let leader = cluster.wait_leader(0).await;
    wait_for(Duration::from_secs(10), || cluster.replica(leader, 0).purged.filter(|i| *i >= 20).map(|_| ()))
        .await
        .expect("a snapshot in memory");
    let before = cluster.wait_converged(0).await;
    drop(client);
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
    cluster.tune = state_on_disk;
    for id in [1, 2, 3] {
        cluster.restart(id).await;
    }
    cluster.wait_leader(0).await;
    assert_eq!(cluster.wait_converged(0).await, before);
    for node in cluster.running() {
        assert!(node.verify(0).unwrap().ok());
        let (_, recall) = node.recall(0, &tx("d0")).unwrap();
        assert!(recall.is_some(), "node {} forgot d0 moving onto disk", node.id());
    }
    for id in [1, 2, 3] {
        assert!(!cluster.members[&id].dir.join("shards/0/snapshot.bin").exists(), "the image is retired");
    }
    // Back to memory would start from nothing: refused, with a reason.
    cluster.stop(1).await;
    cluster.tune = small_snapshots;
    let err = cluster.try_restart(1).await.unwrap_err().to_string();
    assert!(err.contains("kept on disk"), "{err}");
    cluster.shutdown().await;
}

/// With the retained state on disk, a checkpoint also comes once enough commands have applied,
/// however few log entries carried them: the state's writes wait in memory until one. Here
/// snapshots by entry count never come, so only the command count can bring one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t31_with_the_state_on_disk_a_checkpoint_comes_after_enough_commands() {
    let mut cluster = Cluster::start_with(3, 1, |config| {
        config.state = raft_ledger::node::StateStorage::Disk { cache_bytes: 8 << 20 };
        config.snapshot_every = 1_000_000;
        config.logs_kept_after_snapshot = 0;
        config.checkpoint_every_commands = 40;
        config.tick_interval = Duration::from_millis(50);
    })
    .await;
    let client = cluster.client().await;
    client.submit(open("o", "alice")).await.unwrap();
    for i in 0..25 {
        client.submit(deposit(&format!("d{i}"), "alice", 5)).await.unwrap();
    }
    let leader = cluster.wait_leader(0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cluster.replica(leader, 0).snapshot, None, "26 commands: under the count, no checkpoint yet");
    for i in 0..25 {
        client.submit(deposit(&format!("e{i}"), "alice", 5)).await.unwrap();
    }
    for id in [1, 2, 3] {
        wait_for(Duration::from_secs(10), || cluster.replica(id, 0).snapshot.filter(|i| *i >= 40).map(|_| ()))
            .await
            .unwrap_or_else(|| panic!("node {id} checkpoints after 40 commands: {:?}", cluster.replica(id, 0)));
    }
    cluster.stop(leader).await;
    cluster.restart(leader).await;
    let head = cluster.wait_converged(0).await;
    for node in cluster.running() {
        assert!(node.verify(0).unwrap().ok());
        assert_eq!(node.head(0).unwrap(), head);
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t32_a_verification_while_commands_keep_committing_still_matches_the_live_ledger() {
    let cluster = Cluster::start(1, 1).await;
    let node = cluster.node(1).clone();
    cluster.wait_leader(0).await;
    node.submit_batch(0, vec![open("o", "alice")], Duration::from_secs(10)).await.unwrap();
    // Several of verification's chunks (4,096 entries) of history before it starts.
    for b in 0..12 {
        let batch = (0..1000).map(|i| deposit(&format!("d{b}-{i}"), "alice", 1)).collect();
        node.submit_batch(0, batch, Duration::from_secs(30)).await.unwrap();
    }
    let before = node.head(0).unwrap();
    let writer = {
        let node = node.clone();
        tokio::spawn(async move {
            for b in 0.. {
                let batch = (0..100).map(|i| deposit(&format!("w{b}-{i}"), "alice", 1)).collect();
                if node.submit_batch(0, batch, Duration::from_secs(30)).await.is_err() {
                    break;
                }
            }
        })
    };
    // Verify a few times while the writer appends: each must see one point of the chain, its
    // replayed balances equal to the live ones there.
    for _ in 0..3 {
        let node = node.clone();
        let report = tokio::task::spawn_blocking(move || node.verify(0).unwrap()).await.unwrap();
        assert!(report.ok(), "{report:?}");
        assert!(report.entries >= before.0, "verified {} of at least {}", report.entries, before.0);
    }
    writer.abort();
    cluster.shutdown().await;
}
