//! Rule upgrades of live sessions on one real node: what a session keeps,
//! a new version that fails on trial taking the session back, the journal
//! replaying through both switches (locally, and after `kill -9`), and the
//! default version new sessions start on.

use serde_json::{Value, json};

use crate::support::Node;

fn view(node: &Node, id: &str, token: &str) -> Value {
    let (status, view) = node.http("GET", &format!("/v1/sessions/{id}/view"), Some(token), b"");
    assert_eq!(status, 200, "{view}");
    view["view"].clone()
}

fn act(node: &Node, id: &str, token: &str, action: Value) -> (u16, Value) {
    let body = json!({ "action": action }).to_string();
    node.http(
        "POST",
        &format!("/v1/sessions/{id}/actions"),
        Some(token),
        body.as_bytes(),
    )
}

fn summary(node: &Node, id: &str) -> Value {
    let (status, summary) = node.admin("GET", &format!("/v1/sessions/{id}"), &Value::Null);
    assert_eq!(status, 200, "{summary}");
    summary
}

/// A two-player game on `module` with `options`: its id, ann's token and
/// bob's.
fn game(node: &Node, module: &str, options: Value, seed: u64) -> (String, String, String) {
    let (status, created) = node.admin(
        "POST",
        "/v1/sessions",
        &json!({"module": module,
                "players": [{"id": "ann", "name": "Ann"}, {"id": "bob", "name": "Bob"}],
                "options": options, "seed": seed}),
    );
    assert_eq!(status, 201, "{created}");
    let token = |p: &str| created["tokens"][p].as_str().expect("token").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();
    (id, token("ann"), token("bob"))
}

/// A board where ann stands next to bob, with rounds that never end by
/// themselves.
fn duel() -> Value {
    json!({"radius": 4, "hit_points": 9, "round_ms": 600000,
           "positions": [{"q": 0, "r": 0}, {"q": 1, "r": 0}]})
}

