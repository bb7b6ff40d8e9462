//! Ledger tests. Scripts run through one [`check`] helper: each line is a command and the
//! outcome it must produce. After every line the whole chain is re-verified from its entries and
//! compared with the ledger's balances, so every script also tests the invariants and `verify`.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::verify::Verifier;

fn cur(s: &str) -> Currency {
    Currency::new(s).unwrap()
}

fn account(s: &str) -> AccountRef {
    let parts: Vec<&str> = s.split(':').collect();
    match parts.as_slice() {
        ["player", p, c] => AccountRef::player(PlayerId::new(*p).unwrap(), cur(c)),
        ["house", c] => AccountRef::House(cur(c)),
        ["external", c] => AccountRef::External(cur(c)),
        _ => panic!("bad account {s}"),
    }
}

fn render_account(a: &AccountRef) -> String {
    match a {
        AccountRef::Player { player, currency } => format!("{player}:{currency}"),
        AccountRef::House(c) => format!("house:{c}"),
        AccountRef::External(c) => format!("external:{c}"),
    }
}

fn render_receipt(r: &Receipt) -> String {
    let mut s = match r.seq {
        Some(seq) => format!("#{seq}"),
        None => "(no entry)".to_string(),
    };
    for (a, b) in &r.balances {
        s.push_str(&format!(" {}={}", render_account(a), b.posted));
        if b.held != 0 {
            s.push_str(&format!("(held {})", b.held));
        }
    }
    s
}

fn render(o: &Outcome) -> String {
    match o {
        Outcome::Applied(r) => format!("applied {}", render_receipt(r)),
        Outcome::Duplicate(r) => format!("duplicate {}", render_receipt(r)),
        Outcome::Rejected(x) => format!("rejected {}", x.code()),
        Outcome::AlreadyFailed(x) => format!("already-failed {}", x.code()),
        Outcome::Conflict => "conflict".to_string(),
    }
}

/// Builds a command from script words, validating like the API edge does.
fn parse(words: &[&str]) -> Result<Command, Rejection> {
    let amount = |s: &str| Amount::new(s.parse::<i64>().unwrap());
    let tx = TxId::new(words[1])?;
    Ok(match words[0] {
        "open" => Command::OpenAccount { tx, player: PlayerId::new(words[2])?, currency: Currency::new(words[3])? },
        "deposit" => Command::Deposit {
            tx,
            player: PlayerId::new(words[2])?,
            currency: Currency::new(words[3])?,
            amount: amount(words[4])?,
        },
        "reserve" => Command::ReserveWithdrawal {
            tx,
            player: PlayerId::new(words[2])?,
            currency: Currency::new(words[3])?,
            amount: amount(words[4])?,
            timeout_ms: words[5].parse().unwrap(),
        },
        "commit" => Command::CommitWithdrawal { tx, player: PlayerId::new(words[2])?, hold: TxId::new(words[3])? },
        "cancel" => Command::CancelWithdrawal { tx, player: PlayerId::new(words[2])?, hold: TxId::new(words[3])? },
        "bet" | "win" => {
            let (player, round) = (PlayerId::new(words[2])?, RoundId::new(words[3])?);
            let (currency, amount) = (Currency::new(words[4])?, amount(words[5])?);
            if words[0] == "bet" {
                Command::Bet { tx, player, round, currency, amount }
            } else {
                Command::Win { tx, player, round, currency, amount }
            }
        }
        "rollback" => Command::Rollback {
            tx,
            player: PlayerId::new(words[2])?,
            round: RoundId::new(words[3])?,
            bet: TxId::new(words[4])?,
        },
        "transfer" => Command::Transfer {
            tx,
            from: PlayerId::new(words[2])?,
            to: PlayerId::new(words[3])?,
            currency: Currency::new(words[4])?,
            amount: amount(words[5])?,
        },
        "adjust" => Command::Adjust {
            tx,
            debit: account(words[2]),
            credit: account(words[3]),
            currency: Currency::new(words[4])?,
            amount: amount(words[5])?,
            reason: Reason::new(words[6..].join(" "))?,
        },
        other => panic!("unknown command {other}"),
    })
}

