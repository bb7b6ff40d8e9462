//! One run of a scenario: start the cluster, fund the players, offer the workload through the
//! routers while the method's faults strike and heal, run the rollbacks (always: also after a
//! failure or Ctrl-C), wait for the cluster to heal, then measure (RTO per shard and fault,
//! RPO, availability, latency) and check the ledger against the history.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use raft_ledger::client::{ClientOptions, LedgerClient};
use raft_ledger::net::member::ClusterKey;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use tonic::Code;
use tonic::transport::Channel;
use wallet_api::api::auth::Rpc;
use wallet_api::api::client::{Credentials, connect};
use wallet_api::api::pb;
use wallet_api::api::pb::wallet_client::WalletClient;

use crate::checker::{self, Observed, Op, Replica, SeenEntry, Told, Verdict};
use crate::cluster::{Cluster, Paths};
use crate::proxy::{Dir, FaultProxy, Faults, Selector};
use crate::scenario::{Fault, Scenario, Target};

/// Each player's funding, in minor units: enough that no bet is ever refused for funds.
const FUNDING: i64 = 1_000_000_000;
/// How long after the workload ends unresolved operations keep being retried.
const RESOLVE_S: u64 = 30;
/// Pause between attempts of one operation.
const RETRY_PAUSE_MS: u64 = 50;

/// One attempt, for the timeline.
#[derive(Clone, Debug, Serialize)]
pub struct Attempt {
    /// The operation's shard.
    pub shard: u32,
    /// Start and end, ms since the workload began.
    pub start_ms: f64,
    /// End.
    pub end_ms: f64,
    /// `None` when acknowledged; else the gRPC code's name.
    pub error: Option<String>,
}

/// One fault as it happened.
#[derive(Clone, Debug, Serialize)]
pub struct FaultRecord {
    /// Its kind.
    pub kind: String,
    /// What it hit, for people.
    pub target: String,
    /// When it struck and healed, ms since the workload began.
    pub at_ms: f64,
    /// When it healed.
    pub healed_ms: Option<f64>,
    /// Per shard: ms from the fault to the first acknowledged write that started after it
    /// (`None`: none before the run ended).
    pub rto_ms: BTreeMap<u32, Option<f64>>,
    /// Something went wrong applying it.
    pub error: Option<String>,
    /// What the runner saw when it healed the fault (a node that had stopped by itself).
    pub note: Option<String>,
}

impl FaultRecord {
    /// The fault's RTO: the slowest shard's.
    pub fn worst_rto(&self) -> Option<f64> {
        self.rto_ms.values().try_fold(0.0f64, |m, v| v.map(|v| m.max(v)))
    }
}

/// Figures over a window of the run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Window {
    /// Name: before, during, after.
    pub name: String,
    /// Window bounds, ms since the workload began.
    pub from_ms: f64,
    /// End.
    pub to_ms: f64,
    /// Attempts in the window.
    pub attempts: u64,
    /// Failed attempts, as a percentage.
    pub error_percent: f64,
    /// Acknowledged per second.
    pub acked_per_s: f64,
    /// Latency of acknowledged attempts.
    pub p50_ms: f64,
    /// p99.
    pub p99_ms: f64,
    /// p999.
    pub p999_ms: f64,
}

/// The whole outcome of a run.
#[derive(Debug, Serialize)]
pub struct Outcome {
    /// The scenario's title.
    pub title: String,
    /// Root mode (namespaces, per-link faults).
    pub root: bool,
    /// Attempts, in order of their end.
    pub attempts: Vec<Attempt>,
    /// Faults as applied.
    pub faults: Vec<FaultRecord>,
    /// Leader changes seen by the sampler, per shard.
    pub leader_changes: BTreeMap<u32, u32>,
    /// Shards with a leader after healing (the "every shard led" probe).
    pub led_at_end: u32,
    /// Steady state before the first fault and after the last heal, and the fault windows.
    pub windows: Vec<Window>,
    /// Each probe of the hypothesis: (window, probe, tolerance, value, ok).
    pub probes: Vec<(String, String, String, String, bool)>,
    /// The checker's verdict.
    pub verdict: Verdict,
    /// p99 of the faults' RTOs, ms (`None` when a fault never recovered).
    pub rto_p99_ms: Option<f64>,
    /// Whether everything held: hypothesis, checker, RPO 0, RTO target.
    pub passed: bool,
    /// Why not, for people.
    pub failures: Vec<String>,
    /// The run was interrupted (Ctrl-C).
    pub interrupted: bool,
    /// Start and end, Unix ms.
    pub started_unix_ms: u64,
    /// End.
    pub ended_unix_ms: u64,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
    )
}

