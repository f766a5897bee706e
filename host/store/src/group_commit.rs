//! Group commit: many journal appends, one durable commit, then every ack.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use crate::{Store, StoreError, Write};

/// Most entries one commit takes, so a flood cannot delay its first acks
/// without bound.
const MAX_BATCH: usize = 4096;

/// A commit that takes this long is logged (at debug level).
const SLOW_COMMIT: std::time::Duration = std::time::Duration::from_millis(10);

/// Called once an append is durable, or failed.
type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

struct Pending {
    writes: Vec<Write>,
    done: Done,
}

/// Counters of a [`GroupCommit`], for metrics.
#[derive(Debug, Default)]
pub struct CommitStats {
    /// Durable commits made.
    pub commits: AtomicU64,
    /// Entries they held.
    pub entries: AtomicU64,
    /// Bytes of entries they held.
    pub bytes: AtomicU64,
}

/// A journal writer that batches appends into group commits.
///
/// [`append`](GroupCommit::append) queues an entry and returns at once; the
/// writer thread takes everything queued, commits it with one fsync, and
/// then calls each entry's `done`. An entry is acknowledged only after its
/// commit: never before, and never if it failed. After one failed commit
/// every later append fails too (fail-stop), so no journal gets a gap.
pub struct GroupCommit {
    queue: Option<mpsc::Sender<Pending>>,
    writer: Option<JoinHandle<()>>,
    stats: Arc<CommitStats>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl GroupCommit {
    /// Starts the writer thread over `store`.
    pub fn start(store: Arc<dyn Store>) -> Result<Self, StoreError> {
        let (queue, pending) = mpsc::channel::<Pending>();
        let stats = Arc::new(CommitStats::default());
        let counters = stats.clone();
        let writer = std::thread::Builder::new()
            .name("baton-journal".into())
            .spawn(move || write_loop(&*store, &pending, &counters))
            .map_err(|e| StoreError::Io(format!("could not start the journal writer: {e}")))?;
        Ok(GroupCommit {
            queue: Some(queue),
            writer: Some(writer),
            stats,
        })
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

    /// Queues `writes`, to be made durable together and after everything
    /// queued before them; `done` is called as for [`GroupCommit::append`].
    pub fn submit(
        &self,
        writes: Vec<Write>,
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

    /// Stores a session's snapshot (see [`Write::Snapshot`]) and waits
    /// until it is durable: one fsync with the journal entries queued
    /// alongside, never a commit of its own holding them up.
    pub fn put_snapshot_and_wait(
        &self,
        session: &str,
        position: u64,
        snapshot: std::sync::Arc<Vec<u8>>,
        drop_covered: bool,
    ) -> Result<(), StoreError> {
        self.submit_and_wait(vec![Write::Snapshot {
            session: session.to_owned(),
            position,
            snapshot,
            drop_covered,
        }])
    }

    /// Submits `writes` and waits until they are durable (blocking).
    pub fn submit_and_wait(&self, writes: Vec<Write>) -> Result<(), StoreError> {
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

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn write_loop(store: &dyn Store, pending: &mpsc::Receiver<Pending>, stats: &CommitStats) {
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
        let writes: Vec<Write> = batch
            .iter_mut()
            .flat_map(|p| std::mem::take(&mut p.writes))
            .collect();
        let started = std::time::Instant::now();
        let result = match &failed {
            Some(e) => Err(e.clone()),
            None => store.commit(&writes),
        };
        if started.elapsed() >= SLOW_COMMIT {
            tracing::debug!(writes = writes.len(), submissions = batch.len(), took = ?started.elapsed(), "slow group commit");
        }
        if let Err(e) = &result {
            failed.get_or_insert_with(|| e.clone());
        }
        if result.is_ok() {
            stats.commits.fetch_add(1, Ordering::Relaxed);
            let (mut entries, mut bytes) = (0u64, 0u64);
            for write in &writes {
                if let Write::Entry { entry, .. } = write {
                    entries += 1;
                    bytes += entry.len() as u64;
                }
            }
            stats.entries.fetch_add(entries, Ordering::Relaxed);
            stats.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        for p in batch {
            (p.done)(result.clone());
        }
    }
}