/// Runs a script of `command => expected outcome` lines against a fresh ledger.
///
/// `time +MS` advances cluster time; `tick +MS` advances it and applies a tick. Extra entries a
/// line produced (hold expiries) are shown as `[+kind tx]`. Input errors show as `invalid CODE`.
fn check(script: &str) {
    let mut ledger = Ledger::new(ShardId(7), LedgerConfig::default());
    let mut chain: Vec<Entry> = Vec::new();
    let mut now = 1_700_000_000_000u64;
    for (n, line) in script.lines().map(str::trim).filter(|l| !l.is_empty()).enumerate() {
        let (input, expected) = line.split_once("=>").map_or((line, ""), |(i, e)| (i.trim(), e.trim()));
        let words: Vec<&str> = input.split_whitespace().collect();
        let before = ledger.to_image();
        let mut sink = Vec::new();
        let got = match words[0] {
            "time" | "tick" => {
                now += words[1].trim_start_matches('+').parse::<u64>().unwrap();
                if words[0] == "tick" {
                    ledger.tick(ClusterTime::from_millis(now), &mut sink);
                }
                String::new()
            }
            _ => match parse(&words) {
                Ok(cmd) => render(&ledger.apply(&cmd, ClusterTime::from_millis(now), &mut sink)),
                Err(rejection) => {
                    assert_eq!(ledger.to_image(), before, "line {n}: input error changed state");
                    format!("invalid {}", rejection.code())
                }
            },
        };
        let extra: Vec<String> = sink
            .iter()
            .filter(|e| e.kind == EntryKind::WithdrawalExpire)
            .map(|e| format!("[+{:?} {}]", e.kind, e.tx))
            .collect();
        let got = [got, extra.join(" ")].join(" ").trim().to_string();
        assert_eq!(got, expected, "line {}: `{input}`", n + 1);
        if got.starts_with("rejected") || got.starts_with("already-failed") || got == "conflict" {
            // Rejections change no balance and append no entry (expiries aside).
            assert!(sink.iter().all(|e| e.kind == EntryKind::WithdrawalExpire), "line {n}");
        }
        chain.extend(sink);
        ledger.check_invariants();
        let summary = crate::verify::verify_entries(ShardId(7), &chain).unwrap();
        assert_eq!(summary.head_hash, ledger.head().1);
        let ledger_balances: BTreeMap<_, _> = ledger.accounts().into_iter().collect();
        assert_eq!(summary.balances, ledger_balances, "line {n}: replay disagrees with the ledger");
        let rebuilt = Ledger::from_image(ledger.to_image());
        assert_eq!(rebuilt.to_image(), ledger.to_image());
        // What a checkpoint of an on-disk state stores (the core) and what a peer is sent (the
        // image split in two and joined) rebuild the same ledger.
        let (core, retained) = ledger.to_image().into_parts();
        assert_eq!(core.head(), ledger.head());
        assert_eq!(LedgerImage::from_parts(core.clone(), retained), ledger.to_image(), "line {n}");
        // The image streamed in pieces around its retained parts encodes as the whole image.
        let whole = ledger.to_image();
        let (_, retained) = whole.clone().into_parts();
        let pieces = {
            let (before, between, after) = core.image_pieces();
            [
                postcard::to_allocvec(&before).unwrap(),
                postcard::to_allocvec(&retained.ids).unwrap(),
                postcard::to_allocvec(&retained.rounds).unwrap(),
                postcard::to_allocvec(&between).unwrap(),
                postcard::to_allocvec(&retained.retention).unwrap(),
                postcard::to_allocvec(&after).unwrap(),
            ]
        };
        assert_eq!(pieces.concat(), postcard::to_allocvec(&whole).unwrap(), "line {n}: the image in pieces");
        // And its pieces decode back into the core image.
        let core_back = CoreImage::from_pieces(
            postcard::from_bytes(&pieces[0]).unwrap(),
            postcard::from_bytes(&pieces[3]).unwrap(),
            postcard::from_bytes(&pieces[5]).unwrap(),
        );
        assert_eq!(core_back, core, "line {n}: the pieces decode back");
        let split = Ledger::from_core_image(core, ledger.state().clone());
        assert_eq!(split.to_image(), ledger.to_image(), "line {n}: core image and retained state");
    }
}

