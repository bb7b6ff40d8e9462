//! The cluster under test: `walletd` nodes and `geo-router`s as separate processes, every link
//! through the runner's [`FaultProxy`].
//!
//! As root, each node and each router runs in a network namespace of its own, joined to a
//! bridge the runner creates (10.79.T.0/24, T from the runner's pid); the proxy listens on the
//! bridge's address, so it knows every connection's source by its IP, and partitions, one-way
//! cuts and inter-region latency apply per link. Without root, everything runs on loopback and
//! the proxy tells links apart only by destination: kill, pause, latency, resets and blackholes
//! into a node work; partitions, isolation and flapping links say they need root.
//!
//! Dropping a [`Cluster`] kills every process and deletes every namespace and the bridge, so a
//! failed or interrupted run leaves nothing behind.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::proxy::{Dir, FaultProxy, Faults, Selector};
use crate::scenario::Scenario;

/// Node port and wallet-API port of a node inside its namespace.
const NODE_PORT: u16 = 7000;
const API_PORT: u16 = 8000;
const ROUTER_PORT: u16 = 9000;
/// The proxy layer of the emulated network (inter-region latency).
pub const NET_LAYER: &str = "net";

/// A process the runner started.
pub struct Proc {
    /// Name: `n1`… for nodes, `r-eu`… for routers.
    pub name: String,
    /// Its region.
    pub region: String,
    /// The network namespace it runs in (root mode).
    pub netns: Option<String>,
    /// Its interface inside the namespace.
    pub iface: Option<String>,
    /// Where it listens (its own address, not the proxy's).
    pub listen: SocketAddr,
    /// Its wallet API, where it listens (nodes).
    pub api_listen: Option<SocketAddr>,
    /// The proxy's address for its wallet API (nodes) or its service (routers): what clients dial.
    pub front: SocketAddr,
    /// A node's folder in the run (its data directory, clock offset file); none for routers.
    pub home: Option<PathBuf>,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    /// Stopped with SIGSTOP and not yet continued.
    pub paused: bool,
}

