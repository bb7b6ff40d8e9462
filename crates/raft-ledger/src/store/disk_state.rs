//! A shard's accounts and retained state (ids, rounds and their forgetting queue) on disk, in
//! fjall, an LSM tree, behind a write buffer: the [`LedgerState`] a ledger uses when its players
//! and its history must not live in RAM (issue 18). What stays in memory is bounded: the write
//! buffer (a checkpoint interval's writes), the engine's block cache (configured), its
//! memtables, and the Bloom filters below.
//!
//! Why fjall: the `state_store` benchmark (BENCHMARKS.md, "State on disk: choosing the engine")
//! measured it at 3–5× redb's rate on this workload with a thirtieth of its p99 and half its
//! disk per id; ARCHITECTURE.md has the reasoning.
//!
//! Writes collect in memory until [`DiskState::flush`], which commits them in one atomic fjall
//! batch together with the caller's metadata (the shell stores the applied log index there), so
//! the on-disk state is always that of a batch boundary: after a crash it is some earlier
//! flush's state with the metadata that names it, and the shell replays the log from there.
//! Flushes are not fsynced; [`DiskState::persist`] makes everything flushed durable, which a
//! checkpoint does before the log behind it may be purged. Reads look at the buffer first, so
//! the ledger sees its own writes at once.
//!
//! Keys are the ledger's 128-bit digests, big-endian (accounts: their postcard encoding);
//! values are the records' postcard encoding. The forgetting queue is stored as runs: each
//! flush writes the items pushed since the last one as a single value, keyed by its first
//! item's (cluster time, position) so runs read back in push order, and a run is deleted once
//! all its items have been popped (the position of the next item to pop is in the metadata, so
//! a run popped halfway is resumed there). One write and one delete per flush instead of per
//! item: an LSM tree pays for each write with a search of its memtable.
//!
//! Most lookups are of keys that are not there (a new bet's id, a new round), and a lookup in an
//! LSM tree that finds nothing still searches its memtables and asks each segment's filter. So
//! the state keeps its own Bloom filters over every retained key, in memory, and answers
//! "absent" from them. A Bloom filter cannot forget a key, so there is one per span of the queue
//! ("bucket"): a key goes into the current bucket each time it is queued, and a bucket is
//! dropped once every item of its span has been popped, because a remembered key's latest queue
//! item has not been popped yet. Sealed buckets are written with the flush that seals them; the
//! open one is rebuilt on open by scanning the queue from its start.
//!
//! Forgetting an id does not read it either: its queue item says when it was remembered, except
//! for a key the ledger requeued (a tombstone replaced by its late command), whose earlier items
//! are skipped by count ([`LedgerState::requeue_id`]; the counts are few and persisted).
//!
//! Nor does forgetting a round that saw no activity after its queue item was pushed: its last
//! activity is then no later than the item's time. A round's activity is too common for counts
//! (a win or a rollback in most rounds), so each bucket has a second, smaller Bloom filter over
//! the rounds [`put`](LedgerState::put_round) to while it was open; a popped round item is
//! decided without a read when no bucket from its own on may hold the round. A false positive
//! costs one read, never a different outcome. A bucket whose "touched" filter is unknown (the
//! bucket open when the state was last opened: its touches were never stored) may hold
//! anything, so for one window after a restart round items queued before it are read as they
//! pop. At 100M retained ids this took round reads from about 0.59 to 0.26 per command (the
//! rest are rounds with a win or rollback after their bet) and the apply rate from 45k to 48k/s
//! (BENCHMARKS.md).
//!
//! IO errors panic (the [`LedgerState`] contract): a state machine that cannot write its state
//! must stop, not go on from a state it does not have.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use ledger_core::{AccountRef, Balance, ClusterTime, IdRecord, LedgerState, Retained, RetainedImage, Round, StateKey};

/// A read-ahead brings runs into memory until it holds at least this many queue items.
const QUEUE_READ_AHEAD: usize = 1024;

/// A bucket's filter is sized for a quarter of the retained keys (so about five are alive), and
/// never for fewer than this (in tests, few enough that short runs seal and drop many).
const BUCKET_MIN_KEYS: u64 = if cfg!(test) { 16 } else { 1 << 16 };

/// Filter bits per key: with seven hashes, about 1% false positives.
const FILTER_BITS_PER_KEY: u64 = 10;
const FILTER_HASHES: u32 = 7;

/// A bucket's "touched" filter is sized for this fraction (its inverse) of the keys it queues:
/// a casino's mix puts to about one round per five queued keys (a win or rollback per bet or
/// so, an id per command). More only raises false positives, each a read.
const TOUCHED_SHARE_INVERSE: usize = 4;

/// The most journal fjall keeps (and replays on open); its minimum is 24 MiB.
const JOURNALING_BYTES_MAX: u64 = 32 << 20;

