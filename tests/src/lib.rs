//! Helpers for end-to-end tests that run real `walletd` processes.

pub mod api;
pub mod router;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A binary of the workspace, from the release build the README's commands share (`cargo build
/// --release --bins`, which `scripts/test.sh` runs first, so this is then a no-op): the tests
/// run the very `walletd` the demo runs, and it is never stale.
fn release_bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "--release", "--workspace", "--bins"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the release binaries failed");
    });
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/release/<name>
    let target = exe.parent().and_then(Path::parent).and_then(Path::parent).expect("target dir");
    let bin = target.join("release").join(name);
    assert!(bin.exists(), "{name} not found at {}", bin.display());
    bin
}

/// The `walletd` binary.
pub fn walletd_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| release_bin("walletd")).clone()
}

/// The `geo-router` binary.
pub fn geo_router_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| release_bin("geo-router")).clone()
}

/// The `walletctl` binary.
pub fn walletctl_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| release_bin("walletctl")).clone()
}

/// The secret every test cluster shares, as hex.
pub const CLUSTER_SECRET_HEX: &str = "7e57c1a57e57c1a57e57c1a57e57c1a57e57c1a57e57c1a57e57c1a57e57c1a5";

/// The test clusters' key.
pub fn cluster_key() -> raft_ledger::net::member::ClusterKey {
    raft_ledger::net::member::ClusterKey::from_hex(CLUSTER_SECRET_HEX).expect("a valid key")
}

/// A file holding [`CLUSTER_SECRET_HEX`], for `--cluster-key-file` and `WALLETD_CLUSTER_KEY_FILE`.
pub fn cluster_key_file() -> PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("walletd-test-cluster-{}.key", std::process::id()));
        std::fs::write(&path, CLUSTER_SECRET_HEX).expect("write the cluster key file");
        path
    })
    .clone()
}

/// Node API client options for the test clusters.
pub fn client_options() -> raft_ledger::client::ClientOptions {
    raft_ledger::client::ClientOptions::new(cluster_key())
}

/// `walletd` with the test cluster's key in its environment, for `client` and `admin`.
pub fn walletd_command() -> Command {
    let mut c = Command::new(walletd_bin());
    c.env("WALLETD_CLUSTER_KEY_FILE", cluster_key_file());
    c
}

/// A free loopback port (bound and released; good enough for tests on one machine).
/// Pins every thread of process `pid` to the CPUs in `cpus` (a `taskset` list such as "0" or
/// "1-3"); threads it starts later inherit it. For benchmarks that give a component cores of
/// its own.
pub fn pin(pid: u32, cpus: &str) {
    let ok = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("run taskset")
        .success();
    assert!(ok, "taskset -c {cpus} of {pid} failed");
}

/// A loopback port no other caller in this process has been given. Tests run in parallel and
/// share the cluster key, so a port freed by one test's stopped node and handed to another
/// test's new node would let the first cluster's leader replicate to the second cluster's node
/// (seen once: a bet committed with two of its cluster's three nodes stopped).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        if GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(port) {
            return port;
        }
    }
}

/// A running `walletd start` process.
pub struct Walletd {
    pub id: u64,
    pub addr: String,
    pub dir: PathBuf,
    child: Option<Child>,
    args: Vec<String>,
    /// The network namespace the process runs in, if not this one.
    netns: Option<String>,
}

impl Walletd {
    /// Starts node `id` of a cluster whose members are `peers` (id, addr) and waits until ready.
    pub fn start(id: u64, addr: &str, dir: &Path, shards: u32, peers: &[(u64, String)], bootstrap: bool) -> Self {
        Self::start_with(id, addr, dir, shards, peers, bootstrap, &[])
    }

    /// Like [`Walletd::start`], with more `walletd start` flags (the wallet API's, for example).
    pub fn start_with(
        id: u64,
        addr: &str,
        dir: &Path,
        shards: u32,
        peers: &[(u64, String)],
        bootstrap: bool,
        extra: &[String],
    ) -> Self {
        Self::start_in(None, id, addr, dir, shards, peers, bootstrap, extra)
    }

    /// Like [`Walletd::start_with`], in network namespace `netns` (`ip netns exec`, which
    /// execs walletd in place, so signals reach walletd itself).
    #[allow(clippy::too_many_arguments)]
    pub fn start_in(
        netns: Option<&str>,
        id: u64,
        addr: &str,
        dir: &Path,
        shards: u32,
        peers: &[(u64, String)],
        bootstrap: bool,
        extra: &[String],
    ) -> Self {
        let mut args = vec![
            "start".to_string(),
            "--node-id".into(),
            id.to_string(),
            "--listen".into(),
            addr.to_string(),
            "--data-dir".into(),
            dir.display().to_string(),
            "--shards".into(),
            shards.to_string(),
            "--region".into(),
            format!("region-{id}"),
            "--zone".into(),
            format!("zone-{id}"),
            "--cluster-key-file".into(),
            cluster_key_file().display().to_string(),
        ];
        for (pid, paddr) in peers {
            args.push("--peer".into());
            args.push(format!("{pid}={paddr},region=region-{pid},zone=zone-{pid}"));
        }
        if bootstrap {
            args.push("--bootstrap".into());
        }
        args.extend(extra.iter().cloned());
        let netns = netns.map(str::to_string);
        let mut w = Walletd { id, addr: addr.to_string(), dir: dir.to_path_buf(), child: None, args, netns };
        w.spawn();
        w
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.dir).expect("data dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.with_extension("log"))
            .expect("log file");
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(walletd_bin());
                c
            }
            None => Command::new(walletd_bin()),
        };
        let mut child = command.args(&self.args).stdout(Stdio::piped()).stderr(log).spawn().expect("spawn walletd");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("ready on") {
                    let _ = tx.send(());
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if rx.recv_timeout(Duration::from_millis(50)).is_ok() {
                break;
            }
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!(
                    "walletd {} exited early with {status}; see {}",
                    self.id,
                    self.dir.with_extension("log").display()
                );
            }
            assert!(Instant::now() < deadline, "walletd {} did not become ready", self.id);
        }
        self.child = Some(child);
        // A restart must not bootstrap again (it would be harmless, but it is not what operators do).
        self.args.retain(|a| a != "--bootstrap");
    }

    /// SIGKILL: no shutdown, no flush. Only what was fsynced survives.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
        }
    }

    /// Starts the process again on the same address and data directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "node {} is running", self.id);
        self.spawn();
    }

    /// Sends a signal (`-STOP`, `-CONT`, ...) to the running process.
    pub fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("the node is running");
        let ok = Command::new("kill").args([sig, &child.id().to_string()]).status().expect("run kill").success();
        assert!(ok, "kill {sig} failed");
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM and wait: the clean shutdown path.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().expect("try_wait").is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Walletd {
    fn drop(&mut self) {
        self.kill();
    }
}
