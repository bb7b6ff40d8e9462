//! A multi-region cluster of real `walletd` processes started from a topology file: each shard
//! bootstraps with its planned voters only and is led from its home region; a player id that
//! names a region lives in a shard homed there; a stale read on a node without a replica of the
//! shard is answered by the leader instead; losing a region's only node moves its shards'
//! leadership to the surviving regions without losing an acknowledged write, and leadership
//! returns home when the node is back.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use e2e_tests::{Walletd, free_port, walletd_command};
use ledger_core::placement::Topology;
use raft_ledger::api::ShardStatus;
use tonic::Code;
use tonic::transport::Channel;
use wallet_api::api::auth::Rpc;
use wallet_api::api::client::{Credentials, connect};
use wallet_api::api::errors::reason_of;
use wallet_api::api::pb::{self, wallet_client::WalletClient};

const SHARDS: u32 = 6;
const T: Duration = Duration::from_secs(15);

/// Regions eu (nodes 1 and 4, two zones), us (node 2), ap (node 3).
fn topology_toml(raft: &BTreeMap<u64, String>) -> String {
    let node = |id: u64, zone: &str| format!("{{ id = {id}, addr = \"{}\", zone = \"{zone}\" }}", raft[&id]);
    format!(
        "shards = {SHARDS}\nreplication = 3\n[rtt_ms]\n\"eu/us\" = 10\n\"eu/ap\" = 20\n\"us/ap\" = 15\n\
         [[regions]]\nname = \"eu\"\nnodes = [{}, {}]\n\
         [[regions]]\nname = \"us\"\nnodes = [{}]\n\
         [[regions]]\nname = \"ap\"\nnodes = [{}]\n",
        node(1, "eu-a"),
        node(4, "eu-b"),
        node(2, "us-a"),
        node(3, "ap-a")
    )
}

/// Each shard as its leader reports it, from `walletd admin members --json`.
fn members(raft: &BTreeMap<u64, String>) -> BTreeMap<u32, ShardStatus> {
    let nodes: Vec<&str> = raft.values().map(String::as_str).collect();
    let out = walletd_command()
        .args(["admin", "--nodes", &nodes.join(","), "--json", "members"])
        .output()
        .expect("run walletd admin");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shards: Vec<ShardStatus> = serde_json::from_slice(&out.stdout).expect("members json");
    shards.into_iter().map(|s| (s.shard, s)).collect()
}

/// Waits until every shard is led from its home region.
fn wait_all_home(raft: &BTreeMap<u64, String>) -> BTreeMap<u32, ShardStatus> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = members(raft);
        if m.len() == SHARDS as usize
            && m.values().all(|s| s.leader_region.is_some() && s.leader_region == s.home_region)
        {
            return m;
        }
        assert!(Instant::now() < deadline, "shards not all led from home: {m:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn open(c: &mut WalletClient<Channel>, cashier: &Credentials, player: &str) -> Result<u32, tonic::Status> {
    let m = pb::OpenWalletRequest {
        idempotency_key: format!("open-{player}"),
        player_id: player.into(),
        currency: "EUR".into(),
    };
    Ok(c.open_wallet(cashier.request(Rpc::OpenWallet, m, T)).await?.into_inner().shard)
}

async fn deposit(c: &mut WalletClient<Channel>, cashier: &Credentials, player: &str, key: &str, minor: i64) {
    let m = pb::DepositRequest {
        idempotency_key: key.into(),
        player_id: player.into(),
        currency: "EUR".into(),
        amount: minor,
    };
    c.deposit(cashier.request(Rpc::Deposit, m, T)).await.unwrap_or_else(|e| panic!("deposit {key}: {e}"));
}