/// The metadata key under which a flush stores the counters and the caller's bytes.
const META_KEY: &[u8] = b"meta";

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Failure to open the on-disk state.
#[derive(Debug, thiserror::Error)]
pub enum DiskStateError {
    /// The engine could not open or recover its files.
    #[error("cannot open the on-disk state: {0}")]
    Engine(#[from] fjall::Error),
    /// The files hold metadata this build cannot read.
    #[error("the on-disk state's metadata is unreadable: {0}")]
    Meta(#[from] postcard::Error),
    /// A stored key has the wrong length.
    #[error("the on-disk state is corrupt: a {0} key has the wrong length")]
    Corrupt(&'static str),
}

/// Counters and the caller's bytes, written with every flush.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Meta {
    ids: u64,
    next_queue_seq: u64,
    /// The open bucket: its first queue position, a lower bound of its items' times (the queue
    /// is scanned from there on open) and the keys it is sized for.
    open_bucket_seq: u64,
    open_bucket_at: u64,
    open_bucket_keys: u64,
    /// The queue position of the next item to pop.
    next_pop_seq: u64,
    user: Vec<u8>,
}

/// A Bloom filter over the keys queued in a span of queue positions, from `first_seq` up to
/// the next bucket's, and one over the rounds put to while the span was open.
struct Bucket {
    first_seq: u64,
    keys: u64,
    sized_for: u64,
    filter: fastbloom::BloomFilter,
    /// `None`: not known, so any round may have been put to.
    touched: Option<fastbloom::BloomFilter>,
}

impl Bucket {
    fn new(first_seq: u64, sized_for: u64) -> Self {
        let bits = usize::try_from(sized_for * FILTER_BITS_PER_KEY).expect("filter fits in memory");
        Self {
            first_seq,
            keys: 0,
            sized_for,
            filter: fastbloom::BloomFilter::with_num_bits(bits).hashes(FILTER_HASHES),
            touched: Some(fastbloom::BloomFilter::with_num_bits(bits / TOUCHED_SHARE_INVERSE).hashes(FILTER_HASHES)),
        }
    }

    fn insert(&mut self, key: StateKey) {
        // Keys are SHA-256 digests: their low 64 bits are already a uniform hash.
        self.filter.insert_hash(key as u64);
        self.keys += 1;
    }

    fn may_hold(&self, key: StateKey) -> bool {
        self.filter.contains_hash(key as u64)
    }

    fn touch(&mut self, key: StateKey) {
        if let Some(t) = &mut self.touched {
            t.insert_hash(key as u64);
        }
    }

    fn may_be_touched(&self, key: StateKey) -> bool {
        self.touched.as_ref().is_none_or(|t| t.contains_hash(key as u64))
    }

    fn encode_touched(&self) -> Option<Vec<u8>> {
        self.touched.as_ref().map(|t| {
            let mut out = Vec::new();
            encode_filter(t, &mut out);
            out
        })
    }

    fn decode_touched(&mut self, bytes: &[u8]) {
        assert!(!bytes.is_empty(), "on-disk state: a stored filter is torn");
        self.touched = Some(decode_filter(bytes));
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 8 * self.filter.as_slice().len());
        out.extend_from_slice(&self.keys.to_be_bytes());
        out.extend_from_slice(&self.sized_for.to_be_bytes());
        encode_filter(&self.filter, &mut out);
        out
    }

    fn decode(first_seq: u64, bytes: &[u8]) -> Self {
        assert!(bytes.len() > 16, "on-disk state: a stored filter is torn");
        let word = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8 bytes"));
        Self {
            first_seq,
            keys: word(&bytes[..8]),
            sized_for: word(&bytes[8..16]),
            filter: decode_filter(&bytes[16..]),
            touched: None,
        }
    }
}

/// A filter's bits as stored: its words, little-endian.
fn encode_filter(filter: &fastbloom::BloomFilter, out: &mut Vec<u8>) {
    for word in filter.as_slice() {
        out.extend_from_slice(&word.to_le_bytes());
    }
}

fn decode_filter(bytes: &[u8]) -> fastbloom::BloomFilter {
    assert!(bytes.len().is_multiple_of(8), "on-disk state: a stored filter is torn");
    let words = bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
    fastbloom::BloomFilter::from_vec(words).hashes(FILTER_HASHES)
}

/// Where a sealed bucket's "touched" filter is stored: after its key filter's key.
fn touched_key(first_seq: u64) -> [u8; 9] {
    let mut k = [b't'; 9];
    k[..8].copy_from_slice(&first_seq.to_be_bytes());
    k
}

/// One queued item with its position.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Queued {
    at: ClusterTime,
    seq: u64,
    item: Retained,
}

/// A run read into the head: its key, and the position of its last item.
#[derive(Debug, Clone, Copy)]
struct HeadRun {
    key: [u8; 16],
    last_seq: u64,
}

fn queue_key(at: ClusterTime, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&at.as_millis().to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The keyspace and its partitions (handles, cheap to clone: a commit takes them to another
/// thread).
#[derive(Clone)]
struct Parts {
    keyspace: fjall::Keyspace,
    ids: fjall::PartitionHandle,
    rounds: fjall::PartitionHandle,
    queue: fjall::PartitionHandle,
    meta: fjall::PartitionHandle,
    filters: fjall::PartitionHandle,
    requeued: fjall::PartitionHandle,
    accounts: fjall::PartitionHandle,
    /// The last field, so it is dropped after the keyspace and every partition handle.
    _lease: Arc<DirLease>,
}

/// A flush's writes, taken out of the buffer by [`DiskState::freeze`] and read by lookups until
/// their [`Commit`] has written them.
struct Frozen {
    ids: FastMap<StateKey, Option<IdRecord>>,
    rounds: FastMap<StateKey, Option<Round>>,
    accounts: FastMap<AccountRef, Balance>,
    /// The items pushed since the last flush, as one run, with its key.
    run: Option<([u8; 16], Vec<Queued>)>,
    popped: Vec<[u8; 16]>,
    requeued: Vec<(StateKey, Option<u32>)>,
    dropped: Vec<u64>,
    /// A sealed bucket's key filter and, if known, its "touched" filter.
    sealed: Vec<(u64, Vec<u8>, Option<Vec<u8>>)>,
    meta: Vec<u8>,
    /// `COMMITTING`, `COMMITTED` or `FAILED`.
    status: AtomicU8,
}

const COMMITTING: u8 = 0;
const COMMITTED: u8 = 1;
const FAILED: u8 = 2;

/// The retained state in an fjall keyspace of its own (one directory per shard).
pub struct DiskState {
    parts: Parts,
    /// The last flush's writes while their commit runs (on another thread, for a checkpoint).
    frozen: Option<Arc<Frozen>>,
    /// Bloom filters over the queued keys, oldest span first; the last is open.
    buckets: VecDeque<Bucket>,
    /// Sealed since the last flush (written by it) and dropped since (deleted by it).
    sealed: Vec<u64>,
    dropped: Vec<u64>,
    /// Keys requeued by the ledger, with how many of their queue items are now stale.
    requeued: FastMap<StateKey, u32>,
    requeued_dirty: HashSet<StateKey, foldhash::fast::RandomState>,
    /// Written since the last flush; `None` is a removal.
    pending_ids: FastMap<StateKey, Option<IdRecord>>,
    pending_rounds: FastMap<StateKey, Option<Round>>,
    /// Balances written since the last flush (accounts are never removed), and those read on
    /// the apply path since ([`LedgerState::load_account`]): a command reads the accounts it
    /// then writes, and the write finds them here instead of reading the engine again. An
    /// account read and not written is written back unchanged by the next flush.
    pending_accounts: FastMap<AccountRef, Balance>,
    /// The oldest queue items on disk, not yet popped, and the runs they came from.
    head: VecDeque<Queued>,
    head_runs: VecDeque<HeadRun>,
    /// Whether the disk may hold queue items beyond `head`.
    more_on_disk: bool,
    /// The last run read into the head: the next read-ahead starts after it.
    cursor: Option<[u8; 16]>,
    /// Runs wholly popped since the last flush, deleted by it.
    popped: Vec<[u8; 16]>,
    /// Pushed since the last flush, oldest first; newer than everything on disk.
    tail: VecDeque<Queued>,
    meta: Meta,
    /// Round items popped since open: decided without reading the round, and with a read.
    round_forgets: (u64, u64),
}

impl std::fmt::Debug for DiskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskState").field("ids", &self.meta.ids).field("pending", &self.pending_ids.len()).finish()
    }
}

