//! Group commit: many writes, one durable commit, then every ack.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use crate::{SnapshotWrite, Store, StoreError, Write};

/// What a [`GroupCommit`] writes: the journal's [`Write`]s (small
/// snapshots among them) or large [`SnapshotWrite`]s, each kind with a
/// writer of its own, so that the commits a player's acknowledgement waits
/// for never carry a snapshot's megabytes.
pub trait Batched: Send + 'static {
    /// The writer thread's name.
    const WRITER: &'static str;
    /// Makes `batch` durable in one commit: all or none.
    fn commit(store: &dyn Store, batch: &[Self]) -> Result<(), StoreError>
    where
        Self: Sized;
    /// The bytes this write counts for in [`CommitStats`], if it counts.
    fn counted(&self) -> Option<u64>;
}

impl Batched for Write {
    const WRITER: &'static str = "baton-journal";
    fn commit(store: &dyn Store, batch: &[Self]) -> Result<(), StoreError> {
        store.commit(batch)
    }
    fn counted(&self) -> Option<u64> {
        match self {
            Write::Entry { entry, .. } => Some(entry.len() as u64),
            _ => None,
        }
    }
}

impl Batched for SnapshotWrite {
    const WRITER: &'static str = "baton-snapshots";
    fn commit(store: &dyn Store, batch: &[Self]) -> Result<(), StoreError> {
        store.put_snapshots(batch)
    }
    fn counted(&self) -> Option<u64> {
        Some(self.snapshot.len() as u64)
    }
}

/// Most entries one commit takes, so a flood cannot delay its first acks
/// without bound.
const MAX_BATCH: usize = 4096;

/// A commit that takes this long is logged (at debug level).
const SLOW_COMMIT: std::time::Duration = std::time::Duration::from_millis(10);

/// Called once an append is durable, or failed.
type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

struct Pending<W> {
    writes: Vec<W>,
    done: Done,
}

/// Counters of a [`GroupCommit`], for metrics.
#[derive(Debug, Default)]
pub struct CommitStats {
    /// Durable commits made.
    pub commits: AtomicU64,
    /// Journal entries (or snapshots) they held.
    pub entries: AtomicU64,
    /// Bytes of those.
    pub bytes: AtomicU64,
}

/// A writer that batches writes into group commits: `GroupCommit` (of
/// [`Write`]s) is the journal's, `GroupCommit<SnapshotWrite>` the
/// snapshots'.
///
/// [`append`](GroupCommit::append) queues an entry and returns at once; the
/// writer thread takes everything queued, commits it with one fsync, and
/// then calls each entry's `done`. An entry is acknowledged only after its
/// commit: never before, and never if it failed. After one failed commit
/// every later append fails too (fail-stop), so no journal gets a gap.
pub struct GroupCommit<W: Batched = Write> {
    queue: Option<mpsc::Sender<Pending<W>>>,
    writer: Option<JoinHandle<()>>,
    stats: Arc<CommitStats>,
}

impl<W: Batched> std::fmt::Debug for GroupCommit<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<W: Batched> GroupCommit<W> {
    fn spawn(store: Arc<dyn Store>) -> Result<Self, StoreError> {
        let (queue, pending) = mpsc::channel::<Pending<W>>();
        let stats = Arc::new(CommitStats::default());
        let counters = stats.clone();
        let writer = std::thread::Builder::new()
            .name(W::WRITER.into())
            .spawn(move || write_loop(&*store, &pending, &counters))
            .map_err(|e| StoreError::Io(format!("could not start {}: {e}", W::WRITER)))?;
        Ok(GroupCommit {
            queue: Some(queue),
            writer: Some(writer),
            stats,
        })
    }

    /// Queues `writes`, to be made durable together and after everything
    /// queued before them; `done` is called from the writer thread once
    /// they are durable (or failed).
    pub fn submit(
        &self,
        writes: Vec<W>,
        done: impl FnOnce(Result<(), StoreError>) + Send + 'static,
    ) {
        let pending = Pending {
            writes,
            done: Box::new(done),
        };
        let Some(queue) = &self.queue else {
            (pending.done)(Err(StoreError::Closed));
            return;
        };
        if let Err(mpsc::SendError(pending)) = queue.send(pending) {
            (pending.done)(Err(StoreError::Closed));
        }
    }

    /// Submits `writes` and waits until they are durable (blocking).
    pub fn submit_and_wait(&self, writes: Vec<W>) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(writes, move |result| {
            let _ = tx.send(result);
        });
        rx.recv().unwrap_or(Err(StoreError::Closed))
    }

    /// Commit counters.
    pub fn stats(&self) -> &CommitStats {
        &self.stats
    }

    /// Commits everything queued, then stops the writer.
    pub fn close(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        // Dropping the queue lets the writer drain what is left and stop.
        self.queue.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl GroupCommit<Write> {
    /// Starts the journal's writer thread over `store`.
    pub fn start(store: Arc<dyn Store>) -> Result<Self, StoreError> {
        Self::spawn(store)
    }

    /// Queues `entry` at `position` of `session`'s journal; `done` is called
    /// from the writer thread once it is durable (or failed).
    pub fn append(
        &self,
        session: &str,
        position: u64,
        entry: Vec<u8>,
        done: impl FnOnce(Result<(), StoreError>) + Send + 'static,
    ) {
        let write = Write::Entry {
            session: session.to_owned(),
            position,
            entry,
        };
        self.submit(vec![write], done);
    }

    /// Appends and waits until the entry is durable.
    pub fn append_and_wait(
        &self,
        session: &str,
        position: u64,
        entry: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.submit_and_wait(vec![Write::Entry {
            session: session.to_owned(),
            position,
            entry,
        }])
    }
}

impl GroupCommit<SnapshotWrite> {
    /// Starts the large snapshots' writer thread over `store`; each
    /// [`GroupCommit::submit`] there is stored in one commit with the
    /// others queued alongside.
    pub fn start_snapshots(store: Arc<dyn Store>) -> Result<Self, StoreError> {
        Self::spawn(store)
    }
}

impl<W: Batched> Drop for GroupCommit<W> {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn write_loop<W: Batched>(
    store: &dyn Store,
    pending: &mpsc::Receiver<Pending<W>>,
    stats: &CommitStats,
) {
    // After a failed commit nothing more is written: a later success would
    // leave a gap in some journal. The node must restart on a working disk.
    let mut failed: Option<StoreError> = None;
    // Block for the first entry, then take whatever else is already queued:
    // the entries that arrived while the previous commit was syncing.
    while let Ok(first) = pending.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match pending.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let writes: Vec<W> = batch
            .iter_mut()
            .flat_map(|p| std::mem::take(&mut p.writes))
            .collect();
        let started = std::time::Instant::now();
        let result = match &failed {
            Some(e) => Err(e.clone()),
            None => W::commit(store, &writes),
        };
        if started.elapsed() >= SLOW_COMMIT {
            tracing::debug!(writer = W::WRITER, writes = writes.len(), submissions = batch.len(), took = ?started.elapsed(), "slow group commit");
        }
        if let Err(e) = &result {
            failed.get_or_insert_with(|| e.clone());
        }
        if result.is_ok() {
            stats.commits.fetch_add(1, Ordering::Relaxed);
            let (mut entries, mut bytes) = (0u64, 0u64);
            for counted in writes.iter().filter_map(W::counted) {
                entries += 1;
                bytes += counted;
            }
            stats.entries.fetch_add(entries, Ordering::Relaxed);
            stats.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        for p in batch {
            (p.done)(result.clone());
        }
    }
}
