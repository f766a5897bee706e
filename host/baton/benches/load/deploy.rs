//! Cutover benchmark: `scripts/bench-deploy [SESSIONS | drain | 2mib]`, which installs
//! `redis-server` for the baseline and runs
//! `cargo bench -p baton --bench load -- --deploy [SESSIONS]`.
//!
//! What a rolling deploy costs a live session, with real `baton serve`
//! processes (release build, fsync on, replicated mode) on loopback:
//! `node-a` and `node-b` share the sessions; those measured are the ones
//! `node-a` owns (their replicas are on `node-b`), and their players
//! connect through `node-b`, which relays them to the owner. `node-c`, of a
//! newer host version, starts; `node-a` gets SIGTERM and hands every
//! session to it while the players keep acting as fast as they are
//! acknowledged.
//!
//! Printed, per workload (minotaur sessions; ~2 MiB sessions), over three
//! deploys, each on a fresh cluster (four ~2 MiB sessions in one moment of
//! a shared machine make a p50 that moves by a millisecond run to run):
//! - the cutover on the server: the fence on the old owner to the first
//!   action applied by the new one, p50/p99 (from each session's
//!   `arrival`), and the part of it until the session was restored;
//! - the stall players saw: each player's longest wait for an
//!   acknowledgement over the deploy (from the new node's start until the
//!   players stop, a second after the old node's exit), p50/p99 over the
//!   players, next to the usual round trip;
//! - the time from SIGTERM to `node-a`'s exit (every handoff acknowledged).
//!
//! Then the time to drain 1,000 idle minotaur sessions the same way.
//!
//! The baseline is the obvious alternative: on shutdown the old node
//! stashes each session's full state in Redis, and the new node reads it
//! back. Measured here with a real `redis-server` (no persistence), on the
//! same sessions' full state (their memory image, as exported): a SET and
//! then a GET per session for the cutover; 1,000 pipelined SETs then 1,000
//! pipelined GETs for the drain. Both leave out the restore, the sleep
//! and the polling such a scheme needs, so the baseline's figures are
//! lower bounds.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::cluster::{Workload, free_udp_port, make_certs, publish, workloads};
use super::{Moves, Server, http};

const TOKEN: &str = "bench";
const NAMES: [&str; 3] = ["node-a", "node-b", "node-c"];
/// Sessions in the drain measurement.
const DRAINED: usize = 1000;

/// Starts node `name` of host version `version`.
fn start(root: &Path, name: &str, port: u16, seed: Option<u16>, version: u32) -> Server {
    let config = root.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "actions_per_second = 1000000\nmax_sessions = 5000\nmax_live_instances = 5000\n\
             snapshot_every = 16\n[cluster]\nhost_version = {version}\ndrain_deadline_ms = 60000\n"
        ),
    )
    .expect("config");
    let mut command = Command::new(env!("CARGO_BIN_EXE_baton"));
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--operator-token",
            TOKEN,
        ])
        .args(["--node-name", name, "--replication", "replicated"])
        .arg("--config")
        .arg(&config)
        .arg("--cluster-listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--certs-dir")
        .arg(root.join("certs"))
        .arg("--data-dir")
        .arg(root.join(name));
    if let Some(seed) = seed {
        command.arg("--seed").arg(format!("127.0.0.1:{seed}"));
    }
    Server::start(command, TOKEN.to_owned())
}

/// Waits until `node` sees `peers` up and answers `/readyz` with 200.
fn until_ready(node: &Server, peers: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let cluster = http(node.addr, "GET", "/v1/cluster", TOKEN, "");
        let seen = cluster["peers"].as_array().cloned().unwrap_or_default();
        let all = peers.iter().all(|p| seen.iter().any(|s| s == p));
        if all && status(node.addr, "/readyz") == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "the cluster did not form");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn status(addr: SocketAddr, path: &str) -> u16 {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return 0;
    };
    let _ = write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// SIGTERM to `child`; how long it took to exit, and whether it exited 0.
fn terminate(child: &mut Child) -> (Duration, bool) {
    let started = Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    let status = child.wait().expect("exits");
    (started.elapsed(), status.success())
}

