//! `walletctl`: the wallet API from a terminal. Amounts are decimals in the currency ("12.50");
//! every money-moving command gets a fresh idempotency key unless `--key` gives one, and prints
//! it, so a command whose outcome is unknown can be retried safely with the same key.
//!
//! Exit codes are [`crate::exit`]'s: 0 done, 1 failed (nothing changed), 2 refused, 3 a proof
//! that does not verify, 4 outcome unknown (retry with the same key), 64 usage (including values
//! that cannot be sent, such as an amount with too many decimals).

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ledger_core::Currency;
use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor, SerializeOptions};
use tonic::Status;
use tonic::transport::Channel;

use crate::amount::parse_amount;
use crate::api::auth::Rpc;
use crate::api::client::{Credentials, RawCodec, channel, new_key};
use crate::api::convert::verify_proof;
use crate::api::descriptors;
use crate::api::errors::reason_of;
use crate::api::pb;
use crate::api::pb::wallet_client::WalletClient;
use crate::exit;

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
    /// Operator key secret, hex (its bytes are the HMAC key). Prefer the environment variable to
    /// keep it out of shell history.
    #[arg(long, env = "WALLET_KEY_SECRET", hide_env_values = true, global = true)]
    pub key_secret: Option<String>,
    /// A player's access token, instead of an operator key.
    // base64url: a token may begin with '-' (see `SessionCmd::Refresh`).
    #[arg(long, env = "WALLET_TOKEN", hide_env_values = true, global = true, allow_hyphen_values = true)]
    pub token: Option<String>,
    /// The device fingerprint the player's session is bound to.
    #[arg(long, env = "WALLET_DEVICE", default_value = "", global = true)]
    pub device: String,
    /// Per-call deadline in seconds.
    #[arg(long, default_value_t = 10, global = true)]
    pub timeout: u64,
    /// Print results (and errors) as JSON, in protobuf's JSON mapping, one object per line.
    #[arg(long, global = true)]
    pub json: bool,
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
        #[arg(allow_hyphen_values = true)]
        amount: String,
        #[command(flatten)]
        key: Key,
    },
    /// Place a bet in a round.
    Bet {
        player: String,
        round: String,
        currency: String,
        #[arg(allow_hyphen_values = true)]
        amount: String,
        #[command(flatten)]
        key: Key,
    },
    /// Pay a win for a round.
    Win {
        player: String,
        round: String,
        currency: String,
        #[arg(allow_hyphen_values = true)]
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
        #[arg(allow_hyphen_values = true)]
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
    /// Sessions (casino.session.v1): create, refresh, step up, list, revoke, introspect.
    #[command(subcommand)]
    Session(crate::session::ctl::SessionCmd),
    /// Call any RPC with a request given as JSON (protobuf's JSON mapping), signed with the
    /// operator key or carrying the player token; prints the response as JSON. What grpcurl
    /// cannot do alone: grpcurl does not sign requests.
    Call {
        /// The method: `PlaceBet`, or `casino.wallet.v1.Wallet/PlaceBet`.
        method: String,
        /// The request as JSON; `-` or nothing reads it from standard input.
        request: Option<String>,
    },
}

