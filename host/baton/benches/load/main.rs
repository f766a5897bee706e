//! Load benchmark: `cargo bench -p baton --bench load [-- SESSIONS SECONDS HIBERNATED RATE]`.
//! Replication benchmark (`cluster.rs`): `cargo bench -p baton --bench load -- --cluster [SESSIONS SECONDS]`.
//! Cutover benchmark (`deploy.rs`): `scripts/bench-deploy [SESSIONS | drain | 2mib]`.
//!
//! Starts a real `baton serve` (release build, fsync on) on loopback, opens
//! two WebSocket players per minotaur session, and has every player act as
//! soon as its previous action is acknowledged (moves, so rounds keep
//! resolving). Prints acknowledged actions per second, round-trip p50/p99,
//! the load generator's own CPU; then the same load against the native
//! ceiling (`ceiling.rs`) and the ratio; then the node's resident memory per
//! live session and per hibernated session.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn http(addr: SocketAddr, method: &str, path: &str, token: &str, body: &str) -> Value {
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("");
    serde_json::from_str(body).unwrap_or(Value::Null)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_owned)
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// User + system CPU seconds of this process.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

mod ceiling;
mod cluster;
mod deploy;

/// One load-generating player: the node it talks to, the session, its
/// token, and what it does.
#[derive(Clone)]
struct Player {
    addr: SocketAddr,
    session: String,
    token: String,
    moves: Moves,
}

/// A player's actions.
#[derive(Clone, Copy)]
enum Moves {
    /// Minotaur: walk `step` cells out and back, so both players stay on
    /// the board.
    Walk { step: i32 },
    /// The misbehave fixture: add to its counter (a big state, a small change).
    Count,
}

impl Moves {
    fn action(self, n: u64) -> Value {
        match self {
            Moves::Walk { step } => {
                let dq = if n.is_multiple_of(2) { step } else { -step };
                json!({"type": "move", "dq": dq, "dr": 0})
            }
            Moves::Count => json!({"add": 1}),
        }
    }
}

static NEXT_LOG: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A server under load: a real `baton serve`, or the native ceiling.
struct Server {
    child: Child,
    addr: SocketAddr,
    token: String,
}

impl Server {
    /// Starts `command` and waits for its ready line. With
    /// `BATON_BENCH_LOGS=<dir>`, each server's log goes to a file there.
    fn start(mut command: Command, token: String) -> Server {
        let log = std::env::var_os("BATON_BENCH_LOGS").and_then(|dir| {
            let n = NEXT_LOG.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let name = format!("server-{}-{n}.log", std::process::id());
            std::fs::File::create(std::path::Path::new(&dir).join(name)).ok()
        });
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the server");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let addr: SocketAddr = loop {
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
        // The node logs to stdout: kept only when asked for.
        std::thread::spawn(move || {
            let mut log = log;
            for line in lines.map_while(Result::ok) {
                if let Some(file) = log.as_mut() {
                    let _ = writeln!(file, "{line}");
                }
            }
        });
        Server { child, addr, token }
    }

    /// Creates `sessions` minotaur sessions of two players who walk out and
    /// back on the board (so rounds keep resolving and nobody falls).
    fn players(&self, sessions: usize) -> Vec<Player> {
        let mut players = Vec::new();
        for _ in 0..sessions {
            let request = json!({
                "module": "minotaur",
                "players": [{"id": "a", "name": "A"}, {"id": "b", "name": "B"}],
                "options": {"radius": 4, "hit_points": 99, "max_rounds": 1000000, "round_ms": 600000,
                            "positions": [{"q": -2, "r": 0}, {"q": 2, "r": 0}]},
            });
            let created = http(
                self.addr,
                "POST",
                "/v1/sessions",
                &self.token,
                &request.to_string(),
            );
            let id = created["id"].as_str().expect("created").to_owned();
            for (player, step) in [("a", 1), ("b", -1)] {
                let token = created["tokens"][player].as_str().expect("token");
                players.push(Player {
                    addr: self.addr,
                    session: id.clone(),
                    token: token.to_owned(),
                    moves: Moves::Walk { step },
                });
            }
        }
        players
    }

    fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Acknowledged actions per second and the round trips of one phase.
struct Phase {
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

/// Runs the closed-loop phase and the paced phase with `players`.
fn measure(
    runtime: &tokio::runtime::Runtime,
    players: &[Player],
    seconds: u64,
    rate: f64,
) -> [Phase; 2] {
    [None, Some(rate)].map(|pace| {
        let label = match pace {
            None => "as fast as acknowledged (closed loop)".to_owned(),
            Some(rate) => format!(
                "paced at {rate}/s per player = {:.0}/s offered",
                rate * players.len() as f64
            ),
        };
        let (mut rtts, elapsed, cpu) =
            runtime.block_on(run_players(players.to_vec(), seconds, pace));
        rtts.sort_unstable();
        let pct = |q: f64| {
            rtts.get(((rtts.len() as f64 - 1.0) * q) as usize)
                .copied()
                .unwrap_or_default()
        };
        let phase = Phase {
            per_second: rtts.len() as f64 / elapsed,
            p50: pct(0.5),
            p99: pct(0.99),
        };
        println!("  {label}");
        println!(
            "    acknowledged actions    {:>9.0} /s   ({} in {elapsed:.1} s)",
            phase.per_second,
            rtts.len()
        );
        println!(
            "    round trip              p50 {:>7.2} ms   p99 {:>7.2} ms",
            phase.p50.as_secs_f64() * 1e3,
            phase.p99.as_secs_f64() * 1e3
        );
        println!("    load generator CPU      {:>9.2} cores", cpu / elapsed);
        phase
    })
}

fn main() {
    if std::env::args().any(|a| a == "--ceiling-server") {
        return ceiling::serve();
    }
    if std::env::args().any(|a| a == "--cluster") {
        return cluster::run_benchmark();
    }
    if std::env::args().any(|a| a == "--deploy") {
        return deploy::run_benchmark();
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let sessions: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let seconds: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let hibernated: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    // The paced phase offers this many actions per second per player.
    let rate: f64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(3.0);

    let dir = tempfile::tempdir_in(
        std::env::var_os("CARGO_TARGET_TMPDIR").unwrap_or_else(|| "/tmp".into()),
    )
    .expect("dir");
    std::fs::write(
        dir.path().join("node.toml"),
        format!(
            "max_sessions = {}\nmax_live_instances = {}\nhibernate_after_ms = 3000\nactions_per_second = 1000\noperator_token = \"bench\"\n",
            sessions + hibernated + 10,
            sessions + hibernated + 100
        ),
    )
    .expect("config");
    let mut command = Command::new(env!("CARGO_BIN_EXE_baton"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(dir.path().join("node.toml"))
        .arg("--data-dir")
        .arg(dir.path().join("data"));
    let node = Server::start(command, "bench".into());
    let idle_rss = node.rss_kib();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    println!(
        "load benchmark: {sessions} minotaur sessions, 2 WebSocket players each, {seconds} s per phase"
    );
    println!("baton node (Wasm rules, journal fsynced before every ack, snapshots):");
    let players = node.players(sessions);
    let live_rss = node.rss_kib();
    let baton = measure(&runtime, &players, seconds, rate);

    println!("native ceiling (same protocol, rules compiled in, no journal, no snapshots):");
    let mut command = Command::new(std::env::current_exe().expect("this benchmark"));
    command.arg("--ceiling-server");
    let native = Server::start(command, String::new());
    let ceiling = measure(&runtime, &native.players(sessions), seconds, rate);
    drop(native);
    println!(
        "  ceiling / baton           {:>9.2}x throughput (closed loop; goal <= 2x), paced p99 {:.2} ms vs {:.2} ms",
        ceiling[0].per_second / baton[0].per_second.max(1.0),
        ceiling[1].p99.as_secs_f64() * 1e3,
        baton[1].p99.as_secs_f64() * 1e3,
    );

    println!(
        "  node RSS                  {:>9} MiB idle, {} MiB with {sessions} live sessions: {:.0} KiB per live session",
        idle_rss / 1024,
        live_rss / 1024,
        (live_rss.saturating_sub(idle_rss)) as f64 / sessions as f64
    );

    // Density: many more sessions than are ever live, hibernated to snapshots.
    let before = node.rss_kib();
    let mut created = 0;
    for _ in 0..hibernated {
        let request = json!({"module": "minotaur", "players": [{"id": "a", "name": "A"}, {"id": "b", "name": "B"}],
                             "options": {"round_ms": 600000}});
        created += usize::from(
            http(
                node.addr,
                "POST",
                "/v1/sessions",
                &node.token,
                &request.to_string(),
            )["id"]
                .is_string(),
        );
    }
    // Idle sessions hibernate after 3 s; wait for the sweeper (a benchmark
    // waiting for what it measures, up to two minutes).
    let total = sessions + created;
    let mut asleep = 0;
    for _ in 0..120 {
        std::thread::sleep(Duration::from_secs(1));
        let listed = http(node.addr, "GET", "/v1/sessions", &node.token, "");
        asleep = listed
            .as_array()
            .map_or(0, |a| a.iter().filter(|s| s["live"] == false).count());
        if asleep == total {
            break;
        }
    }
    let after = node.rss_kib();
    println!(
        "  +{created} sessions, {asleep} of {total} hibernated: node RSS {} MiB, {:.1} KiB per added session",
        after / 1024,
        (after.saturating_sub(before)) as f64 / created.max(1) as f64
    );
}

/// Every player acts until `seconds` pass: right after each acknowledgement,
/// or paced at `rate` actions per second. Returns the round trips, the
/// elapsed seconds and the CPU this process used.
async fn run_players(
    players: Vec<Player>,
    seconds: u64,
    rate: Option<f64>,
) -> (Vec<Duration>, f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, player) in players.into_iter().enumerate() {
        let stop = stop.clone();
        let Player {
            addr,
            session: id,
            token,
            moves,
        } = player;
        tasks.push(tokio::spawn(async move {
            let url = format!("ws://{addr}/v1/sessions/{id}/play");
            let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else {
                return Vec::new();
            };
            if ws
                .send(Message::Text(
                    json!({"type": "join", "token": token}).to_string().into(),
                ))
                .await
                .is_err()
            {
                return Vec::new();
            }
            let mut pace = rate.map(|r| {
                let period = Duration::from_secs_f64(1.0 / r);
                // Spread the players over the period.
                let offset = period.mul_f64((i % 1000) as f64 / 1000.0);
                let mut interval =
                    tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                interval
            });
            let mut rtts = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Some(pace) = pace.as_mut() {
                    pace.tick().await;
                }
                let action =
                    json!({"type": "act", "id": format!("{n}"), "action": moves.action(n)});
                let sent = Instant::now();
                if ws
                    .send(Message::Text(action.to_string().into()))
                    .await
                    .is_err()
                {
                    break;
                }
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(text))) if text.contains("\"ack\"") => break,
                        // Only acknowledged actions count: an error would flatter the figures.
                        Some(Ok(Message::Text(text))) if text.contains("\"error\"") => {
                            eprintln!("player {i}: {text}");
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
    (
        all,
        started.elapsed().as_secs_f64(),
        cpu_seconds() - cpu_before,
    )
}
