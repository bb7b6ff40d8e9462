//! Golden bytes for everything the ledger's types put on disk or on the wire.
//!
//! Commands reach the write-ahead log (inside Raft entries) and the node API; outcomes and
//! rejections the node API and, remembered under their ids, snapshots; entries the journal (in
//! their canonical encoding), the node API and every hash in the chain; the ledger image is the
//! body of a snapshot. All but the canonical entry encoding are postcard, which tags an enum
//! variant by its position and a `#[repr(u8)]` enum (serde_repr) by its discriminant.
//!
//! Each test pins bytes. One that fails means an encoding changed: if that was not the
//! intent, undo it; if it was, bump the version of every format the type reaches (see
//! `docs/ledger-format.md`) and update the pin. The tag functions match without a wildcard, so
//! adding a variant does not compile until it has a tag here.

use ledger_core::{
    AccountKind, AccountRef, Amount, Balance, ClusterTime, Command, CommandKind, Currency, Entry, EntryKind, IdField,
    Ledger, LedgerConfig, Outcome, PlayerId, Reason, Receipt, Rejection, RoundId, ShardId, TxId,
};
use sha2::{Digest, Sha256};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn postcard<T: serde::Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("serialises")
}

#[track_caller]
fn pinned(what: &str, bytes: &[u8], expected: &str) {
    assert_eq!(
        hex(bytes),
        expected,
        "the encoding of {what} changed: bump the format version it belongs to (docs/ledger-format.md) and update the pin"
    );
}

#[track_caller]
fn pinned_digest(what: &str, bytes: &[u8], expected: &str) {
    pinned(what, &Sha256::digest(bytes), expected);
}

fn eur() -> Currency {
    Currency::new("EUR").unwrap()
}
fn tx(s: &str) -> TxId {
    TxId::new(s).unwrap()
}
fn player(s: &str) -> PlayerId {
    PlayerId::new(s).unwrap()
}
fn round(s: &str) -> RoundId {
    RoundId::new(s).unwrap()
}
fn amount(v: i64) -> Amount {
    Amount::new(v).unwrap()
}

/// The tag of each command variant: its position, which `CommandKind`'s discriminant mirrors.
fn command_tag(c: &Command) -> u8 {
    match c {
        Command::OpenAccount { .. } => 0,
        Command::Deposit { .. } => 1,
        Command::ReserveWithdrawal { .. } => 2,
        Command::CommitWithdrawal { .. } => 3,
        Command::CancelWithdrawal { .. } => 4,
        Command::Bet { .. } => 5,
        Command::Win { .. } => 6,
        Command::Rollback { .. } => 7,
        Command::Transfer { .. } => 8,
        Command::Adjust { .. } => 9,
    }
}

fn account_tag(a: &AccountRef) -> u8 {
    match a {
        AccountRef::Player { .. } => 0,
        AccountRef::House(_) => 1,
        AccountRef::External(_) => 2,
    }
}

fn outcome_tag(o: &Outcome) -> u8 {
    match o {
        Outcome::Applied(_) => 0,
        Outcome::Duplicate(_) => 1,
        Outcome::Rejected(_) => 2,
        Outcome::AlreadyFailed(_) => 3,
        Outcome::Conflict => 4,
    }
}

fn rejection_tag(r: &Rejection) -> u8 {
    match r {
        Rejection::AmountNotPositive => 0,
        Rejection::AmountTooLarge => 1,
        Rejection::InvalidId(_) => 2,
        Rejection::UnknownCurrency => 3,
        Rejection::InvalidReason => 4,
        Rejection::SameAccount => 5,
        Rejection::InvalidHoldTimeout => 6,
        Rejection::UnknownAccount => 7,
        Rejection::AccountExists => 8,
        Rejection::CurrencyMismatch => 9,
        Rejection::InsufficientFunds => 10,
        Rejection::BalanceOverflow => 11,
        Rejection::UnknownHold => 12,
        Rejection::HoldSettled => 13,
        Rejection::UnknownRound => 14,
        Rejection::RoundRolledBack => 15,
        Rejection::BetRolledBack => 16,
        Rejection::BetAlreadyRolledBack => 17,
        Rejection::BetMismatch => 18,
        Rejection::NotABet => 19,
    }
}

fn id_field_tag(f: IdField) -> u8 {
    match f {
        IdField::Tx => 0,
        IdField::Player => 1,
        IdField::Round => 2,
    }
}

