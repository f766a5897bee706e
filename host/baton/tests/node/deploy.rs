//! Deploys and crashes under load, with real processes: bots play minotaur
//! sessions over WebSockets while nodes are replaced one by one (start the
//! new one, SIGTERM the old one) or killed with SIGKILL.
//!
//! A rolling deploy must lose nothing and show nothing: every old node
//! exits 0 once its sessions are handed off, every session arrives on its
//! new owner with the memory hash it had at the fence, equals a replay of
//! its journal, and no bot sees an error (at most one reconnect for each
//! node replaced, when the node it was connected to exits).
//!
//! The faults: a node killed under load, a handoff's target killed while
//! the old node drains, a drain deadline expiring, two nodes stopped at
//! once. Through all of them, no bot sees an error and every bot's last
//! acknowledged action is still in its session's journal. And rule
//! upgrades under the same load, after a rolling deploy.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::fleet::{
    assert_replica_equals_owner, certify, create, free_udp_port, placement, start_with, until_peers,
};
use crate::support::{Node, Socket, send};

/// Nodes checkpoint every few entries; a drain may take its time.
const CONFIG: &str = "snapshot_every = 8\n[cluster]\ndrain_deadline_ms = 60000\n";

/// Pause between a bot's actions: 100 bots offer ~400 actions/s.
const PACE: Duration = Duration::from_millis(250);

/// The addresses bots may (re)connect to: the nodes not being stopped.
type Entrances = Arc<Mutex<Vec<SocketAddr>>>;

/// What a bot saw.
#[derive(Debug, Default)]
struct Played {
    session: String,
    acked: u64,
    /// The last acknowledged action: its id and its position.
    last_ack: Option<(String, u64)>,
    /// Close codes that made it reconnect.
    reconnects: Vec<Option<u16>>,
    /// Their reasons, for the failure message.
    reasons: Vec<String>,
    /// Actions sent again after an `unavailable` answer.
    retries: u32,
    errors: Vec<String>,
}

/// Plays `session` as its first player until `stop`, reconnecting (with its
/// last position, resending the unanswered action) whenever a node closes.
async fn bot(
    session: String,
    token: String,
    entrances: Entrances,
    acked_at: Arc<Mutex<BTreeMap<String, Instant>>>,
    stop: Arc<AtomicBool>,
) -> Played {
    let mut played = Played {
        session: session.clone(),
        ..Played::default()
    };
    let mut after: Option<u64> = None;
    let mut pending: Option<(String, Value)> = None;
    let mut k = 0u64;
    let spread = session.bytes().map(u64::from).sum::<u64>() as usize;
    'connect: for attempt in 0.. {
        if attempt > 20 {
            played.errors.push("could not stay connected".into());
            return played;
        }
        let addr = {
            let entrances = entrances.lock().expect("entrances");
            entrances[(spread + attempt) % entrances.len()]
        };
        let url = format!("ws://{addr}/v1/sessions/{session}/play");
        let Ok((mut socket, _)) = tokio_tungstenite::connect_async(url).await else {
            played.reconnects.push(None);
            played.reasons.push("could not connect".into());
            continue;
        };
        let mut join = json!({"type": "join", "token": token});
        if let Some(seq) = after {
            join["after"] = json!({"epoch": 1, "seq": seq});
        }
        send(&mut socket, join).await;
        if let Some((_, act)) = &pending {
            send(&mut socket, act.clone()).await;
        }
        loop {
            if pending.is_none() {
                if stop.load(Ordering::Relaxed) {
                    let _ = socket.close(None).await;
                    return played;
                }
                k += 1;
                let id = format!("a{k}");
                let dr = if k.is_multiple_of(2) { 1 } else { -1 };
                let act =
                    json!({"type": "act", "id": id, "action": {"type": "move", "dq": 0, "dr": dr}});
                send(&mut socket, act.clone()).await;
                pending = Some((id, act));
            }
            match next(&mut socket).await {
                Next::Text(message) => match message["type"].as_str() {
                    Some("ack") => {
                        if pending.as_ref().is_some_and(|(id, _)| message["id"] == *id) {
                            let (id, _) = pending.take().expect("pending");
                            played.acked += 1;
                            acked_at
                                .lock()
                                .expect("acks")
                                .insert(session.clone(), Instant::now());
                            played.last_ack = Some((id, message["seq"].as_u64().unwrap_or(0)));
                            tokio::time::sleep(PACE).await;
                        }
                    }
                    Some("events") => after = message["seq"].as_u64().or(after),
                    Some("joined") => {
                        after = message["position"]["seq"].as_u64().or(after);
                    }
                    // Applied but not confirmed (its replica died): the
                    // protocol says to retry with the same id.
                    Some("error")
                        if message["code"] == "unavailable"
                            && played.retries < 3
                            && pending.as_ref().is_some_and(|(id, _)| message["id"] == *id) =>
                    {
                        played.retries += 1;
                        let (_, act) = pending.as_ref().expect("pending");
                        send(&mut socket, act.clone()).await;
                    }
                    _ => {
                        played.errors.push(message.to_string());
                        if pending.as_ref().is_some_and(|(id, _)| message["id"] == *id) {
                            pending = None;
                        }
                    }
                },
                Next::Closed(code, reason) => {
                    played.reconnects.push(code);
                    played.reasons.push(reason);
                    continue 'connect;
                }
                Next::Silent => {
                    played
                        .errors
                        .push(format!("no answer within 20 s (pending {pending:?})"));
                    continue 'connect;
                }
            }
        }
    }
    played
}

