//! The embedded SQLite engine.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{CachedStatement, Connection, OpenFlags, OptionalExtension, Transaction, params};

use super::{
    AppCredentials, BatchOp, CallRow, MAX_PAGE_SIZE, OfflineRow, OpResult, PageOrder, RecordPage, RecordRow,
    Storage, StorageError,
};

/// The file created in the data directory.
const DB_FILE: &str = "callplus.db";

/// The schema version this build writes and understands.
const SCHEMA_VERSION: i64 = 4;

/// How many read connections a file database keeps.
const READERS: usize = 4;

/// How long a connection waits for a lock held by another process before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// WAL pages after which a commit checkpoints them into the database (SQLite's default: 1,000).
/// The pages a steady load dirties are mostly the same few hundred (each owner's newest leaf in
/// the sync-time index, the tables' last leaves), written again and again into the WAL; a
/// checkpoint copies only each page's newest version, so ten times fewer checkpoints copy far
/// fewer pages in all and sync the database file ten times less often. The storage writer took
/// about 0.9 times the CPU per call cycle (docs/performance.md); the WAL file grows to about
/// 40 MiB at 4 KiB pages and is reused from its start after each checkpoint.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 10_000;

const SCHEMA_V1: &str = "
CREATE TABLE apps (
    app_key    TEXT PRIMARY KEY NOT NULL,
    app_secret TEXT NOT NULL
);
CREATE TABLE records (
    app_key   TEXT NOT NULL,
    owner_id  TEXT NOT NULL,
    call_id   TEXT NOT NULL,
    sync_time INTEGER NOT NULL,
    body      BLOB NOT NULL,
    PRIMARY KEY (app_key, owner_id, call_id)
);
CREATE INDEX records_by_time ON records (app_key, owner_id, sync_time);
CREATE TABLE offline_events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    app_key TEXT NOT NULL,
    user_id TEXT NOT NULL,
    body    BLOB NOT NULL
);
CREATE INDEX offline_by_user ON offline_events (app_key, user_id, id);
CREATE TABLE active_calls (
    app_key TEXT NOT NULL,
    call_id TEXT NOT NULL,
    body    BLOB NOT NULL,
    PRIMARY KEY (app_key, call_id)
);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
);
";

/// Version 2: admin request nonces, kept across restarts so a replay is refused after one.
const SCHEMA_V2: &str = "
CREATE TABLE admin_nonces (
    app_key   TEXT NOT NULL,
    nonce     TEXT NOT NULL,
    forget_at INTEGER NOT NULL,
    PRIMARY KEY (app_key, nonce)
) WITHOUT ROWID;
CREATE INDEX admin_nonces_by_age ON admin_nonces (forget_at);
";

/// Version 3: the owner's fencing token on records and call snapshots (`RecordRow::fence`).
const SCHEMA_V3: &str = "
ALTER TABLE records ADD COLUMN fence INTEGER NOT NULL DEFAULT 0;
ALTER TABLE active_calls ADD COLUMN fence INTEGER NOT NULL DEFAULT 0;
";

/// Version 4: `records` keyed by `(app_key, call_id, owner_id)`, the call before the owner
/// (docs/performance.md, "The records table keyed by call").
///
/// Keyed by owner first, a record landed on its owner's leaf in the key index as well as in the
/// sync-time index: two scattered pages per record for SQLite to copy into the WAL at every
/// commit. A server makes call ids with its own prefix and a counter, in an order that sorts,
/// so keyed by call first a batch's new records land side by side at the key's right edge, on a
/// leaf the whole batch shares. The table is rebuilt (a key cannot be changed in place), in
/// sync-time order.
const SCHEMA_V4: &str = "
CREATE TABLE records_v4 (
    app_key   TEXT NOT NULL,
    owner_id  TEXT NOT NULL,
    call_id   TEXT NOT NULL,
    sync_time INTEGER NOT NULL,
    body      BLOB NOT NULL,
    fence     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (app_key, call_id, owner_id)
);
INSERT INTO records_v4 (app_key, owner_id, call_id, sync_time, body, fence)
    SELECT app_key, owner_id, call_id, sync_time, body, fence FROM records ORDER BY sync_time, rowid;
DROP TABLE records;
ALTER TABLE records_v4 RENAME TO records;
CREATE INDEX records_by_time ON records (app_key, owner_id, sync_time);
";

