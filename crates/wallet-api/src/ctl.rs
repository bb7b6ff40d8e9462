//! `walletctl`: the wallet API from a terminal. Amounts are decimals in the currency ("12.50");
//! every money-moving command gets a fresh idempotency key unless `--key` gives one, and prints
//! it, so a command whose outcome is unknown can be retried safely with the same key.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use raft_ledger::Currency;
use tonic::Status;
use tonic::transport::Channel;

use crate::amount::parse_amount;
use crate::api::auth::Rpc;
use crate::api::client::{Credentials, connect, new_key};
use crate::api::convert::verify_proof;
use crate::api::errors::reason_of;
use crate::api::pb;
use crate::api::pb::wallet_client::WalletClient;

/// Command line of `walletctl`.
#[derive(Debug, Parser)]
#[command(name = "walletctl", version, about = "Command-line client of the casino wallet API")]
pub struct Cli {
    /// Wallet API address (`walletd demo` prints one).
    #[arg(long, env = "WALLET_ADDR", default_value = "127.0.0.1:8001", global = true)]
    pub addr: String,
    /// Operator key id.
    #[arg(long, env = "WALLET_KEY_ID", global = true)]
    pub key_id: Option<String>,
    /// Operator key secret, hex. Prefer the environment variable to keep it out of shell history.
    #[arg(long, env = "WALLET_KEY_SECRET", hide_env_values = true, global = true)]
    pub key_secret: Option<String>,
    /// A player's access token, instead of an operator key.
    #[arg(long, env = "WALLET_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// The device fingerprint the player's session is bound to.
    #[arg(long, env = "WALLET_DEVICE", default_value = "", global = true)]
    pub device: String,
    /// Per-call deadline in seconds.
    #[arg(long, default_value_t = 10, global = true)]
    pub timeout: u64,
    /// Print responses as JSON-like debug output instead of text.
    #[arg(long, global = true)]
    pub raw: bool,
    /// What to do.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// An idempotency key option.
#[derive(Debug, Args)]
pub struct Key {
    /// Idempotency key; a fresh one is made and printed if omitted. Reuse it to retry.
    #[arg(long)]
    pub key: Option<String>,
}

/// `walletctl` commands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Open a player's wallet.
    Open {
        player: String,
        currency: String,
        #[command(flatten)]
        key: Key,
    },
    /// Deposit money.
    Deposit {
        player: String,
        currency: String,
        amount: String,
        #[command(flatten)]
        key: Key,
    },
    /// Place a bet in a round.
    Bet {
        player: String,
        round: String,
        currency: String,
        amount: String,
        #[command(flatten)]
        key: Key,
    },
    /// Pay a win for a round.
    Win {
        player: String,
        round: String,
        currency: String,
        amount: String,
        #[command(flatten)]
        key: Key,
    },
    /// Roll back a bet (by the bet's idempotency key).
    Rollback {
        player: String,
        round: String,
        bet: String,
        #[command(flatten)]
        key: Key,
    },
    /// Withdrawals: reserve a hold, then commit or cancel it.
    #[command(subcommand)]
    Withdraw(Withdraw),
    /// Move money between two players of one shard.
    Transfer {
        from: String,
        to: String,
        currency: String,
        amount: String,
        #[command(flatten)]
        key: Key,
    },
    /// Show a balance (linearizable unless --stale).
    Balance {
        player: String,
        currency: String,
        /// Accept a possibly stale read from the node you call, for display.
        #[arg(long)]
        stale: bool,
        /// With --stale: the most staleness acceptable, in ms (default 5000); a replica that
        /// cannot promise it answers with a read at the leader instead.
        #[arg(long, requires = "stale")]
        max_staleness_ms: Option<u32>,
    },
    /// List a player's ledger entries, oldest first.
    History {
        player: String,
        /// First sequence number.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Most entries to show.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Follow entries as they commit (a player's, or a whole shard's with --shard).
    Watch {
        /// The player; omit with --shard for every entry of a shard.
        player: Option<String>,
        #[arg(long, default_value_t = 0)]
        shard: u32,
        #[arg(long, default_value_t = 1)]
        from: u64,
    },
    /// Fetch an entry's hash-chain proof and check it locally.
    Proof {
        shard: u32,
        seq: u64,
        /// Chain to this entry (default: the head, or 999 entries on).
        #[arg(long, default_value_t = 0)]
        anchor: u64,
    },
}

/// Withdrawal steps.
#[derive(Debug, Subcommand)]
pub enum Withdraw {
    /// Hold money for a withdrawal; the key names the hold.
    Reserve {
        player: String,
        currency: String,
        amount: String,
        /// Hold lifetime in seconds (default 15 minutes).
        #[arg(long)]
        hold_secs: Option<u64>,
        #[command(flatten)]
        key: Key,
    },
    /// Pay out a hold.
    Commit {
        player: String,
        hold: String,
        #[command(flatten)]
        key: Key,
    },
    /// Release a hold.
    Cancel {
        player: String,
        hold: String,
        #[command(flatten)]
        key: Key,
    },
}

fn money(text: &str, currency: &str) -> Result<i64, String> {
    let c = Currency::new(currency).map_err(|e| format!("currency {currency:?}: {e}"))?;
    parse_amount(text, c)
}

fn fmt_minor(currency: &str, minor: i64) -> String {
    Currency::new(currency).map(|c| c.format(minor)).unwrap_or_else(|_| format!("{minor} {currency}"))
}

fn describe(s: &Status) -> String {
    let reason = reason_of(s).unwrap_or_else(|| "-".into());
    format!("{:?} {}: {}", s.code(), reason, s.message())
}

/// Prints a refusal and returns the exit code for it.
fn refused(s: &Status) -> i32 {
    eprintln!("refused: {}", describe(s));
    2
}

fn account_name(a: &Option<pb::Account>) -> String {
    match a {
        Some(a) if a.kind == pb::AccountKind::Player as i32 => format!("{}/{}", a.player_id, a.currency),
        Some(a) if a.kind == pb::AccountKind::House as i32 => format!("house/{}", a.currency),
        Some(a) => format!("external/{}", a.currency),
        None => "?".into(),
    }
}

fn show_tx(r: &pb::TransactionResponse, replayed: bool) {
    let what = if replayed { "already applied (original result)" } else { "applied" };
    println!("{what}: key {} shard {} seq {}", r.idempotency_key, r.shard, r.seq);
    for b in &r.balances {
        let cur = b.account.as_ref().map(|a| a.currency.as_str()).unwrap_or("");
        println!(
            "  {:<28} available {:>16}  held {:>12}",
            account_name(&b.account),
            fmt_minor(cur, b.available),
            fmt_minor(cur, b.held)
        );
    }
}

fn show_entry(e: &pb::LedgerEntry) {
    let kind = pb::EntryKind::try_from(e.kind).map(|k| k.as_str_name()).unwrap_or("?");
    let cur = e.debit.as_ref().map(|a| a.currency.clone()).unwrap_or_default();
    println!(
        "{:>4}:{:<8} {:<28} {:>14}  {} -> {}  tx {}{}",
        e.shard,
        e.seq,
        kind.trim_start_matches("ENTRY_KIND_"),
        fmt_minor(&cur, i64::try_from(e.amount).unwrap_or(i64::MAX)),
        account_name(&e.debit),
        account_name(&e.credit),
        e.tx_id,
        if e.round_id.is_empty() { String::new() } else { format!(" round {}", e.round_id) },
    );
}

struct Ctl {
    client: WalletClient<Channel>,
    creds: Credentials,
    timeout: Duration,
    raw: bool,
}

impl Ctl {
    fn req<M: prost::Message>(&self, rpc: Rpc, msg: M) -> tonic::Request<M> {
        self.creds.request(rpc, msg, self.timeout)
    }

