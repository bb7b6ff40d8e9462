//! The on-disk state against the in-memory one: the same commands give the same outcomes, the
//! same entries and the same remembered ids, whatever the flush points; a state reopened after a
//! crash is exactly the state of its last flush.

use std::collections::BTreeSet;

use ledger_core::{
    Amount, ClusterTime, Command, Currency, HOLD_TIMEOUT_MAX_MS, Ledger, LedgerConfig, LedgerState, MemState, PlayerId,
    RoundId, ShardId, TxId, state_key_of,
};

use super::{DiskState, RetainedPart};

/// xorshift: the same seed gives the same commands.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A casino mix that reaches every path through the retained state: bets, wins and rollbacks
/// (some naming a bet that has not arrived yet, some naming their own id), retries and reused
/// ids with other contents, withdrawals held, committed, cancelled and left to expire.
pub(crate) fn commands(seed: u64, n: usize) -> Vec<Command> {
    let eur = Currency::new("EUR").unwrap();
    let pid = |i: usize| PlayerId::new(format!("p{i}")).unwrap();
    let amount = |a: i64| Amount::new(a).unwrap();
    let mut g = Gen(seed | 1);
    let players = 8;
    let mut cmds = Vec::new();
    for i in 0..players {
        cmds.push(Command::OpenAccount { tx: TxId::new(format!("open-{i}")).unwrap(), player: pid(i), currency: eur });
        cmds.push(Command::Deposit {
            tx: TxId::new(format!("dep-{i}")).unwrap(),
            player: pid(i),
            currency: eur,
            amount: amount(100_000),
        });
    }
    let mut bets: Vec<(usize, TxId, RoundId)> = Vec::new();
    let mut holds: Vec<(usize, TxId)> = Vec::new();
    for k in 0..n {
        let p = g.below(players);
        let tx = TxId::new(format!("t{k}")).unwrap();
        let round = RoundId::new(format!("r{}", g.below(n / 2 + 1))).unwrap();
        let cmd = match g.below(100) {
            0..5 => cmds[cmds.len() - 1 - g.below(cmds.len().min(400))].clone(),
            5..8 => {
                // An old id with different contents: a conflict while remembered, new after.
                let old = cmds[g.below(cmds.len())].tx().clone();
                Command::Deposit { tx: old, player: pid(p), currency: eur, amount: amount(7) }
            }
            8..45 => {
                bets.push((p, tx.clone(), round.clone()));
                Command::Bet { tx, player: pid(p), round, currency: eur, amount: amount(100) }
            }
            45..65 => match bets.get(g.below(bets.len().max(1))) {
                Some((p, _, round)) => {
                    Command::Win { tx, player: pid(*p), round: round.clone(), currency: eur, amount: amount(150) }
                }
                None => Command::Deposit { tx, player: pid(p), currency: eur, amount: amount(5) },
            },
            65..72 => match bets.get(g.below(bets.len().max(1))) {
                Some((p, bet, round)) => {
                    Command::Rollback { tx, player: pid(*p), round: round.clone(), bet: bet.clone() }
                }
                None => Command::Deposit { tx, player: pid(p), currency: eur, amount: amount(5) },
            },
            72..75 => {
                // Names a bet id that comes later (or never): leaves a tombstone.
                let bet = TxId::new(format!("t{}", k + 1 + g.below(5))).unwrap();
                Command::Rollback { tx, player: pid(p), round, bet }
            }
            75..76 => Command::Rollback { tx: tx.clone(), player: pid(p), round, bet: tx },
            76..84 => {
                holds.push((p, tx.clone()));
                Command::ReserveWithdrawal {
                    tx,
                    player: pid(p),
                    currency: eur,
                    amount: amount(30),
                    timeout_ms: 60_000 + g.below(3) as u64 * 3_600_000,
                }
            }
            84..88 => match holds.get(g.below(holds.len().max(1))) {
                Some((p, hold)) => Command::CommitWithdrawal { tx, player: pid(*p), hold: hold.clone() },
                None => Command::Deposit { tx, player: pid(p), currency: eur, amount: amount(5) },
            },
            88..92 => match holds.get(g.below(holds.len().max(1))) {
                Some((p, hold)) => Command::CancelWithdrawal { tx, player: pid(*p), hold: hold.clone() },
                None => Command::Deposit { tx, player: pid(p), currency: eur, amount: amount(5) },
            },
            _ => Command::Transfer { tx, from: pid(p), to: pid((p + 1) % players), currency: eur, amount: amount(3) },
        };
        cmds.push(cmd);
    }
    cmds
}

