//! Pure mapping between the protobuf messages and the ledger's types. Validation happens here,
//! at the edge, so a bad request is refused with the field it concerns before anything is
//! proposed.

use ledger_core::{
    AccountRef, Amount, Balance, Command, Currency, Entry, EntryKind, HOLD_TIMEOUT_DEFAULT_MS, PlayerId, Receipt,
    Rejection, RoundId, TxId,
};
use tonic::Status;

use super::errors::{self, rejection};
use super::pb;

/// Largest page of `ListEntries`.
pub const PAGE_MAX: u32 = 1000;
/// Page size when the request gives none.
pub const PAGE_DEFAULT: u32 = 100;
/// Most entries one `ListEntries` call scans when filtering by player.
pub const SCAN_MAX: u64 = 10_000;
/// Most links in one entry proof.
pub const PROOF_LINKS_MAX: u64 = 1000;

fn key(s: &str) -> Result<TxId, Status> {
    if s.is_empty() {
        return Err(errors::missing_key());
    }
    TxId::new(s).map_err(|r| rejection(r, Some("idempotency_key")))
}

fn tx_ref(s: &str, field: &str) -> Result<TxId, Status> {
    TxId::new(s).map_err(|r| rejection(r, Some(field)))
}

/// A player id field.
pub fn player(s: &str, field: &str) -> Result<PlayerId, Status> {
    PlayerId::new(s).map_err(|r| rejection(r, Some(field)))
}

fn round(s: &str) -> Result<RoundId, Status> {
    RoundId::new(s).map_err(|r| rejection(r, Some("round_id")))
}

/// A currency field.
pub fn currency(s: &str) -> Result<Currency, Status> {
    Currency::new(s).map_err(|r| rejection(r, Some("currency")))
}

fn amount(v: i64) -> Result<Amount, Status> {
    Amount::new(v).map_err(|r| rejection(r, Some("amount")))
}

/// Checks a whole command once more, as the ledger will, so that cross-field rules (a transfer
/// to oneself) are refused at the edge too.
fn checked(cmd: Command) -> Result<Command, Status> {
    cmd.validate().map_err(|r| rejection(r, None))?;
    Ok(cmd)
}

/// `OpenWallet`.
pub fn open(r: &pb::OpenWalletRequest) -> Result<Command, Status> {
    checked(Command::OpenAccount {
        tx: key(&r.idempotency_key)?,
        player: player(&r.player_id, "player_id")?,
        currency: currency(&r.currency)?,
    })
}

/// `Deposit`.
pub fn deposit(r: &pb::DepositRequest) -> Result<Command, Status> {
    checked(Command::Deposit {
        tx: key(&r.idempotency_key)?,
        player: player(&r.player_id, "player_id")?,
        currency: currency(&r.currency)?,
        amount: amount(r.amount)?,
    })
}

/// `ReserveWithdrawal`.
pub fn reserve(r: &pb::ReserveWithdrawalRequest) -> Result<Command, Status> {
    let timeout_ms = if r.hold_timeout_ms == 0 { HOLD_TIMEOUT_DEFAULT_MS } else { r.hold_timeout_ms };
    checked(Command::ReserveWithdrawal {
        tx: key(&r.idempotency_key)?,
        player: player(&r.player_id, "player_id")?,
        currency: currency(&r.currency)?,
        amount: amount(r.amount)?,
        timeout_ms,
    })
}

/// `CommitWithdrawal`.
pub fn commit(r: &pb::CommitWithdrawalRequest) -> Result<Command, Status> {
    checked(Command::CommitWithdrawal {
        tx: key(&r.idempotency_key)?,
        player: player(&r.player_id, "player_id")?,
        hold: tx_ref(&r.hold_id, "hold_id")?,
    })
}

/// `CancelWithdrawal`.
pub fn cancel(r: &pb::CancelWithdrawalRequest) -> Result<Command, Status> {
    checked(Command::CancelWithdrawal {
        tx: key(&r.idempotency_key)?,
        player: player(&r.player_id, "player_id")?,
        hold: tx_ref(&r.hold_id, "hold_id")?,
    })
}

