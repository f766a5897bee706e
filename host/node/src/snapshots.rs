//! Snapshots: how one is sealed with the node's bookkeeping, and how an
//! owner keeps its replica's copy of each session close behind.
//!
//! The owner ships each background checkpoint of a session to the
//! session's replica: as a delta when the replica holds the capture before
//! it, whole otherwise (a new replica, a transfer that failed). A takeover
//! then restores the latest snapshot and replays only the journal after it.
//!
//! Each transfer is its own QUIC stream, so a bulk snapshot never delays a
//! heartbeat or a journal acknowledgement. A session has at most one
//! transfer in flight; captures taken meanwhile fold into the one waiting,
//! so a slow replica gets fewer, larger deltas, never a growing queue.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use baton_runtime::{Delta, Image};
use baton_sdk::wire;
use baton_transport::Mesh;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cluster::{Forward, RemoteError, read_json, write_frame, write_json};
use crate::error::NodeError;
use crate::node::{ACT_MEMORY, ActOutcome, Node};
use crate::tokens;

/// What the node keeps with a snapshot besides the instance: enough to
/// answer retried action ids, tick on time and report status after a
/// restart or a takeover.
#[derive(Clone, Serialize, Deserialize, Default)]
pub(crate) struct SnapshotMeta {
    pub(crate) acts: Vec<(String, String, ActOutcome)>,
    pub(crate) next_tick: Option<u64>,
    pub(crate) status: Option<wire::Status>,
    /// On a replica: the journal entry just before the snapshot's position
    /// as the owner had it. A takeover uses the snapshot only if its own
    /// journal still agrees (a later owner may have rewritten history that
    /// was never acknowledged).
    #[serde(default)]
    pub(crate) tail: Option<Tail>,
}

impl SnapshotMeta {
    pub(crate) fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The same, with only the action ids at or after `base`: what a
    /// replica that holds the snapshot at `base` lacks.
    fn since(&self, base: u64) -> Self {
        SnapshotMeta {
            acts: self
                .acts
                .iter()
                .filter(|(_, _, outcome)| outcome.seq() >= base)
                .cloned()
                .collect(),
            ..self.clone()
        }
    }

    /// Folds the bookkeeping of a delta (`later`, ids since this one's
    /// position) into this one: the same as the owner's at `later`'s
    /// position.
    fn then(&mut self, later: SnapshotMeta) {
        self.acts.extend(later.acts);
        let over = self.acts.len().saturating_sub(ACT_MEMORY);
        self.acts.drain(..over);
        self.next_tick = later.next_tick;
        self.status = later.status;
    }
}

/// One journal entry, identified: its epoch and the SHA-256 of its bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Tail {
    pub(crate) epoch: u64,
    pub(crate) sha256: String,
}

impl Tail {
    pub(crate) fn of(entry: &baton_cluster::node::JournalEntry) -> Self {
        Tail {
            epoch: entry.epoch,
            sha256: tokens::hex(&Sha256::digest(&entry.action)),
        }
    }
}

/// Whether a snapshot with `meta` follows `before`, the journal entry just
/// before its position in this node's copy of the journal.
pub(crate) fn agrees(
    meta: &SnapshotMeta,
    before: Option<&baton_cluster::node::JournalEntry>,
) -> bool {
    matches!((before, &meta.tail), (Some(entry), Some(tail)) if Tail::of(entry) == *tail)
}

/// `[meta length u32 LE][meta JSON][snapshot]`: one value in the store, so
/// the two can never disagree.
pub(crate) fn seal(meta: &[u8], snapshot: &[u8]) -> Vec<u8> {
    let mut out = bookkeeping(meta, snapshot.len());
    out.extend_from_slice(snapshot);
    out
}

/// [`seal`] of `image`, encoded in place behind its bookkeeping.
pub(crate) fn seal_image(meta: &[u8], image: &Image) -> Vec<u8> {
    let mut out = bookkeeping(meta, 0);
    image.encode_into(&mut out);
    out
}

/// `sealed`, whose snapshot is its last `snapshot` bytes, with its
/// bookkeeping replaced by `meta`, in the same buffer (a fresh one would be
/// megabytes more to fault in and copy).
fn reseal(mut sealed: Vec<u8>, snapshot: usize, meta: &[u8]) -> Vec<u8> {
    let old = sealed.len().saturating_sub(snapshot);
    sealed.splice(..old, bookkeeping(meta, 0));
    sealed
}

