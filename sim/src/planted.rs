//! Known bugs the simulator's own tests plant in the real node code, to show that its checks
//! find them. They reach a node only through the environment the simulator builds for it (its
//! disk and a state-machine hook), so nothing of them is compiled into `walletd`.

use std::io;
use std::path::Path;
use std::sync::Arc;

use ledger_core::{Command, TxId};
use raft_ledger::node::NodeEnv;
use raft_ledger::store::vfs::{VFile, Vfs};
use raft_ledger::store::{ApplyHook, ShardLedger};

/// A bug that can be planted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The disk acknowledges writes without making them durable, so the write-ahead log
    /// acknowledges appends that a crash then loses.
    AckBeforeFsync,
    /// The state machine forgets idempotency keys: a retry applies a second time.
    SkipIdempotency,
}

/// The names `--plant` accepts.
pub const PLANTABLE: &[&str] = &["ack-before-fsync", "skip-idempotency"];

/// The bug a name stands for.
pub fn bug(name: &str) -> Result<Bug, String> {
    match name {
        "ack-before-fsync" => Ok(Bug::AckBeforeFsync),
        "skip-idempotency" => Ok(Bug::SkipIdempotency),
        _ => Err(format!("unknown bug {name:?}; one of: {}", PLANTABLE.join(", "))),
    }
}

/// `env` with `bug` planted.
pub fn plant(env: NodeEnv, bug: Bug) -> NodeEnv {
    match bug {
        Bug::AckBeforeFsync => NodeEnv { vfs: Arc::new(NoFsync(env.vfs.clone())), ..env },
        Bug::SkipIdempotency => NodeEnv { apply_hook: Some(Arc::new(ForgetIds)), ..env },
    }
}

/// A disk whose files say they are durable without being so.
struct NoFsync(Arc<dyn Vfs>);

struct NoFsyncFile(Arc<dyn VFile>);

impl VFile for NoFsyncFile {
    fn append(&self, bytes: &[u8]) -> io::Result<()> {
        self.0.append(bytes)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_at(offset, buf)
    }
    fn sync(&self) -> io::Result<()> {
        // The bug: report success without asking the disk.
        Ok(())
    }
    fn truncate(&self, len: u64) -> io::Result<()> {
        self.0.truncate(len)
    }
    fn size(&self) -> io::Result<u64> {
        self.0.size()
    }
}

impl Vfs for NoFsync {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.0.create_dir_all(path)
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn VFile>> {
        Ok(Arc::new(NoFsyncFile(self.0.open(path)?)))
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.0.read(path)
    }
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.0.write_atomic(path, bytes)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.0.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.0.remove(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.0.list(dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.0.sync_dir(dir)
    }
}

/// A state machine that treats a retry of a known id as a new command: it applies it under
/// the id with its log index appended, the same on every replica (so replicas stay identical
/// and only the idempotency checks can notice).
struct ForgetIds;

impl ApplyHook for ForgetIds {
    fn before_apply(&self, ledger: &ShardLedger, cmd: &Command, index: u64) -> Option<Command> {
        ledger.recall(cmd.tx())?;
        let renamed = TxId::new(format!("{}~{index}", cmd.tx().as_str())).ok()?;
        Some(cmd.with_tx(renamed))
    }
}