impl Proc {
    fn spawn(&mut self) -> std::io::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut cmd = match &self.netns {
            // `ip netns exec` execs the program in place, so signals reach it directly.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.program);
                c
            }
            None => Command::new(&self.program),
        };
        cmd.args(&self.args).envs(self.env.iter().map(|(k, v)| (k, v))).stdout(Stdio::null()).stderr(log);
        // A process group of its own: Ctrl-C in the terminal reaches the runner only, which
        // then runs the rollbacks and the checker against a cluster that is still up.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        self.child = Some(cmd.spawn()?);
        self.paused = false;
        Ok(())
    }

    /// Whether the process is running (not killed; it may be paused).
    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.paused = false;
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "-TERM");
            if !exited_within(&mut c, Duration::from_secs(10)) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`).
    pub fn pause(&mut self, stop: bool) {
        if let Some(c) = &self.child {
            signal(c.id(), if stop { "-STOP" } else { "-CONT" });
            self.paused = stop;
        }
    }

    /// Starts it again with the same arguments (a node never bootstraps twice).
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.args.retain(|a| a != "--bootstrap");
        self.spawn()
    }

    /// Waits until it accepts connections where it listens.
    pub fn wait_listening(&self, within: Duration) -> bool {
        let addr = self.api_listen.unwrap_or(self.listen);
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

/// Writes zeros to `path` until its file system is full; returns the bytes written.
pub fn fill(path: &Path) -> Result<u64, String> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let chunk = vec![0u8; 1 << 20];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC: full, as wanted
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    Ok(written)
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Whether this process may make namespaces and iptables rules.
pub fn privileged() -> Result<(), String> {
    let out = Command::new("id").arg("-u").output().map_err(|e| e.to_string())?;
    if String::from_utf8_lossy(&out.stdout).trim() != "0" {
        return Err("not root".into());
    }
    let ok = Command::new("iptables").arg("-V").output().map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        return Err("iptables is not installed".into());
    }
    Ok(())
}

/// Where binaries and files live.
pub struct Paths {
    /// `walletd`.
    pub walletd: PathBuf,
    /// `geo-router`.
    pub geo_router: PathBuf,
    /// The run folder (data directories and logs go in it).
    pub run_dir: PathBuf,
}

/// The running cluster.
pub struct Cluster {
    /// Nodes by name.
    pub nodes: BTreeMap<String, Proc>,
    /// Node ids by name.
    pub ids: BTreeMap<String, u64>,
    /// Routers, in the scenario's order.
    pub routers: Vec<Proc>,
    /// The proxy on every link.
    pub proxy: FaultProxy,
    /// Root mode: namespaces and a bridge.
    pub root: bool,
    /// The cluster key file.
    pub key_file: PathBuf,
    /// Operator key id and secret (every role), for the workload and the checker.
    pub operator: (String, Vec<u8>),
    bridge: Option<String>,
    namespaces: Vec<String>,
    /// tmpfs data directories (disk-full runs), unmounted at the end.
    mounts: Vec<PathBuf>,
    /// Power-cut file systems under the nodes' data directories (power-cut runs), by node.
    lazy: BTreeMap<String, LazyMount>,
}

/// A `chaos lazyfs` process serving one node's data directory, and its command pipe.
struct LazyMount {
    child: Child,
    commands: Option<std::process::ChildStdin>,
    answers: std::io::BufReader<std::process::ChildStdout>,
    at: PathBuf,
}

impl LazyMount {
    fn start(home: &Path, log: &Path) -> Result<Self, String> {
        use std::io::BufRead;
        let exe = std::env::current_exe().map_err(|e| format!("cannot find the chaos binary: {e}"))?;
        let at = home.join("data");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(exe);
        cmd.arg("lazyfs").arg("--backing").arg(home.join("backing")).arg("--mount").arg(&at);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().map_err(|e| format!("cannot start chaos lazyfs: {e}"))?;
        let commands = child.stdin.take();
        let mut answers = std::io::BufReader::new(child.stdout.take().ok_or("no pipe from chaos lazyfs")?);
        let mut line = String::new();
        answers.read_line(&mut line).map_err(|e| e.to_string())?;
        if line.trim() != "mounted" {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("the power-cut file system did not mount on {} (see its log)", at.display()));
        }
        Ok(Self { child, commands, answers, at })
    }

    /// The cut: every unsynced write is dropped. Returns the bytes dropped.
    fn cut(&mut self) -> Result<u64, String> {
        use std::io::{BufRead, Write};
        let pipe = self.commands.as_mut().ok_or("the power-cut file system is closed")?;
        pipe.write_all(b"cut\n").and_then(|()| pipe.flush()).map_err(|e| format!("power-cut file system: {e}"))?;
        let mut line = String::new();
        self.answers.read_line(&mut line).map_err(|e| format!("power-cut file system: {e}"))?;
        line.trim()
            .strip_prefix("cut ")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("power-cut file system said {line:?}"))
    }
}

impl Drop for LazyMount {
    fn drop(&mut self) {
        // End of input unmounts; a stuck one is killed and lazily unmounted.
        drop(self.commands.take());
        if !exited_within(&mut self.child, Duration::from_secs(5)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = Command::new("umount").arg("-l").arg(&self.at).status();
        }
    }
}

/// Waits up to `grace` for `child` to exit by itself; whether it did.
fn exited_within(child: &mut std::process::Child, grace: Duration) -> bool {
    let deadline = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => return false,
            // Exited, or it cannot be waited for (already reaped): nothing left to wait on.
            Ok(Some(_)) | Err(_) => return true,
        }
    }
}

/// The file, in a node's folder, whose number (ms) offsets its clock (clock-skew runs).
const CLOCK_FILE: &str = "clock-offset-ms";
/// The file that fills a node's tmpfs (disk-full runs).
const FILLER: &str = "chaos-filler";

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in self.nodes.values_mut().chain(self.routers.iter_mut()) {
            if p.paused {
                p.pause(false);
            }
            p.kill();
        }
        self.lazy.clear();
        for m in &self.mounts {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
        if let Some(b) = &self.bridge {
            let _ = ip(&["link", "del", b]);
        }
    }
}

fn sock(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("an IP"), port)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

impl Cluster {
    /// Starts the scenario's cluster: network, proxy routes, nodes (the first bootstraps), routers.
    pub async fn start(s: &Scenario, paths: &Paths, root: bool) -> Result<Self, String> {
        let tag = std::process::id() % 200 + 20;
        let prefix = format!("10.79.{tag}");
        let proxy = FaultProxy::new(s.seed);
        let key_file = paths.run_dir.join("cluster.key");
        // Fresh secrets from the OS CSPRNG for every run (the files stay in the run folder).
        let random = || -> Result<Vec<u8>, String> {
            let mut b = vec![0u8; 32];
            getrandom::fill(&mut b).map_err(|e| format!("OS random source: {e}"))?;
            Ok(b)
        };
        std::fs::write(&key_file, hex(&random()?)).map_err(|e| e.to_string())?;
        let op_secret = random()?;
        let keys = paths.run_dir.join("operators.toml");
        let op_toml = format!(
            "[[operator]]\nid = \"chaos\"\nsecret = \"{}\"\nroles = [\"game\", \"cashier\", \"audit\"]\n",
            hex(&op_secret)
        );
        std::fs::write(&keys, op_toml).map_err(|e| e.to_string())?;
        let mut c = Cluster {
            nodes: BTreeMap::new(),
            ids: BTreeMap::new(),
            routers: Vec::new(),
            proxy,
            root,
            key_file: key_file.clone(),
            operator: ("chaos".into(), op_secret),
            bridge: None,
            namespaces: Vec::new(),
            mounts: Vec::new(),
            lazy: BTreeMap::new(),
        };
        if s.uses("power_cut") && !root {
            return Err("a power_cut fault needs root (each node's data directory is a FUSE mount of its own)".into());
        }
        if s.uses("disk_full") && !root {
            return Err("a disk_full fault needs root (each node's data directory is a tmpfs of its own)".into());
        }
        let front_ip = if root { format!("{prefix}.1") } else { "127.0.0.1".into() };
        if root {
            let bridge = format!("wcb{tag}");
            let _ = ip(&["link", "del", &bridge]);
            ip(&["link", "add", &bridge, "type", "bridge"])?;
            c.bridge = Some(bridge.clone());
            ip(&["addr", "add", &format!("{front_ip}/24"), "dev", &bridge])?;
            ip(&["link", "set", &bridge, "up"])?;
        }
        // A host per node and per router: its namespace, veth and address (root), or loopback.
        let host = |c: &mut Cluster, k: usize| -> Result<(String, Option<String>, Option<String>), String> {
            if !root {
                return Ok(("127.0.0.1".into(), None, None));
            }
            let ns = format!("wc{tag}h{k}");
            let (outer, inner) = (format!("wc{tag}o{k}"), format!("wc{tag}i{k}"));
            let addr = format!("{prefix}.{}", 10 + k);
            let _ = ip(&["netns", "del", &ns]);
            ip(&["netns", "add", &ns])?;
            c.namespaces.push(ns.clone());
            ip(&["link", "add", &outer, "type", "veth", "peer", "name", &inner])?;
            ip(&["link", "set", &outer, "master", c.bridge.as_deref().unwrap_or_default()])?;
            ip(&["link", "set", &outer, "up"])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", &inner])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            Ok((addr, Some(ns), Some(inner)))
        };
        // Nodes: own address inside, and a proxy route for each of its two ports.
        let nodes = s.nodes();
        let mut topo_nodes: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut placed = Vec::new();
        for (k, (name, region, zone)) in nodes.iter().enumerate() {
            let id = k as u64 + 1;
            let (addr, netns, iface) = host(&mut c, k + 1)?;
            let (node_port, api_port) = if root { (NODE_PORT, API_PORT) } else { (free_port(), free_port()) };
            let listen = sock(&addr, node_port);
            let api_listen = sock(&addr, api_port);
            let any = sock(&front_ip, 0);
            let front_node = c.proxy.route(name, any, listen).await.map_err(|e| format!("proxy for {name}: {e}"))?;
            let front_api = c.proxy.route(name, any, api_listen).await.map_err(|e| format!("proxy for {name}: {e}"))?;
            if let Ok(a) = addr.parse::<IpAddr>()
                && root
            {
                c.proxy.name_source(a, name);
            }
            c.ids.insert(name.clone(), id);
            topo_nodes
                .entry(region.clone())
                .or_default()
                .push(format!("{{ id = {id}, addr = \"{front_node}\", zone = \"{zone}\", api = \"{front_api}\" }}"));
            placed.push((
                name.clone(),
                region.clone(),
                zone.clone(),
                id,
                netns,
                iface,
                listen,
                api_listen,
                front_node,
                front_api,
            ));
        }
        let mut topo = format!("shards = {}\nreplication = 3\n[rtt_ms]\n", s.cluster.shards);
        let regions: Vec<&str> = s.cluster.regions.iter().map(|r| r.name.as_str()).collect();
        for (i, a) in regions.iter().enumerate() {
            for b in &regions[i + 1..] {
                topo.push_str(&format!("\"{a}/{b}\" = {}\n", s.rtt_ms(a, b).max(1)));
            }
        }
        for r in &regions {
            let list = topo_nodes.get(*r).cloned().unwrap_or_default().join(", ");
            topo.push_str(&format!("[[regions]]\nname = \"{r}\"\nnodes = [{list}]\n"));
        }
        let topology = paths.run_dir.join("topology.toml");
        std::fs::write(&topology, topo).map_err(|e| e.to_string())?;
        for (i, (name, region, zone, id, netns, iface, listen, api_listen, front_node, front_api)) in
            placed.into_iter().enumerate()
        {
            let dir = paths.run_dir.join(&name);
            let data = dir.join("data");
            std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
            let mut env = Vec::new();
            if s.uses("clock_skew") {
                let file = dir.join(CLOCK_FILE);
                std::fs::write(&file, "0\n").map_err(|e| e.to_string())?;
                env.push((raft_ledger::OffsetClock::ENV.to_string(), file.display().to_string()));
            }
            if s.uses("disk_full") {
                let size = format!("size={}m", s.cluster.disk_mb);
                let out = Command::new("mount")
                    .args(["-t", "tmpfs", "-o", &size, "tmpfs"])
                    .arg(&data)
                    .output()
                    .map_err(|e| format!("cannot run mount: {e}"))?;
                if !out.status.success() {
                    return Err(format!(
                        "mount a tmpfs on {}: {}",
                        data.display(),
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
                c.mounts.push(data.clone());
            }
            if s.uses("power_cut") {
                let m = LazyMount::start(&dir, &paths.run_dir.join(format!("{name}-lazyfs.log")))?;
                c.lazy.insert(name.clone(), m);
            }
            let mut args: Vec<String> = vec![
                "start".into(),
                "--node-id".into(),
                id.to_string(),
                "--listen".into(),
                listen.to_string(),
                "--advertise".into(),
                front_node.to_string(),
                "--api-listen".into(),
                api_listen.to_string(),
                "--api-advertise".into(),
                front_api.to_string(),
                "--data-dir".into(),
                data.display().to_string(),
                "--region".into(),
                region.clone(),
                "--zone".into(),
                zone,
                "--topology".into(),
                topology.display().to_string(),
                "--cluster-key-file".into(),
                key_file.display().to_string(),
                "--operator-keys".into(),
                keys.display().to_string(),
            ];
            if i == 0 {
                args.push("--bootstrap".into());
            }
            let mut p = Proc {
                name: name.clone(),
                region,
                netns,
                iface,
                listen,
                api_listen: Some(api_listen),
                front: front_api,
                home: Some(dir),
                program: paths.walletd.clone(),
                args,
                env,
                log: paths.run_dir.join(format!("{name}.log")),
                child: None,
                paused: false,
            };
            p.spawn().map_err(|e| format!("start {name}: {e}"))?;
            c.nodes.insert(name, p);
        }
        for p in c.nodes.values() {
            if !p.wait_listening(Duration::from_secs(30)) {
                return Err(format!("{} did not start (see {})", p.name, p.log.display()));
            }
        }
        // Routers, each on a host of its own, behind a proxy route for clients.
        for (j, region) in s.cluster.routers.iter().enumerate() {
            let name = format!("r-{region}");
            let (addr, netns, iface) = host(&mut c, 100 + j)?;
            let port = if root { ROUTER_PORT } else { free_port() };
            let listen = sock(&addr, port);
            let front = c.proxy.route(&name, sock(&front_ip, 0), listen).await.map_err(|e| e.to_string())?;
            if let Ok(a) = addr.parse::<IpAddr>()
                && root
            {
                c.proxy.name_source(a, &name);
            }
            let args = vec![
                "serve".to_string(),
                "--topology".into(),
                topology.display().to_string(),
                "--listen".into(),
                listen.to_string(),
                "--region".into(),
                region.clone(),
                "--cluster-key-file".into(),
                key_file.display().to_string(),
            ];
            let mut p = Proc {
                name: name.clone(),
                region: region.clone(),
                netns,
                iface,
                listen,
                api_listen: None,
                front,
                home: None,
                program: paths.geo_router.clone(),
                args,
                env: Vec::new(),
                log: paths.run_dir.join(format!("{name}.log")),
                child: None,
                paused: false,
            };
            p.spawn().map_err(|e| format!("start {name}: {e}"))?;
            if !p.wait_listening(Duration::from_secs(15)) {
                return Err(format!("{name} did not start (see {})", p.log.display()));
            }
            c.routers.push(p);
        }
        c.emulate_network(s);
        Ok(c)
    }

    /// Every process's region by name.
    pub fn regions(&self) -> BTreeMap<String, String> {
        self.nodes.values().chain(self.routers.iter()).map(|p| (p.name.clone(), p.region.clone())).collect()
    }

    /// The inter-region latency layer: half the round trip each way on every link between two
    /// regions (root mode; on loopback the proxy cannot tell sources apart).
    pub fn emulate_network(&self, s: &Scenario) {
        self.proxy.clear_layer(NET_LAYER);
        if !self.root {
            return;
        }
        let regions = self.regions();
        for (from, rf) in &regions {
            for (to, rt) in &regions {
                let half = s.rtt_ms(rf, rt) / 2;
                if from == to || half == 0 {
                    continue;
                }
                let sel = Selector { from: Some(from.clone()), to: Some(to.clone()) };
                let f = Faults { delay_ms: half, ..Faults::default() };
                self.proxy.set(NET_LAYER, sel.clone(), Dir::Forward, f.clone());
                self.proxy.set(NET_LAYER, sel, Dir::Backward, f);
            }
        }
    }

    /// The names a group member stands for: a region's processes (nodes and routers), or one node.
    pub fn members_of(&self, name: &str) -> Vec<String> {
        let regions = self.regions();
        if regions.contains_key(name) {
            return vec![name.to_string()];
        }
        regions.into_iter().filter(|(_, r)| r == name).map(|(n, _)| n).collect()
    }

    /// Runs `iptables` with `args` inside node `name`'s namespace.
    pub fn iptables(&self, name: &str, args: &[&str]) -> Result<(), String> {
        let p = self.nodes.get(name).ok_or_else(|| format!("no node {name}"))?;
        let ns = p.netns.as_deref().ok_or("iptables needs root (a namespace per node)")?;
        let mut full = vec!["netns", "exec", ns, "iptables"];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Sets node `name`'s link up or down (root).
    pub fn link(&self, name: &str, up: bool) -> Result<(), String> {
        let p = self.nodes.get(name).ok_or_else(|| format!("no node {name}"))?;
        let (Some(ns), Some(iface)) = (p.netns.as_deref(), p.iface.as_deref()) else {
            return Err("a flapping link needs root (a namespace per node)".into());
        };
        ip(&["-n", ns, "link", "set", iface, if up { "up" } else { "down" }])
    }

    /// Runs `tc` with `args` on node `name`'s link, inside its namespace (root).
    pub fn tc(&self, name: &str, args: &[&str]) -> Result<(), String> {
        let p = self.nodes.get(name).ok_or_else(|| format!("no node {name}"))?;
        let (Some(ns), Some(iface)) = (p.netns.as_deref(), p.iface.as_deref()) else {
            return Err("a bandwidth limit needs root (a namespace per node)".into());
        };
        let mut full = vec!["netns", "exec", ns, "tc"];
        for a in args {
            full.push(if *a == "DEV" { iface } else { a });
        }
        ip(&full)
    }

    /// Removes every iptables rule and brings every link up, in every namespace.
    pub fn heal_network(&self) {
        for p in self.nodes.values() {
            if let (Some(ns), Some(iface)) = (p.netns.as_deref(), p.iface.as_deref()) {
                let _ = ip(&["netns", "exec", ns, "iptables", "-F"]);
                let _ = ip(&["netns", "exec", ns, "tc", "qdisc", "del", "dev", iface, "root"]);
                let _ = ip(&["-n", ns, "link", "set", iface, "up"]);
            }
        }
    }

    /// Node-port addresses of every node (their own, not the proxy's), for the checker.
    pub fn node_addrs(&self) -> BTreeMap<u64, String> {
        self.nodes.values().map(|p| (self.ids[&p.name], p.listen.to_string())).collect()
    }

    /// Offsets a node's clock by `ms` (0 heals); the node re-reads it within 100 ms.
    pub fn skew_clock(&self, name: &str, ms: i64) -> Result<(), String> {
        let home = self.nodes.get(name).and_then(|p| p.home.as_ref()).ok_or("no such node")?;
        std::fs::write(home.join(CLOCK_FILE), format!("{ms}\n")).map_err(|e| format!("{name}'s clock file: {e}"))
    }

    /// The file that fills a node's data directory (see [`fill`]).
    pub fn filler(&self, name: &str) -> Option<PathBuf> {
        self.nodes.get(name).and_then(|p| p.home.as_ref()).map(|h| h.join("data").join(FILLER))
    }

    /// Cuts a node's power-cut file system: what it had not fsynced is gone. Returns the bytes.
    pub fn cut_power(&mut self, name: &str) -> Result<u64, String> {
        self.lazy.get_mut(name).ok_or("this run has no power-cut file system")?.cut()
    }

    /// Frees what [`fill`] took.
    pub fn free_disk(&self, name: &str) {
        if let Some(home) = self.nodes.get(name).and_then(|p| p.home.as_ref()) {
            let _ = std::fs::remove_file(home.join("data").join(FILLER));
        }
    }

    /// The data directory of the run (logs are beside it).
    pub fn log_of<'a>(&'a self, name: &str) -> Option<&'a Path> {
        self.nodes.get(name).map(|p| p.log.as_path())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
