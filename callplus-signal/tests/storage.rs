//! Storage tests: every engine (SQLite and PostgreSQL) through the same tests, and the batch
//! writer, against real databases.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use callplus_session::{
    AppKey, CallId, CallInfo, CallRecord, CallType, Delivery, Direction, EndReason, MediaType, Participant,
    ParticipantState, UserId, wire,
};
use callplus_signal::storage::{
    AppCredentials, BatchOp, BatchWriter, CallRow, FIRST_PAGE, OfflineRow, PageOrder, PostgresStorage,
    RecordPage, RecordRow, SqliteStorage, Storage, StorageError, WriteOp,
};

fn record(app: &str, owner: &str, call: &str, sync_time: i64) -> RecordRow {
    RecordRow {
        app_key: app.into(),
        owner_id: owner.into(),
        call_id: call.into(),
        sync_time,
        body: format!("{app}/{owner}/{call}@{sync_time}").into_bytes(),
        fence: 0,
    }
}

fn call(app: &str, id: &str, body: &[u8]) -> CallRow {
    CallRow { app_key: app.into(), call_id: id.into(), body: body.to_vec(), fence: 0 }
}

/// A snapshot of call `id` of app `a` as the switchboard makes one; `state` rides in `extra`,
/// so that two states of a call are told apart.
fn snapshot(id: &str, state: &str) -> CallInfo {
    let creator = UserId::new("alice").unwrap();
    CallInfo {
        call_id: CallId::new(id).unwrap(),
        call_type: CallType::Single,
        media_type: MediaType::Audio,
        creator: creator.clone(),
        participants: vec![Participant {
            user_id: creator,
            state: ParticipantState::OnCall,
            reason: None,
            inviter: None,
            invited_at_ms: 1_000,
            connected_at_ms: None,
            ended_at_ms: None,
            devices: Vec::new(),
            delivery: Delivery::Delivered,
            camera_disabled: false,
            microphone_disabled: false,
            device_id: None,
        }],
        created_at_ms: 1_000,
        started_at_ms: None,
        first_frame_at_ms: None,
        ended_at_ms: None,
        version: 1,
        extra: state.to_owned(),
        ring_timeout_ms: 0,
    }
}

/// The row of app `a` that [`save_call`]`(id, state, _)` stores.
fn snapshot_row(id: &str, state: &str) -> CallRow {
    call("a", id, &wire::call_info_to_vec(&snapshot(id, state)))
}

/// How [`Flaky`] notes the snapshot row of [`snapshot_row`].
fn shown(id: &str, state: &str) -> String {
    format!("{id}={}", String::from_utf8_lossy(&wire::call_info_to_vec(&snapshot(id, state))))
}

/// `owner`'s record of call `id` of app `a`, as the switchboard makes one.
fn call_record(owner: &str, id: &str, sync_time: i64) -> CallRecord {
    CallRecord {
        owner: UserId::new(owner).unwrap(),
        call: snapshot(id, "ended").into(),
        inviter: None,
        end_reason: EndReason::Hangup,
        direction: Direction::Outgoing,
        duration_ms: 0,
        sync_time,
    }
}

/// The row that [`record_op`]`(owner, id, sync_time)` stores.
fn record_row(owner: &str, id: &str, sync_time: i64) -> RecordRow {
    RecordRow {
        body: wire::call_record_to_vec(&call_record(owner, id, sync_time)),
        ..record("a", owner, id, sync_time)
    }
}

fn app_a() -> AppKey {
    AppKey::new("a").unwrap()
}

fn app(key: &str) -> AppCredentials {
    AppCredentials { app_key: key.into(), app_secret: format!("secret-of-{key}") }
}

/// Pages through all of a user's records, returning the pages.
fn all_pages(s: &dyn Storage, app: &str, owner: &str, order: PageOrder) -> Vec<RecordPage> {
    let mut pages = Vec::new();
    let mut cursor = FIRST_PAGE;
    loop {
        let page = s.page_records(app, owner, cursor, 100, order).unwrap();
        cursor = page.sync_time;
        let more = page.has_more;
        pages.push(page);
        if !more {
            return pages;
        }
    }
}

/// A storage engine under test: a fresh, empty database, opened (and reopened) through the
/// engine's public constructor, plus a side door to run raw SQL on it.
trait Engine {
    fn open(&self) -> Arc<dyn Storage>;
    /// Runs SQL on the database behind the storage's back (e.g. a trigger that refuses rows).
    fn exec(&self, sqlite: &str, postgres: &str);
}

struct Sqlite(tempfile::TempDir);

impl Engine for Sqlite {
    fn open(&self) -> Arc<dyn Storage> {
        Arc::new(SqliteStorage::open(self.0.path()).unwrap())
    }
    fn exec(&self, sqlite: &str, _postgres: &str) {
        rusqlite::Connection::open(self.0.path().join("callplus.db")).unwrap().execute_batch(sqlite).unwrap();
    }
}

struct Postgres(String);

impl Engine for Postgres {
    fn open(&self) -> Arc<dyn Storage> {
        Arc::new(PostgresStorage::open(&self.0).unwrap())
    }
    fn exec(&self, _sqlite: &str, postgres: &str) {
        let db = self.0.rsplit('/').next().unwrap();
        support::postgres::server().exec(db, postgres);
    }
}

/// Runs each named test once per engine: `sqlite::NAME` and `postgres::NAME`.
macro_rules! every_engine {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $name() {
                super::$name(&super::Sqlite(tempfile::tempdir().unwrap()));
            })*
        }
        mod postgres {
            $(#[test]
            fn $name() {
                super::$name(&super::Postgres(crate::support::postgres::fresh_database()));
            })*
        }
    };
}

every_engine!(
    apps_roundtrip,
    paging_250_records_both_orders,
    page_size_must_be_1_to_100,
    records_upsert_by_call,
    one_record_by_owner_and_call,
    delete_by_ids_and_all,
    apps_are_isolated,
    offline_events_keep_order,
    active_calls_upsert_and_remove,
    data_survives_reopening,
    concurrent_reads_and_writes,
    apply_batch_applies_everything_in_order,
    apply_batch_undoes_only_the_failing_op,
    apply_batch_raises_the_highest_sync_time_to_the_batchs,
    batch_writer_snapshots_of_calls_fresh_and_stored,
    batch_writer_10k_records_then_flush,
    batch_writer_offline_reply_and_op_order,
    dropping_the_writer_drains_the_queue,
    nonces_are_claimed_once_and_kept_across_reopening,
    the_alive_mark_is_kept_and_written_in_batches,
    writes_with_an_older_fencing_token_change_nothing,
);

/// `record` finds exactly the owner's record of the call: not another owner's, app's or call's.
fn one_record_by_owner_and_call(e: &dyn Engine) {
    let s = e.open();
    let rows = [
        record("a", "alice", "c1", 1),
        record("a", "bob", "c1", 2),
        record("a", "alice", "c2", 3),
        record("b", "alice", "c1", 4),
    ];
    s.append_records(&rows).unwrap();
    assert_eq!(s.record("a", "alice", "c1").unwrap(), Some(rows[0].clone()));
    assert_eq!(s.record("a", "bob", "c1").unwrap(), Some(rows[1].clone()));
    assert_eq!(s.record("b", "alice", "c1").unwrap(), Some(rows[3].clone()));
    assert_eq!(s.record("a", "carol", "c1").unwrap(), None);
    assert_eq!(s.record("a", "bob", "c2").unwrap(), None);
    assert_eq!(s.delete_records("a", "alice", &["c1".to_owned()]).unwrap(), 1);
    assert_eq!(s.record("a", "alice", "c1").unwrap(), None);
}

