//! Real `baton serve` processes forming a cluster on loopback: formation
//! from one seed, placement, play through any node, replica state equal to
//! the owner's after every acknowledged action (rebuilt from the snapshots
//! the owner ships, as deltas and whole), a foreign CA refused, and a
//! frozen owner that acknowledges nothing once its sessions moved, and a
//! joining node ready only with the cluster's modules.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fleet::{
    assert_replica_equals_owner, certify, counter, create, free_udp_port, node_counter, placement,
    reply, start, until_peers, until_replica_snapshot,
};
use crate::support::{connect, send};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_from_one_seed_place_replicate_and_fence_a_frozen_owner() {
    let root = tempfile::tempdir().expect("tempdir");
    let certs = certify(root.path(), "certs", &["node-a", "node-b", "node-c"]);
    let ports = [free_udp_port(), free_udp_port(), free_udp_port()];
    let mut nodes = BTreeMap::new();
    nodes.insert(
        "node-a".to_owned(),
        start(root.path(), &certs, "node-a", ports[0], &[]),
    );
    // b and c know only a's address.
    nodes.insert(
        "node-b".to_owned(),
        start(root.path(), &certs, "node-b", ports[1], &[ports[0]]),
    );
    nodes.insert(
        "node-c".to_owned(),
        start(root.path(), &certs, "node-c", ports[2], &[ports[0]]),
    );
    until_peers(&nodes["node-a"], &["node-b", "node-c"]);
    until_peers(&nodes["node-b"], &["node-a", "node-c"]);
    until_peers(&nodes["node-c"], &["node-a", "node-b"]);

    // A node whose certificate comes from another CA is never let in.
    let stranger_certs = certify(root.path(), "stranger", &["node-x"]);
    let stranger = start(
        root.path(),
        &stranger_certs,
        "node-x",
        free_udp_port(),
        &ports,
    );

    // Sessions created through every node land on more than one node
    // (rendezvous hashing: all eight on one of three nodes is a 1-in-2187
    // chance).
    let names: Vec<String> = nodes.keys().cloned().collect();
    let mut sessions = Vec::new();
    for i in 0..8 {
        let (id, tokens) = create(&nodes[&names[i % 3]]);
        sessions.push((id, tokens));
    }
    let owners: BTreeSet<String> = sessions
        .iter()
        .map(|(id, _)| placement(&nodes["node-a"], id).0)
        .collect();
    assert!(owners.len() >= 2, "all sessions on {owners:?}");

    // Playable through any node; the replica equals the owner after every
    // acknowledged action.
    for (n, (id, tokens)) in sessions.iter().enumerate() {
        assert_replica_equals_owner(&nodes, id, "after the start");
        let through = &nodes[&names[(n + 1) % 3]];
        let mut socket = connect(through, id).await;
        send(&mut socket, json!({"type": "join", "token": tokens[0]})).await;
        let joined = reply(&mut socket).await;
        assert_eq!(joined["type"], "joined", "{joined}");
        for k in 0..3 {
            let dr = if k % 2 == 0 { 1 } else { -1 };
            send(
                &mut socket,
                json!({"type": "act", "id": format!("m{k}"), "action": {"type": "move", "dq": 0, "dr": dr}}),
            )
            .await;
            let ack = reply(&mut socket).await;
            assert_eq!(ack["type"], "ack", "{ack}");
            // One action per round: later ones are refused by the rules,
            // and journaled all the same.
            let expected = if k == 0 { "accepted" } else { "rejected" };
            assert_eq!(ack["result"], expected, "{ack}");
            assert_replica_equals_owner(&nodes, id, &format!("after action {k}"));
        }
        until_replica_snapshot(&nodes, id, "after three actions");
    }
    // The first snapshot a replica gets is whole; later ones are deltas.
    let full = counter(&nodes, "baton_replica_snapshots_total", r#"kind="full""#);
    let deltas = counter(&nodes, "baton_replica_snapshots_total", r#"kind="delta""#);
    assert!(
        full >= 8 && deltas >= 4,
        "{full} full snapshots and {deltas} deltas shipped"
    );

    // The stranger saw nobody and nobody saw it.
    let (_, view) = stranger.admin("GET", "/v1/cluster", &Value::Null);
    assert_eq!(view["peers"], json!([]), "node-x sees {view}");
    for node in nodes.values() {
        let (_, view) = node.admin("GET", "/v1/cluster", &Value::Null);
        assert!(!view["peers"].to_string().contains("node-x"), "{view}");
    }
    let (status, refused) = stranger.admin(
        "POST",
        "/v1/sessions",
        &json!({"module": "minotaur", "players": [{"id": "x", "name": "X"}]}),
    );
    assert_eq!(status, 503, "node-x created a session: {refused}");

    // Freeze an owner past its lease: its sessions move to their replicas.
    // Thawed, it acknowledges nothing for them: its players follow the
    // session to the new owner, which may answer them.
    let (id, tokens) = &sessions[0];
    let (frozen, replica, epoch) = placement(&nodes["node-a"], id);
    let mut direct = connect(&nodes[&frozen], id).await;
    send(&mut direct, json!({"type": "join", "token": tokens[1]})).await;
    assert_eq!(reply(&mut direct).await["type"], "joined");
    let accepted = r#"result="accepted""#;
    let accepted_before = node_counter(&nodes[&frozen], "baton_actions_total", accepted);
    let pid = nodes[&frozen].pid().to_string();
    Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .expect("kill");
    let watcher = &nodes[&replica];
    let stopped = Instant::now();
    let deadline = stopped + Duration::from_secs(20);
    let moved_in = loop {
        let (owner, _, now) = placement(watcher, id);
        if owner != frozen && now > epoch {
            break stopped.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{id} never moved off frozen {frozen}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    println!("{id} moved off frozen {frozen} in {moved_in:?}");
    Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .expect("kill");
    send(
        &mut direct,
        json!({"type": "act", "id": "late", "action": {"type": "move", "dq": 0, "dr": 1}}),
    )
    .await;
    let late = reply(&mut direct).await;
    assert_eq!(
        node_counter(&nodes[&frozen], "baton_actions_total", accepted),
        accepted_before,
        "the thawed owner acknowledged: {late}"
    );
    // The session plays on at its new owner, reached through any node.
    let (owner, _, _) = placement(watcher, id);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut socket = connect(&nodes[&names[0]], id).await;
        send(&mut socket, json!({"type": "join", "token": tokens[1]})).await;
        if reply(&mut socket).await["type"] == "joined" {
            send(
                &mut socket,
                json!({"type": "act", "id": "after", "action": {"type": "move", "dq": 0, "dr": -1}}),
            )
            .await;
            let ack = reply(&mut socket).await;
            if ack["type"] == "ack" {
                assert_eq!(ack["result"], "accepted", "{ack}");
                break;
            }
        }
        assert!(Instant::now() < deadline, "{id} not playable on {owner}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_replica_equals_owner(&nodes, id, "after the move");
    // The new owner's replica first gets a whole snapshot.
    until_replica_snapshot(&nodes, id, "after the move");
}

/// A node joining a cluster turns ready only once it holds every module the
/// cluster records, so that a session a load balancer places on it can
/// start; until then `/readyz` says why not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_turns_ready_only_with_the_clusters_modules() {
    let root = tempfile::tempdir().expect("tempdir");
    let certs = certify(root.path(), "certs", &["node-a", "node-b"]);
    let ports = [free_udp_port(), free_udp_port()];
    let a = start(root.path(), &certs, "node-a", ports[0], &[]);
    a.publish(&baton_games::MINOTAUR_V2);
    let b = start(root.path(), &certs, "node-b", ports[1], &[ports[0]]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut reasons = BTreeSet::new();
    loop {
        let (status, body) = b.http("GET", "/readyz", None, b"");
        if status == 200 {
            break;
        }
        let body = body.as_str().unwrap_or_default().trim().to_owned();
        assert_eq!(status, 503, "{body}");
        assert!(body.starts_with("not ready: "), "{body}");
        reasons.insert(body);
        assert!(
            Instant::now() < deadline,
            "node-b never turned ready: {reasons:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let (_, modules) = b.admin("GET", "/v1/modules", &Value::Null);
    assert!(
        modules.to_string().contains("minotaur@2.0.0"),
        "node-b turned ready without the cluster's minotaur@2.0.0: {modules}"
    );
    println!("node-b was not ready before: {reasons:?}");
}