/// The part of a sealed snapshot before the snapshot, with room for
/// `snapshot` more bytes.
fn bookkeeping(meta: &[u8], snapshot: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + meta.len() + snapshot);
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(meta);
    out
}

/// Splits a sealed snapshot into its bookkeeping and the snapshot.
pub(crate) fn open(stored: &[u8]) -> Result<(SnapshotMeta, &[u8]), NodeError> {
    let damaged = || NodeError::Internal("a stored snapshot is damaged".into());
    let (len, rest) = stored.split_at_checked(4).ok_or_else(damaged)?;
    let len = u32::from_le_bytes(len.try_into().map_err(|_| damaged())?) as usize;
    let (meta, snapshot) = rest.split_at_checked(len).ok_or_else(|| {
        NodeError::Internal(format!(
            "a stored snapshot is damaged: {} bytes of bookkeeping announced, {} stored",
            len,
            rest.len()
        ))
    })?;
    let meta = serde_json::from_slice(meta).map_err(|e| {
        NodeError::Internal(format!("a stored snapshot's bookkeeping is damaged: {e}"))
    })?;
    Ok((meta, snapshot))
}

/// A checkpoint stored here, waiting to be shipped to the replica.
pub(crate) struct Capture {
    /// The journal position it covers.
    pub(crate) position: u64,
    /// The node's bookkeeping.
    pub(crate) meta: SnapshotMeta,
    /// The whole snapshot, sealed with `meta`, as stored here.
    pub(crate) sealed: Arc<Vec<u8>>,
    /// The pages changed since the capture before it, if known.
    pub(crate) delta: Option<Delta>,
}

/// One session's snapshot shipping (see the module docs).
#[derive(Default)]
pub(crate) struct Shipper {
    state: Mutex<Shipping>,
    /// A capture was offered (wakes a task waiting for a replica).
    offered: tokio::sync::Notify,
}

#[derive(Default)]
struct Shipping {
    /// A transfer task is running.
    sending: bool,
    /// The next capture to ship.
    waiting: Option<Capture>,
    /// The replica and the position of the snapshot it holds.
    held: Option<(String, u64)>,
}

