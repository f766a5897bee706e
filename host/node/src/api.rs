//! The node's edge: HTTP routes and the player WebSocket (see PROTOCOL.md).
//!
//! Everything a client sends is parsed here, once, into typed values; a
//! malformed request gets a clear error and never reaches the sessions.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use baton_sdk::wire::{self, Viewer};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use crate::cluster::{
    Forward, Relayed, RemoteError, read_frame, read_json, write_frame, write_json,
};
use crate::error::NodeError;
use crate::node::{ActOutcome, CreateSession, EventBatch, Location, Node};
use crate::relay::{Follow, Pipe, Resume, close_moved, relay};

/// What a router serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routes {
    /// Player traffic only: health, views, actions, the WebSocket, the web pages.
    Players,
    /// Management only: modules, sessions, health.
    Admin,
    /// Both, on one address.
    All,
}

#[derive(Clone)]
pub(crate) struct App {
    pub(crate) node: Arc<Node>,
    pub(crate) shutdown: watch::Receiver<bool>,
}

/// The router for `routes`. `shutdown` turning true closes every WebSocket
/// with "going away" so clients reconnect elsewhere.
pub fn router(node: Arc<Node>, routes: Routes, shutdown: watch::Receiver<bool>) -> Router {
    let max_message = node.config.max_message_bytes;
    let max_module = node.config.max_module_bytes;
    let app = App { node, shutdown };
    let health = Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz));
    let players = Router::new()
        .route("/v1/sessions/{id}/view", get(view))
        .route("/v1/sessions/{id}/actions", post(act))
        .route("/v1/sessions/{id}/play", get(play))
        .layer(DefaultBodyLimit::max(max_message));
    let admin = Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/modules", post(publish).get(list_modules))
        .route("/v1/modules/{id}", get(get_module))
        .route("/v1/modules/{id}/component", get(get_component))
        .layer(DefaultBodyLimit::max(max_module))
        .merge(
            Router::new()
                .route("/v1/sessions", post(create_session).get(list_sessions))
                .route("/v1/sessions/{id}", get(get_session))
                .route("/v1/sessions/{id}/export", get(export))
                .route("/v1/sessions/{id}/replica", get(replica))
                .route("/v1/upgrades", post(upgrade))
                .route("/v1/cluster", get(cluster))
                .route("/v1/cluster/nodes/{name}/evict", post(evict))
                .layer(DefaultBodyLimit::max(max_message)),
        );
    let router = match routes {
        Routes::Players => health.merge(players).merge(crate::web::routes()),
        Routes::Admin => health.merge(admin),
        Routes::All => health
            .merge(players)
            .merge(admin)
            .merge(crate::web::routes()),
    };
    router.fallback(not_found).with_state(app)
}

async fn not_found() -> NodeError {
    NodeError::NotFound("no such route; see PROTOCOL.md for the API".into())
}

async fn livez() -> &'static str {
    "ok\n"
}