fn command_kind_tag(k: CommandKind) -> u8 {
    match k {
        CommandKind::OpenAccount => 0,
        CommandKind::Deposit => 1,
        CommandKind::ReserveWithdrawal => 2,
        CommandKind::CommitWithdrawal => 3,
        CommandKind::CancelWithdrawal => 4,
        CommandKind::Bet => 5,
        CommandKind::Win => 6,
        CommandKind::Rollback => 7,
        CommandKind::Transfer => 8,
        CommandKind::Adjust => 9,
    }
}

fn account_kind_tag(k: AccountKind) -> u8 {
    match k {
        AccountKind::Player => 0,
        AccountKind::House => 1,
        AccountKind::External => 2,
    }
}

/// The values of `docs/ledger-format.md`'s kind table.
fn entry_kind_tag(k: EntryKind) -> u8 {
    match k {
        EntryKind::Open => 1,
        EntryKind::Deposit => 2,
        EntryKind::WithdrawalReserve => 3,
        EntryKind::WithdrawalCommit => 4,
        EntryKind::WithdrawalCancel => 5,
        EntryKind::WithdrawalExpire => 6,
        EntryKind::Bet => 7,
        EntryKind::Win => 8,
        EntryKind::Rollback => 9,
        EntryKind::Transfer => 10,
        EntryKind::Adjustment => 11,
    }
}

/// One of each command, with its pinned postcard encoding.
fn commands() -> Vec<(Command, &'static str)> {
    let (alice, bob) = (player("alice"), player("bob"));
    vec![
        (Command::OpenAccount { tx: tx("o1"), player: alice.clone(), currency: eur() }, "00026f3105616c69636503455552"),
        (
            Command::Deposit { tx: tx("d1"), player: alice.clone(), currency: eur(), amount: amount(10_000) },
            "0102643105616c69636503455552904e",
        ),
        (
            Command::ReserveWithdrawal {
                tx: tx("w1"),
                player: alice.clone(),
                currency: eur(),
                amount: amount(2_500),
                timeout_ms: 900_000,
            },
            "0202773105616c69636503455552c413a0f736",
        ),
        (
            Command::CommitWithdrawal { tx: tx("wc1"), player: alice.clone(), hold: tx("w1") },
            "030377633105616c696365027731",
        ),
        (
            Command::CancelWithdrawal { tx: tx("wx1"), player: alice.clone(), hold: tx("w1") },
            "040377783105616c696365027731",
        ),
        (
            Command::Bet {
                tx: tx("b1"),
                player: alice.clone(),
                round: round("r1"),
                currency: eur(),
                amount: amount(150),
            },
            "0502623105616c696365027231034555529601",
        ),
        (
            Command::Win {
                tx: tx("v1"),
                player: alice.clone(),
                round: round("r1"),
                currency: eur(),
                amount: amount(300),
            },
            "0602763105616c69636502723103455552ac02",
        ),
        (
            Command::Rollback { tx: tx("rb1"), player: alice.clone(), round: round("r1"), bet: tx("b1") },
            "070372623105616c696365027231026231",
        ),
        (
            Command::Transfer { tx: tx("t1"), from: alice.clone(), to: bob, currency: eur(), amount: amount(1) },
            "0802743105616c69636503626f620345555201",
        ),
        (
            Command::Adjust {
                tx: tx("a1"),
                debit: AccountRef::House(eur()),
                credit: AccountRef::player(alice, eur()),
                currency: eur(),
                amount: amount(42),
                reason: Reason::new("ticket #7").unwrap(),
            },
            "0902613101034555520005616c69636503455552034555522a097469636b6574202337",
        ),
    ]
}

#[test]
fn every_command_encodes_as_pinned_and_its_kind_matches_its_tag() {
    let all = commands();
    let mut tags: Vec<u8> = all.iter().map(|(c, _)| command_tag(c)).collect();
    tags.dedup();
    assert_eq!(tags, (0..10).collect::<Vec<u8>>(), "one sample of every command, in order");
    for (cmd, expected) in &all {
        let bytes = postcard(cmd);
        assert_eq!(bytes[0], command_tag(cmd), "{cmd:?}: postcard's tag is the variant's position");
        assert_eq!(cmd.kind() as u8, command_tag(cmd), "{cmd:?}: its kind's discriminant is its tag");
        assert_eq!(command_kind_tag(cmd.kind()), command_tag(cmd));
        pinned(&format!("{cmd:?}"), &bytes, expected);
        assert_eq!(&postcard::from_bytes::<Command>(&bytes).unwrap(), cmd);
    }
}

