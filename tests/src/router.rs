//! A multi-region cluster of real `walletd` processes with `geo-router` processes in front,
//! for the router's end-to-end tests and its failover and throughput benchmarks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raft_ledger::api::ShardStatus;
use wallet_api::api::client::Credentials;

use crate::{Walletd, cluster_key_file, free_port, geo_router_bin, walletd_command};

/// A running `geo-router serve`.
pub struct GeoRouter {
    child: Child,
    /// Its address.
    pub addr: String,
    /// Its region.
    pub region: String,
}

impl Drop for GeoRouter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl GeoRouter {
    /// Starts a router for the cluster in `topology`, in `region`, and waits until it listens.
    pub fn start(topology: &Path, region: &str) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(geo_router_bin())
            .args(["serve", "--topology", &topology.display().to_string(), "--listen", &addr, "--region", region])
            .args(["--cluster-key-file", &cluster_key_file().display().to_string()])
            .env("RUST_LOG", std::env::var("ROUTER_LOG").unwrap_or_else(|_| "geo_router=warn".into()))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start geo-router");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "geo-router did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, addr, region: region.into() }
    }

    /// The process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `geo-router status` as JSON.
    pub fn status(&self) -> serde_json::Value {
        let out = Command::new(geo_router_bin())
            .args(["status", "--router", &self.addr, "--cluster-key-file", &cluster_key_file().display().to_string()])
            .output()
            .expect("geo-router status");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("status is JSON")
    }

    /// The leader the router routes `shard` to.
    pub fn leader(&self, shard: u32) -> Option<u64> {
        self.status()["shards"].as_array()?.iter().find(|s| s["shard"] == shard)?["leader"].as_u64()
    }

    /// Whether the router has `node` in rotation.
    pub fn in_rotation(&self, node: u64) -> Option<bool> {
        self.status()["nodes"].as_array()?.iter().find(|n| n["node"] == node)?["in_rotation"].as_bool()
    }
}

/// Nodes by region, each `(id, zone)`.
pub type Layout = &'static [(&'static str, &'static [(u64, &'static str)])];

/// A cluster of `walletd` processes from a topology, with an operator key of every role.
pub struct RouterCluster {
    /// The nodes, by id.
    pub nodes: BTreeMap<u64, Walletd>,
    /// Node ports, by id.
    pub raft: BTreeMap<u64, String>,
    /// Wallet API addresses, by id.
    pub api: BTreeMap<u64, String>,
    /// Each node's region.
    pub region: BTreeMap<u64, String>,
    /// The topology file.
    pub topology: PathBuf,
    /// An operator with the game, cashier and audit roles.
    pub ops: Credentials,
    /// Shards.
    pub shards: u32,
    _dir: tempfile::TempDir,
}

impl RouterCluster {
    /// Starts the nodes of `layout` with `shards` shards and every inter-region RTT set to
    /// `rtt_ms` (which sets Raft's timing; the network itself is loopback).
    pub fn start(layout: Layout, shards: u32, rtt_ms: u64) -> Self {
        Self::start_on(layout, shards, rtt_ms, &BTreeMap::new())
    }