/// Creates sessions through `owner` until it owns `n` (placement puts about
/// half on the other node); returns `(session, token, moves)` for each
/// player of those `n`.
fn create(owner: &Server, workload: Workload, n: usize) -> Vec<(String, String, Moves)> {
    let request = workload.create_request();
    let mut players = Vec::new();
    let mut owned = 0;
    while owned < n {
        let created = http(
            owner.addr,
            "POST",
            "/v1/sessions",
            TOKEN,
            &request.to_string(),
        );
        let Some(id) = created["id"].as_str().map(str::to_owned) else {
            panic!("creating a session failed: {created}");
        };
        let token = |p: &str| created["tokens"][p].as_str().expect("token").to_owned();
        let record = http(
            owner.addr,
            "GET",
            &format!("/v1/sessions/{id}/replica"),
            TOKEN,
            "",
        );
        if record["owner"] != NAMES[0] {
            continue;
        }
        owned += 1;
        if let Workload::Ballast(bytes) = workload {
            let body = json!({"id": "ballast", "action": {"ballast": bytes}}).to_string();
            let done = http(
                owner.addr,
                "POST",
                &format!("/v1/sessions/{id}/actions"),
                &token("a"),
                &body,
            );
            assert_eq!(done["result"], "accepted", "ballast: {done}");
        }
        for (player, moves) in workload.players() {
            players.push((id.clone(), token(player), *moves));
        }
    }
    players
}

/// The sessions `players` play, once each.
fn session_ids(players: &[(String, String, Moves)]) -> Vec<String> {
    let mut ids: Vec<String> = players.iter().map(|(id, ..)| id.clone()).collect();
    ids.dedup();
    ids
}

/// One player's run: each action's send time and round trip.
#[derive(Default)]
struct Played {
    rtts: Vec<(Instant, Duration)>,
    error: Option<String>,
}

impl Played {
    /// The longest wait for an action still unanswered at `since` or sent
    /// after it.
    fn longest_since(&self, since: Instant) -> Duration {
        self.rtts
            .iter()
            .filter(|(sent, rtt)| *sent + *rtt >= since)
            .map(|(_, rtt)| *rtt)
            .max()
            .unwrap_or_default()
    }
}

/// Players acting as soon as they are acknowledged, through `via`, until
/// `stop`.
fn play(
    runtime: &tokio::runtime::Runtime,
    via: SocketAddr,
    players: &[(String, String, Moves)],
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Played>> {
    players
        .iter()
        .cloned()
        .map(|(id, token, moves)| {
            let stop = stop.clone();
            runtime.spawn(async move {
                let mut played = Played::default();
                let url = format!("ws://{via}/v1/sessions/{id}/play");
                let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else {
                    played.error = Some("could not connect".into());
                    return played;
                };
                let join = json!({"type": "join", "token": token}).to_string();
                if ws.send(Message::Text(join.into())).await.is_err() {
                    played.error = Some("could not join".into());
                    return played;
                }
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let action =
                        json!({"type": "act", "id": format!("{n}"), "action": moves.action(n)});
                    let sent = Instant::now();
                    if ws
                        .send(Message::Text(action.to_string().into()))
                        .await
                        .is_err()
                    {
                        played.error = Some("the connection broke".into());
                        return played;
                    }
                    loop {
                        match ws.next().await {
                            Some(Ok(Message::Text(text))) if text.contains("\"ack\"") => break,
                            Some(Ok(Message::Text(text))) if text.contains("\"error\"") => {
                                played.error = Some(text.to_string());
                                return played;
                            }
                            Some(Ok(Message::Close(frame))) => {
                                played.error = Some(format!("closed: {frame:?}"));
                                return played;
                            }
                            Some(Ok(_)) => continue,
                            _ => {
                                played.error = Some("the connection broke".into());
                                return played;
                            }
                        }
                    }
                    played.rtts.push((sent, sent.elapsed()));
                    n += 1;
                }
                played
            })
        })
        .collect()
}