/// `PlaceBet`.
pub fn bet(r: &pb::PlaceBetRequest) -> Result<Command, Status> {
    checked(Command::Bet {
        tx: key(&r.idempotency_key)?,
        player: player(&r.player_id, "player_id")?,
        round: round(&r.round_id)?,
        currency: currency(&r.currency)?,
        amount: amount(r.amount)?,
    })
}

/// `SettleWin`.
pub fn win(r: &pb::SettleWinRequest) -> Result<Command, Status> {
    checked(Command::Win {
        tx: key(&r.idempotency_key)?,
        player: player(&r.player_id, "player_id")?,
        round: round(&r.round_id)?,
        currency: currency(&r.currency)?,
        amount: amount(r.amount)?,
    })
}

/// `RollbackBet`.
pub fn rollback(r: &pb::RollbackBetRequest) -> Result<Command, Status> {
    checked(Command::Rollback {
        tx: key(&r.idempotency_key)?,
        player: player(&r.player_id, "player_id")?,
        round: round(&r.round_id)?,
        bet: tx_ref(&r.bet_id, "bet_id")?,
    })
}

/// `Transfer`.
pub fn transfer(r: &pb::TransferRequest) -> Result<Command, Status> {
    checked(Command::Transfer {
        tx: key(&r.idempotency_key)?,
        from: player(&r.from_player_id, "from_player_id")?,
        to: player(&r.to_player_id, "to_player_id")?,
        currency: currency(&r.currency)?,
        amount: amount(r.amount)?,
    })
}

/// A page size: 0 means the default; above the maximum is refused rather than silently cut.
pub fn page_size(n: u32) -> Result<u32, Status> {
    match n {
        0 => Ok(PAGE_DEFAULT),
        n if n <= PAGE_MAX => Ok(n),
        _ => Err(errors::invalid_field("page_size", format!("page_size must be at most {PAGE_MAX}"))),
    }
}

/// An account as the API shows it.
pub fn account(a: &AccountRef) -> pb::Account {
    let (kind, player_id) = match a {
        AccountRef::Player { player, .. } => (pb::AccountKind::Player, player.as_str().to_string()),
        AccountRef::House(_) => (pb::AccountKind::House, String::new()),
        AccountRef::External(_) => (pb::AccountKind::External, String::new()),
    };
    pb::Account { kind: kind as i32, player_id, currency: a.currency().code().to_string() }
}

/// A balance as the API shows it.
pub fn balance(a: &AccountRef, b: Balance) -> pb::AccountBalance {
    pb::AccountBalance { account: Some(account(a)), posted: b.posted, held: b.held, available: b.available() }
}

