//! `kill -9` at seeded random points of a scripted game: after a restart,
//! every acknowledged action is there, none twice, and the session's state
//! equals an independent replay of its journal, byte for byte.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_runtime::{Call, JournalEntry, Limits, Runtime, RuntimeConfig, Session};
use serde_json::{Value, json};

use crate::support::{Node, try_http};

const DIRS: [(i32, i32); 6] = [(1, 0), (1, -1), (0, -1), (-1, 0), (-1, 1), (0, 1)];

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Replays the node's export locally; returns the digest and every client
/// action id in the journal with its position (duplicates included).
fn replay(export: &Value) -> (String, Vec<(String, u64)>) {
    let runtime = Runtime::new(RuntimeConfig {
        max_live_instances: 4,
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let module = runtime.load(baton_games::MINOTAUR.bytes).expect("minotaur");
    assert_eq!(
        module.hash().to_hex(),
        export["module_hash"].as_str().unwrap()
    );
    let mut session = match export["snapshot"].as_object() {
        Some(s) => Session::restore(
            module,
            Limits::default(),
            &unhex(s["bytes"].as_str().unwrap()),
        )
        .expect("restore"),
        None => Session::new(module, Limits::default()).expect("new"),
    };
    let mut ids = Vec::new();
    for e in export["journal"].as_array().unwrap() {
        let entry = JournalEntry::decode(&unhex(e["entry"].as_str().unwrap())).expect("entry");
        if let Call::Act {
            client_action_id: Some(id),
            ..
        } = &entry.call
        {
            ids.push((id.clone(), entry.position));
        }
        session.replay(&entry).expect("replay");
    }
    assert_eq!(session.position(), export["position"].as_u64().unwrap());
    let digest: String = session
        .state_digest()
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (digest, ids)
}

#[test]
fn kill_9_at_20_seeded_points_loses_no_acknowledged_action() {
    let dir = tempfile::tempdir().unwrap();
    let players = ["ann", "bob", "cy"];
    let mut node = Node::start(dir.path(), &["--no-example-games"]);
    let (status, _) = node.http(
        "POST",
        "/v1/modules",
        Some(&node.token),
        baton_games::MINOTAUR.bytes,
    );
    assert_eq!(status, 201);
    let (id, tokens) = node.minotaur(&players);
    let mut rng = baton_sdk::Rng::from_seed(20261121);
    // Client action id -> (player, journal position it was acknowledged at).
    let acked: Arc<Mutex<BTreeMap<String, (usize, u64)>>> = Arc::default();
    let mut sent = 0u64;

    for round in 0..20 {
        // A client plays until the node dies under it.
        let stop = Arc::new(AtomicBool::new(false));
        let client = {
            let (addr, id, tokens, acked, stop) = (
                node.addr,
                id.clone(),
                tokens.clone(),
                acked.clone(),
                stop.clone(),
            );
            let mut rng = baton_sdk::Rng::from_seed(rng.next_u64());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let p = rng.below(3) as usize;
                    let (dq, dr) = DIRS[rng.below(6) as usize];
                    let client_id = format!("r{round}-{n}");
                    let body =
                        json!({"id": client_id, "action": {"type": "move", "dq": dq, "dr": dr}})
                            .to_string();
                    match try_http(
                        addr,
                        "POST",
                        &format!("/v1/sessions/{id}/actions"),
                        Some(&tokens[p]),
                        body.as_bytes(),
                    ) {
                        Ok((200, reply)) => {
                            let seq = reply["seq"].as_u64().expect("an ack names its position");
                            acked.lock().unwrap().insert(client_id, (p, seq));
                        }
                        _ => return n,
                    }
                    n += 1;
                }
                n
            })
        };
        // Kill it at a seeded random moment, mid-traffic.
        std::thread::sleep(Duration::from_millis(20 + rng.below(200)));
        node.kill();
        stop.store(true, Ordering::Relaxed);
        sent += client.join().unwrap();

        node = Node::start(dir.path(), &["--no-example-games"]);
        let (status, export) =
            node.admin("GET", &format!("/v1/sessions/{id}/export"), &Value::Null);
        assert_eq!(status, 200, "{export}");
        let (digest, ids) = replay(&export);
        assert_eq!(
            digest,
            export["digest"].as_str().unwrap(),
            "round {round}: recovered state differs from a fresh replay"
        );
        let journaled: BTreeMap<String, u64> = ids.iter().cloned().collect();
        assert_eq!(
            journaled.len(),
            ids.len(),
            "round {round}: an action was applied twice"
        );
        let snapshot_at = export["snapshot"]["position"].as_u64().unwrap_or(0);
        let acked_now = acked.lock().unwrap().clone();
        for (client_id, (_, seq)) in &acked_now {
            if *seq >= snapshot_at {
                assert_eq!(
                    journaled.get(client_id),
                    Some(seq),
                    "round {round}: {client_id} acknowledged at {seq} but not journaled there"
                );
            }
        }
        assert!(
            export["position"].as_u64().unwrap()
                > acked_now.values().map(|v| v.1).max().unwrap_or(0)
        );
        // Retrying acknowledged ids (this round's, and a sample of older
        // ones, from before the last snapshot too) returns the first answer
        // and applies nothing again.
        let position_before = export["position"].as_u64().unwrap();
        let retry: Vec<_> = acked_now
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("r{round}-")) || rng.below(25) == 0)
            .take(40)
            .collect();
        for (client_id, (p, seq)) in &retry {
            let body =
                json!({"id": client_id, "action": {"type": "move", "dq": 1, "dr": 0}}).to_string();
            let (status, reply) = node.http(
                "POST",
                &format!("/v1/sessions/{id}/actions"),
                Some(&tokens[*p]),
                body.as_bytes(),
            );
            assert_eq!(status, 200, "{reply}");
            assert_eq!(
                reply["seq"].as_u64(),
                Some(*seq),
                "round {round}: retry of {client_id} got {reply}"
            );
        }
        let (_, after) = node.admin("GET", &format!("/v1/sessions/{id}/export"), &Value::Null);
        // Only the export's own view of the state moved nothing: no new acts.
        let (_, ids_after) = replay(&after);
        assert_eq!(
            ids_after.len(),
            ids.len(),
            "round {round}: a retry was applied again"
        );
        assert!(after["position"].as_u64().unwrap() >= position_before);
    }
    assert!(
        sent > 100,
        "the client should have sent a real load ({sent} actions)"
    );
    // And the session still plays.
    let (status, body) = node.http(
        "POST",
        &format!("/v1/sessions/{id}/actions"),
        Some(&tokens[0]),
        br#"{"id":"last","action":{"type":"move","dq":0,"dr":1}}"#,
    );
    assert_eq!(status, 200, "{body}");
}