async fn stale_balance(c: &mut WalletClient<Channel>, cashier: &Credentials, player: &str) -> pb::GetBalanceResponse {
    let m = pb::GetBalanceRequest {
        player_id: player.into(),
        currency: "EUR".into(),
        consistency: pb::ReadConsistency::Stale as i32,
        max_staleness_ms: 3_000,
    };
    c.get_balance(cashier.request(Rpc::GetBalance, m, T)).await.expect("balance").into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t60_regions_homes_regional_players_and_a_lost_region() {
    let dir = tempfile::tempdir().unwrap();
    let raft: BTreeMap<u64, String> = (1..=4).map(|id| (id, format!("127.0.0.1:{}", free_port()))).collect();
    let api: BTreeMap<u64, String> = (1..=4).map(|id| (id, format!("127.0.0.1:{}", free_port()))).collect();
    let topo_path = dir.path().join("topology.toml");
    std::fs::write(&topo_path, topology_toml(&raft)).unwrap();
    let topo: Topology = toml::from_str(&std::fs::read_to_string(&topo_path).unwrap()).unwrap();
    let secret = hex::encode([7u8; 32]);
    let keys_path = dir.path().join("operators.toml");
    std::fs::write(
        &keys_path,
        format!("[[operator]]\nid = \"cashier\"\nsecret = \"{secret}\"\nroles = [\"cashier\"]\n"),
    )
    .unwrap();
    let cashier = Credentials::Operator { key_id: "cashier".into(), secret: hex::decode(&secret).unwrap() };
    let mut nodes: BTreeMap<u64, Walletd> = BTreeMap::new();
    for id in 1..=4u64 {
        let extra = vec![
            "--topology".to_string(),
            topo_path.display().to_string(),
            "--api-listen".into(),
            api[&id].clone(),
            "--operator-keys".into(),
            keys_path.display().to_string(),
        ];
        let dir = dir.path().join(format!("n{id}"));
        nodes.insert(id, Walletd::start_with(id, &raft[&id], &dir, SHARDS, &[], id == 1, &extra));
    }

    // Placement: every shard has exactly its planned voters, in three regions, led from home.
    let m = wait_all_home(&raft);
    for p in topo.place() {
        let s = &m[&p.shard];
        let planned: BTreeSet<u64> = p.voters.iter().copied().collect();
        assert_eq!(s.voters.iter().copied().collect::<BTreeSet<_>>(), planned, "shard {}", p.shard);
        let regions: BTreeSet<&str> = s.voters.iter().map(|v| topo.region_of(*v).unwrap()).collect();
        assert_eq!(regions.len(), 3, "shard {} spans three regions", p.shard);
        assert_eq!(s.home_region.as_deref(), Some(p.home.as_str()));
    }
    let unhosted_by_4: Vec<u32> = m.values().filter(|s| !s.voters.contains(&4)).map(|s| s.shard).collect();
    assert!(!unhosted_by_4.is_empty(), "node 4 shares eu with node 1, so it holds only some shards");

    // Players that name their region live in a shard homed there.
    let mut c4 = connect(&api[&4]).await.unwrap();
    let homes = topo.homes();
    for (region, name) in [("eu", "carol"), ("us", "dave"), ("ap", "erin")] {
        let player = format!("{region}:{name}");
        let shard = open(&mut c4, &cashier, &player).await.expect("open");
        assert_eq!(homes[&shard], region, "{player} lives in shard {shard}");
        deposit(&mut c4, &cashier, &player, &format!("dep-{name}"), 10_00).await;
    }
    // A region the cluster does not have is refused, and nothing is opened.
    let refused = open(&mut c4, &cashier, "mars:zed").await.unwrap_err();
    assert_eq!((refused.code(), reason_of(&refused).as_deref()), (Code::InvalidArgument, Some("UNKNOWN_REGION")));

    // A stale read where the node holds a replica is served there; where it holds none, the
    // leader answers (linearizable), and says so.
    for (player, region) in [("eu:carol", "eu"), ("us:dave", "us"), ("ap:erin", "ap")] {
        let r = stale_balance(&mut c4, &cashier, player).await;
        assert_eq!(r.balance.as_ref().unwrap().available, 10_00, "{player}");
        let hosted = m[&r.shard].voters.contains(&4);
        let expect = if hosted { pb::ReadConsistency::Stale } else { pb::ReadConsistency::Linearizable };
        assert_eq!(r.consistency, expect as i32, "{player} (region {region}, shard {}): {r:?}", r.shard);
        assert!(r.staleness_ms <= 3_000);
    }

    // Region us (node 2 only) is lost. Its shards elect leaders elsewhere and keep taking writes.
    let us_shards: Vec<u32> = homes.iter().filter(|(_, h)| *h == "us").map(|(s, _)| *s).collect();
    nodes.get_mut(&2).unwrap().kill();
    let lost_at = Instant::now();
    let mut c1 = connect(&api[&1]).await.unwrap();
    deposit(&mut c1, &cashier, "us:dave", "dep-dave-2", 5_00).await;
    eprintln!("us lost: first write to a us-homed shard acknowledged after {:?}", lost_at.elapsed());
    let survivors: BTreeMap<u64, String> =
        raft.iter().filter(|(id, _)| **id != 2).map(|(i, a)| (*i, a.clone())).collect();
    let during = members(&survivors);
    for s in &us_shards {
        let led = during.get(s).and_then(|st| st.leader_region.clone());
        assert!(led.as_deref().is_some_and(|r| r != "us"), "shard {s} is led from {led:?}");
    }

    // Region us returns: its shards go home again, and nothing acknowledged is missing.
    nodes.get_mut(&2).unwrap().restart();
    let m = wait_all_home(&raft);
    let r = stale_balance(&mut c1, &cashier, "us:dave").await;
    assert_eq!(r.balance.unwrap().available, 15_00, "both deposits, once each");
    // A node started without the topology would route players differently: admin refuses it.
    let stray_addr = format!("127.0.0.1:{}", free_port());
    let _stray = Walletd::start(5, &stray_addr, &dir.path().join("n5"), SHARDS, &[], false);
    let nodes_arg: Vec<&str> = raft.values().map(String::as_str).collect();
    let out = walletd_command()
        .args(["admin", "--nodes", &nodes_arg.join(","), "add-node", &stray_addr])
        .output()
        .expect("run walletd admin");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a refusal exits 2: {err}");
    assert!(err.contains("places players differently"), "{err}");
    assert_eq!(
        members(&raft).values().map(|s| s.voters.clone()).collect::<Vec<_>>(),
        m.values().map(|s| s.voters.clone()).collect::<Vec<_>>()
    );

    // Every replica holds the same verified chain.
    let client =
        raft_ledger::client::LedgerClient::connect(raft.values().cloned().collect(), e2e_tests::client_options())
            .await
            .unwrap();
    for (shard, s) in &m {
        let mut heads = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            heads.clear();
            for v in &s.voters {
                let st = client.status(&raft[v]).await.unwrap();
                let replica = st.shard(*shard).expect("a voter hosts its shard");
                heads.insert((replica.journal_len, replica.head_hash.clone()));
            }
            if heads.len() == 1 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(heads.len(), 1, "shard {shard}: replicas differ: {heads:?}");
        for v in &s.voters {
            let report = client.verify(&raft[v], *shard).await.unwrap();
            assert!(report.ok(), "node {v} shard {shard}: {report:?}");
        }
    }
}