enum Next {
    Text(Value),
    Closed(Option<u16>, String),
    Silent,
}

async fn next(socket: &mut Socket) -> Next {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), socket.next()).await {
            Err(_) => return Next::Silent,
            Ok(Some(Ok(Message::Text(text)))) => {
                return Next::Text(serde_json::from_str(&text).expect("JSON"));
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                return match frame {
                    Some(f) => Next::Closed(Some(u16::from(f.code)), f.reason.to_string()),
                    None => Next::Closed(None, String::new()),
                };
            }
            Ok(Some(Ok(_))) => continue,
            Ok(None | Some(Err(_))) => return Next::Closed(None, "no close frame".into()),
        }
    }
}

/// Waits until `/readyz` says the node takes players (it holds the
/// cluster's records), as a load balancer would.
fn until_ready(node: &Node) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.http("GET", "/readyz", None, b"").0 != 200 {
        assert!(Instant::now() < deadline, "the new node never turned ready");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `p`-th percentile of `values` (sorted here).
fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let i = ((values.len() as f64 - 1.0) * p).round() as usize;
    values.get(i).copied().unwrap_or(f64::NAN)
}

/// The node named `name` from `nodes`, wherever it is.
fn owner_of<'a>(nodes: &'a BTreeMap<String, Node>, id: &str) -> (&'a Node, String) {
    let any = nodes.values().next().expect("a node");
    let (owner, _, _) = placement(any, id);
    let node = nodes
        .get(&owner)
        .unwrap_or_else(|| panic!("{id} is owned by {owner}, which is not running"));
    (node, owner)
}

/// The cluster tests under load run one at a time: each runs a few nodes
/// and 100 bots on a 2-core machine.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A cluster under load: a bot plays each session, connecting through the
/// nodes in `entrances`.
struct Load {
    root: tempfile::TempDir,
    certs: std::path::PathBuf,
    ports: BTreeMap<String, u16>,
    nodes: BTreeMap<String, Node>,
    sessions: Vec<(String, Vec<String>)>,
    entrances: Entrances,
    /// When each session's bot last got an acknowledgement.
    acked_at: Arc<Mutex<BTreeMap<String, Instant>>>,
    stop: Arc<AtomicBool>,
    bots: Vec<tokio::task::JoinHandle<Played>>,
}