impl DiskState {
    /// Opens (or creates) the state in `dir`, with a block cache of `cache_bytes`, and returns it
    /// with the bytes the last flush stored (empty for a new state).
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<(Self, Vec<u8>), DiskStateError> {
        let lease = Arc::new(DirLease::take(dir));
        // fjall keeps a journal until every partition's memtable holding its writes is flushed,
        // and replays the journals on open. The small partitions (metadata, filters) fill their
        // memtables slowly and would pin up to 512 MiB of journal (3 s of replay at 1M ids);
        // a cap of 32 MiB forces their flush and bounds the replay.
        let keyspace =
            fjall::Config::new(dir).cache_size(cache_bytes).max_journaling_size(JOURNALING_BYTES_MAX).open()?;
        let opts = fjall::PartitionCreateOptions::default;
        let ids = keyspace.open_partition("ids", opts())?;
        let rounds = keyspace.open_partition("rounds", opts())?;
        let queue = keyspace.open_partition("queue", opts())?;
        let meta_part = keyspace.open_partition("meta", opts())?;
        let filters_part = keyspace.open_partition("filters", opts())?;
        let requeued_part = keyspace.open_partition("requeued", opts())?;
        let accounts = keyspace.open_partition("accounts", opts())?;
        let stored = meta_part.get(META_KEY)?;
        let fresh = stored.is_none();
        let meta: Meta = match stored {
            Some(bytes) => postcard::from_bytes(&bytes)?,
            None => Meta { open_bucket_keys: BUCKET_MIN_KEYS, ..Meta::default() },
        };
        let user = meta.user.clone();
        let mut buckets: VecDeque<Bucket> = VecDeque::new();
        for kv in filters_part.iter() {
            let (k, v) = kv?;
            // A bucket's key filter (8 bytes), then its "touched" filter (9) if it was stored.
            let first_seq = u64::from_be_bytes(
                k.get(..8).and_then(|b| b.try_into().ok()).ok_or(DiskStateError::Corrupt("filter"))?,
            );
            match k.len() {
                8 => buckets.push_back(Bucket::decode(first_seq, &v)),
                9 => match buckets.back_mut() {
                    Some(b) if b.first_seq == first_seq => b.decode_touched(&v),
                    _ => return Err(DiskStateError::Corrupt("touched filter")),
                },
                _ => return Err(DiskStateError::Corrupt("filter")),
            }
        }
        let mut requeued = FastMap::default();
        for kv in requeued_part.iter() {
            let (k, v) = kv?;
            let key = StateKey::from_be_bytes(k.as_ref().try_into().map_err(|_| DiskStateError::Corrupt("requeued"))?);
            let count = v.as_ref().try_into().map_err(|_| DiskStateError::Corrupt("requeued count"))?;
            requeued.insert(key, u32::from_be_bytes(count));
        }
        // The open bucket holds the keys queued since it opened: scan them back in.
        let mut open = Bucket::new(meta.open_bucket_seq, meta.open_bucket_keys);
        if !fresh {
            // Its touches since it opened were never stored.
            open.touched = None;
        }
        let from = queue_key(ClusterTime::from_millis(meta.open_bucket_at), meta.open_bucket_seq);
        for kv in queue.range(from..) {
            let (_, v) = kv?;
            let run: Vec<Queued> = postcard::from_bytes(&v)?;
            // The range starts at a lower bound of the bucket's times; older spans' runs that
            // sort after it are not this bucket's.
            for q in run.iter().filter(|q| q.seq >= meta.open_bucket_seq) {
                open.insert(item_key(q.item));
            }
        }
        buckets.push_back(open);
        let parts = Parts {
            keyspace,
            ids,
            rounds,
            queue,
            meta: meta_part,
            filters: filters_part,
            requeued: requeued_part,
            accounts,
            _lease: lease,
        };
        let mut state = Self {
            parts,
            frozen: None,
            buckets,
            sealed: Vec::new(),
            dropped: Vec::new(),
            requeued,
            requeued_dirty: HashSet::default(),
            pending_ids: FastMap::default(),
            pending_rounds: FastMap::default(),
            pending_accounts: FastMap::default(),
            head: VecDeque::new(),
            head_runs: VecDeque::new(),
            more_on_disk: true,
            cursor: None,
            popped: Vec::new(),
            tail: VecDeque::new(),
            meta,
            round_forgets: (0, 0),
        };
        state.read_ahead();
        Ok((state, user))
    }

    /// Commits every write since the last flush, and `user` beside them, in one atomic batch.
    /// Not durable until [`persist`](Self::persist).
    pub fn flush(&mut self, user: &[u8]) {
        self.freeze(user).commit();
        self.release_committed();
    }

    /// Takes every write since the last flush, and `user` beside them, out of the buffer, for
    /// the returned [`Commit`] to write in one atomic batch, on any thread: a checkpoint's
    /// writes reach the engine without holding up the thread applying commands. Until the commit
    /// is done, lookups read the taken writes where they are. Waits for the previous commit, so
    /// commits land in order.
    pub fn freeze(&mut self, user: &[u8]) -> Commit {
        self.wait_committed();
        let ids = std::mem::take(&mut self.pending_ids);
        let rounds = std::mem::take(&mut self.pending_rounds);
        let accounts = std::mem::take(&mut self.pending_accounts);
        let popped = std::mem::take(&mut self.popped);
        let requeued = self.requeued_dirty.drain().map(|k| (k, self.requeued.get(&k).copied())).collect();
        self.rotate_buckets();
        let dropped = std::mem::take(&mut self.dropped);
        let sealed = self
            .sealed
            .drain(..)
            .filter_map(|first| {
                let b = self.buckets.iter().find(|b| b.first_seq == first)?;
                Some((first, b.encode(), b.encode_touched()))
            })
            .collect();
        let run = self.tail.front().map(|q| queue_key(q.at, q.seq)).map(|key| (key, self.tail.drain(..).collect()));
        if run.is_some() {
            // Everything on disk (or being committed) is older than the tail, so the head can be
            // served from there again.
            self.more_on_disk = true;
        }
        self.meta.user = user.to_vec();
        let frozen = Arc::new(Frozen {
            ids,
            rounds,
            accounts,
            run,
            popped,
            requeued,
            dropped,
            sealed,
            meta: encode(&self.meta),
            status: AtomicU8::new(COMMITTING),
        });
        self.frozen = Some(frozen.clone());
        if self.head.is_empty() {
            self.read_ahead();
        }
        Commit { parts: self.parts.clone(), frozen }
    }

    /// Drops the last flush's writes from memory once their commit is done (the engine has
    /// them). Panics if the commit failed: the state's writes were lost.
    pub fn release_committed(&mut self) {
        if let Some(f) = &self.frozen {
            match f.status.load(Ordering::Acquire) {
                COMMITTED => self.frozen = None,
                FAILED => panic!("on-disk state: a flush could not be committed"),
                _ => {}
            }
        }
    }