/// Fencing: what a call's successor wrote (a larger token) is never overwritten by its former
/// owner's late writes (a smaller one), whichever way they reach storage; writes with the same
/// token (an owner's own updates) or a larger one replace the row as before.
fn writes_with_an_older_fencing_token_change_nothing(e: &dyn Engine) {
    let s = e.open();
    let fenced = |sync_time: i64, fence: i64, body: &str| RecordRow {
        body: body.as_bytes().to_vec(),
        fence,
        ..record("a", "bob", "node-a_1", sync_time)
    };
    let bodies = |s: &dyn Storage| -> Vec<(String, i64)> {
        let page = s.page_records("a", "bob", FIRST_PAGE, 10, PageOrder::Asc).unwrap();
        page.rows.into_iter().map(|r| (String::from_utf8(r.body).unwrap(), r.fence)).collect()
    };
    s.append_records(&[fenced(10, 1, "by the creator")]).unwrap();
    s.append_records(&[fenced(11, 1, "by the creator, updated")]).unwrap();
    assert_eq!(bodies(s.as_ref()), [("by the creator, updated".to_owned(), 1)]);
    s.append_records(&[fenced(20, 2, "ended by the successor")]).unwrap();
    let successors = [("ended by the successor".to_owned(), 2)];
    assert_eq!(bodies(s.as_ref()), successors);

    // The woken creator writes its own end: directly, in a batch, through the writer.
    s.append_records(&[fenced(30, 1, "late")]).unwrap();
    let results = s.apply_batch(&[BatchOp::Records(vec![fenced(31, 1, "late in a batch")])]).unwrap();
    assert!(results.iter().all(Result::is_ok), "refused quietly, not failed: {results:?}");
    let writer = BatchWriter::spawn(s.clone());
    writer.submit(WriteOp::Record { app_key: app_a(), record: call_record("bob", "node-a_1", 32), fence: 1 });
    writer.submit(WriteOp::SaveCall {
        app_key: app_a(),
        call: snapshot("node-a_2", "stale").into(),
        fresh: false,
        fence: 1,
    });
    writer.flush().unwrap();
    assert_eq!(bodies(s.as_ref()), successors);

    // Snapshots alike.
    s.put_active_calls(&[CallRow { fence: 2, ..call("a", "node-a_2", b"successor's") }]).unwrap();
    s.put_active_calls(&[CallRow { fence: 1, ..call("a", "node-a_2", b"stale") }]).unwrap();
    let snapshots = |s: &dyn Storage| -> Vec<(Vec<u8>, i64)> {
        s.active_calls().unwrap().into_iter().map(|c| (c.body, c.fence)).collect()
    };
    assert_eq!(snapshots(s.as_ref()), [(b"successor's".to_vec(), 2)]);
    s.put_active_calls(&[CallRow { fence: 3, ..call("a", "node-a_2", b"third owner's") }]).unwrap();
    assert_eq!(snapshots(s.as_ref()), [(b"third owner's".to_vec(), 3)]);
    writer.shutdown().unwrap();

    // Kept across reopening; a single node's rows (token 0) replace each other as always.
    drop(s);
    let s = e.open();
    assert_eq!(bodies(s.as_ref()), successors);
    s.append_records(&[RecordRow { owner_id: "carol".into(), ..fenced(40, 0, "one node") }]).unwrap();
    s.append_records(&[RecordRow { owner_id: "carol".into(), ..fenced(41, 0, "one node, again") }]).unwrap();
    let page = s.page_records("a", "carol", FIRST_PAGE, 10, PageOrder::Asc).unwrap();
    assert_eq!(
        page.rows.iter().map(|r| r.body.as_slice()).collect::<Vec<_>>(),
        [b"one node, again".as_slice()]
    );
}

fn nonces_are_claimed_once_and_kept_across_reopening(e: &dyn Engine) {
    {
        let s = e.open();
        assert!(s.claim_nonce("app_a", "n-1", 1_000, 1_600).unwrap());
        assert!(!s.claim_nonce("app_a", "n-1", 1_001, 1_601).unwrap(), "a replay");
        assert!(s.claim_nonce("app_b", "n-1", 1_001, 1_601).unwrap(), "nonces are per app");
    }
    let s = e.open();
    assert!(!s.claim_nonce("app_a", "n-1", 1_599, 2_199).unwrap(), "still refused after reopening");
    assert!(s.claim_nonce("app_a", "n-1", 1_600, 2_200).unwrap(), "forgotten once its time passed");
}

fn the_alive_mark_is_kept_and_written_in_batches(e: &dyn Engine) {
    {
        let s = e.open();
        assert_eq!(s.alive_mark().unwrap(), None);
        s.set_alive_mark(5_000).unwrap();
        let results = s.apply_batch(&[BatchOp::AliveMark(7_000)]).unwrap();
        assert!(results.iter().all(Result::is_ok));
    }
    assert_eq!(e.open().alive_mark().unwrap(), Some(7_000));
}

fn apps_roundtrip(e: &dyn Engine) {
    let s = e.open();
    assert!(s.apps().unwrap().is_empty());
    s.insert_app(&app("app_one")).unwrap();
    s.insert_app(&app("app_two")).unwrap();
    assert_eq!(s.apps().unwrap(), vec![app("app_one"), app("app_two")]);

    let dup = AppCredentials { app_key: "app_one".into(), app_secret: "other".into() };
    assert!(matches!(s.insert_app(&dup), Err(StorageError::InvalidArgument(_))));
    assert!(matches!(s.insert_app(&app("bad key")), Err(StorageError::InvalidArgument(_))));
    let no_secret = AppCredentials { app_key: "app_three".into(), app_secret: String::new() };
    assert!(matches!(s.insert_app(&no_secret), Err(StorageError::InvalidArgument(_))));
    // Failed inserts changed nothing; the original secret is kept.
    assert_eq!(s.apps().unwrap(), vec![app("app_one"), app("app_two")]);
}

fn paging_250_records_both_orders(e: &dyn Engine) {
    let s = e.open();
    let rows: Vec<_> = (1..=250).map(|i| record("app_a", "alice", &format!("call-{i:03}"), i)).collect();
    s.append_records(&rows).unwrap();
    // Someone else's records must not show up.
    s.append_records(&[record("app_a", "bob", "call-x", 1000)]).unwrap();

    let desc = all_pages(s.as_ref(), "app_a", "alice", PageOrder::Desc);
    assert_eq!(desc.iter().map(|p| p.rows.len()).collect::<Vec<_>>(), [100, 100, 50]);
    assert_eq!(desc.iter().map(|p| p.has_more).collect::<Vec<_>>(), [true, true, false]);
    assert_eq!(desc.iter().map(|p| p.sync_time).collect::<Vec<_>>(), [151, 51, 1]);
    let times: Vec<i64> = desc.iter().flat_map(|p| p.rows.iter().map(|r| r.sync_time)).collect();
    assert_eq!(times, (1..=250).rev().collect::<Vec<_>>());
    assert_eq!(desc[0].rows[0], rows[249], "bodies and ids come back intact");

    let asc = all_pages(s.as_ref(), "app_a", "alice", PageOrder::Asc);
    assert_eq!(asc.iter().map(|p| p.rows.len()).collect::<Vec<_>>(), [100, 100, 50]);
    assert_eq!(asc.iter().map(|p| p.has_more).collect::<Vec<_>>(), [true, true, false]);
    assert_eq!(asc.iter().map(|p| p.sync_time).collect::<Vec<_>>(), [100, 200, 250]);
    let times: Vec<i64> = asc.iter().flat_map(|p| p.rows.iter().map(|r| r.sync_time)).collect();
    assert_eq!(times, (1..=250).collect::<Vec<_>>());

    // Past the end: empty page, cursor unchanged.
    let end = s.page_records("app_a", "alice", 250, 10, PageOrder::Asc).unwrap();
    assert_eq!(end, RecordPage { rows: vec![], has_more: false, sync_time: 250 });
    // A page that ends exactly at the last record says there is no more.
    let exact = s.page_records("app_a", "alice", 150, 100, PageOrder::Asc).unwrap();
    assert_eq!(exact.rows.len(), 100);
    assert!(!exact.has_more);
    // A small page from the middle.
    let mid = s.page_records("app_a", "alice", 10, 3, PageOrder::Desc).unwrap();
    assert_eq!(mid.rows.iter().map(|r| r.sync_time).collect::<Vec<_>>(), [9, 8, 7]);
    assert!(mid.has_more);
    assert_eq!(mid.sync_time, 7);
}

