//! The embedded store: a redb file, fsynced on every commit, and a
//! directory of large snapshots beside it (`node.redb` →
//! `node.snapshots/`, see [`SnapshotFiles`]): their megabytes never hold up
//! the journal's small commits. Small snapshots ride in the journal's
//! commits, in the redb file, and cost no fsync of their own.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::snapshot_files::SnapshotFiles;
use crate::{
    ModuleHash, Published, SnapshotWrite, StateRow, Store, StoreError, Write, split_snapshot,
};

/// `name@version` → module hash.
const MODULE_NAMES: TableDefinition<&str, &[u8]> = TableDefinition::new("module_names");
/// Module hash → component bytes.
const MODULE_BYTES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("module_bytes");
/// Session id → the node's record.
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// (session id, position) → encoded journal entry.
const JOURNAL: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("journal");
/// Session id → position (8 bytes, little-endian) followed by the
/// snapshot: small snapshots here, large ones in their files; a session's
/// latest is the newer of the two.
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
/// The cluster protocol's rows, opaque here.
const CLUSTER: TableDefinition<&[u8], &[u8]> = TableDefinition::new("cluster");
/// Store-wide facts: the format version.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The store's layout. A host that finds a newer one refuses to open the
/// store rather than misread it. Format 2 put large snapshots in a second
/// redb file, format 3 in a directory of files: a host of an older format
/// would not look there (and a node without a cluster trims the journal
/// its snapshots cover), so it must refuse the store. Formats 1 and 2 open
/// as format 3: format 2's snapshot file moves into the directory.
const FORMAT: u64 = 3;
/// The oldest format this host reads (and moves on to [`FORMAT`]).
const OLDEST_FORMAT: u64 = 1;

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// A [`Store`] in a redb file and a directory of snapshot files.
#[derive(Debug)]
pub struct RedbStore {
    db: Database,
    snapshots: SnapshotFiles,
}

impl RedbStore {
    /// Opens (or creates) the store at `path`, with its snapshot directory
    /// beside it (`node.redb` → `node.snapshots/`).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| io(format!("creating {}: {e}", dir.display())))?;
        }
        let db =
            Database::create(path).map_err(|e| io(format!("opening {}: {e}", path.display())))?;
        check_format(&db)?;
        let snapshots = SnapshotFiles::open(path.with_extension("snapshots"))?;
        move_format_2_snapshots(&path.with_extension("snapshots.redb"), &snapshots)?;
        Ok(RedbStore { db, snapshots })
    }
}