impl Shipper {
    fn with<T>(&self, f: impl FnOnce(&mut Shipping) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Queues a capture; true when the caller is to start the transfer
    /// task ([`ship`]).
    pub(crate) fn offer(&self, capture: Capture) -> bool {
        let start = self.with(|s| {
            s.waiting = Some(match s.waiting.take() {
                Some(older) => fold(older, capture),
                None => capture,
            });
            !std::mem::replace(&mut s.sending, true)
        });
        self.offered.notify_one();
        start
    }

    /// The next capture and what the replica holds; ends the task if none.
    fn next(&self) -> Option<(Capture, Option<(String, u64)>)> {
        self.with(|s| match s.waiting.take() {
            Some(capture) => Some((capture, s.held.clone())),
            None => {
                s.sending = false;
                None
            }
        })
    }

    /// Puts a capture that did not land back in front of what waits.
    fn keep(&self, capture: Capture) {
        self.with(|s| {
            s.waiting = Some(match s.waiting.take() {
                Some(newer) => fold(capture, newer),
                None => capture,
            });
        });
    }

    /// The replica is behind the capture: keep it for the next offer.
    fn requeue(&self, capture: Capture) {
        self.keep(capture);
        self.with(|s| s.sending = false);
    }

    /// Ends the task and forgets what waits (the session is not ours).
    fn stop(&self) {
        self.with(|s| {
            s.waiting = None;
            s.held = None;
            s.sending = false;
        });
    }

    fn shipped(&self, replica: String, position: u64) {
        self.with(|s| s.held = Some((replica, position)));
    }

    /// A transfer failed: the next one goes whole.
    fn failed(&self) {
        self.with(|s| s.held = None);
    }
}

/// `newer` with `older`'s delta folded in front of its own, so that it
/// still applies on what the replica holds.
fn fold(older: Capture, newer: Capture) -> Capture {
    let delta = match (older.delta, newer.delta) {
        (Some(mut first), Some(then)) => first.then(then).ok().map(|()| first),
        _ => None,
    };
    Capture { delta, ..newer }
}

/// The first wire version whose nodes take snapshot transfers.
pub(crate) const SNAPSHOT_WIRE_VERSION: u32 = 2;

/// How long a replica waits for its journal to reach a shipped snapshot.
const JOURNAL_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The first frame of a snapshot transfer; the sealed snapshot follows.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Offered {
    pub(crate) session: String,
    pub(crate) position: u64,
    /// A delta on the snapshot at this position, or `None`: a full one.
    pub(crate) base: Option<u64>,
    /// The journal entry before `position`, as the owner has it.
    pub(crate) tail: Tail,
    /// A handoff's warm snapshot: the receiver is about to take the session
    /// over, and restores it right away (see `handoff::Standby`).
    #[serde(default)]
    pub(crate) standby: bool,
}

/// Ships a session's waiting captures to its replica until none wait.
/// Without a reachable replica (one is being chosen, or it just left) the
/// capture waits for the records to change or a newer capture.
pub(crate) async fn ship(node: Arc<Node>, id: String, module: String, shipper: Arc<Shipper>) {
    let Some(mesh) = node.mesh.get().cloned() else {
        return shipper.stop();
    };
    let mut records = mesh.records_changed();
    while let Some((capture, held)) = shipper.next() {
        let Some(record) = mesh
            .record(&id)
            .await
            .filter(|r| r.owner.name == mesh.name())
        else {
            return shipper.stop();
        };
        let (Some(before), false) = (capture.position.checked_sub(1), record.replica.is_empty())
        else {
            shipper.keep(capture);
            wait_for_change(&mut records, &shipper).await;
            continue;
        };
        let Some(tail) = mesh.journal(&id, before).await.first().map(Tail::of) else {
            return shipper.stop();
        };
        let replica = record.replica;
        match mesh.wire_version(&replica) {
            Some(version) if version < SNAPSHOT_WIRE_VERSION => {
                // An older host: it rebuilds from the journal alone.
                shipper.failed();
                continue;
            }
            Some(_) => {}
            None => {
                shipper.keep(capture);
                wait_for_change(&mut records, &shipper).await;
                continue;
            }
        }
        let started = Instant::now();
        let position = capture.position;
        let whole = held.as_ref().is_none_or(|(to, _)| *to != replica);
        match transfer(&mesh, &replica, &id, capture, held.as_ref(), tail).await {
            Ok((kind, bytes)) => {
                node.metrics
                    .replica_snapshot(&module, kind, bytes, started.elapsed());
                shipper.shipped(replica, position);
            }
            Err(Transfer::Behind(capture)) => return shipper.requeue(capture),
            Err(Transfer::Lost(e)) => {
                tracing::error!(session = %id, error = %e, "a snapshot could not be encoded");
                shipper.failed();
            }
            Err(Transfer::Failed(capture, e)) => {
                tracing::warn!(session = %id, %replica, error = %e, "shipping a snapshot failed; the next one goes whole");
                shipper.failed();
                shipper.keep(capture);
                if whole {
                    // Retrying at once would fail alike: wait for news.
                    wait_for_change(&mut records, &shipper).await;
                }
            }
        }
    }
}

async fn wait_for_change(records: &mut tokio::sync::watch::Receiver<u64>, shipper: &Shipper) {
    tokio::select! {
        _ = records.changed() => {}
        () = shipper.offered.notified() => {}
    }
}

/// Why a transfer did not land.
enum Transfer {
    /// The replica's journal does not reach the capture yet: keep it.
    Behind(Capture),
    /// The link or the replica failed: keep it, to send whole.
    Failed(Capture, NodeError),
    /// Encoding it failed (a panic): it is gone, the next one goes whole.
    Lost(NodeError),
}

/// Sends one capture: a delta if the replica holds its base, else whole.
/// Returns the kind sent and its size.
async fn transfer(
    mesh: &Mesh,
    replica: &str,
    id: &str,
    capture: Capture,
    held: Option<&(String, u64)>,
    tail: Tail,
) -> Result<(&'static str, u64), Transfer> {
    let base = capture
        .delta
        .as_ref()
        .map(|d| d.base)
        .filter(|base| held.is_some_and(|(to, at)| to == replica && at == base));
    // A whole snapshot goes as stored; a delta is sealed with only the
    // bookkeeping its base lacks.
    let (capture, body) = match base {
        Some(base) => tokio::task::spawn_blocking(move || {
            let delta = capture
                .delta
                .as_ref()
                .map(Delta::encode)
                .unwrap_or_default();
            let body = seal(&capture.meta.since(base).to_json(), &delta);
            (capture, Arc::new(body))
        })
        .await
        .map_err(|e| Transfer::Lost(NodeError::Internal(e.to_string())))?,
        None => {
            let body = capture.sealed.clone();
            (capture, body)
        }
    };
    let bytes = body.len() as u64;
    let offered = Offered {
        session: id.to_owned(),
        position: capture.position,
        base,
        tail,
        standby: false,
    };
    let answer = send(mesh, replica, offered, &body, || {}).await;
    let kind = if base.is_some() { "delta" } else { "full" };
    match answer {
        Ok(Ok(())) => Ok((kind, bytes)),
        Ok(Err(e)) if e.code == "unavailable" => Err(Transfer::Behind(capture)),
        Ok(Err(e)) => Err(Transfer::Failed(capture, e.into())),
        Err(e) => Err(Transfer::Failed(capture, e)),
    }
}

/// Sends node `to` a whole sealed snapshot of session `id` at `position`,
/// a handoff's warm one (the target restores it right away); `sent` runs
/// once the body is on its way, before the target has stored and
/// restored it.
pub(crate) async fn offer_whole(
    mesh: &Mesh,
    to: &str,
    id: &str,
    position: u64,
    sealed: &[u8],
    tail: Tail,
    sent: impl FnOnce(),
) -> Result<(), NodeError> {
    let offered = Offered {
        session: id.to_owned(),
        position,
        base: None,
        tail,
        standby: true,
    };
    send(mesh, to, offered, sealed, sent)
        .await?
        .map_err(NodeError::from)
}

/// One transfer on its own stream: the offer, the body, and the answer.
async fn send(
    mesh: &Mesh,
    to: &str,
    offered: Offered,
    body: &[u8],
    sent: impl FnOnce(),
) -> Result<Result<(), RemoteError>, NodeError> {
    let (mut send, mut recv) = mesh.open(to).await.map_err(NodeError::Unavailable)?;
    // Bulk: the connection's other streams (the protocol's messages, a
    // handoff's transfer among them) go first.
    let _ = send.set_priority(-1);
    write_json(&mut send, &Forward::Snapshot(offered)).await?;
    write_frame(&mut send, body).await?;
    let _ = send.finish();
    sent();
    read_json::<Result<(), RemoteError>>(&mut recv).await
}

/// Keeps a snapshot the session's owner shipped here, once this node's
/// copy of the journal holds what the snapshot covers.
pub(crate) async fn receive(
    node: &Arc<Node>,
    offered: Offered,
    sealed: Vec<u8>,
) -> Result<(), NodeError> {
    let mesh = node
        .mesh
        .get()
        .ok_or_else(|| NodeError::NotFound("this node is not in a cluster".into()))?;
    let id = &offered.session;
    let before = offered
        .position
        .checked_sub(1)
        .ok_or_else(|| NodeError::BadRequest("a snapshot of position 0".into()))?;
    // A new replica may still be receiving the record or the journal: wait
    // for them (as long as an owner waits for a journal acknowledgement).
    let mut written = node.journals_written.subscribe();
    let mut records = mesh.records_changed();
    let give_up = tokio::time::Instant::now() + JOURNAL_WAIT;
    let record = loop {
        let record = mesh.record(id).await;
        let tail = mesh.journal(id, before).await.first().map(Tail::of);
        if let (Some(record), true) = (record, tail.as_ref() == Some(&offered.tail)) {
            break record;
        }
        tokio::select! {
            _ = written.changed() => {}
            _ = records.changed() => {}
            () = tokio::time::sleep_until(give_up) => {
                return Err(NodeError::Unavailable(format!(
                    "this node's journal of {id} does not reach position {} yet",
                    offered.position
                )));
            }
        }
    };
    // A handoff's warm snapshot may come before the module's record did
    // its own fetch here; its standby needs the module now.
    if offered.standby {
        node.fetch_missing([&record.module_hash]).await?;
    }
    let node = node.clone();
    tokio::task::spawn_blocking(move || keep(&node, offered, sealed, &record))
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))?
}

