//! Handoffs on drain, the host's side: the protocol core decides who takes
//! each session and when to fence; this module makes the cutover short and
//! checks that it was exact.
//!
//! 1. **Warm** (the core says `HandingOff`): the owner captures the session
//!    and sends the target a whole snapshot while the session keeps
//!    serving; then it tells the core the target is warm, and only then
//!    does the core fence. The target stores the snapshot and restores it
//!    at once into a [`Standby`] instance, so that its takeover only
//!    replays the few entries after it.
//! 2. **Fence** (the core says `Fenced`): the owner waits for the call in
//!    flight, hashes the instance's memory at the fence and sends the
//!    target a [`FenceNote`]. A call that ran just after the fence (the
//!    core refused to journal it) left the instance a step ahead; the
//!    hash is then the one the owner took before that call (it hashes
//!    before each call once the target is warm).
//! 3. **Arrival** (on the target): the hash after restore, the note, and the
//!    time from the fence to the first action applied here (the cutover)
//!    make the session's [`Arrival`], reported with the session.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_cluster::NodeId;
use serde::{Deserialize, Serialize};

use crate::cluster::{Forward, RemoteError, read_json, write_json};
use crate::error::NodeError;
use crate::node::{Node, SessionCell};
use crate::snapshots::{self, SnapshotMeta, Tail};

/// Microseconds since the Unix epoch: fence and arrival are stamped on two
/// nodes' clocks (one clock on one machine; across machines the cutover
/// figure carries their offset).
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A session restored on a handoff's target from the owner's warm
/// snapshot, before the transfer: the takeover starts from it if the
/// journal still agrees, as it would from the stored snapshot it equals.
pub(crate) struct Standby {
    /// The journal position of the snapshot.
    pub(crate) position: u64,
    /// The bookkeeping stored with it.
    pub(crate) meta: SnapshotMeta,
    pub(crate) session: baton_runtime::Session,
    since: Instant,
}

impl Standby {
    /// Whether the journal still agrees with the standby: `before` is the
    /// entry just before its position.
    pub(crate) fn fits(&self, before: Option<&baton_cluster::node::JournalEntry>) -> bool {
        snapshots::agrees(&self.meta, before)
    }
}

/// Most standbys a node holds (each is an instance and its memory); warm
/// snapshots past that are only stored.
const MAX_STANDBYS: usize = 64;

/// A standby whose transfer never came (the handoff was called off) is
/// dropped after this long.
const STANDBY_TTL: Duration = Duration::from_secs(60);

/// How long a player who follows a session here at its fence waits for the
/// transfer before being sent back to the owner the records name.
pub(crate) const STANDBY_WAIT: Duration = Duration::from_secs(1);

/// What the old owner tells the target at the fence.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct FenceNote {
    pub(crate) session: String,
    /// The old owner's name.
    pub(crate) from: String,
    /// The journal length at the fence.
    pub(crate) position: u64,
    /// SHA-256 of the instance's memories and globals at the fence, hex.
    pub(crate) digest: String,
    /// When the fence was seen (µs since the Unix epoch, the old owner's clock).
    pub(crate) fenced_at_us: u64,
}

/// How a session came to this node (handoff or failover), as its new
/// owner saw it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Arrival {
    /// The previous owner, when it handed the session over (absent after a
    /// failover).
    pub from: Option<String>,
    /// The journal position the session resumed at.
    pub position: u64,
    /// The snapshot position the restore started from (0: replayed all).
    pub snapshot: u64,
    /// SHA-256 of the memories and globals right after the restore, hex.
    pub restored_digest: String,
    /// The same hash taken by the previous owner at the fence.
    pub fence_digest: Option<String>,
    /// Whether the two hashes are equal (absent until both are known).
    pub exact: Option<bool>,
    /// Milliseconds from the fence until this node owned the session (the
    /// protocol's part of the handoff: last entries, handover, transfer).
    pub owned_ms: Option<f64>,
    /// Milliseconds from the fence until the session was restored here,
    /// ready to apply.
    pub ready_ms: Option<f64>,
    /// Milliseconds from the fence to the first action applied here: the
    /// rules ran it (the cutover pause, if a player was waiting to act).
    pub cutover_ms: Option<f64>,
    /// Milliseconds from the fence until that action was durable as the
    /// replication mode asks, and acknowledged to its player.
    pub acked_ms: Option<f64>,
    #[serde(skip)]
    pub(crate) module: String,
    #[serde(skip)]
    pub(crate) fenced_at_us: Option<u64>,
    #[serde(skip)]
    pub(crate) owned_us: Option<u64>,
    #[serde(skip)]
    pub(crate) restored_us: Option<u64>,
    #[serde(skip)]
    pub(crate) first_applied_us: Option<u64>,
    #[serde(skip)]
    pub(crate) first_acked_us: Option<u64>,
}

