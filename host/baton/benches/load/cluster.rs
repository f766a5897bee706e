//! Replication benchmark: `cargo bench -p baton --bench load -- --cluster [SESSIONS SECONDS]`.
//!
//! Starts three real `baton serve` processes (release build, fsync on) on
//! loopback as one cluster, creates sessions through one node, and has
//! WebSocket players, connected to each session's owner, act as soon as
//! their previous action is acknowledged. Two workloads, each once with
//! `--replication local` and once with `--replication replicated`:
//!
//! - minotaur: SESSIONS sessions, two players each;
//! - a ~2 MiB session: the misbehave fixture holding 2 MiB of random
//!   (incompressible) state, one player adding to its counter.
//!
//! For each it prints the action round trip p50/p99, and what replication
//! ships per action: journal entries and bytes (what an acknowledgement
//! waits for) and snapshot bytes (checkpoints shipped to the replica in the
//! background, as deltas or whole), with the mean time to ship one.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use super::{Moves, Player, Server, http, run_players};

const TOKEN: &str = "bench";
const NAMES: [&str; 3] = ["node-a", "node-b", "node-c"];
/// How many ~2 MiB sessions the big-state workload runs.
const BIG_SESSIONS: usize = 4;

/// What both cluster benchmarks measure, with labels: `sessions` minotaur
/// sessions, and a few ~2 MiB ones.
pub(super) fn workloads(sessions: usize) -> [(Workload, usize, String); 2] {
    [
        (
            Workload::Minotaur,
            sessions,
            format!("minotaur, {sessions} sessions of 2 players"),
        ),
        (
            Workload::Ballast(2 << 20),
            BIG_SESSIONS,
            format!(
                "~2 MiB sessions (misbehave, 2 MiB of random state), {BIG_SESSIONS} of 1 player"
            ),
        ),
    ]
}

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

/// A cluster CA and a certificate for each of `names`, in `dir`.
pub(super) fn make_certs(dir: &Path, names: &[&str]) {
    std::fs::create_dir_all(dir).expect("certs dir");
    let baton = |args: &[&str]| {
        let ok = Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(args)
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .status()
            .expect("baton certs")
            .success();
        assert!(ok, "baton {args:?}");
    };
    baton(&["certs", "ca"]);
    for name in names {
        baton(&["certs", "node", *name]);
    }
}

pub(super) fn free_udp_port() -> u16 {
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

/// A metric's value summed over its label sets that contain `label`.
fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

struct Run {
    p50: Duration,
    p99: Duration,
    per_second: f64,
    entries: f64,
    bytes: f64,
    /// Snapshot deltas shipped: bytes per action, count, mean time each.
    deltas: Shipped,
    /// Whole snapshots shipped (to a new replica).
    whole: Shipped,
}

#[derive(Default)]
struct Shipped {
    bytes_per_action: f64,
    count: f64,
    mean_bytes: f64,
    mean_seconds: f64,
}

/// What the sessions run.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Workload {
    Minotaur,
    /// The misbehave fixture holding this many bytes of state.
    Ballast(usize),
}

impl Workload {
    pub(super) fn create_request(self) -> serde_json::Value {
        match self {
            Workload::Minotaur => json!({
                "module": "minotaur",
                "players": [{"id": "a", "name": "A"}, {"id": "b", "name": "B"}],
                "options": {"radius": 4, "hit_points": 99, "max_rounds": 1000000, "round_ms": 600000,
                            "positions": [{"q": -2, "r": 0}, {"q": 2, "r": 0}]},
            }),
            Workload::Ballast(_) => json!({
                "module": "misbehave",
                "players": [{"id": "a", "name": "A"}],
            }),
        }
    }

    pub(super) fn players(self) -> &'static [(&'static str, Moves)] {
        match self {
            Workload::Minotaur => &[
                ("a", Moves::Walk { step: 1 }),
                ("b", Moves::Walk { step: -1 }),
            ],
            Workload::Ballast(_) => &[("a", Moves::Count)],
        }
    }
}

/// Publishes a rule component through the management API.
pub(super) fn publish(addr: SocketAddr, component: &[u8]) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "POST /v1/modules HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        component.len()
    )
    .expect("write");
    stream.write_all(component).expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    assert!(
        response.starts_with("HTTP/1.1 20"),
        "publishing failed: {response}"
    );
}