/// Withdrawal steps.
#[derive(Debug, Subcommand)]
pub enum Withdraw {
    /// Hold money for a withdrawal; the key names the hold.
    Reserve {
        player: String,
        currency: String,
        #[arg(allow_hyphen_values = true)]
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

/// A value on the command line that cannot be sent (a usage error: nothing was sent).
struct Invalid(String);

fn money(text: &str, currency: &str) -> Result<i64, Invalid> {
    let c = Currency::new(currency).map_err(|e| Invalid(format!("currency {currency:?}: {e}")))?;
    parse_amount(text, c).map_err(|e| Invalid(format!("amount {text:?}: {e}")))
}

fn fmt_minor(currency: &str, minor: i64) -> String {
    Currency::new(currency).map(|c| c.format(minor)).unwrap_or_else(|_| format!("{minor} {currency}"))
}

/// A status for people: its code, its reason, and its message.
pub(crate) fn describe(s: &Status) -> String {
    match reason_of(s) {
        Some(reason) => format!("{} {reason}: {}", exit::code_name(s.code()), s.message()),
        None => format!("{}: {}", exit::code_name(s.code()), s.message()),
    }
}

/// A status as JSON, with its `ErrorInfo`.
pub(crate) fn status_json(s: &Status, outcome: &str) -> String {
    use tonic_types::StatusExt;
    let info = s.get_details_error_info();
    serde_json::json!({
        "error": {
            "code": exit::code_name(s.code()),
            "message": s.message(),
            "reason": info.as_ref().map(|i| i.reason.clone()),
            "metadata": info.map(|i| i.metadata),
            "outcome": outcome,
        }
    })
    .to_string()
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
    if r.seq == 0 {
        println!(
            "{what}: key {} shard {}: no money moved (a rollback whose bet has not arrived, or had failed; \
             that bet is refused if it arrives later)",
            r.idempotency_key, r.shard
        );
    } else {
        println!("{what}: key {} shard {} entry #{}", r.idempotency_key, r.shard, r.seq);
    }
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
        "shard {:>3} #{:<8} {:<28} {:>14}  {} -> {}  tx {}{}",
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

/// A message as one line of JSON (protobuf's JSON mapping, default values included).
fn message_json(desc: &MessageDescriptor, bytes: &[u8]) -> String {
    let options = SerializeOptions::new().skip_default_fields(false);
    match DynamicMessage::decode(desc.clone(), bytes) {
        Ok(m) => {
            let mut out = serde_json::Serializer::new(Vec::new());
            match m.serialize_with_options(&mut out, &options) {
                Ok(()) => String::from_utf8(out.into_inner()).unwrap_or_default(),
                Err(e) => {
                    serde_json::json!({ "error": { "message": format!("cannot print the response: {e}") } }).to_string()
                }
            }
        }
        Err(e) => serde_json::json!({ "error": { "message": format!("cannot decode the response: {e}") } }).to_string(),
    }
}

/// `msg` as JSON, through its descriptor (wallet and session messages alike).
pub(crate) fn json_of<M: Message>(msg: &M, type_name: &str) -> String {
    let desc = descriptors().get_message_by_name(type_name).expect("a message type of the built-in descriptors");
    message_json(&desc, &msg.encode_to_vec())
}

struct Ctl {
    client: WalletClient<Channel>,
    channel: Channel,
    creds: Credentials,
    timeout: Duration,
    json: bool,
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
                eprintln!("idempotency key: {k}  (to retry: --key {k})");
                k
            }
        }
    }

    /// Reports a failed call and returns its exit code: refused (2) when the server turned it
    /// away, else, for a write, outcome unknown (4), and for a read, failed (1).
    fn failed(&self, s: &Status, write: Option<&str>) -> i32 {
        let refused = exit::is_definite_refusal(s);
        let (code, outcome) = match (refused, write) {
            (true, _) => (exit::REFUSED, "refused"),
            (false, Some(_)) => (exit::UNKNOWN, "unknown"),
            (false, None) => (exit::FAILED, "failed"),
        };
        if self.json {
            println!("{}", status_json(s, outcome));
        }
        match (refused, write) {
            (true, _) => eprintln!("refused: {}", describe(s)),
            (false, Some(key)) => eprintln!(
                "outcome unknown ({}): the call may have applied. Run the same command again with --key {key} \
                 to learn its outcome; it applies at most once",
                describe(s)
            ),
            (false, None) => eprintln!("failed: {}; nothing changed, try again", describe(s)),
        }
        code
    }

    fn done(&self, key: &str, r: Result<tonic::Response<pb::TransactionResponse>, Status>) -> i32 {
        match r {
            Ok(resp) => {
                let replayed = resp.metadata().contains_key(crate::api::service::REPLAYED_HEADER);
                if self.json {
                    println!("{}", json_of(resp.get_ref(), "casino.wallet.v1.TransactionResponse"));
                } else {
                    show_tx(resp.get_ref(), replayed);
                }
                exit::OK
            }
            Err(s) => self.failed(&s, Some(key)),
        }
    }
}

/// The operator key the command line or environment gives (`--key-id`, `--key-secret`), if any.
fn operator_key(key_id: &Option<String>, key_secret: &Option<String>) -> Result<Option<Credentials>, String> {
    match (key_id, key_secret) {
        (Some(id), Some(secret)) => Ok(Some(Credentials::Operator {
            key_id: id.clone(),
            secret: hex::decode(secret.trim()).map_err(|_| "the key secret must be hex".to_string())?,
        })),
        _ => Ok(None),
    }
}