/// The `q` quantile of `values` (sorted here), in milliseconds.
fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values
        .get(((values.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

/// A three-node cluster as the module docs describe, `node-c` not started.
struct Cluster {
    root: tempfile::TempDir,
    a: Server,
    b: Server,
    ports: [u16; 3],
}

impl Cluster {
    fn start(parent: &Path) -> Cluster {
        let root = tempfile::tempdir_in(parent).expect("dir");
        make_certs(&root.path().join("certs"), &NAMES);
        let ports = [free_udp_port(), free_udp_port(), free_udp_port()];
        let a = start(root.path(), NAMES[0], ports[0], None, 2);
        let b = start(root.path(), NAMES[1], ports[1], Some(ports[0]), 2);
        until_ready(&a, &[NAMES[1]]);
        until_ready(&b, &[NAMES[0]]);
        Cluster { root, a, b, ports }
    }

    /// Starts `node-c`, waits until it is ready, SIGTERMs `node-a`: the
    /// new node, and how long the drain took.
    fn deploy(&mut self) -> (Server, Duration) {
        let c = start(
            self.root.path(),
            NAMES[2],
            self.ports[2],
            Some(self.ports[1]),
            3,
        );
        until_ready(&c, &NAMES[..2]);
        until_ready(&self.a, &[NAMES[2]]);
        let (took, clean) = terminate(&mut self.a.child);
        assert!(clean, "node-a did not exit 0 after its drain");
        (c, took)
    }
}

/// What the handoffs to node-c measured, in ms from the fence, one value
/// per session that has it.
#[derive(Default)]
struct Arrivals {
    /// To the first action applied on node-c (the rules ran it).
    cutover: Vec<f64>,
    /// To that action durable on two disks and acknowledged.
    acked: Vec<f64>,
    /// To node-c owning the session (the protocol's part).
    owned: Vec<f64>,
    /// To the session restored on node-c.
    ready: Vec<f64>,
}

impl Arrivals {
    fn extend(&mut self, other: Arrivals) {
        self.cutover.extend(other.cutover);
        self.acked.extend(other.acked);
        self.owned.extend(other.owned);
        self.ready.extend(other.ready);
    }
}

/// What the handoffs of `sessions` to `new` measured, asserting each
/// arrived exact.
fn arrivals(new: &Server, sessions: &[String]) -> Arrivals {
    let mut measured = Arrivals::default();
    for id in sessions {
        // A drained node exits once its targets acknowledged; they may
        // still be restoring the last sessions.
        let deadline = Instant::now() + Duration::from_secs(60);
        let summary = loop {
            let summary = http(new.addr, "GET", &format!("/v1/sessions/{id}"), TOKEN, "");
            if summary["arrival"]["exact"].is_boolean() || Instant::now() > deadline {
                break summary;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let arrival = &summary["arrival"];
        assert_eq!(
            arrival["exact"], true,
            "{id} did not arrive exact: {summary}"
        );
        measured.owned.extend(arrival["owned_ms"].as_f64());
        measured.ready.extend(arrival["ready_ms"].as_f64());
        measured.cutover.extend(arrival["cutover_ms"].as_f64());
        measured.acked.extend(arrival["acked_ms"].as_f64());
    }
    measured
}

/// A real `redis-server` on loopback, without persistence.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Option<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(Redis { child, port })
    }

    fn connect(&self) -> Resp {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).expect("redis");
        stream.set_nodelay(true).expect("nodelay");
        Resp(BufReader::new(stream))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A connection speaking RESP, for SET and GET of binary values.
struct Resp(BufReader<TcpStream>);

impl Resp {
    fn send(&mut self, words: &[&[u8]]) {
        let mut command = format!("*{}\r\n", words.len()).into_bytes();
        for word in words {
            command.extend_from_slice(format!("${}\r\n", word.len()).as_bytes());
            command.extend_from_slice(word);
            command.extend_from_slice(b"\r\n");
        }
        self.0.get_mut().write_all(&command).expect("redis write");
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.0.read_line(&mut line).expect("redis read");
        line
    }

    fn set_sent(&mut self, key: &str, value: &[u8]) {
        self.send(&[b"SET", key.as_bytes(), value]);
    }

    fn ok(&mut self) {
        let line = self.line();
        assert!(line.starts_with("+OK"), "redis: {line}");
    }

    fn get_sent(&mut self, key: &str) {
        self.send(&[b"GET", key.as_bytes()]);
    }

    fn value(&mut self) -> Vec<u8> {
        let line = self.line();
        let len: usize = line
            .trim_end()
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("redis: {line}"));
        let mut value = vec![0; len + 2];
        self.0.read_exact(&mut value).expect("redis read");
        value.truncate(len);
        value
    }
}

/// Each session's full state, as the baseline would stash it: its memory
/// image, exported by its owner.
fn full_states(owner: &Server, sessions: &[String]) -> Vec<Vec<u8>> {
    sessions
        .iter()
        .map(|id| {
            let export = http(
                owner.addr,
                "GET",
                &format!("/v1/sessions/{id}/export"),
                TOKEN,
                "",
            );
            let hex = export["snapshot"]["bytes"].as_str().unwrap_or_default();
            (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
                .collect()
        })
        .collect()
}

/// The baseline's cutover per session: stash its full state, read it back.
fn redis_cutover(redis: &Redis, states: &[Vec<u8>]) -> Vec<f64> {
    let (mut old, mut new) = (redis.connect(), redis.connect());
    states
        .iter()
        .enumerate()
        .map(|(i, state)| {
            let key = format!("session:{i}");
            let started = Instant::now();
            old.set_sent(&key, state);
            old.ok();
            new.get_sent(&key);
            let back = new.value();
            let took = started.elapsed().as_secs_f64() * 1e3;
            assert_eq!(back.len(), state.len());
            took
        })
        .collect()
}

/// The baseline's drain: every state stashed (pipelined), then read back
/// (pipelined).
fn redis_drain(redis: &Redis, states: &[Vec<u8>]) -> Duration {
    let (mut old, mut new) = (redis.connect(), redis.connect());
    let started = Instant::now();
    for (i, state) in states.iter().enumerate() {
        old.set_sent(&format!("drain:{i}"), state);
    }
    for _ in states {
        old.ok();
    }
    for i in 0..states.len() {
        new.get_sent(&format!("drain:{i}"));
    }
    for _ in states {
        new.value();
    }
    started.elapsed()
}

/// Deploys per cutover workload: each starts a fresh cluster, so that the
/// figures are not those of four sessions in one moment of the machine.
const ROUNDS: usize = 3;

/// What one deploy of a workload measured.
struct Round {
    measured: Arrivals,
    /// Each player's longest wait for an acknowledgement over the deploy, ms.
    stalls: Vec<f64>,
    /// Every round trip the players saw, ms.
    rtts: Vec<f64>,
    errors: Vec<String>,
    /// SIGTERM to node-a's exit.
    drain: Duration,
    /// The baseline on the same sessions' full states, with Redis: each
    /// one's stash and read back (ms), and their mean size.
    stash: Vec<f64>,
    state_bytes: usize,
}

/// A fresh cluster with `n` sessions of `workload` owned by node-a, their
/// players acting through node-b; then node-c starts and node-a gets
/// SIGTERM.
fn deploy_round(
    runtime: &tokio::runtime::Runtime,
    redis: Option<&Redis>,
    parent: &Path,
    workload: Workload,
    n: usize,
) -> Round {
    let mut cluster = Cluster::start(parent);
    if let Workload::Ballast(_) = workload {
        publish(cluster.a.addr, baton_games::MISBEHAVE.bytes);
    }
    let created = create(&cluster.a, workload, n);
    let ids = session_ids(&created);
    let stop = Arc::new(AtomicBool::new(false));
    let players = play(runtime, cluster.b.addr, &created, stop.clone());
    std::thread::sleep(Duration::from_secs(2));
    // The deploy, from the new node's start on: what players waited
    // for before it (their first actions, say) is not its doing.
    let deploy_began = Instant::now();
    let (c, drain) = cluster.deploy();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let played: Vec<Played> = players
        .into_iter()
        .map(|p| runtime.block_on(p).expect("player"))
        .collect();
    let states = redis.map(|_| full_states(&c, &ids)).unwrap_or_default();
    Round {
        measured: arrivals(&c, &ids),
        stalls: played
            .iter()
            .map(|p| p.longest_since(deploy_began).as_secs_f64() * 1e3)
            .collect(),
        rtts: played
            .iter()
            .flat_map(|p| p.rtts.iter().map(|(_, r)| r.as_secs_f64() * 1e3))
            .collect(),
        errors: played.iter().filter_map(|p| p.error.clone()).collect(),
        drain,
        stash: redis.map(|r| redis_cutover(r, &states)).unwrap_or_default(),
        state_bytes: states.iter().map(Vec::len).sum::<usize>() / states.len().max(1),
    }
}

pub(super) fn run_benchmark() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    // `drain` alone runs only the drain, `2mib` only the ~2 MiB cutover
    // (for profiling one of them).
    let only = args.first().map(String::as_str);
    let drain_only = only == Some("drain");
    let big_only = only == Some("2mib");
    let sessions: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(20);
    let parent = std::env::var_os("CARGO_TARGET_TMPDIR").unwrap_or_else(|| "/tmp".into());
    let redis = Redis::start();
    if redis.is_none() {
        println!(
            "redis-server is not installed: the baseline is skipped (scripts/bench-deploy installs it)"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "cutover benchmark: node-a hands every session to node-c on SIGTERM; players act on acknowledgement through node-b"
    );
    let picked = workloads(sessions).into_iter().filter(|(workload, _, _)| {
        !drain_only && (!big_only || matches!(workload, Workload::Ballast(_)))
    });
    for (workload, n, label) in picked {
        let mut measured = Arrivals::default();
        let (mut stalls, mut rtts, mut errors) = (Vec::new(), Vec::new(), Vec::new());
        let (mut drains, mut stash) = (Vec::new(), Vec::new());
        let mut size = 0;
        for _ in 0..ROUNDS {
            let round = deploy_round(&runtime, redis.as_ref(), Path::new(&parent), workload, n);
            measured.extend(round.measured);
            stalls.extend(round.stalls);
            rtts.extend(round.rtts);
            errors.extend(round.errors);
            drains.push(round.drain.as_secs_f64() * 1e3);
            stash.extend(round.stash);
            size = round.state_bytes;
        }
        println!("  {label}, {ROUNDS} deploys");
        println!(
            "    cutover (fence to first action applied on node-c): p50 {:>7.2} ms  p99 {:>7.2} ms  ({} measured; owned after p50 {:.2} ms, restored after p50 {:.2} ms, p99 {:.2} ms)",
            quantile(&mut measured.cutover, 0.5),
            quantile(&mut measured.cutover, 0.99),
            measured.cutover.len(),
            quantile(&mut measured.owned, 0.5),
            quantile(&mut measured.ready, 0.5),
            quantile(&mut measured.ready, 0.99),
        );
        println!(
            "    fence to that action acknowledged (durable on node-c and its replica): p50 {:>7.2} ms  p99 {:>7.2} ms",
            quantile(&mut measured.acked, 0.5),
            quantile(&mut measured.acked, 0.99),
        );
        println!(
            "    players' longest wait over the deploy: p50 {:>7.2} ms  p99 {:>7.2} ms  (usual round trip p50 {:.2} ms), {} errors",
            quantile(&mut stalls, 0.5),
            quantile(&mut stalls, 0.99),
            quantile(&mut rtts, 0.5),
            errors.len(),
        );
        if let Some(error) = errors.first() {
            println!("      first error: {error}");
        }
        drains.sort_by(f64::total_cmp);
        let drains: Vec<String> = drains.iter().map(|d| format!("{d:.0}")).collect();
        println!(
            "    SIGTERM to node-a's exit, every handoff acknowledged: {} ms",
            drains.join(" / ")
        );
        if redis.is_some() {
            println!(
                "    baseline, Redis stash and read back ({:.0} KiB each): p50 {:>7.2} ms  p99 {:>7.2} ms  (no restore, no sleep, no polling)",
                size as f64 / 1024.0,
                quantile(&mut stash, 0.5),
                quantile(&mut stash, 0.99),
            );
        }
    }

    if big_only {
        return;
    }
    let mut cluster = Cluster::start(Path::new(&parent));
    let ids = session_ids(&create(&cluster.a, Workload::Minotaur, DRAINED));
    let (c, drain) = cluster.deploy();
    // Where each session ended up, as node-b's records say.
    let owners: Vec<String> = ids
        .iter()
        .map(|id| {
            let record = http(
                cluster.b.addr,
                "GET",
                &format!("/v1/sessions/{id}/replica"),
                TOKEN,
                "",
            );
            record["owner"].as_str().unwrap_or("?").to_owned()
        })
        .collect();
    let handed: Vec<String> = ids
        .iter()
        .zip(&owners)
        .filter(|(_, o)| *o == NAMES[2])
        .map(|(id, _)| id.clone())
        .collect();
    let mut measured = arrivals(&c, &handed);
    println!(
        "  drain of {DRAINED} idle minotaur sessions (node-a also replicates ~{DRAINED} of node-b's)"
    );
    println!(
        "    SIGTERM to node-a's exit, every handoff acknowledged: {:.0} ms  ({} handed to node-c, each owned after p50 {:.2} ms and restored after p50 {:.2} ms; {} failed over to node-b instead)",
        drain.as_secs_f64() * 1e3,
        handed.len(),
        quantile(&mut measured.owned, 0.5),
        quantile(&mut measured.ready, 0.5),
        owners.iter().filter(|o| *o == NAMES[1]).count(),
    );
    if let Some(redis) = &redis {
        let states = full_states(&c, &handed);
        let size = states.iter().map(Vec::len).sum::<usize>() / states.len().max(1);
        let took = redis_drain(redis, &states);
        println!(
            "    baseline, Redis stash and read back of {DRAINED} ({:.0} KiB each, pipelined): {:.0} ms  (no restore, no sleep, no polling)",
            size as f64 / 1024.0,
            took.as_secs_f64() * 1e3
        );
    }
}