    /// Waits until the last flush's commit is done.
    fn wait_committed(&mut self) {
        loop {
            self.release_committed();
            if self.frozen.is_none() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }

    /// Makes every flush so far durable (fsync).
    pub fn persist(&self) {
        self.persister().persist();
    }

    /// A handle that makes flushes durable from another thread, so a checkpoint's fsync need
    /// not hold up the thread applying commands.
    pub fn persister(&self) -> Persister {
        Persister { keyspace: self.parts.keyspace.clone(), _lease: self.parts._lease.clone() }
    }

    /// Whether nothing is remembered and nothing queued, flushed or not.
    pub fn is_empty(&self) -> bool {
        self.meta.ids == 0 && self.meta.next_pop_seq == self.meta.next_queue_seq
    }

    /// Whether any account is stored (a state opened at a version 1 checkpoint has none: that
    /// checkpoint holds them itself).
    pub fn has_stored_accounts(&self) -> bool {
        !self.parts.accounts.is_empty().unwrap_or_else(|e| panic!("on-disk state: cannot read it: {e}"))
    }

    /// Every account as of the last flush, by account (the tests compare them).
    #[cfg(test)]
    pub(crate) fn stored_accounts(&self) -> Vec<(AccountRef, Balance)> {
        assert!(self.frozen.is_none(), "read the stored accounts after a flush is committed");
        read_accounts(self.parts.accounts.iter())
    }

    /// An account's balance as of the last flush: the commit in flight's if it has the account
    /// (being committed, or committed and not yet released: the engine has the same), else the
    /// engine's.
    fn flushed_account(&self, account: &AccountRef) -> Option<Balance> {
        if let Some(b) = self.frozen.as_deref().and_then(|f| f.accounts.get(account)) {
            return Some(*b);
        }
        let stored = self
            .parts
            .accounts
            .get(encode(account))
            .unwrap_or_else(|e| panic!("on-disk state: cannot read an account: {e}"));
        stored.map(|v| decode(&v))
    }

    /// Writes every account of an image (a snapshot's, or the in-memory state of a node moving
    /// to disk) straight into the engine's sorted files, like [`import`](Self::import).
    pub fn import_accounts(&mut self, accounts: &[(AccountRef, Balance)]) {
        assert!(
            !self.has_stored_accounts() && self.pending_accounts.is_empty(),
            "import accounts into a state without any"
        );
        let mut rows: Vec<(Vec<u8>, Vec<u8>)> = accounts.iter().map(|(a, b)| (encode(a), encode(b))).collect();
        // Ingest takes keys in byte order, which is not the accounts' order.
        rows.sort_unstable_by(|x, y| x.0.cmp(&y.0));
        rows.dedup_by(|x, y| x.0 == y.0);
        self.parts
            .accounts
            .ingest(rows.into_iter())
            .unwrap_or_else(|e| panic!("on-disk state: cannot import accounts: {e}"));
    }

    /// A consistent read-only view of the state as of the last committed flush, for reading it
    /// out while the ledger goes on applying (its later writes are buffered until the next
    /// flush, and a later commit does not change what the view sees).
    pub fn checkpoint_view(&self) -> CheckpointView {
        self.parts.view()
    }

    /// Fills an empty state with a retained image (the in-memory state of a node switching to
    /// disk); see [`start_import`](Self::start_import), which this feeds from memory. An image
    /// lists ids and rounds by key; they are sorted again here rather than trusted to be.
    pub fn import(&mut self, retained: RetainedImage) {
        let RetainedImage { mut ids, mut rounds, retention } = retained;
        ids.sort_unstable_by_key(|(k, _)| *k);
        ids.dedup_by_key(|(k, _)| *k);
        rounds.sort_unstable_by_key(|(k, _)| *k);
        rounds.dedup_by_key(|(k, _)| *k);
        let mut import = self.start_import();
        let sorted = "sorted above";
        import.ids(&mut ids.into_iter().map(Ok)).expect(sorted);
        import.rounds(&mut rounds.into_iter().map(Ok)).expect(sorted);
        import.queue(&mut retention.into_iter().map(Ok)).expect("every remembered id has a queue item");
    }

    /// Starts filling an empty state with a retained image's parts in the image's order, as
    /// they are decoded (a snapshot received from a peer, streamed from its file): the ids,
    /// then the rounds, each sorted by key, straight into the engine's sorted files (fjall's
    /// bulk ingest: no journal, no memtable, no compaction), which is most of the work; then the
    /// queue, through flushes as it is pushed, so the filters stay sized for their spans. Only
    /// the ids' keys and the rounds' keys and last activity are held meanwhile (16 and 24 bytes
    /// each, and a bit per id), not the image. The intermediate flushes store empty metadata: a
    /// state whose metadata is empty is not a checkpoint, and the caller discards it if the
    /// import is cut short or fails. The caller flushes its metadata at the end.
    pub fn start_import(&mut self) -> Import<'_> {
        assert!(self.is_empty(), "import into an empty state");
        Import { state: self, ids: Vec::new(), rounds: Vec::new() }
    }

    /// Seals the open bucket once it holds what it was sized for, and drops buckets whose whole
    /// span has been popped.
    fn rotate_buckets(&mut self) {
        let open = self.buckets.back().expect("there is always an open bucket");
        if open.keys >= open.sized_for {
            let live = self.meta.next_queue_seq - self.meta.next_pop_seq;
            let sized_for = (live / 4).max(BUCKET_MIN_KEYS);
            self.sealed.push(open.first_seq);
            let last_at = self.tail.back().map_or(self.meta.open_bucket_at, |q| q.at.as_millis());
            self.buckets.push_back(Bucket::new(self.meta.next_queue_seq, sized_for));
            self.meta.open_bucket_seq = self.meta.next_queue_seq;
            // Every later push is at this time or later: the queue's keys sort by time first.
            self.meta.open_bucket_at = last_at;
            self.meta.open_bucket_keys = sized_for;
        }
        while self.buckets.len() > 1 && self.buckets[1].first_seq <= self.meta.next_pop_seq {
            let gone = self.buckets.pop_front().expect("two or more buckets");
            self.dropped.push(gone.first_seq);
            // Sealed and dropped between two flushes: never written, nothing to delete.
            if let Some(i) = self.sealed.iter().position(|s| *s == gone.first_seq) {
                self.sealed.remove(i);
                self.dropped.pop();
            }
        }
    }

