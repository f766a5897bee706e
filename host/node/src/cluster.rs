//! The node as one member of a cluster: joining the mesh, writing the
//! journals it replicates, taking over the sessions it comes to own,
//! letting go of those that moved, and forwarding to other nodes over
//! tunnels (creations, players, module bytes).
//!
//! Everything about *who* owns a session is decided by the protocol core
//! (`baton-cluster`); this module only turns its events into sessions.

use std::sync::Arc;
use std::time::Duration;

use baton_cluster::crdt::Entry;
use baton_cluster::node::{Changes, Durable, Event, Key, Record, SessionState};
use baton_store::{GroupCommit, Store, Write};
use baton_transport::{
    DurableStore, Identity, Mesh, MeshConfig, Stamped, WriteDone, wire_version_number,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use crate::config::ClusterConfig;
use crate::error::NodeError;
use crate::node::{CreateSession, Created, Node};

/// The cluster core's durable state in the node's store, through its group
/// commit (so in the order given, sharing fsyncs with everything else): a
/// journal change's entries at their positions (index = position) and the
/// end of the journal; state rows under `s` + session id and `r` + record
/// key. Each journal write done is counted in `written`, for those waiting
/// on a journal.
struct StoreDurable {
    commit: Arc<GroupCommit>,
    written: Arc<watch::Sender<u64>>,
}

const SESSION_ROW: u8 = b's';
const RECORD_ROW: u8 = b'r';

fn row_key(kind: u8, key: &[u8]) -> Vec<u8> {
    let mut row = Vec::with_capacity(1 + key.len());
    row.push(kind);
    row.extend_from_slice(key);
    row
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Only in-memory types with derived encodings: this cannot fail.
    postcard::to_allocvec(value).unwrap_or_default()
}

impl DurableStore for StoreDurable {
    fn write(&self, changes: Changes, done: WriteDone) {
        let journals = changes.journals.into_iter().flat_map(|change| {
            let session = change.session;
            let entries = change.entries.into_iter().zip(change.from..).map({
                let session = session.clone();
                move |(entry, position)| Write::Entry {
                    session: session.clone(),
                    position,
                    entry: entry.action,
                }
            });
            entries.chain([Write::Truncate {
                session,
                len: change.len,
            }])
        });
        let sessions = changes
            .state
            .sessions
            .into_iter()
            .map(|(session, state)| Write::State {
                key: row_key(SESSION_ROW, session.as_bytes()),
                value: (!state.is_empty()).then(|| encode(&state)),
            });
        let records = changes
            .state
            .records
            .into_iter()
            .map(|(key, entry)| Write::State {
                key: row_key(RECORD_ROW, &encode(&key)),
                value: Some(encode(&entry)),
            });
        let written = self.written.clone();
        // One submission: the group commit makes it one transaction.
        self.commit.submit(
            journals.chain(sessions).chain(records).collect(),
            move |result| {
                done(result.map_err(|e| e.to_string()));
                written.send_modify(|n| *n += 1);
            },
        );
    }
}

/// A session row as hosts before `SessionState::learned`, `released` and
/// `offered_to` wrote it.
#[derive(Deserialize, Serialize)]
struct OlderSessionRow {
    epoch: Option<u64>,
    complete: Option<u64>,
    designating: Option<String>,
    handed: Option<baton_cluster::node::Handed>,
    journal: Option<Vec<(u64, u64)>>,
}

/// Decodes a session row. New fields go last, so a row an older host wrote
/// is the newer one cut short: it reads as one without them. (An older host
/// reads a newer row's start and ignores the rest, so a rollback works too.)
fn decode_session_row(bytes: &[u8]) -> postcard::Result<SessionState> {
    postcard::from_bytes(bytes).or_else(|error| {
        let old: OlderSessionRow = postcard::from_bytes(bytes).map_err(|_| error)?;
        Ok(SessionState {
            epoch: old.epoch,
            complete: old.complete,
            designating: old.designating,
            handed: old.handed,
            journal: old.journal,
            learned: None,
            released: None,
            offered_to: None,
        })
    })
}

/// What the core kept in this node's store from its previous boot (nothing
/// for a new node): its rows and its journals.
fn load_durable(store: &dyn Store) -> Result<Durable, NodeError> {
    let damaged = |what: &str, e: &dyn std::fmt::Display| {
        NodeError::Internal(format!(
            "the store's cluster state is damaged ({what}): {e}"
        ))
    };
    let mut sessions = Vec::new();
    let mut records = std::collections::BTreeMap::new();
    for (key, value) in store.state()? {
        match key.split_first() {
            Some((&SESSION_ROW, id)) => {
                let id = String::from_utf8(id.to_vec()).map_err(|e| damaged("a session id", &e))?;
                let state = decode_session_row(&value).map_err(|e| damaged("a session row", &e))?;
                sessions.push((id, state));
            }
            Some((&RECORD_ROW, key)) => {
                let key: Key =
                    postcard::from_bytes(key).map_err(|e| damaged("a record key", &e))?;
                let entry: Entry<Record> =
                    postcard::from_bytes(&value).map_err(|e| damaged("a record", &e))?;
                records.insert(key, entry);
            }
            _ => return Err(damaged("a row", &"of an unknown kind")),
        }
    }
    Durable::from_rows(sessions, records, |session| {
        let journal = store.journal(session, 0)?;
        // Positions are indexes: a gap would shift every later entry.
        if let Some((i, (position, _))) = journal
            .iter()
            .enumerate()
            .find(|(i, (position, _))| *position != *i as u64)
        {
            return Err(NodeError::Internal(format!(
                "the journal of {session} has a gap: entry {position} where {i} belongs"
            )));
        }
        Ok(journal.into_iter().map(|(_, action)| action).collect())
    })
    .map_err(|e| match e {
        baton_cluster::durable::RowsError::Journal(e) => e,
        other => damaged("a journal", &other),
    })
}

/// The first frame on a tunnel: what the opening node wants.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Forward {
    /// Create this session here (placement chose this node).
    Create { id: String, request: CreateSession },
    /// A player's WebSocket, relayed message by message.
    Play { session: String },
    /// A module's bytes, by hash (an empty answer: not here).
    Module { hash: String },
    /// A snapshot for the replica or a handoff target; the sealed
    /// snapshot follows.
    Snapshot(crate::snapshots::Offered),
    /// A handoff's fence, told to its target.
    Fenced(crate::handoff::FenceNote),
    /// Upgrade the sessions this names that run on the node asked.
    Upgrade(crate::upgrade::UpgradeRequest),
}

