//! Call records written the way the storage writer writes them: one transaction per batch of
//! records (both participants of each call ended since the last commit) into a file database.
//!
//! The database keeps growing across iterations, with 200 owners, so the B-trees a record
//! touches are as deep as a busy server's and their pages are not all in one place.
//!
//! Two layouts of the `records` table run in the same process one after the other: the current
//! rowid table, and the same table `WITHOUT ROWID` (clustered on its key), put in place of the
//! first with raw SQL (`RECORDS_WITHOUT_ROWID`), so the comparison does not depend on which
//! moment of a busy machine each was measured at. docs/performance.md has the figures (the
//! clustered table costs more: the rows, bodies and all, are what a record's insert then moves).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use callplus_server::storage::{BatchOp, RecordRow, SqliteStorage, Storage as _};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(u64::try_from(t.tv_sec).unwrap_or(0), u32::try_from(t.tv_nsec).unwrap_or(0))
}

/// Calls per batch: about what a commit holds at a few thousand cycles per second.
const CALLS_PER_BATCH: usize = 16;
const OWNERS: usize = 200;
/// A call record's size on the wire (two participants, ids, times, reasons).
const BODY_BYTES: usize = 180;

fn batch(next_call: &mut u64) -> Vec<BatchOp> {
    let mut rows = Vec::with_capacity(CALLS_PER_BATCH * 2);
    for _ in 0..CALLS_PER_BATCH {
        let n = *next_call;
        *next_call += 1;
        let call_id = format!("n1-{n:016x}");
        let caller = (n as usize * 7) % OWNERS;
        let callee = (caller + 1 + (n as usize % (OWNERS - 1))) % OWNERS;
        for owner in [caller, callee] {
            rows.push(RecordRow {
                app_key: "app_bench".into(),
                owner_id: format!("user-{owner:04}"),
                call_id: call_id.clone(),
                sync_time: 1_700_000_000_000 + n as i64,
                body: vec![0x5a; BODY_BYTES],
                fence: 0,
            });
        }
    }
    vec![BatchOp::Records(rows)]
}

/// The `records` table clustered on its key: one B-tree fewer per insert, but the rows with
/// their bodies live in the key's B-tree.
const RECORDS_WITHOUT_ROWID: &str = "
DROP TABLE records;
CREATE TABLE records (
    app_key   TEXT NOT NULL,
    owner_id  TEXT NOT NULL,
    call_id   TEXT NOT NULL,
    sync_time INTEGER NOT NULL,
    body      BLOB NOT NULL,
    fence     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (app_key, owner_id, call_id)
) WITHOUT ROWID;
CREATE INDEX records_by_time ON records (app_key, owner_id, sync_time);
";

/// A file database with a busy day's records in it; `without_rowid` swaps the table's layout.
fn prefilled(dir: &std::path::Path, without_rowid: bool, next_call: &mut u64) -> SqliteStorage {
    if without_rowid {
        drop(SqliteStorage::open(dir).expect("open"));
        let conn = rusqlite::Connection::open(dir.join("callplus.db")).expect("raw open");
        conn.execute_batch(RECORDS_WITHOUT_ROWID).expect("clustered records");
    }
    let storage = SqliteStorage::open(dir).expect("open");
    for _ in 0..2_000 {
        storage.apply_batch(&batch(next_call)).expect("prefill");
    }
    storage
}

fn records(c: &mut Criterion) {
    let mut group = c.benchmark_group("storage_record_batch");
    group.throughput(Throughput::Elements((CALLS_PER_BATCH * 2) as u64));
    for (name, without_rowid) in [("rowid_table", false), ("without_rowid", true)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut next_call = 0u64;
        let storage = prefilled(dir.path(), without_rowid, &mut next_call);
        // CPU time of this thread (SQLite runs on the caller's thread), system calls included:
        // what a batch costs the server, without the wait for the disk, which on a shared
        // machine varies more from moment to moment than the layouts differ.
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let ops = batch(&mut next_call);
                    let start = thread_cpu();
                    black_box(storage.apply_batch(&ops).expect("batch"));
                    spent += thread_cpu().saturating_sub(start);
                }
                spent
            });
        });
    }
    group.finish();
}

criterion_group!(benches, records);
criterion_main!(benches);