fn page_size_must_be_1_to_100(e: &dyn Engine) {
    let s = e.open();
    for count in [0, 101, u32::MAX] {
        assert!(
            matches!(
                s.page_records("a", "u", FIRST_PAGE, count, PageOrder::Desc),
                Err(StorageError::InvalidArgument(_))
            ),
            "count {count} must be rejected"
        );
    }
    for count in [1, 100] {
        let page = s.page_records("a", "u", FIRST_PAGE, count, PageOrder::Desc).unwrap();
        assert!(page.rows.is_empty());
        assert_eq!(page.sync_time, FIRST_PAGE);
    }
}

fn records_upsert_by_call(e: &dyn Engine) {
    let s = e.open();
    s.append_records(&[
        record("a", "alice", "c1", 1),
        record("a", "bob", "c1", 2),
        record("a", "alice", "c2", 3),
    ])
    .unwrap();
    let mut updated = record("a", "alice", "c1", 4);
    updated.body = b"final".to_vec();
    s.append_records(std::slice::from_ref(&updated)).unwrap();
    let page = s.page_records("a", "alice", FIRST_PAGE, 10, PageOrder::Desc).unwrap();
    assert_eq!(page.rows, vec![updated, record("a", "alice", "c2", 3)]);
    // The other participant's record of the same call is neither replaced nor doubled.
    let page = s.page_records("a", "bob", FIRST_PAGE, 10, PageOrder::Desc).unwrap();
    assert_eq!(page.rows, vec![record("a", "bob", "c1", 2)]);
    // Nor is a record of the same call id in another app.
    s.append_records(&[record("b", "alice", "c1", 5)]).unwrap();
    let page = s.page_records("a", "alice", FIRST_PAGE, 10, PageOrder::Desc).unwrap();
    assert_eq!(page.rows.len(), 2);
}

fn delete_by_ids_and_all(e: &dyn Engine) {
    let s = e.open();
    let rows: Vec<_> = (1..=5).map(|i| record("a", "alice", &format!("c{i}"), i)).collect();
    s.append_records(&rows).unwrap();
    s.append_records(&[record("a", "bob", "c1", 10)]).unwrap();

    let n = s.delete_records("a", "alice", &["c2".into(), "c4".into(), "nope".into()]).unwrap();
    assert_eq!(n, 2);
    let left = s.page_records("a", "alice", FIRST_PAGE, 100, PageOrder::Asc).unwrap();
    assert_eq!(left.rows.iter().map(|r| r.call_id.as_str()).collect::<Vec<_>>(), ["c1", "c3", "c5"]);

    assert_eq!(s.delete_all_records("a", "alice").unwrap(), 3);
    assert_eq!(s.delete_all_records("a", "alice").unwrap(), 0);
    assert!(s.page_records("a", "alice", FIRST_PAGE, 100, PageOrder::Asc).unwrap().rows.is_empty());
    // Bob's record with the same call id is untouched.
    let bob = s.page_records("a", "bob", FIRST_PAGE, 100, PageOrder::Asc).unwrap();
    assert_eq!(bob.rows, vec![record("a", "bob", "c1", 10)]);
    // The high-water mark survives deletes, so the server never reuses a sync time.
    assert_eq!(s.max_sync_time().unwrap(), 10);
}

fn apps_are_isolated(e: &dyn Engine) {
    let s = e.open();
    s.append_records(&[
        record("app_a", "alice", "c1", 1),
        record("app_b", "alice", "c1", 2),
        record("app_b", "alice", "c2", 3),
    ])
    .unwrap();
    let a = s.page_records("app_a", "alice", FIRST_PAGE, 100, PageOrder::Desc).unwrap();
    assert_eq!(a.rows, vec![record("app_a", "alice", "c1", 1)]);

    assert_eq!(s.delete_all_records("app_a", "alice").unwrap(), 1);
    assert_eq!(s.delete_records("app_a", "alice", &["c2".into()]).unwrap(), 0);
    let b = s.page_records("app_b", "alice", FIRST_PAGE, 100, PageOrder::Desc).unwrap();
    assert_eq!(b.rows.len(), 2);

    s.enqueue_offline("app_a", "alice", &[b"a".to_vec()]).unwrap();
    let ids_b = s.enqueue_offline("app_b", "alice", &[b"b".to_vec()]).unwrap();
    // Removing app_b's id under app_a does nothing.
    s.remove_offline("app_a", "alice", &ids_b).unwrap();
    assert_eq!(s.offline_events("app_b", "alice").unwrap().len(), 1);
    let a_events = s.offline_events("app_a", "alice").unwrap();
    assert_eq!(a_events.len(), 1);
    assert_eq!(a_events[0].body, b"a");
}

fn offline_events_keep_order(e: &dyn Engine) {
    let s = e.open();
    assert_eq!(s.max_sync_time().unwrap(), 0);
    assert!(s.offline_events("a", "alice").unwrap().is_empty());
    let first = s.enqueue_offline("a", "alice", &[b"e1".to_vec(), b"e2".to_vec(), b"e3".to_vec()]).unwrap();
    s.enqueue_offline("a", "bob", &[b"other".to_vec()]).unwrap();
    let second = s.enqueue_offline("a", "alice", &[b"e4".to_vec(), b"e5".to_vec()]).unwrap();
    let ids: Vec<i64> = first.iter().chain(&second).copied().collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");

    let events = s.offline_events("a", "alice").unwrap();
    assert_eq!(events.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    assert_eq!(
        events.iter().map(|e| e.body.as_slice()).collect::<Vec<_>>(),
        [b"e1", b"e2", b"e3", b"e4", b"e5"]
    );
    assert_eq!(
        events[0],
        OfflineRow { id: ids[0], app_key: "a".into(), user_id: "alice".into(), body: b"e1".to_vec() }
    );

    // Remove delivered ones (plus an unknown id), the rest stay in order.
    s.remove_offline("a", "alice", &[ids[0], ids[2], 999_999]).unwrap();
    let left = s.offline_events("a", "alice").unwrap();
    assert_eq!(left.iter().map(|e| e.body.as_slice()).collect::<Vec<_>>(), [b"e2", b"e4", b"e5"]);
    assert_eq!(s.offline_events("a", "bob").unwrap().len(), 1);
}

fn active_calls_upsert_and_remove(e: &dyn Engine) {
    let s = e.open();
    s.put_active_calls(&[call("a", "c1", b"v1"), call("a", "c2", b"v1"), call("b", "c1", b"v1")]).unwrap();
    s.put_active_calls(&[call("a", "c1", b"v2")]).unwrap();
    assert_eq!(
        s.active_calls().unwrap(),
        vec![call("a", "c1", b"v2"), call("a", "c2", b"v1"), call("b", "c1", b"v1")]
    );
    s.remove_active_calls(&[("a".into(), "c1".into()), ("a".into(), "missing".into())]).unwrap();
    assert_eq!(s.active_calls().unwrap(), vec![call("a", "c2", b"v1"), call("b", "c1", b"v1")]);
}

fn data_survives_reopening(e: &dyn Engine) {
    let offline_ids;
    {
        let s = e.open();
        s.insert_app(&app("app_p")).unwrap();
        s.append_records(&[record("app_p", "alice", "c1", 41), record("app_p", "alice", "c2", 42)]).unwrap();
        s.delete_records("app_p", "alice", &["c2".into()]).unwrap();
        offline_ids = s.enqueue_offline("app_p", "alice", &[b"missed".to_vec()]).unwrap();
        s.put_active_calls(&[call("app_p", "c9", b"ringing")]).unwrap();
        // The read connections see committed writes.
        assert_eq!(s.apps().unwrap(), vec![app("app_p")]);
    }

    let s = e.open();
    assert_eq!(s.apps().unwrap(), vec![app("app_p")]);
    let page = s.page_records("app_p", "alice", FIRST_PAGE, 10, PageOrder::Desc).unwrap();
    assert_eq!(page.rows, vec![record("app_p", "alice", "c1", 41)]);
    assert_eq!(s.max_sync_time().unwrap(), 42);
    let events = s.offline_events("app_p", "alice").unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].id, offline_ids[0]);
    assert_eq!(events[0].body, b"missed");
    assert_eq!(s.active_calls().unwrap(), vec![call("app_p", "c9", b"ringing")]);

    // Ids keep increasing after a restart, even once the old ones are removed.
    s.remove_offline("app_p", "alice", &offline_ids).unwrap();
    let new_ids = s.enqueue_offline("app_p", "alice", &[b"later".to_vec()]).unwrap();
    assert!(new_ids[0] > offline_ids[0]);
}