/// Shared state of a run.
struct Shared {
    t0: Instant,
    attempts: Mutex<Vec<Attempt>>,
    history: Mutex<Vec<Op>>,
    leaders: Mutex<BTreeMap<u32, (u64, u32)>>,
    stop: AtomicBool,
    in_flight: AtomicU64,
}

impl Shared {
    fn ms(&self) -> f64 {
        self.t0.elapsed().as_secs_f64() * 1000.0
    }
}

/// Node-API access for probes and the checker.
struct Probe {
    client: LedgerClient,
    nodes: BTreeMap<u64, String>,
}

impl Probe {
    async fn new(cluster: &Cluster) -> Result<Self, String> {
        let key = ClusterKey::load(&cluster.key_file).map_err(|e| e.to_string())?;
        let nodes = cluster.node_addrs();
        let client = LedgerClient::connect(nodes.values().cloned().collect(), ClientOptions::new(key))
            .await
            .map_err(|e| format!("cannot reach the cluster's node ports: {e}"))?;
        Ok(Self { client, nodes })
    }

    /// Each shard's leader as the nodes that answer report it (highest term wins).
    async fn leaders(&self) -> BTreeMap<u32, (u64, u64)> {
        self.leadership().await.into_iter().map(|(s, (l, term, _))| (s, (l, term))).collect()
    }

    /// Each shard's leader, term, and whether it leads from the shard's home region.
    async fn leadership(&self) -> BTreeMap<u32, (u64, u64, bool)> {
        let mut out: BTreeMap<u32, (u64, u64, bool)> = BTreeMap::new();
        for addr in self.nodes.values() {
            let Ok(Ok(st)) = tokio::time::timeout(Duration::from_millis(500), self.client.status(addr)).await else {
                continue;
            };
            for s in st.shards {
                if let Some(l) = s.leader {
                    let home = s.leader_region.is_some() && s.leader_region == s.home_region;
                    let e = out.entry(s.shard).or_insert((l, 0, home));
                    if s.term >= e.1 {
                        *e = (l, s.term, home);
                    }
                }
            }
        }
        out
    }

    /// Every replica of every shard: its own verification and chain head.
    async fn replicas(&self) -> BTreeMap<u32, Vec<Replica>> {
        let mut out: BTreeMap<u32, Vec<Replica>> = BTreeMap::new();
        for (id, addr) in &self.nodes {
            let Ok(st) = self.client.status(addr).await else { continue };
            for s in st.shards {
                let r = match self.client.verify(addr, s.shard).await {
                    Ok(v) => Replica {
                        node: *id,
                        head_seq: v.entries,
                        head_hash: v.head_hash.clone(),
                        verify_error: (!v.ok())
                            .then(|| v.error.clone().unwrap_or_else(|| "balances do not match".into())),
                    },
                    Err(e) => Replica {
                        node: *id,
                        head_seq: 0,
                        head_hash: String::new(),
                        verify_error: Some(format!("cannot verify: {e}")),
                    },
                };
                out.entry(s.shard).or_default().push(r);
            }
        }
        out
    }
}