    fn key(&self, k: &Key) -> String {
        match &k.key {
            Some(k) => k.clone(),
            None => {
                let k = new_key("ctl");
                eprintln!("idempotency key: {k}  (retry with --key {k})");
                k
            }
        }
    }

    fn done(&self, r: Result<tonic::Response<pb::TransactionResponse>, Status>) -> Result<i32, String> {
        match r {
            Ok(resp) => {
                let replayed = resp.metadata().contains_key(crate::api::service::REPLAYED_HEADER);
                if self.raw {
                    println!("{:#?}", resp.get_ref());
                } else {
                    show_tx(resp.get_ref(), replayed);
                }
                Ok(0)
            }
            Err(s) => {
                refused(&s);
                if matches!(s.code(), tonic::Code::DeadlineExceeded | tonic::Code::Unavailable) {
                    eprintln!("the outcome is unknown: run the same command again with the same --key");
                }
                Ok(2)
            }
        }
    }
}

/// Runs `walletctl` and returns the exit code: 0 done, 2 refused, 1 usage or connection error.
pub async fn run(cli: Cli) -> Result<i32, String> {
    let creds = match (&cli.token, &cli.key_id, &cli.key_secret) {
        (Some(token), _, _) => Credentials::Player { token: token.clone(), device: cli.device.clone() },
        (None, Some(id), Some(secret)) => Credentials::Operator {
            key_id: id.clone(),
            secret: hex::decode(secret).map_err(|_| "the key secret must be hex".to_string())?,
        },
        _ => {
            return Err(
                "no credentials: set WALLET_KEY_ID and WALLET_KEY_SECRET (walletd demo prints them), or WALLET_TOKEN"
                    .into(),
            );
        }
    };
    let client = connect(&cli.addr).await.map_err(|e| format!("cannot reach the wallet API at {}: {e}", cli.addr))?;
    let mut c = Ctl { client, creds, timeout: Duration::from_secs(cli.timeout), raw: cli.raw };
    match cli.cmd {
        Cmd::Open { player, currency, key } => {
            let m = pb::OpenWalletRequest { idempotency_key: c.key(&key), player_id: player, currency };
            let r = c.client.clone().open_wallet(c.req(Rpc::OpenWallet, m)).await;
            c.done(r)
        }
        Cmd::Deposit { player, currency, amount, key } => {
            let amount = money(&amount, &currency)?;
            let m = pb::DepositRequest { idempotency_key: c.key(&key), player_id: player, currency, amount };
            let r = c.client.clone().deposit(c.req(Rpc::Deposit, m)).await;
            c.done(r)
        }
        Cmd::Bet { player, round, currency, amount, key } => {
            let amount = money(&amount, &currency)?;
            let m = pb::PlaceBetRequest {
                idempotency_key: c.key(&key),
                player_id: player,
                round_id: round,
                currency,
                amount,
            };
            let r = c.client.clone().place_bet(c.req(Rpc::PlaceBet, m)).await;
            c.done(r)
        }
        Cmd::Win { player, round, currency, amount, key } => {
            let amount = money(&amount, &currency)?;
            let m = pb::SettleWinRequest {
                idempotency_key: c.key(&key),
                player_id: player,
                round_id: round,
                currency,
                amount,
            };
            let r = c.client.clone().settle_win(c.req(Rpc::SettleWin, m)).await;
            c.done(r)
        }
        Cmd::Rollback { player, round, bet, key } => {
            let m = pb::RollbackBetRequest {
                idempotency_key: c.key(&key),
                player_id: player,
                round_id: round,
                bet_id: bet,
            };
            let r = c.client.clone().rollback_bet(c.req(Rpc::RollbackBet, m)).await;
            c.done(r)
        }
        Cmd::Withdraw(Withdraw::Reserve { player, currency, amount, hold_secs, key }) => {
            let amount = money(&amount, &currency)?;
            let m = pb::ReserveWithdrawalRequest {
                idempotency_key: c.key(&key),
                player_id: player,
                currency,
                amount,
                hold_timeout_ms: hold_secs.map_or(0, |s| s.saturating_mul(1000)),
            };
            let r = c.client.clone().reserve_withdrawal(c.req(Rpc::ReserveWithdrawal, m)).await;
            c.done(r)
        }
        Cmd::Withdraw(Withdraw::Commit { player, hold, key }) => {
            let m = pb::CommitWithdrawalRequest { idempotency_key: c.key(&key), player_id: player, hold_id: hold };
            let r = c.client.clone().commit_withdrawal(c.req(Rpc::CommitWithdrawal, m)).await;
            c.done(r)
        }
        Cmd::Withdraw(Withdraw::Cancel { player, hold, key }) => {
            let m = pb::CancelWithdrawalRequest { idempotency_key: c.key(&key), player_id: player, hold_id: hold };
            let r = c.client.clone().cancel_withdrawal(c.req(Rpc::CancelWithdrawal, m)).await;
            c.done(r)
        }
        Cmd::Transfer { from, to, currency, amount, key } => {
            let amount = money(&amount, &currency)?;
            let m = pb::TransferRequest {
                idempotency_key: c.key(&key),
                from_player_id: from,
                to_player_id: to,
                currency,
                amount,
            };
            let r = c.client.clone().transfer(c.req(Rpc::Transfer, m)).await;
            c.done(r)
        }
        Cmd::Balance { player, currency, stale, max_staleness_ms } => {
            let consistency = if stale { pb::ReadConsistency::Stale } else { pb::ReadConsistency::Linearizable } as i32;
            let m = pb::GetBalanceRequest {
                player_id: player.clone(),
                currency: currency.clone(),
                consistency,
                max_staleness_ms: max_staleness_ms.unwrap_or(0),
            };
            match c.client.get_balance(c.req(Rpc::GetBalance, m)).await {
                Ok(r) => {
                    let r = r.into_inner();
                    if c.raw {
                        println!("{r:#?}");
                        return Ok(0);
                    }
                    let b = r.balance.unwrap_or_default();
                    let how = if r.consistency == pb::ReadConsistency::Stale as i32 {
                        format!(
                            "stale read, at most {} ms old and {} entries behind the commit index",
                            r.staleness_ms, r.lag_entries
                        )
                    } else {
                        "linearizable".to_string()
                    };
                    println!(
                        "{player} {currency}: available {}  held {}  posted {}  (shard {} as of seq {}, {how})",
                        fmt_minor(&currency, b.available),
                        fmt_minor(&currency, b.held),
                        fmt_minor(&currency, b.posted),
                        r.shard,
                        r.as_of_seq
                    );
                    Ok(0)
                }
                Err(s) => Ok(refused(&s)),
            }
        }
        Cmd::History { player, from, limit } => {
            let mut next = from;
            let mut shown = 0u32;
            while shown < limit {
                let m = pb::ListEntriesRequest {
                    player_id: player.clone(),
                    shard: 0,
                    from_seq: next,
                    page_size: (limit - shown).min(1000),
                };
                let page = match c.client.list_entries(c.req(Rpc::ListEntries, m)).await {
                    Ok(p) => p.into_inner(),
                    Err(s) => return Ok(refused(&s)),
                };
                for e in &page.entries {
                    show_entry(e);
                }
                shown += page.entries.len() as u32;
                if page.next_seq > page.head_seq || page.next_seq == next {
                    break;
                }
                next = page.next_seq;
            }
            Ok(0)
        }
        Cmd::Watch { player, shard, from } => watch(&mut c, player.unwrap_or_default(), shard, from).await,
        Cmd::Proof { shard, seq, anchor } => {
            let m = pb::GetEntryProofRequest { shard, seq, anchor_seq: anchor };
            match c.client.get_entry_proof(c.req(Rpc::GetEntryProof, m)).await {
                Ok(r) => {
                    let p = r.into_inner();
                    if let Some(e) = &p.entry {
                        show_entry(e);
                    }
                    match verify_proof(&p.links) {
                        Ok(h) if h.as_slice() == p.anchor_hash.as_slice() => {
                            println!(
                                "proof ok: entry {seq} chains through {} links to entry {} with hash {}",
                                p.links.len(),
                                p.anchor_seq,
                                hex::encode(h)
                            );
                            Ok(0)
                        }
                        Ok(_) => {
                            eprintln!("proof FAILED: the chain does not end at the anchor hash");
                            Ok(3)
                        }
                        Err(e) => {
                            eprintln!("proof FAILED: {e}");
                            Ok(3)
                        }
                    }
                }
                Err(s) => Ok(refused(&s)),
            }
        }
    }
}

/// Follows a stream, resuming after each disconnect from the last entry seen.
async fn watch(c: &mut Ctl, player: String, shard: u32, from: u64) -> Result<i32, String> {
    let mut next = from.max(1);
    loop {
        let m = pb::WatchEntriesRequest { player_id: player.clone(), shard, from_seq: next };
        let mut req = c.creds.request(Rpc::WatchEntries, m, Duration::from_secs(24 * 3600));
        req.set_timeout(Duration::from_secs(24 * 3600));
        match c.client.watch_entries(req).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(e)) => {
                            next = e.seq + 1;
                            show_entry(&e);
                        }
                        Ok(None) => break,
                        Err(s) => {
                            eprintln!("stream interrupted ({}); resuming from seq {next}", describe(&s));
                            break;
                        }
                    }
                }
            }
            Err(s) if matches!(s.code(), tonic::Code::Unavailable) => {
                eprintln!("cannot watch now ({}); retrying", describe(&s));
            }
            Err(s) => return Ok(refused(&s)),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