#[test]
fn sqlite_creates_its_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("nested").join("data");
    SqliteStorage::open(&data_dir).unwrap().insert_app(&app("app_p")).unwrap();
    assert!(data_dir.join("callplus.db").exists());
    assert_eq!(SqliteStorage::open(&data_dir).unwrap().apps().unwrap(), vec![app("app_p")]);
}

/// The WAL is checkpointed every 10,000 pages rather than SQLite's default 1,000: under the
/// default, a checkpoint resets the WAL at about 1,000 pages and the next commits write from its
/// start again, so the file never grew much past 4 MiB.
#[test]
fn sqlite_checkpoints_its_wal_less_often_than_sqlites_default() {
    const PAGE: u64 = 4096;
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStorage::open(dir.path()).unwrap();
    let wal = dir.path().join("callplus.db-wal");
    let wal_pages = || std::fs::metadata(&wal).map_or(0, |m| m.len() / PAGE);
    // Batches of records across many owners, each commit adding a few dozen pages, until the
    // WAL holds half again SQLite's default interval.
    let mut batches = 0;
    while wal_pages() < 1_500 {
        assert!(batches < 2_000, "the WAL stayed at {} pages", wal_pages());
        let rows: Vec<RecordRow> = (0..64)
            .map(|i| {
                let mut row = record("a", &format!("owner-{:04}", (batches * 64 + i) % 5_000), "c", 0);
                row.call_id = format!("call-{batches:05}-{i:02}");
                row.sync_time = batches * 64 + i;
                row.body = vec![b'x'; 300];
                row
            })
            .collect();
        s.append_records(&rows).unwrap();
        batches += 1;
    }
    assert!(wal_pages() >= 1_500);
    // What the WAL holds is read back, by this storage and by a fresh open of the file.
    let first =
        |s: &dyn Storage| s.page_records("a", "owner-0000", FIRST_PAGE, 100, PageOrder::Asc).unwrap().rows;
    assert_eq!(first(&s).first().map(|r| r.call_id.as_str()), Some("call-00000-00"));
    drop(s);
    let written_for_owner_0 = usize::try_from(batches * 64).unwrap().div_ceil(5_000);
    assert_eq!(first(&SqliteStorage::open(dir.path()).unwrap()).len(), written_for_owner_0);
}

fn concurrent_reads_and_writes(e: &dyn Engine) {
    let s = e.open();
    let writer = {
        let s = Arc::clone(&s);
        std::thread::spawn(move || {
            for batch in 0..40 {
                let rows: Vec<_> = (0..50)
                    .map(|i| {
                        let t = batch * 50 + i + 1;
                        record("a", "alice", &format!("c{t}"), t)
                    })
                    .collect();
                s.append_records(&rows).unwrap();
            }
        })
    };
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                let mut last_seen = 0;
                for _ in 0..200 {
                    let page = s.page_records("a", "alice", FIRST_PAGE, 1, PageOrder::Desc).unwrap();
                    let newest = page.rows.first().map_or(0, |r| r.sync_time);
                    // Every read sees a committed state, and time never goes backwards.
                    assert_eq!(newest % 50, 0, "saw a half-committed batch");
                    assert!(newest >= last_seen);
                    last_seen = newest;
                }
            })
        })
        .collect();
    writer.join().unwrap();
    for r in readers {
        r.join().unwrap();
    }
    let pages = all_pages(s.as_ref(), "a", "alice", PageOrder::Asc);
    assert_eq!(pages.iter().map(|p| p.rows.len()).sum::<usize>(), 2000);
}

fn apply_batch_applies_everything_in_order(e: &dyn Engine) {
    let s = e.open();
    let ops = vec![
        BatchOp::Records(vec![record("a", "u", "c1", 1)]),
        BatchOp::Offline {
            app_key: "a".into(),
            user_id: "u".into(),
            bodies: vec![b"x".to_vec(), b"y".to_vec()],
        },
        BatchOp::PutCalls(vec![call("a", "c1", b"live")]),
        BatchOp::RemoveCalls(vec![("a".into(), "c1".into())]),
        BatchOp::Records(vec![record("a", "u", "c1", 5)]),
    ];
    let results = s.apply_batch(&ops).unwrap();
    assert_eq!(results.len(), 5);
    let ids = results[1].as_ref().unwrap().clone();
    assert_eq!(ids.len(), 2);
    assert!(results.iter().all(Result::is_ok));

    // Later ops in the batch see earlier ones: the call was put then removed,
    // and the record was upserted to its last version.
    assert!(s.active_calls().unwrap().is_empty());
    let page = s.page_records("a", "u", FIRST_PAGE, 10, PageOrder::Desc).unwrap();
    assert_eq!(page.rows, vec![record("a", "u", "c1", 5)]);
    let results = s
        .apply_batch(&[BatchOp::RemoveOffline {
            app_key: "a".into(),
            user_id: "u".into(),
            ids: vec![ids[0]],
        }])
        .unwrap();
    assert!(results[0].is_ok());
    let events = s.offline_events("a", "u").unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].body, b"y");
}