#[test]
fn command_fingerprints_are_pinned() {
    // Fingerprints are stored in snapshots: a changed fingerprint makes a retry after a restart
    // look like a conflicting reuse of its id.
    let digest: Vec<u8> = commands().iter().flat_map(|(c, _)| c.fingerprint()).collect();
    pinned_digest("command fingerprints", &digest, "bfc4399b2824e0085e0d79cd00ca7c699ab05acaa4114f4f1451317a7c3f1591");
}

#[test]
fn every_account_encodes_as_pinned() {
    let all = [
        (AccountRef::player(player("alice"), eur()), "0005616c69636503455552"),
        (AccountRef::House(eur()), "0103455552"),
        (AccountRef::External(eur()), "0203455552"),
    ];
    for (account, expected) in &all {
        let bytes = postcard(account);
        assert_eq!(bytes[0], account_tag(account));
        assert_eq!(account_kind_tag(account.kind()), account_tag(account), "the kind's discriminant is the tag");
        assert_eq!(account.kind() as u8, account_tag(account));
        pinned(&format!("{account:?}"), &bytes, expected);
    }
    for kind in [AccountKind::Player, AccountKind::House, AccountKind::External] {
        assert_eq!(postcard(&kind), [account_kind_tag(kind)]);
    }
}

#[test]
fn every_rejection_encodes_as_its_tag() {
    let all = [
        Rejection::AmountNotPositive,
        Rejection::AmountTooLarge,
        Rejection::InvalidId(IdField::Tx),
        Rejection::InvalidId(IdField::Player),
        Rejection::InvalidId(IdField::Round),
        Rejection::UnknownCurrency,
        Rejection::InvalidReason,
        Rejection::SameAccount,
        Rejection::InvalidHoldTimeout,
        Rejection::UnknownAccount,
        Rejection::AccountExists,
        Rejection::CurrencyMismatch,
        Rejection::InsufficientFunds,
        Rejection::BalanceOverflow,
        Rejection::UnknownHold,
        Rejection::HoldSettled,
        Rejection::UnknownRound,
        Rejection::RoundRolledBack,
        Rejection::BetRolledBack,
        Rejection::BetAlreadyRolledBack,
        Rejection::BetMismatch,
        Rejection::NotABet,
    ];
    for r in all {
        let expected = match r {
            Rejection::InvalidId(field) => vec![rejection_tag(&r), id_field_tag(field)],
            _ => vec![rejection_tag(&r)],
        };
        assert_eq!(postcard(&r), expected, "{r:?}");
        assert_eq!(postcard::from_bytes::<Rejection>(&expected).unwrap(), r);
    }
}

#[test]
fn every_outcome_encodes_as_pinned() {
    let receipt = Receipt {
        seq: Some(7),
        at: ClusterTime::from_millis(1_700_000_000_000),
        balances: vec![
            (AccountRef::player(player("alice"), eur()), Balance { posted: 9_850, held: 2_500 }),
            (AccountRef::House(eur()), Balance { posted: -150, held: 0 }),
        ],
    };
    let all = [
        (Outcome::Applied(receipt.clone()), "00010780d095ffbc31020005616c69636503455552f4990188270103455552ab0200"),
        (
            Outcome::Duplicate(Receipt { seq: None, ..receipt }),
            "010080d095ffbc31020005616c69636503455552f4990188270103455552ab0200",
        ),
        (Outcome::Rejected(Rejection::InsufficientFunds), "020a"),
        (Outcome::AlreadyFailed(Rejection::InvalidId(IdField::Round)), "030202"),
        (Outcome::Conflict, "04"),
    ];
    for (outcome, expected) in &all {
        let bytes = postcard(outcome);
        assert_eq!(bytes[0], outcome_tag(outcome));
        pinned(&format!("{outcome:?}"), &bytes, expected);
    }
}

