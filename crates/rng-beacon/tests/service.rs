//! The shared beacon over real gRPC on a loopback socket.

use rng_beacon::fair::{self, Game, Mode};
use rng_beacon::pb::beacon_client::BeaconClient;
use rng_beacon::pb::*;
use rng_beacon::rounds;
use rng_beacon::service::{BeaconConfig, BeaconService};
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

struct Running {
    service: BeaconService,
    client: BeaconClient<Channel>,
    log: std::path::PathBuf,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

async fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let mut config = BeaconConfig::new(log.clone());
    config.round_period = Duration::from_millis(10);
    config.rounds_per_epoch = 10;
    let service = BeaconService::start(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(service.clone().serve(listener, std::future::pending()));
    let client = BeaconClient::connect(format!("http://{addr}")).await.unwrap();
    Running { service, client, log, addr, _dir: dir }
}

fn draw(pair: &str, game: &str, mode: &str, client_seed: &str, nonce: u64) -> DrawOutcomeRequest {
    DrawOutcomeRequest {
        pair_id: pair.into(),
        game: game.into(),
        mode: mode.into(),
        client_seed: client_seed.into(),
        nonce,
    }
}

#[tokio::test]
async fn commit_draw_rotate_reveal_and_rederive() {
    let Running { mut client, log, _dir, .. } = start().await;
    let c = client.get_commitment(GetCommitmentRequest { pair_id: "player-1".into() }).await.unwrap().into_inner();
    assert_eq!((c.next_nonce, c.client_seed.as_str()), (0, ""));
    let again = client.get_commitment(GetCommitmentRequest { pair_id: "player-1".into() }).await.unwrap().into_inner();
    assert_eq!(again.server_seed_hash, c.server_seed_hash, "the commitment is stable until rotation");

    let mut drawn = Vec::new();
    for (nonce, (game, mode)) in
        [("dice", "stake"), ("keno", ""), ("roulette", "unbiased"), ("shuffle", "stake")].iter().enumerate()
    {
        let d = client.draw_outcome(draw("player-1", game, mode, "lucky", nonce as u64)).await.unwrap().into_inner();
        assert_eq!(d.server_seed_hash, c.server_seed_hash);
        assert_eq!(d.mode, if mode.is_empty() { "unbiased" } else { mode });
        drawn.push(d);
    }

    // Each refusal has its documented code and consumes nothing.
    let code = |r: Result<tonic::Response<DrawOutcomeResponse>, tonic::Status>| r.unwrap_err().code();
    assert_eq!(code(client.draw_outcome(draw("player-1", "dice", "", "lucky", 0)).await), Code::FailedPrecondition);
    assert_eq!(code(client.draw_outcome(draw("player-1", "dice", "", "lucky", 9)).await), Code::FailedPrecondition);
    assert_eq!(code(client.draw_outcome(draw("player-1", "dice", "", "other", 4)).await), Code::FailedPrecondition);
    assert_eq!(code(client.draw_outcome(draw("nobody", "dice", "", "lucky", 0)).await), Code::NotFound);
    assert_eq!(code(client.draw_outcome(draw("player-1", "craps", "", "lucky", 4)).await), Code::InvalidArgument);
    assert_eq!(code(client.draw_outcome(draw("player-1", "dice", "fair", "lucky", 4)).await), Code::InvalidArgument);
    assert_eq!(code(client.draw_outcome(draw("player-1", "dice", "", "", 4)).await), Code::InvalidArgument);
    let huge = "x".repeat(100_000);
    assert!(client.draw_outcome(draw("player-1", "dice", "", &huge, 4)).await.is_err(), "oversized message");
    let err = client.reveal(RevealRequest { server_seed_hash: c.server_seed_hash.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "an active seed is not revealed");
    let d = client.draw_outcome(draw("player-1", "dice", "", "lucky", 4)).await.unwrap().into_inner();
    assert_eq!(d.nonce, 4, "the refusals consumed no nonce");
    drawn.push(d);

    let r = client
        .rotate_seed(RotateSeedRequest { pair_id: "player-1".into(), new_client_seed: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.revealed_server_seed_hash, c.server_seed_hash);
    assert_eq!(hex::encode(Sha256::digest(r.revealed_server_seed.as_bytes())), c.server_seed_hash);
    assert_eq!(r.nonces_used, 5);
    let next = r.next.unwrap();
    assert_ne!(next.server_seed_hash, c.server_seed_hash);
    assert_eq!(next.next_nonce, 0);
    // The player recomputes every outcome from the revealed seed.
    for d in &drawn {
        let again = fair::outcome(
            &r.revealed_server_seed,
            &d.client_seed,
            d.nonce,
            Game::parse(&d.game).unwrap(),
            Mode::parse(&d.mode).unwrap(),
        )
        .unwrap();
        assert_eq!(again.to_json().to_string(), d.outcome_json);
    }
    let rv = client.reveal(RevealRequest { server_seed_hash: c.server_seed_hash.clone() }).await.unwrap().into_inner();
    assert_eq!((rv.server_seed, rv.pair_id, rv.nonces_used), (r.revealed_server_seed, "player-1".into(), 5));

    let report = rng_beacon::log::verify(&std::fs::read(&log).unwrap()).unwrap();
    assert_eq!((report.draws, report.draws_rederived), (5, 5));
}

#[tokio::test]
async fn concurrent_game_nodes_get_distinct_nonces_and_a_complete_log() {
    let Running { client, log, _dir, service, .. } = start().await;
    let mut tasks = Vec::new();
    for node in 0..8 {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let pair = format!("table-{node}");
            client.get_commitment(GetCommitmentRequest { pair_id: pair.clone() }).await.unwrap();
            for nonce in 0..40 {
                client.draw_outcome(draw(&pair, "mines:3", "", "seed", nonce)).await.unwrap();
            }
            client.rotate_seed(RotateSeedRequest { pair_id: pair, new_client_seed: String::new() }).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let report = rng_beacon::log::verify(&std::fs::read(&log).unwrap()).unwrap();
    assert_eq!((report.draws, report.draws_rederived, report.reveals), (320, 320, 8));

    // One more pair left active, then a clean shutdown: its seed is revealed too.
    let mut c = client.clone();
    c.get_commitment(GetCommitmentRequest { pair_id: "late".into() }).await.unwrap();
    c.draw_outcome(draw("late", "dice", "", "seed", 0)).await.unwrap();
    service.shutdown().await.unwrap();
    let e = c.draw_outcome(draw("late", "dice", "", "seed", 1)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "nothing is served after shutdown");
    let report = rng_beacon::log::verify(&std::fs::read(&log).unwrap()).unwrap();
    assert_eq!((report.draws, report.draws_rederived, report.draws_unrevealed), (321, 321, 0));
}

#[tokio::test]
async fn rounds_are_chained_resumable_and_checkable_after_the_epoch_reveal() {
    let Running { mut client, log, _dir, .. } = start().await;
    let mut stream = client.watch_rounds(WatchRoundsRequest { from_round: 0 }).await.unwrap().into_inner();
    let mut got = Vec::new();
    while got.len() < 25 {
        let r = stream.next().await.unwrap().unwrap();
        got.push(rounds::Round {
            round: r.round,
            timestamp_ms: r.timestamp_ms,
            randomness: r.randomness.try_into().unwrap(),
            signature: r.signature.try_into().unwrap(),
            previous_signature: r.previous_signature.try_into().unwrap(),
            epoch: r.epoch,
            epoch_key_hash: hex::decode(&r.epoch_key_hash).unwrap().try_into().unwrap(),
        });
    }
    assert_eq!(got.iter().map(|r| r.round).collect::<Vec<_>>(), (0..25).collect::<Vec<_>>());
    rounds::check(&got, None).unwrap();
    assert_eq!(got[0].previous_signature, got[0].epoch_key_hash, "genesis links to the first key's hash");
    assert_eq!((got[9].epoch, got[10].epoch), (0, 1));

    // Epoch 0 has ended, so its key is in the log: every round of it now checks fully.
    let text = std::fs::read_to_string(&log).unwrap();
    let key = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(&l[65..]).unwrap())
        .find(|v| v["kind"] == "epoch_reveal" && v["epoch"] == 0)
        .map(|v| <[u8; 32]>::try_from(hex::decode(v["key"].as_str().unwrap()).unwrap()).unwrap())
        .expect("epoch 0 revealed");
    assert_eq!(rounds::key_hash(&key), got[0].epoch_key_hash);
    rounds::check(&got[..10], Some(&key)).unwrap();
    let mut forged = got[..10].to_vec();
    forged[4].signature[0] ^= 1;
    forged[4].randomness = rounds::randomness(&forged[4].signature);
    assert!(rounds::check(&forged, Some(&key)).is_err());

    // A watcher that reconnects resumes exactly where it stopped.
    drop(stream);
    let mut resumed = client.watch_rounds(WatchRoundsRequest { from_round: 15 }).await.unwrap().into_inner();
    let r = resumed.next().await.unwrap().unwrap();
    assert_eq!(r.round, 15);
    assert_eq!(r.signature, got[15].signature.to_vec());
}

#[tokio::test]
async fn reflection_lists_the_beacon_for_grpcurl() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let Running { addr, _dir, .. } = start().await;
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message().await.unwrap().unwrap().message_response
    else {
        panic!("no service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"casino.rng.v1.Beacon".to_string()), "{names:?}");
}
