//! A cluster of real `baton serve` processes on loopback: certificates,
//! start-up, and what the tests ask every node.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Node, Socket};

pub(crate) fn baton(args: &[&str], dir: &Path) {
    let status = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .arg("--dir")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("baton runs");
    assert!(status.success(), "baton {args:?} failed");
}

/// A CA in `root/dir` and a certificate from it for each of `names`;
/// returns the directory.
pub(crate) fn certify(root: &Path, dir: &str, names: &[&str]) -> PathBuf {
    let certs = root.join(dir);
    std::fs::create_dir_all(&certs).expect("dir");
    baton(&["certs", "ca"], &certs);
    for name in names {
        baton(&["certs", "node", name], &certs);
    }
    certs
}

/// A UDP port free right now on loopback.
pub(crate) fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free port")
        .port()
}

/// A cluster node: `name`, certificates in `certs`, seeds.
pub(crate) fn start(root: &Path, certs: &Path, name: &str, port: u16, seeds: &[u16]) -> Node {
    // Checkpoints every few entries, so that replicas get snapshots (whole,
    // then deltas) within a handful of actions.
    start_with(root, certs, name, port, seeds, "snapshot_every = 3\n")
}

/// [`start`] with the node's TOML configuration.
pub(crate) fn start_with(
    root: &Path,
    certs: &Path,
    name: &str,
    port: u16,
    seeds: &[u16],
    config: &str,
) -> Node {
    let data = root.join(name);
    let listen = format!("127.0.0.1:{port}");
    let seeds: Vec<String> = seeds.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let text = config;
    let config = root.join(format!("{name}.toml"));
    std::fs::write(&config, text).expect("config written");
    let mut args = vec![
        "--config",
        config.to_str().expect("utf-8 path"),
        "--node-name",
        name,
        "--cluster-listen",
        &listen,
        "--certs-dir",
        certs.to_str().expect("utf-8 path"),
        "--replication",
        "replicated",
    ];
    for seed in &seeds {
        args.extend(["--seed", seed]);
    }
    Node::start(&data, &args)
}

/// Waits until `node` sees `peers` (by name) up.
pub(crate) fn until_peers(node: &Node, peers: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, view) = node.admin("GET", "/v1/cluster", &Value::Null);
        assert_eq!(status, 200, "{view}");
        let seen: BTreeSet<&str> = view["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        if peers.iter().all(|p| seen.contains(p)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} sees only {seen:?}",
            view["name"]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Where a session lives, as `node` knows it: (owner, replica, epoch).
/// Records reach every node within a few heartbeats.
pub(crate) fn placement(node: &Node, id: &str) -> (String, String, u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let state = loop {
        let (status, state) =
            node.admin("GET", &format!("/v1/sessions/{id}/replica"), &Value::Null);
        if status == 200 {
            break state;
        }
        assert!(status == 404 && Instant::now() < deadline, "{state}");
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        state["owner"].as_str().expect("owner").to_owned(),
        state["replica"].as_str().expect("replica").to_owned(),
        state["epoch"].as_u64().expect("epoch"),
    )
}

/// The next reply or close, skipping events.
pub(crate) async fn reply(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("an answer within 10 s");
        match message {
            Some(Ok(Message::Text(text))) => {
                let value: Value = serde_json::from_str(&text).expect("JSON");
                if value["type"] != "events" {
                    return value;
                }
            }
            Some(Ok(Message::Close(frame))) => {
                return json!({"closed": frame.map(|f| u16::from(f.code))});
            }
            Some(Ok(_)) => continue,
            None | Some(Err(_)) => return json!({"closed": null}),
        }
    }
}

/// The owner's live state and the replica's rebuilt copy, equal. Players
/// may still be acting: the two are read one after the other, so they are
/// compared once both are read at the same position (or after 5 s).
pub(crate) fn assert_replica_equals_owner(nodes: &BTreeMap<String, Node>, id: &str, when: &str) {
    let any = nodes.values().next().expect("a node");
    let (owner, replica, _) = placement(any, id);
    let read = |node: &str, path: &str| {
        let (status, state) =
            nodes[node].admin("GET", &format!("/v1/sessions/{id}/{path}"), &Value::Null);
        assert_eq!(status, 200, "{state}");
        (
            state["position"].as_u64(),
            state["digest"].as_str().map(str::to_owned),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let exported = read(&owner, "export");
        let copy = read(&replica, "replica");
        if exported.0 == copy.0 || Instant::now() >= deadline {
            assert_eq!(
                exported, copy,
                "{when}: {id}'s replica on {replica} differs from its owner {owner}"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the replica rebuilds `id` from a snapshot its owner shipped
/// (not from the whole journal) and still equals the owner.
pub(crate) fn until_replica_snapshot(nodes: &BTreeMap<String, Node>, id: &str, when: &str) -> u64 {
    let any = nodes.values().next().expect("a node");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (owner, replica, _) = placement(any, id);
        let (status, copy) =
            nodes[&replica].admin("GET", &format!("/v1/sessions/{id}/replica"), &Value::Null);
        assert_eq!(status, 200, "{copy}");
        let snapshot = copy["snapshot"].as_u64().expect("snapshot");
        if snapshot > 0 {
            assert_replica_equals_owner(nodes, id, when);
            return snapshot;
        }
        if Instant::now() > deadline {
            let (_, metrics) = nodes[&owner].http("GET", "/metrics", None, b"");
            let metrics: Vec<&str> = metrics
                .as_str()
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("snapshot") && !l.contains("bucket"))
                .collect();
            panic!("{when}: {replica} never got a snapshot of {id}: {copy}\n{metrics:#?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The sum of a counter over every node's metrics, by its labels' text.
pub(crate) fn counter(nodes: &BTreeMap<String, Node>, metric: &str, labels: &str) -> u64 {
    nodes
        .values()
        .map(|node| node_counter(node, metric, labels))
        .sum()
}

/// The sum of `metric`'s series with `labels` on one node.
pub(crate) fn node_counter(node: &Node, metric: &str, labels: &str) -> u64 {
    let (_, text) = node.http("GET", "/metrics", None, b"");
    let text = text.as_str().unwrap_or_default().to_owned();
    text.lines()
        .filter(|line| line.starts_with(metric) && line.contains(labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

pub(crate) fn create(through: &Node) -> (String, Vec<String>) {
    // The cluster may still be forming: placement needs two ready nodes.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let request = json!({
            "module": "minotaur",
            "players": [{"id": "ann", "name": "Ann"}, {"id": "bob", "name": "Bob"}],
            "options": {"radius": 4, "hit_points": 99, "max_rounds": 100000, "round_ms": 600000,
                        "positions": [{"q": -1, "r": 0}, {"q": 1, "r": 0}]},
            "seed": 7,
        });
        let (status, created) = through.admin("POST", "/v1/sessions", &request);
        if status == 201 {
            let id = created["id"].as_str().expect("id").to_owned();
            let tokens = ["ann", "bob"]
                .iter()
                .map(|p| created["tokens"][p].as_str().expect("token").to_owned())
                .collect();
            return (id, tokens);
        }
        assert!(
            status == 503 && Instant::now() < deadline,
            "create: {status} {created}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