/// The shortest window a ledger allows, and a step that crosses it every ~300 commands, so ids
/// and rounds are forgotten many times in a run.
const WINDOW_MS: u64 = HOLD_TIMEOUT_MAX_MS;
pub(crate) const STEP_MS: u64 = WINDOW_MS / 300;

pub(crate) fn config() -> LedgerConfig {
    LedgerConfig { id_retention_ms: WINDOW_MS }
}

fn open(dir: &std::path::Path) -> (DiskState, Vec<u8>) {
    DiskState::open(dir, 8 << 20).expect("opens")
}

#[test]
fn on_disk_state_gives_the_same_outcomes_and_chain_as_in_memory() {
    for seed in [1u64, 7, 42, 1234] {
        let dir = tempfile::tempdir().unwrap();
        let (disk, meta) = open(dir.path());
        assert!(meta.is_empty(), "a new state has no metadata");
        let mut on_disk = Ledger::with_state(ShardId(1), config(), disk);
        let mut in_memory = Ledger::new(ShardId(1), config());
        let mut g = Gen(seed.wrapping_mul(31) | 1);
        let mut t = 1_700_000_000_000u64;
        let mut seen = BTreeSet::new();
        let cmds = commands(seed, 3_000);
        // A checkpoint's commit running on another thread while commands go on being applied,
        // and the command after which it is joined.
        let mut in_flight: Option<(std::thread::JoinHandle<super::CheckpointView>, usize)> = None;
        for (i, cmd) in cmds.iter().enumerate() {
            t += g.below(2 * STEP_MS as usize) as u64;
            if g.below(500) == 0 {
                // An idle spell: rounds active after they were queued expire at their first pop.
                t += WINDOW_MS / 2 + g.below(WINDOW_MS as usize) as u64;
            }
            let at = ClusterTime::from_millis(t);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let got = on_disk.apply(cmd, at, &mut a);
            let want = in_memory.apply(cmd, at, &mut b);
            assert_eq!(got, want, "seed {seed}, command {i}: {cmd:?}");
            assert_eq!(a, b, "seed {seed}, command {i}: entries differ");
            seen.insert(cmd.tx().clone());
            if i % 250 == 0 {
                // Every account, read from the buffer, a commit in flight and the engine.
                assert_eq!(on_disk.accounts(), in_memory.accounts(), "seed {seed}, command {i}: accounts");
            }
            if let Some((commit, due)) = in_flight.take() {
                if i < due {
                    in_flight = Some((commit, due));
                } else {
                    assert_eq!(commit.join().unwrap().user(), b"frozen");
                    if g.below(2) == 0 {
                        on_disk.state_mut().release_committed();
                    }
                }
            }
            // Flush at irregular points, sometimes after every command, sometimes after dozens;
            // or freeze and commit on another thread over the next few dozen commands.
            if in_flight.is_none() && g.below(20) == 0 {
                if g.below(2) == 0 {
                    on_disk.state_mut().flush(&(i as u64).to_be_bytes());
                } else {
                    let commit = on_disk.state_mut().freeze(b"frozen");
                    in_flight = Some((std::thread::spawn(move || commit.commit()), i + g.below(40)));
                }
            }
        }
        if let Some((commit, _)) = in_flight {
            commit.join().unwrap();
        }
        assert_eq!(on_disk.head(), in_memory.head(), "seed {seed}: chain heads differ");
        assert_eq!(on_disk.accounts(), in_memory.accounts());
        assert_eq!(on_disk.remembered_ids(), in_memory.remembered_ids());
        assert!(in_memory.remembered_ids() < seen.len(), "seed {seed}: the run must forget ids");
        for tx in &seen {
            assert_eq!(on_disk.recall(tx), in_memory.recall(tx), "seed {seed}: {tx}");
        }
        on_disk.check_invariants();
        // Most rounds saw no activity after they were queued and were forgotten unread; the
        // rest were read (activity, a filter's false positive) and the outcomes still agree.
        let (unread, read) = on_disk.state().round_forgets();
        assert!(unread > 0 && read > 0, "seed {seed}: round forgets unread {unread}, read {read}");
        // The same ids, rounds and queue, not only the same answers.
        on_disk.state_mut().flush(b"");
        assert_eq!(on_disk.state().checkpoint_view().export(), in_memory.to_image().into_parts().1, "seed {seed}");
        // And every account, though each flush wrote only those changed since the last.
        assert_eq!(on_disk.state().checkpoint_view().accounts(), in_memory.accounts(), "seed {seed}");
    }
}