fn apply_batch_undoes_only_the_failing_op(e: &dyn Engine) {
    let s = e.open();
    // The database itself refuses one record, as a full disk or a broken row would, in the
    // middle of a batch.
    e.exec(
        "CREATE TRIGGER refuse_boom BEFORE INSERT ON records WHEN NEW.call_id = 'boom'
         BEGIN SELECT RAISE(ABORT, 'boom refused'); END",
        "CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.call_id = 'boom' THEN RAISE EXCEPTION 'boom refused'; END IF; RETURN NEW; END $$;
         CREATE TRIGGER refuse_boom BEFORE INSERT ON records FOR EACH ROW EXECUTE FUNCTION refuse_boom();",
    );
    let ops = vec![
        BatchOp::Records(vec![record("a", "u", "c1", 1)]),
        BatchOp::PutCalls(vec![call("a", "c1", b"live")]),
        BatchOp::Records(vec![record("a", "u", "c2", 2), record("a", "u", "boom", 3)]),
        BatchOp::Records(vec![record("a", "u", "c4", 4)]),
    ];
    let results = s.apply_batch(&ops).unwrap();
    assert!(results[0].is_ok() && results[1].is_ok() && results[3].is_ok(), "{results:?}");
    assert!(results[2].as_ref().is_err_and(|e| e.to_string().contains("boom refused")), "{results:?}");
    // The failing op is undone whole (c2 went with it); everything else landed.
    let page = s.page_records("a", "u", FIRST_PAGE, 10, PageOrder::Asc).unwrap();
    assert_eq!(page.rows.iter().map(|r| r.call_id.as_str()).collect::<Vec<_>>(), ["c1", "c4"]);
    assert_eq!(s.active_calls().unwrap(), vec![call("a", "c1", b"live")]);
    assert_eq!(s.max_sync_time().unwrap(), 4);
}

/// The highest `sync_time` follows every batch of records, whatever their order in the batch,
/// and is never lowered.
fn apply_batch_raises_the_highest_sync_time_to_the_batchs(e: &dyn Engine) {
    {
        let s = e.open();
        s.append_records(&[record("a", "u", "c0", 50)]).unwrap();
        let ops = vec![
            BatchOp::Records(vec![record("a", "u", "c1", 60)]),
            BatchOp::PutCalls(vec![call("a", "c1", b"live")]),
            BatchOp::Records(vec![record("a", "v", "c1", 55), record("a", "u", "c2", 7)]),
            BatchOp::RemoveCalls(vec![("a".into(), "c1".into())]),
            BatchOp::AliveMark(1_000),
        ];
        let results = s.apply_batch(&ops).unwrap();
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(s.max_sync_time().unwrap(), 60);
        let times = |owner| {
            let page = s.page_records("a", owner, FIRST_PAGE, 10, PageOrder::Asc).unwrap();
            page.rows.iter().map(|r| r.sync_time).collect::<Vec<_>>()
        };
        assert_eq!(times("u"), [7, 50, 60]);
        assert_eq!(times("v"), [55]);
        assert!(s.active_calls().unwrap().is_empty());

        // A batch of older times leaves it; deleting the newest record does too.
        assert!(s.apply_batch(&[BatchOp::Records(vec![record("a", "u", "c3", 20)])]).unwrap()[0].is_ok());
        assert_eq!(s.delete_records("a", "u", &["c1".to_owned()]).unwrap(), 1);
        assert_eq!(s.max_sync_time().unwrap(), 60);
        // A batch without records leaves it too.
        assert!(s.apply_batch(&[BatchOp::AliveMark(2_000)]).unwrap()[0].is_ok());
        assert_eq!(s.max_sync_time().unwrap(), 60);
    }
    assert_eq!(e.open().max_sync_time().unwrap(), 60, "committed with the batch");
}

/// A snapshot of call `id` in `state`, encoded when written.
fn save_call(id: &str, state: &str, fresh: bool) -> WriteOp {
    WriteOp::SaveCall { app_key: app_a(), call: snapshot(id, state).into(), fresh, fence: 0 }
}

/// A record of `owner` for call `id`, encoded when written.
fn record_op(owner: &str, id: &str, sync_time: i64) -> WriteOp {
    WriteOp::Record { app_key: app_a(), record: call_record(owner, id, sync_time), fence: 0 }
}

/// The switchboard's removal of call `id`'s snapshot.
fn forget(id: &str) -> WriteOp {
    WriteOp::ForgetCall { app_key: app_a(), call_id: CallId::new(id).unwrap() }
}

/// What the writer leaves in `active_calls` for calls made in this process (fresh) and calls
/// read back from storage, whichever batch they end in.
fn batch_writer_snapshots_of_calls_fresh_and_stored(e: &dyn Engine) {
    let storage = e.open();
    // A call of the last run, still stored.
    storage.put_active_calls(&[call("a", "old", b"ringing")]).unwrap();
    let writer = BatchWriter::spawn_with_delay(storage.clone(), std::time::Duration::from_secs(3600));

    // One batch: a call made and ended within it, the stored call saved (ended) and removed,
    // and a call made that stays live.
    writer.submit_all(vec![
        save_call("short", "ringing", true),
        save_call("old", "ended", false),
        save_call("short", "on_call", false),
        record_op("alice", "short", 1),
        save_call("mid", "ringing", true),
        record_op("bob", "short", 2),
        forget("short"),
        forget("old"),
        save_call("mid", "on_call", false),
    ]);
    writer.flush().unwrap();
    // The call ended in the batch left no snapshot and both its records; the stored call is
    // gone; the live call's last state is stored, and a fresh open (what a crash would leave)
    // finds it.
    assert_eq!(e.open().active_calls().unwrap(), vec![snapshot_row("mid", "on_call")]);
    for (owner, time) in [("alice", 1), ("bob", 2)] {
        let page = storage.page_records("a", owner, FIRST_PAGE, 10, PageOrder::Asc).unwrap();
        assert_eq!(page.rows, vec![record_row(owner, "short", time)], "{owner}");
    }
    assert_eq!(storage.max_sync_time().unwrap(), 2);

    // A fresh call ended in a later batch than its first save is removed by that batch.
    writer.submit_all(vec![record_op("alice", "mid", 3), forget("mid")]);
    writer.flush().unwrap();
    assert!(e.open().active_calls().unwrap().is_empty());
    writer.shutdown().unwrap();
}

/// A fresh call saved and removed within one batch costs `active_calls` no write either way;
/// a call that was stored before, or that is saved again after its removal, still does.
#[test]
fn batch_writer_writes_nothing_for_a_fresh_call_ended_in_its_batch() {
    let storage = Arc::new(Flaky::new());
    let writer = BatchWriter::spawn_with_delay(storage.clone(), std::time::Duration::from_secs(3600));
    writer.submit_all(vec![
        save_call("short", "ringing", true),
        record_op("alice", "short", 1),
        save_call("short", "ended", false),
        WriteOp::RemoveCalls(vec![("a".into(), "short".into()), ("a".into(), "stored".into())]),
        save_call("again", "ringing", true),
        forget("again"),
        save_call("again", "back", false),
        save_call("put", "x", true),
        WriteOp::PutCalls(vec![call("a", "put", b"y")]),
        forget("put"),
        WriteOp::PutCalls(vec![call("a", "plain", b"y")]),
        save_call("plain", "x", true),
        forget("plain"),
        save_call("gone", "ringing", true),
        forget("gone"),
    ]);
    writer.flush().unwrap();
    assert_eq!(*storage.put_rows.lock().unwrap(), [shown("again", "back")]);
    // `again` was saved after its removal; `plain` was first written by a plain `PutCalls`,
    // which does not say the call is fresh: their removals stay. `gone`, fresh and forgotten
    // in its batch, is written neither way.
    assert_eq!(*storage.removed.lock().unwrap(), ["stored", "again", "plain"]);
    assert_eq!(storage.active_calls().unwrap(), vec![snapshot_row("again", "back")]);
    let page = storage.page_records("a", "alice", FIRST_PAGE, 10, PageOrder::Asc).unwrap();
    assert_eq!(page.rows, vec![record_row("alice", "short", 1)], "the records are written");
    writer.shutdown().unwrap();
}

