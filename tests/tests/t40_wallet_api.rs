//! The wallet API end to end: three real `walletd` processes serving `casino.wallet.v1` over
//! gRPC, operator keys and player tokens from a session store in real Redis.

// Amounts are written as euros_cents: 100_00 is 100.00 EUR.
#![allow(clippy::inconsistent_digit_grouping)]

use std::time::Duration;

use e2e_tests::api::*;
use e2e_tests::walletctl_bin;
use tonic::Code;
use tonic::transport::Channel;
use wallet_api::api::auth::Rpc;
use wallet_api::api::client::Credentials;
use wallet_api::api::convert::verify_proof;
use wallet_api::api::errors::reason_of;
use wallet_api::api::pb::{self, wallet_client::WalletClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t40_every_rpc_works_end_to_end_through_any_node() {
    let cl = Cluster::start().await;
    // Calls go to different nodes: whichever is not the leader forwards.
    let mut c0 = cl.client(0).await;
    let mut c1 = cl.client(1).await;
    let mut c2 = cl.client(2).await;
    let (alice, bob) = same_shard_pair("e2e");
    open_and_fund(&mut c0, &cl.cashier, &alice, 100_00).await;
    open_and_fund(&mut c1, &cl.cashier, &bob, 10_00).await;

    // A round: bet, win; another bet, rolled back.
    let bet = pb::PlaceBetRequest {
        idempotency_key: "bet-1".into(),
        player_id: alice.clone(),
        round_id: "r1".into(),
        currency: "EUR".into(),
        amount: 25_00,
    };
    let r = c2.place_bet(cl.game.request(Rpc::PlaceBet, bet.clone(), T)).await.unwrap();
    assert!(!r.metadata().contains_key("x-wallet-replayed"));
    let bet_resp = r.into_inner();
    assert!(bet_resp.seq > 0);
    assert_eq!(bet_resp.balances[0].available, 75_00);
    let win = pb::SettleWinRequest {
        idempotency_key: "win-1".into(),
        player_id: alice.clone(),
        round_id: "r1".into(),
        currency: "EUR".into(),
        amount: 40_00,
    };
    let w = c0.settle_win(cl.game.request(Rpc::SettleWin, win, T)).await.unwrap().into_inner();
    assert_eq!(w.seq, bet_resp.seq + 1);
    let bet2 = pb::PlaceBetRequest {
        idempotency_key: "bet-2".into(),
        player_id: alice.clone(),
        round_id: "r2".into(),
        currency: "EUR".into(),
        amount: 5_00,
    };
    c1.place_bet(cl.game.request(Rpc::PlaceBet, bet2, T)).await.unwrap();
    let rb = pb::RollbackBetRequest {
        idempotency_key: "rb-2".into(),
        player_id: alice.clone(),
        round_id: "r2".into(),
        bet_id: "bet-2".into(),
    };
    c2.rollback_bet(cl.game.request(Rpc::RollbackBet, rb, T)).await.unwrap();
    assert_eq!(available(&mut c0, &cl.cashier, &alice).await, 115_00);

    // A retry returns the original response, marked as a replay.
    let again = c1.place_bet(cl.game.request(Rpc::PlaceBet, bet.clone(), T)).await.unwrap();
    assert_eq!(again.metadata().get("x-wallet-replayed").unwrap(), "true");
    assert_eq!(again.into_inner(), bet_resp, "a retry returns the original response");

    // Withdrawals: reserve + commit, reserve + cancel.
    let reserve = |key: &str, amount| pb::ReserveWithdrawalRequest {
        idempotency_key: key.into(),
        player_id: alice.clone(),
        currency: "EUR".into(),
        amount,
        hold_timeout_ms: 60_000,
    };
    let h = c0
        .reserve_withdrawal(cl.cashier.request(Rpc::ReserveWithdrawal, reserve("wd-1", 15_00), T))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.balances[0].held, 15_00);
    let commit = pb::CommitWithdrawalRequest {
        idempotency_key: "wd-1-c".into(),
        player_id: alice.clone(),
        hold_id: "wd-1".into(),
    };
    c1.commit_withdrawal(cl.cashier.request(Rpc::CommitWithdrawal, commit, T)).await.unwrap();
    c2.reserve_withdrawal(cl.cashier.request(Rpc::ReserveWithdrawal, reserve("wd-2", 10_00), T)).await.unwrap();
    let cancel = pb::CancelWithdrawalRequest {
        idempotency_key: "wd-2-c".into(),
        player_id: alice.clone(),
        hold_id: "wd-2".into(),
    };
    let cancelled =
        c0.cancel_withdrawal(cl.cashier.request(Rpc::CancelWithdrawal, cancel, T)).await.unwrap().into_inner();
    assert_eq!(cancelled.balances[0].held, 0);
    assert_eq!(available(&mut c2, &cl.game, &alice).await, 100_00);

    // Transfer.
    let t = pb::TransferRequest {
        idempotency_key: "tr-1".into(),
        from_player_id: alice.clone(),
        to_player_id: bob.clone(),
        currency: "EUR".into(),
        amount: 30_00,
    };
    c1.transfer(cl.cashier.request(Rpc::Transfer, t, T)).await.unwrap();
    assert_eq!(available(&mut c0, &cl.cashier, &bob).await, 40_00);

    // A stale read says so, and says how stale it may be: within the bound asked for.
    let m = pb::GetBalanceRequest {
        player_id: alice.clone(),
        currency: "EUR".into(),
        consistency: pb::ReadConsistency::Stale as i32,
        max_staleness_ms: 2_000,
    };
    let stale = c2.get_balance(cl.cashier.request(Rpc::GetBalance, m, T)).await.unwrap().into_inner();
    assert_eq!(stale.consistency, pb::ReadConsistency::Stale as i32);
    assert!(stale.staleness_ms <= 2_000, "{stale:?}");
    let m =
        pb::GetBalanceRequest { player_id: alice.clone(), currency: "EUR".into(), consistency: 0, max_staleness_ms: 0 };
    let lin = c2.get_balance(cl.cashier.request(Rpc::GetBalance, m, T)).await.unwrap().into_inner();
    assert_eq!(lin.consistency, pb::ReadConsistency::Linearizable as i32);
    assert_eq!(lin.balance.unwrap().available, 70_00);

    // History, paged: alice has open, deposit, bet, win, bet, rollback, reserve, commit,
    // reserve, cancel, transfer = 11 entries.
    let mut seen = Vec::new();
    let mut from = 1;
    loop {
        let m = pb::ListEntriesRequest { player_id: alice.clone(), shard: 0, from_seq: from, page_size: 4 };
        let page = c0.list_entries(cl.audit.request(Rpc::ListEntries, m, T)).await.unwrap().into_inner();
        seen.extend(page.entries.iter().map(|e| (e.seq, e.tx_id.clone())));
        if page.next_seq > page.head_seq {
            break;
        }
        from = page.next_seq;
    }
    let txs: Vec<&str> = seen.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        txs,
        [
            format!("open-{alice}").as_str(),
            &format!("dep-{alice}"),
            "bet-1",
            "win-1",
            "bet-2",
            "rb-2",
            "wd-1",
            "wd-1-c",
            "wd-2",
            "wd-2-c",
            "tr-1"
        ]
    );
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "in sequence order");

    // A proof of the bet checks out locally and matches the entry's hash.
    let shard = bet_resp.shard;
    let m = pb::GetEntryProofRequest { shard, seq: bet_resp.seq, anchor_seq: 0 };
    let proof = c1.get_entry_proof(cl.audit.request(Rpc::GetEntryProof, m, T)).await.unwrap().into_inner();
    let anchor = verify_proof(&proof.links).expect("the chain verifies");
    assert_eq!(anchor.as_slice(), proof.anchor_hash.as_slice());
    assert_eq!(proof.entry.as_ref().unwrap().tx_id, "bet-1");
    let mut forged = proof.links.clone();
    if forged.len() > 1 {
        let last = forged.len() - 1;
        let n = forged[last].encoding.len();
        forged[last].encoding[n - 40] ^= 1;
        assert!(verify_proof(&forged).map(|h| h.as_slice() != proof.anchor_hash.as_slice()).unwrap_or(true));
    }

    // Watch from the start: the same entries as the history, in order.
    let m = pb::WatchEntriesRequest { player_id: alice.clone(), shard: 0, from_seq: 1 };
    let mut stream = c2.watch_entries(cl.audit.request(Rpc::WatchEntries, m, T)).await.unwrap().into_inner();
    for (seq, tx) in &seen {
        let e = stream.message().await.unwrap().unwrap();
        assert_eq!((&e.seq, &e.tx_id), (seq, tx));
    }

    // Player tokens: own wallet yes, another's no, withdrawal only after step-up, forged never.
    let tokens = cl.sessions.login(&alice, "dev-1", "127.0.0.1", 1).await.unwrap();
    let me = Credentials::Player { token: tokens.access_token.clone(), device: "dev-1".into() };
    assert_eq!(available(&mut c0, &me, &alice).await, 70_00);
    let m =
        pb::GetBalanceRequest { player_id: bob.clone(), currency: "EUR".into(), consistency: 0, max_staleness_ms: 0 };
    assert_eq!(
        code_reason(c0.get_balance(me.request(Rpc::GetBalance, m, T)).await),
        (Code::PermissionDenied, "NOT_YOUR_WALLET".into())
    );
    let r = c1.reserve_withdrawal(me.request(Rpc::ReserveWithdrawal, reserve("wd-3", 1_00), T)).await;
    assert_eq!(code_reason(r), (Code::PermissionDenied, "STEP_UP_REQUIRED".into()));
    let stepped = cl.sessions.step_up(&tokens.access_token, "dev-1", "127.0.0.1", 2).await.unwrap();
    let me2 = Credentials::Player { token: stepped.access_token, device: "dev-1".into() };
    c1.reserve_withdrawal(me2.request(Rpc::ReserveWithdrawal, reserve("wd-3", 1_00), T)).await.expect("after step-up");
    let mut forged = tokens.access_token.clone();
    forged.pop();
    forged.push(if tokens.access_token.ends_with('A') { 'B' } else { 'A' });
    let bad = Credentials::Player { token: forged, device: "dev-1".into() };
    let m =
        pb::GetBalanceRequest { player_id: alice.clone(), currency: "EUR".into(), consistency: 0, max_staleness_ms: 0 };
    assert_eq!(
        code_reason(c0.get_balance(bad.request(Rpc::GetBalance, m.clone(), T)).await),
        (Code::Unauthenticated, "TOKEN_INVALID".into())
    );
    let wrong_device = Credentials::Player { token: tokens.access_token.clone(), device: "dev-2".into() };
    assert_eq!(
        code_reason(c0.get_balance(wrong_device.request(Rpc::GetBalance, m.clone(), T)).await).0,
        Code::Unauthenticated
    );
    cl.sessions.revoke_all(&alice).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        code_reason(c0.get_balance(me.request(Rpc::GetBalance, m, T)).await),
        (Code::Unauthenticated, "SESSION_REVOKED".into())
    );

    // Operator roles: a game server cannot deposit; no credentials at all is refused.
    let dep = pb::DepositRequest {
        idempotency_key: "dep-x".into(),
        player_id: alice.clone(),
        currency: "EUR".into(),
        amount: 1,
    };
    assert_eq!(
        code_reason(c0.deposit(cl.game.request(Rpc::Deposit, dep.clone(), T)).await),
        (Code::PermissionDenied, "ROLE_FORBIDDEN".into())
    );
    assert_eq!(
        code_reason(c0.deposit(tonic::Request::new(dep)).await),
        (Code::Unauthenticated, "CREDENTIALS_MISSING".into())
    );

    // Health per shard, and reflection lists the services.
    let ch = Channel::from_shared(format!("http://{}", cl.api[0])).unwrap().connect().await.unwrap();
    let mut h = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    for s in 0..SHARDS {
        let req = tonic_health::pb::HealthCheckRequest { service: format!("casino.wallet.v1.Wallet/shard/{s}") };
        assert_eq!(h.check(req).await.unwrap().into_inner().status, 1, "shard {s} SERVING");
    }
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut refl = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message().await.unwrap().unwrap().message_response
    else {
        panic!("no list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"casino.wallet.v1.Wallet".to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");
    assert!(names.contains(&"casino.session.v1.Sessions".to_string()), "{names:?}");

    // A routing client that asks not to be forwarded learns where the leader is instead.
    let leader = leader_of(&cl, shard).await;
    let follower = (leader + 1) % 3;
    let mut cf = cl.client(follower).await;
    let m =
        pb::GetBalanceRequest { player_id: alice.clone(), currency: "EUR".into(), consistency: 0, max_staleness_ms: 0 };
    let mut req = cl.cashier.request(Rpc::GetBalance, m, T);
    req.metadata_mut().insert("x-wallet-no-forward", "1".parse().unwrap());
    let s = cf.get_balance(req).await.unwrap_err();
    assert_eq!((s.code(), reason_of(&s).unwrap().as_str()), (Code::Unavailable, "NOT_LEADER"));
    let info = tonic_types::StatusExt::get_details_error_info(&s).unwrap();
    assert_eq!(info.metadata["leader_id"], (leader + 1).to_string());
    // The leader's wallet API address, which the client can call; never the node (Raft) port.
    assert_eq!(info.metadata["leader"], cl.api[leader]);
    assert!(!s.message().contains(&cl.raft[leader]), "{}", s.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t41_bad_input_gets_its_documented_code_and_changes_nothing() {
    let cl = Cluster::start().await;
    let mut c = cl.client(1).await;
    open_and_fund(&mut c, &cl.cashier, "carol", 50_00).await;
    let bet = |key: &str, player: &str, round: &str, cur: &str, amount: i64| pb::PlaceBetRequest {
        idempotency_key: key.into(),
        player_id: player.into(),
        round_id: round.into(),
        currency: cur.into(),
        amount,
    };
    let g = &cl.game;
    let heads = |page: pb::ListEntriesResponse| page.head_seq;
    let shard = ledger_core::shard_for_player(&ledger_core::PlayerId::new("carol").unwrap(), SHARDS).0;
    let head = |c: &mut WalletClient<Channel>| {
        let m = pb::ListEntriesRequest { player_id: String::new(), shard, from_seq: 1, page_size: 1 };
        let req = cl.audit.request(Rpc::ListEntries, m, T);
        let mut c = c.clone();
        async move { heads(c.list_entries(req).await.unwrap().into_inner()) }
    };
    // The node we call serves listings from its own replica, which may trail the leader by a
    // moment: wait until it shows the open and the deposit.
    let mut before = head(&mut c).await;
    while before < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        before = head(&mut c).await;
    }
    assert_eq!(before, 2);
    let cases: Vec<(pb::PlaceBetRequest, Code, &str)> = vec![
        (bet("", "carol", "r", "EUR", 100), Code::InvalidArgument, "IDEMPOTENCY_KEY_MISSING"),
        (bet("k1", "carol", "r", "EUR", 0), Code::InvalidArgument, "AMOUNT_NOT_POSITIVE"),
        (bet("k2", "carol", "r", "EUR", -100), Code::InvalidArgument, "AMOUNT_NOT_POSITIVE"),
        (bet("k3", "carol", "r", "XYZ", 100), Code::InvalidArgument, "UNKNOWN_CURRENCY"),
        (bet("k4", "carol", "r", "eur", 100), Code::InvalidArgument, "UNKNOWN_CURRENCY"),
        (bet("k5", &"p".repeat(65), "r", "EUR", 100), Code::InvalidArgument, "INVALID_PLAYER_ID"),
        (bet("k6", "carol", "has space", "EUR", 100), Code::InvalidArgument, "INVALID_ROUND_ID"),
        (bet(&"k".repeat(65), "carol", "r", "EUR", 100), Code::InvalidArgument, "INVALID_TX_ID"),
        (bet("k7", "nobody", "r", "EUR", 100), Code::NotFound, "UNKNOWN_ACCOUNT"),
        (bet("k8", "carol", "r", "USD", 100), Code::NotFound, "UNKNOWN_ACCOUNT"),
        (bet("k9", "carol", "r", "EUR", 50_01), Code::FailedPrecondition, "INSUFFICIENT_FUNDS"),
        (bet("k10", "carol", "r", "EUR", i64::MAX), Code::FailedPrecondition, "INSUFFICIENT_FUNDS"),
    ];
    for (req, code, reason) in cases {
        let got = code_reason(c.place_bet(g.request(Rpc::PlaceBet, req.clone(), T)).await);
        assert_eq!(got, (code, reason.to_string()), "{req:?}");
    }
    // An overflowing balance: a deposit that would pass 2^63-1.
    let dep = pb::DepositRequest {
        idempotency_key: "big".into(),
        player_id: "carol".into(),
        currency: "EUR".into(),
        amount: i64::MAX,
    };
    assert_eq!(
        code_reason(c.deposit(cl.cashier.request(Rpc::Deposit, dep, T)).await),
        (Code::FailedPrecondition, "BALANCE_OVERFLOW".into())
    );
    // The key of the first deposit reused with another amount.
    let reuse = pb::DepositRequest {
        idempotency_key: "dep-carol".into(),
        player_id: "carol".into(),
        currency: "EUR".into(),
        amount: 1,
    };
    assert_eq!(
        code_reason(c.deposit(cl.cashier.request(Rpc::Deposit, reuse, T)).await),
        (Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED".into())
    );
    // Refusals that reached the ledger are remembered under their key, but append no entry.
    // Give a wrongly appended entry time to reach this replica before looking.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = head(&mut c).await;
    assert_eq!(after, before, "refused calls append nothing");
    assert_eq!(available(&mut c, &cl.cashier, "carol").await, 50_00, "and move no money");
    // Oversized messages are refused by the transport before any decoding.
    let huge = bet("k11", "carol", &"r".repeat(70 * 1024), "EUR", 1);
    let s = c.place_bet(g.request(Rpc::PlaceBet, huge, T)).await.unwrap_err();
    assert_eq!(s.code(), Code::OutOfRange, "{s:?}");
    // Expired-looking or bad signatures.
    let stale = Credentials::Operator { key_id: "game".into(), secret: vec![0; 32] };
    let s = code_reason(c.place_bet(stale.request(Rpc::PlaceBet, bet("k12", "carol", "r", "EUR", 1), T)).await);
    assert_eq!(s, (Code::Unauthenticated, "SIGNATURE_INVALID".into()));
    // Unknown hold, rollback of another player's bet.
    let commit =
        pb::CommitWithdrawalRequest { idempotency_key: "c1".into(), player_id: "carol".into(), hold_id: "nope".into() };
    assert_eq!(
        code_reason(c.commit_withdrawal(cl.cashier.request(Rpc::CommitWithdrawal, commit, T)).await),
        (Code::NotFound, "UNKNOWN_HOLD".into())
    );
    assert_eq!(head(&mut c).await, before);
    // Page sizes and proofs out of range.
    let m = pb::ListEntriesRequest { player_id: "carol".into(), shard: 0, from_seq: 1, page_size: 5000 };
    assert_eq!(
        code_reason(c.list_entries(cl.audit.request(Rpc::ListEntries, m, T)).await),
        (Code::InvalidArgument, "INVALID_ARGUMENT".into())
    );
    let m = pb::GetEntryProofRequest { shard, seq: before + 10, anchor_seq: 0 };
    assert_eq!(
        code_reason(c.get_entry_proof(cl.audit.request(Rpc::GetEntryProof, m, T)).await),
        (Code::NotFound, "ENTRY_NOT_FOUND".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t42_idempotent_retries_across_a_leader_kill_apply_once() {
    let mut cl = Cluster::start().await;
    let player = "dave";
    let shard = ledger_core::shard_for_player(&ledger_core::PlayerId::new(player).unwrap(), SHARDS).0;
    let mut c = cl.client(0).await;
    open_and_fund(&mut c, &cl.cashier, player, 100_00).await;
    let bet = pb::PlaceBetRequest {
        idempotency_key: "kill-bet".into(),
        player_id: player.into(),
        round_id: "rk".into(),
        currency: "EUR".into(),
        amount: 7_00,
    };
    let leader = leader_of(&cl, shard).await;
    // Send the bet to the leader and kill it right away: the reply may or may not be lost.
    let mut to_leader = cl.client(leader).await;
    let sent = {
        let req = cl.game.request(Rpc::PlaceBet, bet.clone(), Duration::from_secs(3));
        tokio::spawn(async move { to_leader.place_bet(req).await.map(|r| r.into_inner()) })
    };
    tokio::time::sleep(Duration::from_millis(2)).await;
    cl.nodes[leader].kill();
    let first = sent.await.unwrap();
    // Retry through a survivor until the outcome is definite.
    let other = (leader + 1) % 3;
    let mut c = cl.client(other).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let retried = loop {
        match c.place_bet(cl.game.request(Rpc::PlaceBet, bet.clone(), T)).await {
            Ok(r) => break r.into_inner(),
            Err(s) if matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded) => {
                assert!(std::time::Instant::now() < deadline, "no leader after the kill: {s:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("{s:?}"),
        }
    };
    if let Ok(original) = first {
        assert_eq!(original, retried, "the retry returns the original response");
    }
    assert_eq!(retried.balances[0].available, 93_00, "the bet applied exactly once");
    // Once more after the old leader is back: still once.
    cl.nodes[leader].restart();
    let again = c.place_bet(cl.game.request(Rpc::PlaceBet, bet.clone(), T)).await.unwrap();
    assert_eq!(again.metadata().get("x-wallet-replayed").unwrap(), "true");
    assert_eq!(again.into_inner(), retried);
    let m = pb::ListEntriesRequest { player_id: player.into(), shard: 0, from_seq: 1, page_size: 100 };
    let page = c.list_entries(cl.audit.request(Rpc::ListEntries, m, T)).await.unwrap().into_inner();
    assert_eq!(page.entries.iter().filter(|e| e.tx_id == "kill-bet").count(), 1);
    assert_eq!(available(&mut c, &cl.cashier, player).await, 93_00);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t43_watch_resumes_after_a_disconnect_with_no_gap_and_no_duplicate() {
    let mut cl = Cluster::start().await;
    let player = "erin";
    let mut c = cl.client(0).await;
    open_and_fund(&mut c, &cl.cashier, player, 1_000_00).await;
    let bet = |i: u32| pb::PlaceBetRequest {
        idempotency_key: format!("w-{i}"),
        player_id: player.into(),
        round_id: format!("r{i}"),
        currency: "EUR".into(),
        amount: 1_00,
    };
    // Watch on node 2 while bets arrive.
    let mut w = cl.client(2).await;
    let m = pb::WatchEntriesRequest { player_id: player.into(), shard: 0, from_seq: 1 };
    let mut stream = w.watch_entries(cl.audit.request(Rpc::WatchEntries, m, T)).await.unwrap().into_inner();
    for i in 0..10 {
        c.place_bet(cl.game.request(Rpc::PlaceBet, bet(i), T)).await.unwrap();
    }
    let mut got: Vec<(u64, String)> = Vec::new();
    while got.len() < 7 {
        let e = stream.message().await.unwrap().unwrap();
        got.push((e.seq, e.tx_id));
    }
    // Disconnect hard: the serving node stops (a drained stream ends with SHUTTING_DOWN).
    cl.nodes[2].stop();
    loop {
        match stream.message().await {
            Ok(Some(e)) => got.push((e.seq, e.tx_id)),
            Ok(None) => break,
            Err(s) => {
                assert!(matches!(s.code(), Code::Unavailable | Code::Unknown | Code::Cancelled), "{s:?}");
                break;
            }
        }
    }
    // More writes while nobody watches.
    for i in 10..20 {
        c.place_bet(cl.game.request(Rpc::PlaceBet, bet(i), T)).await.unwrap();
    }
    // Resume on another node from the last seen seq + 1.
    let last = got.last().unwrap().0;
    let mut w = cl.client(1).await;
    let m = pb::WatchEntriesRequest { player_id: player.into(), shard: 0, from_seq: last + 1 };
    let mut stream = w.watch_entries(cl.audit.request(Rpc::WatchEntries, m, T)).await.unwrap().into_inner();
    // open + deposit + 20 bets.
    while got.len() < 22 {
        let e = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("more entries")
            .unwrap()
            .unwrap();
        got.push((e.seq, e.tx_id));
    }
    let txs: Vec<String> = got.iter().map(|(_, t)| t.clone()).collect();
    let mut want = vec![format!("open-{player}"), format!("dep-{player}")];
    want.extend((0..20).map(|i| format!("w-{i}")));
    assert_eq!(txs, want, "every entry exactly once, in order");
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
    // Nothing more arrives.
    assert!(tokio::time::timeout(Duration::from_millis(500), stream.message()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t44_walletctl_covers_a_players_life_with_clear_errors() {
    let cl = Cluster::start().await;
    let (game, cashier, audit) = (0, 1, 2);
    let ok = |r: (i32, String, String)| {
        assert_eq!(r.0, 0, "stdout: {}\nstderr: {}", r.1, r.2);
        r.1
    };
    ok(ctl(&cl, cashier, &["open", "frank", "EUR", "--key", "o1"]));
    let out = ok(ctl(&cl, cashier, &["deposit", "frank", "EUR", "100.00", "--key", "d1"]));
    assert!(out.contains("available") && out.contains("100.00"), "{out}");
    ok(ctl(&cl, game, &["bet", "frank", "rnd-1", "EUR", "2.50", "--key", "b1"]));
    ok(ctl(&cl, game, &["win", "frank", "rnd-1", "EUR", "5.00"]));
    ok(ctl(&cl, game, &["bet", "frank", "rnd-2", "EUR", "1.00", "--key", "b2"]));
    ok(ctl(&cl, game, &["rollback", "frank", "rnd-2", "b2"]));
    ok(ctl(&cl, cashier, &["withdraw", "reserve", "frank", "EUR", "20.00", "--key", "wd"]));
    ok(ctl(&cl, cashier, &["withdraw", "commit", "frank", "wd"]));
    let out = ok(ctl(&cl, game, &["balance", "frank", "EUR"]));
    assert!(out.contains("available 82.50") && out.contains("linearizable"), "{out}");
    let out = ok(ctl(&cl, audit, &["history", "frank"]));
    for needle in ["OPEN", "DEPOSIT", "BET", "WIN", "ROLLBACK", "WITHDRAWAL_RESERVE", "WITHDRAWAL_COMMIT"] {
        assert!(out.contains(needle), "{needle} missing from\n{out}");
    }
    // A retry with the same key says so; a refusal exits 2 with its reason.
    let out = ok(ctl(&cl, game, &["bet", "frank", "rnd-1", "EUR", "2.50", "--key", "b1"]));
    assert!(out.contains("already applied"), "{out}");
    let (code, _, err) = ctl(&cl, game, &["bet", "frank", "rnd-3", "EUR", "1000.00"]);
    assert_eq!(code, 2);
    assert!(err.contains("INSUFFICIENT_FUNDS"), "{err}");
    let (code, _, err) = ctl(&cl, game, &["deposit", "frank", "EUR", "1.00"]);
    assert_eq!(code, 2);
    assert!(err.contains("ROLE_FORBIDDEN"), "{err}");
    let (code, _, err) = ctl(&cl, game, &["bet", "frank", "rnd-3", "EUR", "1.001"]);
    assert_eq!(code, 64, "a bad amount is a usage error");
    assert!(err.contains("decimal places"), "{err}");
    // A proof checks out.
    let shard = ledger_core::shard_for_player(&ledger_core::PlayerId::new("frank").unwrap(), SHARDS).0.to_string();
    let out = ok(ctl(&cl, audit, &["proof", &shard, "1"]));
    assert!(out.contains("proof ok"), "{out}");
    // watch prints the entries, then keeps following.
    let mut child = std::process::Command::new(walletctl_bin())
        .args(["watch", "frank"])
        .env("WALLET_ADDR", &cl.api[2])
        .env("WALLET_KEY_ID", "audit")
        .env("WALLET_KEY_SECRET", &cl.secrets[audit])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout).lines().map_while(Result::ok).take(9).collect::<Vec<_>>()
    });
    ok(ctl(&cl, game, &["bet", "frank", "rnd-4", "EUR", "1.00", "--key", "b4"]));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !lines.is_finished() {
        assert!(std::time::Instant::now() < deadline, "watch printed too little");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let lines = lines.join().unwrap();
    assert_eq!(lines.len(), 9, "{lines:?}");
    assert!(lines[8].contains("b4"), "the new bet arrives last: {lines:?}");
}

/// The outcome of one batch item: Ok(replayed) or Err(reason).
fn item(r: &pb::BatchItemResult) -> Result<bool, String> {
    match &r.result {
        Some(pb::batch_item_result::Result::Ok(_)) => Ok(r.replayed),
        Some(pb::batch_item_result::Result::Error(e)) => Err(e.reason.clone()),
        None => panic!("an item without a result"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t45_batch_calls_answer_every_item_on_its_own_and_retry_safely() {
    let cl = Cluster::start().await;
    let mut c0 = cl.client(0).await;
    // Calls go to node 2: for at least one of the two shards it is not the leader, so items are
    // run both locally and forwarded within one call.
    let mut c = cl.client(2).await;
    let shard = |p: &str| ledger_core::shard_for_player(&ledger_core::PlayerId::new(p).unwrap(), SHARDS).0;
    let p0 = (0..).map(|i| format!("batch-{i}")).find(|p| shard(p) == 0).unwrap();
    let p1 = (0..).map(|i| format!("batch-{i}")).find(|p| shard(p) == 1).unwrap();
    open_and_fund(&mut c0, &cl.cashier, &p0, 10_00).await;
    open_and_fund(&mut c0, &cl.cashier, &p1, 10_00).await;
    let bet = |key: &str, player: &str, cur: &str, amount: i64| pb::PlaceBetRequest {
        idempotency_key: key.into(),
        player_id: player.into(),
        round_id: format!("round-{player}"),
        currency: cur.into(),
        amount,
    };
    let bets = pb::PlaceBetsRequest {
        bets: vec![
            bet("bb-1", &p0, "EUR", 3_00),
            bet("bb-2", &p1, "EUR", 2_00),
            bet("bb-3", &p0, "EUR", 50_00),
            bet("bb-4", &p1, "XYZ", 1_00),
            bet("", &p1, "EUR", 1_00),
            bet("bb-7", "nobody", "EUR", 1_00),
        ],
    };
    let refusals = [
        Err("INSUFFICIENT_FUNDS".to_string()),
        Err("UNKNOWN_CURRENCY".to_string()),
        Err("IDEMPOTENCY_KEY_MISSING".to_string()),
        Err("UNKNOWN_ACCOUNT".to_string()),
    ];
    let r = c.place_bets(cl.game.request(Rpc::PlaceBets, bets.clone(), T)).await.unwrap().into_inner();
    let got: Vec<_> = r.results.iter().map(item).collect();
    assert_eq!(got.len(), 6);
    assert_eq!(&got[..2], &[Ok(false), Ok(false)]);
    assert_eq!(&got[2..], &refusals);
    let Some(pb::batch_item_result::Result::Ok(first)) = &r.results[0].result else { unreachable!() };
    assert_eq!((first.idempotency_key.as_str(), first.shard), ("bb-1", 0));
    assert_eq!(first.balances[0].available, 7_00);
    let Some(pb::batch_item_result::Result::Error(e)) = &r.results[3].result else { unreachable!() };
    assert_eq!(e.code, Code::InvalidArgument as i32);
    assert_eq!(e.metadata.get("field").map(String::as_str), Some("currency"));
    assert!(!e.message.is_empty());
    assert_eq!((available(&mut c0, &cl.cashier, &p0).await, available(&mut c0, &cl.cashier, &p1).await), (7_00, 8_00));

    // The whole call again: what applied answers as a replay, what was refused is refused again,
    // and no money moves; an added item reusing a key with another amount is refused.
    let mut bets = bets;
    bets.bets.push(bet("bb-1", &p0, "EUR", 9_00));
    let again = c.place_bets(cl.game.request(Rpc::PlaceBets, bets, T)).await.unwrap().into_inner();
    let got: Vec<_> = again.results.iter().map(item).collect();
    assert_eq!(&got[..2], &[Ok(true), Ok(true)]);
    assert_eq!(&got[2..6], &refusals);
    assert_eq!(got[6], Err("IDEMPOTENCY_KEY_REUSED".to_string()));
    assert_eq!((available(&mut c0, &cl.cashier, &p0).await, available(&mut c0, &cl.cashier, &p1).await), (7_00, 8_00));

    // Wins for both rounds in one call; one for a round the player never bet in.
    let win = |key: &str, player: &str, round: &str, amount: i64| pb::SettleWinRequest {
        idempotency_key: key.into(),
        player_id: player.into(),
        round_id: round.into(),
        currency: "EUR".into(),
        amount,
    };
    let wins = pb::SettleWinsRequest {
        wins: vec![
            win("bw-1", &p0, &format!("round-{p0}"), 6_00),
            win("bw-2", &p1, &format!("round-{p1}"), 1_00),
            win("bw-3", &p1, "no-such-round", 1_00),
        ],
    };
    let r = c.settle_wins(cl.game.request(Rpc::SettleWins, wins, T)).await.unwrap().into_inner();
    let got: Vec<_> = r.results.iter().map(item).collect();
    assert_eq!(got, [Ok(false), Ok(false), Err("UNKNOWN_ROUND".to_string())]);
    assert_eq!((available(&mut c0, &cl.cashier, &p0).await, available(&mut c0, &cl.cashier, &p1).await), (13_00, 9_00));

    // Refused as a whole, with nothing attempted: no items, too many, the wrong role.
    let empty = pb::PlaceBetsRequest { bets: vec![] };
    assert_eq!(
        code_reason(c.place_bets(cl.game.request(Rpc::PlaceBets, empty, T)).await),
        (Code::InvalidArgument, "INVALID_ARGUMENT".to_string())
    );
    let many = pb::PlaceBetsRequest { bets: (0..1001).map(|i| bet(&format!("m{i}"), &p0, "EUR", 1)).collect() };
    assert_eq!(
        code_reason(c.place_bets(cl.game.request(Rpc::PlaceBets, many, T)).await),
        (Code::InvalidArgument, "INVALID_ARGUMENT".to_string())
    );
    let one = pb::PlaceBetsRequest { bets: vec![bet("bb-9", &p0, "EUR", 1_00)] };
    assert_eq!(
        code_reason(c.place_bets(cl.cashier.request(Rpc::PlaceBets, one, T)).await),
        (Code::PermissionDenied, "ROLE_FORBIDDEN".to_string())
    );
    assert_eq!(available(&mut c0, &cl.cashier, &p0).await, 13_00);

    // walletctl sends a batch as JSON and prints one result per item.
    let json = format!(
        "{{\"bets\":[{{\"idempotencyKey\":\"bb-10\",\"playerId\":\"{p0}\",\"roundId\":\"r10\",\"currency\":\"EUR\",\"amount\":\"100\"}}]}}"
    );
    let (code, out, err) = ctl(&cl, 0, &["call", "PlaceBets", &json]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"results\"") && out.contains("bb-10"), "{out}");
    assert_eq!(available(&mut c0, &cl.cashier, &p0).await, 12_00);
}
