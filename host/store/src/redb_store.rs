//! The embedded store: one redb file, fsynced on every commit.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::{ModuleHash, Published, StateRow, Store, StoreError, Write};

/// `name@version` → module hash.
const MODULE_NAMES: TableDefinition<&str, &[u8]> = TableDefinition::new("module_names");
/// Module hash → component bytes.
const MODULE_BYTES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("module_bytes");
/// Session id → the node's record.
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// (session id, position) → encoded journal entry.
const JOURNAL: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("journal");
/// Session id → position (8 bytes, little-endian) followed by the snapshot.
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
/// The cluster protocol's rows, opaque here.
const CLUSTER: TableDefinition<&[u8], &[u8]> = TableDefinition::new("cluster");
/// Store-wide facts: the format version.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The layout of the tables above. A host that finds a newer one refuses to
/// open the file rather than misread it.
const FORMAT: u64 = 1;

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// A [`Store`] in one redb file.
#[derive(Debug)]
pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| io(format!("creating {}: {e}", dir.display())))?;
        }
        let db =
            Database::create(path).map_err(|e| io(format!("opening {}: {e}", path.display())))?;
        let store = RedbStore { db };
        store.check_format()?;
        Ok(store)
    }

    fn check_format(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(io)?;
        {
            let mut meta = txn.open_table(META).map_err(io)?;
            let found = meta.get("format").map_err(io)?.map(|v| v.value());
            match found {
                None => {
                    meta.insert("format", FORMAT).map_err(io)?;
                }
                Some(FORMAT) => {}
                Some(other) => {
                    return Err(StoreError::Io(format!(
                        "the store was written in format {other}; this host reads format {FORMAT}"
                    )));
                }
            }
            // Create every table, so reads never meet a missing one.
            txn.open_table(MODULE_NAMES).map_err(io)?;
            txn.open_table(MODULE_BYTES).map_err(io)?;
            txn.open_table(SESSIONS).map_err(io)?;
            txn.open_table(JOURNAL).map_err(io)?;
            txn.open_table(SNAPSHOTS).map_err(io)?;
            txn.open_table(CLUSTER).map_err(io)?;
        }
        txn.commit().map_err(io)
    }
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
                    Write::Snapshot {
                        session,
                        position,
                        snapshot,
                        drop_covered,
                    } => {
                        let newer = snapshots
                            .get(session.as_str())
                            .map_err(io)?
                            .and_then(|v| v.value().get(..8)?.try_into().ok())
                            .map(u64::from_le_bytes)
                            .is_some_and(|existing| existing > *position);
                        if newer {
                            // A newer snapshot is already durable: keep it.
                            continue;
                        }
                        let mut value = Vec::with_capacity(8 + snapshot.len());
                        value.extend_from_slice(&position.to_le_bytes());
                        value.extend_from_slice(snapshot);
                        snapshots.insert(session.as_str(), &value[..]).map_err(io)?;
                        if *drop_covered {
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
        }
        txn.commit().map_err(io)
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
        let txn = self.db.begin_read().map_err(io)?;
        let table = txn.open_table(SNAPSHOTS).map_err(io)?;
        let Some(value) = table.get(session).map_err(io)? else {
            return Ok(None);
        };
        let value = value.value();
        let (position, snapshot) = value
            .split_at_checked(8)
            .ok_or_else(|| io("a damaged snapshot entry"))?;
        let position = u64::from_le_bytes(
            position
                .try_into()
                .map_err(|_| io("a damaged snapshot entry"))?,
        );
        Ok(Some((position, snapshot.to_vec())))
    }
}