async fn readyz(State(app): State<App>) -> Response {
    match app.node.readiness().await {
        Ok(()) => "ready\n".into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn operator(app: &App, headers: &HeaderMap) -> Result<(), NodeError> {
    match bearer(headers) {
        Some(token) if app.node.is_operator(token) => Ok(()),
        Some(_) => Err(NodeError::Unauthorized(
            "the operator token is wrong".into(),
        )),
        None => Err(NodeError::Unauthorized(
            "management calls need `Authorization: Bearer <operator token>`".into(),
        )),
    }
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    (status, axum::Json(value)).into_response()
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, NodeError> {
    serde_json::from_slice(body)
        .map_err(|e| NodeError::BadRequest(format!("the request body is not valid: {e}")))
}

async fn publish(
    State(app): State<App>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, NodeError> {
    operator(&app, &headers)?;
    let (module, new) = app.node.publish(body.to_vec()).await?;
    Ok(json(
        if new {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        &module,
    ))
}

async fn metrics(State(app): State<App>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.node.metrics_text().await,
    )
        .into_response()
}

async fn list_modules(State(app): State<App>) -> Response {
    json(StatusCode::OK, &app.node.modules())
}

async fn get_module(State(app): State<App>, Path(id): Path<String>) -> Result<Response, NodeError> {
    Ok(json(StatusCode::OK, &app.node.module(&id)?))
}

async fn get_component(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Response, NodeError> {
    let bytes = app.node.module_component(&id)?;
    Ok(([(header::CONTENT_TYPE, "application/wasm")], bytes).into_response())
}

async fn create_session(
    State(app): State<App>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, NodeError> {
    operator(&app, &headers)?;
    let request: CreateSession = parse(&body)?;
    Ok(json(
        StatusCode::CREATED,
        &noted(&app, app.node.create_session(request).await)?,
    ))
}

async fn list_sessions(State(app): State<App>, headers: HeaderMap) -> Result<Response, NodeError> {
    operator(&app, &headers)?;
    Ok(json(StatusCode::OK, &app.node.sessions().await))
}

async fn get_session(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, NodeError> {
    operator(&app, &headers)?;
    Ok(json(StatusCode::OK, &app.node.session(&id).await?))
}

async fn upgrade(
    State(app): State<App>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, NodeError> {
    operator(&app, &headers)?;
    let request: crate::upgrade::UpgradeRequest = parse(&body)?;
    Ok(json(StatusCode::OK, &app.node.upgrade(request).await?))
}

async fn cluster(State(app): State<App>, headers: HeaderMap) -> Result<Response, NodeError> {
    operator(&app, &headers)?;
    Ok(json(StatusCode::OK, &app.node.cluster_status().await?))
}

async fn evict(
    State(app): State<App>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, NodeError> {
    operator(&app, &headers)?;
    app.node.evict(&name).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "evicted": name }),
    ))
}

async fn replica(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, NodeError> {
    operator(&app, &headers)?;
    Ok(json(StatusCode::OK, &app.node.replica_state(&id).await?))
}

async fn export(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, NodeError> {
    operator(&app, &headers)?;
    Ok(json(StatusCode::OK, &app.node.export(&id).await?))
}

/// The viewer a request speaks for: a player by token, else a spectator.
fn viewer(app: &App, id: &str, headers: &HeaderMap) -> Result<(Viewer, Option<String>), NodeError> {
    match bearer(headers) {
        Some(token) => {
            let player = app.node.authenticate(id, token)?;
            Ok((Viewer::Player(player.clone()), Some(player)))
        }
        None => Ok((Viewer::Spectator, None)),
    }
}

#[derive(Serialize)]
struct ViewResponse {
    position: Position,
    status: &'static str,
    result: Option<serde_json::Value>,
    view: serde_json::Value,
}

async fn view(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, NodeError> {
    let (viewer, _) = viewer(&app, &id, &headers)?;
    let (position, view, status) = noted(&app, app.node.view(&id, viewer).await)?;
    let (status, result) = status_fields(&status);
    Ok(json(
        StatusCode::OK,
        &ViewResponse {
            position: Position {
                epoch: 1,
                seq: position,
            },
            status,
            result,
            view,
        },
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActRequest {
    /// The client's id for the action: a retry with the same id is applied once.
    id: Option<String>,
    action: serde_json::Value,
}

/// Passes `result` through, noting 503-class failures for `/readyz`.
fn noted<T>(app: &App, result: Result<T, NodeError>) -> Result<T, NodeError> {
    if let Err(e) = &result {
        app.node.degraded(e);
    }
    result
}

async fn act(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, NodeError> {
    let (_, player) = viewer(&app, &id, &headers)?;
    let player = player.ok_or_else(|| {
        NodeError::Unauthorized("acting needs `Authorization: Bearer <player token>`".into())
    })?;
    let request: ActRequest = parse(&body)?;
    let outcome = noted(
        &app,
        app.node
            .act(&id, &player, request.id, request.action.to_string())
            .await,
    )?;
    Ok(json(StatusCode::OK, &outcome))
}

fn status_fields(status: &wire::Status) -> (&'static str, Option<serde_json::Value>) {
    match status {
        wire::Status::Running => ("running", None),
        wire::Status::Finished(json) => ("finished", serde_json::from_str(json).ok()),
    }
}

// --- the player WebSocket ---------------------------------------------------

/// A client's place in a session's event stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Ownership epoch.
    pub epoch: u64,
    /// Journal position.
    pub seq: u64,
}

/// What a client sends.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMessage {
    /// First message: a player token, or none to watch as a spectator;
    /// `after` the last position seen, to resume.
    Join {
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        after: Option<Position>,
        /// `false`: resuming with the view the client holds (see `Node::join`).
        #[serde(default = "yes")]
        view: bool,
    },
    /// An action, with the client's id for it.
    Act {
        id: String,
        action: serde_json::Value,
    },
}

fn yes() -> bool {
    true
}

/// What the node sends.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerMessage<'a> {
    Joined {
        module: &'a str,
        player: Option<&'a str>,
        position: Position,
        status: &'static str,
        result: Option<serde_json::Value>,
        /// `null` when a resuming client asked for none (`view: false`).
        view: Option<serde_json::Value>,
        /// Events after `after`, when resuming.
        missed: Vec<EventsMessage>,
        /// `after` was too old: the missed events are gone; the view is current.
        resync: bool,
    },
    Events(EventsMessage),
    Ack {
        id: &'a str,
        #[serde(flatten)]
        outcome: ActOutcome,
    },
    Error {
        id: Option<&'a str>,
        code: &'static str,
        message: String,
    },
}

#[derive(Debug, Serialize)]
struct EventsMessage {
    epoch: u64,
    seq: u64,
    events: Vec<serde_json::Value>,
}

/// The batch as `player` (or a spectator) may see it, if any of it.
fn visible(batch: &EventBatch, player: Option<&str>) -> Option<EventsMessage> {
    let events: Vec<serde_json::Value> = batch
        .events
        .iter()
        .filter(|e| match (&e.audience, player) {
            (wire::Audience::Everyone, _) => true,
            (wire::Audience::Player(p), Some(me)) => p == me,
            (wire::Audience::Player(_), None) => false,
        })
        .map(|e| serde_json::from_str(&e.body).unwrap_or(serde_json::Value::Null))
        .collect();
    (!events.is_empty()).then_some(EventsMessage {
        epoch: 1,
        seq: batch.seq,
        events,
    })
}

/// Close codes (4000-4999 are the application's).
pub(crate) mod close {
    pub(crate) const GOING_AWAY: u16 = 1001;
    pub(crate) const INTERNAL: u16 = 1011;
    pub(crate) const BAD_MESSAGE: u16 = 4400;
    pub(crate) const BAD_TOKEN: u16 = 4401;
    pub(crate) const NO_SESSION: u16 = 4404;
    pub(crate) const MOVED: u16 = 4409;
    pub(crate) const TOO_SLOW: u16 = 4408;
    pub(crate) const FLOODING: u16 = 4429;
}

async fn play(State(app): State<App>, Path(id): Path<String>, ws: WebSocketUpgrade) -> Response {
    let max = app.node.config.max_message_bytes;
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            // Counted, so that a stopping node finishes closing it first.
            app.node.players.send_modify(|n| *n += 1);
            let _open = OpenSocket(app.node.clone());
            match app.node.owner_elsewhere(&id).await {
                Ok(Some(owner)) => relay(app, id, owner, socket, None).await,
                Ok(None) => connection(app, id, socket).await,
                Err(NodeError::NotFound(m)) => close_with(socket, close::NO_SESSION, &m).await,
                Err(e) => close_with(socket, close::MOVED, &e.to_string()).await,
            }
        })
}

/// An open player WebSocket; uncounted when dropped.
struct OpenSocket(Arc<Node>);

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.0.players.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A player's connection, wherever it comes from: a WebSocket here, or one
/// relayed from another node through a tunnel.
pub(crate) trait PlayerSocket: Send {
    /// The next message; `None` when the connection ended.
    fn recv(&mut self) -> impl Future<Output = Option<Result<Message, ()>>> + Send;
    /// Sends one message.
    fn send(&mut self, message: Message) -> impl Future<Output = Result<(), ()>> + Send;
}

impl PlayerSocket for WebSocket {
    async fn recv(&mut self) -> Option<Result<Message, ()>> {
        WebSocket::recv(self).await.map(|r| r.map_err(|_| ()))
    }

    async fn send(&mut self, message: Message) -> Result<(), ()> {
        WebSocket::send(self, message).await.map_err(|_| ())
    }
}

/// The owner's end of a relayed player connection.
pub(crate) struct TunnelSocket {
    pipe: Pipe,
}

impl TunnelSocket {
    pub(crate) fn new(pipe: Pipe) -> TunnelSocket {
        TunnelSocket { pipe }
    }
}

impl PlayerSocket for TunnelSocket {
    async fn recv(&mut self) -> Option<Result<Message, ()>> {
        Some(Ok(match self.pipe.read().await? {
            Relayed::Text(text) => Message::Text(Utf8Bytes::from(text)),
            Relayed::Close { code, reason } => Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from(reason),
            })),
            // Only an owner says that, never a relay.
            Relayed::Moved { .. } => return Some(Err(())),
        }))
    }

    async fn send(&mut self, message: Message) -> Result<(), ()> {
        let relayed = match message {
            Message::Text(text) => Relayed::Text(text.to_string()),
            Message::Close(frame) => {
                let (code, reason) =
                    frame.map_or((1000, String::new()), |f| (f.code, f.reason.to_string()));
                Relayed::Close { code, reason }
            }
            _ => return Ok(()),
        };
        self.pipe.write(relayed).await.map_err(|_| ())
    }
}

impl Follow for TunnelSocket {
    /// The relay at the other end follows the session itself.
    async fn follow(mut self, _: App, _: String, to: Option<String>, _: Resume) {
        match to {
            Some(to) => {
                let _ = self.pipe.write(Relayed::Moved { to }).await;
                self.pipe.finish();
            }
            None => close_moved(self).await,
        }
    }
}

/// Answers what other nodes forward here: creations, relayed players,
/// module bytes.
pub(crate) async fn serve_tunnels(
    node: Arc<Node>,
    shutdown: watch::Receiver<bool>,
    mut tunnels: tokio::sync::mpsc::Receiver<baton_transport::Tunnel>,
) {
    while let Some(tunnel) = tunnels.recv().await {
        let app = App {
            node: node.clone(),
            shutdown: shutdown.clone(),
        };
        tokio::spawn(async move {
            let from = tunnel.from.clone();
            if let Err(e) = answer(app, tunnel).await {
                tracing::debug!(%from, error = %e, "a forwarded request failed");
            }
        });
    }
}

/// The owner's end of a relayed connection to session `id`.
pub(crate) async fn play_here(app: App, id: String, socket: TunnelSocket) {
    match app.node.owner_elsewhere(&id).await {
        Ok(None) => connection(app, id, socket).await,
        // The relay's view of the owner is behind: send it on.
        Ok(Some(owner)) => socket.follow(app, id, Some(owner), Resume::default()).await,
        Err(NodeError::NotFound(m)) => close_with(socket, close::NO_SESSION, &m).await,
        Err(e) => close_with(socket, close::MOVED, &e.to_string()).await,
    }
}

async fn answer(app: App, tunnel: baton_transport::Tunnel) -> Result<(), NodeError> {
    let baton_transport::Tunnel {
        mut send, mut recv, ..
    } = tunnel;
    match read_json::<Forward>(&mut recv).await? {
        Forward::Create { id, request } => {
            let created = app.node.create_here(id, request).await;
            let answer: Result<_, RemoteError> = created.map_err(RemoteError::from);
            write_json(&mut send, &answer).await?;
            let _ = send.finish();
        }
        Forward::Play { session } => {
            play_here(app, session, TunnelSocket::new(Pipe::quic(send, recv))).await;
        }
        Forward::Module { hash } => {
            let bytes = app.node.module_bytes_by_hash(&hash).unwrap_or_default();
            write_frame(&mut send, &bytes).await?;
            let _ = send.finish();
        }
        Forward::Upgrade(request) => {
            let report = app.node.upgrade_here(request).await;
            write_json(&mut send, &report.map_err(RemoteError::from)).await?;
            let _ = send.finish();
        }
        Forward::Fenced(note) => {
            app.node.note_fence(note);
            write_json(&mut send, &Ok::<(), RemoteError>(())).await?;
            let _ = send.finish();
        }
        Forward::Snapshot(offered) => {
            let sealed = read_frame(&mut recv).await?;
            let kept = crate::snapshots::receive(&app.node, offered, sealed).await;
            write_json(&mut send, &kept.map_err(RemoteError::from)).await?;
            let _ = send.finish();
        }
    }
    Ok(())
}

/// A session that left after this connection was routed here (a handoff
/// between the upgrade and the join): the connection follows it, and only
/// a session the cluster does not know is "no such session".
async fn left(app: App, id: String, socket: impl Follow, resume: Resume, missing: String) {
    match app.node.owner_elsewhere(&id).await {
        Ok(Some(owner)) => socket.follow(app, id, Some(owner), resume).await,
        Err(NodeError::NotFound(_)) => close_with(socket, close::NO_SESSION, &missing).await,
        Ok(None) if app.node.mesh.get().is_none() => {
            close_with(socket, close::NO_SESSION, &missing).await;
        }
        // Back here, or the cluster cannot say where yet.
        where_now => {
            tracing::debug!(session = %id, why = %missing, ?where_now, "a player is told to reconnect: its session is not servable here right now");
            close_moved(socket).await;
        }
    }
}

async fn send(socket: &mut impl PlayerSocket, message: &ServerMessage<'_>) -> bool {
    match serde_json::to_string(message) {
        Ok(text) => socket
            .send(Message::Text(Utf8Bytes::from(text)))
            .await
            .is_ok(),
        Err(_) => false,
    }
}

/// Closes with a code and reason, then completes the closing handshake:
/// reads (and drops) what the client still sends until its Close, for at
/// most two seconds. Dropping the socket with unread input would reset the
/// connection, and a reset makes the client's OS discard what we sent it,
/// the close reason included.
pub(crate) async fn close_with(mut socket: impl PlayerSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from(reason.to_owned()),
    };
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let drain = async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}

/// A token bucket: `rate` actions per second, bursts of `rate`.
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
    refusals: u32,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refusals = 0;
            true
        } else {
            self.refusals += 1;
            false
        }
    }
}

