//! The ceiling the load benchmark compares Baton against: the same player
//! protocol over the same WebSockets, with minotaur's rules compiled natively
//! into the server and run in-process, with no Wasm, no journal, no fsync
//! and no snapshots. Started as a child process (`load --ceiling-server`) so
//! that it, like the node, has the machine's cores to itself apart from the
//! load generator.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use baton_sdk::Instance;
use baton_sdk::wire::{self, Audience, Player, SetupArgs, Viewer};
use minotaur::Minotaur;
use serde_json::{Value, json};
use tokio::sync::broadcast;

struct Session {
    rules: Mutex<(Instance<Minotaur>, u64)>,
    tokens: HashMap<String, String>,
    events: broadcast::Sender<Arc<(u64, Vec<wire::Event>)>>,
}

#[derive(Clone, Default)]
struct Sessions(Arc<Mutex<HashMap<String, Arc<Session>>>>);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Serves until killed, printing the same ready line as `baton serve`.
pub(crate) fn serve() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new()
            .route("/v1/sessions", post(create))
            .route("/v1/sessions/{id}/play", get(play))
            .with_state(Sessions::default());
        println!("baton node ready: players http://{addr} management http://{addr}");
        axum::serve(listener, app).await.expect("serve");
    });
}

async fn create(State(sessions): State<Sessions>, body: String) -> axum::Json<Value> {
    let request: Value = serde_json::from_str(&body).expect("json");
    let players: Vec<Player> = serde_json::from_value(request["players"].clone()).expect("players");
    let id = format!("{:016x}", rand_u64());
    let mut rules = Instance::new();
    rules
        .start(SetupArgs {
            session_id: id.clone(),
            players: players.clone(),
            options: request["options"].to_string(),
            seed: 7,
            now: now_ms(),
        })
        .expect("start");
    let tokens: HashMap<String, String> = players
        .iter()
        .map(|p| (format!("{:016x}", rand_u64()), p.id.clone()))
        .collect();
    let by_player: serde_json::Map<String, Value> = tokens
        .iter()
        .map(|(token, player)| (player.clone(), json!(token)))
        .collect();
    let session = Session {
        rules: Mutex::new((rules, 1)),
        tokens,
        events: broadcast::channel(1024).0,
    };
    sessions
        .0
        .lock()
        .expect("lock")
        .insert(id.clone(), Arc::new(session));
    axum::Json(json!({"id": id, "tokens": by_player}))
}

fn rand_u64() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("random");
    u64::from_le_bytes(bytes)
}

async fn play(
    State(sessions): State<Sessions>,
    Path(id): Path<String>,
    ws: WebSocketUpgrade,
) -> Response {
    let session = sessions.0.lock().expect("lock").get(&id).cloned();
    ws.on_upgrade(move |socket| async move {
        if let Some(session) = session {
            connection(session, socket).await;
        }
    })
}

async fn send(socket: &mut WebSocket, value: &Value) -> bool {
    socket
        .send(Message::Text(value.to_string().into()))
        .await
        .is_ok()
}

fn visible(events: &[wire::Event], me: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|e| match &e.audience {
            Audience::Everyone => true,
            Audience::Player(p) => p == me,
        })
        .map(|e| serde_json::from_str(&e.body).unwrap_or(Value::Null))
        .collect()
}

async fn connection(session: Arc<Session>, mut socket: WebSocket) {
    let Some(Ok(Message::Text(join))) = socket.recv().await else {
        return;
    };
    let join: Value = serde_json::from_str(&join).unwrap_or(Value::Null);
    let Some(me) = join["token"]
        .as_str()
        .and_then(|t| session.tokens.get(t))
        .cloned()
    else {
        return;
    };
    let mut events = session.events.subscribe();
    let (view, position) = {
        let rules = session.rules.lock().expect("lock");
        (
            rules
                .0
                .view(&Viewer::Player(me.clone()))
                .unwrap_or_default(),
            rules.1,
        )
    };
    let joined = json!({"type": "joined", "player": me, "position": {"epoch": 1, "seq": position},
        "view": serde_json::from_str::<Value>(&view).unwrap_or(Value::Null), "missed": [], "resync": false});
    if !send(&mut socket, &joined).await {
        return;
    }
    loop {
        tokio::select! {
            incoming = socket.recv() => {
                let Some(Ok(Message::Text(text))) = incoming else { return };
                let message: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let Some(id) = message["id"].as_str() else { continue };
                let (result, seq) = {
                    let mut rules = session.rules.lock().expect("lock");
                    rules.1 += 1;
                    let seq = rules.1;
                    (rules.0.act(&me, &message["action"].to_string(), now_ms()), seq)
                };
                let ack = match result {
                    Ok(outcome) => {
                        let _ = session.events.send(Arc::new((seq, outcome.events)));
                        json!({"type": "ack", "id": id, "result": "accepted", "seq": seq})
                    }
                    Err(refusal) => json!({"type": "ack", "id": id, "result": "rejected", "seq": seq, "reason": refusal.reason}),
                };
                if !send(&mut socket, &ack).await { return }
            }
            batch = events.recv() => {
                let Ok(batch) = batch else { return };
                let events = visible(&batch.1, &me);
                if !events.is_empty()
                    && !send(&mut socket, &json!({"type": "events", "epoch": 1, "seq": batch.0, "events": events})).await
                {
                    return;
                }
            }
        }
    }
}
