//! `walletd client`: a command-line client of the node API, for humans and scripts.

use std::time::Duration;

use clap::{Args, Subcommand};
use ledger_core::{
    AccountRef, Amount, Command, Currency, HOLD_TIMEOUT_DEFAULT_MS, Outcome, PlayerId, Reason, Receipt, Rejection,
    RoundId, TxId,
};
use raft_ledger::api::{LedgerError, NodeStatus};
use raft_ledger::client::{ClientError, ClientOptions, LedgerClient};
use raft_ledger::net::member::ClusterKey;

use wallet_api::amount::parse_amount;
use wallet_api::exit;

/// How an operator tool reaches a cluster's node port.
#[derive(Debug, Clone, Args)]
pub(crate) struct ClusterArgs {
    /// Node addresses (`host:port`), comma separated. Any node will do; the client finds leaders.
    #[arg(long, env = "WALLETD_NODES", value_delimiter = ',', default_value = "127.0.0.1:7001", global = true)]
    pub(crate) nodes: Vec<String>,
    /// File holding the cluster's shared secret (the nodes' `cluster_key_file`); node ports
    /// refuse calls without it.
    #[arg(long, env = "WALLETD_CLUSTER_KEY_FILE", global = true)]
    pub(crate) cluster_key_file: Option<std::path::PathBuf>,
}

impl ClusterArgs {
    /// Client options carrying the cluster key.
    pub(crate) fn options(&self) -> Result<ClientOptions, String> {
        let path = self.cluster_key_file.as_ref().ok_or(
            "no cluster key: give --cluster-key-file or set WALLETD_CLUSTER_KEY_FILE (walletd demo prints it)",
        )?;
        Ok(ClientOptions::new(ClusterKey::load(path).map_err(|e| e.to_string())?))
    }
}

/// Options of `walletd client`.
#[derive(Debug, Args)]
pub(crate) struct ClientArgs {
    /// Which cluster, and its key.
    #[command(flatten)]
    pub(crate) cluster: ClusterArgs,
    /// Print results as JSON.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Give up after this many seconds of retrying.
    #[arg(long, default_value_t = 15, global = true)]
    pub(crate) deadline_secs: u64,
    /// What to do.
    #[command(subcommand)]
    pub(crate) op: ClientOp,
}