fn credentials(cli: &Cli) -> Result<Credentials, String> {
    match &cli.token {
        Some(token) => Ok(Credentials::Player { token: token.clone(), device: cli.device.clone() }),
        None => operator_key(&cli.key_id, &cli.key_secret)?.ok_or_else(|| {
            "no credentials: set WALLET_KEY_ID and WALLET_KEY_SECRET (walletd demo prints them), or WALLET_TOKEN".into()
        }),
    }
}

/// `walletctl` as a whole process: parses its command line (usage errors exit 64), runs, and
/// exits with the code the outcome deserves.
pub fn main() -> ! {
    exit::quiet_on_broken_pipe();
    let cli: Cli = exit::parse_or_exit();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("walletctl: {e}");
            std::process::exit(exit::FAILED);
        }
    }
}

/// Runs `walletctl` and returns its exit code (see [`crate::exit`]).
pub async fn run(cli: Cli) -> Result<i32, String> {
    if let Cmd::Session(cmd) = cli.cmd {
        // Session calls take whichever credential each needs (a refresh, none at all).
        let operator = operator_key(&cli.key_id, &cli.key_secret)?;
        let channel = channel(&cli.addr).await.map_err(|e| format!("cannot reach the API at {}: {e}", cli.addr))?;
        let ctx = crate::session::ctl::SessionCtx {
            channel,
            operator,
            token: cli.token,
            device: cli.device,
            timeout: Duration::from_secs(cli.timeout),
            json: cli.json,
        };
        return Ok(crate::session::ctl::run(ctx, cmd).await);
    }
    let creds = credentials(&cli)?;
    let channel = channel(&cli.addr).await.map_err(|e| format!("cannot reach the wallet API at {}: {e}", cli.addr))?;
    let mut c = Ctl {
        client: WalletClient::new(channel.clone()),
        channel,
        creds,
        timeout: Duration::from_secs(cli.timeout),
        json: cli.json,
    };
    match run_cmd(&mut c, cli.cmd).await {
        Ok(code) => Ok(code),
        Err(Invalid(why)) => {
            eprintln!("invalid input: {why}; nothing was sent");
            Ok(exit::USAGE)
        }
    }
}

