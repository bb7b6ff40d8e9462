//! The clients: deposits, bets, wins, rollbacks, transfers and withdrawals with idempotent
//! retries and ids reused on purpose; and the auditor that checks, once the faults have healed,
//! that every shard commits again and the ledger agrees with everything the clients were told.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ledger_core::{
    AccountRef, Amount, Balance, Command, Currency, Entry, EntryKind, Outcome, PlayerId, RoundId, TxId,
    shard_for_player,
};
use raft_ledger::client::{ClientError, LedgerClient};

use crate::config::SimConfig;
use crate::rng::SimRng;
use crate::run::{SharedRef, addrs, client_options, resolve};

/// What a client learned about one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Known {
    /// Applied (now or by an earlier attempt): its entry's sequence, if it made one.
    Applied(Option<u64>),
    /// Refused for a reason that is remembered under its id.
    Refused(&'static str),
    /// Refused because the id was taken by another payload.
    Conflict,
    /// Never learned: it may or may not have applied.
    Indeterminate,
}

/// One command and what its client learned.
#[derive(Debug, Clone)]
pub(crate) struct Op {
    pub(crate) shard: u32,
    pub(crate) cmd: Command,
    pub(crate) known: Known,
    /// When its client learned the outcome (simulated time).
    pub(crate) learned_at: tokio::time::Instant,
}

/// A linearizable balance read and what it returned.
#[derive(Debug, Clone)]
pub(crate) struct Read {
    shard: u32,
    account: AccountRef,
    journal_len: u64,
    balance: Option<Balance>,
}

/// A read of one replica as it stands, and the bound on its staleness the node reported.
#[derive(Debug, Clone)]
pub(crate) struct LocalRead {
    read: Read,
    node: String,
    /// When the read was sent (simulated time).
    sent_at: tokio::time::Instant,
    staleness_ms: Option<u64>,
}

/// Everything the clients did.
#[derive(Debug, Default)]
pub(crate) struct History {
    pub(crate) ops: Vec<Op>,
    reads: Vec<Read>,
    local_reads: Vec<LocalRead>,
}

impl History {
    /// (applied, refused, indeterminate).
    pub(crate) fn counts(&self) -> (usize, usize, usize) {
        let n = |f: fn(&Known) -> bool| self.ops.iter().filter(|o| f(&o.known)).count();
        (
            n(|k| matches!(k, Known::Applied(_))),
            n(|k| matches!(k, Known::Refused(_) | Known::Conflict)),
            n(|k| matches!(k, Known::Indeterminate)),
        )
    }
}

fn eur() -> Currency {
    Currency::new("EUR").expect("EUR")
}

fn id<T>(r: Result<T, ledger_core::Rejection>) -> T {
    r.expect("simulator ids are valid")
}

fn amount(v: u64) -> Amount {
    id(Amount::from_u64(v))
}

/// The entry kind a command's own entry has.
fn entry_kind(cmd: &Command) -> EntryKind {
    match cmd {
        Command::OpenAccount { .. } => EntryKind::Open,
        Command::Deposit { .. } => EntryKind::Deposit,
        Command::ReserveWithdrawal { .. } => EntryKind::WithdrawalReserve,
        Command::CommitWithdrawal { .. } => EntryKind::WithdrawalCommit,
        Command::CancelWithdrawal { .. } => EntryKind::WithdrawalCancel,
        Command::Bet { .. } => EntryKind::Bet,
        Command::Win { .. } => EntryKind::Win,
        Command::Rollback { .. } => EntryKind::Rollback,
        Command::Transfer { .. } => EntryKind::Transfer,
        Command::Adjust { .. } => EntryKind::Adjustment,
    }
}

/// One client's mutable view: its players and what it may refer to later.
struct Client {
    n: u32,
    rng: SimRng,
    players: Vec<PlayerId>,
    bets: Vec<(PlayerId, RoundId, TxId)>,
    holds: Vec<(PlayerId, TxId)>,
    sent: Vec<usize>,
    next: u64,
}

impl Client {
    fn tx(&mut self) -> TxId {
        self.next += 1;
        id(TxId::new(format!("c{}-{}", self.n, self.next)))
    }

