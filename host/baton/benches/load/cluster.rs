//! Replication benchmark: `cargo bench -p baton --bench load -- --cluster [SESSIONS SECONDS]`.
//!
//! Starts three real `baton serve` processes (release build, fsync on) on
//! loopback as one cluster, creates minotaur sessions through one node, and
//! has two WebSocket players per session, connected to the session's owner,
//! act as soon as their previous action is acknowledged. It does so once
//! with `--replication local` and once with `--replication replicated`, and
//! prints the action round trip p50/p99 of each, the journal bytes
//! replicated per action, and what replication adds per action.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use super::{Player, Server, http, run_players};

const TOKEN: &str = "bench";
const NAMES: [&str; 3] = ["node-a", "node-b", "node-c"];

fn start(root: &Path, name: &str, port: u16, seed: Option<u16>, mode: &str) -> Server {
    // Players act as fast as they are acknowledged: no per-connection cap.
    let config = root.join(format!("{mode}-{name}.toml"));
    std::fs::write(&config, "actions_per_second = 1000000\n").expect("config");
    let mut command = Command::new(env!("CARGO_BIN_EXE_baton"));
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--operator-token",
            TOKEN,
        ])
        .args(["--node-name", name, "--replication", mode])
        .arg("--config")
        .arg(&config)
        .arg("--cluster-listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--certs-dir")
        .arg(root.join("certs"))
        .arg("--data-dir")
        .arg(root.join(mode).join(name));
    if let Some(seed) = seed {
        command.arg("--seed").arg(format!("127.0.0.1:{seed}"));
    }
    Server::start(command, TOKEN.to_owned())
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("port")
        .port()
}

/// The node's Prometheus text.
fn metrics_text(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    text
}

/// A metric's value summed over its label sets.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

struct Run {
    p50: Duration,
    p99: Duration,
    per_second: f64,
    entries: f64,
    bytes: f64,
}

fn run(root: &Path, mode: &str, sessions: usize, seconds: u64) -> Run {
    let ports = [free_udp_port(), free_udp_port(), free_udp_port()];
    let nodes = [
        start(root, NAMES[0], ports[0], None, mode),
        start(root, NAMES[1], ports[1], Some(ports[0]), mode),
        start(root, NAMES[2], ports[2], Some(ports[0]), mode),
    ];
    // Sessions placed across the three; each player talks to its owner.
    let mut players = Vec::new();
    let mut created = 0;
    while created < sessions {
        let request = json!({
            "module": "minotaur",
            "players": [{"id": "a", "name": "A"}, {"id": "b", "name": "B"}],
            "options": {"radius": 4, "hit_points": 99, "max_rounds": 1000000, "round_ms": 600000,
                        "positions": [{"q": -2, "r": 0}, {"q": 2, "r": 0}]},
        });
        let answer = http(
            nodes[0].addr,
            "POST",
            "/v1/sessions",
            TOKEN,
            &request.to_string(),
        );
        let Some(id) = answer["id"].as_str().map(str::to_owned) else {
            std::thread::sleep(Duration::from_millis(100)); // the cluster is forming
            continue;
        };
        created += 1;
        let owner = loop {
            let path = format!("/v1/sessions/{id}/replica");
            let state = http(nodes[0].addr, "GET", &path, TOKEN, "");
            if let Some(owner) = state["owner"].as_str() {
                break owner.to_owned();
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let index = NAMES.iter().position(|n| *n == owner).expect("owner");
        for (player, step) in [("a", 1), ("b", -1)] {
            players.push(Player {
                addr: nodes[index].addr,
                session: id.clone(),
                token: answer["tokens"][player].as_str().expect("token").to_owned(),
                step,
            });
        }
    }
    let metrics = || -> Vec<String> { nodes.iter().map(|n| metrics_text(n.addr)).collect() };
    let before = metrics();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (mut rtts, elapsed, _) = runtime.block_on(run_players(players, seconds, None));
    let after = metrics();
    let grown = |name: &str| {
        after.iter().map(|t| metric(t, name)).sum::<f64>()
            - before.iter().map(|t| metric(t, name)).sum::<f64>()
    };
    rtts.sort_unstable();
    let pct = |q: f64| {
        rtts.get(((rtts.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    let actions = rtts.len().max(1) as f64;
    Run {
        p50: pct(0.5),
        p99: pct(0.99),
        per_second: rtts.len() as f64 / elapsed,
        entries: grown("baton_journal_entries_total") / actions,
        bytes: grown("baton_journal_bytes_total") / actions,
    }
}

/// Runs the benchmark in both modes and prints the figures.
pub(super) fn run_benchmark() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let sessions: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(50);
    let seconds: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let root = tempfile::tempdir_in(
        std::env::var_os("CARGO_TARGET_TMPDIR").unwrap_or_else(|| "/tmp".into()),
    )
    .expect("dir");
    let certs = root.path().join("certs");
    std::fs::create_dir_all(&certs).expect("certs dir");
    let baton = |args: &[&str]| {
        let ok = Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(args)
            .arg("--dir")
            .arg(&certs)
            .stdout(Stdio::null())
            .status()
            .expect("baton certs")
            .success();
        assert!(ok, "baton {args:?}");
    };
    baton(&["certs", "ca"]);
    for name in NAMES {
        baton(&["certs", "node", name]);
    }
    println!(
        "replication benchmark: 3 nodes on loopback, {sessions} minotaur sessions, 2 players each acting on acknowledgement, {seconds} s per mode"
    );
    let mut runs = Vec::new();
    for mode in ["local", "replicated"] {
        let r = run(root.path(), mode, sessions, seconds);
        println!(
            "  {mode:<10} round trip p50 {:>6.2} ms  p99 {:>6.2} ms  {:>7.0} acked actions/s  journal {:.2} entries, {:.0} bytes per action",
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            r.per_second,
            r.entries,
            r.bytes,
        );
        runs.push(r);
    }
    let (local, replicated) = (&runs[0], &runs[1]);
    println!(
        "  replication adds {:.2} ms at p50 and {:.2} ms at p99 per action; it ships those journal bytes (plus framing), whatever the session's size",
        (replicated.p50.as_secs_f64() - local.p50.as_secs_f64()) * 1e3,
        (replicated.p99.as_secs_f64() - local.p99.as_secs_f64()) * 1e3,
    );
}
