//! The shared beacon as a tonic gRPC service (`casino.rng.v1.Beacon`).
//!
//! IO lives here: the wall clock, the audit log on disk, the round ticker and the network. Every
//! call mutates the [`Beacon`] under one lock and hands the resulting events to the log writer
//! while still holding it, so the log's order is the beacon's order; the reply is sent only after
//! the log has fsynced them. If the log ever fails, the service stops answering (fail-stop):
//! an outcome that the log does not hold must never reach a player.

use crate::beacon::{Beacon, BeaconError, CommitmentView, RevealView};
use crate::csprng::{OsEntropy, ReseedPolicy};
use crate::fair::{Game, Mode};
use crate::log::{Event, LogError, LogWriter};
use crate::pb;
use crate::rounds::Round;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// How a beacon service runs.
#[derive(Debug, Clone)]
pub struct BeaconConfig {
    pub log_path: PathBuf,
    pub round_period: Duration,
    pub rounds_per_epoch: u64,
    pub reseed: ReseedPolicy,
    /// Rounds kept in memory for `WatchRounds` to replay.
    pub history: usize,
}

impl BeaconConfig {
    pub fn new(log_path: PathBuf) -> Self {
        BeaconConfig {
            log_path,
            round_period: Duration::from_secs(1),
            rounds_per_epoch: 3600,
            reseed: ReseedPolicy::default(),
            history: 10_000,
        }
    }
}

struct Shared {
    beacon: Mutex<Beacon<OsEntropy>>,
    log: LogWriter,
    failed: AtomicBool,
    started: tokio::time::Instant,
    history: Mutex<VecDeque<pb::Round>>,
    history_cap: usize,
    live: broadcast::Sender<pb::Round>,
}

/// The gRPC service. Cloning shares the beacon.
#[derive(Clone)]
pub struct BeaconService {
    shared: Arc<Shared>,
}

fn wall_ms() -> u64 {
    // Timestamps are informational (rounds are ordered by index, records by seq), so the wall
    // clock is fine here; it never decides an outcome.
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn status(e: BeaconError) -> Status {
    match e {
        BeaconError::Input(_) | BeaconError::BadPairId => Status::invalid_argument(e.to_string()),
        BeaconError::UnknownPair(_) | BeaconError::UnknownCommitment(_) => Status::not_found(e.to_string()),
        BeaconError::NonceReused { .. }
        | BeaconError::NonceSkipped { .. }
        | BeaconError::NonceExhausted
        | BeaconError::ClientSeedMismatch
        | BeaconError::StillActive(_) => Status::failed_precondition(e.to_string()),
        BeaconError::Entropy(_) | BeaconError::CannotResume => Status::unavailable(e.to_string()),
    }
}

fn commitment_pb(v: CommitmentView) -> pb::Commitment {
    pb::Commitment {
        pair_id: v.pair_id,
        server_seed_hash: v.server_seed_hash,
        client_seed: v.client_seed.unwrap_or_default(),
        next_nonce: v.next_nonce,
    }
}

fn round_pb(r: &Round) -> pb::Round {
    pb::Round {
        round: r.round,
        timestamp_ms: r.timestamp_ms,
        randomness: r.randomness.to_vec(),
        signature: r.signature.to_vec(),
        previous_signature: r.previous_signature.to_vec(),
        epoch: r.epoch,
        epoch_key_hash: hex::encode(r.epoch_key_hash),
    }
}

impl BeaconService {
    /// Opens the audit log, seeds the CSPRNG from the OS, commits the first epoch key, and starts
    /// the round ticker on the current tokio runtime.
    pub async fn start(config: BeaconConfig) -> Result<Self, LogError> {
        let (log, existing) = LogWriter::open(&config.log_path, wall_ms())?;
        tracing::info!(records = existing.records, head = %existing.head, "audit log opened");
        let started = tokio::time::Instant::now();
        // A log that already holds epochs is continued: the next epoch, later round numbers.
        let resume = existing.last_epoch.as_ref();
        let (beacon, events) = Beacon::new(OsEntropy, config.reseed, config.rounds_per_epoch, Duration::ZERO, resume)
            .map_err(|e| LogError::Io(std::io::Error::other(e.to_string())))?;
        log.submit(events, wall_ms()).durable().await?;
        let (live, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            beacon: Mutex::new(beacon),
            log,
            failed: AtomicBool::new(false),
            started,
            history: Mutex::new(VecDeque::new()),
            history_cap: config.history.max(1),
            live,
        });
        let weak = Arc::downgrade(&shared);
        let period = config.round_period;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                if (BeaconService { shared }).produce_round().await.is_err() {
                    return;
                }
            }
        });
        Ok(BeaconService { shared })
    }

    fn now(&self) -> Duration {
        self.shared.started.elapsed()
    }

    /// Runs `f` on the beacon, logs its events, and returns its result once they are durable.
    async fn logged<T>(
        &self,
        f: impl FnOnce(&mut Beacon<OsEntropy>, Duration) -> Result<(T, Vec<Event>), BeaconError>,
    ) -> Result<T, Status> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(Status::unavailable("the beacon has stopped serving (shut down, or its audit log failed)"));
        }
        let (value, ack) = {
            let mut beacon = self.shared.beacon.lock().expect("beacon lock");
            let (value, events) = f(&mut beacon, self.now()).map_err(status)?;
            (value, self.shared.log.submit(events, wall_ms()))
        };
        if let Err(e) = ack.durable().await {
            self.shared.failed.store(true, Ordering::Release);
            tracing::error!(error = %e, "audit log write failed; beacon stops serving");
            return Err(Status::unavailable(format!("audit log write failed: {e}")));
        }
        Ok(value)
    }

    async fn produce_round(&self) -> Result<(), Status> {
        let round = self.logged(|b, now| b.next_round(wall_ms(), now)).await?;
        let msg = round_pb(&round);
        let mut history = self.shared.history.lock().expect("history lock");
        history.push_back(msg.clone());
        while history.len() > self.shared.history_cap {
            history.pop_front();
        }
        // Sent under the history lock so a watcher that snapshots history and subscribes under
        // the same lock sees every round exactly once.
        let _ = self.shared.live.send(msg);
        Ok(())
    }

    /// Stops serving and reveals every active seed and the current epoch key in the log, so that
    /// everything drawn so far can be verified. Calls after this are refused.
    pub async fn shutdown(&self) -> Result<(), Status> {
        let result = self.logged(|b, _| Ok(((), b.retire_all()))).await;
        self.shared.failed.store(true, Ordering::Release);
        result
    }

    /// Reseeds the CSPRNG now and logs the commitment.
    pub async fn reseed(&self) -> Result<(), Status> {
        self.logged(|b, now| b.reseed(now).map(|e| ((), vec![e]))).await
    }

    pub fn into_server(self) -> pb::beacon_server::BeaconServer<Self> {
        pb::beacon_server::BeaconServer::new(self).max_decoding_message_size(64 * 1024)
    }

    /// Serves the beacon on `listener` until `shutdown` resolves; requests in flight finish.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        // Both reflection protocols, so grpcurl (old and new) can list and describe the beacon.
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .expect("the beacon's own descriptors are valid");
        let reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .expect("the beacon's own descriptors are valid");
        tonic::transport::Server::builder()
            .add_service(self.into_server())
            .add_service(reflection)
            .add_service(reflection_alpha)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await
    }
}