#[test]
fn deposit_bet_win_and_balances() {
    check(
        "
        open o1 alice EUR                 => applied #1 alice:EUR=0
        deposit d1 alice EUR 1000         => applied #2 external:EUR=-1000 alice:EUR=1000
        bet b1 alice r1 EUR 300           => applied #3 alice:EUR=700 house:EUR=300
        win w1 alice r1 EUR 450           => applied #4 house:EUR=-150 alice:EUR=1150
        bet b2 alice r2 EUR 1151          => rejected INSUFFICIENT_FUNDS
        bet b2 alice r2 EUR 1151          => already-failed INSUFFICIENT_FUNDS
        bet b2 alice r2 EUR 1             => conflict
        win w2 alice r9 EUR 5             => rejected UNKNOWN_ROUND
        win w3 alice r1 USD 5             => rejected CURRENCY_MISMATCH
        deposit d2 bob EUR 5              => rejected UNKNOWN_ACCOUNT
        open o1 alice EUR                 => duplicate #1 alice:EUR=0
        open o2 alice EUR                 => rejected ACCOUNT_EXISTS
        open o3 alice USD                 => applied #5 alice:USD=0
        ",
    );
}

#[test]
fn duplicates_return_the_original_receipt_not_the_current_balance() {
    check(
        "
        open o1 alice EUR                 => applied #1 alice:EUR=0
        deposit d1 alice EUR 100          => applied #2 external:EUR=-100 alice:EUR=100
        deposit d2 alice EUR 50           => applied #3 external:EUR=-150 alice:EUR=150
        deposit d1 alice EUR 100          => duplicate #2 external:EUR=-100 alice:EUR=100
        deposit d1 alice EUR 101          => conflict
        ",
    );
}

#[test]
fn input_errors_are_refused_before_they_reach_the_ledger() {
    check(
        "
        open o1 alice EUR                 => applied #1 alice:EUR=0
        deposit d1 alice EUR 0            => invalid AMOUNT_NOT_POSITIVE
        deposit d1 alice EUR -5           => invalid AMOUNT_NOT_POSITIVE
        deposit d1 alice XYZ 5            => invalid UNKNOWN_CURRENCY
        deposit d1 alice eur 5            => invalid UNKNOWN_CURRENCY
        deposit d1 ali\u{e9}ce EUR 5      => invalid INVALID_PLAYER_ID
        deposit d1 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa EUR 5 => invalid INVALID_PLAYER_ID
        transfer t1 alice alice EUR 5     => rejected SAME_ACCOUNT
        reserve h1 alice EUR 5 10         => rejected INVALID_HOLD_TIMEOUT
        deposit d1 alice EUR 5            => applied #2 external:EUR=-5 alice:EUR=5
        ",
    );
}

#[test]
fn balances_cannot_overflow() {
    check(
        "
        open o1 alice EUR                         => applied #1 alice:EUR=0
        deposit d1 alice EUR 9223372036854775807  => applied #2 external:EUR=-9223372036854775807 alice:EUR=9223372036854775807
        deposit d2 alice EUR 1                    => rejected BALANCE_OVERFLOW
        bet b1 alice r1 EUR 9223372036854775807   => applied #3 alice:EUR=0 house:EUR=9223372036854775807
        deposit d3 alice EUR 1                    => applied #4 external:EUR=-9223372036854775808 alice:EUR=1
        deposit d4 alice EUR 1                    => rejected BALANCE_OVERFLOW
        ",
    );
}