    /// Like [`RouterCluster::start`], with some nodes placed: node id → (the IP it listens on,
    /// the network namespace it runs in). Unplaced nodes listen on `127.0.0.1`.
    pub fn start_on(
        layout: Layout,
        shards: u32,
        rtt_ms: u64,
        placed: &BTreeMap<u64, (String, Option<String>)>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<(u64, &str, &str)> =
            layout.iter().flat_map(|(r, ns)| ns.iter().map(move |(id, z)| (*id, *r, *z))).collect();
        let ip = |id: &u64| placed.get(id).map_or("127.0.0.1", |(ip, _)| ip.as_str()).to_string();
        let raft: BTreeMap<u64, String> =
            ids.iter().map(|(id, _, _)| (*id, format!("{}:{}", ip(id), free_port()))).collect();
        let api: BTreeMap<u64, String> =
            ids.iter().map(|(id, _, _)| (*id, format!("{}:{}", ip(id), free_port()))).collect();
        let mut toml = format!("shards = {shards}\nreplication = 3\n[rtt_ms]\n");
        for (i, (a, _)) in layout.iter().enumerate() {
            for (b, _) in &layout[i + 1..] {
                toml.push_str(&format!("\"{a}/{b}\" = {rtt_ms}\n"));
            }
        }
        for (region, nodes) in layout {
            let nodes: Vec<String> = nodes
                .iter()
                .map(|(id, zone)| {
                    format!("{{ id = {id}, addr = \"{}\", zone = \"{zone}\", api = \"{}\" }}", raft[id], api[id])
                })
                .collect();
            toml.push_str(&format!("[[regions]]\nname = \"{region}\"\nnodes = [{}]\n", nodes.join(", ")));
        }
        let topology = dir.path().join("topology.toml");
        std::fs::write(&topology, toml).unwrap();
        let secret = hex::encode([9u8; 32]);
        let keys = dir.path().join("operators.toml");
        std::fs::write(
            &keys,
            format!("[[operator]]\nid = \"ops\"\nsecret = \"{secret}\"\nroles = [\"game\", \"cashier\", \"audit\"]\n"),
        )
        .unwrap();
        let ops = Credentials::Operator { key_id: "ops".into(), secret: hex::decode(&secret).unwrap() };
        let mut nodes = BTreeMap::new();
        let first = ids[0].0;
        for (id, _, _) in &ids {
            let extra = vec![
                "--topology".to_string(),
                topology.display().to_string(),
                "--api-listen".into(),
                api[id].clone(),
                "--operator-keys".into(),
                keys.display().to_string(),
            ];
            let d = dir.path().join(format!("n{id}"));
            let netns = placed.get(id).and_then(|(_, ns)| ns.as_deref());
            nodes.insert(*id, Walletd::start_in(netns, *id, &raft[id], &d, shards, &[], *id == first, &extra));
        }
        let region = ids.iter().map(|(id, r, _)| (*id, r.to_string())).collect();
        Self { nodes, raft, api, region, topology, ops, shards, _dir: dir }
    }

    /// Each shard as its leader reports it (`walletd admin members`), over the running nodes.
    pub fn members(&self) -> BTreeMap<u32, ShardStatus> {
        let nodes: Vec<&str> =
            self.raft.iter().filter(|(id, _)| self.nodes[*id].is_running()).map(|(_, a)| a.as_str()).collect();
        let out = walletd_command()
            .args(["admin", "--nodes", &nodes.join(","), "--json", "members"])
            .output()
            .expect("run walletd admin");
        if !out.status.success() {
            return BTreeMap::new();
        }
        let shards: Vec<ShardStatus> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        shards.into_iter().map(|s| (s.shard, s)).collect()
    }

