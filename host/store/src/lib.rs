//! A Baton node's durable store.
//!
//! A node keeps everything it needs to resume its sessions after a crash or
//! a full-cluster restart: the rule modules it runs, each session's record,
//! its latest snapshot and the journal of calls since, and on a cluster
//! node the cluster protocol's own rows. The [`Store`] trait is
//! that contract, small enough for another backend (PostgreSQL) to implement;
//! [`RedbStore`] is the embedded one (a redb file and a file per large
//! snapshot, no server to install).
//!
//! Acknowledging a player's action waits for its journal entry to be durable.
//! [`GroupCommit`] makes that cheap: one writer thread collects every entry
//! queued while the previous commit was in flight and commits them together,
//! with one fsync, then acknowledges each. Large snapshots have a group
//! commit of their own, so the journal's commits stay small.
//!
//! # Layout
//!
//! - [`Store`], [`StoreError`], [`Published`], [`Write`], [`SnapshotWrite`],
//!   [`JournalWrite`]: the contract.
//! - `redb_store`: [`RedbStore`]; `snapshot_files`: its large snapshots.
//! - `group_commit`: [`GroupCommit`], one per kind of write ([`Batched`]),
//!   and its [`CommitStats`].
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod group_commit;
mod redb_store;
mod snapshot_files;

pub use baton_snapshot::ModuleHash;
pub use group_commit::{Batched, CommitStats, GroupCommit};
pub use redb_store::RedbStore;

/// A stored snapshot, as a row and as a file: `[position u64 LE][snapshot]`.
/// `None` if too short to hold the position.
fn split_snapshot(value: &[u8]) -> Option<(u64, &[u8])> {
    let (position, snapshot) = value.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*position), snapshot))
}

/// Why the store could not do something. Cloneable, so one failed group
/// commit can be reported to every waiter.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A different module is already published under this name and version.
    #[error(
        "{name_version} is already published with other bytes ({existing}); publish a new version instead"
    )]
    Conflict {
        /// `name@version`.
        name_version: String,
        /// The hash already there.
        existing: ModuleHash,
    },
    /// The disk or the database failed.
    #[error("the store failed: {0}")]
    Io(String),
    /// The group-commit writer has stopped.
    #[error("the journal writer has stopped")]
    Closed,
}

/// What publishing a module did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    /// Stored for the first time.
    New,
    /// The same bytes were already there under that name: nothing changed.
    AlreadyThere,
}

/// One write of a durable commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// A journal entry at its position (replacing one already there).
    Entry {
        /// The session.
        session: String,
        /// The entry's position in the session's journal.
        position: u64,
        /// The encoded entry.
        entry: Vec<u8>,
    },
    /// The session's journal ends before `len`: entries from there go.
    Truncate {
        /// The session.
        session: String,
        /// The journal's length now.
        len: u64,
    },
    /// A snapshot small enough to ride in this commit (see
    /// [`Store::put_snapshots`] for large ones).
    Snapshot(SnapshotWrite),
    /// The session's journal entries before `position` go: a snapshot
    /// stored at `position` covers them. Only a node without a cluster
    /// trims, and only once the snapshot is durable; a cluster node keeps
    /// its journals whole, since they belong to the cluster protocol,
    /// which counts every entry.
    TrimBefore {
        /// The session.
        session: String,
        /// The position of the durable snapshot that covers the entries.
        position: u64,
    },
    /// A row of the cluster protocol's state, opaque here: set, or deleted
    /// when `value` is `None`.
    State {
        /// The row's key.
        key: Vec<u8>,
        /// Its value.
        value: Option<Vec<u8>>,
    },
}

/// A session's snapshot taken at `position`, replacing an older one (a
/// newer one already stored stays).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotWrite {
    /// The session.
    pub session: String,
    /// The journal position the snapshot was taken at.
    pub position: u64,
    /// The snapshot's bytes (shared: they are often shipped too).
    pub snapshot: std::sync::Arc<Vec<u8>>,
}

/// A row of the cluster protocol's state: key and value.
pub type StateRow = (Vec<u8>, Vec<u8>);

/// One journal entry to append.
#[derive(Clone, Copy, Debug)]
pub struct JournalWrite<'a> {
    /// The session.
    pub session: &'a str,
    /// The entry's position in the session's journal.
    pub position: u64,
    /// The encoded entry.
    pub entry: &'a [u8],
}

/// Durable storage for one node. Every method is blocking; call it from a
/// blocking thread. A successful write is durable against a process crash
/// when it returns.
pub trait Store: Send + Sync + 'static {
    /// Stores a module's bytes under its hash and `name_version`. The same
    /// bytes twice is fine; other bytes under a taken `name_version` are a
    /// [`StoreError::Conflict`].
    fn publish_module(
        &self,
        name_version: &str,
        hash: &ModuleHash,
        bytes: &[u8],
    ) -> Result<Published, StoreError>;

    /// A module's bytes, by hash.
    fn module_bytes(&self, hash: &ModuleHash) -> Result<Option<Vec<u8>>, StoreError>;

    /// Every published `name@version` with its hash, sorted by name.
    fn modules(&self) -> Result<Vec<(String, ModuleHash)>, StoreError>;

    /// Creates or replaces a session's record (the node's own encoding).
    fn put_session(&self, id: &str, record: &[u8]) -> Result<(), StoreError>;

    /// Every session's record, by id.
    fn sessions(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Makes every write durable, in order, in one commit: all or none.
    fn commit(&self, writes: &[Write]) -> Result<(), StoreError>;

    /// Stores large snapshots apart from [`Store::commit`]'s writes (see
    /// [`SnapshotWrite`]), each one whole or not at all, all durable on
    /// return: a megabyte snapshot never sits in a commit that a player's
    /// acknowledgement waits for. Nothing orders the two:
    /// a node stores a snapshot at `position` only once the entries before
    /// it are durable, and trims them ([`Write::TrimBefore`]) only after.
    fn put_snapshots(&self, snapshots: &[SnapshotWrite]) -> Result<(), StoreError>;

    /// Appends journal entries, all in one durable commit.
    fn append(&self, entries: &[JournalWrite<'_>]) -> Result<(), StoreError> {
        let writes: Vec<Write> = entries
            .iter()
            .map(|e| Write::Entry {
                session: e.session.to_owned(),
                position: e.position,
                entry: e.entry.to_vec(),
            })
            .collect();
        self.commit(&writes)
    }

    /// Every row of the cluster protocol's state ([`Write::State`]).
    fn state(&self) -> Result<Vec<StateRow>, StoreError>;

    /// A session's journal entries from `from` on, in order.
    fn journal(&self, session: &str, from: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;

    /// Stores one session's snapshot apart (see [`Store::put_snapshots`]);
    /// a node writes large ones through a [`GroupCommit`] of their own.
    fn put_snapshot(
        &self,
        session: &str,
        position: u64,
        snapshot: &[u8],
    ) -> Result<(), StoreError> {
        self.put_snapshots(&[SnapshotWrite {
            session: session.to_owned(),
            position,
            snapshot: std::sync::Arc::new(snapshot.to_vec()),
        }])
    }

    /// A session's latest snapshot, stored either way, and its position.
    fn snapshot(&self, session: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError>;
}