/// A relayed WebSocket message.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Relayed {
    Text(String),
    Close {
        code: u16,
        reason: String,
    },
    /// The session moved to node `to`: the relay follows it there.
    Moved {
        to: String,
    },
}

const MAX_FRAME: usize = 64 << 20;

pub(crate) async fn write_frame(
    stream: &mut quinn::SendStream,
    bytes: &[u8],
) -> Result<(), NodeError> {
    if bytes.len() > MAX_FRAME {
        return Err(NodeError::TooLarge(format!(
            "a {}-byte frame is over the {MAX_FRAME}-byte limit",
            bytes.len()
        )));
    }
    stream
        .write_all(&(bytes.len() as u32).to_be_bytes())
        .await
        .map_err(tunnel_error)?;
    stream.write_all(bytes).await.map_err(tunnel_error)
}

pub(crate) async fn read_frame(stream: &mut quinn::RecvStream) -> Result<Vec<u8>, NodeError> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.map_err(tunnel_error)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(NodeError::Internal(format!(
            "a peer sent a {len}-byte frame"
        )));
    }
    let mut bytes = vec![0u8; len];
    stream.read_exact(&mut bytes).await.map_err(tunnel_error)?;
    Ok(bytes)
}

pub(crate) async fn write_json<T: Serialize>(
    stream: &mut quinn::SendStream,
    value: &T,
) -> Result<(), NodeError> {
    let bytes = serde_json::to_vec(value).map_err(|e| NodeError::Internal(e.to_string()))?;
    write_frame(stream, &bytes).await
}

pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    stream: &mut quinn::RecvStream,
) -> Result<T, NodeError> {
    let bytes = read_frame(stream).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| NodeError::Internal(format!("a peer sent a bad frame: {e}")))
}

fn tunnel_error(e: impl std::fmt::Display) -> NodeError {
    NodeError::Unavailable(format!("the link to the session's node broke: {e}"))
}

/// An error as it crosses a tunnel.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RemoteError {
    pub(crate) code: String,
    pub(crate) message: String,
}

impl From<RemoteError> for NodeError {
    fn from(e: RemoteError) -> Self {
        NodeError::from_code(&e.code, e.message)
    }
}

impl From<NodeError> for RemoteError {
    fn from(e: NodeError) -> Self {
        RemoteError {
            code: e.code().to_owned(),
            message: e.to_string(),
        }
    }
}

/// Asks node `owner` to create session `id`.
pub(crate) async fn forward_create(
    mesh: &Mesh,
    owner: &str,
    id: &str,
    request: CreateSession,
) -> Result<Created, NodeError> {
    let (mut send, mut recv) = mesh.open(owner).await.map_err(NodeError::Unavailable)?;
    let forward = Forward::Create {
        id: id.to_owned(),
        request,
    };
    write_json(&mut send, &forward).await?;
    let _ = send.finish();
    let answer: Result<Created, RemoteError> = read_json(&mut recv).await?;
    answer.map_err(NodeError::from)
}