    /// A record: this batch's write if there is one, else absent if no filter may hold the key,
    /// else whatever the partition has.
    fn lookup<T: Copy + serde::de::DeserializeOwned>(
        &self,
        pending: &FastMap<StateKey, Option<T>>,
        frozen: impl Fn(&Frozen) -> &FastMap<StateKey, Option<T>>,
        partition: &fjall::PartitionHandle,
        what: &str,
        key: StateKey,
    ) -> Option<T> {
        if let Some(written) = pending.get(&key) {
            return *written;
        }
        // Being committed (or committed and not yet released: the engine has the same).
        if let Some(written) = self.frozen.as_deref().and_then(|f| frozen(f).get(&key)) {
            return *written;
        }
        if !self.may_hold(key) {
            return None;
        }
        let stored =
            partition.get(key.to_be_bytes()).unwrap_or_else(|e| panic!("on-disk state: cannot read from {what}: {e}"));
        stored.map(|v| decode(&v))
    }

    /// Whether a key may be remembered on disk; `false` is certain.
    fn may_hold(&self, key: StateKey) -> bool {
        self.buckets.iter().rev().any(|b| b.may_hold(key))
    }

    /// Whether a round may have been put to since the queue item at `seq` was pushed; `false`
    /// is certain. Puts before it in the same bucket answer `true` too, which costs only a read.
    fn may_be_touched_since(&self, seq: u64, key: StateKey) -> bool {
        for b in self.buckets.iter().rev() {
            if b.may_be_touched(key) {
                return true;
            }
            if b.first_seq <= seq {
                return false;
            }
        }
        // No bucket reaches back to the item (not expected: a bucket is dropped only once its
        // whole span has popped).
        true
    }

    /// Round items popped since the state was opened: how many were decided without reading
    /// the round, and how many read it (the benchmark reports them).
    pub fn round_forgets(&self) -> (u64, u64) {
        self.round_forgets
    }

    /// Resident bytes of the filters (the benchmark reports them).
    pub fn filter_bytes(&self) -> usize {
        let words = |b: &Bucket| b.filter.as_slice().len() + b.touched.as_ref().map_or(0, |t| t.as_slice().len());
        self.buckets.iter().map(|b| 8 * words(b)).sum()
    }

    /// Refills the head with the runs after the last one read: from disk, then the run a commit
    /// in flight is writing (newer than everything on disk). Only flushed items are there, all
    /// older than the tail. Items before the next position to pop (a run popped halfway before a
    /// restart) are skipped, and a run with none left is deleted.
    fn read_ahead(&mut self) {
        if !self.more_on_disk {
            return;
        }
        let from = self.cursor.map_or(Bound::Unbounded, |c| Bound::Excluded(c.to_vec()));
        self.more_on_disk = false;
        let queue = self.parts.queue.clone();
        for kv in queue.range::<Vec<u8>, _>((from, Bound::Unbounded)) {
            let (k, v) = kv.unwrap_or_else(|e| panic!("on-disk state: cannot read the queue: {e}"));
            if self.take_run(k.as_ref().try_into().expect("queue keys are 16 bytes"), decode(&v)) {
                self.more_on_disk = true;
                return;
            }
        }
        // Not committed when the range was read (or committed since: then the same run).
        if let Some((key, run)) = self.frozen.as_deref().and_then(|f| f.run.as_ref())
            && self.cursor.is_none_or(|c| *key > c)
        {
            let (key, run) = (*key, run.clone());
            self.take_run(key, run);
        }
    }

    /// Moves a run's items not yet popped into the head; whether the head is now full.
    fn take_run(&mut self, key: [u8; 16], run: Vec<Queued>) -> bool {
        self.cursor = Some(key);
        let last_seq = run.last().expect("runs are never empty").seq;
        if last_seq < self.meta.next_pop_seq {
            self.popped.push(key);
            return false;
        }
        self.head.extend(run.into_iter().filter(|q| q.seq >= self.meta.next_pop_seq));
        self.head_runs.push_back(HeadRun { key, last_seq });
        self.head.len() >= QUEUE_READ_AHEAD
    }
}

/// Directories this process has a keyspace open in. fjall does not stop a second open of the
/// same directory, and a node restarted within a process (the cluster tests) could otherwise
/// open its state while the old keyspace still commits or fsyncs a checkpoint on another thread.
static OPEN_DIRS: std::sync::Mutex<std::collections::BTreeSet<std::path::PathBuf>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// This process's claim on a state's directory, released when the last handle of its keyspace
/// is dropped.
struct DirLease(std::path::PathBuf);

impl DirLease {
    /// Waits (up to a minute) until no other keyspace of this process has `dir` open.
    fn take(dir: &Path) -> Self {
        let dir = dir.to_path_buf();
        for _ in 0..60_000 {
            if OPEN_DIRS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(dir.clone()) {
                return Self(dir);
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("on-disk state: {} is still open in this process after a minute", dir.display());
    }
}

impl Drop for DirLease {
    fn drop(&mut self) {
        OPEN_DIRS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.0);
    }
}

/// A flush's writes on their way to the engine; see [`DiskState::freeze`].
pub struct Commit {
    parts: Parts,
    frozen: Arc<Frozen>,
}

impl Commit {
    /// Writes them in one atomic batch (not durable until a [`Persister::persist`]) and returns a
    /// view of the state as of this flush. An IO error panics, and the state's next use too.
    pub fn commit(self) -> CheckpointView {
        /// Marks the commit failed unless it completes.
        struct Failed<'a>(&'a AtomicU8);
        impl Drop for Failed<'_> {
            fn drop(&mut self) {
                let _ = self.0.compare_exchange(COMMITTING, FAILED, Ordering::AcqRel, Ordering::Acquire);
            }
        }
        let (p, f) = (&self.parts, &*self.frozen);
        let _failed = Failed(&f.status);
        let mut batch = p.keyspace.batch();
        for (key, record) in &f.ids {
            match record {
                Some(r) => batch.insert(&p.ids, key.to_be_bytes(), encode(r)),
                None => batch.remove(&p.ids, key.to_be_bytes()),
            }
        }
        for (key, round) in &f.rounds {
            match round {
                Some(r) => batch.insert(&p.rounds, key.to_be_bytes(), encode(r)),
                None => batch.remove(&p.rounds, key.to_be_bytes()),
            }
        }
        for (account, balance) in &f.accounts {
            batch.insert(&p.accounts, encode(account), encode(balance));
        }
        for key in &f.popped {
            batch.remove(&p.queue, *key);
        }
        for (key, count) in &f.requeued {
            match count {
                Some(n) => batch.insert(&p.requeued, key.to_be_bytes(), n.to_be_bytes()),
                None => batch.remove(&p.requeued, key.to_be_bytes()),
            }
        }
        for first_seq in &f.dropped {
            batch.remove(&p.filters, first_seq.to_be_bytes());
            batch.remove(&p.filters, touched_key(*first_seq));
        }
        for (first_seq, filter, touched) in &f.sealed {
            batch.insert(&p.filters, first_seq.to_be_bytes(), filter.as_slice());
            if let Some(touched) = touched {
                batch.insert(&p.filters, touched_key(*first_seq), touched.as_slice());
            }
        }
        if let Some((key, run)) = &f.run {
            batch.insert(&p.queue, *key, encode(run));
        }
        batch.insert(&p.meta, META_KEY, f.meta.as_slice());
        batch.commit().unwrap_or_else(|e| panic!("on-disk state: cannot commit a flush: {e}"));
        // Commits land one at a time (`freeze` waits for the last), so the engine is now at
        // this flush.
        let view = p.view();
        f.status.store(COMMITTED, Ordering::Release);
        view
    }
}

