//! Durability costs on this machine: `cargo bench -p baton-store`.
//!
//! An acknowledged action waits for its journal entry's fsync, so fsync
//! latency bounds action latency; group commit shares one fsync between all
//! the entries queued meanwhile. Prints raw `fdatasync` latency, one redb
//! commit per entry, group-commit throughput at several concurrencies,
//! and what storing a 2 MiB snapshot costs (a file of its own, as the
//! store does, against a row in a redb table, as store format 2 did).

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_store::{GroupCommit, JournalWrite, RedbStore, SnapshotWrite, Store};

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort_unstable();
    let p = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (p(0.5), p(0.99))
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// CPU time this thread has used (the scheduler's count, in ns).
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// Stores 2 MiB snapshots of four sessions in turn with `put`: wall time
/// per snapshot (p50, p99) and this thread's CPU time per snapshot.
fn snapshot_row(name: &str, mut put: impl FnMut(&str, u64, &Arc<Vec<u8>>)) {
    // Incompressible, like the ~2 MiB session's state.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let snapshot: Arc<Vec<u8>> = Arc::new(
        (0..2 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect(),
    );
    let rounds = 60u64;
    let cpu = thread_cpu();
    let samples: Vec<Duration> = (0..rounds)
        .map(|i| {
            let start = Instant::now();
            put(&format!("session-{}", i % 4), i, &snapshot);
            start.elapsed()
        })
        .collect();
    let cpu = (thread_cpu() - cpu) / rounds as u32;
    let (p50, p99) = percentiles(samples);
    println!(
        "  {name:<33} p50 {:>8}  p99 {:>8}  CPU {:>8} each",
        us(p50),
        us(p99),
        us(cpu)
    );
}

fn main() {
    // Measure on the disk the node would use: the target directory.
    let base = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).expect("a scratch directory");
    println!("durability benchmarks in {}", dir.path().display());

    let mut file = std::fs::File::create(dir.path().join("raw")).expect("file");
    let samples: Vec<Duration> = (0..300)
        .map(|_| {
            let start = Instant::now();
            file.write_all(&[7u8; 200]).expect("write");
            file.sync_data().expect("fdatasync");
            start.elapsed()
        })
        .collect();
    let (p50, p99) = percentiles(samples);
    println!(
        "  append 200 B + fdatasync          p50 {:>8}  p99 {:>8}",
        us(p50),
        us(p99)
    );

    let store = Arc::new(RedbStore::open(&dir.path().join("node.redb")).expect("store"));
    let samples: Vec<Duration> = (0..300u64)
        .map(|position| {
            let start = Instant::now();
            store
                .append(&[JournalWrite {
                    session: "s",
                    position,
                    entry: &[7u8; 200],
                }])
                .expect("append");
            start.elapsed()
        })
        .collect();
    let (p50, p99) = percentiles(samples);
    println!(
        "  redb commit of one 200 B entry    p50 {:>8}  p99 {:>8}",
        us(p50),
        us(p99)
    );

    snapshot_row("2 MiB snapshot, a file", |session, position, snapshot| {
        store
            .put_snapshots(&[SnapshotWrite {
                session: session.to_owned(),
                position,
                snapshot: snapshot.clone(),
            }])
            .expect("snapshot");
    });
    let rows = redb::Database::create(dir.path().join("rows.redb")).expect("redb");
    let table = redb::TableDefinition::<&str, &[u8]>::new("snapshots");
    snapshot_row(
        "2 MiB snapshot, a redb row",
        |session, position, snapshot| {
            let txn = rows.begin_write().expect("begin");
            let mut value = position.to_le_bytes().to_vec();
            value.extend_from_slice(snapshot);
            txn.open_table(table)
                .expect("table")
                .insert(session, &value[..])
                .expect("insert");
            txn.commit().expect("commit");
        },
    );

    for writers in [1usize, 16, 256] {
        let journal = Arc::new(GroupCommit::start(store.clone()).expect("journal"));
        let per_writer = 4000 / writers.max(1) + 10;
        let start = Instant::now();
        let threads: Vec<_> = (0..writers)
            .map(|w| {
                let journal = journal.clone();
                std::thread::spawn(move || {
                    let mut latencies = Vec::with_capacity(per_writer);
                    for position in 0..per_writer as u64 {
                        let t = Instant::now();
                        journal
                            .append_and_wait(&format!("g{writers}-{w}"), position, vec![7u8; 200])
                            .expect("append");
                        latencies.push(t.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        let latencies: Vec<Duration> = threads
            .into_iter()
            .flat_map(|t| t.join().expect("writer"))
            .collect();
        let elapsed = start.elapsed();
        let stats = journal.stats();
        let commits = stats.commits.load(std::sync::atomic::Ordering::Relaxed);
        let entries = stats.entries.load(std::sync::atomic::Ordering::Relaxed);
        let (p50, p99) = percentiles(latencies);
        println!(
            "  group commit, {writers:>3} writers          p50 {:>8}  p99 {:>8}  {:>7.0} entries/s  {:.1} entries/commit",
            us(p50),
            us(p99),
            entries as f64 / elapsed.as_secs_f64(),
            entries as f64 / commits.max(1) as f64
        );
    }
}