/// Pops the whole queue of a state.
fn drain_queue(state: &mut impl LedgerState) -> Vec<(ClusterTime, ledger_core::Retained)> {
    std::iter::from_fn(|| state.pop_retained()).collect()
}

#[test]
fn a_reopened_state_is_exactly_its_last_flush() {
    let dir = tempfile::tempdir().unwrap();
    let cmds = commands(99, 4_000);
    let mut on_disk = Ledger::with_state(ShardId(2), config(), open(dir.path()).0);
    let mut in_memory = Ledger::new(ShardId(2), config());
    let mut checkpoint: Option<(Ledger<MemState>, Vec<u8>)> = None;
    let mut t = 1_700_000_000_000u64;
    for (i, cmd) in cmds.iter().enumerate() {
        t += STEP_MS;
        let at = ClusterTime::from_millis(t);
        on_disk.apply(cmd, at, &mut Vec::new());
        in_memory.apply(cmd, at, &mut Vec::new());
        if i % 97 == 0 {
            let meta = format!("applied {i}").into_bytes();
            on_disk.state_mut().flush(&meta);
            checkpoint = Some((in_memory.clone(), meta));
        }
    }
    // The crash: whatever was written since the last flush is lost with the process.
    drop(on_disk);
    let (mut reopened, meta) = open(dir.path());
    let (mut expected, expected_meta) = checkpoint.expect("flushed at least once");
    assert_eq!(meta, expected_meta, "the metadata names the flush the state is at");
    assert_eq!(reopened.remembered_ids(), expected.remembered_ids());
    let mut present = 0;
    for cmd in &cmds {
        let key = state_key_of(cmd.tx());
        assert_eq!(reopened.id(key), expected.state().id(key), "{}", cmd.tx());
        present += usize::from(reopened.id(key).is_some());
    }
    assert!(present > 0, "some ids are remembered at the checkpoint");
    // The run sealed filters and dropped old ones, and the reopened state read them back.
    assert!(reopened.buckets.len() > 2, "sealed filters were reloaded");
    assert!(reopened.buckets[0].first_seq > 0, "the oldest filters were dropped");
    reopened.check_invariants();
    let queue = drain_queue(&mut reopened);
    assert!(!queue.is_empty());
    assert_eq!(queue, drain_queue(expected.state_mut()), "the forgetting queue survives in order");
}

#[test]
fn a_state_reopened_at_its_last_flush_goes_on_exactly_like_the_ledger_it_was() {
    // A restart: the state is its last flush, and the log is applied again from there. The
    // bucket open at that flush had its touched rounds in memory only, so its round items are
    // read when they pop; sealed buckets' touched filters were stored and are used.
    let dir = tempfile::tempdir().unwrap();
    let cmds = commands(77, 6_000);
    let at = |i: usize| ClusterTime::from_millis(1_700_000_000_000 + i as u64 * STEP_MS);
    let mut on_disk = Ledger::with_state(ShardId(4), config(), open(dir.path()).0);
    let mut in_memory = Ledger::new(ShardId(4), config());
    let mut checkpoint = None;
    for (i, cmd) in cmds[..4_000].iter().enumerate() {
        on_disk.apply(cmd, at(i), &mut Vec::new());
        in_memory.apply(cmd, at(i), &mut Vec::new());
        if i % 89 == 0 {
            on_disk.state_mut().flush(b"");
            checkpoint = Some((i + 1, in_memory.clone()));
        }
    }
    drop(on_disk);
    let (from, mut expected) = checkpoint.expect("flushed");
    // The accounts as of the flush come back from the state, not from the image (the writes
    // after the flush are gone with the crash): the ledger reads them there.
    let state = open(dir.path()).0;
    assert_eq!(state.stored_accounts(), expected.accounts(), "the store holds the flush's accounts");
    let mut reopened = Ledger::from_core_image(expected.core_image_without_accounts(), state);
    assert_eq!(reopened.accounts(), expected.accounts());
    assert!(
        reopened.state().buckets.iter().rev().skip(1).any(|b| b.touched.is_some()),
        "stored touched filters reload"
    );
    assert!(reopened.state().buckets.back().unwrap().touched.is_none(), "the open bucket's touches are unknown");
    for (i, cmd) in cmds.iter().enumerate().skip(from) {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        assert_eq!(reopened.apply(cmd, at(i), &mut a), expected.apply(cmd, at(i), &mut b), "command {i}: {cmd:?}");
        assert_eq!(a, b, "command {i}: entries differ");
        if i % 97 == 0 {
            reopened.state_mut().flush(b"");
        }
    }
    assert_eq!(reopened.head(), expected.head());
    assert_eq!(reopened.remembered_ids(), expected.remembered_ids());
    let (unread, read) = reopened.state().round_forgets();
    assert!(unread > 0 && read > 0, "round forgets after the restart: unread {unread}, read {read}");
    reopened.state_mut().flush(b"");
    assert_eq!(reopened.state().checkpoint_view().export(), expected.to_image().into_parts().1);
    reopened.check_invariants();
}