/// Runs `scenario`; the outcome says what happened. `interrupted` is set on Ctrl-C.
pub async fn run(s: &Scenario, paths: &Paths, root: bool, interrupted: Arc<AtomicBool>) -> Result<Outcome, String> {
    let started_unix_ms = unix_ms();
    let cluster = Cluster::start(s, paths, root).await?;
    let proxy = cluster.proxy.clone();
    let creds = Credentials::Operator { key_id: cluster.operator.0.clone(), secret: cluster.operator.1.clone() };
    // One node-API client, shared by the run, the leader sampler and the method (its calls
    // multiplex over one connection per node).
    let probe = Arc::new(Probe::new(&cluster).await?);
    let (sampler_probe, method_probe) = (probe.clone(), probe.clone());
    let fronts: Vec<String> = cluster.routers.iter().map(|r| r.front.to_string()).collect();
    let cluster = Arc::new(Mutex::new(cluster));

    // Wait until every shard is led from its home region (a new cluster moves leadership home
    // after its first elections, which a steady state must not include), then fund the players
    // through the first router.
    let settle = Instant::now();
    loop {
        let l = probe.leadership().await;
        if l.len() == s.cluster.shards as usize && l.values().all(|(_, _, home)| *home) {
            break;
        }
        if settle.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "{} of {} shards led from their home region after 60 s",
                l.values().filter(|x| x.2).count(),
                s.cluster.shards
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut clients = Vec::new();
    for f in &fronts {
        clients.push(connect(f).await.map_err(|e| format!("cannot reach router at {f}: {e}"))?);
    }
    let regions: Vec<&str> = s.cluster.regions.iter().map(|r| r.name.as_str()).collect();
    let players: Vec<String> =
        (0..s.workload.players).map(|i| format!("{}:c{i}", regions[i as usize % regions.len()])).collect();
    let mut shard_of = BTreeMap::new();
    let mut history = Vec::new();
    for p in &players {
        let shard = fund(&mut clients[0], &creds, p).await?;
        shard_of.insert(p.clone(), shard);
        history.push(Op { key: format!("open-{p}"), player: p.clone(), delta: 0, told: Told::Acked });
        history.push(Op { key: format!("fund-{p}"), player: p.clone(), delta: FUNDING, told: Told::Acked });
    }

    let shared = Arc::new(Shared {
        t0: Instant::now(),
        attempts: Mutex::default(),
        history: Mutex::new(history),
        leaders: Mutex::default(),
        stop: AtomicBool::new(false),
        in_flight: AtomicU64::new(0),
    });
    // The leader sampler: leader changes per shard, and "every shard led" for the probes.
    let sampler = {
        let (shared, probe_nodes) = (shared.clone(), sampler_probe);
        tokio::spawn(async move {
            while !shared.stop.load(Ordering::Relaxed) {
                let now = probe_nodes.leaders().await;
                {
                    let mut seen = shared.leaders.lock().expect("leaders");
                    for (shard, (leader, _)) in now {
                        let e = seen.entry(shard).or_insert((leader, 0));
                        if e.0 != leader {
                            *e = (leader, e.1 + 1);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    // The method: each fault at its time, healed after its span.
    let timeline = s.timeline();
    let records: Arc<Mutex<Vec<FaultRecord>>> = Arc::default();
    let method = {
        let (shared, cluster, records, proxy, interrupted) =
            (shared.clone(), cluster.clone(), records.clone(), proxy.clone(), interrupted.clone());
        let probe = method_probe;
        tokio::spawn(async move {
            let mut heals = Vec::new();
            for (i, (at, fault)) in timeline.into_iter().enumerate() {
                tokio::time::sleep_until((shared.t0 + Duration::from_secs_f64(at)).into()).await;
                if interrupted.load(Ordering::Relaxed) {
                    break;
                }
                let leaders = probe.leaders().await;
                let at_ms = shared.ms();
                let layer = format!("fault-{i}");
                let applied = apply(&cluster, &proxy, &fault, &leaders, &layer).await;
                let idx = {
                    let mut r = records.lock().expect("records");
                    r.push(FaultRecord {
                        kind: fault.kind().into(),
                        target: applied.as_ref().map_or_else(|e| e.clone(), |h| h.label.clone()),
                        at_ms,
                        healed_ms: None,
                        rto_ms: BTreeMap::new(),
                        error: applied.as_ref().err().cloned(),
                        note: None,
                    });
                    r.len() - 1
                };
                let (cluster, proxy, records, shared) =
                    (cluster.clone(), proxy.clone(), records.clone(), shared.clone());
                let span = fault.span_s();
                let hit = applied.ok();
                heals.push(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs_f64(span)).await;
                    let note = heal(&cluster, &proxy, &fault, hit.as_ref(), &layer);
                    let mut r = records.lock().expect("records");
                    r[idx].healed_ms = Some(shared.ms());
                    r[idx].note = note;
                }));
            }
            for h in heals {
                let _ = h.await;
            }
        })
    };

    // The workload: open loop at the offered rate until the duration ends.
    let mut rng = SmallRng::seed_from_u64(s.seed);
    let interval = Duration::from_secs_f64(1.0 / f64::from(s.workload.rate));
    let end = shared.t0 + Duration::from_secs(s.workload.duration_s);
    let resolve_by = end + Duration::from_secs(RESOLVE_S);
    let deadline = Duration::from_millis(s.workload.deadline_ms);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut ops = Vec::new();
    let mut n: u64 = 0;
    while Instant::now() < end && !interrupted.load(Ordering::Relaxed) {
        tick.tick().await;
        let player = players[(n % players.len() as u64) as usize].clone();
        let amount = rng.random_range(1..=500i64);
        let key = format!("chaos-{}-{n}", s.seed);
        let shard = shard_of[&player];
        let (shared, clients, creds) = (shared.clone(), clients.clone(), creds.clone());
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        ops.push(tokio::spawn(async move {
            let told = place(&shared, &clients, &creds, &player, &key, amount, shard, n, deadline, resolve_by).await;
            shared.history.lock().expect("history").push(Op { key, player, delta: -amount, told });
            shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        }));
        n += 1;
    }
    let workload_end_ms = shared.ms();

    // Rollbacks: always, whatever happened above.
    let _ = method.await;
    rollback(&cluster, s);
    for op in ops {
        let _ = op.await;
    }
    // Healed: wait until every shard is led and the replicas agree, then check.
    let healed = Instant::now();
    let mut replicas;
    let mut led_at_end;
    loop {
        replicas = probe.replicas().await;
        led_at_end = probe.leaders().await.len() as u32;
        let agreed = led_at_end == s.cluster.shards
            && replicas.len() == s.cluster.shards as usize
            && replicas
                .values()
                .all(|r| r.windows(2).all(|w| w[0].head_hash == w[1].head_hash && w[0].head_seq == w[1].head_seq));
        if agreed || healed.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    shared.stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let mut observed = Observed { shards: replicas, ..Observed::default() };
    for p in &players {
        observed.players.insert(p.clone(), read_player(&mut clients[0], &creds, p).await?);
    }
    let history = shared.history.lock().expect("history").clone();
    let verdict = checker::check(&history, &BTreeMap::new(), &observed);

    let attempts = shared.attempts.lock().expect("attempts").clone();
    let mut faults = records.lock().expect("records").clone();
    for f in &mut faults {
        for shard in 0..s.cluster.shards {
            let first = attempts
                .iter()
                .filter(|a| a.shard == shard && a.error.is_none() && a.start_ms >= f.at_ms)
                .map(|a| a.end_ms)
                .fold(None, |m: Option<f64>, e| Some(m.map_or(e, |m| m.min(e))));
            f.rto_ms.insert(shard, first.map(|e| e - f.at_ms));
        }
    }
    let leader_changes = shared.leaders.lock().expect("leaders").iter().map(|(s, (_, c))| (*s, *c)).collect();
    let mut out = Outcome {
        title: s.title.clone(),
        root,
        attempts,
        faults,
        leader_changes,
        led_at_end,
        windows: Vec::new(),
        probes: Vec::new(),
        verdict,
        rto_p99_ms: None,
        passed: false,
        failures: Vec::new(),
        interrupted: interrupted.load(Ordering::Relaxed),
        started_unix_ms,
        ended_unix_ms: unix_ms(),
    };
    judge(&mut out, s, workload_end_ms);
    Ok(out)
}

/// Opens and funds a player's wallet (retrying through faults of the setup), and returns its shard.
async fn fund(c: &mut WalletClient<Channel>, creds: &Credentials, player: &str) -> Result<u32, String> {
    let t = Duration::from_secs(5);
    let started = Instant::now();
    loop {
        let open = pb::OpenWalletRequest {
            idempotency_key: format!("open-{player}"),
            player_id: player.into(),
            currency: "EUR".into(),
        };
        let dep = pb::DepositRequest {
            idempotency_key: format!("fund-{player}"),
            player_id: player.into(),
            currency: "EUR".into(),
            amount: FUNDING,
        };
        let get = pb::GetBalanceRequest { player_id: player.into(), currency: "EUR".into(), ..Default::default() };
        let r = async {
            c.open_wallet(creds.request(Rpc::OpenWallet, open, t)).await?;
            c.deposit(creds.request(Rpc::Deposit, dep, t)).await?;
            c.get_balance(creds.request(Rpc::GetBalance, get, t)).await
        }
        .await;
        match r {
            Ok(b) => return Ok(b.into_inner().shard),
            Err(e) if retryable(e.code()) && started.elapsed() < Duration::from_secs(60) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(format!("funding {player} failed: {}", e.message())),
        }
    }
}

/// One bet, retried with its key through the routers in turn until it has a definite answer
/// or `resolve_by` passes.
#[allow(clippy::too_many_arguments)]
async fn place(
    shared: &Shared,
    clients: &[WalletClient<Channel>],
    creds: &Credentials,
    player: &str,
    key: &str,
    amount: i64,
    shard: u32,
    n: u64,
    deadline: Duration,
    resolve_by: Instant,
) -> Told {
    let mut attempt = 0usize;
    loop {
        let mut c = clients[(n as usize + attempt) % clients.len()].clone();
        let bet = pb::PlaceBetRequest {
            idempotency_key: key.into(),
            player_id: player.into(),
            round_id: format!("round-{n}"),
            currency: "EUR".into(),
            amount,
        };
        let start_ms = shared.ms();
        let r = c.place_bet(creds.request(Rpc::PlaceBet, bet, deadline)).await;
        let end_ms = shared.ms();
        let error = r.as_ref().err().map(|e| format!("{:?}", e.code()));
        shared.attempts.lock().expect("attempts").push(Attempt { shard, start_ms, end_ms, error });
        match r {
            Ok(_) => return Told::Acked,
            Err(e) if !retryable(e.code()) => return Told::Refused,
            Err(_) if Instant::now() >= resolve_by => return Told::Unknown,
            Err(_) => {}
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
    }
}

/// A player's entries (with their effect on the player's balance) and balance.
async fn read_player(
    c: &mut WalletClient<Channel>,
    creds: &Credentials,
    player: &str,
) -> Result<(Vec<SeenEntry>, i64), String> {
    let t = Duration::from_secs(10);
    let mut entries = Vec::new();
    let mut from = 1;
    loop {
        let list =
            pb::ListEntriesRequest { player_id: player.into(), from_seq: from, page_size: 1000, ..Default::default() };
        let page = c
            .list_entries(creds.request(Rpc::ListEntries, list, t))
            .await
            .map_err(|e| format!("listing {player}'s entries: {}", e.message()))?
            .into_inner();
        for e in &page.entries {
            let mine = |a: &Option<pb::Account>| {
                a.as_ref().is_some_and(|a| a.kind == pb::AccountKind::Player as i32 && a.player_id == player)
            };
            let amount = i64::try_from(e.amount).unwrap_or(i64::MAX);
            let delta = if mine(&e.credit) { amount } else { 0 } - if mine(&e.debit) { amount } else { 0 };
            entries.push(SeenEntry { tx_id: e.tx_id.clone(), delta });
        }
        if page.next_seq > page.head_seq || page.entries.is_empty() {
            break;
        }
        from = page.next_seq;
    }
    let get = pb::GetBalanceRequest { player_id: player.into(), currency: "EUR".into(), ..Default::default() };
    let b = c
        .get_balance(creds.request(Rpc::GetBalance, get, t))
        .await
        .map_err(|e| format!("reading {player}'s balance: {}", e.message()))?
        .into_inner();
    Ok((entries, b.balance.map_or(0, |b| b.available)))
}

/// The node a target names now.
fn resolve(target: &Target, cluster: &Cluster, leaders: &BTreeMap<u32, (u64, u64)>) -> Result<String, String> {
    match target {
        Target::Node(n) => Ok(n.clone()),
        Target::LeaderOf(shard) => {
            let (id, _) = leaders.get(shard).ok_or_else(|| format!("shard {shard} has no leader to hit"))?;
            cluster
                .ids
                .iter()
                .find(|(_, i)| *i == id)
                .map(|(n, _)| n.clone())
                .ok_or_else(|| format!("unknown node {id}"))
        }
    }
}

fn lock(cluster: &Mutex<Cluster>) -> std::sync::MutexGuard<'_, Cluster> {
    cluster.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a fault struck: the nodes `heal` must mend, and the label the record shows.
struct Hit {
    nodes: Vec<String>,
    label: String,
}

impl Hit {
    fn one(node: String) -> Self {
        Self { label: node.clone(), nodes: vec![node] }
    }

    /// A fault healed by clearing its proxy layer alone: no node to mend.
    fn label(label: String) -> Self {
        Self { nodes: Vec::new(), label }
    }
}

/// Applies a fault; returns what it hit, for the record and for healing. Faults that play out
/// over time (a flapping link, a rolling restart) run in a task of their own.
async fn apply(
    cluster: &Arc<Mutex<Cluster>>,
    proxy: &FaultProxy,
    fault: &Fault,
    leaders: &BTreeMap<u32, (u64, u64)>,
    layer: &str,
) -> Result<Hit, String> {
    let blackhole = Faults { blackhole: true, ..Faults::default() };
    match fault {
        Fault::Kill { target, .. } => {
            let mut c = lock(cluster);
            let n = resolve(target, &c, leaders)?;
            c.nodes.get_mut(&n).ok_or("no such node")?.kill();
            Ok(Hit::one(n))
        }
        Fault::Pause { target, .. } => {
            let mut c = lock(cluster);
            let n = resolve(target, &c, leaders)?;
            c.nodes.get_mut(&n).ok_or("no such node")?.pause(true);
            Ok(Hit::one(n))
        }
        Fault::KillRegion { region, .. } => {
            let mut c = lock(cluster);
            let mut hit = Vec::new();
            for p in c.nodes.values_mut().filter(|p| &p.region == region) {
                p.kill();
                hit.push(p.name.clone());
            }
            Ok(Hit { label: hit.join(","), nodes: hit })
        }
        Fault::Partition { groups, one_way, .. } => {
            let c = lock(cluster);
            if !c.root {
                return Err("a partition needs root (a namespace per node, so links are told apart)".into());
            }
            let sides: Vec<Vec<String>> =
                groups.iter().map(|g| g.iter().flat_map(|m| c.members_of(m)).collect()).collect();
            for (i, a_side) in sides.iter().enumerate() {
                for (j, b_side) in sides.iter().enumerate() {
                    if i == j || (*one_way && i != 0) {
                        continue;
                    }
                    for a in a_side {
                        for b in b_side {
                            // Bytes from a to b vanish: a's requests on its links to b, and a's
                            // answers on b's links to a.
                            let ab = Selector { from: Some(a.clone()), to: Some(b.clone()) };
                            let ba = Selector { from: Some(b.clone()), to: Some(a.clone()) };
                            proxy.set(layer, ab, Dir::Forward, blackhole.clone());
                            proxy.set(layer, ba, Dir::Backward, blackhole.clone());
                        }
                    }
                }
            }
            let sep = if *one_way { " -/-> " } else { " vs " };
            Ok(Hit::label(groups.iter().map(|g| g.join("+")).collect::<Vec<_>>().join(sep)))
        }
        Fault::Isolate { target, .. } => {
            let c = lock(cluster);
            let n = resolve(target, &c, leaders)?;
            c.iptables(&n, &["-I", "INPUT", "-j", "DROP"])?;
            c.iptables(&n, &["-I", "OUTPUT", "-j", "DROP"])?;
            Ok(Hit::one(n))
        }
        Fault::Latency { to, delay_ms, jitter_ms, .. } => {
            let c = lock(cluster);
            let f = Faults { delay_ms: *delay_ms, jitter_ms: *jitter_ms, ..Faults::default() };
            for m in c.members_of(to) {
                for sel in [Selector { from: None, to: Some(m.clone()) }, Selector { from: Some(m.clone()), to: None }]
                {
                    proxy.set(layer, sel.clone(), Dir::Forward, f.clone());
                    proxy.set(layer, sel, Dir::Backward, f.clone());
                }
            }
            Ok(Hit::label(to.clone()))
        }
        Fault::Reset { target, .. } => {
            let c = lock(cluster);
            let n = resolve(target, &c, leaders)?;
            proxy.reset(layer, Selector { from: None, to: Some(n.clone()) }, true);
            proxy.reset(layer, Selector { from: Some(n.clone()), to: None }, false);
            Ok(Hit::one(n))
        }
        Fault::Flap { target, period_ms, for_s } => {
            let n = {
                let c = lock(cluster);
                let n = resolve(target, &c, leaders)?;
                c.link(&n, false)?;
                n
            };
            let (cluster, name, period, until) = (
                cluster.clone(),
                n.clone(),
                Duration::from_millis(*period_ms),
                Instant::now() + Duration::from_secs_f64(*for_s),
            );
            tokio::spawn(async move {
                let mut up = false;
                loop {
                    tokio::time::sleep(period).await;
                    if Instant::now() >= until {
                        break;
                    }
                    up = !up;
                    let _ = lock(&cluster).link(&name, up);
                }
                let _ = lock(&cluster).link(&name, true);
            });
            Ok(Hit::one(n))
        }
        Fault::Loss { target, percent, .. } => {
            let c = lock(cluster);
            let n = resolve(target, &c, leaders)?;
            let p = format!("{:.2}", f64::from(*percent) / 100.0);
            for chain in ["INPUT", "OUTPUT"] {
                c.iptables(
                    &n,
                    &["-I", chain, "-m", "statistic", "--mode", "random", "--probability", &p, "-j", "DROP"],
                )?;
            }
            Ok(Hit { label: format!("{n} ({percent}%)"), nodes: vec![n] })
        }
        Fault::Bandwidth { target, kbit, .. } => {
            let c = lock(cluster);
            let n = resolve(target, &c, leaders)?;
            let rate = format!("{kbit}kbit");
            c.tc(
                &n,
                &[
                    "qdisc", "replace", "dev", "DEV", "root", "tbf", "rate", &rate, "burst", "16kbit", "latency",
                    "400ms",
                ],
            )?;
            Ok(Hit::one(n))
        }
        Fault::PowerCut { target, .. } => {
            let mut c = lock(cluster);
            let n = resolve(target, &c, leaders)?;
            // The process dies first, then its unsynced writes: nothing can write in between.
            c.nodes.get_mut(&n).ok_or("no such node")?.kill();
            let dropped = c.cut_power(&n)?;
            Ok(Hit { label: format!("{n} ({dropped} unsynced bytes dropped)"), nodes: vec![n] })
        }
        Fault::ClockSkew { target, offset_s, .. } => {
            let c = lock(cluster);
            let n = resolve(target, &c, leaders)?;
            c.skew_clock(&n, (*offset_s * 1000.0).round() as i64)?;
            Ok(Hit::one(n))
        }
        Fault::DiskFull { target, .. } => {
            let (n, filler) = {
                let c = lock(cluster);
                let n = resolve(target, &c, leaders)?;
                let filler = c.filler(&n).ok_or("no such node")?;
                (n, filler)
            };
            // Writing a few hundred MiB takes a moment: off the runtime's threads, and without
            // the cluster's lock.
            let mib = tokio::task::spawn_blocking(move || crate::cluster::fill(&filler))
                .await
                .map_err(|e| format!("filling {n}'s disk: {e}"))??
                >> 20;
            Ok(Hit { label: format!("{n} ({mib} MiB filled)"), nodes: vec![n] })
        }
        Fault::RollingRestart { pause_s } => {
            let names: Vec<String> = lock(cluster).nodes.keys().cloned().collect();
            let (cluster, pause, list) = (cluster.clone(), Duration::from_secs_f64(*pause_s), names.clone());
            tokio::spawn(async move {
                for n in list {
                    let c2 = cluster.clone();
                    let name = n.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        let mut c = lock(&c2);
                        if let Some(p) = c.nodes.get_mut(&name) {
                            p.terminate();
                            let _ = p.restart();
                        }
                    })
                    .await;
                    let c2 = cluster.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        let addr = lock(&c2).nodes.get(&n).and_then(|p| p.api_listen);
                        if let Some(a) = addr {
                            let deadline = Instant::now() + Duration::from_secs(30);
                            while std::net::TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_err()
                                && Instant::now() < deadline
                            {
                                std::thread::sleep(Duration::from_millis(50));
                            }
                        }
                    })
                    .await;
                    tokio::time::sleep(pause).await;
                }
            });
            Ok(Hit::label(names.join(",")))
        }
    }
}

/// Heals one fault (the nodes `apply` hit), leaving the others in force.
fn heal(cluster: &Mutex<Cluster>, proxy: &FaultProxy, fault: &Fault, hit: Option<&Hit>, layer: &str) -> Option<String> {
    proxy.clear_layer(layer);
    let mut c = lock(cluster);
    let hit = hit?;
    let target = hit.nodes.first().map(String::as_str).unwrap_or_default();
    match fault {
        Fault::Kill { .. } | Fault::KillRegion { .. } | Fault::PowerCut { .. } => {
            for n in &hit.nodes {
                if let Some(p) = c.nodes.get_mut(n)
                    && !p.running()
                {
                    let _ = p.restart();
                }
            }
        }
        Fault::Pause { .. } => {
            if let Some(p) = c.nodes.get_mut(target) {
                p.pause(false);
            }
        }
        Fault::Isolate { .. } => {
            let _ = c.iptables(target, &["-D", "INPUT", "-j", "DROP"]);
            let _ = c.iptables(target, &["-D", "OUTPUT", "-j", "DROP"]);
        }
        Fault::Flap { .. } => {
            let _ = c.link(target, true);
        }
        Fault::Loss { percent, .. } => {
            // Delete exactly the rules `apply` inserted, so an isolation in force stays.
            let p = format!("{:.2}", f64::from(*percent) / 100.0);
            for chain in ["INPUT", "OUTPUT"] {
                let _ = c.iptables(
                    target,
                    &["-D", chain, "-m", "statistic", "--mode", "random", "--probability", &p, "-j", "DROP"],
                );
            }
        }
        Fault::Bandwidth { .. } => {
            let _ = c.tc(target, &["qdisc", "del", "dev", "DEV", "root"]);
        }
        Fault::ClockSkew { .. } => {
            let _ = c.skew_clock(target, 0);
        }
        Fault::DiskFull { .. } => {
            c.free_disk(target);
            // The node should have stopped itself when its log could not be written; start it
            // again. Still running means it went on without a disk: say so.
            let p = c.nodes.get_mut(target)?;
            if p.running() {
                return Some(format!("{target} was still running with a full disk"));
            }
            let restarted = p.restart();
            return Some(match restarted {
                Ok(()) => format!("{target} had stopped by itself; space freed and restarted"),
                Err(e) => format!("{target} had stopped by itself; restart failed: {e}"),
            });
        }
        Fault::Partition { .. } | Fault::Latency { .. } | Fault::Reset { .. } | Fault::RollingRestart { .. } => {}
    }
    None
}

/// The rollbacks, which always run: every proxy fault removed (the emulated network kept),
/// every iptables rule flushed and link up, every paused process continued, every stopped
/// process started again.
fn rollback(cluster: &Mutex<Cluster>, s: &Scenario) {
    let mut guard = lock(cluster);
    let c: &mut Cluster = &mut guard;
    c.proxy.clear();
    c.emulate_network(s);
    c.heal_network();
    let names: Vec<String> = c.nodes.keys().cloned().collect();
    for n in &names {
        c.free_disk(n);
        if s.uses("clock_skew") {
            let _ = c.skew_clock(n, 0);
        }
    }
    for p in c.nodes.values_mut().chain(c.routers.iter_mut()) {
        if p.paused {
            p.pause(false);
        }
        if !p.running() {
            let _ = p.restart();
        }
    }
}

fn window(name: &str, attempts: &[Attempt], from_ms: f64, to_ms: f64) -> Window {
    let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds");
    let (mut n, mut failed) = (0u64, 0u64);
    // An attempt belongs to a window when it started and ended in it: one that straddles the
    // start of a fault is neither the steady state's nor the fault's.
    for a in attempts.iter().filter(|a| a.start_ms >= from_ms && a.end_ms < to_ms) {
        n += 1;
        match a.error {
            None => {
                let _ = h.record(((a.end_ms - a.start_ms) * 1000.0).max(1.0) as u64);
            }
            Some(_) => failed += 1,
        }
    }
    let secs = ((to_ms - from_ms) / 1000.0).max(0.001);
    let q = |x: f64| if h.is_empty() { 0.0 } else { h.value_at_quantile(x) as f64 / 1000.0 };
    Window {
        name: name.into(),
        from_ms,
        to_ms,
        attempts: n,
        error_percent: if n == 0 { 0.0 } else { failed as f64 * 100.0 / n as f64 },
        acked_per_s: h.len() as f64 / secs,
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        p999_ms: q(0.999),
    }
}

/// Computes the windows and probes, and decides whether the run passed.
fn judge(out: &mut Outcome, s: &Scenario, workload_end_ms: f64) {
    let first_fault = out.faults.iter().map(|f| f.at_ms).fold(workload_end_ms, f64::min);
    let last_heal = out.faults.iter().map(|f| f.healed_ms.unwrap_or(f.at_ms)).fold(0.0, f64::max);
    // The "after" window starts once the last fault has healed and the cluster had time to
    // settle; too short a tail (a fault near the end) leaves it empty rather than wrong.
    let after_from = (last_heal + 5_000.0).min(workload_end_ms);
    let mut windows = vec![window("before", &out.attempts, 1_000.0_f64.min(first_fault), first_fault)];
    for (i, f) in out.faults.iter().enumerate() {
        let to = f.healed_ms.unwrap_or(workload_end_ms).max(f.at_ms + 1.0);
        windows.push(window(&format!("during {} #{}", f.kind, i + 1), &out.attempts, f.at_ms, to));
    }
    if !out.faults.is_empty() {
        windows.push(window("after", &out.attempts, after_from, workload_end_ms));
    }
    let ss = &s.steady_state;
    let mut probes = Vec::new();
    for w in windows.iter().filter(|w| w.name == "before" || w.name == "after") {
        if w.attempts == 0 {
            probes.push((w.name.clone(), "attempts".into(), "> 0".into(), "0".into(), w.name == "after"));
            continue;
        }
        probes.push((
            w.name.clone(),
            "error rate".into(),
            format!("<= {} %", ss.max_error_percent),
            format!("{:.2} %", w.error_percent),
            w.error_percent <= f64::from(ss.max_error_percent),
        ));
        probes.push((
            w.name.clone(),
            "p99 latency".into(),
            format!("<= {} ms", ss.max_p99_ms),
            format!("{:.1} ms", w.p99_ms),
            w.p99_ms <= ss.max_p99_ms as f64,
        ));
    }
    if ss.every_shard_led {
        let led = out.led_at_end;
        probes.push((
            "after".into(),
            "every shard led".into(),
            format!("{} shards", s.cluster.shards),
            format!("{led} led"),
            led == s.cluster.shards,
        ));
    }
    let mut failures = Vec::new();
    for (w, name, tol, val, ok) in &probes {
        if !ok {
            failures.push(format!("steady state {w}: {name} {val}, tolerance {tol}"));
        }
    }
    if !out.verdict.valid {
        failures.push(format!("the checker found {} violation(s); see checker.json", out.verdict.violations.len()));
    }
    if out.verdict.lost as u64 > s.targets.rpo {
        failures.push(format!("RPO: {} acknowledged operation(s) lost", out.verdict.lost));
    }
    let mut rtos: Vec<Option<f64>> =
        out.faults.iter().filter(|f| f.error.is_none()).map(FaultRecord::worst_rto).collect();
    rtos.sort_by(|a, b| a.unwrap_or(f64::INFINITY).total_cmp(&b.unwrap_or(f64::INFINITY)));
    out.rto_p99_ms = if rtos.is_empty() { Some(0.0) } else { rtos[((rtos.len() - 1) as f64 * 0.99).round() as usize] };
    match out.rto_p99_ms {
        None => failures.push("a fault's shards never recovered before the run ended".into()),
        Some(p99) if p99 > s.targets.rto_p99_ms as f64 => {
            failures.push(format!("RTO p99 {p99:.0} ms is over the target of {} ms", s.targets.rto_p99_ms));
        }
        Some(_) => {}
    }
    for f in out.faults.iter().filter(|f| f.error.is_some()) {
        failures.push(format!("the {} fault could not be applied: {}", f.kind, f.error.clone().unwrap_or_default()));
    }
    if out.interrupted {
        failures.push("interrupted (Ctrl-C) before the method finished".into());
    }
    out.windows = windows;
    out.probes = probes;
    out.passed = failures.is_empty();
    out.failures = failures;
}