impl Parts {
    fn view(&self) -> CheckpointView {
        let at = self.keyspace.instant();
        CheckpointView {
            ids: self.ids.snapshot_at(at),
            rounds: self.rounds.snapshot_at(at),
            queue: self.queue.snapshot_at(at),
            meta: self.meta.snapshot_at(at),
            accounts: self.accounts.snapshot_at(at),
        }
    }
}

/// Makes a [`DiskState`]'s flushes durable; see [`DiskState::persister`].
#[derive(Clone)]
pub struct Persister {
    keyspace: fjall::Keyspace,
    /// Dropped after the keyspace.
    _lease: Arc<DirLease>,
}

impl Persister {
    /// Makes every flush so far durable (fsync).
    pub fn persist(&self) {
        self.keyspace
            .persist(fjall::PersistMode::SyncAll)
            .unwrap_or_else(|e| panic!("on-disk state: cannot make it durable: {e}"));
    }
}

/// An import into an empty state in progress; see [`DiskState::start_import`]. A part that
/// fails (its source's error, or rows out of key order: `InvalidData`) leaves the state to be
/// discarded.
pub struct Import<'a> {
    state: &'a mut DiskState,
    /// The remembered ids' keys, ascending.
    ids: Vec<StateKey>,
    /// The remembered rounds' keys, ascending, and their last activity.
    rounds: Vec<(StateKey, ClusterTime)>,
}

impl Import<'_> {
    /// The remembered ids, in strictly ascending key order.
    pub fn ids(&mut self, rows: &mut dyn Iterator<Item = io::Result<(StateKey, IdRecord)>>) -> io::Result<()> {
        let keys = &mut self.ids;
        ingest_sorted(&self.state.parts.ids, "ids", rows, |k, _| keys.push(k))
    }

    /// The remembered rounds, in strictly ascending key order.
    pub fn rounds(&mut self, rows: &mut dyn Iterator<Item = io::Result<(StateKey, Round)>>) -> io::Result<()> {
        let keys = &mut self.rounds;
        ingest_sorted(&self.state.parts.rounds, "rounds", rows, |k, r| keys.push((k, r.last_at())))
    }

    /// The forgetting queue, oldest first, after the ids and the rounds.
    pub fn queue(self, items: &mut dyn Iterator<Item = io::Result<(ClusterTime, Retained)>>) -> io::Result<()> {
        const FLUSH_EVERY: usize = 1 << 16;
        let Import { state, ids, rounds } = self;
        let ids_dir = KeyDirectory::new(ids.iter().copied());
        let rounds_dir = KeyDirectory::new(rounds.iter().map(|(k, _)| *k));
        // Which ids a queue item has been seen for, by position in `ids`. The state was empty
        // (`start_import`), so its count of remembered ids counts exactly those.
        let mut queued = vec![0u64; ids.len().div_ceil(64)];
        for (n, item) in items.enumerate() {
            let (at, item) = item?;
            if let Retained::Id(key) = item {
                // An id's first item remembers it; each later one is a requeue (the earlier items
                // are then stale). An item whose id is gone is one whose pop would do nothing.
                let Some(i) = ids_dir.find(&ids, key, |k| *k) else { continue };
                let (word, bit) = (i / 64, 1u64 << (i % 64));
                if queued[word] & bit == 0 {
                    queued[word] |= bit;
                    state.meta.ids += 1;
                } else {
                    *state.requeued.entry(key).or_insert(0) += 1;
                    state.requeued_dirty.insert(key);
                }
            }
            state.push_retained(at, item);
            if let Retained::Round(key) = item
                && let Some(i) = rounds_dir.find(&rounds, key, |(k, _)| *k)
                && rounds[i].1 > at
            {
                // Active after this item was queued: its pop must read it.
                state.buckets.back_mut().expect("there is always an open bucket").touch(key);
            }
            if n % FLUSH_EVERY == FLUSH_EVERY - 1 {
                state.flush(&[]);
            }
        }
        if state.meta.ids != ids.len() as u64 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "a remembered id has no queue item"));
        }
        Ok(())
    }
}

/// Where a key may sit in a sorted list of keys, by the key's top bits: a few keys per slot,
/// so finding one is a load or two instead of a binary search's twenty dependent ones (most of
/// them cache misses once the list outgrows the caches). Keys are digests, so they spread
/// evenly over the slots; uneven keys would only make some spans longer, never a lookup wrong.
struct KeyDirectory {
    /// How far a key is shifted right to give its slot.
    shift: u32,
    /// Where each slot's keys start in the list, and one past the last slot's end.
    starts: Vec<u32>,
}