/// Checks a shipped snapshot, folds a delta into the snapshot stored here,
/// and stores the result with the owner's tail (blocking).
fn keep(
    node: &Node,
    offered: Offered,
    sealed: Vec<u8>,
    record: &baton_cluster::node::SessionRecord,
) -> Result<(), NodeError> {
    let module = record.module_hash.as_str();
    let unusable =
        |e: baton_runtime::SnapshotError| NodeError::BadRequest(format!("unusable snapshot: {e}"));
    let (shipped, body) = open(&sealed)?;
    let snapshot_len = body.len();
    let id = &offered.session;
    // A whole snapshot is kept as it came (under this node's bookkeeping);
    // a delta makes a new one.
    let (image, whole, mut meta) = match offered.base {
        None => (Image::decode(body).map_err(unusable)?, true, shipped),
        Some(base) => {
            let delta = Delta::decode(body).map_err(unusable)?;
            let stored = node.store.snapshot(id)?;
            let Some((at, stored)) = stored.filter(|(at, _)| *at == base && delta.base == base)
            else {
                return Err(NodeError::Conflict(format!(
                    "no snapshot of {id} at position {base} here to apply a delta on"
                )));
            };
            let (mut meta, image) = open(&stored)?;
            let mut image = Image::decode(image).map_err(unusable)?;
            debug_assert_eq!(image.position, at);
            image.apply(&delta).map_err(unusable)?;
            meta.then(shipped);
            (image, false, meta)
        }
    };
    // An upgraded session's snapshot is of the module it switched to.
    let known = image.module.to_hex() == module || node.has_module_hash(&image.module.to_hex());
    if !known || image.position != offered.position {
        return Err(NodeError::BadRequest(format!(
            "the snapshot is of module {} at position {}, not of a module {id} runs here at {}",
            image.module.to_hex(),
            image.position,
            offered.position
        )));
    }
    meta.tail = Some(offered.tail);
    let sealed = if whole {
        reseal(sealed, snapshot_len, &meta.to_json())
    } else {
        seal_image(&meta.to_json(), &image)
    };
    node.put_snapshot(id, offered.position, Arc::new(sealed))?;
    if offered.standby
        && let Ok(session) = crate::node::SessionRecord::from_cluster(id, record)
    {
        node.prepare_standby(id, session.limits, image, meta);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(seqs: std::ops::Range<u64>) -> SnapshotMeta {
        SnapshotMeta {
            acts: seqs
                .map(|seq| {
                    (
                        "p".to_owned(),
                        format!("c{seq}"),
                        ActOutcome::Accepted { seq },
                    )
                })
                .collect(),
            next_tick: Some(7),
            ..SnapshotMeta::default()
        }
    }

    fn ids(meta: &SnapshotMeta) -> Vec<String> {
        meta.acts.iter().map(|(_, id, _)| id.clone()).collect()
    }

    #[test]
    fn resealing_swaps_the_bookkeeping_and_keeps_the_snapshot() {
        let body = b"the snapshot's bytes".to_vec();
        for (before, after) in [(meta(0..2), meta(0..40)), (meta(0..40), meta(0..1))] {
            let sealed = reseal(seal(&before.to_json(), &body), body.len(), &after.to_json());
            let (opened, snapshot) = open(&sealed).expect("opens");
            assert_eq!((ids(&opened), snapshot), (ids(&after), &body[..]));
        }
    }

    #[test]
    fn a_replica_folding_a_deltas_ids_holds_the_owners() {
        let owner = meta(0..30);
        let mut replica = meta(0..12);
        replica.then(owner.since(12));
        assert_eq!(ids(&replica), ids(&owner));
        assert_eq!(replica.next_tick, owner.next_tick);
    }

    #[test]
    fn folded_ids_keep_the_owners_window() {
        let total = ACT_MEMORY as u64 + 100;
        let owner_all = meta(0..total);
        let window = &owner_all.acts[owner_all.acts.len() - ACT_MEMORY..];
        let mut replica = meta(0..total - 50);
        replica
            .acts
            .drain(..replica.acts.len().saturating_sub(ACT_MEMORY));
        replica.then(owner_all.since(total - 50));
        assert_eq!(replica.acts.len(), ACT_MEMORY);
        assert_eq!(
            replica.acts.first().map(|a| &a.1),
            window.first().map(|a| &a.1)
        );
        assert_eq!(
            replica.acts.last().map(|a| &a.1),
            window.last().map(|a| &a.1)
        );
    }
}