#[test]
fn withdrawal_hold_commit_cancel_and_settled_holds() {
    check(
        "
        open o1 alice EUR                 => applied #1 alice:EUR=0
        deposit d1 alice EUR 100          => applied #2 external:EUR=-100 alice:EUR=100
        reserve h1 alice EUR 60 60000     => applied #3 alice:EUR=100(held 60)
        bet b1 alice r1 EUR 50            => rejected INSUFFICIENT_FUNDS
        reserve h2 alice EUR 41 60000     => rejected INSUFFICIENT_FUNDS
        commit c1 alice h1                => applied #4 alice:EUR=40 external:EUR=-40
        commit c2 alice h1                => rejected HOLD_SETTLED
        cancel x1 alice h1                => rejected HOLD_SETTLED
        reserve h3 alice EUR 40 60000     => applied #5 alice:EUR=40(held 40)
        cancel x2 alice h3                => applied #6 alice:EUR=40
        commit c3 alice nope              => rejected UNKNOWN_HOLD
        commit c4 alice d1                => rejected UNKNOWN_HOLD
        open o2 bob EUR                   => applied #7 bob:EUR=0
        reserve h4 alice EUR 10 60000     => applied #8 alice:EUR=40(held 10)
        commit c5 bob h4                  => rejected UNKNOWN_HOLD
        ",
    );
}

#[test]
fn holds_expire_by_cluster_time_on_tick_or_next_command() {
    check(
        "
        open o1 alice EUR                 => applied #1 alice:EUR=0
        deposit d1 alice EUR 100          => applied #2 external:EUR=-100 alice:EUR=100
        reserve h1 alice EUR 70 5000      => applied #3 alice:EUR=100(held 70)
        reserve h2 alice EUR 30 9000      => applied #4 alice:EUR=100(held 100)
        tick +4999                        =>
        tick +1                           => [+WithdrawalExpire h1]
        commit c1 alice h1                => rejected HOLD_SETTLED
        time +4000
        bet b1 alice r1 EUR 100           => applied #7 alice:EUR=0 house:EUR=100 [+WithdrawalExpire h2]
        ",
    );
}

#[test]
fn rollback_reverses_a_bet_exactly_once() {
    check(
        "
        open o1 alice EUR                 => applied #1 alice:EUR=0
        deposit d1 alice EUR 100          => applied #2 external:EUR=-100 alice:EUR=100
        bet b1 alice r1 EUR 40            => applied #3 alice:EUR=60 house:EUR=40
        rollback rb1 alice r1 b1          => applied #4 house:EUR=0 alice:EUR=100
        rollback rb1 alice r1 b1          => duplicate #4 house:EUR=0 alice:EUR=100
        rollback rb2 alice r1 b1          => rejected BET_ALREADY_ROLLED_BACK
        win w1 alice r1 EUR 10            => rejected ROUND_ROLLED_BACK
        rollback rb3 alice r2 d1          => rejected NOT_A_BET
        bet b2 alice r2 EUR 10            => applied #5 alice:EUR=90 house:EUR=10
        rollback rb4 alice r3 b2          => rejected BET_MISMATCH
        bet b3 alice r3 EUR 1000          => rejected INSUFFICIENT_FUNDS
        rollback rb5 alice r3 b3          => applied (no entry)
        ",
    );
}

#[test]
fn a_rollback_that_overtakes_its_bet_makes_the_bet_fail() {
    check(
        "
        open o1 alice EUR                 => applied #1 alice:EUR=0
        deposit d1 alice EUR 100          => applied #2 external:EUR=-100 alice:EUR=100
        rollback rb1 alice r1 b1          => applied (no entry)
        bet b1 alice r1 EUR 40            => rejected BET_ROLLED_BACK
        bet b1 alice r1 EUR 40            => already-failed BET_ROLLED_BACK
        ",
    );
}