/// A ledger that has been through every kind of command, one rejected command and one
/// rollback that arrived before its bet: every kind of state a snapshot holds.
fn busy_ledger() -> (Ledger, Vec<Entry>) {
    let mut ledger = Ledger::new(ShardId(3), LedgerConfig::default());
    let mut entries = Vec::new();
    let mut at = 1_700_000_000_000u64;
    let mut run = |ledger: &mut Ledger, cmd: Command| {
        at += 1_000;
        ledger.apply(&cmd, ClusterTime::from_millis(at), &mut entries)
    };
    for (cmd, _) in commands() {
        run(&mut ledger, cmd);
    }
    let (alice, bob) = (player("alice"), player("bob"));
    run(&mut ledger, Command::OpenAccount { tx: tx("o2"), player: bob.clone(), currency: eur() });
    run(
        &mut ledger,
        Command::Transfer { tx: tx("t2"), from: alice.clone(), to: bob, currency: eur(), amount: amount(5) },
    );
    let refused = run(
        &mut ledger,
        Command::Bet {
            tx: tx("b2"),
            player: alice.clone(),
            round: round("r2"),
            currency: eur(),
            amount: amount(1 << 40),
        },
    );
    assert_eq!(refused, Outcome::Rejected(Rejection::InsufficientFunds));
    run(&mut ledger, Command::Rollback { tx: tx("rb3"), player: alice.clone(), round: round("r3"), bet: tx("b3") });
    run(
        &mut ledger,
        Command::ReserveWithdrawal {
            tx: tx("w2"),
            player: alice,
            currency: eur(),
            amount: amount(100),
            timeout_ms: 1_000,
        },
    );
    // Let the last hold expire, for a WithdrawalExpire entry.
    run(
        &mut ledger,
        Command::ReserveWithdrawal {
            tx: tx("w3"),
            player: player("alice"),
            currency: eur(),
            amount: amount(100),
            timeout_ms: 900_000,
        },
    );
    run(&mut ledger, Command::CancelWithdrawal { tx: tx("wx3"), player: player("alice"), hold: tx("w3") });
    ledger.tick(ClusterTime::from_millis(at + 60_000), &mut entries);
    ledger.check_invariants();
    (ledger, entries)
}

#[test]
fn every_entry_kind_encodes_as_pinned() {
    let (_, entries) = busy_ledger();
    let mut kinds: Vec<u8> = entries.iter().map(|e| entry_kind_tag(e.kind)).collect();
    kinds.sort_unstable();
    kinds.dedup();
    assert_eq!(kinds, (1..=11).collect::<Vec<u8>>(), "the busy ledger wrote every kind of entry");
    for e in &entries {
        assert_eq!(e.kind as u8, entry_kind_tag(e.kind));
        assert_eq!(postcard(&e.kind), [entry_kind_tag(e.kind)], "serde writes the discriminant");
        assert_eq!(e.encode()[0], ledger_core::ENTRY_FORMAT_VERSION);
    }
    // One entry in full, then every entry's hash: SHA-256 of its canonical encoding, so the
    // hashes pin every byte of every entry.
    let bet = entries.iter().find(|e| e.kind == EntryKind::Bet).unwrap();
    pinned(
        "a bet entry's canonical encoding",
        &bet.encode(),
        "010000000300000000000000050000018bcfe57f70070262310005616c696365455552014555520000000000000096020005616c6963654555520000000000001cb600000000000000000145555200000000000000960000000000000000027231000000e5001d631919b8defa6a763363c545bf51d861a4acf23814664ba20960cd79ee",
    );
    let hashes: Vec<String> = entries.iter().map(|e| hex(&e.hash)).collect();
    pinned_digest(
        "the chain of entry hashes",
        hashes.concat().as_bytes(),
        "9fef86fc9195877f71a0af20e56b6f594ee9db9a1225e1789ae0839fbc73f782",
    );
    // And as the node API carries them (postcard).
    pinned_digest(
        "entries as postcard",
        &postcard(&entries),
        "591d17bc6bb8aad6e18c99f6ac49e31d7824de656eb6cf27c6da6585e759da6e",
    );
}

#[test]
fn a_ledger_image_encodes_as_pinned() {
    let (ledger, _) = busy_ledger();
    let image = ledger.to_image();
    let bytes = postcard(&image);
    pinned_digest(
        "a ledger image (a snapshot's body)",
        &bytes,
        "95b21f91ff691d06712ec5fa676b2aa11c4aef7c8e527c4d552656437b72f6b9",
    );
    let back: ledger_core::LedgerImage = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, image);
    assert_eq!(postcard(&Ledger::from_image(back).to_image()), bytes, "decoding and encoding again is the identity");
}