/// Moves the snapshots of format 2's second redb file, if there is one,
/// into their files, then removes it (again on the next open, if a crash
/// came first: a snapshot is stored only over an older one).
fn move_format_2_snapshots(legacy: &Path, files: &SnapshotFiles) -> Result<(), StoreError> {
    if !legacy.exists() {
        return Ok(());
    }
    let db =
        Database::open(legacy).map_err(|e| io(format!("opening {}: {e}", legacy.display())))?;
    let mut writes = Vec::new();
    {
        let txn = db.begin_read().map_err(io)?;
        match txn.open_table(SNAPSHOTS) {
            Ok(table) => {
                for row in table.iter().map_err(io)? {
                    let (session, value) = row.map_err(io)?;
                    let (position, snapshot) = split_row(value.value())?;
                    writes.push(SnapshotWrite {
                        session: session.value().to_owned(),
                        position,
                        snapshot: std::sync::Arc::new(snapshot.to_vec()),
                    });
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(io(e)),
        }
    }
    files.put(&writes)?;
    drop(db);
    std::fs::remove_file(legacy).map_err(|e| io(format!("removing {}: {e}", legacy.display())))?;
    tracing::info!(snapshots = writes.len(), from = %legacy.display(), "moved large snapshots into their files");
    Ok(())
}

/// Checks `db`'s format: [`FORMAT`], or an older one this host reads as
/// it is; either way the file is of [`FORMAT`] from now on, with every
/// table created, so reads never meet a missing one.
fn check_format(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(io)?;
    {
        let mut meta = txn.open_table(META).map_err(io)?;
        let found = meta.get("format").map_err(io)?.map(|v| v.value());
        match found {
            Some(FORMAT) => {}
            None => {
                meta.insert("format", FORMAT).map_err(io)?;
            }
            Some(found) if (OLDEST_FORMAT..FORMAT).contains(&found) => {
                meta.insert("format", FORMAT).map_err(io)?;
                tracing::info!(from = found, to = FORMAT, "the store's format moved on");
            }
            Some(other) => {
                return Err(StoreError::Io(format!(
                    "the store was written in format {other}; this host reads formats {OLDEST_FORMAT} to {FORMAT}"
                )));
            }
        }
    }
    txn.open_table(MODULE_NAMES).map_err(io)?;
    txn.open_table(MODULE_BYTES).map_err(io)?;
    txn.open_table(SESSIONS).map_err(io)?;
    txn.open_table(JOURNAL).map_err(io)?;
    txn.open_table(SNAPSHOTS).map_err(io)?;
    txn.open_table(CLUSTER).map_err(io)?;
    txn.commit().map_err(io)
}

/// Stores `write` in `table`, unless a newer snapshot is there already.
fn put_snapshot_row(
    table: &mut redb::Table<&str, &[u8]>,
    write: &SnapshotWrite,
) -> Result<(), StoreError> {
    let stored = table
        .get(write.session.as_str())
        .map_err(io)?
        .and_then(|v| split_snapshot(v.value()).map(|(position, _)| position));
    if stored.is_some_and(|stored| stored > write.position) {
        return Ok(());
    }
    let mut value = Vec::with_capacity(8 + write.snapshot.len());
    value.extend_from_slice(&write.position.to_le_bytes());
    value.extend_from_slice(&write.snapshot);
    table
        .insert(write.session.as_str(), &value[..])
        .map_err(io)?;
    Ok(())
}

/// `session`'s snapshot in `db`, with its position.
fn snapshot_row(db: &Database, session: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
    let txn = db.begin_read().map_err(io)?;
    let table = txn.open_table(SNAPSHOTS).map_err(io)?;
    let Some(value) = table.get(session).map_err(io)? else {
        return Ok(None);
    };
    let (position, snapshot) = split_row(value.value())?;
    Ok(Some((position, snapshot.to_vec())))
}

/// A snapshot row's value: its position and the snapshot.
fn split_row(value: &[u8]) -> Result<(u64, &[u8]), StoreError> {
    split_snapshot(value).ok_or_else(|| io("a damaged snapshot entry"))
}

impl Store for RedbStore {
    fn publish_module(
        &self,
        name_version: &str,
        hash: &ModuleHash,
        bytes: &[u8],
    ) -> Result<Published, StoreError> {
        let txn = self.db.begin_write().map_err(io)?;
        let published = {
            let mut names = txn.open_table(MODULE_NAMES).map_err(io)?;
            let existing = names
                .get(name_version)
                .map_err(io)?
                .map(|v| v.value().to_vec());
            match existing {
                Some(existing) if existing == hash.0 => Published::AlreadyThere,
                Some(existing) => {
                    let existing = ModuleHash(
                        existing
                            .try_into()
                            .map_err(|_| io("a damaged module name entry"))?,
                    );
                    return Err(StoreError::Conflict {
                        name_version: name_version.to_owned(),
                        existing,
                    });
                }
                None => {
                    names.insert(name_version, &hash.0[..]).map_err(io)?;
                    let mut modules = txn.open_table(MODULE_BYTES).map_err(io)?;
                    modules.insert(&hash.0[..], bytes).map_err(io)?;
                    Published::New
                }
            }
        };
        txn.commit().map_err(io)?;
        Ok(published)
    }

    fn module_bytes(&self, hash: &ModuleHash) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(io)?;
        let table = txn.open_table(MODULE_BYTES).map_err(io)?;
        Ok(table
            .get(&hash.0[..])
            .map_err(io)?
            .map(|v| v.value().to_vec()))
    }

    fn modules(&self) -> Result<Vec<(String, ModuleHash)>, StoreError> {
        let txn = self.db.begin_read().map_err(io)?;
        let table = txn.open_table(MODULE_NAMES).map_err(io)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(io)? {
            let (name, hash) = row.map_err(io)?;
            let hash = ModuleHash(
                hash.value()
                    .try_into()
                    .map_err(|_| io("a damaged module name entry"))?,
            );
            out.push((name.value().to_owned(), hash));
        }
        Ok(out)
    }

    fn put_session(&self, id: &str, record: &[u8]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(io)?;
        txn.open_table(SESSIONS)
            .map_err(io)?
            .insert(id, record)
            .map_err(io)?;
        txn.commit().map_err(io)
    }

    fn sessions(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(io)?;
        let table = txn.open_table(SESSIONS).map_err(io)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(io)? {
            let (id, record) = row.map_err(io)?;
            out.push((id.value().to_owned(), record.value().to_vec()));
        }
        Ok(out)
    }

    fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(io)?;
        {
            let mut journal = txn.open_table(JOURNAL).map_err(io)?;
            let mut cluster = txn.open_table(CLUSTER).map_err(io)?;
            let mut snapshots = txn.open_table(SNAPSHOTS).map_err(io)?;
            for write in writes {
                match write {
                    Write::Entry {
                        session,
                        position,
                        entry,
                    } => {
                        journal
                            .insert((session.as_str(), *position), entry.as_slice())
                            .map_err(io)?;
                    }
                    Write::Truncate { session, len } => {
                        journal
                            .retain_in(
                                (session.as_str(), *len)..=(session.as_str(), u64::MAX),
                                |_, _| false,
                            )
                            .map_err(io)?;
                    }
                    Write::State {
                        key,
                        value: Some(value),
                    } => {
                        cluster
                            .insert(key.as_slice(), value.as_slice())
                            .map_err(io)?;
                    }
                    Write::State { key, value: None } => {
                        cluster.remove(key.as_slice()).map_err(io)?;
                    }
                    Write::Snapshot(snapshot) => put_snapshot_row(&mut snapshots, snapshot)?,
                    Write::TrimBefore { session, position } => {
                        journal
                            .retain_in(
                                (session.as_str(), 0)..(session.as_str(), *position),
                                |_, _| false,
                            )
                            .map_err(io)?;
                    }
                }
            }
        }
        txn.commit().map_err(io)
    }

    fn put_snapshots(&self, writes: &[SnapshotWrite]) -> Result<(), StoreError> {
        self.snapshots.put(writes)
    }

    fn state(&self) -> Result<Vec<StateRow>, StoreError> {
        let txn = self.db.begin_read().map_err(io)?;
        let table = txn.open_table(CLUSTER).map_err(io)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(io)? {
            let (key, value) = row.map_err(io)?;
            out.push((key.value().to_vec(), value.value().to_vec()));
        }
        Ok(out)
    }

    fn journal(&self, session: &str, from: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(io)?;
        let table = txn.open_table(JOURNAL).map_err(io)?;
        let mut out = Vec::new();
        for row in table
            .range((session, from)..=(session, u64::MAX))
            .map_err(io)?
        {
            let (key, entry) = row.map_err(io)?;
            out.push((key.value().1, entry.value().to_vec()));
        }
        Ok(out)
    }

    fn snapshot(&self, session: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        // Small snapshots are in the redb file, large ones in their own:
        // the newer is the session's latest.
        let small = snapshot_row(&self.db, session)?;
        let large = self.snapshots.get(session)?;
        Ok(match (small, large) {
            (Some(small), Some(large)) => Some(if large.0 > small.0 { large } else { small }),
            (small, large) => small.or(large),
        })
    }
}