fn unix_ms(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// The response to an applied command (or its replay: the receipt is the original's).
pub fn transaction(key: &str, shard: u32, r: &Receipt) -> pb::TransactionResponse {
    pb::TransactionResponse {
        idempotency_key: key.to_string(),
        shard,
        seq: r.seq.unwrap_or(0),
        at_unix_ms: unix_ms(r.at.as_millis()),
        balances: r.balances.iter().map(|(a, b)| balance(a, *b)).collect(),
    }
}

fn entry_kind(k: EntryKind) -> pb::EntryKind {
    match k {
        EntryKind::Open => pb::EntryKind::Open,
        EntryKind::Deposit => pb::EntryKind::Deposit,
        EntryKind::WithdrawalReserve => pb::EntryKind::WithdrawalReserve,
        EntryKind::WithdrawalCommit => pb::EntryKind::WithdrawalCommit,
        EntryKind::WithdrawalCancel => pb::EntryKind::WithdrawalCancel,
        EntryKind::WithdrawalExpire => pb::EntryKind::WithdrawalExpire,
        EntryKind::Bet => pb::EntryKind::Bet,
        EntryKind::Win => pb::EntryKind::Win,
        EntryKind::Rollback => pb::EntryKind::Rollback,
        EntryKind::Transfer => pb::EntryKind::Transfer,
        EntryKind::Adjustment => pb::EntryKind::Adjustment,
    }
}

/// A ledger entry as the API shows it, with its hash.
pub fn entry(e: &Entry) -> pb::LedgerEntry {
    pb::LedgerEntry {
        shard: e.shard.0,
        seq: e.seq,
        at_unix_ms: unix_ms(e.at.as_millis()),
        kind: entry_kind(e.kind) as i32,
        tx_id: e.tx.as_str().to_string(),
        debit: Some(account(&e.debit)),
        credit: Some(account(&e.credit)),
        amount: e.amount,
        balances: e.balances.iter().map(|(a, b)| balance(a, *b)).collect(),
        round_id: e.round.as_ref().map(|r| r.as_str().to_string()).unwrap_or_default(),
        reference: e.reference.as_ref().map(|r| r.as_str().to_string()).unwrap_or_default(),
        reason: e.reason.as_ref().map(|r| r.as_str().to_string()).unwrap_or_default(),
        prev_hash: e.prev_hash.to_vec(),
        hash: e.compute_hash().to_vec(),
    }
}

/// True when the entry moves or holds money of `player`'s wallets.
pub fn touches(e: &Entry, player: &PlayerId) -> bool {
    [&e.debit, &e.credit].iter().any(|a| a.player_id() == Some(player))
}

/// Checks an entry proof as an auditor would, from the links alone: each link's hash is the next
/// link's `prev_hash`. Returns the anchor hash.
pub fn verify_proof(links: &[pb::ChainLink]) -> Result<[u8; 32], String> {
    let mut prev: Option<(u64, [u8; 32])> = None;
    for link in links {
        let e = Entry::decode(&link.encoding).map_err(|err| format!("link {}: {err}", link.seq))?;
        if e.seq != link.seq {
            return Err(format!("link {} decodes as entry {}", link.seq, e.seq));
        }
        if let Some((seq, hash)) = prev
            && (e.seq != seq + 1 || e.prev_hash != hash)
        {
            return Err(format!("entry {} does not chain to entry {seq}", e.seq));
        }
        prev = Some((e.seq, e.compute_hash()));
    }
    prev.map(|(_, h)| h).ok_or_else(|| "a proof needs at least one link".to_string())
}

/// The rejection behind a status, if it carries a ledger reason (for tests and the CLI).
pub fn is_rejection(status: &Status, r: Rejection) -> bool {
    errors::reason_of(status).as_deref() == Some(r.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_validation_names_the_field_and_the_reason() {
        let mut d = pb::DepositRequest {
            idempotency_key: "k1".into(),
            player_id: "alice".into(),
            currency: "EUR".into(),
            amount: 100,
        };
        assert!(deposit(&d).is_ok());
        d.amount = 0;
        assert!(is_rejection(&deposit(&d).unwrap_err(), Rejection::AmountNotPositive));
        d.amount = -5;
        assert!(is_rejection(&deposit(&d).unwrap_err(), Rejection::AmountNotPositive));
        d.amount = 5;
        d.currency = "XXY".into();
        assert!(is_rejection(&deposit(&d).unwrap_err(), Rejection::UnknownCurrency));
        d.currency = "EUR".into();
        d.idempotency_key.clear();
        let s = deposit(&d).unwrap_err();
        assert_eq!(errors::reason_of(&s).as_deref(), Some("IDEMPOTENCY_KEY_MISSING"));
        d.idempotency_key = "x".repeat(65);
        assert_eq!(errors::reason_of(&deposit(&d).unwrap_err()).as_deref(), Some("INVALID_TX_ID"));
        let t = pb::TransferRequest {
            idempotency_key: "t".into(),
            from_player_id: "a".into(),
            to_player_id: "a".into(),
            currency: "EUR".into(),
            amount: 1,
        };
        assert!(is_rejection(&transfer(&t).unwrap_err(), Rejection::SameAccount));
        assert!(page_size(PAGE_MAX + 1).is_err());
        assert_eq!(page_size(0).unwrap(), PAGE_DEFAULT);
    }
}