    fn player(&mut self) -> PlayerId {
        self.players[self.rng.below(self.players.len() as u64) as usize].clone()
    }

    /// A fresh command of a random kind.
    fn fresh(&mut self) -> Command {
        let p = self.player();
        let roll = self.rng.below(100);
        match roll {
            0..=14 => Command::Deposit {
                tx: self.tx(),
                player: p,
                currency: eur(),
                amount: amount(self.rng.range(100, 5_000)),
            },
            15..=49 => {
                let tx = self.tx();
                let round = id(RoundId::new(format!("r-{tx}")));
                self.bets.push((p.clone(), round.clone(), tx.clone()));
                Command::Bet { tx, player: p, round, currency: eur(), amount: amount(self.rng.range(1, 3_000)) }
            }
            50..=64 if !self.bets.is_empty() => {
                let (player, round, _) = self.bets[self.rng.below(self.bets.len() as u64) as usize].clone();
                Command::Win { tx: self.tx(), player, round, currency: eur(), amount: amount(self.rng.range(1, 6_000)) }
            }
            65..=72 if !self.bets.is_empty() => {
                let (player, round, bet) = self.bets[self.rng.below(self.bets.len() as u64) as usize].clone();
                Command::Rollback { tx: self.tx(), player, round, bet }
            }
            73..=82 => {
                let to = self.player();
                if to == p {
                    return Command::Deposit { tx: self.tx(), player: p, currency: eur(), amount: amount(1) };
                }
                Command::Transfer {
                    tx: self.tx(),
                    from: p,
                    to,
                    currency: eur(),
                    amount: amount(self.rng.range(1, 2_000)),
                }
            }
            83..=90 => {
                let tx = self.tx();
                self.holds.push((p.clone(), tx.clone()));
                let timeout_ms = self.rng.range(1_000, 20_000);
                Command::ReserveWithdrawal {
                    tx,
                    player: p,
                    currency: eur(),
                    amount: amount(self.rng.range(1, 2_000)),
                    timeout_ms,
                }
            }
            _ if !self.holds.is_empty() => {
                let (player, hold) = self.holds[self.rng.below(self.holds.len() as u64) as usize].clone();
                if self.rng.chance(50) {
                    Command::CommitWithdrawal { tx: self.tx(), player, hold }
                } else {
                    Command::CancelWithdrawal { tx: self.tx(), player, hold }
                }
            }
            _ => Command::Deposit {
                tx: self.tx(),
                player: p,
                currency: eur(),
                amount: amount(self.rng.range(100, 5_000)),
            },
        }
    }
}

/// The same command with another payload under the same id.
fn altered(cmd: &Command) -> Command {
    let mut c = cmd.clone();
    match &mut c {
        Command::Deposit { amount: a, .. }
        | Command::Bet { amount: a, .. }
        | Command::Win { amount: a, .. }
        | Command::Transfer { amount: a, .. }
        | Command::ReserveWithdrawal { amount: a, .. } => *a = amount(a.minor() + 1),
        Command::OpenAccount { currency, .. } => *currency = Currency::new("USD").expect("USD"),
        Command::CommitWithdrawal { tx, player, hold } => {
            c = Command::CancelWithdrawal { tx: tx.clone(), player: player.clone(), hold: hold.clone() }
        }
        Command::CancelWithdrawal { tx, player, hold } => {
            c = Command::CommitWithdrawal { tx: tx.clone(), player: player.clone(), hold: hold.clone() }
        }
        Command::Rollback { round, .. } => *round = id(RoundId::new(format!("{round}-x"))),
        Command::Adjust { amount: a, .. } => *a = amount(a.minor() + 1),
    }
    c
}

fn known(o: &Outcome) -> Known {
    match o {
        Outcome::Applied(r) | Outcome::Duplicate(r) => Known::Applied(r.seq),
        Outcome::Rejected(x) | Outcome::AlreadyFailed(x) => Known::Refused(x.code()),
        Outcome::Conflict => Known::Conflict,
    }
}

