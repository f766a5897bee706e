//! Replication benchmark: `cargo bench -p baton --bench cluster [-- SESSIONS SECONDS]`.
//!
//! Starts three real `baton serve` processes (release build, fsync on) on
//! loopback as one cluster, creates minotaur sessions through one node, and
//! has one WebSocket player per session, connected to the session's owner,
//! act as soon as its previous action is acknowledged. It does so once with
//! `--replication local` and once with `--replication replicated`, and
//! prints the action round trip p50/p99 of each, the journal bytes
//! replicated per action, and what replication adds per action.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "bench";

fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}

fn json_of(addr: SocketAddr, path: &str) -> Value {
    serde_json::from_str(&http(addr, "GET", path, "").1).unwrap_or(Value::Null)
}

struct Node {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(root: &Path, name: &str, port: u16, seed: Option<u16>, mode: &str) -> Node {
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
        .arg("--cluster-listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--certs-dir")
        .arg(root.join("certs"))
        .arg("--data-dir")
        .arg(root.join(mode).join(name));
    if let Some(seed) = seed {
        command.arg("--seed").arg(format!("127.0.0.1:{seed}"));
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("baton serve");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr = loop {
        let line = lines.next().expect("ready line").expect("utf-8");
        if let Some(rest) = line.strip_prefix("baton node ready: players http://") {
            break rest
                .split_whitespace()
                .next()
                .expect("addr")
                .parse()
                .expect("addr");
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Node { child, addr }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("port")
        .port()
}

/// A metric's value summed over its label sets.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

struct Run {
    p50: Duration,
    p99: Duration,
    actions: usize,
    entries: f64,
    bytes: f64,
}

fn run(root: &Path, mode: &str, sessions: usize, seconds: u64) -> Run {
    let ports = [free_udp_port(), free_udp_port(), free_udp_port()];
    let nodes = [
        start(root, "node-a", ports[0], None, mode),
        start(root, "node-b", ports[1], Some(ports[0]), mode),
        start(root, "node-c", ports[2], Some(ports[0]), mode),
    ];
    // Sessions placed across the three; each player talks to its owner.
    let mut players = Vec::new();
    while players.len() < sessions {
        let request = json!({
            "module": "minotaur",
            "players": [{"id": "a", "name": "A"}, {"id": "b", "name": "B"}],
            "options": {"radius": 4, "hit_points": 99, "max_rounds": 1000000, "round_ms": 600000,
                        "positions": [{"q": -2, "r": 0}, {"q": 2, "r": 0}]},
        });
        let (status, body) = http(nodes[0].addr, "POST", "/v1/sessions", &request.to_string());
        if status != 201 {
            std::thread::sleep(Duration::from_millis(100)); // the cluster is forming
            continue;
        }
        let created: Value = serde_json::from_str(&body).expect("json");
        let id = created["id"].as_str().expect("id").to_owned();
        let owner = loop {
            let state = json_of(nodes[0].addr, &format!("/v1/sessions/{id}/replica"));
            if let Some(owner) = state["owner"].as_str() {
                break owner.to_owned();
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let index = ["node-a", "node-b", "node-c"]
            .iter()
            .position(|n| *n == owner)
            .expect("owner");
        for (player, step) in [("a", 1), ("b", -1)] {
            let token = created["tokens"][player]
                .as_str()
                .expect("token")
                .to_owned();
            players.push((nodes[index].addr, id.clone(), token, step));
        }
    }
    let before: Vec<String> = nodes
        .iter()
        .map(|n| http(n.addr, "GET", "/metrics", "").1)
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut rtts = runtime.block_on(play(players, seconds));
    let after: Vec<String> = nodes
        .iter()
        .map(|n| http(n.addr, "GET", "/metrics", "").1)
        .collect();
    let sum = |texts: &[String], name: &str| texts.iter().map(|t| metric(t, name)).sum::<f64>();
    rtts.sort();
    let at = |q: f64| {
        rtts.get(((rtts.len() as f64 * q) as usize).min(rtts.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Run {
        p50: at(0.50),
        p99: at(0.99),
        actions: rtts.len(),
        entries: sum(&after, "baton_journal_entries_total")
            - sum(&before, "baton_journal_entries_total"),
        bytes: sum(&after, "baton_journal_bytes_total") - sum(&before, "baton_journal_bytes_total"),
    }
}

/// Every player acts right after its previous acknowledgement, for `seconds`.
async fn play(players: Vec<(SocketAddr, String, String, i32)>, seconds: u64) -> Vec<Duration> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (addr, id, token, step) in players {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let url = format!("ws://{addr}/v1/sessions/{id}/play");
            let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else {
                return Vec::new();
            };
            let join = json!({"type": "join", "token": token}).to_string();
            if ws.send(Message::Text(join.into())).await.is_err() {
                return Vec::new();
            }
            let mut rtts = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Out and back, so both players stay on the board.
                let dq = if n.is_multiple_of(2) { step } else { -step };
                let action = json!({"type": "act", "id": format!("{n}"), "action": {"type": "move", "dq": dq, "dr": 0}});
                let sent = Instant::now();
                if ws.send(Message::Text(action.to_string().into())).await.is_err() {
                    break;
                }
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(text))) if text.contains("\"ack\"") => break,
                        Some(Ok(Message::Text(text))) if text.contains("\"error\"") => {
                            rtts.clear(); // an unacknowledged action would flatter the figures
                            return rtts;
                        }
                        Some(Ok(_)) => continue,
                        _ => return rtts,
                    }
                }
                rtts.push(sent.elapsed());
                n += 1;
            }
            rtts
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all
}

fn main() {
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
    for name in ["node-a", "node-b", "node-c"] {
        baton(&["certs", "node", name]);
    }
    println!(
        "replication benchmark: 3 nodes on loopback, {sessions} minotaur sessions, 2 players each acting on acknowledgement, {seconds} s per mode"
    );
    let mut runs = Vec::new();
    for mode in ["local", "replicated"] {
        let r = run(root.path(), mode, sessions, seconds);
        println!(
            "  {mode:<10} round trip p50 {:>6.2} ms  p99 {:>6.2} ms  {:>7.0} acked actions/s  journal {:.1} entries, {:.0} bytes per action",
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            r.actions as f64 / seconds as f64,
            r.entries / r.actions.max(1) as f64,
            r.bytes / r.actions.max(1) as f64,
        );
        runs.push(r);
    }
    let (local, replicated) = (&runs[0], &runs[1]);
    println!(
        "  replication adds {:.2} ms at p50 and {:.2} ms at p99 per action; it ships the journal entries (the bytes above) plus framing, whatever the session's size",
        (replicated.p50.as_secs_f64() - local.p50.as_secs_f64()) * 1e3,
        (replicated.p99.as_secs_f64() - local.p99.as_secs_f64()) * 1e3,
    );
}