async fn run_cmd(c: &mut Ctl, cmd: Cmd) -> Result<i32, Invalid> {
    Ok(match cmd {
        Cmd::Open { player, currency, key } => {
            let k = c.key(&key);
            let m = pb::OpenWalletRequest { idempotency_key: k.clone(), player_id: player, currency };
            let r = c.client.clone().open_wallet(c.req(Rpc::OpenWallet, m)).await;
            c.done(&k, r)
        }
        Cmd::Deposit { player, currency, amount, key } => {
            let amount = money(&amount, &currency)?;
            let k = c.key(&key);
            let m = pb::DepositRequest { idempotency_key: k.clone(), player_id: player, currency, amount };
            let r = c.client.clone().deposit(c.req(Rpc::Deposit, m)).await;
            c.done(&k, r)
        }
        Cmd::Bet { player, round, currency, amount, key } => {
            let amount = money(&amount, &currency)?;
            let k = c.key(&key);
            let m = pb::PlaceBetRequest {
                idempotency_key: k.clone(),
                player_id: player,
                round_id: round,
                currency,
                amount,
            };
            let r = c.client.clone().place_bet(c.req(Rpc::PlaceBet, m)).await;
            c.done(&k, r)
        }
        Cmd::Win { player, round, currency, amount, key } => {
            let amount = money(&amount, &currency)?;
            let k = c.key(&key);
            let m = pb::SettleWinRequest {
                idempotency_key: k.clone(),
                player_id: player,
                round_id: round,
                currency,
                amount,
            };
            let r = c.client.clone().settle_win(c.req(Rpc::SettleWin, m)).await;
            c.done(&k, r)
        }
        Cmd::Rollback { player, round, bet, key } => {
            let k = c.key(&key);
            let m =
                pb::RollbackBetRequest { idempotency_key: k.clone(), player_id: player, round_id: round, bet_id: bet };
            let r = c.client.clone().rollback_bet(c.req(Rpc::RollbackBet, m)).await;
            c.done(&k, r)
        }
        Cmd::Withdraw(Withdraw::Reserve { player, currency, amount, hold_secs, key }) => {
            let amount = money(&amount, &currency)?;
            let k = c.key(&key);
            let m = pb::ReserveWithdrawalRequest {
                idempotency_key: k.clone(),
                player_id: player,
                currency,
                amount,
                hold_timeout_ms: hold_secs.map_or(0, |s| s.saturating_mul(1000)),
            };
            let r = c.client.clone().reserve_withdrawal(c.req(Rpc::ReserveWithdrawal, m)).await;
            c.done(&k, r)
        }
        Cmd::Withdraw(Withdraw::Commit { player, hold, key }) => {
            let k = c.key(&key);
            let m = pb::CommitWithdrawalRequest { idempotency_key: k.clone(), player_id: player, hold_id: hold };
            let r = c.client.clone().commit_withdrawal(c.req(Rpc::CommitWithdrawal, m)).await;
            c.done(&k, r)
        }
        Cmd::Withdraw(Withdraw::Cancel { player, hold, key }) => {
            let k = c.key(&key);
            let m = pb::CancelWithdrawalRequest { idempotency_key: k.clone(), player_id: player, hold_id: hold };
            let r = c.client.clone().cancel_withdrawal(c.req(Rpc::CancelWithdrawal, m)).await;
            c.done(&k, r)
        }
        Cmd::Transfer { from, to, currency, amount, key } => {
            let amount = money(&amount, &currency)?;
            let k = c.key(&key);
            let m = pb::TransferRequest {
                idempotency_key: k.clone(),
                from_player_id: from,
                to_player_id: to,
                currency,
                amount,
            };
            let r = c.client.clone().transfer(c.req(Rpc::Transfer, m)).await;
            c.done(&k, r)
        }
        Cmd::Balance { player, currency, stale, max_staleness_ms } => {
            balance(c, player, currency, stale, max_staleness_ms).await
        }
        Cmd::History { player, from, limit } => history(c, player, from, limit).await,
        Cmd::Watch { player, shard, from } => watch(c, player.unwrap_or_default(), shard, from).await,
        Cmd::Proof { shard, seq, anchor } => proof(c, shard, seq, anchor).await,
        Cmd::Call { method, request } => call(c, &method, request).await?,
        Cmd::Session(_) => unreachable!("run() handles session commands before credentials"),
    })
}

async fn balance(c: &mut Ctl, player: String, currency: String, stale: bool, max_staleness_ms: Option<u32>) -> i32 {
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
            if c.json {
                println!("{}", json_of(&r, "casino.wallet.v1.GetBalanceResponse"));
                return exit::OK;
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
                "{player} {currency}: available {}  held {}  posted {}  (shard {} as of entry #{}, {how})",
                fmt_minor(&currency, b.available),
                fmt_minor(&currency, b.held),
                fmt_minor(&currency, b.posted),
                r.shard,
                r.as_of_seq
            );
            exit::OK
        }
        Err(s) => c.failed(&s, None),
    }
}

async fn history(c: &mut Ctl, player: String, from: u64, limit: u32) -> i32 {
    let mut next = from;
    let mut shown = 0u32;
    let mut last_page = None;
    while shown < limit {
        let m = pb::ListEntriesRequest {
            player_id: player.clone(),
            shard: 0,
            from_seq: next,
            page_size: (limit - shown).min(1000),
        };
        let page = match c.client.list_entries(c.req(Rpc::ListEntries, m)).await {
            Ok(p) => p.into_inner(),
            Err(s) => return c.failed(&s, None),
        };
        for e in &page.entries {
            if c.json {
                println!("{}", json_of(e, "casino.wallet.v1.LedgerEntry"));
            } else {
                show_entry(e);
            }
        }
        shown += page.entries.len() as u32;
        let done = page.next_seq > page.head_seq || page.next_seq == next;
        next = page.next_seq;
        last_page = Some(page);
        if done {
            break;
        }
    }
    if shown == 0
        && !c.json
        && let Some(p) = last_page
    {
        println!(
            "no entries for {player} from #{from} (the shard's chain has {} entries; a player without a wallet has none)",
            p.head_seq
        );
    }
    exit::OK
}