type RoundStream = Pin<Box<dyn Stream<Item = Result<pb::Round, Status>> + Send>>;

#[tonic::async_trait]
impl pb::beacon_server::Beacon for BeaconService {
    async fn get_commitment(&self, req: Request<pb::GetCommitmentRequest>) -> Result<Response<pb::Commitment>, Status> {
        let id = req.into_inner().pair_id;
        let view = self.logged(|b, now| b.commitment(&id, now)).await?;
        Ok(Response::new(commitment_pb(view)))
    }

    async fn rotate_seed(
        &self,
        req: Request<pb::RotateSeedRequest>,
    ) -> Result<Response<pb::RotateSeedResponse>, Status> {
        let r = req.into_inner();
        let client = Some(r.new_client_seed).filter(|c| !c.is_empty());
        let (revealed, next): (RevealView, CommitmentView) =
            self.logged(|b, now| b.rotate(&r.pair_id, client, now).map(|(rv, cv, ev)| ((rv, cv), ev))).await?;
        Ok(Response::new(pb::RotateSeedResponse {
            revealed_server_seed: revealed.server_seed,
            revealed_server_seed_hash: revealed.server_seed_hash,
            nonces_used: revealed.nonces_used,
            next: Some(commitment_pb(next)),
        }))
    }

    async fn draw_outcome(
        &self,
        req: Request<pb::DrawOutcomeRequest>,
    ) -> Result<Response<pb::DrawOutcomeResponse>, Status> {
        let r = req.into_inner();
        let game = Game::parse(&r.game).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mode = Mode::parse(&r.mode).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let d = self.logged(|b, _| b.draw(&r.pair_id, game, mode, &r.client_seed, r.nonce)).await?;
        Ok(Response::new(pb::DrawOutcomeResponse {
            pair_id: d.pair_id,
            server_seed_hash: d.server_seed_hash,
            client_seed: d.client_seed,
            nonce: d.nonce,
            game: d.game.spec(),
            mode: d.mode.name().to_owned(),
            outcome_json: d.outcome.to_string(),
        }))
    }

    async fn reveal(&self, req: Request<pb::RevealRequest>) -> Result<Response<pb::RevealResponse>, Status> {
        let hash = req.into_inner().server_seed_hash;
        let r = self.shared.beacon.lock().expect("beacon lock").reveal(&hash).map_err(status)?;
        Ok(Response::new(pb::RevealResponse {
            server_seed: r.server_seed,
            server_seed_hash: r.server_seed_hash,
            pair_id: r.pair_id,
            nonces_used: r.nonces_used,
        }))
    }

    type WatchRoundsStream = RoundStream;

    async fn watch_rounds(&self, req: Request<pb::WatchRoundsRequest>) -> Result<Response<RoundStream>, Status> {
        let from = req.into_inner().from_round;
        let (backlog, live) = {
            let history = self.shared.history.lock().expect("history lock");
            if let Some(oldest) = history.front()
                && from < oldest.round
            {
                return Err(Status::out_of_range(format!(
                    "round {from} is no longer retained; the oldest retained round is {}",
                    oldest.round
                )));
            }
            let backlog: Vec<pb::Round> = history.iter().filter(|r| r.round >= from).cloned().collect();
            (backlog, self.shared.live.subscribe())
        };
        let stream = round_stream(backlog, from, live);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The backlog, then live rounds at or after `from`, ending with an error if the watcher falls
/// so far behind that rounds were dropped (it can resume from the last round it saw).
fn round_stream(
    backlog: Vec<pb::Round>,
    from: u64,
    mut live: broadcast::Receiver<pb::Round>,
) -> impl Stream<Item = Result<pb::Round, Status>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut want = from;
        for r in backlog {
            want = r.round + 1;
            if tx.send(Ok(r)).await.is_err() {
                return;
            }
        }
        loop {
            match live.recv().await {
                Ok(r) if r.round < want => continue,
                Ok(r) => {
                    want = r.round + 1;
                    if tx.send(Ok(r)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let _ = tx
                        .send(Err(Status::resource_exhausted(format!("watcher fell behind; resume from round {want}"))))
                        .await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