#[test]
fn a_live_session_upgrades_keeps_its_game_and_goes_back_when_the_new_version_traps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(dir.path(), &[]);
    for component in [
        &baton_games::MINOTAUR_V2,
        &baton_games::MINOTAUR_V2_BROKEN,
        &baton_games::MINOTAUR_V2_TRAP,
    ] {
        node.publish(component);
    }
    // Pre-releases never count as the newest version of a game.
    let (newest, _) = node.minotaur(&["ann", "bob", "cy"]);
    assert_eq!(summary(&node, &newest)["module"], "minotaur@2.0.0");

    // A game on 1.0.0 in progress: ann registered an attack on bob.
    let (id, ann, bob) = game(&node, "minotaur@1.0.0", duel(), 3);
    let (status, body) = act(&node, &id, &ann, json!({"type": "attack", "target": "bob"}));
    assert_eq!(status, 200, "{body}");
    let before = view(&node, &id, &ann);

    // The broken version: refused with its reason, nothing changes.
    let (status, report) = node.admin(
        "POST",
        "/v1/upgrades",
        &json!({"session": id, "to": "minotaur@2.0.0-broken"}),
    );
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["stayed"], 1, "{report}");
    let reason = report["sessions"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("broken on purpose"), "{report}");
    assert_eq!(summary(&node, &id)["module"], "minotaur@1.0.0");

    // 2.0.0: every player, position, hit point and registered action kept.
    let (status, report) = node.admin(
        "POST",
        "/v1/upgrades",
        &json!({"session": id, "to": "minotaur@2.0.0"}),
    );
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["moved"], 1, "{report}");
    let after = view(&node, &id, &ann);
    for key in ["round", "deadline", "radius"] {
        assert_eq!(after[key], before[key], "{key}");
    }
    for (b, a) in before["players"]
        .as_array()
        .expect("players")
        .iter()
        .zip(after["players"].as_array().expect("players"))
    {
        for key in ["id", "pos", "hp", "ready"] {
            assert_eq!(a[key], b[key], "{key} of {}", b["id"]);
        }
    }
    assert_eq!(
        after["players"][0]["registered"],
        json!({"type": "strike", "target": "bob"})
    );
    let upgraded = summary(&node, &id);
    assert_eq!(upgraded["module"], "minotaur@2.0.0", "{upgraded}");
    assert_eq!(upgraded["upgrade"]["state"], "on_trial", "{upgraded}");
    let (status, body) = act(&node, &id, &bob, json!({"type": "move", "dq": 0, "dr": 1}));
    assert_eq!(status, 200, "the new rules play: {body}");
    let (status, body) = node.admin(
        "POST",
        "/v1/upgrades",
        &json!({"session": id, "to": "minotaur@2.0.0"}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["stayed"], 1,
        "upgrading to the version it runs: {body}"
    );

    // A second game upgraded to 2.0.0-trap: its first action traps, and the
    // session goes back to 1.0.0 as it was before the upgrade.
    let (trapped, ann2, _) = game(&node, "minotaur@1.0.0", duel(), 4);
    let (status, body) = act(
        &node,
        &trapped,
        &ann2,
        json!({"type": "move", "dq": 0, "dr": -1}),
    );
    assert_eq!(status, 200, "{body}");
    let before = view(&node, &trapped, &ann2);
    let (status, report) = node.admin(
        "POST",
        "/v1/upgrades",
        &json!({"from": "minotaur@1.0.0", "to": "minotaur@2.0.0-trap"}),
    );
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["moved"], 1, "only the 1.0.0 game moves: {report}");
    let (status, body) = act(
        &node,
        &trapped,
        &ann2,
        json!({"type": "move", "dq": 1, "dr": 0}),
    );
    assert_eq!(status, 422, "the trap is the player's error: {body}");
    let back = summary(&node, &trapped);
    assert_eq!(back["module"], "minotaur@1.0.0", "{back}");
    assert_eq!(back["upgrade"]["state"], "rolled_back", "{back}");
    let why = back["upgrade"]["reason"].as_str().unwrap_or_default();
    assert!(why.contains("minotaur@2.0.0-trap"), "{back}");
    assert_eq!(
        view(&node, &trapped, &ann2),
        before,
        "the game as before the upgrade"
    );
    let (status, body) = act(
        &node,
        &trapped,
        &ann2,
        json!({"type": "move", "dq": 1, "dr": 0}),
    );
    assert_eq!(status, 200, "the old rules play on: {body}");
    let (_, metrics) = node.http("GET", "/metrics", None, b"");
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert!(
        metrics.contains(
            "baton_upgrades_total{module=\"minotaur@2.0.0-trap\",result=\"rolled_back\"} 1"
        ),
        "{metrics}"
    );

    // Both journals replay through their switches to the node's bytes...
    node.assert_replay_agrees(&id);
    node.assert_replay_agrees(&trapped);
    let upgraded_view = view(&node, &id, &ann);
    let trapped_view = view(&node, &trapped, &ann2);
    // ...and after kill -9 the node recovers each on its version.
    node.kill();
    let node = Node::start(dir.path(), &[]);
    assert_eq!(summary(&node, &id)["module"], "minotaur@2.0.0");
    assert_eq!(summary(&node, &trapped)["module"], "minotaur@1.0.0");
    assert_eq!(view(&node, &id, &ann)["players"], upgraded_view["players"]);
    assert_eq!(
        view(&node, &trapped, &ann2)["players"],
        trapped_view["players"]
    );
    node.assert_replay_agrees(&id);
}

#[test]
fn new_sessions_start_on_the_pinned_default_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("baton.toml");
    std::fs::write(&config, "default_versions = [\"minotaur@1.0.0\"]\n").expect("config");
    let node = Node::start(
        &dir.path().join("data"),
        &["--config", config.to_str().expect("utf-8")],
    );
    node.publish(&baton_games::MINOTAUR_V2);
    let (id, _) = node.minotaur(&["ann", "bob"]);
    assert_eq!(summary(&node, &id)["module"], "minotaur@1.0.0");
    // An exact version is still any published one.
    let (status, created) = node.admin(
        "POST",
        "/v1/sessions",
        &json!({"module": "minotaur@2.0.0",
                "players": [{"id": "ann", "name": "Ann"}, {"id": "bob", "name": "Bob"}],
                "options": {"round_ms": 1500}}),
    );
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["module"], "minotaur@2.0.0");

    // At the next safe point: the round ends first, then the switch.
    let (id, ann, _) = game(&node, "minotaur@1.0.0", json!({"round_ms": 1500}), 5);
    assert_eq!(view(&node, &id, &ann)["round"], 1);
    let (status, report) = node.admin(
        "POST",
        "/v1/upgrades",
        &json!({"session": id, "to": "minotaur@2.0.0", "at": "next-tick"}),
    );
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["moved"], 1, "{report}");
    let after = view(&node, &id, &ann);
    assert_eq!(
        after["round"], 2,
        "the switch came after round 1 ended: {after}"
    );
    assert_eq!(summary(&node, &id)["module"], "minotaur@2.0.0");
}
