//! The session service (`casino.session.v1`) end to end: three real `walletd` processes sharing
//! a session store in real Redis, a real `geo-router` in front, `walletctl session`, and each
//! node's security event log.

// Amounts are written as euros_cents: 100_00 is 100.00 EUR.
#![allow(clippy::inconsistent_digit_grouping)]

use std::time::{Duration, Instant};

use e2e_tests::api::{Cluster, T, code_reason, ctl_at, open_and_fund, serving};
use e2e_tests::router::GeoRouter;
use session_store::token::Claims;
use tonic::Code;
use tonic::transport::Channel;
use wallet_api::api::auth::Rpc;
use wallet_api::api::client::{Credentials, channel, connect};
use wallet_api::api::pb;
use wallet_api::session::pb as spb;
use wallet_api::session::pb::sessions_client::SessionsClient;

const IP: &str = "203.0.113.10";
const DEV: &str = "alice-phone";

fn path(m: &str) -> String {
    wallet_api::session::path(m)
}

async fn sessions(cl: &Cluster, node: usize) -> SessionsClient<Channel> {
    SessionsClient::new(channel(&cl.api[node]).await.expect("connect"))
}

fn create_req(player: &str, device: &str, level: u32) -> spb::CreateSessionRequest {
    spb::CreateSessionRequest {
        player_id: player.into(),
        device_fingerprint: device.into(),
        ip: IP.into(),
        auth_level: level,
        auth_time_ms: 0,
    }
}

async fn create(s: &mut SessionsClient<Channel>, cl: &Cluster, player: &str, device: &str) -> spb::SessionTokens {
    let r = s.create_session(cl.session.request_at(&path("CreateSession"), create_req(player, device, 1), T)).await;
    r.expect("CreateSession").into_inner()
}

fn player(token: &str, device: &str) -> Credentials {
    Credentials::Player { token: token.into(), device: device.into() }
}

fn refresh_req(token: &str, device: &str) -> tonic::Request<spb::RefreshRequest> {
    let mut r =
        tonic::Request::new(spb::RefreshRequest { refresh_token: token.into(), device_fingerprint: device.into() });
    r.set_timeout(T);
    r
}

async fn balance(
    c: &mut wallet_api::api::pb::wallet_client::WalletClient<Channel>,
    who: &Credentials,
    p: &str,
) -> Result<i64, tonic::Status> {
    let m = pb::GetBalanceRequest { player_id: p.into(), currency: "EUR".into(), consistency: 0, max_staleness_ms: 0 };
    c.get_balance(who.request(Rpc::GetBalance, m, T)).await.map(|r| r.into_inner().balance.unwrap().available)
}

