//! Large snapshots, one file per session in a directory beside the main
//! store file (`node.redb` → `node.snapshots/`). Written into a B-tree, a
//! snapshot of megabytes costs the allocation, zeroing and copying of its
//! pages (2.2 ms of CPU for 2 MiB on the benchmark machine, and much more
//! on a busy node, on cores that a takeover is waiting for); written to a
//! file, it costs one copy into the page cache (0.85 ms; `cargo bench -p
//! baton-store`). Each file is written under a temporary name, synced,
//! then renamed over the old one: a crash leaves the old snapshot or the
//! new one, never a mix.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::{SnapshotWrite, StoreError, split_snapshot};

/// A finished snapshot file (laid out as `split_snapshot` reads it).
const FINISHED: &str = "snap";
/// One being written.
const TEMPORARY: &str = "tmp";

/// Longest file name this writes (most file systems take 255 bytes).
const MAX_NAME: usize = 240;

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("{what} {}: {e}", path.display()))
}

/// The snapshot files of one store.
#[derive(Debug)]
pub(crate) struct SnapshotFiles {
    dir: PathBuf,
    /// One writer at a time: two would share a temporary name.
    writing: Mutex<()>,
}

impl SnapshotFiles {
    /// Opens (or creates) the directory, clearing what a crash left half
    /// written.
    pub(crate) fn open(dir: PathBuf) -> Result<Self, StoreError> {
        fs::create_dir_all(&dir).map_err(|e| io("creating", &dir, e))?;
        for entry in fs::read_dir(&dir).map_err(|e| io("reading", &dir, e))? {
            let path = entry.map_err(|e| io("reading", &dir, e))?.path();
            if path.extension().is_some_and(|x| x == TEMPORARY) {
                fs::remove_file(&path).map_err(|e| io("removing", &path, e))?;
            }
        }
        Ok(SnapshotFiles {
            dir,
            writing: Mutex::default(),
        })
    }

    /// Stores each session's newest snapshot of `writes`, unless a newer
    /// one is there already; every one is durable on return.
    pub(crate) fn put(&self, writes: &[SnapshotWrite]) -> Result<(), StoreError> {
        let mut newest: HashMap<&str, &SnapshotWrite> = HashMap::new();
        for write in writes {
            newest
                .entry(write.session.as_str())
                .and_modify(|kept| {
                    if write.position >= kept.position {
                        *kept = write;
                    }
                })
                .or_insert(write);
        }
        let _one_writer = self
            .writing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut written = Vec::with_capacity(newest.len());
        for write in newest.into_values() {
            let path = self.path(&write.session, FINISHED)?;
            if position(&path)?.is_some_and(|stored| stored > write.position) {
                continue;
            }
            let temporary = path.with_extension(TEMPORARY);
            let mut file = File::create(&temporary).map_err(|e| io("creating", &temporary, e))?;
            file.write_all(&write.position.to_le_bytes())
                .and_then(|()| file.write_all(&write.snapshot))
                .and_then(|()| file.sync_data())
                .map_err(|e| io("writing", &temporary, e))?;
            written.push((temporary, path));
        }
        if written.is_empty() {
            return Ok(());
        }
        for (temporary, path) in &written {
            fs::rename(temporary, path).map_err(|e| io("renaming", temporary, e))?;
        }
        // The renames are durable once the directory is.
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| io("syncing", &self.dir, e))
    }

    /// `session`'s snapshot, with its position.
    pub(crate) fn get(&self, session: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let path = self.path(session, FINISHED)?;
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("reading", &path, e)),
        };
        let (position, snapshot) = split_snapshot(&bytes).ok_or_else(|| damaged(&path))?;
        Ok(Some((position, snapshot.to_vec())))
    }

    /// The file of `session`'s snapshot: its id, with every byte but
    /// ASCII letters, digits, `-` and `_` written `%XX` (so two ids never
    /// share a file, and none names a path).
    fn path(&self, session: &str, extension: &str) -> Result<PathBuf, StoreError> {
        let mut name = String::with_capacity(session.len() + 1 + extension.len());
        for byte in session.bytes() {
            if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
                name.push(byte as char);
            } else {
                name.push_str(&format!("%{byte:02X}"));
            }
        }
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(StoreError::Io(format!(
                "session id {session:?} cannot name a snapshot file (1 to {MAX_NAME} bytes once escaped)"
            )));
        }
        name.push('.');
        name.push_str(extension);
        Ok(self.dir.join(name))
    }
}

/// The position a snapshot file holds, if there is one.
fn position(path: &Path) -> Result<Option<u64>, StoreError> {
    let mut head = [0u8; 8];
    match File::open(path).and_then(|mut f| f.read_exact(&mut head)) {
        Ok(()) => Ok(Some(u64::from_le_bytes(head))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Err(damaged(path)),
        Err(e) => Err(io("reading", path, e)),
    }
}

fn damaged(path: &Path) -> StoreError {
    StoreError::Io(format!(
        "the snapshot file {} is damaged (shorter than its header)",
        path.display()
    ))
}