/// Asks node `to` to upgrade its sessions that `request` names.
pub(crate) async fn forward_upgrade(
    mesh: &Mesh,
    to: &str,
    request: crate::upgrade::UpgradeRequest,
) -> Result<crate::upgrade::UpgradeReport, NodeError> {
    let (mut send, mut recv) = mesh.open(to).await.map_err(NodeError::Unavailable)?;
    write_json(&mut send, &Forward::Upgrade(request)).await?;
    let _ = send.finish();
    let answer: Result<crate::upgrade::UpgradeReport, RemoteError> = read_json(&mut recv).await?;
    answer.map_err(NodeError::from)
}

/// Starts the mesh for `node` and follows the cluster from then on.
pub(crate) async fn join(node: &Arc<Node>, config: &ClusterConfig) -> Result<(), NodeError> {
    if config.name.is_empty() {
        return Err(NodeError::BadRequest(
            "a cluster node needs a name: the DNS name in its certificate".into(),
        ));
    }
    let mut identity = Identity::from_files(&config.name, &config.cert, &config.key, &config.ca)
        .map_err(|e| NodeError::Internal(format!("cluster identity: {e}")))?;
    let mut core = config.core();
    if !config.wire_versions.is_empty() {
        let versions: Vec<&str> = config.wire_versions.iter().map(String::as_str).collect();
        identity = identity.with_wire_versions(&versions);
        // A host offering only older versions behaves as those hosts did.
        let newest = versions.iter().map(|v| wire_version_number(v)).max();
        core.wire = core.wire.min(newest.unwrap_or(0));
    }
    let mut mesh_config = MeshConfig::new(config.listen, config.seeds.clone());
    mesh_config.node = core;
    mesh_config.host_version = config.host_version;
    mesh_config.replication = config.replication;
    mesh_config.capacity = u32::try_from(node.config.max_sessions).unwrap_or(u32::MAX);
    let durable = {
        let store = node.store.clone();
        tokio::task::spawn_blocking(move || load_durable(&*store))
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))??
    };
    if !durable.journals.is_empty() {
        tracing::info!(
            journals = durable.journals.len(),
            records = durable.records.len(),
            "cluster state read back from the store"
        );
    }
    let store = Arc::new(StoreDurable {
        commit: node.journal.clone(),
        written: node.journals_written.clone(),
    });
    let mesh = Mesh::start(identity, mesh_config, durable, store)
        .await
        .map_err(|e| NodeError::Internal(format!("joining the cluster: {e}")))?;
    tracing::info!(name = %config.name, quic = %mesh.addr(), seeds = ?config.seeds, replication = ?config.replication, "joined the cluster mesh");
    let mesh = Arc::new(mesh);
    let events = mesh.events();
    let records = mesh.records_changed();
    node.mesh
        .set(mesh.clone())
        .map_err(|_| NodeError::Internal("joined the cluster twice".into()))?;
    for module in node.modules() {
        if let Err(e) = mesh.publish_module(&module.id, &module.hash).await {
            tracing::error!(module = %module.id, error = %e, "module conflicts with the cluster's");
        }
    }
    tokio::spawn(follow(node.clone(), events));
    tokio::spawn(sync_modules(node.clone(), records));
    Ok(())
}

/// Turns ownership events into sessions taken over or let go.
async fn follow(node: Arc<Node>, mut events: broadcast::Receiver<Stamped>) {
    loop {
        let Stamped { event, at_us } = match events.recv().await {
            Ok(stamped) => stamped,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "fell behind the cluster's events; reconciling");
                node.reconcile().await;
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        match event {
            Event::HandingOff { session, to } => {
                if let Ok(cell) = node.cell_by_id(&session) {
                    cell.leaving
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    let module = cell.record.module.clone();
                    tokio::spawn(crate::handoff::warm(node.clone(), session, module, to));
                } else if let Some(mesh) = node.mesh.get() {
                    // Not taken over here yet: nothing to warm the target with.
                    mesh.warmed(&session, to).await;
                }
            }
            Event::Fenced {
                session, len, to, ..
            } => {
                // Looked up now, before the session can move away; timed
                // from when the core reported it.
                tracing::debug!(%session, position = len, target = %to.name, "fenced for the handoff");
                if let Ok(cell) = node.cell_by_id(&session) {
                    crate::handoff::fenced(&node, cell, len, to, at_us);
                }
            }
            // Epoch 1 is a creation: the creating call starts it itself.
            Event::Owner { session, epoch } if epoch > 1 => {
                tracing::debug!(%session, epoch, "owns the session now; restoring it");
                node.note_owned(&session, at_us);
                let node = node.clone();
                tokio::spawn(async move {
                    if let Err(e) = node.adopt(&session).await {
                        tracing::error!(%session, epoch, error = %e, "could not take the session over");
                    }
                });
            }
            Event::HandoffCalledOff { session, .. } => node.call_off_handoff(&session),
            Event::SteppedDown { session, epoch, to } => {
                let to = to.map(|id| id.name);
                tracing::info!(%session, epoch, to = to.as_deref().unwrap_or("?"), "the session moved away");
                node.release(&session, to).await;
            }
            _ => {}
        }
    }
}