impl Load {
    /// Nodes `node-1` to `node-{nodes}` with `config`, `sessions` sessions
    /// created through them in turn, a bot playing each.
    fn start(nodes: usize, sessions: usize, config: &str) -> Load {
        let mut load = Load::new();
        for i in 1..=nodes {
            load.join(&format!("node-{i}"), config);
        }
        for i in 0..sessions {
            load.add_sessions(&format!("node-{}", i % nodes + 1), 1);
        }
        load
    }

    /// No node yet; certificates for six.
    fn new() -> Load {
        let root = tempfile::tempdir().expect("tempdir");
        let names: Vec<String> = (1..=6).map(|i| format!("node-{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let certs = certify(root.path(), "certs", &names);
        Load {
            root,
            certs,
            ports: BTreeMap::new(),
            nodes: BTreeMap::new(),
            sessions: Vec::new(),
            entrances: Arc::default(),
            acked_at: Arc::default(),
            stop: Arc::default(),
            bots: Vec::new(),
        }
    }

    /// Creates `n` sessions through node `through`, a bot playing each.
    fn add_sessions(&mut self, through: &str, n: usize) {
        for _ in 0..n {
            let (id, tokens) = create(&self.nodes[through]);
            self.bots.push(tokio::spawn(bot(
                id.clone(),
                tokens[0].clone(),
                self.entrances.clone(),
                self.acked_at.clone(),
                self.stop.clone(),
            )));
            self.sessions.push((id, tokens));
        }
    }

    /// Starts node `name` (seeded with the running ones), waits until the
    /// others see it and it is ready, as a load balancer would, and lets
    /// bots connect through it.
    fn join(&mut self, name: &str, config: &str) {
        let port = free_udp_port();
        let seeds: Vec<u16> = self.ports.values().copied().collect();
        let node = start_with(self.root.path(), &self.certs, name, port, &seeds, config);
        let others: Vec<&str> = self.nodes.keys().map(String::as_str).collect();
        until_peers(&node, &others);
        for other in self.nodes.values() {
            until_peers(other, &[name]);
        }
        until_ready(&node);
        self.entrances.lock().expect("entrances").push(node.addr);
        self.ports.insert(name.to_owned(), port);
        self.nodes.insert(name.to_owned(), node);
    }

    /// Takes node `name` out of the cluster's entrances: bots no longer
    /// connect through it. The caller stops it.
    fn take_out(&mut self, name: &str) -> Node {
        let node = self.nodes.remove(name).expect("a running node");
        self.ports.remove(name);
        self.entrances
            .lock()
            .expect("entrances")
            .retain(|a| *a != node.addr);
        node
    }

    /// Evicts node `name`, which was killed, through the CLI on another
    /// node, as soon as that node sees it down; returns how many ms it took.
    fn evict(&self, name: &str) -> f64 {
        let started = Instant::now();
        let through = self.nodes.values().next().expect("a node");
        loop {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
                .args(["cluster", "evict", name, "--node"])
                .arg(format!("http://{}", through.admin_addr))
                .env("BATON_OPERATOR_TOKEN", &through.token)
                .output()
                .expect("baton runs");
            if out.status.success() {
                return started.elapsed().as_secs_f64() * 1e3;
            }
            let error = String::from_utf8_lossy(&out.stderr);
            assert!(
                error.contains("is up") && started.elapsed() < Duration::from_secs(10),
                "evicting {name}: {error}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every bot got an acknowledgement after `since`; returns
    /// how long after `since` each session was live again, sorted.
    async fn until_all_live(&self, since: Instant, within: Duration) -> Vec<f64> {
        loop {
            let live: Vec<f64> = {
                let acked_at = self.acked_at.lock().expect("acks");
                self.sessions
                    .iter()
                    .filter_map(|(id, _)| acked_at.get(id).filter(|t| **t > since))
                    .map(|t| t.duration_since(since).as_secs_f64() * 1e3)
                    .collect()
            };
            if live.len() == self.sessions.len() {
                let mut live = live;
                live.sort_by(f64::total_cmp);
                return live;
            }
            if since.elapsed() > within {
                let acked_at = self.acked_at.lock().expect("acks").clone();
                let any = self.nodes.values().next().expect("a node");
                let stuck: Vec<String> = self
                    .sessions
                    .iter()
                    .filter(|(id, _)| acked_at.get(id).is_none_or(|t| *t <= since))
                    .map(|(id, _)| format!("{id} at {:?}", placement(any, id)))
                    .collect();
                panic!(
                    "only {} of {} sessions were live again {within:?} later; not: {stuck:#?}",
                    live.len(),
                    self.sessions.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the bots; what each saw. Asserts that none saw an error, and
    /// that none reconnected more than `reconnects` times.
    async fn played(&mut self, reconnects: usize) -> Vec<Played> {
        self.stop.store(true, Ordering::Relaxed);
        let mut played = Vec::new();
        for bot in self.bots.drain(..) {
            played.push(bot.await.expect("the bot ran"));
        }
        let troubled: Vec<String> = played
            .iter()
            .filter(|p| !p.errors.is_empty() || p.reconnects.len() > reconnects || p.acked == 0)
            .map(|p| {
                format!(
                    "{}: {} acks, errors {:?}, reconnects {:?} {:?}",
                    p.session, p.acked, p.errors, p.reconnects, p.reasons
                )
            })
            .collect();
        assert!(
            troubled.is_empty(),
            "{} bots in trouble (at most {reconnects} reconnects each):\n{}",
            troubled.len(),
            troubled.join("\n")
        );
        let total: usize = played.iter().map(|p| p.reconnects.len()).sum();
        let acked: u64 = played.iter().map(|p| p.acked).sum();
        println!("bots: {acked} actions acknowledged, {total} reconnects, no errors");
        played
    }

    /// Every bot's last acknowledged action is in its session's journal:
    /// its id, retried over HTTP on the session's owner now, gets the
    /// position it was acknowledged at.
    fn assert_acks_kept(&self, played: &[Played]) {
        for p in played {
            let (id, seq) = p.last_ack.clone().expect("an ack");
            let (owner, _) = owner_of(&self.nodes, &p.session);
            let token = &self
                .sessions
                .iter()
                .find(|(s, _)| *s == p.session)
                .expect("session")
                .1[0];
            let body = json!({"id": id, "action": {"type": "move", "dq": 0, "dr": 1}}).to_string();
            let (status, again) = owner.http(
                "POST",
                &format!("/v1/sessions/{}/actions", p.session),
                Some(token),
                body.as_bytes(),
            );
            assert_eq!(status, 200, "{again}");
            assert_eq!(
                again["seq"].as_u64(),
                Some(seq),
                "{}: acknowledged action {id} is lost: {again}",
                p.session
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_deploy_moves_every_session_exactly_and_bots_notice_nothing() {
    let _heavy = HEAVY.lock().await;
    let mut load = Load::start(3, 100, CONFIG);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Replace every node, one by one: start the new one, then SIGTERM the old.
    for i in 1..=3 {
        let (old, new) = (format!("node-{i}"), format!("node-{}", i + 3));
        load.join(&new, CONFIG);
        let leaving = load.take_out(&old);
        let started = Instant::now();
        let status = tokio::task::spawn_blocking(move || leaving.terminate())
            .await
            .expect("joined");
        println!("{old} drained and exited in {:?}", started.elapsed());
        assert!(status.success(), "{old} exited with {status} after SIGTERM");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // No bot saw an error; each reconnected at most once per node replaced.
    let played = load.played(3).await;

    // Every session is live on a new node, arrived with the hash it had at
    // the fence, and equals a replay of its journal.
    let (mut cutovers, mut ready) = (Vec::new(), Vec::new());
    // Per session, for `scripts/demo-rolling-deploy`.
    println!(
        "{:<18} {:>8} -> {:<8} {:>9} {:>10} {:>6} {:>5}  reconnects",
        "session", "from", "to", "snapshot", "restored", "exact", "acks"
    );
    for ((id, _), p) in load.sessions.iter().zip(&played) {
        let (owner, name) = owner_of(&load.nodes, id);
        let (status, summary) = owner.admin("GET", &format!("/v1/sessions/{id}"), &Value::Null);
        assert_eq!(status, 200, "{summary} on {name}");
        let arrival = &summary["arrival"];
        println!(
            "{id:<18} {:>8} -> {name:<8} {:>9} {:>7.1} ms {:>6} {:>5}  {:?}",
            arrival["from"].as_str().unwrap_or("-"),
            arrival["snapshot"],
            arrival["ready_ms"].as_f64().unwrap_or(f64::NAN),
            arrival["exact"],
            p.acked,
            p.reconnects
        );
        assert!(
            arrival["from"].is_string(),
            "{id} was not handed over: {summary}"
        );
        assert_eq!(
            arrival["exact"], true,
            "{id}: the hash after restore differs from the one at the fence: {arrival}"
        );
        assert!(
            arrival["snapshot"].as_u64() > Some(0),
            "{id} replayed its whole journal: {arrival}"
        );
        cutovers.extend(arrival["cutover_ms"].as_f64());
        ready.extend(arrival["ready_ms"].as_f64());
        assert_replica_equals_owner(&load.nodes, id, "after the deploy");
    }
    // A retried action id is answered from the new owner's history.
    load.assert_acks_kept(&played);
    // And an independent replay of a few, through the CLI.
    for (id, _) in load.sessions.iter().take(5) {
        owner_of(&load.nodes, id).0.assert_replay_agrees(id);
    }
    let n = ready.len();
    println!(
        "fence to restored on the new owner, {n} handoffs: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&mut ready, 0.5),
        percentile(&mut ready, 0.99)
    );
    let n = cutovers.len();
    println!(
        "fence to the first action applied there (bots act every 250 ms), {n} handoffs: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&mut cutovers, 0.5),
        percentile(&mut cutovers, 0.99)
    );
}

/// A node killed with SIGKILL under load: in replicated mode, every
/// session is live again on the others within a bounded time (printed),
/// and no acknowledged action is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_loses_no_acknowledged_action() {
    let _heavy = HEAVY.lock().await;
    let mut load = Load::start(3, 60, CONFIG);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = load.take_out("node-1");
    let killed = Instant::now();
    victim.kill();
    // The sessions it owned fail over by themselves; those it replicated
    // wait for it to be declared gone, as an operator (or an orchestrator
    // that deleted the machine) does.
    let evicted = load.evict("node-1");
    let live = load.until_all_live(killed, Duration::from_secs(20)).await;
    println!(
        "after kill -9 of one node of 3 (evicted {evicted:.0} ms later), every one of {} sessions was live again within {:.0} ms (p50 {:.0} ms)",
        live.len(),
        live[live.len() - 1],
        live[live.len() / 2]
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Bots on the killed node reconnect once; relayed ones follow.
    let played = load.played(2).await;
    // Owned by running nodes (`owner_of` says so), with every ack kept.
    load.assert_acks_kept(&played);
}

/// The target of a handoff dies while the old node drains: the drain
/// hands its sessions to the other nodes instead (or, for a session whose
/// transfer already went out, it fails over from the target to its
/// replica), and every session stays live with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_target_killed_mid_drain_loses_nothing() {
    let _heavy = HEAVY.lock().await;
    let mut load = Load::start(3, 60, CONFIG);
    load.join("node-4", CONFIG);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let old = load.take_out("node-1");
    let target = load.take_out("node-4");
    old.signal_term();
    // The new node takes most of the sessions: kill it while they move.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let killed = Instant::now();
    target.kill();
    let status = tokio::task::spawn_blocking(move || old.wait())
        .await
        .expect("joined");
    println!("node-1 exited with {status} after its target died");
    load.evict("node-4");
    let live = load.until_all_live(killed, Duration::from_secs(30)).await;
    println!(
        "every session live again {:.0} ms after the target died",
        live[live.len() - 1]
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let played = load.played(3).await;
    load.assert_acks_kept(&played);
}

/// A drain that cannot finish by its deadline: the node exits 1, and the
/// sessions it still owned fail over to their replicas like after a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_deadline_expiring_exits_1_and_sessions_fail_over() {
    let _heavy = HEAVY.lock().await;
    let mut load = Load::new();
    load.join("node-1", CONFIG);
    load.join("node-2", CONFIG);
    // Too short for any handoff to finish.
    load.join("node-3", "[cluster]\ndrain_deadline_ms = 1\n");
    for i in 0..40 {
        load.add_sessions(&format!("node-{}", i % 3 + 1), 1);
    }
    let left = load
        .sessions
        .iter()
        .filter(|(id, _)| owner_of(&load.nodes, id).1 == "node-3")
        .count();
    assert!(left > 0, "no session was placed on node-3");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leaving = load.take_out("node-3");
    let stopped = Instant::now();
    let status = tokio::task::spawn_blocking(move || leaving.terminate())
        .await
        .expect("joined");
    assert_eq!(
        status.code(),
        Some(1),
        "a drain past its deadline exits 1, got {status}"
    );
    let live = load.until_all_live(stopped, Duration::from_secs(20)).await;
    println!(
        "drain deadline expired with sessions left: node-3 exited 1, every session live again within {:.0} ms",
        live[live.len() - 1]
    );
    // A bot on node-3 itself reconnects once; relayed ones follow the
    // session to its new owner without a reconnect.
    let played = load.played(1).await;
    load.assert_acks_kept(&played);
}

/// Two nodes stopped at once (a deploy replacing two at a time): each
/// hands its sessions to the nodes that stay, never to the other leaving
/// one, and both exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_stopped_at_once_both_hand_off_to_the_rest() {
    let _heavy = HEAVY.lock().await;
    let mut load = Load::start(3, 60, CONFIG);
    load.join("node-4", CONFIG);
    load.join("node-5", CONFIG);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let first = load.take_out("node-1");
    let second = load.take_out("node-2");
    first.signal_term();
    second.signal_term();
    let (first, second) = tokio::task::spawn_blocking(move || (first.wait(), second.wait()))
        .await
        .expect("joined");
    assert!(first.success(), "node-1 exited with {first}");
    assert!(second.success(), "node-2 exited with {second}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let played = load.played(2).await;
    load.assert_acks_kept(&played);
    for (id, _) in &load.sessions {
        let (owner, name) = owner_of(&load.nodes, id);
        let (status, summary) = owner.admin("GET", &format!("/v1/sessions/{id}"), &Value::Null);
        assert_eq!(status, 200, "{id} on {name}: {summary}");
        if summary["arrival"]["from"].is_string() {
            assert_eq!(summary["arrival"]["exact"], true, "{id}: {summary}");
        }
    }
}

/// Hosts of version 1 and 2 side by side during a roll. Version-1 hosts
/// (standing in: they offer only the wire protocol `baton/1`) know no
/// snapshot transfers and no fence notes, so a session they hand over is
/// rebuilt on its version-2 target from the journal alone, with no hash to
/// compare; between version-2 hosts it arrives from a shipped snapshot with
/// the hash at the fence. Both kinds lose nothing, and sessions only ever
/// move to the newest version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roll_from_version_1_to_version_2_hosts_speaks_each_peer_s_wire_version() {
    const V1: &str = "snapshot_every = 8\n[cluster]\ndrain_deadline_ms = 60000\n\
                      host_version = 1\nwire_versions = [\"baton/1\"]\n";
    const V2: &str = "snapshot_every = 8\n[cluster]\ndrain_deadline_ms = 60000\nhost_version = 2\n";
    let _heavy = HEAVY.lock().await;
    let mut load = Load::start(2, 30, V1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.join("node-3", V2);
    load.join("node-4", V2);
    for old in ["node-1", "node-2"] {
        let leaving = load.take_out(old);
        let status = tokio::task::spawn_blocking(move || leaving.terminate())
            .await
            .expect("joined");
        assert!(status.success(), "{old} exited with {status}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (id, _) in &load.sessions {
        let (owner, name) = owner_of(&load.nodes, id);
        let (_, summary) = owner.admin("GET", &format!("/v1/sessions/{id}"), &Value::Null);
        let arrival = &summary["arrival"];
        assert_eq!(
            arrival["snapshot"], 0,
            "{id} on {name} got a snapshot from a baton/1 host: {arrival}"
        );
        assert!(
            arrival["fence_digest"].is_null(),
            "{id} on {name} got a fence note from a baton/1 host: {arrival}"
        );
        assert_replica_equals_owner(&load.nodes, id, "after the roll from version 1");
    }
    // Now between version-2 hosts.
    load.join("node-5", V2);
    let leaving = load.take_out("node-3");
    let status = tokio::task::spawn_blocking(move || leaving.terminate())
        .await
        .expect("joined");
    assert!(status.success(), "node-3 exited with {status}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Three nodes stopped: a bot reconnects at most once for each.
    let played = load.played(3).await;
    load.assert_acks_kept(&played);
    let mut exact = 0;
    for (id, _) in &load.sessions {
        let (owner, _) = owner_of(&load.nodes, id);
        let (_, summary) = owner.admin("GET", &format!("/v1/sessions/{id}"), &Value::Null);
        let arrival = &summary["arrival"];
        if arrival["from"] == "node-3" {
            assert_eq!(arrival["exact"], true, "{id}: {arrival}");
            assert!(arrival["snapshot"].as_u64() > Some(0), "{id}: {arrival}");
            exact += 1;
        }
        assert_replica_equals_owner(&load.nodes, id, "after the roll between version 2");
    }
    assert!(exact > 0, "no session was handed between version-2 hosts");
    println!("{exact} sessions handed between version-2 hosts arrived exact from a snapshot");
}

/// Every node of the cluster killed at once (a power cut), then started
/// again under the same names on the same stores: every session resumes
/// from the nodes' stores, with exactly the state it had, and every
/// acknowledged action is still answered from its history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cluster_restart_resumes_every_session_from_the_stores() {
    let _heavy = HEAVY.lock().await;
    let mut load = Load::start(3, 30, CONFIG);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let played = load.played(0).await;
    // Each session's exact state before the outage.
    let mut before = BTreeMap::new();
    for (id, _) in &load.sessions {
        let (owner, _) = owner_of(&load.nodes, id);
        let (status, exported) =
            owner.admin("GET", &format!("/v1/sessions/{id}/export"), &Value::Null);
        assert_eq!(status, 200, "{exported}");
        before.insert(
            id.clone(),
            (exported["position"].clone(), exported["digest"].clone()),
        );
    }
    let names: Vec<String> = load.nodes.keys().cloned().collect();
    for name in &names {
        load.take_out(name).kill();
    }
    let restarted = Instant::now();
    for name in &names {
        load.join(name, CONFIG);
    }
    let joined = restarted.elapsed();
    // Every session comes back on some node, exactly as it was.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (id, _) in &load.sessions {
        loop {
            let any = load.nodes.values().next().expect("a node");
            let (owner, _, epoch) = placement(any, id);
            let (status, exported) =
                load.nodes[&owner].admin("GET", &format!("/v1/sessions/{id}/export"), &Value::Null);
            if status == 200 && epoch > 1 {
                assert_eq!(
                    (exported["position"].clone(), exported["digest"].clone()),
                    before[id],
                    "{id} came back on {owner} with another state"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id} did not come back within 30 s: {status} {exported} on {owner} (epoch {epoch})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    println!(
        "full-cluster restart of 3 nodes: all ready {:.0} ms after the first started, every one of {} sessions live again {:.0} ms after it",
        joined.as_secs_f64() * 1e3,
        load.sessions.len(),
        restarted.elapsed().as_secs_f64() * 1e3
    );
    load.assert_acks_kept(&played);
    for (id, _) in &load.sessions {
        assert_replica_equals_owner(&load.nodes, id, "after the full-cluster restart");
    }
}

/// `POST /v1/upgrades` through `node`: the report.
fn upgrade(node: &Node, request: Value) -> Value {
    let (status, report) = node.admin("POST", "/v1/upgrades", &request);
    assert_eq!(status, 200, "{request}: {report}");
    report
}

/// Rule upgrades under load, across a rolling deploy: sessions started on
/// 1.0.0 move to a new host and stay on 1.0.0; a broken 2.0.0 leaves every
/// one where it was, with its reason; a canary moves a share, then the rest
/// move. Bots play all along and lose nothing; every replica (which
/// replays the switch from the journal) and every independent replay
/// equals its owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_upgrades_under_load_across_a_rolling_deploy_lose_nothing_and_replay_exactly() {
    let _heavy = HEAVY.lock().await;
    let mut load = Load::start(3, 30, CONFIG);
    for component in [&baton_games::MINOTAUR_V2, &baton_games::MINOTAUR_V2_BROKEN] {
        load.nodes["node-1"].publish(component);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A rolling deploy of one host: its sessions resume on 1.0.0.
    load.join("node-4", CONFIG);
    let leaving = load.take_out("node-1");
    let status = tokio::task::spawn_blocking(move || leaving.terminate())
        .await
        .expect("joined");
    assert!(status.success(), "node-1 exited with {status}");
    let on = |load: &Load, id: &str| {
        let (owner, name) = owner_of(&load.nodes, id);
        let (status, summary) = owner.admin("GET", &format!("/v1/sessions/{id}"), &Value::Null);
        assert_eq!(status, 200, "{id} on {name}: {summary}");
        summary
    };
    for (id, _) in &load.sessions {
        assert_eq!(on(&load, id)["module"], "minotaur@1.0.0", "{id}");
    }

    // The broken version: every session stays, each with the reason.
    let through = &load.nodes["node-2"];
    let report = upgrade(
        through,
        json!({"from": "minotaur@1.0.0", "to": "minotaur@2.0.0-broken"}),
    );
    assert_eq!(report["stayed"], 30, "{report}");
    assert_eq!(report["moved"], 0, "{report}");
    for s in report["sessions"].as_array().expect("sessions") {
        let reason = s["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("broken on purpose"), "{s}");
    }
    // A canary, then the rest.
    let canary = upgrade(
        through,
        json!({"from": "minotaur", "to": "minotaur@2.0.0", "fraction": 0.3}),
    );
    let moved = canary["moved"].as_u64().expect("moved");
    assert_eq!(canary["stayed"], 0, "{canary}");
    assert_eq!(
        moved + canary["skipped"].as_u64().expect("skipped"),
        30,
        "{canary}"
    );
    assert!(
        (1..30).contains(&moved),
        "a canary of 30% moved {moved} of 30"
    );
    let rest = upgrade(
        through,
        json!({"from": "minotaur@1.0.0", "to": "minotaur@2.0.0"}),
    );
    assert_eq!(rest["moved"].as_u64(), Some(30 - moved), "{rest}");
    assert_eq!(rest["stayed"], 0, "{rest}");
    println!(
        "upgrades: broken 30 stayed; canary moved {moved}; then the other {}",
        30 - moved
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // One reconnect at most, for the host replaced; nothing lost.
    let played = load.played(1).await;
    load.assert_acks_kept(&played);
    for (id, _) in &load.sessions {
        let summary = on(&load, id);
        assert_eq!(summary["module"], "minotaur@2.0.0", "{id}: {summary}");
        assert_eq!(summary["upgrade"]["from"], "minotaur@1.0.0", "{summary}");
        assert_replica_equals_owner(&load.nodes, id, "after the upgrade");
    }
    for (id, _) in load.sessions.iter().take(3) {
        owner_of(&load.nodes, id).0.assert_replay_agrees(id);
    }
    let counted = load.nodes.values().any(|node| {
        let (_, metrics) = node.http("GET", "/metrics", None, b"");
        metrics
            .as_str()
            .unwrap_or_default()
            .contains("baton_upgrades_total{module=\"minotaur@2.0.0\",result=\"moved\"}")
    });
    assert!(counted, "no node counts its upgraded sessions");
}