#[test]
fn transfers_and_adjustments() {
    check(
        "
        open o1 alice EUR                 => applied #1 alice:EUR=0
        open o2 bob EUR                   => applied #2 bob:EUR=0
        deposit d1 alice EUR 100          => applied #3 external:EUR=-100 alice:EUR=100
        transfer t1 alice bob EUR 30      => applied #4 alice:EUR=70 bob:EUR=30
        transfer t2 alice carol EUR 1     => rejected UNKNOWN_ACCOUNT
        transfer t3 bob alice EUR 31      => rejected INSUFFICIENT_FUNDS
        adjust a1 house:EUR player:bob:EUR EUR 5 goodwill credit, ticket 12 => applied #5 house:EUR=-5 bob:EUR=35
        adjust a2 player:bob:EUR house:EUR USD 5 wrong currency => rejected CURRENCY_MISMATCH
        adjust a3 player:bob:EUR house:EUR EUR 36 too much => rejected INSUFFICIENT_FUNDS
        adjust a4 house:EUR house:EUR EUR 1 same => rejected SAME_ACCOUNT
        adjust a5 external:EUR house:EUR EUR 7 reconciliation => applied #6 external:EUR=-107 house:EUR=2
        ",
    );
}

#[test]
fn cluster_time_never_goes_backwards() {
    let mut ledger = Ledger::new(ShardId(1), LedgerConfig::default());
    let mut sink = Vec::new();
    let open = parse(&["open", "o1", "alice", "EUR"]).unwrap();
    ledger.apply(&open, ClusterTime::from_millis(5_000), &mut sink);
    let deposit = parse(&["deposit", "d1", "alice", "EUR", "1"]).unwrap();
    // A new leader whose clock is behind stamps an earlier time; the entry keeps the later one.
    ledger.apply(&deposit, ClusterTime::from_millis(4_000), &mut sink);
    assert_eq!(sink[1].at, ClusterTime::from_millis(5_000));
    assert_eq!(ledger.last_at(), ClusterTime::from_millis(5_000));
}

#[test]
fn ids_are_forgotten_after_the_retention_window() {
    let config = LedgerConfig { id_retention_ms: HOLD_TIMEOUT_MAX_MS };
    let mut ledger = Ledger::new(ShardId(1), config);
    let mut sink = Vec::new();
    let t0 = 1_000_000u64;
    let open = parse(&["open", "o1", "alice", "EUR"]).unwrap();
    let deposit = parse(&["deposit", "d1", "alice", "EUR", "10"]).unwrap();
    ledger.apply(&open, ClusterTime::from_millis(t0), &mut sink);
    ledger.apply(&deposit, ClusterTime::from_millis(t0), &mut sink);
    let just_inside = ClusterTime::from_millis(t0 + config.id_retention_ms - 1);
    assert!(matches!(ledger.apply(&deposit, just_inside, &mut sink), Outcome::Duplicate(_)));
    assert_eq!(ledger.remembered_ids(), 2);
    // One window later the id is gone: the same request is new again (documented behaviour).
    let after = ClusterTime::from_millis(t0 + config.id_retention_ms);
    ledger.tick(after, &mut sink);
    assert_eq!(ledger.remembered_ids(), 0);
    assert!(matches!(ledger.apply(&deposit, after, &mut sink), Outcome::Applied(_)));
}

#[test]
fn default_retention_is_seven_days() {
    assert_eq!(LedgerConfig::default().id_retention_ms, 604_800_000);
}

// ---- property tests -------------------------------------------------------------------------

const PLAYERS: [&str; 3] = ["alice", "bob", "carol"];
const CURRENCIES: [&str; 2] = ["EUR", "JPY"];