    /// Waits until every shard is led from its home region and every router routes to its
    /// leader; returns the leaders.
    pub fn wait_home(&self, routers: &[&GeoRouter], within: Duration) -> BTreeMap<u32, u64> {
        let deadline = Instant::now() + within;
        loop {
            let m = self.members();
            if m.len() == self.shards as usize
                && m.values().all(|s| s.leader.is_some() && s.leader_region == s.home_region)
            {
                let leaders: BTreeMap<u32, u64> = m.iter().filter_map(|(s, st)| st.leader.map(|l| (*s, l))).collect();
                if routers.iter().all(|r| leaders.iter().all(|(s, l)| r.leader(*s) == Some(*l))) {
                    return leaders;
                }
            }
            assert!(Instant::now() < deadline, "the cluster did not settle with every shard led from home");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every shard has a leader and every router routes to it; returns the leaders.
    pub fn wait_settled(&self, routers: &[&GeoRouter], within: Duration) -> BTreeMap<u32, u64> {
        let deadline = Instant::now() + within;
        loop {
            let leaders: BTreeMap<u32, u64> =
                self.members().iter().filter_map(|(s, st)| st.leader.map(|l| (*s, l))).collect();
            if leaders.len() == self.shards as usize
                && routers.iter().all(|r| leaders.iter().all(|(s, l)| r.leader(*s) == Some(*l)))
            {
                return leaders;
            }
            assert!(Instant::now() < deadline, "routes did not settle: cluster leaders {leaders:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A host of its own: a network namespace joined to this one by a veth pair, so a node in it
/// can be cut off (a blackhole: packets vanish, nothing is refused), have its connections
/// reset, and its link flap. Needs root and iptables; [`Netns::create`] says why when it cannot.
pub struct Netns {
    /// The namespace's name.
    pub name: String,
    /// This side's address on the link (nodes here listen on it, so the namespace reaches them).
    pub host_ip: String,
    /// The namespace's address.
    pub ns_ip: String,
    host_if: String,
    ns_if: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Netns {
    /// Creates the namespace and its link (names and a 10.231.x.y/30 subnet from `tag`).
    pub fn create(tag: u16) -> Result<Self, String> {
        let n = Netns {
            name: format!("wl-{tag}"),
            host_ip: format!("10.231.{}.{}", tag / 64 % 256, (tag % 64) * 4 + 1),
            ns_ip: format!("10.231.{}.{}", tag / 64 % 256, (tag % 64) * 4 + 2),
            host_if: format!("wlh{tag}"),
            ns_if: format!("wln{tag}"),
        };
        let _ = ip(&["netns", "del", &n.name]);
        let _ = ip(&["link", "del", &n.host_if]);
        ip(&["netns", "add", &n.name])?;
        ip(&["link", "add", &n.host_if, "type", "veth", "peer", "name", &n.ns_if])?;
        ip(&["link", "set", &n.ns_if, "netns", &n.name])?;
        ip(&["addr", "add", &format!("{}/30", n.host_ip), "dev", &n.host_if])?;
        ip(&["link", "set", &n.host_if, "up"])?;
        ip(&["netns", "exec", &n.name, "ip", "addr", "add", &format!("{}/30", n.ns_ip), "dev", &n.ns_if])?;
        ip(&["netns", "exec", &n.name, "ip", "link", "set", &n.ns_if, "up"])?;
        ip(&["netns", "exec", &n.name, "ip", "link", "set", "lo", "up"])?;
        // Faults are iptables rules inside the namespace: check it works before any node starts.
        ip(&["netns", "exec", &n.name, "iptables", "-L", "-n"])
            .map_err(|e| format!("iptables does not work in a namespace here: {e}"))?;
        Ok(n)
    }

    /// A blackhole, made with iptables inside the namespace: every packet in or out on its
    /// link is dropped, so packets vanish and connections hang, as behind a dead switch; the
    /// link itself stays up and nothing is refused.
    pub fn cut(&self) {
        self.iptables("-I", &["-j", "DROP"]).expect("blackhole the namespace");
    }

    /// Removes the blackhole.
    pub fn heal(&self) {
        self.iptables("-D", &["-j", "DROP"]).expect("lift the blackhole");
    }

    /// TCP resets from both ends: the namespace answers every TCP packet with a RST for
    /// `window` (iptables `REJECT --reject-with tcp-reset`), and every socket on this side to
    /// the namespace is aborted (`ss -K`), so established connections die at once and new ones
    /// are refused until the window ends.
    pub fn reset_connections(&self, window: Duration) {
        let rst = ["-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"];
        self.iptables("-I", &rst).expect("reset rule");
        let _ = Command::new("ss").args(["-K", "dst", &self.ns_ip]).output();
        std::thread::sleep(window);
        self.iptables("-D", &rst).expect("remove the reset rule");
    }

    /// Takes the link down (no carrier) or up, from inside the namespace: what a flapping
    /// cable or port does.
    pub fn link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["netns", "exec", &self.name, "ip", "link", "set", &self.ns_if, state]).expect("set the link");
    }

    /// Adds (`-I`) or deletes (`-D`) the rule `spec` on both directions of the namespace's link.
    fn iptables(&self, op: &str, spec: &[&str]) -> Result<(), String> {
        for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
            let mut args = vec!["netns", "exec", &self.name, "iptables", op, chain, dir, &self.ns_if];
            args.extend_from_slice(spec);
            ip(&args)?;
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}