/// One client operation. Amounts are decimals in the currency (`12.50` EUR is 1250 cents).
#[derive(Debug, Subcommand)]
pub(crate) enum ClientOp {
    /// Open a player's wallet in a currency.
    Open {
        #[arg(long)]
        tx: String,
        #[arg(long)]
        player: String,
        #[arg(long)]
        currency: String,
    },
    /// Move money in from outside.
    Deposit {
        #[arg(long)]
        tx: String,
        #[arg(long)]
        player: String,
        #[arg(long)]
        currency: String,
        #[arg(long, allow_hyphen_values = true)]
        amount: String,
    },
    /// Stake money in a game round.
    Bet {
        #[arg(long)]
        tx: String,
        #[arg(long)]
        player: String,
        #[arg(long)]
        round: String,
        #[arg(long)]
        currency: String,
        #[arg(long, allow_hyphen_values = true)]
        amount: String,
    },
    /// Pay a win for a round the player bet in.
    Win {
        #[arg(long)]
        tx: String,
        #[arg(long)]
        player: String,
        #[arg(long)]
        round: String,
        #[arg(long)]
        currency: String,
        #[arg(long, allow_hyphen_values = true)]
        amount: String,
    },
    /// Reverse one bet, exactly once.
    Rollback {
        #[arg(long)]
        tx: String,
        #[arg(long)]
        player: String,
        #[arg(long)]
        round: String,
        /// The bet's transaction id.
        #[arg(long)]
        bet: String,
    },
    /// Reserve money for a withdrawal (a hold that commits, cancels or expires).
    Reserve {
        #[arg(long)]
        tx: String,
        #[arg(long)]
        player: String,
        #[arg(long)]
        currency: String,
        #[arg(long, allow_hyphen_values = true)]
        amount: String,
        /// Hold lifetime in cluster milliseconds.
        #[arg(long, default_value_t = HOLD_TIMEOUT_DEFAULT_MS)]
        timeout_ms: u64,
    },
    /// Settle a withdrawal hold: the money leaves.
    Commit {
        #[arg(long)]
        tx: String,
        #[arg(long)]
        player: String,
        /// The reserve's transaction id.
        #[arg(long)]
        hold: String,
    },
    /// Release a withdrawal hold.
    Cancel {
        #[arg(long)]
        tx: String,
        #[arg(long)]
        player: String,
        /// The reserve's transaction id.
        #[arg(long)]
        hold: String,
    },
    /// Move money between two players of the same shard.
    Transfer {
        #[arg(long)]
        tx: String,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        currency: String,
        #[arg(long, allow_hyphen_values = true)]
        amount: String,
    },
    /// An operator correction between two accounts (`player:ID:CUR`, `house:CUR`, `external:CUR`).
    Adjust {
        #[arg(long)]
        tx: String,
        #[arg(long)]
        debit: String,
        #[arg(long)]
        credit: String,
        #[arg(long)]
        currency: String,
        #[arg(long, allow_hyphen_values = true)]
        amount: String,
        #[arg(long)]
        reason: String,
        /// Required when neither account is a player's.
        #[arg(long)]
        shard: Option<u32>,
    },
    /// Read a wallet's balance (linearizable, from the shard leader).
    Balance {
        #[arg(long)]
        player: String,
        #[arg(long)]
        currency: String,
    },
    /// List a shard's ledger entries as one node has them.
    Entries {
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        shard: u32,
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Show every shard replica of every node (or only --node): role, term, health, leader and
    /// its region, home region, leader changes, voters, commit and apply indexes, chain head.
    Status {
        #[arg(long)]
        node: Option<String>,
    },
    /// Re-verify a shard's hash chain and balances on one node.
    Verify {
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        shard: u32,
    },
}

fn bad(what: &str, r: Rejection) -> String {
    format!("{what}: {r}")
}

fn currency(s: &str) -> Result<Currency, String> {
    Currency::new(s).map_err(|r| bad(&format!("currency `{s}`"), r))
}

fn tx(s: &str) -> Result<TxId, String> {
    TxId::new(s).map_err(|r| bad("--tx", r))
}

fn player(s: &str) -> Result<PlayerId, String> {
    PlayerId::new(s).map_err(|r| bad("player", r))
}

fn round(s: &str) -> Result<RoundId, String> {
    RoundId::new(s).map_err(|r| bad("--round", r))
}

fn amount(s: &str, c: Currency) -> Result<Amount, String> {
    let minor = parse_amount(s, c).map_err(|e| format!("--amount: {e}"))?;
    Amount::new(minor).map_err(|r| bad("--amount", r))
}

/// Parses `player:ID:CUR`, `house:CUR` or `external:CUR`.
pub(crate) fn parse_account(s: &str) -> Result<AccountRef, String> {
    let parts: Vec<&str> = s.split(':').collect();
    match parts.as_slice() {
        ["player", p, c] => Ok(AccountRef::player(player(p)?, currency(c)?)),
        ["house", c] => Ok(AccountRef::House(currency(c)?)),
        ["external", c] => Ok(AccountRef::External(currency(c)?)),
        _ => Err(format!("account `{s}` must be player:ID:CUR, house:CUR or external:CUR")),
    }
}

/// Turns a write operation into a validated command; `None` for read operations.
pub(crate) fn command(op: &ClientOp) -> Result<Option<(Command, Option<u32>)>, String> {
    let cmd = match op {
        ClientOp::Open { tx: t, player: p, currency: c } => {
            Command::OpenAccount { tx: tx(t)?, player: player(p)?, currency: currency(c)? }
        }
        ClientOp::Deposit { tx: t, player: p, currency: c, amount: a } => {
            let c = currency(c)?;
            Command::Deposit { tx: tx(t)?, player: player(p)?, currency: c, amount: amount(a, c)? }
        }
        ClientOp::Bet { tx: t, player: p, round: r, currency: c, amount: a } => {
            let c = currency(c)?;
            Command::Bet { tx: tx(t)?, player: player(p)?, round: round(r)?, currency: c, amount: amount(a, c)? }
        }
        ClientOp::Win { tx: t, player: p, round: r, currency: c, amount: a } => {
            let c = currency(c)?;
            Command::Win { tx: tx(t)?, player: player(p)?, round: round(r)?, currency: c, amount: amount(a, c)? }
        }
        ClientOp::Rollback { tx: t, player: p, round: r, bet } => {
            Command::Rollback { tx: tx(t)?, player: player(p)?, round: round(r)?, bet: tx(bet)? }
        }
        ClientOp::Reserve { tx: t, player: p, currency: c, amount: a, timeout_ms } => {
            let c = currency(c)?;
            Command::ReserveWithdrawal {
                tx: tx(t)?,
                player: player(p)?,
                currency: c,
                amount: amount(a, c)?,
                timeout_ms: *timeout_ms,
            }
        }
        ClientOp::Commit { tx: t, player: p, hold } => {
            Command::CommitWithdrawal { tx: tx(t)?, player: player(p)?, hold: tx(hold)? }
        }
        ClientOp::Cancel { tx: t, player: p, hold } => {
            Command::CancelWithdrawal { tx: tx(t)?, player: player(p)?, hold: tx(hold)? }
        }
        ClientOp::Transfer { tx: t, from, to, currency: c, amount: a } => {
            let c = currency(c)?;
            Command::Transfer { tx: tx(t)?, from: player(from)?, to: player(to)?, currency: c, amount: amount(a, c)? }
        }
        ClientOp::Adjust { tx: t, debit, credit, currency: c, amount: a, reason, shard } => {
            let c = currency(c)?;
            let cmd = Command::Adjust {
                tx: tx(t)?,
                debit: parse_account(debit)?,
                credit: parse_account(credit)?,
                currency: c,
                amount: amount(a, c)?,
                reason: Reason::new(reason.as_str()).map_err(|r| bad("--reason", r))?,
            };
            return Ok(Some((cmd, *shard)));
        }
        ClientOp::Balance { .. } | ClientOp::Entries { .. } | ClientOp::Status { .. } | ClientOp::Verify { .. } => {
            return Ok(None);
        }
    };
    cmd.validate().map_err(|r| bad("command", r))?;
    Ok(Some((cmd, None)))
}

/// Cluster time as RFC 3339 with milliseconds, for people.
pub(crate) fn format_time(at: ledger_core::ClusterTime) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(at.as_millis());
    humantime::format_rfc3339_millis(t).to_string()
}