impl Arrival {
    /// Fills in what both sides are known for; true when the cutover
    /// became known with this call.
    fn settle(&mut self) -> bool {
        if let Some(fence) = &self.fence_digest {
            self.exact = Some(*fence == self.restored_digest);
        }
        let ms = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1000.0;
        if let Some(fenced) = self.fenced_at_us {
            self.owned_ms = self.owned_us.map(|owned| ms(fenced, owned));
            self.ready_ms = self.restored_us.map(|restored| ms(fenced, restored));
            self.acked_ms = self.first_acked_us.map(|acked| ms(fenced, acked));
        }
        match (self.cutover_ms, self.fenced_at_us, self.first_applied_us) {
            (None, Some(fenced), Some(applied)) => {
                self.cutover_ms = Some(ms(fenced, applied));
                true
            }
            _ => false,
        }
    }
}

/// Sends `to` a whole, current snapshot of session `id`, then tells the
/// core it is warm, even if the transfer failed: the target then replays
/// the journal, slower but as exact.
pub(crate) async fn warm(node: Arc<Node>, id: String, module: String, to: NodeId) {
    let started = std::time::Instant::now();
    match send_snapshot(&node, &id, &to.name).await {
        Ok(Some(bytes)) => {
            tracing::debug!(session = %id, target = %to.name, bytes, took = ?started.elapsed(), "handoff target warmed");
            node.metrics
                .handoff_warmed(&module, bytes, started.elapsed());
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(session = %id, target = %to.name, error = %e, "could not warm the handoff target; it will replay the journal");
        }
    }
    // Before the core hears of it (if the transfer did not already).
    node.fence_near(&id);
    if let Some(mesh) = node.mesh.get() {
        mesh.warmed(&id, to).await;
    }
}

async fn send_snapshot(node: &Arc<Node>, id: &str, to: &str) -> Result<Option<u64>, NodeError> {
    let Some(mesh) = node.mesh.get() else {
        return Ok(None);
    };
    if !speaks_handoff(mesh, to) {
        // An older host: it takes the session over from the journal alone.
        return Ok(None);
    }
    let Some((position, sealed)) = node.capture_for_handoff(id).await? else {
        return Ok(None);
    };
    let Some(tail) = mesh
        .journal(id, position.saturating_sub(1))
        .await
        .first()
        .map(Tail::of)
    else {
        return Ok(None);
    };
    // The fence is near once the body is on its way: the target's store
    // and restore take a few milliseconds more, in which calls go on.
    snapshots::offer_whole(mesh, to, id, position, &sealed, tail, || {
        node.fence_near(id)
    })
    .await?;
    Ok(Some(sealed.len() as u64))
}

/// A fence note on its way (counted from the fence event): uncounted when
/// dropped.
struct FenceNoteSent(Arc<Node>);