/// A token signed with the cluster's real session key but with claims of our choosing.
fn forge(cl: &Cluster, claims: &Claims) -> String {
    let key: [u8; 32] = hex::decode(&cl.session_key).unwrap().try_into().unwrap();
    session_store::Keyring::new("k1", key).unwrap().sign(claims)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t70_a_players_session_life_over_grpc_on_real_processes_and_redis() {
    let limits = "[limits]\ncreate_per_player = \"4/60s\"\nrefresh_per_player = \"6/60s\"\n";
    let cl = Cluster::start_with_session_settings(limits).await;
    for node in 0..3 {
        assert!(serving(&cl, node, "casino.session.v1.Sessions").await, "node {node} serves sessions");
    }
    let alice = "sess-alice";
    let mut w0 = cl.client(0).await;
    let mut w2 = cl.client(2).await;
    open_and_fund(&mut w0, &cl.cashier, alice, 100_00).await;
    let (mut s0, mut s1, mut s2) = (sessions(&cl, 0).await, sessions(&cl, 1).await, sessions(&cl, 2).await);

    // Who may create: only an operator key with the session role.
    let req = || create_req(alice, DEV, 1);
    let p = path("CreateSession");
    assert_eq!(
        code_reason(s0.create_session(cl.game.request_at(&p, req(), T)).await),
        (Code::PermissionDenied, "ROLE_FORBIDDEN".into())
    );
    assert_eq!(code_reason(s0.create_session(req()).await), (Code::Unauthenticated, "CREDENTIALS_MISSING".into()));
    let forged_key = Credentials::Operator { key_id: "login".into(), secret: vec![7; 32] };
    assert_eq!(
        code_reason(s0.create_session(forged_key.request_at(&p, req(), T)).await),
        (Code::Unauthenticated, "SIGNATURE_INVALID".into())
    );
    // A signature over another method does not open a session.
    let other_method = cl.session.request_at(&path("StepUp"), req(), T);
    assert_eq!(code_reason(s0.create_session(other_method).await).1, "SIGNATURE_INVALID");
    let bad = spb::CreateSessionRequest { auth_level: 0, ..req() };
    let (code, reason) = code_reason(s0.create_session(cl.session.request_at(&p, bad, T)).await);
    assert_eq!((code, reason.as_str()), (Code::InvalidArgument, "INVALID_ARGUMENT"));

    // Log in on node 0; the access token works on node 2's wallet API.
    let t1 = create(&mut s0, &cl, alice, DEV).await;
    assert_eq!((t1.player_id.as_str(), t1.auth_level), (alice, 1));
    assert!(t1.access_expires_in_s > 250 && t1.access_expires_in_s <= 300, "{}", t1.access_expires_in_s);
    assert_eq!(balance(&mut w2, &player(&t1.access_token, DEV), alice).await.unwrap(), 100_00);
    let p_create = code_reason(s0.create_session(player(&t1.access_token, DEV).request_at(&p, req(), T)).await);
    assert_eq!(p_create, (Code::PermissionDenied, "ROLE_FORBIDDEN".into()), "a player cannot open sessions");

    // Refresh on node 1 (refresh token alone), then replay the old one on node 2: the family dies.
    let t2 = s1.refresh(refresh_req(&t1.refresh_token, DEV)).await.unwrap().into_inner();
    assert_eq!(t2.session_id, t1.session_id);
    assert_eq!(balance(&mut w0, &player(&t2.access_token, DEV), alice).await.unwrap(), 100_00);
    assert_eq!(
        code_reason(s2.refresh(refresh_req(&t1.refresh_token, DEV)).await),
        (Code::Unauthenticated, "REFRESH_TOKEN_REUSED".into())
    );
    let revoked_at = Instant::now();
    // Every node's wallet API refuses the family's newest access token within the bound (1 s).
    let mut refused_on = [None; 3];
    while refused_on.iter().any(Option::is_none) {
        for (i, slot) in refused_on.iter_mut().enumerate() {
            if slot.is_none() {
                let mut w = cl.client(i).await;
                if balance(&mut w, &player(&t2.access_token, DEV), alice).await.is_err() {
                    *slot = Some(revoked_at.elapsed());
                }
            }
        }
        assert!(
            revoked_at.elapsed() < Duration::from_millis(1500),
            "not refused everywhere within the bound: {refused_on:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("after refresh-token reuse, the wallet API refused the family's access token within {refused_on:?}");
    let dead = code_reason(s0.refresh(refresh_req(&t2.refresh_token, DEV)).await);
    assert_eq!(dead.0, Code::Unauthenticated, "the newest refresh token of the family is dead too: {dead:?}");

    // Step up and withdraw: level 1 may not, the stepped-up session may, the old id is gone.
    let t3 = create(&mut s1, &cl, alice, DEV).await;
    let reserve = |key: &str| pb::ReserveWithdrawalRequest {
        idempotency_key: key.into(),
        player_id: alice.into(),
        currency: "EUR".into(),
        amount: 10_00,
        hold_timeout_ms: 0,
    };
    let r =
        w0.reserve_withdrawal(player(&t3.access_token, DEV).request(Rpc::ReserveWithdrawal, reserve("wd-s1"), T)).await;
    assert_eq!(code_reason(r), (Code::PermissionDenied, "STEP_UP_REQUIRED".into()));
    let up = spb::StepUpRequest {
        access_token: t3.access_token.clone(),
        device_fingerprint: DEV.into(),
        auth_level: 2,
        ip: IP.into(),
    };
    assert_eq!(code_reason(s2.step_up(cl.game.request_at(&path("StepUp"), up.clone(), T)).await).1, "ROLE_FORBIDDEN");
    let t4 = s2.step_up(cl.session.request_at(&path("StepUp"), up.clone(), T)).await.unwrap().into_inner();
    assert_eq!(t4.auth_level, 2);
    assert_ne!(t4.session_id, t3.session_id, "step-up regenerates the session id");
    w2.reserve_withdrawal(player(&t4.access_token, DEV).request(Rpc::ReserveWithdrawal, reserve("wd-s1"), T))
        .await
        .expect("withdraw after step-up");
    assert_eq!(code_reason(balance(&mut w0, &player(&t3.access_token, DEV), alice).await).1, "SESSION_REVOKED");

    // A second device lists and revokes.
    let laptop = create(&mut s0, &cl, alice, "alice-laptop").await;
    let as_laptop = player(&laptop.access_token, "alice-laptop");
    let list = s1
        .list_sessions(as_laptop.request_at(&path("ListSessions"), spb::ListSessionsRequest::default(), T))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<(&str, bool)> = list.sessions.iter().map(|s| (s.session_id.as_str(), s.current)).collect();
    assert_eq!(ids, [(t4.session_id.as_str(), false), (laptop.session_id.as_str(), true)]);
    let someone_else = spb::ListSessionsRequest { player_id: "sess-bob".into() };
    assert_eq!(
        code_reason(s1.list_sessions(as_laptop.request_at(&path("ListSessions"), someone_else, T)).await).1,
        "NOT_YOUR_SESSION"
    );
    let one = |sid: &str| spb::RevokeRequest {
        player_id: String::new(),
        scope: spb::revoke_request::Scope::One as i32,
        session_id: sid.into(),
    };
    assert_eq!(
        code_reason(s2.revoke(as_laptop.request_at(&path("Revoke"), one("nope"), T)).await),
        (Code::NotFound, "SESSION_NOT_FOUND".into())
    );
    let gone = s2.revoke(as_laptop.request_at(&path("Revoke"), one(&t4.session_id), T)).await.unwrap().into_inner();
    assert_eq!(gone.revoked, 1);
    assert_eq!(code_reason(balance(&mut w0, &player(&t4.access_token, DEV), alice).await).1, "SESSION_REVOKED");
    // An operator lists anyone's and revokes all (OTHERS needs a player's own session).
    let as_op = |r| cl.session.request_at(&path("ListSessions"), r, T);
    let listed =
        s0.list_sessions(as_op(spb::ListSessionsRequest { player_id: alice.into() })).await.unwrap().into_inner();
    assert_eq!(listed.sessions.len(), 1);
    let others = spb::RevokeRequest {
        player_id: alice.into(),
        scope: spb::revoke_request::Scope::Others as i32,
        session_id: String::new(),
    };
    assert_eq!(
        code_reason(s0.revoke(cl.session.request_at(&path("Revoke"), others, T)).await).0,
        Code::InvalidArgument
    );
    let all = spb::RevokeRequest {
        player_id: alice.into(),
        scope: spb::revoke_request::Scope::All as i32,
        session_id: String::new(),
    };
    assert_eq!(s0.revoke(cl.session.request_at(&path("Revoke"), all, T)).await.unwrap().into_inner().revoked, 1);

    // Introspection: any operator key; a bad token is inactive, not an error.
    let t5 = create(&mut s0, &cl, "sess-carl", "carl-dev").await;
    let intro =
        |token: &str, device: &str| spb::IntrospectRequest { token: token.into(), device_fingerprint: device.into() };
    let i = s1
        .introspect(cl.audit.request_at(&path("Introspect"), intro(&t5.access_token, ""), T))
        .await
        .unwrap()
        .into_inner();
    assert!(i.active);
    assert_eq!((i.player_id.as_str(), i.auth_level, i.session_id.as_str()), ("sess-carl", 1, t5.session_id.as_str()));
    assert_eq!(
        code_reason(
            s1.introspect(player(&t5.access_token, "carl-dev").request_at(
                &path("Introspect"),
                intro(&t5.access_token, ""),
                T
            ))
            .await
        )
        .1,
        "ROLE_FORBIDDEN"
    );

    // Forged, expired and wrong-device tokens at every RPC that takes one.
    let mut forged = t5.access_token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let claims = Claims {
        sid: t5.session_id.clone(),
        sub: "sess-carl".into(),
        dfp: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"carl-dev")),
        auth_time: now_ms() - 700_000,
        acr: 1,
        iat: now_ms() - 700_000,
        exp: now_ms() - 400_000,
    };
    let expired = forge(&cl, &claims);
    let cases = [
        (forged.as_str(), "carl-dev", "forged"),
        (expired.as_str(), "carl-dev", "expired"),
        (t5.access_token.as_str(), "mallory-dev", "wrong device"),
    ];
    for (token, device, what) in cases {
        let who = player(token, device);
        let l = s0.list_sessions(who.request_at(&path("ListSessions"), spb::ListSessionsRequest::default(), T)).await;
        assert_eq!(code_reason(l), (Code::Unauthenticated, "TOKEN_INVALID".into()), "ListSessions, {what}");
        let all = spb::RevokeRequest {
            player_id: String::new(),
            scope: spb::revoke_request::Scope::All as i32,
            session_id: String::new(),
        };
        assert_eq!(
            code_reason(s1.revoke(who.request_at(&path("Revoke"), all, T)).await).1,
            "TOKEN_INVALID",
            "Revoke, {what}"
        );
        let up = spb::StepUpRequest {
            access_token: token.into(),
            device_fingerprint: device.into(),
            auth_level: 2,
            ip: IP.into(),
        };
        assert_eq!(
            code_reason(s2.step_up(cl.session.request_at(&path("StepUp"), up, T)).await).1,
            "TOKEN_INVALID",
            "StepUp, {what}"
        );
        let i = s0
            .introspect(cl.audit.request_at(&path("Introspect"), intro(token, device), T))
            .await
            .unwrap()
            .into_inner();
        assert!(!i.active, "Introspect, {what}");
        assert!(balance(&mut w0, &who, "sess-carl").await.is_err(), "wallet API, {what}");
    }
    assert_eq!(
        code_reason(s0.refresh(refresh_req("not-a-refresh-token", "carl-dev")).await).1,
        "REFRESH_TOKEN_UNKNOWN"
    );
    assert_eq!(code_reason(s0.refresh(refresh_req(&t5.refresh_token, "mallory-dev")).await).1, "DEVICE_MISMATCH");
    // None of that hurt carl's real session.
    assert!(
        s0.introspect(cl.audit.request_at(&path("Introspect"), intro(&t5.access_token, "carl-dev"), T))
            .await
            .unwrap()
            .into_inner()
            .active
    );

    // Rate limits, shared by every node through Redis: 4 creations per player per minute.
    let dana = "sess-dana";
    for i in 0..4 {
        let mut s = sessions(&cl, i % 3).await;
        create(&mut s, &cl, dana, "dana-dev").await;
    }
    let limited = s1.create_session(cl.session.request_at(&p, create_req(dana, "dana-dev", 1), T)).await.unwrap_err();
    assert_eq!(
        (limited.code(), wallet_api::api::errors::reason_of(&limited).as_deref()),
        (Code::ResourceExhausted, Some("RATE_LIMITED"))
    );
    let info = tonic_types::StatusExt::get_details_error_info(&limited).unwrap();
    let wait: u64 = info.metadata["retry_after_ms"].parse().unwrap();
    assert!(wait > 0 && wait <= 60_000, "{wait}");
    // And 6 refreshes per player per minute (carl has used none).
    let mut refresh = t5.refresh_token.clone();
    for i in 0..6 {
        let mut s = sessions(&cl, i % 3).await;
        refresh = s
            .refresh(refresh_req(&refresh, "carl-dev"))
            .await
            .expect("refresh within the limit")
            .into_inner()
            .refresh_token;
    }
    assert_eq!(
        code_reason(s2.refresh(refresh_req(&refresh, "carl-dev")).await),
        (Code::ResourceExhausted, "RATE_LIMITED".into())
    );

    // Through a geo-router: any node takes a session call.
    let topology = cl.dir.path().join("topology.toml");
    let nodes: Vec<String> = (0..3).map(|i| format!("[[regions]]\nname = \"region-{}\"\nnodes = [{{ id = {}, addr = \"{}\", zone = \"zone-{}\", api = \"{}\" }}]\n", i + 1, i + 1, cl.raft[i], i + 1, cl.api[i])).collect();
    std::fs::write(&topology, format!("shards = 2\nreplication = 3\n[rtt_ms]\n\"region-1/region-2\" = 5\n\"region-1/region-3\" = 5\n\"region-2/region-3\" = 5\n{}", nodes.concat())).unwrap();
    let router = GeoRouter::start(&topology, "region-2");
    let mut via = SessionsClient::new(channel(&router.addr).await.unwrap());
    let erin = via
        .create_session(cl.session.request_at(&p, create_req("sess-erin", "erin-dev", 1), T))
        .await
        .expect("CreateSession through the router")
        .into_inner();
    let erin2 = via
        .refresh(refresh_req(&erin.refresh_token, "erin-dev"))
        .await
        .expect("Refresh through the router")
        .into_inner();
    let mut wr = connect(&router.addr).await.unwrap();
    assert!(
        matches!(
            code_reason(balance(&mut wr, &player(&erin2.access_token, "erin-dev"), "sess-erin").await).1.as_str(),
            "UNKNOWN_ACCOUNT"
        ),
        "the token is accepted; erin has no wallet"
    );

    // walletctl session: create, refresh (eval-able), reuse refused with exit 2, list, introspect.
    let (code, out, err) = ctl_at(&cl, 0, 3, &["--device", "fay-dev", "session", "create", "sess-fay", "--export"]);
    assert_eq!(code, 0, "{err}");
    let grab = |out: &str, var: &str| {
        out.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{var}=")))
            .map(|v| v.trim_matches('\'').to_string())
            .unwrap()
    };
    let (fay_access, fay_refresh) = (grab(&out, "WALLET_TOKEN"), grab(&out, "WALLET_REFRESH_TOKEN"));
    let (code, out2, err) = ctl_at(&cl, 1, 3, &["--device", "fay-dev", "session", "refresh", &fay_refresh, "--export"]);
    assert_eq!(code, 0, "{err}");
    assert!(out2.starts_with("export WALLET_TOKEN="), "{out2}");
    let (code, _, err) = ctl_at(&cl, 2, 3, &["--device", "fay-dev", "session", "refresh", &fay_refresh]);
    assert_eq!(code, 2, "a reused refresh token is a refusal");
    assert!(err.contains("REFRESH_TOKEN_REUSED"), "{err}");
    let (code, out, _) = ctl_at(&cl, 0, 3, &["session", "introspect", &fay_access]);
    assert_eq!((code, out.trim()), (0, "inactive"), "the family died with the reuse");
    let (code, out, err) = ctl_at(&cl, 0, 3, &["session", "list", "sess-dana"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 4, "{out}");

    // The security logs: every node's chain verifies, and between them they hold every kind.
    let mut kinds = std::collections::BTreeSet::new();
    for n in 1..=3 {
        let file = cl.dir.path().join(format!("n{n}")).join("security-events.log");
        let out = e2e_tests::walletd_command().args(["security-log", &file.display().to_string()]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(out.status.code(), Some(0), "{text} {}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("chain intact"), "{text}");
        let log = std::fs::read_to_string(&file).unwrap();
        assert!(!log.contains(&t1.refresh_token) && !log.contains(&t1.access_token), "no token is logged");
        for line in log.lines() {
            let v: serde_json::Value = serde_json::from_str(line.split_once(' ').unwrap().1).unwrap();
            kinds.insert(v["kind"].as_str().unwrap().to_string());
        }
    }
    for k in ["open", "session_created", "refresh_token_reuse", "revoked", "stepped_up", "device_mismatch"] {
        assert!(kinds.contains(k), "no {k} event in any node's log: {kinds:?}");
    }
    // A changed line is found.
    let file = cl.dir.path().join("n1").join("security-events.log");
    let tampered = cl.dir.path().join("tampered.log");
    std::fs::write(&tampered, std::fs::read_to_string(&file).unwrap().replacen("sess-alice", "sess-alicf", 1)).unwrap();
    let out = e2e_tests::walletd_command().args(["security-log", &tampered.display().to_string()]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
}