#[test]
fn the_queue_reads_ahead_across_flushes_in_order() {
    // More items than one read-ahead, popped while others are pushed, with flushes between.
    let dir = tempfile::tempdir().unwrap();
    let (mut disk, _) = open(dir.path());
    let mut mem = MemState::default();
    let mut g = Gen(5);
    let mut t = 0u64;
    for round in 0..20 {
        for _ in 0..g.below(3 * super::QUEUE_READ_AHEAD) {
            t += g.below(3) as u64;
            let item = ledger_core::Retained::Round(u128::from(g.next()));
            disk.push_retained(ClusterTime::from_millis(t), item);
            mem.push_retained(ClusterTime::from_millis(t), item);
        }
        for _ in 0..g.below(3 * super::QUEUE_READ_AHEAD) {
            assert_eq!(disk.first_retained(), mem.first_retained(), "round {round}");
            assert_eq!(disk.pop_retained(), mem.pop_retained(), "round {round}");
        }
        if g.below(2) == 0 {
            disk.flush(b"");
        }
    }
    disk.flush(b"");
    drop(disk);
    let (mut reopened, _) = open(dir.path());
    assert_eq!(drain_queue(&mut reopened), drain_queue(&mut mem));
}

#[test]
fn a_checkpoint_read_out_and_imported_elsewhere_goes_on_exactly_like_the_original() {
    // A peer's snapshot of an on-disk state: the view of its last flush read out as an image's
    // retained part, imported into a fresh state, which then applies what the original applies.
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let cmds = commands(2024, 4_000);
    let (first, rest) = cmds.split_at(2_500);
    let mut on_disk = Ledger::with_state(ShardId(3), config(), open(src.path()).0);
    let mut in_memory = Ledger::new(ShardId(3), config());
    let mut t = 1_700_000_000_000u64;
    for cmd in first {
        t += STEP_MS;
        let at = ClusterTime::from_millis(t);
        on_disk.apply(cmd, at, &mut Vec::new());
        in_memory.apply(cmd, at, &mut Vec::new());
    }
    on_disk.state_mut().flush(b"checkpoint");
    let view = on_disk.state().checkpoint_view();
    // Writes after the checkpoint, flushed too, do not change what the view reads.
    on_disk.apply(&rest[0], ClusterTime::from_millis(t + 1), &mut Vec::new());
    on_disk.state_mut().flush(b"later");
    assert_eq!(view.user(), b"checkpoint");
    let exported = view.export();
    let (core, retained) = in_memory.to_image().into_parts();
    assert_eq!(exported, retained, "the view reads out exactly the in-memory state at the checkpoint");
    assert_eq!(view.accounts(), core.accounts(), "and its accounts");
    assert!(exported.ids.len() > 100 && !exported.rounds.is_empty() && !exported.retention.is_empty());
    // Streamed part by part from the files, as a snapshot for a peer is, each part encodes as
    // the image's does (queue items popped before the checkpoint left out).
    let parts = [
        (RetainedPart::Ids, postcard::to_allocvec(&exported.ids).unwrap()),
        (RetainedPart::Rounds, postcard::to_allocvec(&exported.rounds).unwrap()),
        (RetainedPart::Retention, postcard::to_allocvec(&exported.retention).unwrap()),
    ];
    for (part, want) in parts {
        let mut got = Vec::new();
        view.write_part(part, &mut |b| {
            got.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        assert_eq!(got, want, "{part:?} streamed");
    }

    let (mut imported, _) = open(dst.path());
    // Imported in bulk (sorted runs straight into the engine's files), which needs the rows in
    // key order: a peer's image is sorted again rather than trusted to be.
    let mut shuffled = exported.clone();
    shuffled.ids.reverse();
    shuffled.rounds.reverse();
    imported.import(shuffled);
    imported.import_accounts(core.accounts());
    imported.flush(b"installed");
    assert_eq!(imported.checkpoint_view().accounts(), core.accounts());
    // Goes on both as imported (rounds active after their item was queued were marked touched
    // by the import) and reopened (the open bucket's touches unknown).
    let mut without_accounts = core.clone();
    without_accounts.take_accounts();
    let mut direct = Ledger::from_core_image(without_accounts, imported);
    let reopened_dir = tempfile::tempdir().unwrap();
    let (mut second, _) = open(reopened_dir.path());
    second.import(exported.clone());
    second.import_accounts(core.accounts());
    second.flush(b"installed");
    drop(second);
    let (reopened, meta) = open(reopened_dir.path());
    assert_eq!(meta, b"installed");
    assert_eq!(reopened.stored_accounts(), core.accounts());
    let mut installed = Ledger::from_core_image(in_memory.core_image_without_accounts(), reopened);
    for (i, cmd) in rest.iter().enumerate() {
        t += STEP_MS;
        let at = ClusterTime::from_millis(t);
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        let want = in_memory.apply(cmd, at, &mut b);
        assert_eq!(installed.apply(cmd, at, &mut a), want, "command {i}: {cmd:?}");
        assert_eq!(direct.apply(cmd, at, &mut c), want, "command {i}: {cmd:?}");
        assert_eq!(a, b, "command {i}: entries differ");
        assert_eq!(c, b, "command {i}: entries differ");
        if i % 25 == 0 && i <= 400 {
            // While the imported items pop, what is remembered is the same, not only the answers.
            direct.state_mut().flush(b"");
            let want = in_memory.to_image().into_parts().1;
            assert_eq!(direct.state().checkpoint_view().export(), want, "command {i}: imported, then applied");
        }
    }
    assert_eq!(installed.head(), in_memory.head());
    assert_eq!(direct.head(), in_memory.head());
    assert_eq!(installed.remembered_ids(), in_memory.remembered_ids());
    assert_eq!(direct.remembered_ids(), in_memory.remembered_ids());
    assert!(direct.state().round_forgets().0 > 0, "imported rounds not touched since are forgotten unread");
    // Not only the same answers: the same ids, rounds and queue.
    direct.state_mut().flush(b"");
    installed.state_mut().flush(b"");
    let (_, want) = in_memory.to_image().into_parts();
    assert_eq!(direct.state().checkpoint_view().export(), want, "imported, then applied");
    assert_eq!(installed.state().checkpoint_view().export(), want, "imported, reopened, then applied");
    assert_eq!(installed.state().checkpoint_view().accounts(), in_memory.accounts());
    assert_eq!(direct.state().checkpoint_view().accounts(), in_memory.accounts());
    installed.check_invariants();
    direct.check_invariants();
}

/// The import's key directory finds exactly the keys of its list, at their positions, for lists
/// of every small size and for digests as well as for keys bunched in one slot.
#[test]
fn a_key_directory_finds_exactly_its_keys() {
    use super::KeyDirectory;
    let mut g = Gen(7);
    for n in [0usize, 1, 2, 3, 4, 5, 7, 8, 9, 63, 64, 65, 1000, 4096, 20_000] {
        for bunched in [false, true] {
            let key = |g: &mut Gen| {
                let k = (u128::from(g.next()) << 64) | u128::from(g.next());
                if bunched { k >> 100 } else { k }
            };
            let keys: Vec<u128> = (0..n).map(|_| key(&mut g)).collect::<BTreeSet<_>>().into_iter().collect();
            let dir = KeyDirectory::new(keys.iter().copied());
            for (i, k) in keys.iter().enumerate() {
                assert_eq!(dir.find(&keys, *k, |k| *k), Some(i), "n={n} bunched={bunched}");
            }
            for _ in 0..1000 {
                let k = key(&mut g);
                assert_eq!(dir.find(&keys, k, |k| *k), keys.binary_search(&k).ok(), "n={n} bunched={bunched}");
            }
            for k in [0, u128::MAX] {
                assert_eq!(dir.find(&keys, k, |k| *k), keys.binary_search(&k).ok());
            }
        }
    }
}