impl KeyDirectory {
    /// A directory over `keys`, ascending (four to eight keys per slot, so at most a byte per
    /// key).
    fn new(keys: impl ExactSizeIterator<Item = StateKey>) -> Self {
        let n = keys.len();
        assert!(u32::try_from(n).is_ok(), "at most 2^32 keys in a directory");
        let bits = n.checked_ilog2().unwrap_or(0).saturating_sub(2);
        let shift = StateKey::BITS - bits;
        let mut starts = vec![0u32; (1usize << bits) + 1];
        for key in keys {
            starts[Self::slot(shift, key) + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        Self { shift, starts }
    }

    fn slot(shift: u32, key: StateKey) -> usize {
        usize::try_from(key.checked_shr(shift).unwrap_or(0)).expect("a slot fits the directory")
    }

    /// `key`'s position in `list` (the list the directory was built over), if it is there.
    fn find<T>(&self, list: &[T], key: StateKey, key_of: impl Fn(&T) -> StateKey) -> Option<usize> {
        let slot = Self::slot(self.shift, key);
        let (from, to) = (self.starts[slot] as usize, self.starts[slot + 1] as usize);
        list[from..to].binary_search_by_key(&key, key_of).ok().map(|i| from + i)
    }
}

/// Writes rows into an empty partition's sorted files (see [`DiskState::start_import`]),
/// handing each to `each` first; stops at the first error or at a key not above the one before
/// (the engine needs them strictly ascending).
fn ingest_sorted<T: serde::Serialize>(
    part: &fjall::PartitionHandle,
    what: &str,
    rows: &mut dyn Iterator<Item = io::Result<(StateKey, T)>>,
    mut each: impl FnMut(StateKey, &T),
) -> io::Result<()> {
    let mut failed = None;
    let mut last: Option<StateKey> = None;
    let sorted = std::iter::from_fn(|| match rows.next()? {
        Err(e) => {
            failed = Some(e);
            None
        }
        Ok((key, _)) if last.is_some_and(|l| l >= key) => {
            failed = Some(io::Error::new(io::ErrorKind::InvalidData, format!("{what} not in key order")));
            None
        }
        Ok((key, value)) => {
            last = Some(key);
            each(key, &value);
            Some((key.to_be_bytes(), encode(&value)))
        }
    });
    part.ingest(sorted).map_err(|e| io::Error::other(format!("cannot import {what}: {e}")))?;
    failed.map_or(Ok(()), Err)
}

/// A retained part of an image, which [`CheckpointView::write_part`] streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainedPart {
    /// The remembered ids, by key.
    Ids,
    /// The remembered rounds, by key.
    Rounds,
    /// The forgetting queue, oldest first.
    Retention,
}

/// The state as of one flush; see [`DiskState::checkpoint_view`].
pub struct CheckpointView {
    ids: fjall::Snapshot,
    rounds: fjall::Snapshot,
    queue: fjall::Snapshot,
    meta: fjall::Snapshot,
    accounts: fjall::Snapshot,
}

impl CheckpointView {
    fn meta(&self) -> Meta {
        let meta = self.meta.get(META_KEY).unwrap_or_else(|e| panic!("on-disk state: cannot read its metadata: {e}"));
        meta.map_or_else(Meta::default, |m| decode(&m))
    }

    /// The bytes that flush stored.
    pub fn user(&self) -> Vec<u8> {
        self.meta().user
    }

    /// Everything retained, in an image's order (ids and rounds by key, the queue oldest
    /// first), all in memory: what [`write_part`](Self::write_part) streams, for the tests to
    /// check it against.
    #[cfg(test)]
    pub(crate) fn export(&self) -> RetainedImage {
        fn all<T: serde::de::DeserializeOwned>(part: &fjall::Snapshot) -> Vec<(StateKey, T)> {
            part.iter()
                .map(|kv| {
                    let (k, v) = kv.unwrap_or_else(|e| panic!("on-disk state: cannot read it: {e}"));
                    let key = StateKey::from_be_bytes(k.as_ref().try_into().expect("keys are 16 bytes"));
                    (key, decode(&v))
                })
                .collect()
        }
        let next_pop_seq = self.meta().next_pop_seq;
        let mut retention = Vec::new();
        for kv in self.queue.iter() {
            let (_, v) = kv.unwrap_or_else(|e| panic!("on-disk state: cannot read the queue: {e}"));
            let run: Vec<Queued> = decode(&v);
            retention.extend(run.into_iter().filter(|q| q.seq >= next_pop_seq).map(|q| (q.at, q.item)));
        }
        // Big-endian keys iterate in the keys' numeric order.
        RetainedImage { ids: all(&self.ids), rounds: all(&self.rounds), retention }
    }

    /// Streams one retained part as postcard encodes it in an image (see
    /// [`CoreImage::image_pieces`](ledger_core::CoreImage::image_pieces)): its length, then its
    /// items, ids and rounds by key, the queue oldest first. They come straight from the files
    /// (a stored record is already its item's encoding), holding one run of the queue at a time:
    /// a snapshot for a peer is written at disk speed in bounded memory. The ids' count is the
    /// one flush stored beside them; the rounds and the queue are read twice, to count them and
    /// to write them (the view does not change in between). Either way the items written are
    /// counted against the length written first.
    pub fn write_part(&self, part: RetainedPart, out: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        let failed = |e: fjall::LsmError| io::Error::other(format!("cannot read the on-disk state: {e}"));
        let varint = |n: usize| postcard::to_allocvec(&n).expect("a length encodes");
        let written = match part {
            RetainedPart::Ids | RetainedPart::Rounds => {
                let (snapshot, count) = if part == RetainedPart::Ids {
                    let stored = usize::try_from(self.meta().ids).expect("ids fit in memory's address space");
                    (&self.ids, stored)
                } else {
                    (&self.rounds, self.rounds.len().map_err(failed)?)
                };
                out(&varint(count))?;
                let mut key_buf = [0u8; 19];
                let mut written = 0;
                for kv in snapshot.iter() {
                    let (k, v) = kv.map_err(failed)?;
                    let key = StateKey::from_be_bytes(k.as_ref().try_into().expect("keys are 16 bytes"));
                    out(postcard::to_slice(&key, &mut key_buf).expect("a key encodes"))?;
                    out(&v)?;
                    written += 1;
                }
                (count, written)
            }
            RetainedPart::Retention => {
                let next_pop_seq = self.meta().next_pop_seq;
                let mut count = 0;
                for kv in self.queue.iter() {
                    let (_, v) = kv.map_err(failed)?;
                    count += decode::<Vec<Queued>>(&v).iter().filter(|q| q.seq >= next_pop_seq).count();
                }
                out(&varint(count))?;
                let mut item_buf = [0u8; 64];
                let mut written = 0;
                for kv in self.queue.iter() {
                    let (_, v) = kv.map_err(failed)?;
                    for q in decode::<Vec<Queued>>(&v).into_iter().filter(|q| q.seq >= next_pop_seq) {
                        out(postcard::to_slice(&(q.at, q.item), &mut item_buf).expect("a queue item encodes"))?;
                        written += 1;
                    }
                }
                (count, written)
            }
        };
        assert_eq!(written.0, written.1, "a checkpoint view changed while it was read");
        Ok(())
    }