fn format_receipt(shard: u32, r: &Receipt) -> String {
    let mut s = match r.seq {
        Some(seq) => format!("shard {shard} entry #{seq} at {}", format_time(r.at)),
        None => format!(
            "no money moved (shard {shard}, at {}): a rollback whose bet has not arrived, or had failed; \
             the bet is refused if it arrives later",
            format_time(r.at)
        ),
    };
    for (account, b) in &r.balances {
        let c = account.currency();
        s.push_str(&format!("\n  {account:<28} {}", c.format(b.posted)));
        if b.held != 0 {
            s.push_str(&format!("  (held {})", c.format(b.held)));
        }
    }
    s
}

/// Renders an outcome in `shard` for a terminal, and the process exit code it deserves.
pub(crate) fn render_outcome(shard: u32, o: &Outcome) -> (String, i32) {
    match o {
        Outcome::Applied(r) => (format!("applied: {}", format_receipt(shard, r)), exit::OK),
        Outcome::Duplicate(r) => {
            (format!("duplicate (already applied; original result): {}", format_receipt(shard, r)), exit::OK)
        }
        Outcome::Rejected(x) => (format!("rejected: {} ({})", x, x.code()), exit::REFUSED),
        Outcome::AlreadyFailed(x) => (format!("rejected earlier and remembered: {} ({})", x, x.code()), exit::REFUSED),
        Outcome::Conflict => {
            ("conflict: this transaction id was used with a different payload; nothing changed".into(), exit::REFUSED)
        }
    }
}

