//! Ticks from the node's clock, hibernation, separate management address,
//! finished results, configuration from a file.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::Node;

fn view(node: &Node, id: &str, token: &str) -> Value {
    let (status, view) = node.http("GET", &format!("/v1/sessions/{id}/view"), Some(token), b"");
    assert_eq!(status, 200, "{view}");
    view
}

/// Waits up to `limit` for `check` to hold; the deadline is what is waited
/// for, the checks between are cheap reads.
fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn rounds_tick_on_time_idle_sessions_hibernate_and_wake_and_results_stay() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "hibernate_after_ms = 300\nsnapshot_every = 8\n").unwrap();
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let node = Node::start(
        dir.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--admin-listen",
            &admin_port.to_string(),
        ],
    );
    assert_ne!(node.addr, node.admin_addr);
    // Management is not served on the players' address.
    let (status, _) = node.http("GET", "/v1/sessions", Some(&node.token), b"");
    assert_eq!(status, 404);

    let request = json!({
        "module": "minotaur",
        "players": [{"id": "ann", "name": "Ann"}, {"id": "bob", "name": "Bob"}],
        "options": {"radius": 2, "hit_points": 1, "round_ms": 200, "positions": [{"q": 0, "r": 0}, {"q": 1, "r": 0}]},
    });
    let (status, created) = node.admin("POST", "/v1/sessions", &request);
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let ann = created["tokens"]["ann"].as_str().unwrap().to_owned();

    // Nobody acts: the node's clock ends rounds when the rules asked.
    assert!(
        eventually(
            Duration::from_secs(10),
            || view(&node, &id, &ann)["view"]["round"].as_u64() >= Some(4)
        ),
        "rounds did not advance on their own"
    );

    // Both attack: they fall together, the game ends, the result stays.
    let bob = created["tokens"]["bob"].as_str().unwrap().to_owned();
    for (token, target) in [(&ann, "bob"), (&bob, "ann")] {
        let body = json!({"action": {"type": "attack", "target": target}}).to_string();
        let (status, reply) = node.http(
            "POST",
            &format!("/v1/sessions/{id}/actions"),
            Some(token),
            body.as_bytes(),
        );
        assert_eq!(
            (status, reply["result"].as_str()),
            (200, Some("accepted")),
            "{reply}"
        );
    }
    let summary = |node: &Node| {
        node.admin("GET", &format!("/v1/sessions/{id}"), &Value::Null)
            .1
    };
    assert_eq!(summary(&node)["status"], "finished");
    assert_eq!(summary(&node)["result"]["draw"], json!(["ann", "bob"]));

    // With no timer left the session goes idle and hibernates...
    assert!(
        eventually(Duration::from_secs(10), || summary(&node)["live"] == false),
        "it never hibernated"
    );
    // ...and wakes on the next call, result intact.
    let woken = view(&node, &id, &ann);
    assert_eq!(summary(&node)["live"], true);
    assert_eq!(woken["status"], "finished");
    assert_eq!(woken["view"]["outcome"]["draw"], json!(["ann", "bob"]));
}