#[test]
fn batch_writer_skips_snapshots_replaced_in_the_same_batch() {
    let storage = Arc::new(Flaky::new());
    // A long commit delay: the flush, not the timer, commits this one batch.
    let writer = BatchWriter::spawn_with_delay(storage.clone(), std::time::Duration::from_secs(3600));
    writer.submit_all(vec![
        WriteOp::PutCalls(vec![call("a", "short", b"ringing")]),
        WriteOp::PutCalls(vec![call("a", "long", b"ringing"), call("a", "long", b"connecting")]),
        WriteOp::PutCalls(vec![call("a", "short", b"on_call")]),
        WriteOp::RemoveCalls(vec![("a".into(), "short".into())]),
        WriteOp::PutCalls(vec![call("a", "long", b"on_call")]),
        WriteOp::PutCalls(vec![call("b", "long", b"ringing")]),
    ]);
    writer.flush().unwrap();
    // Only each call's last state reached storage; the call that ended in the batch, none.
    assert_eq!(*storage.put_rows.lock().unwrap(), ["long=on_call", "long=ringing"]);
    let mut live = storage.active_calls().unwrap();
    live.sort_by(|x, y| x.app_key.cmp(&y.app_key));
    assert_eq!(live, vec![call("a", "long", b"on_call"), call("b", "long", b"ringing")]);

    // A snapshot committed in an earlier batch is still removed by a later one.
    writer.submit(WriteOp::RemoveCalls(vec![("a".into(), "long".into())]));
    writer.shutdown().unwrap();
    assert_eq!(storage.active_calls().unwrap(), vec![call("b", "long", b"ringing")]);
}

/// Records and snapshots handed over as the switchboard made them are encoded on the writer's
/// thread into the rows a direct write would store, and a snapshot that a later op of its
/// batch replaces or removes is never written.
#[test]
fn batch_writer_writes_handed_over_values_as_their_rows() {
    let storage = Arc::new(Flaky::new());
    let writer = BatchWriter::spawn_with_delay(storage.clone(), std::time::Duration::from_secs(3600));
    writer.submit_all(vec![
        save_call("short", "ringing", false),
        save_call("long", "ringing", false),
        save_call("short", "on_call", false),
        forget("short"),
        record_op("u", "short", 7),
        save_call("long", "on_call", false),
    ]);
    writer.flush().unwrap();
    assert_eq!(
        *storage.put_rows.lock().unwrap(),
        [shown("long", "on_call")],
        "only the last snapshot is written"
    );
    assert_eq!(storage.active_calls().unwrap(), vec![snapshot_row("long", "on_call")]);
    let page = storage.page_records("a", "u", FIRST_PAGE, 10, PageOrder::Asc).unwrap();
    assert_eq!(page.rows, vec![record_row("u", "short", 7)]);
    writer.shutdown().unwrap();
}

fn batch_writer_10k_records_then_flush(e: &dyn Engine) {
    let storage = e.open();
    let writer = BatchWriter::spawn(storage.clone());
    for i in 1..=10_000 {
        let owner = format!("user{}", i % 10);
        writer.submit(WriteOp::Records(vec![record("a", &owner, &format!("c{i}"), i)]));
    }
    writer.flush().unwrap();
    for u in 0..10 {
        let pages = all_pages(storage.as_ref(), "a", &format!("user{u}"), PageOrder::Desc);
        assert_eq!(pages.iter().map(|p| p.rows.len()).sum::<usize>(), 1000, "user{u}");
    }
    assert_eq!(storage.max_sync_time().unwrap(), 10_000);
    writer.shutdown().unwrap();

    // Committed to disk: a fresh open sees it all.
    drop(storage);
    let reopened = e.open();
    let pages = all_pages(reopened.as_ref(), "a", "user3", PageOrder::Asc);
    assert_eq!(pages.iter().map(|p| p.rows.len()).sum::<usize>(), 1000);
}

fn batch_writer_offline_reply_and_op_order(e: &dyn Engine) {
    let storage = e.open();
    let writer = BatchWriter::spawn(storage.clone());
    let (tx, rx) = mpsc::channel();
    for n in 0..3u8 {
        let tx = tx.clone();
        writer.submit(WriteOp::Offline {
            app_key: "a".into(),
            user_id: "alice".into(),
            bodies: vec![vec![n], vec![n + 100]],
            reply: Some(Box::new(move |r| tx.send(r).unwrap())),
        });
    }
    writer.submit(WriteOp::PutCalls(vec![call("a", "c1", b"v1")]));
    writer.submit(WriteOp::PutCalls(vec![call("a", "c1", b"v2")]));
    writer.submit(WriteOp::PutCalls(vec![call("a", "c2", b"v1")]));
    writer.submit(WriteOp::RemoveCalls(vec![("a".into(), "c2".into())]));
    writer.flush().unwrap();

    let ids: Vec<i64> = (0..3).flat_map(|_| rx.recv().unwrap().unwrap()).collect();
    assert_eq!(ids.len(), 6);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "submission order kept");
    let events = storage.offline_events("a", "alice").unwrap();
    assert_eq!(events.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    assert_eq!(events.iter().map(|e| e.body[0]).collect::<Vec<_>>(), [0, 100, 1, 101, 2, 102]);
    assert_eq!(storage.active_calls().unwrap(), vec![call("a", "c1", b"v2")]);

    writer.submit(WriteOp::RemoveOffline {
        app_key: "a".into(),
        user_id: "alice".into(),
        ids: ids[..4].to_vec(),
    });
    writer.shutdown().unwrap();
    assert_eq!(storage.offline_events("a", "alice").unwrap().len(), 2);
}

fn dropping_the_writer_drains_the_queue(e: &dyn Engine) {
    let storage = e.open();
    let writer = BatchWriter::spawn(storage.clone());
    for i in 1..=500 {
        writer.submit(WriteOp::Records(vec![record("a", "u", &format!("c{i}"), i)]));
    }
    drop(writer);
    assert_eq!(storage.max_sync_time().unwrap(), 500);
}

/// Wraps SQLite through the trait's provided (op-by-op) `apply_batch`: fails record writes
/// for the call id `boom`, counts record writes, and notes every call snapshot it is given and
/// every call whose snapshot it is told to remove.
struct Flaky {
    inner: SqliteStorage,
    record_calls: Mutex<u32>,
    put_rows: Mutex<Vec<String>>,
    removed: Mutex<Vec<String>>,
}

impl Flaky {
    fn new() -> Flaky {
        Flaky {
            inner: SqliteStorage::open_in_memory().unwrap(),
            record_calls: Mutex::new(0),
            put_rows: Mutex::default(),
            removed: Mutex::default(),
        }
    }
}