/// A failed write, for a terminal, and its exit code: refused (nothing changed) or unknown.
fn render_write_error(e: &ClientError) -> (String, i32) {
    let unknown = |why: String| {
        (
            format!(
                "outcome unknown: {why}. The command may have applied: run the same command again, with the same \
                 --tx, to learn its outcome"
            ),
            exit::UNKNOWN,
        )
    };
    match e {
        ClientError::Invalid(r) => (format!("refused before sending: {r} ({})", r.code()), exit::REFUSED),
        ClientError::Indeterminate(..) => unknown("no node answered in time".into()),
        ClientError::Ledger(LedgerError::Timeout) => unknown("no decision before the deadline".into()),
        ClientError::Ledger(LedgerError::Unavailable(why)) => unknown(format!("the shard is unavailable ({why})")),
        ClientError::Node { message, .. } => unknown(message.clone()),
        ClientError::Unauthenticated(why) => (format!("refused: {why}"), exit::REFUSED),
        ClientError::Ledger(e) => (format!("refused: {e}"), exit::REFUSED),
    }
}

/// What `status` prints for one node.
fn render_status(status: &NodeStatus) -> String {
    let mut human = format!("node {} {} ({} shards)\n", status.node_id, status.info, status.shard_count);
    human.push_str(
        "shard  role       term  health                          leader  heard_ms  leader_region  home        changes  voters      last_log  committed  applied  snapshot  entries  head\n",
    );
    for s in &status.shards {
        let voters: Vec<String> = s.voters.iter().map(|v| v.to_string()).collect();
        human.push_str(&format!(
            "{:<6} {:<10} {:<5} {:<31} {:<7} {:<9} {:<14} {:<11} {:<8} {:<11} {:<9} {:<10} {:<8} {:<9} {:<8} {}\n",
            s.shard,
            s.state,
            s.term,
            s.health.describe(),
            opt(s.leader),
            opt(s.leader_heard_ms),
            s.leader_region.as_deref().unwrap_or("-"),
            s.home_region.as_deref().unwrap_or("-"),
            s.leader_changes,
            voters.join(","),
            opt(s.last_log_index),
            opt(s.committed),
            opt(s.applied),
            opt(s.snapshot),
            s.journal_len,
            &s.head_hash[..16]
        ));
    }
    human.trim_end().to_string()
}