/// [`Storage`] on an embedded SQLite database.
///
/// A file database (see [`SqliteStorage::open`]) runs in WAL mode with one write connection and
/// a few read connections, so reads never wait behind writes. Every multi-row write is one
/// transaction; [`Storage::apply_batch`] commits a whole batch in one transaction.
pub struct SqliteStorage {
    writer: Mutex<Connection>,
    /// Read connections; empty for an in-memory database, which reads through `writer`.
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

impl std::fmt::Debug for SqliteStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStorage").field("readers", &self.readers.len()).finish_non_exhaustive()
    }
}

impl SqliteStorage {
    /// Opens (creating if needed) `dir/callplus.db`, creating `dir` too.
    ///
    /// # Errors
    /// [`StorageError::Io`] if the directory cannot be created, [`StorageError::Sqlite`] if
    /// the database cannot be opened or migrated, [`StorageError::IncompatibleSchema`] if it was
    /// written by a newer callplus.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(DB_FILE);
        let mut writer = Connection::open(&path)?;
        writer.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String = writer.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(%mode, path = %path.display(), "SQLite did not switch to WAL mode");
        }
        writer.pragma_update(None, "synchronous", "NORMAL")?;
        writer.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
        migrate(&mut writer)?;

        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let reader = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            reader.busy_timeout(BUSY_TIMEOUT)?;
            readers.push(Mutex::new(reader));
        }
        tracing::info!(path = %path.display(), "opened SQLite storage");
        Ok(Self { writer: Mutex::new(writer), readers, next_reader: AtomicUsize::new(0) })
    }

    /// Opens a fresh private in-memory database (for tests and throw-away servers).
    ///
    /// # Errors
    /// [`StorageError::Sqlite`] if SQLite cannot create it.
    pub fn open_in_memory() -> Result<Self, StorageError> {
        let mut conn = Connection::open_in_memory()?;
        migrate(&mut conn)?;
        Ok(Self { writer: Mutex::new(conn), readers: Vec::new(), next_reader: AtomicUsize::new(0) })
    }

    fn write_conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-done transaction behind (rusqlite
        // rolls back on drop), so a poisoned connection is still usable.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read_conn(&self) -> MutexGuard<'_, Connection> {
        if self.readers.is_empty() {
            return self.write_conn();
        }
        for reader in &self.readers {
            if let Ok(guard) = reader.try_lock() {
                return guard;
            }
        }
        // All busy: queue on one of them, spreading waiters round-robin.
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        self.readers[i].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` in one write transaction and commits it.
    fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let mut conn = self.write_conn();
        let tx = conn.transaction()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }
}

/// Creates the schema, or checks that an existing one is one we understand.
fn migrate(conn: &mut Connection) -> Result<(), StorageError> {
    let tx = conn.transaction()?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let found: Option<i64> =
        tx.query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0)).optional()?.flatten();
    match found {
        None => {
            tx.execute_batch(SCHEMA_V1)?;
            tx.execute_batch(SCHEMA_V2)?;
            tx.execute_batch(SCHEMA_V3)?;
            tx.execute_batch(SCHEMA_V4)?;
            tx.execute("INSERT INTO schema_version (version) VALUES (?1)", [SCHEMA_VERSION])?;
            tracing::debug!(version = SCHEMA_VERSION, "created storage schema");
        }
        Some(v) if v > SCHEMA_VERSION => {
            return Err(StorageError::IncompatibleSchema { found: v, supported: SCHEMA_VERSION });
        }
        Some(v) if v < SCHEMA_VERSION => {
            if v < 2 {
                tx.execute_batch(SCHEMA_V2)?;
            }
            if v < 3 {
                tx.execute_batch(SCHEMA_V3)?;
            }
            tx.execute_batch(SCHEMA_V4)?;
            tx.execute("INSERT INTO schema_version (version) VALUES (?1)", [SCHEMA_VERSION])?;
            tracing::info!(from = v, to = SCHEMA_VERSION, "upgraded storage schema");
        }
        Some(_) => {}
    }
    tx.commit()?;
    Ok(())
}

/// A record written with a smaller fencing token than the stored one's changes nothing.
const UPSERT_RECORD: &str = "INSERT INTO records (app_key, owner_id, call_id, sync_time, body, fence)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
     ON CONFLICT (app_key, call_id, owner_id)
     DO UPDATE SET sync_time = excluded.sync_time, body = excluded.body, fence = excluded.fence
     WHERE records.fence <= excluded.fence";

const RAISE_MAX_SYNC_TIME: &str = "INSERT INTO meta (key, value) VALUES ('max_sync_time', ?1)
     ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)";

/// A snapshot written with a smaller fencing token than the stored one's changes nothing.
const UPSERT_CALL: &str = "INSERT INTO active_calls (app_key, call_id, body, fence) VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (app_key, call_id) DO UPDATE SET body = excluded.body, fence = excluded.fence
     WHERE active_calls.fence <= excluded.fence";

const DELETE_CALL: &str = "DELETE FROM active_calls WHERE app_key = ?1 AND call_id = ?2";

fn append_records_in(conn: &Connection, rows: &[RecordRow]) -> Result<(), StorageError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut stmt = conn.prepare_cached(UPSERT_RECORD)?;
    let mut max = i64::MIN;
    for row in rows {
        stmt.execute(params![row.app_key, row.owner_id, row.call_id, row.sync_time, row.body, row.fence])?;
        max = max.max(row.sync_time);
    }
    conn.prepare_cached(RAISE_MAX_SYNC_TIME)?.execute([max])?;
    Ok(())
}

/// One batch's writes in one transaction, as [`apply_in`] makes them op by op, with less work
/// per op: the statements of the frequent writes (records, call snapshots) are taken from the
/// connection's cache once per batch rather than once per op (a cache round trip hashes the
/// SQL text twice), and the highest `sync_time` is raised once, when the batch is done, rather
/// than after every record.
struct BatchStatements<'c> {
    conn: &'c Connection,
    record: Option<CachedStatement<'c>>,
    put_call: Option<CachedStatement<'c>>,
    remove_call: Option<CachedStatement<'c>>,
    /// The highest `sync_time` written so far in the batch.
    max_sync_time: Option<i64>,
}

impl<'c> BatchStatements<'c> {
    fn new(conn: &'c Connection) -> Self {
        BatchStatements { conn, record: None, put_call: None, remove_call: None, max_sync_time: None }
    }

    /// The cached statement in `slot`, taken from the connection's cache on first use.
    fn stmt<'s>(
        conn: &'c Connection,
        slot: &'s mut Option<CachedStatement<'c>>,
        sql: &str,
    ) -> Result<&'s mut CachedStatement<'c>, StorageError> {
        if slot.is_none() {
            *slot = Some(conn.prepare_cached(sql)?);
        }
        slot.as_mut().ok_or(StorageError::Closed)
    }

    fn apply(&mut self, op: &BatchOp) -> OpResult {
        match op {
            BatchOp::Records(rows) => {
                if rows.is_empty() {
                    return Ok(Vec::new());
                }
                let stmt = Self::stmt(self.conn, &mut self.record, UPSERT_RECORD)?;
                let mut max = self.max_sync_time.unwrap_or(i64::MIN);
                for row in rows {
                    stmt.execute(params![
                        row.app_key,
                        row.owner_id,
                        row.call_id,
                        row.sync_time,
                        row.body,
                        row.fence
                    ])?;
                    max = max.max(row.sync_time);
                }
                self.max_sync_time = Some(max);
                Ok(Vec::new())
            }
            BatchOp::PutCalls(rows) => {
                if rows.is_empty() {
                    return Ok(Vec::new());
                }
                let stmt = Self::stmt(self.conn, &mut self.put_call, UPSERT_CALL)?;
                for row in rows {
                    stmt.execute(params![row.app_key, row.call_id, row.body, row.fence])?;
                }
                Ok(Vec::new())
            }
            BatchOp::RemoveCalls(keys) => {
                if keys.is_empty() {
                    return Ok(Vec::new());
                }
                let stmt = Self::stmt(self.conn, &mut self.remove_call, DELETE_CALL)?;
                for (app_key, call_id) in keys {
                    stmt.execute(params![app_key, call_id])?;
                }
                Ok(Vec::new())
            }
            BatchOp::Offline { .. } | BatchOp::RemoveOffline { .. } | BatchOp::AliveMark(_) => {
                apply_in(self.conn, op)
            }
        }
    }

    /// Raises the stored highest `sync_time` to the batch's; to be done before the commit.
    fn finish(self) -> Result<(), StorageError> {
        if let Some(max) = self.max_sync_time {
            self.conn.prepare_cached(RAISE_MAX_SYNC_TIME)?.execute([max])?;
        }
        Ok(())
    }
}

fn enqueue_offline_in(
    conn: &Connection,
    app_key: &str,
    user_id: &str,
    bodies: &[Vec<u8>],
) -> Result<Vec<i64>, StorageError> {
    let mut stmt =
        conn.prepare_cached("INSERT INTO offline_events (app_key, user_id, body) VALUES (?1, ?2, ?3)")?;
    let mut ids = Vec::with_capacity(bodies.len());
    for body in bodies {
        stmt.execute(params![app_key, user_id, body])?;
        ids.push(conn.last_insert_rowid());
    }
    Ok(ids)
}

fn remove_offline_in(
    conn: &Connection,
    app_key: &str,
    user_id: &str,
    ids: &[i64],
) -> Result<(), StorageError> {
    let mut stmt =
        conn.prepare_cached("DELETE FROM offline_events WHERE id = ?1 AND app_key = ?2 AND user_id = ?3")?;
    for id in ids {
        stmt.execute(params![id, app_key, user_id])?;
    }
    Ok(())
}

fn put_active_calls_in(conn: &Connection, rows: &[CallRow]) -> Result<(), StorageError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut stmt = conn.prepare_cached(UPSERT_CALL)?;
    for row in rows {
        stmt.execute(params![row.app_key, row.call_id, row.body, row.fence])?;
    }
    Ok(())
}

fn remove_active_calls_in(conn: &Connection, keys: &[(String, String)]) -> Result<(), StorageError> {
    let mut stmt = conn.prepare_cached(DELETE_CALL)?;
    for (app_key, call_id) in keys {
        stmt.execute(params![app_key, call_id])?;
    }
    Ok(())
}

fn set_alive_mark_in(conn: &Connection, at_ms: i64) -> Result<(), StorageError> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('alive_mark_ms', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute([at_ms])?;
    Ok(())
}

fn apply_in(conn: &Connection, op: &BatchOp) -> OpResult {
    match op {
        BatchOp::Records(rows) => append_records_in(conn, rows).map(|()| Vec::new()),
        BatchOp::Offline { app_key, user_id, bodies } => enqueue_offline_in(conn, app_key, user_id, bodies),
        BatchOp::RemoveOffline { app_key, user_id, ids } => {
            remove_offline_in(conn, app_key, user_id, ids).map(|()| Vec::new())
        }
        BatchOp::PutCalls(rows) => put_active_calls_in(conn, rows).map(|()| Vec::new()),
        BatchOp::RemoveCalls(keys) => remove_active_calls_in(conn, keys).map(|()| Vec::new()),
        BatchOp::AliveMark(at_ms) => set_alive_mark_in(conn, *at_ms).map(|()| Vec::new()),
    }
}

fn affected(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl Storage for SqliteStorage {
    fn apps(&self) -> Result<Vec<AppCredentials>, StorageError> {
        let conn = self.read_conn();
        let mut stmt = conn.prepare_cached("SELECT app_key, app_secret FROM apps ORDER BY rowid")?;
        let rows =
            stmt.query_map([], |r| Ok(AppCredentials { app_key: r.get(0)?, app_secret: r.get(1)? }))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn insert_app(&self, app: &AppCredentials) -> Result<(), StorageError> {
        if !crate::token::is_valid_id(&app.app_key) {
            return Err(StorageError::InvalidArgument(
                "app key must be 1-64 characters of [A-Za-z0-9_-]".into(),
            ));
        }
        if app.app_secret.is_empty() {
            return Err(StorageError::InvalidArgument("app secret is empty".into()));
        }
        self.write(|tx| {
            let inserted = tx.execute(
                "INSERT INTO apps (app_key, app_secret) VALUES (?1, ?2)
                 ON CONFLICT (app_key) DO NOTHING",
                params![app.app_key, app.app_secret],
            )?;
            if inserted == 0 {
                return Err(StorageError::InvalidArgument(format!("app {} already exists", app.app_key)));
            }
            Ok(())
        })
    }

    fn append_records(&self, rows: &[RecordRow]) -> Result<(), StorageError> {
        self.write(|tx| append_records_in(tx, rows))
    }

    fn page_records(
        &self,
        app_key: &str,
        owner_id: &str,
        sync_time: i64,
        count: u32,
        order: PageOrder,
    ) -> Result<RecordPage, StorageError> {
        if count == 0 || count > MAX_PAGE_SIZE {
            return Err(StorageError::InvalidArgument(format!(
                "count must be 1..={MAX_PAGE_SIZE}, got {count}"
            )));
        }
        let first = sync_time == super::FIRST_PAGE;
        let sql = match (order, first) {
            (PageOrder::Desc, true) => {
                "SELECT call_id, sync_time, body, fence FROM records
                 WHERE app_key = ?1 AND owner_id = ?2
                 ORDER BY sync_time DESC, call_id DESC LIMIT ?3"
            }
            (PageOrder::Desc, false) => {
                "SELECT call_id, sync_time, body, fence FROM records
                 WHERE app_key = ?1 AND owner_id = ?2 AND sync_time < ?4
                 ORDER BY sync_time DESC, call_id DESC LIMIT ?3"
            }
            (PageOrder::Asc, true) => {
                "SELECT call_id, sync_time, body, fence FROM records
                 WHERE app_key = ?1 AND owner_id = ?2
                 ORDER BY sync_time ASC, call_id ASC LIMIT ?3"
            }
            (PageOrder::Asc, false) => {
                "SELECT call_id, sync_time, body, fence FROM records
                 WHERE app_key = ?1 AND owner_id = ?2 AND sync_time > ?4
                 ORDER BY sync_time ASC, call_id ASC LIMIT ?3"
            }
        };
        // Fetch one extra row to learn whether there is more.
        let limit = i64::from(count) + 1;
        let conn = self.read_conn();
        let mut stmt = conn.prepare_cached(sql)?;
        let mapped = |r: &rusqlite::Row<'_>| {
            Ok(RecordRow {
                app_key: app_key.to_owned(),
                owner_id: owner_id.to_owned(),
                call_id: r.get(0)?,
                sync_time: r.get(1)?,
                body: r.get(2)?,
                fence: r.get(3)?,
            })
        };
        let mut rows: Vec<RecordRow> = if first {
            stmt.query_map(params![app_key, owner_id, limit], mapped)?.collect::<Result<_, _>>()?
        } else {
            stmt.query_map(params![app_key, owner_id, limit, sync_time], mapped)?.collect::<Result<_, _>>()?
        };
        let page_len = usize::try_from(count).unwrap_or(usize::MAX);
        let has_more = rows.len() > page_len;
        rows.truncate(page_len);
        let next = rows.last().map_or(sync_time, |r| r.sync_time);
        Ok(RecordPage { rows, has_more, sync_time: next })
    }

    fn record(
        &self,
        app_key: &str,
        owner_id: &str,
        call_id: &str,
    ) -> Result<Option<RecordRow>, StorageError> {
        let conn = self.read_conn();
        // The key `(app_key, call_id, owner_id)` finds it in one seek.
        let mut stmt = conn.prepare_cached(
            "SELECT sync_time, body, fence FROM records WHERE app_key = ?1 AND call_id = ?2 AND owner_id = ?3",
        )?;
        let row = stmt
            .query_row(params![app_key, call_id, owner_id], |r| {
                Ok(RecordRow {
                    app_key: app_key.to_owned(),
                    owner_id: owner_id.to_owned(),
                    call_id: call_id.to_owned(),
                    sync_time: r.get(0)?,
                    body: r.get(1)?,
                    fence: r.get(2)?,
                })
            })
            .optional()?;
        Ok(row)
    }

    fn delete_records(
        &self,
        app_key: &str,
        owner_id: &str,
        call_ids: &[String],
    ) -> Result<u64, StorageError> {
        self.write(|tx| {
            let mut stmt = tx.prepare_cached(
                "DELETE FROM records WHERE app_key = ?1 AND call_id = ?3 AND owner_id = ?2",
            )?;
            let mut n = 0;
            for call_id in call_ids {
                n += affected(stmt.execute(params![app_key, owner_id, call_id])?);
            }
            Ok(n)
        })
    }

    fn delete_all_records(&self, app_key: &str, owner_id: &str) -> Result<u64, StorageError> {
        self.write(|tx| {
            let n = tx.execute(
                "DELETE FROM records WHERE app_key = ?1 AND owner_id = ?2",
                params![app_key, owner_id],
            )?;
            Ok(affected(n))
        })
    }

    fn max_sync_time(&self) -> Result<i64, StorageError> {
        let conn = self.read_conn();
        let v: Option<i64> = conn
            .query_row("SELECT value FROM meta WHERE key = 'max_sync_time'", [], |r| r.get(0))
            .optional()?;
        Ok(v.unwrap_or(0).max(0))
    }

    fn enqueue_offline(
        &self,
        app_key: &str,
        user_id: &str,
        bodies: &[Vec<u8>],
    ) -> Result<Vec<i64>, StorageError> {
        self.write(|tx| enqueue_offline_in(tx, app_key, user_id, bodies))
    }

    fn offline_events(&self, app_key: &str, user_id: &str) -> Result<Vec<OfflineRow>, StorageError> {
        let conn = self.read_conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, body FROM offline_events
             WHERE app_key = ?1 AND user_id = ?2 ORDER BY id",
        )?;
        let rows = stmt.query_map(params![app_key, user_id], |r| {
            Ok(OfflineRow {
                id: r.get(0)?,
                app_key: app_key.to_owned(),
                user_id: user_id.to_owned(),
                body: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn remove_offline(&self, app_key: &str, user_id: &str, ids: &[i64]) -> Result<(), StorageError> {
        self.write(|tx| remove_offline_in(tx, app_key, user_id, ids))
    }

    fn put_active_calls(&self, rows: &[CallRow]) -> Result<(), StorageError> {
        self.write(|tx| put_active_calls_in(tx, rows))
    }

    fn remove_active_calls(&self, keys: &[(String, String)]) -> Result<(), StorageError> {
        self.write(|tx| remove_active_calls_in(tx, keys))
    }

    fn active_calls(&self) -> Result<Vec<CallRow>, StorageError> {
        let conn = self.read_conn();
        let mut stmt = conn.prepare_cached(
            "SELECT app_key, call_id, body, fence FROM active_calls ORDER BY app_key, call_id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(CallRow { app_key: r.get(0)?, call_id: r.get(1)?, body: r.get(2)?, fence: r.get(3)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn set_alive_mark(&self, at_ms: i64) -> Result<(), StorageError> {
        self.write(|tx| set_alive_mark_in(tx, at_ms))
    }

    fn alive_mark(&self) -> Result<Option<i64>, StorageError> {
        let conn = self.read_conn();
        let v: Option<i64> = conn
            .query_row("SELECT value FROM meta WHERE key = 'alive_mark_ms'", [], |r| r.get(0))
            .optional()?;
        Ok(v)
    }

    fn claim_nonce(
        &self,
        app_key: &str,
        nonce: &str,
        now: i64,
        forget_at: i64,
    ) -> Result<bool, StorageError> {
        self.write(|tx| {
            tx.prepare_cached("DELETE FROM admin_nonces WHERE forget_at <= ?1")?.execute([now])?;
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO admin_nonces (app_key, nonce, forget_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (app_key, nonce) DO NOTHING",
                )?
                .execute(params![app_key, nonce, forget_at])?;
            Ok(inserted == 1)
        })
    }

    /// Commits the whole batch in one transaction ([`BatchStatements`]); when an op fails, the
    /// batch is replayed with each op in its own savepoint, so a failing op is rolled back alone
    /// and the rest still commit.
    fn apply_batch(&self, ops: &[BatchOp]) -> Result<Vec<OpResult>, StorageError> {
        let mut conn = self.write_conn();
        // Almost every batch succeeds whole: apply it plainly first. Only when an op fails is
        // the transaction rolled back and the batch replayed with a savepoint per op, so the
        // good ops land and the failing one is undone alone.
        {
            let tx = conn.transaction()?;
            let mut results = Vec::with_capacity(ops.len());
            let mut batch = BatchStatements::new(&tx);
            for op in ops {
                match batch.apply(op) {
                    Ok(r) => results.push(Ok(r)),
                    Err(_) => break,
                }
            }
            let finished = batch.finish();
            if results.len() == ops.len() && finished.is_ok() {
                tx.commit()?;
                return Ok(results);
            }
            // Dropping `tx` rolls the partial batch back.
        }
        let mut tx = conn.transaction()?;
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            let sp = tx.savepoint()?;
            let result = apply_in(&sp, op);
            if result.is_ok() {
                sp.commit()?;
            } else {
                // Roll back to the savepoint and release it; only this op is undone.
                sp.finish()?;
            }
            results.push(result);
        }
        tx.commit()?;
        Ok(results)
    }
}
