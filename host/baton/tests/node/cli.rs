//! The `baton` CLI against a real node: what a newcomer types.

use std::process::{Command, Output};

use serde_json::Value;

use crate::support::Node;

fn baton(node: &Node, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .env("BATON_NODE", format!("http://{}", node.admin_addr))
        .env("BATON_OPERATOR_TOKEN", &node.token)
        .output()
        .expect("the CLI runs")
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_game_from_the_command_line_and_a_local_replay_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    assert!(ok(&baton(&node, &["module", "list"])).contains("minotaur@1.0.0"));

    let created: Value = serde_json::from_str(&ok(&baton(
        &node,
        &[
            "session",
            "create",
            "minotaur",
            "-p",
            "ann:Ann",
            "-p",
            "bob:Bob",
            "--options",
            r#"{"radius":3,"positions":[{"q":0,"r":0},{"q":1,"r":0}]}"#,
        ],
    )))
    .unwrap();
    let id = created["id"].as_str().unwrap();
    let ann = created["tokens"]["ann"].as_str().unwrap();
    let bob = created["tokens"]["bob"].as_str().unwrap();

    ok(&baton(
        &node,
        &[
            "session",
            "act",
            id,
            r#"{"type":"attack","target":"bob"}"#,
            "--token",
            ann,
            "--action-id",
            "a1",
        ],
    ));
    // A refusal exits non-zero with the rules' reason.
    let refused = baton(
        &node,
        &["session", "act", id, r#"{"type":"fly"}"#, "--token", bob],
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not understood"));
    ok(&baton(
        &node,
        &[
            "session",
            "act",
            id,
            r#"{"type":"move","dq":1,"dr":0}"#,
            "--token",
            bob,
        ],
    ));

    let view: Value =
        serde_json::from_str(&ok(&baton(&node, &["session", "view", id, "--token", bob]))).unwrap();
    assert_eq!(view["view"]["round"], 2);
    assert_eq!(view["view"]["players"][1]["hp"], 2);
    assert!(ok(&baton(&node, &["session", "list"])).contains(id));

    // Operators see it in the metrics: per module version, never per session.
    let (status, metrics) = node.http("GET", "/metrics", None, b"");
    assert_eq!(status, 200);
    let metrics = metrics.as_str().unwrap().to_owned();
    for line in [
        "baton_build_info{version=\"0.1.0\"} 1",
        "baton_ready 1",
        "baton_sessions{module=\"minotaur@1.0.0\",state=\"live\"} 1",
        "baton_actions_total{module=\"minotaur@1.0.0\",result=\"accepted\"} 2",
        "baton_actions_total{module=\"minotaur@1.0.0\",result=\"rejected\"} 1",
        "baton_action_seconds_count{module=\"minotaur@1.0.0\"} 3",
        "# TYPE baton_journal_bytes_total counter",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    assert!(!metrics.contains(id), "no per-session labels");

    let replayed = ok(&baton(&node, &["session", "replay", id, "--steps"]));
    assert!(replayed.contains("act ann"), "{replayed}");
    assert!(
        replayed.contains("state identical to the node's"),
        "{replayed}"
    );

    // Errors say what to do.
    let unreachable = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args([
            "session",
            "list",
            "--node",
            "http://127.0.0.1:9",
            "--operator-token",
            "x",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("is `baton serve` running"));
    let version = Command::new(env!("CARGO_BIN_EXE_baton"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("baton "));
}

#[test]
fn certs_for_a_cluster_from_the_command_line() {
    let dir = tempfile::tempdir().expect("dir");
    let certs = dir.path().join("certs");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_baton"))
            .arg("certs")
            .args(args)
            .arg("--dir")
            .arg(&certs)
            .output()
            .expect("baton certs")
    };
    ok(&run(&["ca"]));
    ok(&run(&["node", "node-1"]));
    let again = run(&["ca"]);
    assert!(
        !again.status.success(),
        "a second CA would orphan the node certificates"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let bad = run(&["node", "Node_1"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a valid node name"));
    // What it wrote is a working identity for that node.
    baton_transport::Identity::from_files(
        "node-1",
        &certs.join("node-1.pem"),
        &certs.join("node-1.key"),
        &certs.join("ca.pem"),
    )
    .expect("the files form an identity");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(certs.join("node-1.key"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "keys are private to their owner");
}