impl Storage for Flaky {
    fn apps(&self) -> Result<Vec<AppCredentials>, StorageError> {
        self.inner.apps()
    }
    fn insert_app(&self, app: &AppCredentials) -> Result<(), StorageError> {
        self.inner.insert_app(app)
    }
    fn append_records(&self, rows: &[RecordRow]) -> Result<(), StorageError> {
        *self.record_calls.lock().unwrap() += 1;
        if rows.iter().any(|r| r.call_id == "boom") {
            return Err(StorageError::InvalidArgument("boom".into()));
        }
        self.inner.append_records(rows)
    }
    fn page_records(
        &self,
        app_key: &str,
        owner_id: &str,
        sync_time: i64,
        count: u32,
        order: PageOrder,
    ) -> Result<RecordPage, StorageError> {
        self.inner.page_records(app_key, owner_id, sync_time, count, order)
    }
    fn record(&self, a: &str, o: &str, call_id: &str) -> Result<Option<RecordRow>, StorageError> {
        self.inner.record(a, o, call_id)
    }
    fn delete_records(&self, a: &str, o: &str, ids: &[String]) -> Result<u64, StorageError> {
        self.inner.delete_records(a, o, ids)
    }
    fn delete_all_records(&self, a: &str, o: &str) -> Result<u64, StorageError> {
        self.inner.delete_all_records(a, o)
    }
    fn max_sync_time(&self) -> Result<i64, StorageError> {
        self.inner.max_sync_time()
    }
    fn enqueue_offline(&self, a: &str, u: &str, b: &[Vec<u8>]) -> Result<Vec<i64>, StorageError> {
        self.inner.enqueue_offline(a, u, b)
    }
    fn offline_events(&self, a: &str, u: &str) -> Result<Vec<OfflineRow>, StorageError> {
        self.inner.offline_events(a, u)
    }
    fn remove_offline(&self, a: &str, u: &str, ids: &[i64]) -> Result<(), StorageError> {
        self.inner.remove_offline(a, u, ids)
    }
    fn put_active_calls(&self, rows: &[CallRow]) -> Result<(), StorageError> {
        let mut seen = self.put_rows.lock().unwrap();
        seen.extend(rows.iter().map(|r| format!("{}={}", r.call_id, String::from_utf8_lossy(&r.body))));
        self.inner.put_active_calls(rows)
    }
    fn remove_active_calls(&self, keys: &[(String, String)]) -> Result<(), StorageError> {
        self.removed.lock().unwrap().extend(keys.iter().map(|(_, call_id)| call_id.clone()));
        self.inner.remove_active_calls(keys)
    }
    fn active_calls(&self) -> Result<Vec<CallRow>, StorageError> {
        self.inner.active_calls()
    }
    fn claim_nonce(
        &self,
        app_key: &str,
        nonce: &str,
        now: i64,
        forget_at: i64,
    ) -> Result<bool, StorageError> {
        self.inner.claim_nonce(app_key, nonce, now, forget_at)
    }
    fn set_alive_mark(&self, at_ms: i64) -> Result<(), StorageError> {
        self.inner.set_alive_mark(at_ms)
    }
    fn alive_mark(&self) -> Result<Option<i64>, StorageError> {
        self.inner.alive_mark()
    }
}

#[test]
fn batch_writer_reports_failures_through_flush() {
    let storage = Arc::new(Flaky::new());
    let writer = BatchWriter::spawn(storage.clone());
    writer.submit(WriteOp::Records(vec![record("a", "u", "c1", 1)]));
    writer.submit(WriteOp::Records(vec![record("a", "u", "boom", 2)]));
    writer.submit(WriteOp::Records(vec![record("a", "u", "c3", 3)]));
    writer.submit(WriteOp::Records(vec![record("a", "u", "boom", 4)]));
    match writer.flush() {
        Err(StorageError::WriteFailed { failed, first }) => {
            assert_eq!(failed, 2);
            assert!(first.contains("boom"), "{first}");
        }
        other => panic!("expected WriteFailed, got {other:?}"),
    }
    // Each op was attempted exactly once, and the good ones landed.
    assert_eq!(*storage.record_calls.lock().unwrap(), 4);
    let page = storage.page_records("a", "u", FIRST_PAGE, 10, PageOrder::Asc).unwrap();
    assert_eq!(page.rows.iter().map(|r| r.call_id.as_str()).collect::<Vec<_>>(), ["c1", "c3"]);
    // The failures were reported once; the writer keeps working.
    writer.submit(WriteOp::Records(vec![record("a", "u", "c5", 5)]));
    writer.flush().unwrap();
    writer.shutdown().unwrap();
    assert_eq!(storage.max_sync_time().unwrap(), 5);
}

#[test]
fn open_rejects_a_file_in_place_of_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(SqliteStorage::open(&file), Err(StorageError::Io(_))));
}

#[test]
fn admin_nonces_are_claimed_once_kept_across_reopening_and_forgotten_when_old() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SqliteStorage::open(dir.path()).unwrap();
        assert!(s.claim_nonce("app_a", "n-1", 1_000, 1_600).unwrap());
        assert!(!s.claim_nonce("app_a", "n-1", 1_001, 1_601).unwrap(), "a replay");
        assert!(s.claim_nonce("app_b", "n-1", 1_001, 1_601).unwrap(), "nonces are per app");
    }
    let s = SqliteStorage::open(dir.path()).unwrap();
    assert!(!s.claim_nonce("app_a", "n-1", 1_599, 2_199).unwrap(), "still refused after reopening");
    // Once its request could no longer be accepted, the nonce is forgotten (and its row pruned).
    assert!(s.claim_nonce("app_a", "n-1", 1_600, 2_200).unwrap());
}

#[test]
fn a_version_1_database_is_upgraded_and_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SqliteStorage::open(dir.path()).unwrap();
        s.insert_app(&app("app_one")).unwrap();
    }
    {
        // Turn it back into what version 1 wrote.
        let conn = rusqlite::Connection::open(dir.path().join("callplus.db")).unwrap();
        conn.execute_batch(
            "DROP TABLE admin_nonces;
             ALTER TABLE records DROP COLUMN fence; ALTER TABLE active_calls DROP COLUMN fence;
             DELETE FROM schema_version; INSERT INTO schema_version VALUES (1);",
        )
        .unwrap();
    }
    let s = SqliteStorage::open(dir.path()).unwrap();
    assert_eq!(s.apps().unwrap(), vec![app("app_one")]);
    assert!(s.claim_nonce("app_one", "n", 1, 100).unwrap());
    assert!(!s.claim_nonce("app_one", "n", 2, 100).unwrap());
    s.append_records(&[RecordRow { fence: 2, ..record("app_one", "bob", "c", 1) }]).unwrap();
    let page = s.page_records("app_one", "bob", FIRST_PAGE, 10, PageOrder::Asc).unwrap();
    assert_eq!(page.rows.iter().map(|r| r.fence).collect::<Vec<_>>(), [2]);
}

/// A version 2 database (no fencing tokens) gets them: its rows count as a single node's
/// (token 0), and fenced writes work from then on.
#[test]
fn a_version_2_database_is_upgraded_with_fencing_tokens() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SqliteStorage::open(dir.path()).unwrap();
        s.append_records(&[record("a", "bob", "c1", 1)]).unwrap();
        s.put_active_calls(&[call("a", "c2", b"live")]).unwrap();
    }
    {
        let conn = rusqlite::Connection::open(dir.path().join("callplus.db")).unwrap();
        conn.execute_batch(
            "ALTER TABLE records DROP COLUMN fence; ALTER TABLE active_calls DROP COLUMN fence;
             DELETE FROM schema_version; INSERT INTO schema_version VALUES (2);",
        )
        .unwrap();
    }
    let s = SqliteStorage::open(dir.path()).unwrap();
    let page = s.page_records("a", "bob", FIRST_PAGE, 10, PageOrder::Asc).unwrap();
    assert_eq!(page.rows, vec![record("a", "bob", "c1", 1)], "kept, with token 0");
    assert_eq!(s.active_calls().unwrap(), vec![call("a", "c2", b"live")]);
    s.append_records(&[RecordRow { fence: 2, ..record("a", "bob", "c1", 2) }]).unwrap();
    s.append_records(&[RecordRow { fence: 1, ..record("a", "bob", "c1", 3) }]).unwrap();
    let page = s.page_records("a", "bob", FIRST_PAGE, 10, PageOrder::Asc).unwrap();
    assert_eq!(page.rows, vec![RecordRow { fence: 2, ..record("a", "bob", "c1", 2) }]);
}