/// How long a player's connection waits, once the session moved, for the
/// action it was running to be answered here before following without
/// the answer (the new owner then answers it, by its id). An action
/// journaled before the fence is acknowledged in the step that fences and
/// one refused by the fence fails at once, so this is only a bound.
const ANSWER_GRACE: Duration = Duration::from_millis(20);

async fn connection(app: App, id: String, mut socket: impl Follow) {
    // The first message must be a join, soon.
    let first = tokio::time::timeout(Duration::from_secs(10), socket.recv()).await;
    let Ok(Some(Ok(Message::Text(text)))) = first else {
        return close_with(socket, close::BAD_MESSAGE, "send a join message first").await;
    };
    let (token, after, want_view) = match serde_json::from_str::<ClientMessage>(&text) {
        Ok(ClientMessage::Join { token, after, view }) => (token, after, view),
        Ok(_) => return close_with(socket, close::BAD_MESSAGE, "send a join message first").await,
        Err(e) => {
            return close_with(
                socket,
                close::BAD_MESSAGE,
                &format!("not a valid message: {e}"),
            )
            .await;
        }
    };
    let (viewer, player) = match &token {
        Some(token) => match app.node.authenticate(&id, token) {
            Ok(player) => (Viewer::Player(player.clone()), Some(player)),
            Err(NodeError::NotFound(m)) => {
                let resume = Resume {
                    token: Some(token.clone()),
                    after: after.map(|p| p.seq),
                    joined: true,
                    ..Resume::default()
                };
                return left(app, id, socket, resume, m).await;
            }
            Err(e) => return close_with(socket, close::BAD_TOKEN, &e.to_string()).await,
        },
        None => (Viewer::Spectator, None),
    };
    // Another epoch's positions mean nothing here: resync from the view.
    let after_seq = after.filter(|p| p.epoch == 1).map(|p| p.seq);
    let joined = match app.node.join(&id, viewer, after_seq, want_view).await {
        Ok(joined) => joined,
        // Not here, or not servable here right now (moving, no lease yet):
        // follow it or tell the player to reconnect, never blame its message.
        Err(
            NodeError::NotFound(m)
            | NodeError::Moved(m)
            | NodeError::Unavailable(m)
            | NodeError::Failing(m),
        ) => {
            let resume = Resume {
                token,
                after: after_seq,
                joined: true,
                ..Resume::default()
            };
            return left(app, id, socket, resume, m).await;
        }
        Err(e @ NodeError::BadRequest(_)) => {
            return close_with(socket, close::BAD_MESSAGE, &e.to_string()).await;
        }
        Err(e) => {
            tracing::warn!(session = %id, error = %e, "a player could not join");
            return close_with(socket, close::INTERNAL, &e.to_string()).await;
        }
    };
    let me = player.as_deref();
    let (status, result) = status_fields(&joined.status);
    let missed = joined
        .missed
        .iter()
        .flatten()
        .filter_map(|b| visible(b, me))
        .collect();
    tracing::debug!(session = %id, position = joined.position, resumed = after_seq.is_some(), view = joined.view.is_some(), "a player joined");
    let hello = ServerMessage::Joined {
        module: &joined.module,
        player: me,
        position: Position {
            epoch: 1,
            seq: joined.position,
        },
        status,
        result,
        view: joined.view,
        missed,
        resync: after.is_some() && (joined.resync || after_seq.is_none()),
    };
    if !send(&mut socket, &hello).await {
        return;
    }
    let mut events = joined.receiver;
    let mut moved = joined.moved;
    let mut resets = joined.resets;
    let from = joined.position;
    // Where this connection picks up if the session moves away.
    let mut resume = Resume {
        token,
        after: Some(joined.position),
        unanswered: Vec::new(),
        joined: true,
        answered: true,
    };
    let mut bucket = Bucket {
        rate: f64::from(app.node.config.actions_per_second.max(1)),
        tokens: f64::from(app.node.config.actions_per_second.max(1)),
        at: Instant::now(),
        refusals: 0,
    };
    let mut shutdown = app.shutdown.clone();
    loop {
        tokio::select! {
            incoming = socket.recv() => {
                let text = match incoming {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Binary(_))) => {
                        let error = ServerMessage::Error { id: None, code: "bad_message", message: "send JSON text messages".into() };
                        if !send(&mut socket, &error).await { return; }
                        continue;
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(())) => return,
                    Some(Ok(_)) => continue,
                };
                let (client_id, action) = match serde_json::from_str::<ClientMessage>(&text) {
                    Ok(ClientMessage::Act { id, action }) => (id, action),
                    Ok(ClientMessage::Join { .. }) => {
                        let error = ServerMessage::Error { id: None, code: "bad_message", message: "already joined".into() };
                        if !send(&mut socket, &error).await { return; }
                        continue;
                    }
                    Err(e) => {
                        let error = ServerMessage::Error { id: None, code: "bad_message", message: format!("not a valid message: {e}") };
                        if !send(&mut socket, &error).await { return; }
                        continue;
                    }
                };
                let Some(me) = me else {
                    let error = ServerMessage::Error { id: Some(&client_id), code: "unauthorized", message: "spectators cannot act".into() };
                    if !send(&mut socket, &error).await { return; }
                    continue;
                };
                if !bucket.take() {
                    if bucket.refusals > 5 * bucket.rate as u32 {
                        return close_with(socket, close::FLOODING, "too many actions; slow down and reconnect").await;
                    }
                    let error = ServerMessage::Error {
                        id: Some(&client_id),
                        code: "rate_limited",
                        message: format!("at most {} actions per second", bucket.rate),
                    };
                    if !send(&mut socket, &error).await { return; }
                    continue;
                }
                let in_cluster = app.node.mesh.get().is_some();
                // The action runs on a task of its own: if the session is
                // fenced for a handoff meanwhile, the player follows it as
                // soon as the action is answered here or `ANSWER_GRACE`
                // passed; unanswered, the new owner answers it (its id
                // makes that safe) while the task finishes its bookkeeping.
                let mut acting = tokio::spawn({
                    let (app, id, me, client_id) = (app.clone(), id.clone(), me.to_owned(), client_id.clone());
                    let action = action.to_string();
                    async move { app.node.act(&id, &me, Some(client_id), action).await }
                });
                let finished = |done: Result<_, tokio::task::JoinError>| {
                    done.unwrap_or_else(|e| Err(NodeError::Internal(e.to_string())))
                };
                // Where the session went, if it moved while the action ran.
                let mut gone_to = None;
                let result = tokio::select! {
                    biased;
                    done = &mut acting => finished(done),
                    Ok(location) = async { moved.wait_for(|l| *l != Location::Here).await.map(|l| l.clone()) }, if in_cluster => {
                        gone_to = match location {
                            Location::Moved(to) => Some(to),
                            Location::Here => None,
                        };
                        // An action journaled before the fence is
                        // acknowledged in the step that fences: answered
                        // here, the player's next action waits for the
                        // new owner, not for a round trip after it.
                        match tokio::time::timeout(ANSWER_GRACE, &mut acting).await {
                            Ok(done) => finished(done),
                            Err(_) => Err(NodeError::Moved("the session moved while the action ran".into())),
                        }
                    }
                };
                let reply = match noted(&app, result) {
                    Ok(outcome) => ServerMessage::Ack { id: &client_id, outcome },
                    // Not applied here: moving, or moved just now.
                    Err(NodeError::Moved(_)) | Err(NodeError::NotFound(_)) if in_cluster => {
                        // Not applied here: the new owner answers it.
                        resume.unanswered.push((client_id.clone(), text.to_string()));
                        let moved_away = moved.wait_for(|l| *l != Location::Here);
                        let to = match tokio::time::timeout(Duration::from_secs(5), moved_away).await {
                            Ok(Ok(location)) => match &*location {
                                Location::Moved(to) => to.clone(),
                                Location::Here => None,
                            },
                            Ok(Err(_)) | Err(_) => None,
                        };
                        return socket.follow(app, id, to, resume).await;
                    }
                    Err(e) => ServerMessage::Error { id: Some(&client_id), code: e.code(), message: e.to_string() },
                };
                if !send(&mut socket, &reply).await { return; }
                if let Some(to) = gone_to {
                    return socket.follow(app, id, to, resume).await;
                }
            }
            batch = events.recv() => {
                match batch {
                    Ok(batch) if batch.seq > from => {
                        if let Some(message) = visible(&batch, me) {
                            resume.after = Some(message.seq);
                            if !send(&mut socket, &ServerMessage::Events(message)).await {
                                return;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return close_with(socket, close::TOO_SLOW, "you fell behind; reconnect with your last position").await;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
            Ok(()) = moved.changed() => {
                let location = moved.borrow_and_update().clone();
                if let Location::Moved(to) = location {
                    return socket.follow(app, id, to, resume).await;
                }
            }
            Ok(()) = resets.changed() => {
                return close_with(socket, close::MOVED, "the session went back to an earlier state (an upgrade was rolled back); reconnect to see it").await;
            }
            _ = shutdown.changed() => {
                return close_with(socket, close::GOING_AWAY, "the node is shutting down; reconnect with your last position").await;
            }
        }
    }
}
