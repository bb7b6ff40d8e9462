//! Regressions from issue 13 (what a new user and an outside test found), on real processes:
//! unknown outcomes and usage errors get their own exit codes, health means "can commit now",
//! the API's edge answers malformed and re-encoded requests correctly, cancelled calls do not
//! tear down a shared connection, and membership carries regions and API addresses.

// Amounts are written as euros_cents: 100_00 is 100.00 EUR.
#![allow(clippy::inconsistent_digit_grouping)]

use std::time::{Duration, Instant};

use e2e_tests::api::*;
use prost::Message;
use tonic::Code;
use wallet_api::api::auth::Rpc;
use wallet_api::api::errors::reason_of;
use wallet_api::api::pb;

fn shard_of(player: &str) -> u32 {
    ledger_core::shard_for_player(&ledger_core::PlayerId::new(player).unwrap(), SHARDS).0
}

/// Polls `check` for up to `within`.
async fn eventually(within: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} did not happen within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t90_without_a_quorum_health_says_so_and_writes_end_outcome_unknown_not_refused() {
    let mut cl = Cluster::start().await;
    let player = "quinn";
    let shard = shard_of(player);
    let mut c = cl.client(0).await;
    open_and_fund(&mut c, &cl.cashier, player, 100_00).await;
    let shard_service = format!("casino.wallet.v1.Wallet/shard/{shard}");
    eventually(Duration::from_secs(10), "SERVING with every node up", async || serving(&cl, 0, &shard_service).await)
        .await;

    // Two of three nodes stop: node 0 can no longer get anything committed.
    cl.nodes[1].stop();
    cl.nodes[2].stop();
    eventually(Duration::from_secs(5), "NOT_SERVING for the shard", async || !serving(&cl, 0, &shard_service).await)
        .await;
    assert!(!serving(&cl, 0, "casino.wallet.v1.Wallet").await, "the service as a whole is not serving either");

    // A bet now: the outcome is unknown (exit 4), said so, with the key to retry with.
    let (code, out, err) =
        ctl_at(&cl, 0, 0, &["bet", player, "r-q", "EUR", "1.00", "--key", "bet-q", "--timeout", "2"]);
    assert_eq!(code, 4, "outcome unknown has its own exit code\nstdout: {out}\nstderr: {err}");
    assert!(err.contains("outcome unknown") && err.contains("--key bet-q"), "{err}");
    assert!(!err.contains("refused"), "{err}");
    // The node API client too.
    let (code, _, err) = walletd_client(
        &cl,
        &[
            "--deadline-secs",
            "2",
            "bet",
            "--tx",
            "bet-q2",
            "--player",
            player,
            "--round",
            "r-q2",
            "--currency",
            "EUR",
            "--amount",
            "1",
        ],
    );
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("outcome unknown"), "{err}");
    // The status of a node names the leader it last heard and how long ago.
    let (code, out, _) = walletd_client(&cl, &["status"]);
    assert_eq!(code, 0, "one node answers");
    assert!(
        out.contains("node 1 ") && (out.contains("no leader heard from") || out.contains("without a quorum")),
        "{out}"
    );

    // Back to a quorum: serving again, and the same key applies at most once.
    cl.nodes[1].restart();
    cl.nodes[2].restart();
    eventually(Duration::from_secs(20), "SERVING again", async || serving(&cl, 0, &shard_service).await).await;
    let (code, out, err) = ctl_at(&cl, 0, 0, &["bet", player, "r-q", "EUR", "1.00", "--key", "bet-q"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = ctl_at(&cl, 0, 2, &["--json", "history", player]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().filter(|l| l.contains("\"bet-q\"")).count(), 1, "applied exactly once: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t91_usage_errors_refusals_and_json_are_told_apart() {
    let cl = Cluster::start().await;
    let (game, cashier, audit) = (0, 1, 2);
    // A typo is a usage error (64), not a refusal (2).
    let (code, _, err) = ctl(&cl, game, &["bett", "x"]);
    assert_eq!(code, 64, "{err}");
    let (code, _, _) = ctl(&cl, game, &["bet", "x", "r", "EUR", "1.00", "--nope"]);
    assert_eq!(code, 64);
    // A negative amount is read as an amount (and refused as one), not as a flag.
    let (code, _, err) = ctl(&cl, cashier, &["deposit", "x", "EUR", "-1"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("positive") || err.contains("negative"), "{err}");
    let (code, _, err) =
        walletd_client(&cl, &["deposit", "--tx", "t", "--player", "x", "--currency", "EUR", "--amount", "-1"]);
    assert_eq!(code, 64, "{err}");
    let (code, _, err) = walletd_client(&cl, &["status", "--nope"]);
    assert_eq!(code, 64, "{err}");
    // --json anywhere on the line, for walletd client and walletctl alike.
    let (code, out, err) = walletd_client(&cl, &["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 3, "walletd client status asks every node: {out}");
    for line in out.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("one JSON object per node");
        let regions: Vec<&str> =
            v["shards"].as_array().unwrap().iter().filter_map(|s| s["leader_region"].as_str()).collect();
        assert!(regions.iter().all(|r| r.starts_with("region-")), "--peer carried each member's region: {v}");
    }
    let (player, payee) = same_shard_pair("t91");
    assert_eq!(ctl(&cl, cashier, &["open", &player, "EUR"]).0, 0);
    assert_eq!(ctl(&cl, cashier, &["open", &payee, "EUR"]).0, 0);
    let (code, out, _) = ctl(&cl, cashier, &["deposit", &player, "EUR", "10.00", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("walletctl --json prints JSON");
    let wallet =
        v["balances"].as_array().unwrap().iter().find(|b| b["account"]["playerId"] == player.as_str()).unwrap();
    assert_eq!(wallet["available"], "1000", "protobuf JSON: int64 as a string");
    assert_eq!(ctl(&cl, cashier, &["transfer", &player, &payee, "EUR", "1.00"]).0, 0);
    // A refusal is 2, with its reason; as JSON it says it was refused.
    let (code, out, err) = ctl(&cl, game, &["bet", &player, "r", "EUR", "500.00", "--json"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("FAILED_PRECONDITION INSUFFICIENT_FUNDS"), "no Rust debug names: {err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (v["error"]["reason"].as_str(), v["error"]["outcome"].as_str()),
        (Some("INSUFFICIENT_FUNDS"), Some("refused"))
    );
    // A rollback of a bet never seen says what happened instead of "seq 0".
    let (code, out, _) = ctl(&cl, game, &["rollback", &player, "r-9", "never-placed"]);
    assert_eq!(code, 0);
    assert!(out.contains("no money moved") && !out.contains("seq 0"), "{out}");
    // A history with nothing in it says so.
    let (code, out, _) = ctl(&cl, audit, &["history", "nobody"]);
    assert_eq!(code, 0);
    assert!(out.contains("no entries for nobody"), "{out:?}");
    // Any RPC from JSON, signed: what grpcurl cannot do alone.
    let (code, out, err) =
        ctl(&cl, cashier, &["call", "GetBalance", &format!("{{\"playerId\":\"{player}\",\"currency\":\"EUR\"}}")]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["balance"]["available"], "900");
    let (code, out, _) = ctl(
        &cl,
        game,
        &["call", "Deposit", "{\"idempotencyKey\":\"c1\",\"playerId\":\"x\",\"currency\":\"EUR\",\"amount\":\"5\"}"],
    );
    assert_eq!(code, 2);
    assert!(out.contains("ROLE_FORBIDDEN"), "{out}");
    assert_eq!(ctl(&cl, game, &["call", "NoSuchMethod", "{}"]).0, 64);
    assert_eq!(ctl(&cl, game, &["call", "PlaceBet", "{not json"]).0, 64);

    // The node port wants the cluster key: without it, or with another, nothing is served.
    let out = e2e_tests::walletd_command()
        .args(["client", "status"])
        .env("WALLETD_NODES", cl.raft.join(","))
        .env_remove("WALLETD_CLUSTER_KEY_FILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no cluster key"));
    let wrong = cl.dir.path().join("wrong.key");
    std::fs::write(&wrong, random_hex(32)).unwrap();
    let out = e2e_tests::walletd_command()
        .args(["client", "deposit", "--tx", "steal", "--player", &player, "--currency", "EUR", "--amount", "1000"])
        .env("WALLETD_NODES", cl.raft.join(","))
        .env("WALLETD_CLUSTER_KEY_FILE", &wrong)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cluster key"));
    let mut c = cl.client(0).await;
    assert_eq!(available(&mut c, &cl.cashier, &player).await, 9_00, "nothing was deposited");
}

/// Sends `body` as one gRPC message to `rpc` on node 0, signed over exactly those bytes, as a
/// plain HTTP/2 request; returns the response's headers (a refusal's status is in them).
async fn raw_http(
    cl: &Cluster,
    rpc: Rpc,
    body: Vec<u8>,
    creds: &wallet_api::api::client::Credentials,
) -> http::HeaderMap {
    use tower::ServiceExt;
    let channel = wallet_api::api::client::channel(&cl.api[0]).await.unwrap();
    let signed = creds.raw_request(rpc, body.clone(), T);
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
    framed.extend_from_slice(&body);
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}{}", cl.api[0], rpc.path()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(http_body_util::Full::new(bytes::Bytes::from(framed))))
        .unwrap();
    req.headers_mut().extend(signed.metadata().clone().into_headers());
    channel.oneshot(req).await.unwrap().headers().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t92_the_api_edge_checks_signatures_over_received_bytes_and_refuses_garbage_plainly() {
    let cl = Cluster::start().await;
    let player = "rhea";
    let mut c = cl.client(0).await;
    open_and_fund(&mut c, &cl.cashier, player, 100_00).await;

    // Bytes that are not a PlaceBetRequest: INVALID_ARGUMENT / MALFORMED_REQUEST, no decoder text.
    let headers = raw_http(&cl, Rpc::PlaceBet, vec![0x0a, 0xff, 0xff, 0xff], &cl.game).await;
    let s = tonic::Status::from_header_map(&headers).expect("a status in the response headers");
    assert_eq!((s.code(), reason_of(&s).as_deref()), (Code::InvalidArgument, Some("MALFORMED_REQUEST")), "{s:?}");
    for leak in ["decode", "DecodeError", "buffer", "wire type"] {
        assert!(!s.message().contains(leak), "{leak}: {}", s.message());
    }
    // The message travels readable: only what gRPC requires is percent-encoded.
    let raw = headers.get("grpc-message").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    assert!(!raw.contains("%20"), "grpc-message on the wire: {raw}");

    // A request encoded differently from the server's own encoding (fields in reverse order,
    // a default value written out, an unknown field) is checked over the bytes received.
    let bet = pb::PlaceBetRequest {
        idempotency_key: "bet-odd".into(),
        player_id: player.into(),
        round_id: "r-odd".into(),
        currency: "EUR".into(),
        amount: 2_50,
    };
    let canonical = bet.encode_to_vec();
    let mut odd = Vec::new();
    prost::encoding::int64::encode(5, &bet.amount, &mut odd);
    prost::encoding::string::encode(4, &bet.currency, &mut odd);
    prost::encoding::string::encode(3, &bet.round_id, &mut odd);
    prost::encoding::string::encode(2, &bet.player_id, &mut odd);
    prost::encoding::string::encode(1, &bet.idempotency_key, &mut odd);
    prost::encoding::uint64::encode(99, &7, &mut odd);
    assert_ne!(odd, canonical);
    assert_eq!(pb::PlaceBetRequest::decode(odd.as_slice()).unwrap(), bet);
    let api = cl.api[0].clone();
    let send = |signed_over: Vec<u8>, sent: Vec<u8>| {
        let mut req = cl.game.raw_request(Rpc::PlaceBet, signed_over, T);
        *req.get_mut() = sent;
        let api = api.clone();
        async move {
            let channel = wallet_api::api::client::channel(&api).await.unwrap();
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready().await.unwrap();
            let path = http::uri::PathAndQuery::try_from(Rpc::PlaceBet.path()).unwrap();
            grpc.unary(req, path, wallet_api::api::client::RawCodec).await.map(|r| r.into_inner())
        }
    };
    let reply = send(odd.clone(), odd.clone()).await.expect("signed over what was sent: accepted");
    let reply = pb::TransactionResponse::decode(reply.as_slice()).unwrap();
    assert_eq!(reply.balances[0].available, 97_50);
    // And a signature over other bytes than those sent is refused.
    let s = send(canonical, odd).await.unwrap_err();
    assert_eq!(reason_of(&s).as_deref(), Some("SIGNATURE_INVALID"));

    // Reflection answers both protocols and knows google.rpc.ErrorInfo, so tools decode details.
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let ch = wallet_api::api::client::channel(&cl.api[0]).await.unwrap();
    let mut refl = ServerReflectionClient::new(ch.clone());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol("google.rpc.ErrorInfo".into())),
    };
    let mut resp = refl.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let answer = resp.message().await.unwrap().unwrap().message_response;
    assert!(matches!(answer, Some(MessageResponse::FileDescriptorResponse(_))), "{answer:?}");
    let mut alpha = tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient::new(ch);
    let req = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut resp = alpha.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    assert!(resp.message().await.unwrap().is_some(), "v1alpha answers too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t93_calls_cancelled_while_a_node_is_paused_do_not_tear_down_the_connection() {
    let cl = Cluster::start().await;
    let player = "sven";
    let mut c = cl.client(1).await;
    open_and_fund(&mut c, &cl.cashier, player, 1_000_00).await;
    // One connection to node 0: a long-lived watch on it, and many calls that will be cancelled.
    let channel = wallet_api::api::client::channel(&cl.api[0]).await.unwrap();
    let mut watcher = pb::wallet_client::WalletClient::new(channel.clone());
    let m = pb::WatchEntriesRequest { player_id: player.into(), shard: 0, from_seq: 1 };
    let mut stream = watcher
        .watch_entries(cl.audit.request(Rpc::WatchEntries, m, Duration::from_secs(600)))
        .await
        .unwrap()
        .into_inner();
    while stream.message().await.unwrap().unwrap().tx_id != format!("dep-{player}") {}

    // Node 0 freezes (a gray failure); its callers give up on 100 calls, each resetting its stream.
    cl.nodes[0].signal("-STOP");
    let mut calls = Vec::new();
    for i in 0..100 {
        let mut client = pb::wallet_client::WalletClient::new(channel.clone());
        let bet = pb::PlaceBetRequest {
            idempotency_key: format!("cancel-{i}"),
            player_id: player.into(),
            round_id: format!("rc-{i}"),
            currency: "EUR".into(),
            amount: 1,
        };
        let req = cl.game.request(Rpc::PlaceBet, bet, T);
        calls.push(tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_millis(200), client.place_bet(req)).await;
        }));
    }
    for call in calls {
        call.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    cl.nodes[0].signal("-CONT");

    // The watch on the same connection survives and sees the next write.
    let bet = pb::PlaceBetRequest {
        idempotency_key: "after-pause".into(),
        player_id: player.into(),
        round_id: "ra".into(),
        currency: "EUR".into(),
        amount: 1_00,
    };
    c.place_bet(cl.game.request(Rpc::PlaceBet, bet, T)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = tokio::time::timeout(left, stream.message())
            .await
            .expect("the watch kept delivering")
            .unwrap_or_else(|s| panic!("the watch was torn down with its connection: {s:?}"))
            .expect("the stream stays open");
        if e.tx_id == "after-pause" {
            break;
        }
    }
    // And the connection still carries new calls.
    let mut again = pb::wallet_client::WalletClient::new(channel);
    let m =
        pb::GetBalanceRequest { player_id: player.into(), currency: "EUR".into(), consistency: 0, max_staleness_ms: 0 };
    again.get_balance(cl.cashier.request(Rpc::GetBalance, m, T)).await.expect("the connection still works");
}

/// The demo's process, killed if the test ends before it stopped it (a failed assertion): a
/// demo left running is a three-node cluster taking CPU from every later timing test.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn t94_the_commands_the_demo_prints_work_as_shown() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut demo = KillOnDrop(
        std::process::Command::new(e2e_tests::walletd_bin())
            .args(["demo", "--dir", dir.path().join("demo").to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let demo = &mut demo.0;
    // Read everything it prints, to the end: a reader that goes away would end it early.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = demo.stdout.take().unwrap();
    let drain = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
        let done = line.contains("Press Ctrl-C");
        lines.push(line);
        if done {
            break;
        }
    }
    let text = lines.join("\n");
    // The environment the demo tells people to export, and the commands it prints.
    let mut env: Vec<(String, String)> = Vec::new();
    for l in lines.iter().filter_map(|l| l.trim().strip_prefix("export ")) {
        for pair in l.split_whitespace() {
            let (k, v) = pair.split_once('=').unwrap();
            env.push((k.to_string(), v.to_string()));
        }
    }
    let path = env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.replace(":$PATH", "")).expect("a PATH to export");
    let run = |line: &str| {
        let words: Vec<&str> = line.split_whitespace().collect();
        let exe = std::path::Path::new(&path).join(words[0]);
        let mut c = std::process::Command::new(exe);
        c.args(&words[1..]);
        for (k, v) in env.iter().filter(|(k, _)| k != "PATH") {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let printed = |prefix: &str| {
        lines
            .iter()
            .map(|l| l.trim())
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` in\n{text}"))
            .to_string()
    };
    for cmd in [
        "walletctl balance alice EUR",
        "walletctl history alice",
        "walletctl bet alice round-9 EUR 2.50",
        "walletctl transfer alice",
        "walletd client status",
    ] {
        let line = printed(cmd);
        let (code, out, err) = run(line.split('#').next().unwrap());
        assert_eq!(code, Some(0), "`{line}` failed:\n{out}\n{err}");
    }
    let (code, out, _) = run(&printed("walletctl call GetBalance").replace('\'', ""));
    assert_eq!(code, Some(0), "{out}");
    // alice's session came from the session service; her token works, and the printed refresh
    // command gives her new tokens that work too (the old refresh token is spent).
    let as_alice = |token: &str, line: &str| {
        let words: Vec<&str> = line.split_whitespace().collect();
        let mut c = std::process::Command::new(std::path::Path::new(&path).join(words[0]));
        c.args(&words[1..]);
        for (k, v) in env.iter().filter(|(k, _)| k != "PATH") {
            c.env(k, v);
        }
        let out = c.env("WALLET_TOKEN", token).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let token_line = printed("WALLET_TOKEN=");
    let first = token_line.split_whitespace().next().unwrap().strip_prefix("WALLET_TOKEN=").unwrap().to_string();
    let (code, out, err) = as_alice(&first, "walletctl balance alice EUR");
    assert_eq!(code, Some(0), "alice's own token: {out}\n{err}");
    assert!(text.contains("access token lasts"), "the demo says how long alice's token lasts");
    let refresh = printed("eval \"$(walletctl session refresh --export)\"");
    assert!(refresh.contains("walletctl session refresh --export"));
    let (code, out, err) = run("walletctl session refresh --export");
    assert_eq!(code, Some(0), "{out}\n{err}");
    let fresh =
        out.split_whitespace().find_map(|w| w.strip_prefix("WALLET_TOKEN=")).unwrap().trim_matches('\'').to_string();
    let (code, out, err) = as_alice(&fresh, "walletctl session list");
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("(this one)"), "{out}");
    let (code, _, err) = run("walletctl session refresh");
    assert_eq!(code, Some(2), "the printed refresh token works once: {err}");
    let log = printed("walletd security-log");
    let (code, out, err) = run(log.split('#').next().unwrap());
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("refresh_token_reuse"), "{out}");
    assert!(!text.contains("amounts in cents"), "{text}");
    // Ctrl-C stops the demo cleanly.
    let ok = std::process::Command::new("kill").args(["-INT", &demo.id().to_string()]).status().unwrap().success();
    assert!(ok);
    assert!(demo.wait().unwrap().success());
    drain.join().unwrap();
}
