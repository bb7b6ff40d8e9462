//! The player and auditor CLI, run as a real process.

use std::process::Command;

fn beacon(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rng-beacon")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

fn outcome(nonce: &str, game: &str, mode: &str) -> serde_json::Value {
    let (code, out, err) = beacon(&[
        "outcome",
        "--server-seed",
        "server seed",
        "--client-seed",
        "client seed",
        "--nonce",
        nonce,
        "--game",
        game,
        "--mode",
        mode,
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "one JSON object on one line");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn outcome_prints_the_vector_results_as_json() {
    let v: serde_json::Value = serde_json::from_str(include_str!("vectors/provably-fair-stake.json")).unwrap();
    for c in v["cases"].as_array().unwrap() {
        let nonce = c["nonce"].to_string();
        assert_eq!(outcome(&nonce, "dice", "stake")["outcome"], c["dice"]);
        assert_eq!(outcome(&nonce, "roulette", "stake")["outcome"], c["roulette"]);
        assert_eq!(outcome(&nonce, "keno", "stake")["outcome"], c["keno"]);
        assert_eq!(outcome(&nonce, "float", "stake")["outcome"], c["floats"][0]);
    }
    let o = outcome("0", "dice", "stake");
    assert_eq!(o["server_seed_hash"], "a4e53dc2f480b8fce6fe688b1317658b446299df23ad533394406427c8c19557");
    // Unbiased mode prints the same shapes.
    assert!(outcome("3", "dice", "unbiased")["outcome"].is_number());
    assert!(outcome("3", "keno", "unbiased")["outcome"].as_array().unwrap().len() == 10);
}

#[test]
fn bad_input_gets_a_clear_error_and_exit_code_2() {
    let base = |seed: &str, client: &str, nonce: &str, game: &str| {
        beacon(&["outcome", "--server-seed", seed, "--client-seed", client, "--nonce", nonce, "--game", game])
    };
    let cases = [
        (base("s", "", "0", "dice"), "client seed is empty"),
        (base("s", &"c".repeat(300), "0", "dice"), "client seed is 300 bytes"),
        (base("s", "c", "18446744073709551616", "dice"), "nonce overflow"),
        (base("s", "c", "-1", "dice"), "not a non-negative integer"),
        (base("s", "c", "0", "craps"), "unknown game"),
        (base("", "c", "0", "dice"), "server seed is empty"),
        (base("bad\u{1}seed", "c", "0", "dice"), "server seed contains a control character"),
        (base("s", "c", "0", "mines:30"), "mines"),
    ];
    for ((code, out, err), want) in cases {
        assert_eq!(code, 2, "{want}: {out}{err}");
        assert!(err.contains(want), "expected {want:?} in {err:?}");
        assert!(out.is_empty());
    }
}

#[test]
fn verify_reports_a_tampered_byte_and_exports_raw_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    {
        let (w, _) = rng_beacon::log::LogWriter::open(&path, 0).unwrap();
        w.submit(vec![rng_beacon::log::Event::Open { version: 1 }], 1).wait().unwrap();
    }
    let p = path.to_str().unwrap();
    let (code, out, _) = beacon(&["verify", p]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ok: "), "{out}");
    let mut bytes = std::fs::read(&path).unwrap();
    let second_line = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
    bytes[second_line + 80] ^= 0x04;
    std::fs::write(&path, &bytes).unwrap();
    let (code, out, _) = beacon(&["verify", p]);
    assert_eq!(code, 1);
    assert!(out.contains(&format!("line 2 (byte offset {second_line})")), "{out}");

    let (code, out, _) = {
        let o = Command::new(env!("CARGO_BIN_EXE_rng-beacon"))
            .args(["export", "--bytes", "4096", "--seed", &"ab".repeat(32)])
            .output()
            .unwrap();
        (o.status.code().unwrap(), o.stdout, o.stderr)
    };
    assert_eq!((code, out.len()), (0, 4096));
    let again = Command::new(env!("CARGO_BIN_EXE_rng-beacon"))
        .args(["export", "--bytes", "4096", "--seed", &"ab".repeat(32)])
        .output()
        .unwrap();
    assert_eq!(again.stdout, out, "a given seed exports the same bytes");
}

#[test]
fn serve_reseeds_on_sighup_and_stops_on_sigint_with_a_sound_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("beacon.log");
    let mut child = serve(&log);
    let signal = |sig: &str| {
        assert!(Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success());
    };
    let demand = || std::fs::read_to_string(&log).unwrap().contains("\"reason\":\"demand\"");
    signal("-HUP");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !demand() {
        assert!(std::time::Instant::now() < deadline, "no on-demand reseed in the log");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    signal("-INT");
    assert!(child.wait().unwrap().success());
    let (code, out, _) = beacon(&["verify", log.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
}

/// A `serve` process on a log; returns it once it prints its address.
fn serve(log: &std::path::Path) -> std::process::Child {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_rng-beacon"))
        .args(["serve", "--listen", "127.0.0.1:0", "--round-period", "10ms", "--rounds-per-epoch", "7"])
        .args(["--log", log.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(
        first.contains("serving casino.rng.v1.Beacon on 127.0.0.1:"),
        "the beacon refused to start on its own log: {first:?}"
    );
    child
}

fn epoch_commits(log: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(&l[65..]).unwrap())
        .filter(|r| r["kind"] == "epoch_commit")
        .collect()
}

#[test]
fn sigterm_is_a_clean_stop_and_a_restart_after_a_crash_continues_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("beacon.log");
    let verify = || {
        let (code, out, _) = beacon(&["verify", log.to_str().unwrap()]);
        assert_eq!(code, 0, "the log must verify: {out}");
        serde_json::from_str::<serde_json::Value>(out.trim_start_matches("ok: ")).unwrap()
    };
    let stop = |child: &mut std::process::Child, sig: &str| {
        assert!(Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success());
        child.wait().unwrap()
    };
    let pause = || std::thread::sleep(std::time::Duration::from_millis(200));

    // SIGTERM, as systemd and Kubernetes stop a service: a clean stop that reveals the key.
    let mut first = serve(&log);
    pause();
    assert!(stop(&mut first, "-TERM").success(), "SIGTERM must exit cleanly");
    let report = verify();
    let revealed = report["epochs_revealed"].as_u64().unwrap();
    assert!(revealed >= 1, "a clean stop reveals the current epoch key: {report}");

    // The restart continues the chain; then a crash (SIGKILL) loses the current key.
    let mut second = serve(&log);
    pause();
    stop(&mut second, "-KILL");
    verify();

    // Restarting after the crash must start, and the log must still verify (no epoch committed
    // twice, no round number reused).
    let mut third = serve(&log);
    pause();
    assert!(stop(&mut third, "-TERM").success());
    let report = verify();
    assert!(report["epochs_revealed"].as_u64().unwrap() > revealed, "{report}");
    let commits = epoch_commits(&log);
    for pair in commits.windows(2) {
        assert_eq!(pair[1]["epoch"].as_u64().unwrap(), pair[0]["epoch"].as_u64().unwrap() + 1, "epochs go up by one");
        assert!(pair[1]["first_round"].as_u64() > pair[0]["first_round"].as_u64(), "round numbers never repeat");
    }
}