    /// Every account that flush stored, by account. Reads them all: off the apply path.
    pub fn accounts(&self) -> Vec<(AccountRef, Balance)> {
        read_accounts(self.accounts.iter())
    }
}

/// Decodes an accounts partition's rows and sorts them by account (their keys' byte order is
/// the encoding's, not the accounts').
fn read_accounts<E: std::fmt::Display>(
    rows: impl Iterator<Item = Result<fjall::KvPair, E>>,
) -> Vec<(AccountRef, Balance)> {
    let mut all: Vec<(AccountRef, Balance)> = rows
        .map(|kv| {
            let (k, v) = kv.unwrap_or_else(|e| panic!("on-disk state: cannot read its accounts: {e}"));
            (decode(&k), decode(&v))
        })
        .collect();
    all.sort_unstable_by(|x, y| x.0.cmp(&y.0));
    all
}

fn item_key(item: Retained) -> StateKey {
    match item {
        Retained::Id(k) | Retained::Round(k) => k,
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("records encode")
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> T {
    postcard::from_bytes(bytes).unwrap_or_else(|e| panic!("on-disk state: a stored record does not decode: {e}"))
}

impl LedgerState for DiskState {
    fn account(&self, account: &AccountRef) -> Option<Balance> {
        match self.pending_accounts.get(account) {
            Some(b) => Some(*b),
            None => self.flushed_account(account),
        }
    }

    fn load_account(&mut self, account: &AccountRef) -> Option<Balance> {
        if let Some(b) = self.pending_accounts.get(account) {
            return Some(*b);
        }
        let read = self.flushed_account(account)?;
        self.pending_accounts.insert(account.clone(), read);
        Some(read)
    }

    fn put_account(&mut self, account: &AccountRef, balance: Balance) -> Option<Balance> {
        // Most writes are to accounts already written since the last flush (the house account
        // on every bet): update in place, and clone the account only for a new one.
        if let Some(slot) = self.pending_accounts.get_mut(account) {
            return Some(std::mem::replace(slot, balance));
        }
        let prior = self.flushed_account(account);
        self.pending_accounts.insert(account.clone(), balance);
        prior
    }

    fn for_each_account(&self, f: &mut dyn FnMut(&AccountRef, Balance)) {
        // Each account once, at its latest balance: the buffer's, else the commit in flight's,
        // else the engine's. (A commit landing during the scan changes only accounts the
        // frozen writes still answer for.)
        let frozen = self.frozen.as_deref().map(|f| &f.accounts);
        let newer = |a: &AccountRef| self.pending_accounts.contains_key(a) || frozen.is_some_and(|m| m.contains_key(a));
        for kv in self.parts.accounts.iter() {
            let (k, v) = kv.unwrap_or_else(|e| panic!("on-disk state: cannot read its accounts: {e}"));
            let account: AccountRef = decode(&k);
            if !newer(&account) {
                f(&account, decode(&v));
            }
        }
        for (account, balance) in frozen.into_iter().flatten() {
            if !self.pending_accounts.contains_key(account) {
                f(account, *balance);
            }
        }
        for (account, balance) in &self.pending_accounts {
            f(account, *balance);
        }
    }

    fn id(&self, key: StateKey) -> Option<IdRecord> {
        self.lookup(&self.pending_ids, |f| &f.ids, &self.parts.ids, "ids", key)
    }

    fn insert_id(&mut self, key: StateKey, record: IdRecord) {
        self.pending_ids.insert(key, Some(record));
        self.meta.ids += 1;
    }

    fn requeue_id(&mut self, key: StateKey, record: IdRecord) {
        self.pending_ids.insert(key, Some(record));
        *self.requeued.entry(key).or_insert(0) += 1;
        self.requeued_dirty.insert(key);
    }

    fn update_id(&mut self, key: StateKey, record: IdRecord) {
        self.pending_ids.insert(key, Some(record));
    }

    fn forget_id(&mut self, key: StateKey, queued_at: ClusterTime, expired: impl Fn(ClusterTime) -> bool) {
        if let Some(stale) = self.requeued.get_mut(&key) {
            // One of the key's earlier items: its latest item, still queued, decides. (The
            // in-memory state would forget the key here if its new record had expired too; then
            // that latest item is due in this same pass, so the outcome is the same.)
            *stale -= 1;
            if *stale == 0 {
                self.requeued.remove(&key);
            }
            self.requeued_dirty.insert(key);
            return;
        }
        // The key's only item: its record was remembered when it was queued. (An item pops only
        // once it has expired, except at cluster times within one window of the epoch, which
        // only tests use.)
        if expired(queued_at) {
            self.pending_ids.insert(key, None);
            self.meta.ids = self.meta.ids.checked_sub(1).expect("a queued id is remembered");
        }
    }

    fn remembered_ids(&self) -> usize {
        usize::try_from(self.meta.ids).expect("ids fit in memory's address space")
    }

    fn round(&self, key: StateKey) -> Option<Round> {
        self.lookup(&self.pending_rounds, |f| &f.rounds, &self.parts.rounds, "rounds", key)
    }

    fn insert_round(&mut self, key: StateKey, round: Round) {
        self.pending_rounds.insert(key, Some(round));
    }

    fn put_round(&mut self, key: StateKey, round: Round) {
        self.pending_rounds.insert(key, Some(round));
        self.buckets.back_mut().expect("there is always an open bucket").touch(key);
    }

    fn forget_round(&mut self, key: StateKey, queued_at: ClusterTime, expired: impl Fn(ClusterTime) -> bool) -> bool {
        // The item just popped (the ledger forgets right after popping).
        let seq = self.meta.next_pop_seq.checked_sub(1).expect("an item was popped");
        // Not put to since queued: its last activity is no later than `queued_at` (a round's
        // first, or before the item that requeued it), so `expired` holds for it too. (Except
        // at cluster times within one window of the epoch, which only tests use: then read.)
        if expired(queued_at) && !self.may_be_touched_since(seq, key) {
            self.pending_rounds.insert(key, None);
            self.round_forgets.0 += 1;
            return false;
        }
        self.round_forgets.1 += 1;
        match self.round(key) {
            None => false,
            Some(r) if expired(r.last_at()) => {
                self.pending_rounds.insert(key, None);
                false
            }
            Some(_) => true,
        }
    }

    fn push_retained(&mut self, at: ClusterTime, item: Retained) {
        let seq = self.meta.next_queue_seq;
        self.meta.next_queue_seq += 1;
        self.buckets.back_mut().expect("there is always an open bucket").insert(item_key(item));
        self.tail.push_back(Queued { at, seq, item });
    }

    fn first_retained(&self) -> Option<(ClusterTime, Retained)> {
        self.head.front().or(self.tail.front()).map(|q| (q.at, q.item))
    }

    fn pop_retained(&mut self) -> Option<(ClusterTime, Retained)> {
        let q = match self.head.pop_front() {
            Some(q) => {
                self.meta.next_pop_seq = q.seq + 1;
                // A run wholly popped is deleted by the next flush.
                while self.head_runs.front().is_some_and(|r| r.last_seq < self.meta.next_pop_seq) {
                    let run = self.head_runs.pop_front().expect("checked");
                    self.popped.push(run.key);
                }
                if self.head.is_empty() {
                    self.read_ahead();
                }
                q
            }
            // Never flushed, so nothing to delete.
            None => {
                let q = self.tail.pop_front()?;
                self.meta.next_pop_seq = q.seq + 1;
                q
            }
        };
        Some((q.at, q.item))
    }

    fn check_invariants(&self) {
        let mut last = ClusterTime::default();
        for q in self.head.iter().chain(&self.tail) {
            assert!(q.at >= last, "retention queue out of time order");
            last = q.at;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
