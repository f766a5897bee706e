//! The store keeps what it acknowledged, across reopening and `kill -9`.

use std::sync::Arc;

use baton_store::{
    GroupCommit, JournalWrite, ModuleHash, Published, RedbStore, SnapshotWrite, Store, StoreError,
    Write,
};

fn open(dir: &tempfile::TempDir) -> RedbStore {
    RedbStore::open(&dir.path().join("node.redb")).expect("the store opens")
}

#[test]
fn modules_are_content_addressed_and_names_are_immutable() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let a = ModuleHash::of(b"module a");
    let b = ModuleHash::of(b"module b");
    assert_eq!(
        store.publish_module("race@1.0.0", &a, b"module a").unwrap(),
        Published::New
    );
    assert_eq!(
        store.publish_module("race@1.0.0", &a, b"module a").unwrap(),
        Published::AlreadyThere
    );
    let err = store
        .publish_module("race@1.0.0", &b, b"module b")
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::Conflict {
            name_version: "race@1.0.0".into(),
            existing: a
        }
    );
    assert!(err.to_string().contains("publish a new version"));
    store.publish_module("race@1.1.0", &b, b"module b").unwrap();
    assert_eq!(
        store.module_bytes(&b).unwrap().as_deref(),
        Some(&b"module b"[..])
    );
    assert_eq!(store.module_bytes(&ModuleHash([0; 32])).unwrap(), None);
    assert_eq!(
        store.modules().unwrap(),
        [("race@1.0.0".into(), a), ("race@1.1.0".into(), b)]
    );
}

#[test]
fn journals_read_back_in_order_and_snapshots_truncate_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let entries: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 3]).collect();
    for (position, entry) in entries.iter().enumerate() {
        for session in ["s1", "s2"] {
            store
                .append(&[JournalWrite {
                    session,
                    position: position as u64,
                    entry,
                }])
                .unwrap();
        }
    }
    assert_eq!(store.journal("s1", 0).unwrap().len(), 10);
    assert_eq!(
        store.journal("s1", 7).unwrap(),
        [(7, vec![7; 3]), (8, vec![8; 3]), (9, vec![9; 3])]
    );
    assert!(store.journal("s3", 0).unwrap().is_empty());

    // A node without a cluster: the snapshot and the trim of what it covers.
    store
        .commit(&[
            Write::Snapshot(SnapshotWrite {
                session: "s1".into(),
                position: 6,
                snapshot: Arc::new(b"snapshot at 6".to_vec()),
            }),
            Write::TrimBefore {
                session: "s1".into(),
                position: 6,
            },
        ])
        .unwrap();
    assert_eq!(
        store.snapshot("s1").unwrap(),
        Some((6, b"snapshot at 6".to_vec()))
    );
    assert_eq!(
        store.journal("s1", 0).unwrap().first().map(|e| e.0),
        Some(6),
        "entries before 6 are dropped"
    );
    assert_eq!(
        store.journal("s2", 0).unwrap().len(),
        10,
        "other sessions untouched"
    );
    // An older snapshot never replaces a newer one.
    store.put_snapshot("s1", 3, b"stale").unwrap();
    store
        .commit(&[Write::Snapshot(SnapshotWrite {
            session: "s1".into(),
            position: 3,
            snapshot: Arc::new(b"stale".to_vec()),
        })])
        .unwrap();
    assert_eq!(store.snapshot("s1").unwrap().unwrap().0, 6);
}