fn arb_command() -> impl Strategy<Value = Command> {
    let tx = (0u8..40).prop_map(|i| TxId::new(format!("t{i}")).unwrap());
    let player = prop::sample::select(PLAYERS.to_vec()).prop_map(|p| PlayerId::new(p).unwrap());
    let currency = prop::sample::select(CURRENCIES.to_vec()).prop_map(cur);
    let round = (0u8..4).prop_map(|i| RoundId::new(format!("r{i}")).unwrap());
    let amount = prop_oneof![1i64..500, Just(i64::MAX)].prop_map(|a| Amount::new(a).unwrap());
    let system =
        currency.clone().prop_flat_map(|c| prop_oneof![Just(AccountRef::House(c)), Just(AccountRef::External(c))]);
    let any_account =
        prop_oneof![(player.clone(), currency.clone()).prop_map(|(p, c)| AccountRef::player(p, c)), system,];
    prop_oneof![
        (tx.clone(), player.clone(), currency.clone())
            .prop_map(|(tx, player, currency)| { Command::OpenAccount { tx, player, currency } }),
        (tx.clone(), player.clone(), currency.clone(), amount.clone())
            .prop_map(|(tx, player, currency, amount)| Command::Deposit { tx, player, currency, amount }),
        (tx.clone(), player.clone(), currency.clone(), amount.clone(), 1_000u64..20_000).prop_map(
            |(tx, player, currency, amount, timeout_ms)| {
                Command::ReserveWithdrawal { tx, player, currency, amount, timeout_ms }
            }
        ),
        (tx.clone(), player.clone(), tx.clone()).prop_map(|(tx, player, hold)| Command::CommitWithdrawal {
            tx,
            player,
            hold
        }),
        (tx.clone(), player.clone(), tx.clone()).prop_map(|(tx, player, hold)| Command::CancelWithdrawal {
            tx,
            player,
            hold
        }),
        (tx.clone(), player.clone(), round.clone(), currency.clone(), amount.clone())
            .prop_map(|(tx, player, round, currency, amount)| Command::Bet { tx, player, round, currency, amount }),
        (tx.clone(), player.clone(), round.clone(), currency.clone(), amount.clone())
            .prop_map(|(tx, player, round, currency, amount)| Command::Win { tx, player, round, currency, amount }),
        (tx.clone(), player.clone(), round.clone(), tx.clone())
            .prop_map(|(tx, player, round, bet)| Command::Rollback { tx, player, round, bet }),
        (tx.clone(), player.clone(), player.clone(), currency.clone(), amount.clone())
            .prop_map(|(tx, from, to, currency, amount)| Command::Transfer { tx, from, to, currency, amount }),
        (tx, any_account.clone(), any_account, currency, amount).prop_map(|(tx, debit, credit, currency, amount)| {
            Command::Adjust { tx, debit, credit, currency, amount, reason: Reason::new("prop").unwrap() }
        }),
    ]
}

/// An independent model of what applied commands do to posted balances, written from the
/// command semantics rather than from the ledger's code.
#[derive(Default)]
struct Model {
    posted: BTreeMap<AccountRef, i128>,
    bets: BTreeMap<TxId, (AccountRef, i128)>,
    holds: BTreeMap<TxId, (AccountRef, i128)>,
}

impl Model {
    fn mv(&mut self, from: &AccountRef, to: &AccountRef, amount: i128) {
        *self.posted.entry(from.clone()).or_default() -= amount;
        *self.posted.entry(to.clone()).or_default() += amount;
    }

