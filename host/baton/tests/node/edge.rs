//! Bad input gets a clear 4xx and loses nothing; the node keeps serving.

use serde_json::json;

use crate::support::Node;

#[test]
fn bad_requests_get_clear_errors_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let (id, tokens) = node.minotaur(&["ann", "bob"]);

    // Bad JSON, unknown session, wrong and missing tokens.
    let (status, body) = node.http(
        "POST",
        &format!("/v1/sessions/{id}/actions"),
        Some(&tokens[0]),
        b"{not json",
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");
    let (status, body) = node.http("GET", "/v1/sessions/nope/view", None, b"");
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no session nope")
    );
    let (status, _) = node.http(
        "POST",
        &format!("/v1/sessions/{id}/actions"),
        Some("wrong"),
        b"{\"action\":1}",
    );
    assert_eq!(status, 401);
    let (status, body) = node.http(
        "POST",
        &format!("/v1/sessions/{id}/actions"),
        None,
        b"{\"action\":1}",
    );
    assert_eq!(status, 401);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("player token")
    );
    // A player token is not an operator token.
    let (status, _) = node.http("GET", "/v1/sessions", Some(&tokens[0]), b"");
    assert_eq!(status, 401);
    let (status, _) = node.http("GET", "/v1/sessions", None, b"");
    assert_eq!(status, 401);

    // An action the rules refuse is a 200 with the reason, not an error.
    let (status, body) = node.http(
        "POST",
        &format!("/v1/sessions/{id}/actions"),
        Some(&tokens[0]),
        br#"{"action":{"type":"fly"}}"#,
    );
    assert_eq!(status, 200);
    assert_eq!(body["result"], "rejected");
    assert!(
        body["reason"].as_str().unwrap().contains("not understood"),
        "{body}"
    );

    // Oversized bodies.
    let huge = vec![b'x'; 200 << 10];
    let (status, _) = node.http(
        "POST",
        &format!("/v1/sessions/{id}/actions"),
        Some(&tokens[0]),
        &huge,
    );
    assert_eq!(status, 413);

    // Invalid and hostile modules.
    let (status, body) = node.http("POST", "/v1/modules", Some(&node.token), b"not wasm");
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "bad_module");
    let importing = wat_component();
    let (status, body) = node.http("POST", "/v1/modules", Some(&node.token), &importing);
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("imports"),
        "{body}"
    );
    let (status, _) = node.http("POST", "/v1/modules", None, baton_games::MISBEHAVE.bytes);
    assert_eq!(status, 401);

    // Publishing is idempotent; a session of unknown rules is a 404; bad
    // options are the rules' 422 with their reason.
    let (status, body) = node.http(
        "POST",
        "/v1/modules",
        Some(&node.token),
        baton_games::MINOTAUR.bytes,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "minotaur@1.0.0");
    let (status, _) = node.admin(
        "POST",
        "/v1/sessions",
        &json!({"module": "chess", "players": [{"id": "a", "name": "A"}]}),
    );
    assert_eq!(status, 404);
    let (status, body) = node.admin(
        "POST",
        "/v1/sessions",
        &json!({"module": "minotaur", "players": [{"id": "a", "name": "A"}, {"id": "b", "name": "B"}], "options": {"radius": 99}}),
    );
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("radius")
    );

    // Through all of that the session kept working.
    let (status, body) = node.http(
        "POST",
        &format!("/v1/sessions/{id}/actions"),
        Some(&tokens[1]),
        br#"{"action":{"type":"move","dq":1,"dr":0}}"#,
    );
    assert_eq!(
        (status, body["result"].as_str()),
        (200, Some("accepted")),
        "{body}"
    );
    let (status, _) = node.http("GET", "/readyz", None, b"");
    assert_eq!(status, 200);
    assert!(node.terminate().success(), "SIGTERM exits 0");
}

/// A component that imports something, as a hostile upload.
fn wat_component() -> Vec<u8> {
    // The component binary format: magic, version 0x0d 0x00 0x01 0x00, then
    // one import section (id 10) importing an empty instance type. Written
    // out by hand to need no WAT tooling in this crate.
    let name = b"wasi:random/random@0.2.0";
    let mut import = vec![0x01, 0x00, name.len() as u8];
    import.extend_from_slice(name);
    import.extend_from_slice(&[0x05, 0x00]); // instance of type 0
    let mut types = vec![0x01, 0x42, 0x00]; // one type: an empty instance type
    let mut out = b"\0asm".to_vec();
    out.extend_from_slice(&[0x0d, 0x00, 0x01, 0x00]);
    out.push(0x07); // type section
    out.push(types.len() as u8);
    out.append(&mut types);
    out.push(0x0a); // import section
    out.push(import.len() as u8);
    out.extend_from_slice(&import);
    out
}

#[test]
fn a_full_pool_or_node_answers_503_and_only_a_full_pool_flips_readyz() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "max_live_instances = 2\nmax_sessions = 3\nhibernate_after_ms = 600000\n",
    )
    .unwrap();
    let node = Node::start(dir.path(), &["--config", config.to_str().unwrap()]);
    node.minotaur(&["a", "b"]);
    node.minotaur(&["a", "b"]);
    // The pool holds two live instances: a third session cannot start.
    let request = json!({"module": "minotaur", "players": [{"id": "a", "name": "A"}, {"id": "b", "name": "B"}]});
    let (status, body) = node.admin("POST", "/v1/sessions", &request);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    let (status, _) = node.http("GET", "/readyz", None, b"");
    assert_eq!(status, 503, "not ready while the pool is exhausted");
    let (status, _) = node.http("GET", "/livez", None, b"");
    assert_eq!(status, 200, "but alive");
    node.kill();

    // A node at its session limit refuses new sessions the same way.
    std::fs::write(&config, "max_sessions = 2\n").unwrap();
    let node = Node::start(dir.path(), &["--config", config.to_str().unwrap()]);
    let (status, body) = node.admin("POST", "/v1/sessions", &request);
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum of 2 sessions"),
        "{body}"
    );
    // A refusal is no failure: the node stays ready (it once counted every
    // 503 as one, and in a cluster a refusal for not being ready then kept
    // the node not ready for as long as clients retried).
    let (status, body) = node.http("GET", "/readyz", None, b"");
    assert_eq!(status, 200, "{body}");
}
