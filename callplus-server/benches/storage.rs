//! Call records written the way the storage writer writes them: one transaction per batch of
//! records (both participants of each call ended since the last commit) into a file database.
//!
//! The database keeps growing across iterations, with 200 owners, so the B-trees a record
//! touches are as deep as a busy server's and their pages are not all in one place.
//!
//! Two layouts of the `records` table run in the same process one after the other: the one in
//! use (schema version 4: keyed by call, then owner), and version 3's (keyed by owner, then
//! call), put in its place with raw SQL, both written through `SqliteStorage`, so the comparison
//! does not depend on which moment of a busy machine each was measured at. docs/performance.md
//! has the figures.
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

fn batch(next_call: &mut u64) -> Vec<RecordRow> {
    let mut rows = Vec::with_capacity(CALLS_PER_BATCH * 2);
    for _ in 0..CALLS_PER_BATCH {
        let n = *next_call;
        *next_call += 1;
        // As a server makes them: its prefix, then a counter in hex.
        let call_id = format!("k3v9x0q2ab-{n:x}");
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
    rows
}

/// Version 3's `records`: keyed by `(app_key, owner_id, call_id)`, so a record lands on its
/// owner's leaf in the key index as well as in the sync-time index.
const RECORDS_KEYED_BY_OWNER: &str = "
DROP TABLE records;
CREATE TABLE records (
    app_key   TEXT NOT NULL,
    owner_id  TEXT NOT NULL,
    call_id   TEXT NOT NULL,
    sync_time INTEGER NOT NULL,
    body      BLOB NOT NULL,
    fence     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (app_key, owner_id, call_id)
);
CREATE INDEX records_by_time ON records (app_key, owner_id, sync_time);
";

/// A file database with a busy day's records in it, in one layout or the other. Both are
/// written through the storage's own batch path: its upsert names the key's columns as a set,
/// which version 3's key has too.
fn prefilled(dir: &std::path::Path, keyed_by_owner: bool, next_call: &mut u64) -> SqliteStorage {
    if keyed_by_owner {
        drop(SqliteStorage::open(dir).expect("open"));
        let conn = rusqlite::Connection::open(dir.join("callplus.db")).expect("raw open");
        conn.execute_batch(RECORDS_KEYED_BY_OWNER).expect("keyed records");
    }
    let storage = SqliteStorage::open(dir).expect("open");
    for _ in 0..2_000 {
        write(&storage, batch(next_call));
    }
    storage
}

/// Writes a batch of records in one transaction, as the storage writer does.
fn write(storage: &SqliteStorage, rows: Vec<RecordRow>) {
    for result in storage.apply_batch(&[BatchOp::Records(rows)]).expect("batch") {
        result.expect("records");
    }
}

fn records(c: &mut Criterion) {
    let mut group = c.benchmark_group("storage_record_batch");
    group.throughput(Throughput::Elements((CALLS_PER_BATCH * 2) as u64));
    for (name, keyed_by_owner) in [("keyed_by_call", false), ("keyed_by_owner", true)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut next_call = 0u64;
        let storage = prefilled(dir.path(), keyed_by_owner, &mut next_call);
        // CPU time of this thread (SQLite runs on the caller's thread), system calls included:
        // what a batch costs the server, without the wait for the disk, which on a shared
        // machine varies more from moment to moment than the layouts differ.
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let rows = batch(&mut next_call);
                    let start = thread_cpu();
                    write(&storage, black_box(rows));
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
