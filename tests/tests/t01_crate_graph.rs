//! The crate graph ARCHITECTURE.md describes, enforced: which workspace crate may depend on
//! which, the pure core free of IO crates, the service library free of the node process's
//! tools, and no planted-bug code in the `walletd` a workspace release build produces.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace root").to_path_buf()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run cargo");
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Every package `krate` depends on at run time (normal edges, transitively), by name.
fn runtime_closure(krate: &str) -> BTreeSet<String> {
    let tree =
        run(cargo().args(["tree", "--offline", "-p", krate, "-e", "normal", "--prefix", "none", "--format", "{p}"]));
    tree.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
}

/// The workspace crates each workspace crate depends on (normal dependencies only).
fn workspace_edges() -> BTreeMap<String, BTreeSet<String>> {
    let json = run(cargo().args(["metadata", "--offline", "--no-deps", "--format-version", "1"]));
    let meta: serde_json::Value = serde_json::from_str(&json).expect("cargo metadata is JSON");
    let packages = meta["packages"].as_array().expect("packages");
    let members: BTreeSet<String> = packages.iter().map(|p| p["name"].as_str().expect("name").to_string()).collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .filter(|d| d["kind"].is_null())
                .filter_map(|d| d["name"].as_str())
                .filter(|d| members.contains(*d))
                .map(str::to_string)
                .collect();
            (p["name"].as_str().expect("name").to_string(), deps)
        })
        .collect()
}

/// The dependency rules of ARCHITECTURE.md: the workspace crates each crate may use.
const ALLOWED: &[(&str, &[&str])] = &[
    ("ledger-core", &[]),
    ("session-store", &[]),
    ("rng-beacon", &[]),
    ("raft-ledger", &["ledger-core"]),
    ("wallet-api", &["ledger-core", "raft-ledger", "session-store"]),
    ("walletd", &["ledger-core", "raft-ledger", "wallet-api", "session-store", "geo-router"]),
    ("sim", &["ledger-core", "raft-ledger"]),
    ("geo-router", &["ledger-core"]),
    ("chaos", &["ledger-core", "raft-ledger", "wallet-api"]),
    ("e2e-tests", &["ledger-core", "raft-ledger", "wallet-api", "session-store", "walletd", "rng-beacon", "sim"]),
];

#[test]
fn t01_workspace_crates_depend_only_as_the_architecture_allows() {
    let edges = workspace_edges();
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    for (krate, deps) in &edges {
        let Some(ok) = allowed.get(krate.as_str()) else {
            panic!("crate {krate} has no dependency rule: add it to ARCHITECTURE.md and to ALLOWED here");
        };
        for dep in deps {
            assert!(ok.contains(&dep.as_str()), "{krate} depends on {dep}, which ARCHITECTURE.md does not allow");
        }
    }
    assert!(edges.contains_key("ledger-core") && edges.contains_key("walletd"), "the metadata lists the workspace");
}

#[test]
fn t02_the_core_does_no_io() {
    let deps = runtime_closure("ledger-core");
    assert!(deps.contains("sha2") && deps.contains("serde"), "the closure is read: {deps:?}");
    let io = ["tokio", "openraft", "tonic", "prost", "hyper", "mio", "socket2", "tempfile", "sqlx", "redis", "fs2"];
    for forbidden in io {
        assert!(!deps.contains(forbidden), "ledger-core depends on {forbidden} (through {deps:?})");
    }
}

#[test]
fn t03_the_service_library_carries_no_process_tools() {
    let deps = runtime_closure("wallet-api");
    assert!(deps.contains("tonic"), "the closure is read: {deps:?}");
    for forbidden in ["indicatif", "hdrhistogram"] {
        assert!(!deps.contains(forbidden), "wallet-api depends on {forbidden}; it belongs to walletd");
    }
    // tempfile reaches the library through the state store's engine (fjall rewrites its own
    // manifest files atomically with it), which is its business; none of our crates on the
    // library's path may use it at run time.
    let direct = direct_dependencies("wallet-api");
    assert!(direct.contains("raft-ledger"), "the direct dependencies are read: {direct:?}");
    for krate in ["wallet-api", "raft-ledger", "ledger-core", "session-store"] {
        assert!(
            !direct_dependencies(krate).contains("tempfile"),
            "{krate} uses tempfile at run time; it belongs to tests and walletd"
        );
    }
}

/// What `krate` names itself as a normal dependency, by name.
fn direct_dependencies(krate: &str) -> BTreeSet<String> {
    let tree = run(cargo().args([
        "tree",
        "--offline",
        "-p",
        krate,
        "-e",
        "normal",
        "--depth",
        "1",
        "--prefix",
        "none",
        "--format",
        "{p}",
    ]));
    tree.lines().skip(1).filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
}

/// The names planted bugs go by, in code and on the command line.
const PLANTED: &[&str] =
    &["ack-before-fsync", "skip-idempotency", "AckBeforeFsync", "SkipIdempotency", "NoFsync", "ForgetIds", "planted"];

fn contains(haystack: &[u8], needle: &str) -> bool {
    memchr::memmem::find(haystack, needle.as_bytes()).is_some()
}

#[test]
fn t04_the_shipped_walletd_has_no_planted_bug() {
    // The same release build `walletd demo` and the test command use: the whole workspace,
    // simulator included, so a planted bug that leaked through feature unification or a shared
    // module would be in it.
    let walletd = std::fs::read(e2e_tests::walletd_bin()).expect("read walletd");
    for name in PLANTED {
        assert!(!contains(&walletd, name), "the release walletd contains {name:?}: a planted bug reaches production");
    }
    // The check can see a planted bug where there is one: the simulator's binary has them.
    let sim = std::fs::read(e2e_tests::walletd_bin().with_file_name("sim")).expect("read sim");
    assert!(contains(&sim, "ack-before-fsync") && contains(&sim, "ForgetIds"), "the scan finds planted bugs in sim");
    // And no crate offers them as a cargo feature.
    let json = run(cargo().args(["metadata", "--offline", "--no-deps", "--format-version", "1"]));
    assert!(!json.contains("planted"), "a workspace crate declares a planted-bug feature");
}