#[test]
fn a_cluster_node_keeps_its_journals_whole_truncates_them_and_keeps_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir);
        let mut writes: Vec<Write> = (0..6u8)
            .map(|i| Write::Entry {
                session: "s".into(),
                position: u64::from(i),
                entry: vec![i],
            })
            .collect();
        writes.push(Write::State {
            key: b"row".to_vec(),
            value: Some(b"one".to_vec()),
        });
        writes.push(Write::State {
            key: b"gone".to_vec(),
            value: Some(b"x".to_vec()),
        });
        store.commit(&writes).unwrap();
        // A snapshot that keeps what it covers: the protocol counts it.
        store.put_snapshot("s", 4, b"snap").unwrap();
        store
            .commit(&[
                Write::Truncate {
                    session: "s".into(),
                    len: 3,
                },
                Write::Entry {
                    session: "s".into(),
                    position: 3,
                    entry: b"new".to_vec(),
                },
                Write::State {
                    key: b"gone".to_vec(),
                    value: None,
                },
                Write::State {
                    key: b"row".to_vec(),
                    value: Some(b"two".to_vec()),
                },
            ])
            .unwrap();
    }
    let store = open(&dir);
    assert_eq!(
        store.journal("s", 0).unwrap(),
        [
            (0, vec![0]),
            (1, vec![1]),
            (2, vec![2]),
            (3, b"new".to_vec())
        ]
    );
    assert_eq!(store.state().unwrap(), [(b"row".to_vec(), b"two".to_vec())]);
}

#[test]
fn everything_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir);
        store.put_session("s1", b"record one").unwrap();
        store.put_session("s1", b"record two").unwrap();
        store
            .append(&[JournalWrite {
                session: "s1",
                position: 0,
                entry: b"e0",
            }])
            .unwrap();
        store.put_snapshot("s2", 4, b"snap").unwrap();
    }
    let store = open(&dir);
    assert_eq!(
        store.sessions().unwrap(),
        [("s1".into(), b"record two".to_vec())]
    );
    assert_eq!(store.journal("s1", 0).unwrap(), [(0, b"e0".to_vec())]);
    assert_eq!(store.snapshot("s2").unwrap(), Some((4, b"snap".to_vec())));
}

