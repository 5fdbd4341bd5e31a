//! PostgreSQL unavailable for a few seconds under live write traffic: the batch writer holds
//! and retries the writes, and once the database is back every record is there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use callplus_signal::storage::{
    BatchWriter, FIRST_PAGE, PageOrder, PostgresStorage, RecordRow, Storage, WriteOp,
};
use support::postgres::OwnedPostgres;

/// How long to wait for a condition before failing.
const DEADLINE: Duration = Duration::from_secs(30);

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn record(n: u64) -> RecordRow {
    let sync_time = i64::try_from(n).unwrap() + 1;
    RecordRow {
        app_key: "app".into(),
        owner_id: "alice".into(),
        call_id: format!("call-{n:06}"),
        sync_time,
        body: format!("record {n}").into_bytes(),
        fence: 0,
    }
}

#[test]
fn database_restarted_mid_traffic_loses_no_record() {
    let pg = OwnedPostgres::start();
    let storage: Arc<dyn Storage> = Arc::new(PostgresStorage::open(&pg.url()).unwrap());
    let writer = Arc::new(BatchWriter::spawn_with_delay(storage.clone(), Duration::from_millis(1)));

    // Live traffic: one record after another until told to stop, each submitted once.
    let submitted = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (writer, submitted, stop) = (writer.clone(), submitted.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let n = submitted.load(Ordering::Relaxed);
                writer.submit(WriteOp::Records(vec![record(n)]));
                submitted.store(n + 1, Ordering::Relaxed);
                // Paces the traffic (a few hundred records a second); nothing waits on it.
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    wait_until("traffic before the outage", || submitted.load(Ordering::Relaxed) >= 100);
    writer.flush().unwrap();

    pg.stop();
    let at_stop = submitted.load(Ordering::Relaxed);
    wait_until("the writer to meet the outage", || writer.outage_retries() > 0);
    wait_until("traffic during the outage", || submitted.load(Ordering::Relaxed) >= at_stop + 200);
    pg.resume();
    let at_resume = submitted.load(Ordering::Relaxed);
    wait_until("traffic after the outage", || submitted.load(Ordering::Relaxed) >= at_resume + 100);
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    writer.flush().expect("every held write committed once the database is back");

    let total = submitted.load(Ordering::Relaxed);
    let mut got = Vec::new();
    let mut cursor = FIRST_PAGE;
    loop {
        let page = storage.page_records("app", "alice", cursor, 100, PageOrder::Asc).unwrap();
        cursor = page.sync_time;
        got.extend(page.rows);
        if !page.has_more {
            break;
        }
    }
    let want: Vec<RecordRow> = (0..total).map(record).collect();
    assert_eq!(got.len(), want.len(), "records lost or doubled across the outage");
    assert_eq!(got, want);
    assert!(total >= at_stop + 300, "the outage held writes ({total} submitted)");
}

/// The bound: an outage longer than the writer's window gives the held writes up, and the next
/// flush reports them instead of waiting forever.
#[test]
fn outage_longer_than_the_window_is_reported_by_flush() {
    let pg = OwnedPostgres::start();
    let storage: Arc<dyn Storage> = Arc::new(PostgresStorage::open(&pg.url()).unwrap());
    let writer = BatchWriter::spawn_with(storage.clone(), Duration::ZERO, Duration::from_millis(300));
    writer.submit(WriteOp::Records(vec![record(0)]));
    writer.flush().unwrap();

    pg.stop();
    writer.submit(WriteOp::Records(vec![record(1)]));
    let started = Instant::now();
    let flushed = writer.flush();
    assert!(
        matches!(&flushed, Err(callplus_signal::storage::StorageError::WriteFailed { failed: 1, .. })),
        "{flushed:?}"
    );
    assert!(writer.outage_retries() > 0, "the write was retried before it was given up");
    assert!(started.elapsed() < DEADLINE, "flush returned within the window, not never");

    pg.resume();
    writer.submit(WriteOp::Records(vec![record(2)]));
    writer.flush().expect("the writer recovers with the database");
    let page = storage.page_records("app", "alice", FIRST_PAGE, 10, PageOrder::Asc).unwrap();
    assert_eq!(page.rows, vec![record(0), record(2)]);
}