/// A version 3 database (records keyed by owner, then call) is rebuilt into version 4's layout
/// (keyed by call, then owner): its records keep their order, and rewriting one still replaces
/// it, fenced.
#[test]
fn a_version_3_database_is_upgraded_to_records_keyed_by_call() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteStorage::open(dir.path()).unwrap());
    {
        let conn = rusqlite::Connection::open(dir.path().join("callplus.db")).unwrap();
        conn.execute_batch(
            "DROP TABLE records;
             CREATE TABLE records (
                 app_key TEXT NOT NULL, owner_id TEXT NOT NULL, call_id TEXT NOT NULL,
                 sync_time INTEGER NOT NULL, body BLOB NOT NULL, fence INTEGER NOT NULL DEFAULT 0,
                 PRIMARY KEY (app_key, owner_id, call_id)
             );
             CREATE INDEX records_by_time ON records (app_key, owner_id, sync_time);
             DELETE FROM schema_version; INSERT INTO schema_version VALUES (3);",
        )
        .unwrap();
        let mut insert = conn
            .prepare(
                "INSERT INTO records (app_key, owner_id, call_id, sync_time, body, fence)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .unwrap();
        // Inserted out of sync-time order, as a rewritten record leaves them.
        for (owner, call, sync_time, fence) in [("bob", "c2", 3, 0), ("bob", "c1", 1, 7), ("eve", "c1", 2, 7)]
        {
            let r = record("a", owner, call, sync_time);
            insert
                .execute(rusqlite::params![r.app_key, r.owner_id, r.call_id, r.sync_time, r.body, fence])
                .unwrap();
        }
    }
    let s = SqliteStorage::open(dir.path()).unwrap();
    let page = s.page_records("a", "bob", FIRST_PAGE, 10, PageOrder::Asc).unwrap();
    assert_eq!(
        page.rows,
        vec![RecordRow { fence: 7, ..record("a", "bob", "c1", 1) }, record("a", "bob", "c2", 3)]
    );
    // The fenced rewrite rule holds on the rebuilt table.
    s.append_records(&[RecordRow { fence: 6, ..record("a", "bob", "c1", 4) }]).unwrap();
    s.append_records(&[RecordRow { fence: 8, ..record("a", "bob", "c1", 5) }]).unwrap();
    let page = s.page_records("a", "bob", FIRST_PAGE, 10, PageOrder::Desc).unwrap();
    assert_eq!(
        page.rows,
        vec![RecordRow { fence: 8, ..record("a", "bob", "c1", 5) }, record("a", "bob", "c2", 3)]
    );
    let eve = s.page_records("a", "eve", FIRST_PAGE, 10, PageOrder::Desc).unwrap();
    assert_eq!(eve.rows, vec![RecordRow { fence: 7, ..record("a", "eve", "c1", 2) }]);
    assert_eq!(s.delete_records("a", "bob", &["c1".into()]).unwrap(), 1);
    let conn = rusqlite::Connection::open(dir.path().join("callplus.db")).unwrap();
    let version: i64 = conn.query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, 4);
}

/// A PostgreSQL database at migration 3 (records keyed by owner, then call) gets migration 4
/// (keyed by call, then owner): its records stay, and rewriting one still replaces it, fenced.
#[test]
fn a_postgres_database_is_migrated_to_records_keyed_by_call() {
    let url = support::postgres::fresh_database();
    let db = url.rsplit('/').next().unwrap();
    {
        let s = PostgresStorage::open(&url).unwrap();
        s.append_records(&[
            RecordRow { fence: 7, ..record("a", "bob", "c1", 1) },
            record("a", "eve", "c1", 2),
        ])
        .unwrap();
    }
    support::postgres::server().exec(
        db,
        "ALTER TABLE records DROP CONSTRAINT records_pkey, ADD PRIMARY KEY (app_key, owner_id, call_id);
         DELETE FROM schema_migrations WHERE version = 4;",
    );
    let s = PostgresStorage::open(&url).unwrap();
    s.append_records(&[RecordRow { fence: 6, ..record("a", "bob", "c1", 3) }]).unwrap();
    s.append_records(&[RecordRow { fence: 8, ..record("a", "eve", "c1", 4) }]).unwrap();
    let bob = s.page_records("a", "bob", FIRST_PAGE, 10, PageOrder::Asc).unwrap();
    assert_eq!(bob.rows, vec![RecordRow { fence: 7, ..record("a", "bob", "c1", 1) }]);
    let eve = s.page_records("a", "eve", FIRST_PAGE, 10, PageOrder::Asc).unwrap();
    assert_eq!(eve.rows, vec![RecordRow { fence: 8, ..record("a", "eve", "c1", 4) }]);
    let key = support::postgres::server().query_one(
        db,
        "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = 'records'::regclass AND indisprimary",
    );
    assert!(key.ends_with("(app_key, call_id, owner_id)"), "{key}");
}

#[test]
fn postgres_refuses_a_database_migrated_by_a_newer_version() {
    let url = support::postgres::fresh_database();
    drop(PostgresStorage::open(&url).unwrap());
    let db = url.rsplit('/').next().unwrap();
    support::postgres::server().exec(db, "INSERT INTO schema_migrations (version) VALUES (999)");
    match PostgresStorage::open(&url) {
        Err(StorageError::IncompatibleSchema { found: 999, supported: 4 }) => {}
        other => panic!("expected IncompatibleSchema, got {other:?}"),
    }
}

/// Two nodes writing one database can deadlock (each batch takes row locks, the shared `meta`
/// row among them); PostgreSQL then rolls one transaction back with 40P01 and says to try
/// again. The writer retries what `is_transient` says may succeed when tried again, so a real
/// deadlock must count as transient, or a batch of records would be given up; a refused
/// operation (a duplicate key) must not.
#[test]
fn a_postgres_deadlock_is_retried_but_a_refused_write_is_not() {
    use tokio_postgres::NoTls;
    let url = support::postgres::fresh_database();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let connect = || async {
            let (client, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
            tokio::spawn(conn);
            client
        };
        let (one, two) = (connect().await, connect().await);
        one.batch_execute("CREATE TABLE t (k INT PRIMARY KEY, v INT); INSERT INTO t VALUES (1, 0), (2, 0);")
            .await
            .unwrap();
        one.batch_execute("BEGIN; UPDATE t SET v = 1 WHERE k = 1;").await.unwrap();
        two.batch_execute("BEGIN; UPDATE t SET v = 2 WHERE k = 2;").await.unwrap();
        let one = std::sync::Arc::new(one);
        let first = tokio::spawn({
            let one = one.clone();
            async move { one.batch_execute("UPDATE t SET v = 1 WHERE k = 2").await }
        });
        // Wait until `one` is blocked on row 2 before `two` asks for row 1.
        loop {
            let waiting = two
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
                    &[],
                )
                .await
                .unwrap();
            if waiting.get::<_, i64>(0) > 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        let second = two.batch_execute("UPDATE t SET v = 2 WHERE k = 1").await;
        let first = first.await.unwrap();
        let lost = match (first, second) {
            (Err(e), Ok(())) | (Ok(()), Err(e)) => e,
            other => panic!("expected exactly one side to lose the deadlock, got {other:?}"),
        };
        assert_eq!(lost.code(), Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED), "{lost:?}");
        assert!(StorageError::Postgres(lost).is_transient(), "a deadlock is worth another try");

        one.batch_execute("ROLLBACK").await.unwrap();
        two.batch_execute("ROLLBACK").await.unwrap();
        let refused = two.batch_execute("INSERT INTO t VALUES (1, 0)").await.unwrap_err();
        assert!(!StorageError::Postgres(refused).is_transient(), "a duplicate key stays refused");
    });
}
