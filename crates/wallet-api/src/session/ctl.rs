//! `walletctl session …`: the session service from a terminal.
//!
//! `create` and `step-up` sign with the operator key (it needs the `session` role); `refresh`
//! sends only the refresh token; `list` and `revoke` use the player's token when one is given
//! (`--token` / `WALLET_TOKEN`) and the operator key otherwise; `introspect` signs with the
//! operator key. Calls that return tokens print them, or with `--export` print shell `export`
//! lines for `eval "$(walletctl session refresh --export)"`. Exit codes are walletctl's: 0 done,
//! 1 failed (no answer; nothing is known to have changed), 2 refused, 64 usage.

use std::time::Duration;

use clap::Subcommand;
use tonic::Status;
use tonic::transport::Channel;

use super::pb;
use super::pb::sessions_client::SessionsClient;
use crate::api::client::Credentials;
use crate::exit;

/// `walletctl session` commands.
#[derive(Debug, Subcommand)]
pub enum SessionCmd {
    /// Open a session for a player your identity system has just authenticated (operator key
    /// with the session role). The device is --device / WALLET_DEVICE.
    Create {
        player: String,
        /// The player's IP address.
        #[arg(long, default_value = "127.0.0.1")]
        ip: String,
        /// The level the player authenticated at (1 password, 2 second factor).
        #[arg(long, default_value_t = 1)]
        level: u32,
        /// When the player authenticated, Unix ms (default now).
        #[arg(long)]
        auth_time_ms: Option<u64>,
        /// Print `export WALLET_TOKEN=… WALLET_REFRESH_TOKEN=…` for the shell to eval.
        #[arg(long)]
        export: bool,
    },
    /// Trade a refresh token for new tokens; the old refresh token stops working.
    Refresh {
        /// The refresh token.
        // Tokens are base64url: one in 64 begins with '-', which is still the token, not a flag.
        #[arg(env = "WALLET_REFRESH_TOKEN", hide_env_values = true, allow_hyphen_values = true)]
        refresh_token: String,
        /// Print `export` lines for the shell to eval.
        #[arg(long)]
        export: bool,
    },
    /// Record a second factor for the session of --token / WALLET_TOKEN (operator key with the
    /// session role): new session id and tokens at the higher level.
    StepUp {
        /// The level the player has just authenticated at.
        #[arg(long, default_value_t = 2)]
        level: u32,
        /// The player's IP address (default: this connection's).
        #[arg(long, default_value = "")]
        ip: String,
        /// Print `export` lines for the shell to eval.
        #[arg(long)]
        export: bool,
    },
    /// A player's live sessions (the player's own with --token).
    List {
        /// Whose sessions (optional with a player token).
        #[arg(default_value = "")]
        player: String,
    },
    /// End one session (--session), every other one (--others, with a player token), or all.
    Revoke {
        /// Whose sessions (optional with a player token).
        #[arg(default_value = "")]
        player: String,
        /// The session to end.
        #[arg(long, group = "scope")]
        session: Option<String>,
        /// Every session but the token's own.
        #[arg(long, group = "scope")]
        others: bool,
        /// Every session of the player.
        #[arg(long, group = "scope")]
        all: bool,
    },
    /// Ask whether an access token is valid, for whom and at what level (operator key).
    Introspect {
        /// The token (default: --token / WALLET_TOKEN).
        #[arg(allow_hyphen_values = true)]
        token: Option<String>,
    },
}

/// What a session command needs from walletctl's global options.
pub struct SessionCtx {
    /// A channel to the API.
    pub channel: Channel,
    /// The operator key, if one was given.
    pub operator: Option<Credentials>,
    /// The player's access token, if one was given.
    pub token: Option<String>,
    /// The device fingerprint.
    pub device: String,
    /// Per-call deadline.
    pub timeout: Duration,
    /// JSON output.
    pub json: bool,
}