    fn applied(&mut self, cmd: &Command, receipt: &Receipt) {
        let amt = |a: &Amount| i128::from(a.minor());
        match cmd {
            Command::OpenAccount { player, currency, .. } => {
                self.posted.insert(AccountRef::player(player.clone(), *currency), 0);
            }
            Command::Deposit { player, currency, amount, .. } => {
                self.mv(&AccountRef::External(*currency), &AccountRef::player(player.clone(), *currency), amt(amount))
            }
            Command::ReserveWithdrawal { tx, player, currency, amount, .. } => {
                self.holds.insert(tx.clone(), (AccountRef::player(player.clone(), *currency), amt(amount)));
            }
            Command::CommitWithdrawal { hold, .. } => {
                let (wallet, a) = self.holds.remove(hold).expect("committed hold was reserved");
                self.mv(&wallet, &AccountRef::External(wallet.currency()), a);
            }
            Command::CancelWithdrawal { hold, .. } => {
                self.holds.remove(hold).expect("cancelled hold was reserved");
            }
            Command::Bet { tx, player, currency, amount, .. } => {
                let wallet = AccountRef::player(player.clone(), *currency);
                self.mv(&wallet, &AccountRef::House(*currency), amt(amount));
                self.bets.insert(tx.clone(), (wallet, amt(amount)));
            }
            Command::Win { player, currency, amount, .. } => {
                self.mv(&AccountRef::House(*currency), &AccountRef::player(player.clone(), *currency), amt(amount))
            }
            Command::Rollback { bet, .. } => {
                if receipt.seq.is_some() {
                    let (wallet, a) = self.bets.get(bet).cloned().expect("rolled back bet was placed");
                    self.mv(&AccountRef::House(wallet.currency()), &wallet, a);
                }
            }
            Command::Transfer { from, to, currency, amount, .. } => self.mv(
                &AccountRef::player(from.clone(), *currency),
                &AccountRef::player(to.clone(), *currency),
                amt(amount),
            ),
            Command::Adjust { debit, credit, amount, .. } => self.mv(debit, credit, amt(amount)),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random command sequences, with ids reused on purpose: invariants hold after every step,
    /// retries never apply twice, the chain verifies, and balances match an independent model.
    #[test]
    fn random_sequences_keep_every_invariant(
        steps in prop::collection::vec((arb_command(), 0u64..3_000, any::<bool>()), 1..120),
    ) {
        let mut ledger = Ledger::new(ShardId(2), LedgerConfig::default());
        let mut chain = Vec::new();
        let mut model = Model::default();
        let mut first_outcome: BTreeMap<TxId, (Command, Outcome)> = BTreeMap::new();
        let mut now = 10_000u64;
        for (cmd, dt, retry) in steps {
            now += dt;
            // Expiries release holds in the model before the command runs.
            let mut sink = Vec::new();
            let outcome = ledger.apply(&cmd, ClusterTime::from_millis(now), &mut sink);
            for e in sink.iter().filter(|e| e.kind == EntryKind::WithdrawalExpire) {
                prop_assert!(model.holds.remove(&e.tx).is_some());
            }
            match first_outcome.get(cmd.tx()) {
                Some((original, first)) if original == &cmd => {
                    let expected = match first {
                        Outcome::Applied(r) | Outcome::Duplicate(r) => Outcome::Duplicate(r.clone()),
                        Outcome::Rejected(x) | Outcome::AlreadyFailed(x) => Outcome::AlreadyFailed(*x),
                        Outcome::Conflict => unreachable!("conflicts are never recorded as first outcomes"),
                    };
                    prop_assert_eq!(&outcome, &expected);
                }
                Some(_) => prop_assert_eq!(&outcome, &Outcome::Conflict),
                None => {
                    if let Outcome::Applied(r) = &outcome {
                        model.applied(&cmd, r);
                    }
                    first_outcome.insert(cmd.tx().clone(), (cmd.clone(), outcome.clone()));
                }
            }
            chain.extend(sink);
            if retry {
                let mut sink = Vec::new();
                let again = ledger.apply(&cmd, ClusterTime::from_millis(now), &mut sink);
                prop_assert!(matches!(again, Outcome::Duplicate(_) | Outcome::AlreadyFailed(_) | Outcome::Conflict));
                prop_assert!(sink.is_empty(), "a retry appended entries");
            }
            ledger.check_invariants();
        }
        let summary = crate::verify::verify_entries(ShardId(2), &chain).unwrap();
        prop_assert_eq!(summary.head_hash, ledger.head().1);
        for (account, balance) in ledger.accounts() {
            prop_assert_eq!(i128::from(balance.posted), model.posted.get(&account).copied().unwrap_or(0), "{}", account);
            let held: i128 = model.holds.values().filter(|(w, _)| *w == account).map(|(_, a)| *a).sum();
            prop_assert_eq!(i128::from(balance.held), held, "{}", account);
        }
    }

    /// Two replicas fed the same commands build byte-identical chains, and a replica restored
    /// from a snapshot midway continues with the same chain.
    #[test]
    fn replay_is_deterministic_and_snapshots_resume_exactly(
        cmds in prop::collection::vec(arb_command(), 1..80), cut in any::<prop::sample::Index>(),
    ) {
        let cut = cut.index(cmds.len());
        let mut a = Ledger::new(ShardId(3), LedgerConfig::default());
        let mut b = Ledger::new(ShardId(3), LedgerConfig::default());
        let (mut chain_a, mut chain_b) = (Vec::new(), Vec::new());
        for (i, cmd) in cmds.iter().enumerate() {
            if i == cut {
                b = Ledger::from_image(b.to_image());
            }
            let at = ClusterTime::from_millis(1_000 * i as u64);
            let oa = a.apply(cmd, at, &mut chain_a);
            let ob = b.apply(cmd, at, &mut chain_b);
            prop_assert_eq!(oa, ob);
        }
        prop_assert_eq!(&chain_a, &chain_b);
        prop_assert_eq!(postcard::to_allocvec(&a.to_image()).unwrap(), postcard::to_allocvec(&b.to_image()).unwrap());
    }
}

#[test]
fn verify_reports_a_flipped_byte_at_its_entry() {
    let mut ledger = Ledger::new(ShardId(4), LedgerConfig::default());
    let mut chain = Vec::new();
    for (i, words) in [
        vec!["open", "o1", "alice", "EUR"],
        vec!["deposit", "d1", "alice", "EUR", "500"],
        vec!["bet", "b1", "alice", "r1", "EUR", "100"],
        vec!["win", "w1", "alice", "r1", "EUR", "40"],
        vec!["bet", "b2", "alice", "r2", "EUR", "10"],
    ]
    .iter()
    .enumerate()
    {
        ledger.apply(&parse(words).unwrap(), ClusterTime::from_millis(i as u64), &mut chain);
    }
    let frames: Vec<(Vec<u8>, Hash)> = chain.iter().map(|e| (e.encode(), e.hash)).collect();
    for target in 0..frames.len() {
        for pos in 0..frames[target].0.len() {
            let mut tampered = frames.clone();
            tampered[target].0[pos] ^= 0x01;
            let mut v = Verifier::new(ShardId(4));
            let err = tampered
                .iter()
                .map(|(bytes, hash)| v.push_raw(bytes, hash))
                .find_map(Result::err)
                .expect("a flipped byte must be detected");
            let at = match err {
                crate::verify::VerifyError::HashMismatch { position, .. } => position,
                crate::verify::VerifyError::Decode { position, .. } => position,
                other => panic!("unexpected error {other}"),
            };
            assert_eq!(at, target as u64 + 1, "byte {pos} of entry {}", target + 1);
        }
    }
}

#[test]
fn recall_reports_what_an_id_did() {
    let mut l = Ledger::new(ShardId(0), LedgerConfig::default());
    let mut sink = Vec::new();
    let at = ClusterTime::from_millis(1_000);
    let alice = PlayerId::new("alice").unwrap();
    let open = Command::OpenAccount { tx: TxId::new("o").unwrap(), player: alice.clone(), currency: cur("EUR") };
    assert!(matches!(l.apply(&open, at, &mut sink), Outcome::Applied(_)));
    let bet = Command::Bet {
        tx: TxId::new("b").unwrap(),
        player: alice,
        round: RoundId::new("r").unwrap(),
        currency: cur("EUR"),
        amount: Amount::new(5).unwrap(),
    };
    assert!(matches!(l.apply(&bet, at, &mut sink), Outcome::Rejected(Rejection::InsufficientFunds)));
    assert_eq!(l.recall(&TxId::new("o").unwrap()), Some(Recall::Applied(Some(1))));
    assert_eq!(l.recall(&TxId::new("b").unwrap()), Some(Recall::Refused(Rejection::InsufficientFunds)));
    assert_eq!(l.recall(&TxId::new("never").unwrap()), None);
}