async fn proof(c: &mut Ctl, shard: u32, seq: u64, anchor: u64) -> i32 {
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
                    exit::OK
                }
                Ok(_) => {
                    eprintln!("proof FAILED: the chain does not end at the anchor hash");
                    exit::VERIFY_FAILED
                }
                Err(e) => {
                    eprintln!("proof FAILED: {e}");
                    exit::VERIFY_FAILED
                }
            }
        }
        Err(s) => c.failed(&s, None),
    }
}

/// Follows a stream, resuming after each disconnect from the last entry seen.
async fn watch(c: &mut Ctl, player: String, shard: u32, from: u64) -> i32 {
    let mut next = from.max(1);
    loop {
        let m = pb::WatchEntriesRequest { player_id: player.clone(), shard, from_seq: next };
        let req = c.creds.request(Rpc::WatchEntries, m, Duration::from_secs(24 * 3600));
        match c.client.watch_entries(req).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(e)) => {
                            next = e.seq + 1;
                            if c.json {
                                println!("{}", json_of(&e, "casino.wallet.v1.LedgerEntry"));
                            } else {
                                show_entry(&e);
                            }
                        }
                        Ok(None) => break,
                        Err(s) => {
                            eprintln!("stream interrupted ({}); resuming from entry #{next}", describe(&s));
                            break;
                        }
                    }
                }
            }
            Err(s) if !exit::is_definite_refusal(&s) => {
                eprintln!("cannot watch now ({}); retrying", describe(&s));
            }
            Err(s) => return c.failed(&s, None),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `walletctl call`: any RPC, JSON in and out, signed over exactly the bytes sent.
async fn call(c: &mut Ctl, method: &str, request: Option<String>) -> Result<i32, Invalid> {
    // JSON in, JSON out: errors too.
    c.json = true;
    let Some(rpc) = Rpc::from_name(method) else {
        let names: Vec<&str> = Rpc::ALL.iter().map(|r| r.name()).collect();
        eprintln!("unknown method {method:?}; one of: {}", names.join(", "));
        return Ok(exit::USAGE);
    };
    let service = descriptors().get_service_by_name(crate::api::SERVICE_NAME).expect("the wallet service");
    let m = service.methods().find(|m| m.name() == rpc.name()).expect("every Rpc is in the proto");
    let text = match request.as_deref() {
        Some(t) if t != "-" => t.to_string(),
        _ => std::io::read_to_string(std::io::stdin()).map_err(|e| Invalid(format!("reading the request: {e}")))?,
    };
    let mut de = serde_json::Deserializer::from_str(&text);
    let msg = match DynamicMessage::deserialize(m.input(), &mut de).and_then(|msg| de.end().map(|()| msg)) {
        Ok(msg) => msg,
        Err(e) => {
            eprintln!("the request is not a {} in protobuf JSON: {e}", m.input().full_name());
            return Ok(exit::USAGE);
        }
    };
    let key = msg.get_field_by_name("idempotency_key").and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    let body = msg.encode_to_vec();
    let timeout = if m.is_server_streaming() { Duration::from_secs(24 * 3600) } else { c.timeout };
    let req = c.creds.raw_request(rpc, body, timeout);
    let path = http::uri::PathAndQuery::try_from(rpc.path()).expect("a valid path");
    let mut grpc = tonic::client::Grpc::new(c.channel.clone());
    if let Err(e) = grpc.ready().await {
        return Ok(c.failed(&Status::unavailable(e.to_string()), None));
    }
    let write = rpc.is_write().then_some(key.as_str());
    if m.is_server_streaming() {
        let mut stream = match grpc.server_streaming(req, path, RawCodec).await {
            Ok(s) => s.into_inner(),
            Err(s) => return Ok(c.failed(&s, write)),
        };
        loop {
            match stream.message().await {
                Ok(Some(bytes)) => println!("{}", message_json(&m.output(), &bytes)),
                Ok(None) => return Ok(exit::OK),
                Err(s) => return Ok(c.failed(&s, None)),
            }
        }
    }
    match grpc.unary(req, path, RawCodec).await {
        Ok(resp) => {
            println!("{}", message_json(&m.output(), resp.get_ref()));
            Ok(exit::OK)
        }
        Err(s) => Ok(c.failed(&s, write)),
    }
}