fn run(root: &Path, mode: &str, workload: Workload, sessions: usize, seconds: u64) -> Run {
    let ports = [free_udp_port(), free_udp_port(), free_udp_port()];
    let nodes = [
        start(root, NAMES[0], ports[0], None, mode),
        start(root, NAMES[1], ports[1], Some(ports[0]), mode),
        start(root, NAMES[2], ports[2], Some(ports[0]), mode),
    ];
    if let Workload::Ballast(_) = workload {
        publish(nodes[0].addr, baton_games::MISBEHAVE.bytes);
    }
    // Sessions placed across the three; each player talks to its owner.
    let mut players = Vec::new();
    let mut created = 0;
    while created < sessions {
        let request = workload.create_request();
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
        for (player, moves) in workload.players() {
            let token = answer["tokens"][player].as_str().expect("token").to_owned();
            if let Workload::Ballast(bytes) = workload {
                let body = json!({"id": "ballast", "action": {"ballast": bytes}}).to_string();
                let path = format!("/v1/sessions/{id}/actions");
                let done = http(nodes[index].addr, "POST", &path, &token, &body);
                assert_eq!(done["result"], "accepted", "ballast: {done}");
            }
            players.push(Player {
                addr: nodes[index].addr,
                session: id.clone(),
                token,
                moves: *moves,
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
    let grown_where = |name: &str, label: &str| {
        after.iter().map(|t| metric(t, name, label)).sum::<f64>()
            - before.iter().map(|t| metric(t, name, label)).sum::<f64>()
    };
    let grown = |name: &str| grown_where(name, "");
    rtts.sort_unstable();
    let pct = |q: f64| {
        rtts.get(((rtts.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    let actions = rtts.len().max(1) as f64;
    let shipped = |kind: &str| {
        let label = format!("kind=\"{kind}\"");
        let count = grown_where("baton_replica_snapshots_total", &label);
        let bytes = grown_where("baton_replica_snapshot_bytes_total", &label);
        Shipped {
            bytes_per_action: bytes / actions,
            count,
            mean_bytes: bytes / count.max(1.0),
            mean_seconds: grown_where("baton_replica_snapshot_seconds_sum", &label)
                / count.max(1.0),
        }
    };
    Run {
        p50: pct(0.5),
        p99: pct(0.99),
        per_second: rtts.len() as f64 / elapsed,
        entries: grown("baton_journal_entries_total") / actions,
        bytes: grown("baton_journal_bytes_total") / actions,
        deltas: shipped("delta"),
        whole: shipped("full"),
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
    make_certs(&root.path().join("certs"), &NAMES);
    println!(
        "replication benchmark: 3 nodes on loopback, players acting on acknowledgement, {seconds} s per run"
    );
    for (workload, sessions, label) in workloads(sessions) {
        println!("  {label}");
        let mut runs = Vec::new();
        for mode in ["local", "replicated"] {
            let r = run(root.path(), mode, workload, sessions, seconds);
            println!(
                "    {mode:<10} round trip p50 {:>6.2} ms  p99 {:>6.2} ms  {:>6.0} acked actions/s",
                r.p50.as_secs_f64() * 1e3,
                r.p99.as_secs_f64() * 1e3,
                r.per_second,
            );
            println!(
                "               per action: journal {:.2} entries, {:.0} bytes (acknowledged); snapshot deltas {:.0} bytes (background)",
                r.entries, r.bytes, r.deltas.bytes_per_action,
            );
            println!(
                "               shipped: {:.0} deltas, {:.1} KiB and {:.2} ms each; {:.0} whole, {:.0} KiB and {:.2} ms each",
                r.deltas.count,
                r.deltas.mean_bytes / 1024.0,
                r.deltas.mean_seconds * 1e3,
                r.whole.count,
                r.whole.mean_bytes / 1024.0,
                r.whole.mean_seconds * 1e3,
            );
            runs.push(r);
        }
        let (local, replicated) = (&runs[0], &runs[1]);
        println!(
            "    replicated mode adds {:.2} ms at p50 and {:.2} ms at p99 per action",
            (replicated.p50.as_secs_f64() - local.p50.as_secs_f64()) * 1e3,
            (replicated.p99.as_secs_f64() - local.p99.as_secs_f64()) * 1e3,
        );
    }
}