/// Fetches every module the cluster knows and this node lacks: at start,
/// whenever the records change, and again after a failed fetch. `/readyz`
/// waits for them (see `Node::readiness`).
async fn sync_modules(node: Arc<Node>, mut records: watch::Receiver<u64>) {
    // After a failed fetch (a peer's link not up yet), again after this,
    // doubling up to a few seconds, or at the next records change.
    const FIRST_RETRY: Duration = Duration::from_millis(100);
    const LAST_RETRY: Duration = Duration::from_secs(5);
    // Past this, a module no node sends is reported, not waited for: the
    // node turns ready without it rather than stall a deploy.
    const GIVE_UP: Duration = Duration::from_secs(15);
    let mut retry: Option<Duration> = None;
    let mut failing_since: Option<std::time::Instant> = None;
    loop {
        let Some(mesh) = node.mesh.get() else { return };
        let mut failed = Vec::new();
        for (id, hash) in mesh.modules().await {
            if node.has_module_hash(&hash) {
                continue;
            }
            match fetch_module(mesh, &hash).await {
                Ok(bytes) => match node.publish(bytes).await {
                    Ok(_) => tracing::info!(module = %id, "module fetched from the cluster"),
                    Err(e) => tracing::error!(module = %id, error = %e, "fetched module refused"),
                },
                Err(e) => failed.push(format!("{id}: {e}")),
            }
        }
        let given_up = if failed.is_empty() {
            retry = None;
            failing_since = None;
            false
        } else {
            let after = retry.map_or(FIRST_RETRY, |after| (after * 2).min(LAST_RETRY));
            retry = Some(after);
            let given_up = failing_since
                .get_or_insert_with(std::time::Instant::now)
                .elapsed()
                >= GIVE_UP;
            if given_up {
                tracing::error!(
                    ?failed,
                    retry_ms = after.as_millis(),
                    "no node sends these modules: their sessions cannot start here; this node is ready without them"
                );
            } else {
                tracing::warn!(
                    ?failed,
                    retry_ms = after.as_millis(),
                    "modules not fetched yet; /readyz waits for them"
                );
            }
            given_up
        };
        node.modules_unreachable
            .store(given_up, std::sync::atomic::Ordering::Relaxed);
        let changed = match retry {
            Some(after) => tokio::time::timeout(after, records.changed())
                .await
                .unwrap_or(Ok(())),
            None => records.changed().await,
        };
        if changed.is_err() {
            return;
        }
    }
}

/// A module's bytes from any peer that has them, checked against `hash`.
pub(crate) async fn fetch_module(mesh: &Mesh, hash: &str) -> Result<Vec<u8>, NodeError> {
    for peer in mesh.peers().await {
        let Ok((mut send, mut recv)) = mesh.open(&peer.name).await else {
            continue;
        };
        let asked = Forward::Module {
            hash: hash.to_owned(),
        };
        if write_json(&mut send, &asked).await.is_err() {
            continue;
        }
        let _ = send.finish();
        let Ok(bytes) = read_frame(&mut recv).await else {
            continue;
        };
        if !bytes.is_empty() && baton_snapshot::ModuleHash::of(&bytes).to_hex() == hash {
            return Ok(bytes);
        }
    }
    Err(NodeError::Unavailable(format!(
        "no node could send module {hash}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_rows_read_across_host_versions() {
        let old = OlderSessionRow {
            epoch: Some(4),
            complete: Some(3),
            designating: Some("n2".into()),
            handed: None,
            journal: Some(vec![(0, 1), (7, 4)]),
        };
        // An older host's row, read by this one.
        let state = decode_session_row(&encode(&old)).expect("an older row");
        assert_eq!(
            (
                state.epoch,
                state.complete,
                state.journal.as_deref(),
                state.learned
            ),
            (Some(4), Some(3), Some(&[(0, 1), (7, 4)][..]), None)
        );
        // This host's row, read by this one and by an older one.
        let state = SessionState {
            learned: Some(4),
            offered_to: Some("n3".into()),
            ..state
        };
        assert_eq!(
            decode_session_row(&encode(&state)).ok(),
            Some(state.clone())
        );
        let read_by_older: OlderSessionRow =
            postcard::from_bytes(&encode(&state)).expect("read by an older host");
        assert_eq!(read_by_older.designating.as_deref(), Some("n2"));
        // Damage is still damage.
        assert!(decode_session_row(&[0xff, 0xff, 0xff]).is_err());
    }
}