/// Reports a failed call as walletctl does (`--json`: its error object) and returns the exit
/// code: refused (2) when the service turned the call away, a rate limit included, else failed
/// (1). No session call is retried blindly, so there is no "outcome unknown" here.
fn fail(s: &Status, json: bool) -> i32 {
    let refused = exit::is_definite_refusal(s) || s.code() == tonic::Code::ResourceExhausted;
    let outcome = if refused { "refused" } else { "failed" };
    if json {
        println!("{}", crate::ctl::status_json(s, outcome));
    }
    if refused {
        eprintln!("refused: {}", crate::ctl::describe(s));
        exit::REFUSED
    } else {
        eprintln!("failed: {}; nothing is known to have changed, try again", crate::ctl::describe(s));
        exit::FAILED
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn show_tokens(t: &pb::SessionTokens, device: &str, export: bool, json: bool) {
    if export {
        println!(
            "export WALLET_TOKEN={} WALLET_REFRESH_TOKEN={} WALLET_DEVICE={}",
            shell_quote(&t.access_token),
            shell_quote(&t.refresh_token),
            shell_quote(device)
        );
        eprintln!(
            "session {} for {} at level {}: access token for {} s; the refresh token works once",
            t.session_id, t.player_id, t.auth_level, t.access_expires_in_s
        );
    } else if json {
        println!("{}", crate::ctl::json_of(t, "casino.session.v1.SessionTokens"));
    } else {
        println!("session {} for {} at level {}", t.session_id, t.player_id, t.auth_level);
        println!("access token   {}", t.access_token);
        println!("               expires in {} s (send with x-device-fingerprint {device:?})", t.access_expires_in_s);
        println!("refresh token  {}", t.refresh_token);
        println!("               works once; the session ends at the latest at {} (Unix ms)", t.session_expires_ms);
    }
}

/// Runs one `walletctl session` command; returns its exit code.
pub async fn run(c: SessionCtx, cmd: SessionCmd) -> i32 {
    let mut client = SessionsClient::new(c.channel.clone());
    let path = |m: &str| super::path(m);
    let need_operator = || {
        c.operator.clone().ok_or_else(|| {
            eprintln!("this command signs with an operator key: set WALLET_KEY_ID and WALLET_KEY_SECRET");
            exit::USAGE
        })
    };
    // The player's token when given, else the operator key.
    let either = || match (&c.token, &c.operator) {
        (Some(token), _) => Ok(Credentials::Player { token: token.clone(), device: c.device.clone() }),
        (None, Some(op)) => Ok(op.clone()),
        (None, None) => {
            eprintln!("no credentials: give the player's token (WALLET_TOKEN) or an operator key");
            Err(exit::USAGE)
        }
    };
    let result = async {
        match cmd {
            SessionCmd::Create { player, ip, level, auth_time_ms, export } => {
                let op = need_operator()?;
                let m = pb::CreateSessionRequest {
                    player_id: player,
                    device_fingerprint: c.device.clone(),
                    ip,
                    auth_level: level,
                    auth_time_ms: auth_time_ms.unwrap_or(0),
                };
                let t = client
                    .create_session(op.request_at(&path("CreateSession"), m, c.timeout))
                    .await
                    .map_err(|s| fail(&s, c.json))?;
                show_tokens(t.get_ref(), &c.device, export, c.json);
            }
            SessionCmd::Refresh { refresh_token, export } => {
                let m = pb::RefreshRequest { refresh_token, device_fingerprint: c.device.clone() };
                let mut req = tonic::Request::new(m);
                req.set_timeout(c.timeout);
                let t = client.refresh(req).await.map_err(|s| fail(&s, c.json))?;
                show_tokens(t.get_ref(), &c.device, export, c.json);
            }
            SessionCmd::StepUp { level, ip, export } => {
                let op = need_operator()?;
                let Some(access_token) = c.token.clone() else {
                    eprintln!("give the player's access token to step up (--token or WALLET_TOKEN)");
                    return Err(exit::USAGE);
                };
                let m = pb::StepUpRequest { access_token, device_fingerprint: c.device.clone(), auth_level: level, ip };
                let t =
                    client.step_up(op.request_at(&path("StepUp"), m, c.timeout)).await.map_err(|s| fail(&s, c.json))?;
                show_tokens(t.get_ref(), &c.device, export, c.json);
            }
            SessionCmd::List { player } => {
                let who = either()?;
                let m = pb::ListSessionsRequest { player_id: player };
                let r = client
                    .list_sessions(who.request_at(&path("ListSessions"), m, c.timeout))
                    .await
                    .map_err(|s| fail(&s, c.json))?;
                if c.json {
                    println!("{}", crate::ctl::json_of(r.get_ref(), "casino.session.v1.ListSessionsResponse"));
                } else if r.get_ref().sessions.is_empty() {
                    println!("no live sessions");
                }
                for s in &r.get_ref().sessions {
                    if !c.json {
                        let mark = if s.current { "  (this one)" } else { "" };
                        println!(
                            "{}  level {}  from {}  created {}  last seen {}  ends {}{mark}",
                            s.session_id, s.auth_level, s.ip, s.created_ms, s.last_seen_ms, s.expires_ms
                        );
                    }
                }
            }
            SessionCmd::Revoke { player, session, others, all } => {
                use pb::revoke_request::Scope;
                let who = either()?;
                let scope = match (session.is_some(), others, all) {
                    (true, _, _) => Scope::One,
                    (_, true, _) => Scope::Others,
                    (_, _, true) => Scope::All,
                    _ => {
                        eprintln!("say which: --session ID, --others or --all");
                        return Err(exit::USAGE);
                    }
                };
                let m = pb::RevokeRequest {
                    player_id: player,
                    scope: scope as i32,
                    session_id: session.unwrap_or_default(),
                };
                let r =
                    client.revoke(who.request_at(&path("Revoke"), m, c.timeout)).await.map_err(|s| fail(&s, c.json))?;
                if c.json {
                    println!("{}", crate::ctl::json_of(r.get_ref(), "casino.session.v1.RevokeResponse"));
                } else {
                    println!("{} session(s) ended", r.get_ref().revoked);
                }
            }
            SessionCmd::Introspect { token } => {
                let op = need_operator()?;
                let Some(token) = token.or_else(|| c.token.clone()) else {
                    eprintln!("give the token to check (an argument, --token or WALLET_TOKEN)");
                    return Err(exit::USAGE);
                };
                let m = pb::IntrospectRequest { token, device_fingerprint: c.device.clone() };
                let r = client
                    .introspect(op.request_at(&path("Introspect"), m, c.timeout))
                    .await
                    .map_err(|s| fail(&s, c.json))?;
                let i = r.get_ref();
                if c.json {
                    println!("{}", crate::ctl::json_of(i, "casino.session.v1.IntrospectResponse"));
                } else if i.active {
                    println!(
                        "active: {} session {} level {} (authenticated at {}), expires at {}",
                        i.player_id, i.session_id, i.auth_level, i.auth_time_ms, i.expires_ms
                    );
                } else {
                    println!("inactive");
                }
            }
        }
        Ok::<(), i32>(())
    }
    .await;
    match result {
        Ok(()) => exit::OK,
        Err(code) => code,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::SessionCmd;
    use crate::ctl::{Cli, Cmd};

    #[test]
    fn a_token_that_begins_with_a_hyphen_is_a_token_not_a_flag() {
        // base64url tokens begin with '-' one time in 64 (a CI run met one).
        let cli = Cli::try_parse_from(["walletctl", "session", "refresh", "-v8pQ_x", "--export"]).unwrap();
        let Cmd::Session(SessionCmd::Refresh { refresh_token, export }) = cli.cmd else { panic!("a refresh") };
        assert_eq!((refresh_token.as_str(), export), ("-v8pQ_x", true));
        let cli = Cli::try_parse_from(["walletctl", "--token", "-aB", "session", "list"]).unwrap();
        assert_eq!(cli.token.as_deref(), Some("-aB"));
        let cli = Cli::try_parse_from(["walletctl", "session", "introspect", "-cD"]).unwrap();
        let Cmd::Session(SessionCmd::Introspect { token }) = cli.cmd else { panic!("an introspect") };
        assert_eq!(token.as_deref(), Some("-cD"));
    }
}