/// Runs one client operation and returns the process exit code (see [`crate::exit`]).
pub(crate) async fn run(args: ClientArgs) -> Result<i32, String> {
    let parsed = match command(&args.op) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("invalid input: {e}; nothing was sent");
            return Ok(exit::USAGE);
        }
    };
    let options = ClientOptions { deadline: Duration::from_secs(args.deadline_secs), ..args.cluster.options()? };
    let nodes = args.cluster.nodes.clone();
    let client = LedgerClient::connect(nodes.clone(), options)
        .await
        .map_err(|e| format!("cannot reach the cluster at {}: {e}", nodes.join(",")))?;
    let first = nodes[0].clone();
    let print = |json: String, human: String| {
        if args.json {
            println!("{json}");
        } else {
            println!("{human}");
        }
    };
    if let Some((cmd, shard)) = parsed {
        let shard = match shard {
            Some(s) => s,
            None => match cmd.player().map(|p| client.shard_for(p)) {
                Some(Ok(s)) => s,
                Some(Err(e)) => {
                    eprintln!("invalid input: {e}; nothing was sent");
                    return Ok(exit::USAGE);
                }
                None => return Err("the command names no player; give --shard".into()),
            },
        };
        return match client.submit_to(shard, cmd).await {
            Ok(outcome) => {
                let (human, code) = render_outcome(shard, &outcome);
                print(to_json(&outcome), human);
                Ok(code)
            }
            Err(e) => {
                let (human, code) = render_write_error(&e);
                eprintln!("{human}");
                Ok(code)
            }
        };
    }
    match &args.op {
        ClientOp::Balance { player: p, currency: c } => {
            let account = AccountRef::player(player(p)?, currency(c)?);
            let view = client.balance(&account, None).await.map_err(|e| e.to_string())?;
            let applied = opt(view.applied_index);
            let human = match view.balance {
                Some(b) => format!(
                    "{account}: {}  available {}  held {}  (shard {}, applied index {applied}, linearizable)",
                    account.currency().format(b.posted),
                    account.currency().format(b.available()),
                    account.currency().format(b.held),
                    view.shard,
                ),
                None => format!("{account}: no such wallet (shard {})", view.shard),
            };
            print(to_json(&view), human);
        }
        ClientOp::Entries { node, shard, from, limit } => {
            let addr = node.clone().unwrap_or(first);
            let entries = client.entries(&addr, *shard, *from, *limit).await.map_err(|e| e.to_string())?;
            if args.json {
                for e in &entries {
                    println!("{}", to_json(e));
                }
            } else if entries.is_empty() {
                println!("shard {shard} on {addr}: no entries from #{from}");
            } else {
                for e in &entries {
                    let c = e.currency();
                    println!(
                        "shard {} #{:<6} {} {:<18} {:<18} {} -> {}  {}  hash {}",
                        e.shard,
                        e.seq,
                        format_time(e.at),
                        e.kind.name(),
                        e.tx,
                        e.debit,
                        e.credit,
                        c.format(e.amount as i64),
                        &hex(&e.hash)[..16]
                    );
                }
            }
        }
        ClientOp::Status { node } => {
            let addrs = match node {
                Some(n) => vec![n.clone()],
                None => nodes.clone(),
            };
            let mut failed = 0;
            for addr in &addrs {
                match client.status(addr).await {
                    Ok(status) => print(to_json(&status), render_status(&status)),
                    Err(e) => {
                        failed += 1;
                        eprintln!("{addr}: no status: {e}");
                    }
                }
            }
            if failed == addrs.len() {
                return Ok(exit::FAILED);
            }
        }
        ClientOp::Verify { node, shard } => {
            let addr = node.clone().unwrap_or(first);
            let report = client.verify(&addr, *shard).await.map_err(|e| e.to_string())?;
            let human = if report.ok() {
                format!("shard {} on {addr}: OK, {} entries, head {}", report.shard, report.entries, report.head_hash)
            } else {
                format!(
                    "shard {} on {addr}: FAILED after {} entries: {}",
                    report.shard,
                    report.entries,
                    report.error.clone().unwrap_or_else(|| "replayed balances differ from the live ledger".into())
                )
            };
            let ok = report.ok();
            print(to_json(&report), human);
            return Ok(if ok { exit::OK } else { exit::VERIFY_FAILED });
        }
        _ => unreachable!("write operations returned above"),
    }
    Ok(exit::OK)
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("-".to_string(), |v| v.to_string())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_parse_from_their_printed_form() {
        for s in ["player:alice:EUR", "house:USD", "external:JPY"] {
            assert_eq!(parse_account(s).unwrap().to_string(), s);
        }
        assert!(parse_account("player:alice").is_err());
        assert!(parse_account("bank:EUR").is_err());
        assert!(parse_account("house:XXX").is_err());
    }

    #[test]
    fn client_input_errors_are_caught_before_sending() {
        let deposit = |amount: &str| ClientOp::Deposit {
            tx: "t".into(),
            player: "alice".into(),
            currency: "EUR".into(),
            amount: amount.into(),
        };
        assert!(command(&deposit("10.00")).unwrap().is_some());
        assert!(command(&deposit("0")).unwrap_err().contains("positive"));
        assert!(command(&deposit("-1")).is_err());
        let same = ClientOp::Transfer {
            tx: "t".into(),
            from: "a".into(),
            to: "a".into(),
            currency: "EUR".into(),
            amount: "1".into(),
        };
        assert!(command(&same).unwrap_err().contains("same"));
        let long_tx = ClientOp::Open { tx: "x".repeat(65), player: "a".into(), currency: "EUR".into() };
        assert!(command(&long_tx).unwrap_err().contains("--tx"));
    }
}