#[test]
fn group_commit_batches_concurrent_appends_and_acks_each() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(open(&dir));
    let journal = Arc::new(GroupCommit::start(store.clone()).unwrap());
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let journal = journal.clone();
            std::thread::spawn(move || {
                for position in 0..50u64 {
                    journal
                        .append_and_wait(
                            &format!("s{t}"),
                            position,
                            format!("{t}:{position}").into_bytes(),
                        )
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = journal.stats();
    let commits = stats.commits.load(std::sync::atomic::Ordering::Relaxed);
    let entries = stats.entries.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(entries, 800);
    assert!(
        commits < entries,
        "{commits} commits for {entries} entries: nothing was grouped"
    );
    for t in 0..16 {
        let journal = store.journal(&format!("s{t}"), 0).unwrap();
        assert_eq!(journal.len(), 50);
        assert!(
            journal
                .iter()
                .enumerate()
                .all(|(i, (p, e))| *p == i as u64 && *e == format!("{t}:{i}").into_bytes())
        );
    }
}

#[test]
fn a_closed_writer_refuses_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(open(&dir));
    let journal = GroupCommit::start(store).unwrap();
    journal.append_and_wait("s", 0, b"x".to_vec()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    journal.append("s", 1, b"y".to_vec(), move |r| tx.send(r).unwrap());
    journal.close();
    assert_eq!(
        rx.recv().unwrap(),
        Ok(()),
        "queued entries are committed before closing"
    );
}

/// The child half of `acknowledged_entries_survive_kill_9`: appends until
/// killed, printing each position once it is acknowledged.
#[test]
fn child_appends_until_killed() {
    let Ok(path) = std::env::var("BATON_STORE_CHILD") else {
        return;
    };
    use std::io::Write;
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(std::path::Path::new(&path)).unwrap());
    let journal = Arc::new(GroupCommit::start(store).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let journal = journal.clone();
            std::thread::spawn(move || {
                for position in 0.. {
                    journal
                        .append_and_wait(&format!("s{t}"), position, vec![t as u8; 100])
                        .unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "acked s{t} {position}").unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn acknowledged_entries_survive_kill_9() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    for round in 0..3 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_appends_until_killed",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("BATON_STORE_CHILD", &path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut acked = std::collections::BTreeMap::<String, u64>::new();
        let mut lines = BufReader::new(stdout).lines();
        // Let it get going, then kill it without warning mid-stream.
        let wanted = 200 + round * 150;
        let mut seen = 0;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("acked ") {
                let (session, position) = rest.split_once(' ').unwrap();
                let position: u64 = position.parse().unwrap();
                let max = acked.entry(session.to_owned()).or_default();
                *max = (*max).max(position);
                seen += 1;
                if seen == wanted {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Whatever was acknowledged before the kill is there after it.
        let store = RedbStore::open(&path).expect("the store reopens after kill -9");
        for (session, max) in &acked {
            let journal = store.journal(session, 0).unwrap();
            assert!(
                journal.len() as u64 > *max,
                "{session}: acked up to {max}, found {} entries",
                journal.len()
            );
        }
        // Clear for the next round.
        drop(store);
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn large_snapshots_are_files_of_their_own_and_reads_take_the_newer_of_both() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(open(&dir));
    let main_size = || {
        std::fs::metadata(dir.path().join("node.redb"))
            .unwrap()
            .len()
    };
    let main_before = main_size();
    let snapshots = Arc::new(GroupCommit::start_snapshots(store.clone()).unwrap());
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let snapshots = snapshots.clone();
            std::thread::spawn(move || {
                for position in [3, 9, 5] {
                    let snapshot = SnapshotWrite {
                        session: format!("s{t}"),
                        position,
                        snapshot: Arc::new(vec![t as u8; 4096 * position as usize]),
                    };
                    snapshots.submit_and_wait(vec![snapshot]).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(dir.path().join("node.snapshots/s0.snap").exists());
    assert_eq!(
        snapshots
            .stats()
            .entries
            .load(std::sync::atomic::Ordering::Relaxed),
        24
    );
    for t in 0..8u64 {
        assert_eq!(
            store.snapshot(&format!("s{t}")).unwrap(),
            Some((9, vec![t as u8; 4096 * 9])),
            "the newest stays"
        );
    }
    // The journal's file holds none of it: its commits stay small.
    assert_eq!(main_size(), main_before);
    // Small snapshots ride in the journal's commits; a read takes the
    // newer of the two files' snapshots.
    let small = |session: &str, position| {
        Write::Snapshot(SnapshotWrite {
            session: session.into(),
            position,
            snapshot: Arc::new(format!("small at {position}").into_bytes()),
        })
    };
    store.commit(&[small("s0", 7), small("s1", 12)]).unwrap();
    assert_eq!(store.snapshot("s0").unwrap().unwrap().0, 9);
    assert_eq!(
        store.snapshot("s1").unwrap(),
        Some((12, b"small at 12".to_vec()))
    );
}

#[test]
fn a_store_of_format_1_opens_as_format_3() {
    use redb::TableDefinition;
    const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
    const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
    const JOURNAL: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("journal");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    {
        // What a host of store format 1 left: one file, snapshots in it.
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert("format", 1).unwrap();
        let mut value = 7u64.to_le_bytes().to_vec();
        value.extend_from_slice(b"old snapshot");
        txn.open_table(SNAPSHOTS)
            .unwrap()
            .insert("s", &value[..])
            .unwrap();
        txn.open_table(JOURNAL)
            .unwrap()
            .insert(("s", 7), &b"e7"[..])
            .unwrap();
        txn.commit().unwrap();
    }
    {
        let store = open(&dir);
        assert_eq!(
            store.snapshot("s").unwrap(),
            Some((7, b"old snapshot".to_vec()))
        );
        assert_eq!(store.journal("s", 0).unwrap(), [(7, b"e7".to_vec())]);
        store.put_snapshot("s", 9, b"large at 9").unwrap();
    }
    // Format 3 from now on: a host of format 1 would miss the snapshot
    // files, so it must refuse the store.
    assert_eq!(format_of(&path), Some(3));
    assert_eq!(
        open(&dir).snapshot("s").unwrap(),
        Some((9, b"large at 9".to_vec()))
    );
}

fn format_of(path: &std::path::Path) -> Option<u64> {
    use redb::{ReadableDatabase, TableDefinition};
    const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_read().unwrap();
    let format = txn.open_table(META).unwrap().get("format").unwrap();
    format.map(|v| v.value())
}

#[test]
fn a_store_of_format_2_moves_its_snapshot_file_into_snapshot_files() {
    use redb::TableDefinition;
    const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
    const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    let legacy = dir.path().join("node.snapshots.redb");
    // A redb file of `format` with `rows` in its snapshot table.
    let write = |path: &std::path::Path, format: u64, rows: &[(&str, u64, &[u8])]| {
        let db = redb::Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert("format", format)
            .unwrap();
        let mut snapshots = txn.open_table(SNAPSHOTS).unwrap();
        for (session, position, snapshot) in rows {
            let mut value = position.to_le_bytes().to_vec();
            value.extend_from_slice(snapshot);
            snapshots.insert(*session, &value[..]).unwrap();
        }
        drop(snapshots);
        txn.commit().unwrap();
    };
    // What a host of store format 2 left: large snapshots in a second redb
    // file, small ones in the main one.
    write(
        &path,
        2,
        &[("small", 4, b"small"), ("both", 3, b"older, small")],
    );
    write(
        &legacy,
        1,
        &[
            ("large", 8, b"large"),
            ("both", 5, b"newer, large"),
            ("odd/id ..", 6, b"odd"),
        ],
    );
    {
        let store = open(&dir);
        assert!(!legacy.exists(), "format 2's snapshot file is gone");
        let expected: [(&str, u64, &[u8]); 4] = [
            ("small", 4, b"small"),
            ("large", 8, b"large"),
            ("both", 5, b"newer, large"),
            ("odd/id ..", 6, b"odd"),
        ];
        for (session, position, snapshot) in expected {
            assert_eq!(
                store.snapshot(session).unwrap(),
                Some((position, snapshot.to_vec())),
                "{session}"
            );
        }
    }
    assert_eq!(format_of(&path), Some(3));
    assert!(
        dir.path()
            .join("node.snapshots/odd%2Fid%20%2E%2E.snap")
            .exists()
    );
    assert_eq!(
        open(&dir).snapshot("large").unwrap(),
        Some((8, b"large".to_vec()))
    );
}

#[test]
fn a_snapshot_file_cut_short_by_a_crash_leaves_the_one_before() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir);
        store.put_snapshot("s", 3, b"at 3").unwrap();
        // Two ids that escape alike would share a file: they do not.
        store.put_snapshot("a%2F", 1, b"percent").unwrap();
        store.put_snapshot("a/", 2, b"slash").unwrap();
    }
    let files = dir.path().join("node.snapshots");
    // A crash in the middle of writing the next one.
    std::fs::write(files.join("s.tmp"), b"\x05\0\0").unwrap();
    let store = open(&dir);
    assert!(
        !files.join("s.tmp").exists(),
        "the half-written file is cleared"
    );
    assert_eq!(store.snapshot("s").unwrap(), Some((3, b"at 3".to_vec())));
    assert_eq!(
        store.snapshot("a%2F").unwrap(),
        Some((1, b"percent".to_vec()))
    );
    assert_eq!(store.snapshot("a/").unwrap(), Some((2, b"slash".to_vec())));
    // An older one never replaces a newer one.
    store.put_snapshot("s", 2, b"at 2").unwrap();
    assert_eq!(store.snapshot("s").unwrap(), Some((3, b"at 3".to_vec())));
    // A file damaged by other means is an error that names it.
    std::fs::write(files.join("s.snap"), b"\x05").unwrap();
    let err = store.snapshot("s").unwrap_err();
    assert!(err.to_string().contains("s.snap is damaged"), "{err}");
}

#[test]
fn a_store_of_a_newer_format_is_refused_clearly() {
    use redb::TableDefinition;
    const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert("format", 4).unwrap();
        txn.commit().unwrap();
    }
    let err = RedbStore::open(&path).unwrap_err();
    assert!(
        err.to_string()
            .contains("written in format 4; this host reads formats 1 to 3"),
        "{err}"
    );
}