async fn submit(shared: &SharedRef, client: &LedgerClient, c: u32, shards: u32, cmd: Command) -> usize {
    let shard = cmd.player().map_or(0, |p| shard_for_player(p, shards).0);
    let k = match resolve(client, &cmd, 3).await {
        Some(Ok(o)) => known(&o),
        Some(Err(ClientError::Indeterminate(..))) | None => Known::Indeterminate,
        // Cross-shard transfers are refused before proposing; record them as refusals.
        Some(Err(_)) => Known::Refused("REFUSED_AT_EDGE"),
    };
    let mut s = shared.borrow_mut();
    s.event(&format!("c{c} {} {:?} -> {k:?}", cmd.tx(), cmd.kind()));
    s.history.ops.push(Op { shard, cmd, known: k, learned_at: tokio::time::Instant::now() });
    s.history.ops.len() - 1
}

/// One workload client.
pub(crate) async fn client(cfg: Arc<SimConfig>, n: u32, shared: SharedRef) {
    let client = loop {
        match LedgerClient::connect(addrs(&cfg), client_options()).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    let mut me = Client {
        n,
        rng: crate::rng::SimRng::fork(cfg.seed, 100 + u64::from(n)),
        players: (0..3).map(|k| id(PlayerId::new(format!("c{n}p{k}")))).collect(),
        bets: Vec::new(),
        holds: Vec::new(),
        sent: Vec::new(),
        next: 0,
    };
    for p in me.players.clone() {
        let open = Command::OpenAccount { tx: me.tx(), player: p.clone(), currency: eur() };
        submit(&shared, &client, n, cfg.shards, open).await;
        let dep = Command::Deposit { tx: me.tx(), player: p, currency: eur(), amount: amount(50_000) };
        submit(&shared, &client, n, cfg.shards, dep).await;
    }
    for _ in 0..cfg.ops_per_client {
        sleep_ms(me.rng.range(cfg.think_ms / 2, cfg.think_ms * 3 / 2)).await;
        let reuse = me.rng.below(100);
        if reuse < cfg.reuse_same_pct && !me.sent.is_empty() {
            // A retry of an earlier command, byte for byte: it must never apply twice.
            let i = me.sent[me.rng.below(me.sent.len() as u64) as usize];
            let (cmd, first) = {
                let s = shared.borrow();
                (s.history.ops[i].cmd.clone(), s.history.ops[i].known.clone())
            };
            let j = submit(&shared, &client, n, cfg.shards, cmd.clone()).await;
            let again = shared.borrow().history.ops[j].known.clone();
            let consistent = match (&first, &again) {
                (_, Known::Indeterminate) | (Known::Indeterminate, _) => !matches!(again, Known::Conflict),
                (a, b) => a == b,
            };
            if !consistent {
                shared
                    .borrow_mut()
                    .violate("retry-mismatch", format!("{}: first {first:?}, retry {again:?}", cmd.tx()));
            }
            continue;
        }
        if reuse < cfg.reuse_same_pct + cfg.reuse_other_pct && !me.sent.is_empty() {
            // An earlier id with another payload: refused as a conflict once the id is known.
            let i = me.sent[me.rng.below(me.sent.len() as u64) as usize];
            let (cmd, first) = {
                let s = shared.borrow();
                (s.history.ops[i].cmd.clone(), s.history.ops[i].known.clone())
            };
            let j = submit(&shared, &client, n, cfg.shards, altered(&cmd)).await;
            let got = shared.borrow().history.ops[j].known.clone();
            let definite_first = matches!(first, Known::Applied(_) | Known::Refused(_));
            if definite_first
                && !matches!(got, Known::Conflict | Known::Indeterminate | Known::Refused("REFUSED_AT_EDGE"))
            {
                shared
                    .borrow_mut()
                    .violate("double-apply", format!("{} reused with another payload gave {got:?}", cmd.tx()));
            }
            continue;
        }
        let cmd = me.fresh();
        let i = submit(&shared, &client, n, cfg.shards, cmd).await;
        me.sent.push(i);
        if me.rng.chance(10) {
            let p = me.player();
            let account = AccountRef::player(p.clone(), eur());
            if let Ok(view) = client.balance(&account, None).await {
                let mut s = shared.borrow_mut();
                s.event(&format!("c{n} read {account} at {} = {:?}", view.journal_len, view.balance));
                s.history.reads.push(Read {
                    shard: view.shard,
                    account: account.clone(),
                    journal_len: view.journal_len,
                    balance: view.balance,
                });
            }
            // The same account read at any one replica, leader or not, as it stands.
            let nodes = addrs(&cfg);
            let node = nodes[me.rng.below(nodes.len() as u64) as usize].clone();
            let shard = shard_for_player(&p, cfg.shards).0;
            let sent_at = tokio::time::Instant::now();
            if let Ok(view) = client.balance_at(&node, &account, shard).await {
                let mut s = shared.borrow_mut();
                s.event(&format!(
                    "c{n} local read {account} at {node}: seq {} = {:?}, stale by at most {:?} ms",
                    view.journal_len, view.balance, view.staleness_ms
                ));
                let read = Read { shard, account, journal_len: view.journal_len, balance: view.balance };
                s.history.local_reads.push(LocalRead { read, node, sent_at, staleness_ms: view.staleness_ms });
            }
        }
    }
    shared.borrow_mut().clients_done += 1;
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Waits for the clients and the last fault, then checks liveness and the whole ledger.
pub(crate) async fn audit(cfg: Arc<SimConfig>, shared: SharedRef) {
    let start = tokio::time::Instant::now();
    while shared.borrow().clients_done < cfg.clients
        || start.elapsed() < Duration::from_millis(cfg.last_fault_ms() + 500)
    {
        sleep_ms(100).await;
    }
    let addrs = addrs(&cfg);
    let client = match LedgerClient::connect(addrs.clone(), client_options()).await {
        Ok(c) => c,
        Err(e) => return shared.borrow_mut().violate("liveness", format!("no node answers after healing: {e}")),
    };
    // Liveness: every shard commits a new write within the bound.
    let healed = tokio::time::Instant::now();
    for shard in 0..cfg.shards {
        let player = (0..)
            .map(|k| id(PlayerId::new(format!("live{k}"))))
            .find(|p| shard_for_player(p, cfg.shards).0 == shard)
            .expect("some player per shard");
        let cmd = Command::OpenAccount { tx: id(TxId::new(format!("live-{shard}"))), player, currency: eur() };
        loop {
            if let Ok(Outcome::Applied(_) | Outcome::Duplicate(_)) = client.submit(cmd.clone()).await {
                break;
            }
            if healed.elapsed() > Duration::from_millis(cfg.liveness_ms) {
                return shared.borrow_mut().violate(
                    "liveness",
                    format!("shard {shard} did not commit within {} ms of healing", cfg.liveness_ms),
                );
            }
        }
    }
    // Every replica converges to one chain per shard.
    let mut chains: BTreeMap<u32, Vec<Entry>> = BTreeMap::new();
    for shard in 0..cfg.shards {
        let mut heads = Vec::new();
        loop {
            heads.clear();
            for a in &addrs {
                if let Ok(st) = client.status(a).await
                    && let Some(s) = st.shards.iter().find(|s| s.shard == shard)
                {
                    heads.push((s.journal_len, s.head_hash.clone()));
                }
            }
            if heads.len() == addrs.len() && heads.windows(2).all(|w| w[0] == w[1]) {
                break;
            }
            if healed.elapsed() > Duration::from_millis(cfg.liveness_ms * 2) {
                return shared
                    .borrow_mut()
                    .violate("liveness", format!("shard {shard} replicas did not converge: {heads:?}"));
            }
            sleep_ms(200).await;
        }
        for a in &addrs {
            match client.verify(a, shard).await {
                Ok(r) if r.ok() => {}
                other => {
                    return shared.borrow_mut().violate("chain-divergence", format!("{a} shard {shard}: {other:?}"));
                }
            }
        }
        let mut entries = Vec::new();
        loop {
            match client.entries(&addrs[0], shard, entries.len() as u64 + 1, 1000).await {
                Ok(page) if page.is_empty() => break,
                Ok(page) => entries.extend(page),
                Err(e) => return shared.borrow_mut().violate("liveness", format!("cannot read shard {shard}: {e}")),
            }
        }
        shared.borrow_mut().event(&format!("audit shard {shard}: {} entries, head {}", entries.len(), heads[0].1));
        chains.insert(shard, entries);
    }
    // Checked first, then reported: the history's borrow must end before the violation's.
    let checked = check_history(&shared.borrow().history, &chains);
    if let Err((check, detail)) = checked {
        shared.borrow_mut().violate(check, detail);
    }
    shared.borrow_mut().audit_done = true;
}

/// Every acknowledged command is in its shard's chain exactly once; refused ones are absent;
/// indeterminate ones at most once; reads match the chain at the sequence they reported; a
/// local read holds every write acknowledged longer than its reported staleness before it.
fn check_history(h: &History, chains: &BTreeMap<u32, Vec<Entry>>) -> Result<(), (&'static str, String)> {
    let mut count: BTreeMap<(u32, &str, u8), Vec<&Entry>> = BTreeMap::new();
    for (shard, entries) in chains {
        for e in entries {
            count.entry((*shard, e.tx.as_str(), e.kind as u8)).or_default().push(e);
        }
    }
    for op in &h.ops {
        let kind = entry_kind(&op.cmd) as u8;
        let found = count.get(&(op.shard, op.cmd.tx().as_str(), kind)).map_or(0, Vec::len);
        match &op.known {
            Known::Applied(Some(seq)) => {
                let at = count.get(&(op.shard, op.cmd.tx().as_str(), kind)).and_then(|v| v.first()).map(|e| e.seq);
                if found != 1 || at != Some(*seq) {
                    return Err((
                        "lost-ack",
                        format!("{} acknowledged at seq {seq}, found {found} times (at {at:?})", op.cmd.tx()),
                    ));
                }
            }
            Known::Applied(None) | Known::Indeterminate => {
                if found > 1 {
                    return Err(("double-apply", format!("{} is in the chain {found} times", op.cmd.tx())));
                }
            }
            Known::Refused(_) | Known::Conflict => {
                // A refused id may still have an entry from its first, applied payload.
                let first_applied =
                    h.ops.iter().any(|o| o.cmd.tx() == op.cmd.tx() && matches!(o.known, Known::Applied(_)));
                if found > 1
                    || (found == 1
                        && !first_applied
                        && !h.ops.iter().any(|o| o.cmd.tx() == op.cmd.tx() && o.known == Known::Indeterminate))
                {
                    return Err(("double-apply", format!("refused {} has {found} entries", op.cmd.tx())));
                }
            }
        }
    }
    for l in &h.local_reads {
        // What a node promises of a local read: every write acknowledged longer than the bound
        // before the read was sent is in it.
        let Some(ms) = l.staleness_ms else { continue };
        let Some(bound) = l.sent_at.checked_sub(Duration::from_millis(ms)) else { continue };
        let missing = h.ops.iter().find(|o| {
            o.shard == l.read.shard
                && o.learned_at < bound
                && matches!(o.known, Known::Applied(Some(seq)) if seq > l.read.journal_len)
        });
        if let Some(o) = missing {
            return Err((
                "stale-bound",
                format!(
                    "{} read at {} up to seq {}, stale by at most {ms} ms, lacks {} acknowledged {:?} before",
                    l.read.account,
                    l.node,
                    l.read.journal_len,
                    o.cmd.tx(),
                    l.sent_at - o.learned_at
                ),
            ));
        }
    }
    for r in h.reads.iter().chain(h.local_reads.iter().map(|l| &l.read)) {
        let Some(entries) = chains.get(&r.shard) else { continue };
        let at = entries
            .iter()
            .take(r.journal_len as usize)
            .rev()
            .find_map(|e| e.balances.iter().find(|(a, _)| *a == r.account).map(|(_, b)| *b));
        if at != r.balance {
            return Err((
                "stale-read",
                format!("{} read {:?} at seq {}, the chain says {at:?}", r.account, r.balance, r.journal_len),
            ));
        }
    }
    Ok(())
}
