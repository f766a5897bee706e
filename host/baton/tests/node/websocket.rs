//! The player WebSocket: join, act, events; resume without gap or
//! duplicate; retries applied once; limits enforced with close reasons.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Node, Socket, connect, send};

/// The next JSON message (skipping pings); `None` when closed.
async fn next(socket: &mut Socket) -> Option<Value> {
    loop {
        let message = tokio::time::timeout(std::time::Duration::from_secs(10), socket.next())
            .await
            .expect("a message within 10 s")?;
        match message.ok()? {
            Message::Text(text) => return Some(serde_json::from_str(&text).expect("JSON")),
            Message::Close(frame) => {
                return Some(
                    json!({"closed": frame.map(|f| (u16::from(f.code), f.reason.to_string()))}),
                );
            }
            _ => continue,
        }
    }
}

/// Reads messages until one of `kind`; returns it and the events seen.
async fn until(socket: &mut Socket, kind: &str, events: &mut Vec<(u64, Value)>) -> Value {
    loop {
        let m = next(socket).await.expect("open");
        if m["type"] == "events" {
            for e in m["events"].as_array().unwrap() {
                events.push((m["seq"].as_u64().unwrap(), e.clone()));
            }
        }
        if m["type"] == kind || m.get("closed").is_some() {
            return m;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_act_reconnect_without_gap_and_retries_apply_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let (id, tokens) = node.minotaur(&["ann", "bob"]);

    let mut ann = connect(&node, &id).await;
    send(&mut ann, json!({"type": "join", "token": tokens[0]})).await;
    let joined = next(&mut ann).await.unwrap();
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(joined["player"], "ann");
    assert_eq!(joined["view"]["you"], "ann");

    let mut seen = Vec::new();
    send(
        &mut ann,
        json!({"type": "act", "id": "a1", "action": {"type": "move", "dq": 0, "dr": 1}}),
    )
    .await;
    let ack = until(&mut ann, "ack", &mut seen).await;
    assert_eq!(ack["result"], "accepted", "{ack}");
    // A retry of the same id gets the same answer and is not applied again.
    send(
        &mut ann,
        json!({"type": "act", "id": "a1", "action": {"type": "move", "dq": 0, "dr": 1}}),
    )
    .await;
    let again = until(&mut ann, "ack", &mut seen).await;
    assert_eq!(again, ack);
    // Ann's own registration event arrives.
    while seen.is_empty() {
        let _ = until(&mut ann, "events", &mut seen).await;
    }
    let last = seen.last().unwrap().0;
    drop(ann);

    // While ann is away, bob completes the round: events she must get.
    let mut bob = connect(&node, &id).await;
    send(&mut bob, json!({"type": "join", "token": tokens[1]})).await;
    assert_eq!(next(&mut bob).await.unwrap()["type"], "joined");
    let mut bob_seen = Vec::new();
    send(
        &mut bob,
        json!({"type": "act", "id": "b1", "action": {"type": "move", "dq": 0, "dr": 1}}),
    )
    .await;
    assert_eq!(
        until(&mut bob, "ack", &mut bob_seen).await["result"],
        "accepted"
    );

    // Ann resumes from her last position: exactly what she missed.
    let mut ann = connect(&node, &id).await;
    send(
        &mut ann,
        json!({"type": "join", "token": tokens[0], "after": {"epoch": 1, "seq": last}}),
    )
    .await;
    let rejoined = next(&mut ann).await.unwrap();
    assert_eq!(rejoined["resync"], false, "{rejoined}");
    let missed: Vec<&Value> = rejoined["missed"].as_array().unwrap().iter().collect();
    let kinds: Vec<&str> = missed
        .iter()
        .flat_map(|m| {
            m["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["type"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        kinds,
        ["ready", "round"],
        "bob's ready, then the round; nothing before, nothing twice"
    );
    assert!(missed.iter().all(|m| m["seq"].as_u64().unwrap() > last));
    assert_eq!(rejoined["view"]["round"], 2);

    // Spectators see but cannot act; garbage is answered, not fatal.
    let mut watcher = connect(&node, &id).await;
    send(&mut watcher, json!({"type": "join"})).await;
    let watched = next(&mut watcher).await.unwrap();
    assert_eq!(watched["player"], Value::Null);
    send(
        &mut watcher,
        json!({"type": "act", "id": "w", "action": {}}),
    )
    .await;
    assert_eq!(next(&mut watcher).await.unwrap()["code"], "unauthorized");
    watcher
        .send(Message::Text("{nonsense".into()))
        .await
        .unwrap();
    assert_eq!(next(&mut watcher).await.unwrap()["code"], "bad_message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_floods_and_oversized_messages_are_closed_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let (id, tokens) = node.minotaur(&["ann", "bob"]);

    let mut socket = connect(&node, &id).await;
    send(&mut socket, json!({"type": "join", "token": "wrong"})).await;
    assert_eq!(next(&mut socket).await.unwrap()["closed"][0], 4401);

    let mut socket = connect(&node, "nope").await;
    send(&mut socket, json!({"type": "join"})).await;
    assert_eq!(next(&mut socket).await.unwrap()["closed"][0], 4404);

    let mut socket = connect(&node, &id).await;
    send(&mut socket, json!({"type": "act", "id": "x", "action": {}})).await;
    assert_eq!(
        next(&mut socket).await.unwrap()["closed"][0],
        4400,
        "join first"
    );

    // Flooding: refused with rate_limited, then closed.
    let mut socket = connect(&node, &id).await;
    send(&mut socket, json!({"type": "join", "token": tokens[0]})).await;
    assert_eq!(next(&mut socket).await.unwrap()["type"], "joined");
    for i in 0..400 {
        let _ = socket
            .send(Message::Text(
                json!({"type": "act", "id": format!("f{i}"), "action": {"type": "fly"}})
                    .to_string()
                    .into(),
            ))
            .await;
    }
    let mut limited = false;
    let mut closed = None;
    while let Some(m) = next(&mut socket).await {
        limited |= m["code"] == "rate_limited";
        if let Some(c) = m.get("closed") {
            closed = Some(c[0].clone());
            break;
        }
    }
    assert!(limited);
    assert_eq!(closed, Some(json!(4429)));

    // Oversized: the connection is closed (1009), the node keeps serving.
    let mut socket = connect(&node, &id).await;
    send(&mut socket, json!({"type": "join", "token": tokens[1]})).await;
    assert_eq!(next(&mut socket).await.unwrap()["type"], "joined");
    let _ = socket
        .send(Message::Text("x".repeat(200 << 10).into()))
        .await;
    let m = next(&mut socket).await;
    assert!(
        m.is_none() || m.as_ref().unwrap().get("closed").is_some(),
        "{m:?}"
    );
    let (status, _) = node.http(
        "GET",
        &format!("/v1/sessions/{id}/view"),
        Some(&tokens[1]),
        b"",
    );
    assert_eq!(status, 200);
}