impl Drop for FenceNoteSent {
    fn drop(&mut self) {
        self.0.fence_notes.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// At the fence (called as the host reads the event): the session's
/// players here go to the target at once, and a task hashes the session
/// and tells the target.
pub(crate) fn fenced(
    node: &Arc<Node>,
    cell: Arc<SessionCell>,
    position: u64,
    to: NodeId,
    fenced_at_us: u64,
) {
    let Some(mesh) = node.mesh.get() else { return };
    if !speaks_handoff(mesh, &to.name) {
        return;
    }
    node.send_players_ahead(&cell, &to.name);
    // Counted here, before the drain can see it end.
    node.fence_notes.send_modify(|n| *n += 1);
    let sending = FenceNoteSent(node.clone());
    tokio::spawn(send_fence_note(sending, cell, position, to, fenced_at_us));
}

/// Hashes the session as it stands at the fence and tells the target.
async fn send_fence_note(
    sending: FenceNoteSent,
    cell: Arc<SessionCell>,
    position: u64,
    to: NodeId,
    fenced_at_us: u64,
) {
    let node = &sending.0;
    let id = cell.record.id.clone();
    let Some(mesh) = node.mesh.get() else { return };
    let digest = match node.digest_at(cell, position).await {
        Ok(digest) => digest,
        Err(e) => {
            tracing::warn!(session = %id, error = %e, "could not hash the session at the fence");
            return;
        }
    };
    let note = FenceNote {
        session: id.clone(),
        from: mesh.name().to_owned(),
        position,
        digest,
        fenced_at_us,
    };
    let sent = async {
        let (mut send, mut recv) = mesh.open(&to.name).await.map_err(NodeError::Unavailable)?;
        write_json(&mut send, &Forward::Fenced(note)).await?;
        let _ = send.finish();
        read_json::<Result<(), RemoteError>>(&mut recv)
            .await?
            .map_err(NodeError::from)
    };
    if let Err(e) = sent.await {
        tracing::warn!(session = %id, target = %to.name, error = %e, "the fence note did not arrive");
    }
}

/// Whether node `to` takes snapshots and fence notes (wire version 2).
fn speaks_handoff(mesh: &baton_transport::Mesh, to: &str) -> bool {
    mesh.wire_version(to)
        .is_some_and(|v| v >= snapshots::SNAPSHOT_WIRE_VERSION)
}

impl Node {
    /// Restores a warm snapshot of session `id` into a standby instance
    /// (blocking), if there is room.
    pub(crate) fn prepare_standby(
        &self,
        id: &str,
        limits: baton_runtime::Limits,
        image: baton_runtime::Image,
        meta: SnapshotMeta,
    ) {
        let position = image.position;
        {
            let standbys = self.standbys();
            if standbys.len() >= MAX_STANDBYS && !standbys.contains_key(id) {
                return;
            }
        }
        match self.restore_image(id, limits, image) {
            Ok(session) => {
                let standby = Standby {
                    position,
                    meta,
                    session,
                    since: Instant::now(),
                };
                self.standbys().insert(id.to_owned(), standby);
                tracing::debug!(session = %id, position, "restored ahead of the handoff");
            }
            Err(e) => {
                tracing::debug!(session = %id, error = %e, "no standby; the takeover restores from the store");
            }
        }
    }

    /// The standby of session `id`, if one was prepared.
    pub(crate) fn take_standby(&self, id: &str) -> Option<Standby> {
        self.standbys().remove(id)
    }

    /// Whether session `id` is restored here ahead of its transfer.
    pub(crate) fn standing_by(&self, id: &str) -> bool {
        self.standbys().contains_key(id)
    }

    /// At the fence: the session's players here go to the target now, and
    /// wait there for the transfer (see [`STANDBY_WAIT`]), instead of
    /// learning of the move once it is acknowledged.
    pub(crate) fn send_players_ahead(&self, cell: &SessionCell, to: &str) {
        let _ = cell
            .moved
            .send(crate::node::Location::Moved(Some(to.to_owned())));
    }

    /// The standbys, without those past [`STANDBY_TTL`] (at most
    /// [`MAX_STANDBYS`], so the sweep is cheap).
    fn standbys(&self) -> std::sync::MutexGuard<'_, HashMap<String, Standby>> {
        let mut standbys = self
            .standbys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        standbys.retain(|_, s| s.since.elapsed() < STANDBY_TTL);
        standbys
    }

    /// Records a fence note from a session's previous owner.
    pub(crate) fn note_fence(&self, note: FenceNote) {
        self.with_arrival(&note.session, |arrival| {
            arrival.from = Some(note.from);
            arrival.fence_digest = Some(note.digest);
            arrival.fenced_at_us = Some(note.fenced_at_us);
        });
    }

    /// Records that this node came to own a session at `at_us` (the
    /// transfer or the promotion arrived); its restore follows.
    pub(crate) fn note_owned(&self, id: &str, at_us: u64) {
        self.with_arrival(id, |arrival| arrival.owned_us = Some(at_us));
    }

    /// Records the restore of a session taken over here.
    pub(crate) fn note_restored(
        &self,
        id: &str,
        module: &str,
        position: u64,
        snapshot: u64,
        digest: String,
    ) {
        self.with_arrival(id, |arrival| {
            arrival.module = module.to_owned();
            arrival.position = position;
            arrival.snapshot = snapshot;
            arrival.restored_digest = digest;
            arrival.restored_us = Some(now_us());
        });
    }

    /// Records the first action after a takeover, now acknowledged: the
    /// rules ran it at `applied_us` (the cutover's end).
    pub(crate) fn note_applied(&self, id: &str, applied_us: u64) {
        let acked = now_us();
        tracing::debug!(session = %id, acked_after_us = acked.saturating_sub(applied_us), "first action applied after the takeover");
        self.with_arrival(id, |arrival| {
            arrival.first_applied_us.get_or_insert(applied_us);
            arrival.first_acked_us.get_or_insert(acked);
        });
    }

    /// Session `id`'s fence is near: a call that starts from now on first
    /// hashes the state, the hash the fence needs if the core refuses to
    /// journal that call (without it, the old owner rebuilds the session
    /// from its journal to hash it, on the cores the takeover needs).
    pub(crate) fn fence_near(&self, id: &str) {
        if let Ok(cell) = self.cell_by_id(id) {
            cell.fence_near
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// A handoff was called off: the session stays here, snapshots as
    /// usual again and, if it was fenced, serves again (its ticker resumes).
    pub(crate) fn call_off_handoff(&self, id: &str) {
        if let Ok(cell) = self.cell_by_id(id) {
            tracing::info!(session = %id, "the handoff was called off; the session stays here");
            cell.leaving
                .store(false, std::sync::atomic::Ordering::Relaxed);
            cell.fence_near
                .store(false, std::sync::atomic::Ordering::Relaxed);
            // Always told: a join may wait on a fence the host never saw.
            cell.moved.send_replace(crate::node::Location::Here);
        }
    }

    /// How session `id` arrived here, if it did.
    pub(crate) fn arrival(&self, id: &str) -> Option<Arrival> {
        self.arrivals().get(id).cloned()
    }

    fn with_arrival(&self, id: &str, change: impl FnOnce(&mut Arrival)) {
        let arrived = {
            let mut arrivals = self.arrivals();
            let arrival = arrivals.entry(id.to_owned()).or_default();
            change(arrival);
            arrival.settle().then(|| arrival.clone())
        };
        if let Some(Arrival {
            module,
            cutover_ms: Some(ms),
            exact,
            ..
        }) = arrived
        {
            let cutover = std::time::Duration::from_secs_f64(ms / 1000.0);
            self.metrics.handoff_arrived(&module, cutover, exact);
        }
    }
}
