//! The PostgreSQL engine (`serve --postgres URL`): the same tables and semantics as SQLite, on
//! a database server that several nodes can share.
//!
//! [`Storage`] is synchronous (the server calls it from blocking threads and the writer thread),
//! while `tokio-postgres` is async: the engine owns a small runtime of its own and every method
//! runs its queries there and waits for the answer. Writes go through one connection, so a
//! batch is one transaction exactly as with SQLite; reads share a second connection, on which
//! `tokio-postgres` pipelines concurrent queries. A connection found closed (the database
//! restarted) is opened again on the next call.

use std::future::Future;
use std::sync::{Arc, mpsc};

use tokio::runtime::Runtime;
use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::{Client, Config, GenericClient, NoTls, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{
    AppCredentials, BatchOp, CallRow, FIRST_PAGE, MAX_PAGE_SIZE, OfflineRow, OpResult, PageOrder, RecordPage,
    RecordRow, Storage, StorageError,
};

/// The migrations, in order: `(version, SQL)`. Each is applied once, in one transaction with
/// its record in `schema_migrations`.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_initial.sql")),
    (2, include_str!("../../migrations/postgres/0002_admin_nonces.sql")),
    (3, include_str!("../../migrations/postgres/0003_fencing_tokens.sql")),
    (4, include_str!("../../migrations/postgres/0004_records_keyed_by_call.sql")),
];

/// The advisory lock held while migrating, so nodes starting together migrate once.
const MIGRATION_LOCK: i64 = 0x6361_6c6c_706c_7573;

/// [`Storage`] on a PostgreSQL database.
pub struct PostgresStorage {
    /// `None` only while dropping.
    runtime: Option<Runtime>,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never print it.
        f.debug_struct("PostgresStorage").finish_non_exhaustive()
    }
}

/// The connections, shared with the futures that run on the engine's runtime.
struct Inner {
    config: Config,
    tls: Option<MakeRustlsConnect>,
    writer: Mutex<Option<Client>>,
    reader: Mutex<Option<Arc<Client>>>,
}

impl Inner {
    /// The write connection, (re)connected if needed; held for a whole transaction.
    async fn write_client(&self) -> Result<MutexGuard<'_, Option<Client>>, StorageError> {
        let mut guard = self.writer.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = Some(connect(&self.config, self.tls.as_ref()).await?);
        }
        Ok(guard)
    }

    /// The read connection, (re)connected if needed.
    async fn read_client(&self) -> Result<Arc<Client>, StorageError> {
        let mut guard = self.reader.lock().await;
        if let Some(client) = guard.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let client = Arc::new(connect(&self.config, self.tls.as_ref()).await?);
        *guard = Some(client.clone());
        Ok(client)
    }
}

async fn connect(config: &Config, tls: Option<&MakeRustlsConnect>) -> Result<Client, StorageError> {
    let client = match tls {
        Some(tls) => {
            let (client, connection) = config.connect(tls.clone()).await?;
            tokio::spawn(watch(connection));
            client
        }
        None => {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(watch(connection));
            client
        }
    };
    Ok(client)
}

/// Drives a connection until it ends, logging why.
async fn watch(connection: impl Future<Output = Result<(), tokio_postgres::Error>>) {
    if let Err(e) = connection.await {
        tracing::warn!(error = %e, "PostgreSQL connection ended");
    }
}

impl PostgresStorage {
    /// Connects to the database at `url` (a `postgres://` URL or a `key=value` string) and
    /// applies the migrations it has not seen yet. `sslmode=require` or `verify-full` in the
    /// URL connects with TLS and checks the server's certificate (see `postgres_tls`).
    ///
    /// # Errors
    /// [`StorageError::Postgres`] if the database cannot be reached or migrated,
    /// [`StorageError::IncompatibleSchema`] if a newer callplus migrated it,
    /// [`StorageError::Io`] if the engine's runtime cannot start,
    /// [`StorageError::InvalidArgument`] for a URL or TLS setting that cannot be used.
    pub fn open(url: &str) -> Result<Self, StorageError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("callplus-postgres")
            .enable_all()
            .build()?;
        let target = super::postgres_tls::parse(url)?;
        let inner = Arc::new(Inner {
            config: target.config,
            tls: target.tls,
            writer: Mutex::new(None),
            reader: Mutex::new(None),
        });
        let storage = PostgresStorage { runtime: Some(runtime), inner };
        storage.run(|inner| async move {
            let mut guard = inner.write_client().await?;
            let client = guard.as_mut().ok_or(StorageError::Closed)?;
            migrate(client).await
        })?;
        tracing::info!("opened PostgreSQL storage");
        Ok(storage)
    }

    /// Runs `f` on the engine's runtime and waits for its result. Works from any thread,
    /// including a blocking task of another runtime.
    fn run<T, F, Fut>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Inner>) -> Fut,
        Fut: Future<Output = Result<T, StorageError>> + Send + 'static,
    {
        let runtime = self.runtime.as_ref().ok_or(StorageError::Closed)?;
        let (tx, rx) = mpsc::sync_channel(1);
        let fut = f(self.inner.clone());
        runtime.spawn(async move {
            // The caller only goes away with the process.
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| StorageError::Closed)?
    }
}

impl Drop for PostgresStorage {
    fn drop(&mut self) {
        // The last reference may be dropped inside another runtime, where a blocking shutdown
        // would panic; nothing is in flight once no caller holds the storage.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Applies the migrations the database has not seen, under an advisory lock.
async fn migrate(client: &mut Client) -> Result<(), StorageError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    BIGINT PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let found: Option<i64> =
        tx.query_one("SELECT MAX(version) FROM schema_migrations", &[]).await?.try_get(0)?;
    let found = found.unwrap_or(0);
    let supported = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    if found > supported {
        return Err(StorageError::IncompatibleSchema { found, supported });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
        tx.batch_execute(sql).await?;
        tx.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[version]).await?;
        tracing::info!(version, "applied PostgreSQL migration");
    }
    tx.commit().await?;
    Ok(())
}

async fn set_alive_mark_in(c: &impl GenericClient, at_ms: i64) -> Result<(), StorageError> {
    c.execute(
        "INSERT INTO meta (key, value) VALUES ('alive_mark_ms', $1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        &[&at_ms],
    )
    .await?;
    Ok(())
}

/// A record written with a smaller fencing token than the stored one's changes nothing (the
/// condition is checked on the row as locked, so it holds against a concurrent successor).
const UPSERT_RECORD: &str = "INSERT INTO records (app_key, owner_id, call_id, sync_time, body, fence)
     VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (app_key, call_id, owner_id)
     DO UPDATE SET sync_time = excluded.sync_time, body = excluded.body, fence = excluded.fence
     WHERE records.fence <= excluded.fence";

const RAISE_MAX_SYNC_TIME: &str = "INSERT INTO meta (key, value) VALUES ('max_sync_time', $1)
     ON CONFLICT (key) DO UPDATE SET value = GREATEST(meta.value, excluded.value)";

/// A snapshot written with a smaller fencing token than the stored one's changes nothing.
const UPSERT_CALL: &str = "INSERT INTO active_calls (app_key, call_id, body, fence) VALUES ($1, $2, $3, $4)
     ON CONFLICT (app_key, call_id) DO UPDATE SET body = excluded.body, fence = excluded.fence
     WHERE active_calls.fence <= excluded.fence";

const DELETE_CALL: &str = "DELETE FROM active_calls WHERE app_key = $1 AND call_id = $2";

async fn append_records_in(c: &impl GenericClient, rows: &[RecordRow]) -> Result<(), StorageError> {
    if rows.is_empty() {
        return Ok(());
    }
    let stmt = c.prepare(UPSERT_RECORD).await?;
    let mut max = i64::MIN;
    for row in rows {
        c.execute(&stmt, &[&row.app_key, &row.owner_id, &row.call_id, &row.sync_time, &row.body, &row.fence])
            .await?;
        max = max.max(row.sync_time);
    }
    c.execute(RAISE_MAX_SYNC_TIME, &[&max]).await?;
    Ok(())
}

/// One batch's writes in one transaction, as [`apply_in`] makes them op by op, with fewer round
/// trips: the statements of the frequent writes (records, call snapshots) are prepared once
/// per batch rather than once per op, and the highest `sync_time` is raised once, when the
/// batch is done, rather than after every op of records.
#[derive(Default)]
struct BatchStatements {
    record: Option<Statement>,
    put_call: Option<Statement>,
    remove_call: Option<Statement>,
    /// The highest `sync_time` written so far in the batch.
    max_sync_time: Option<i64>,
}

impl BatchStatements {
    /// The statement in `slot`, prepared on first use.
    async fn stmt(
        c: &impl GenericClient,
        slot: &mut Option<Statement>,
        sql: &str,
    ) -> Result<Statement, StorageError> {
        if let Some(stmt) = slot {
            return Ok(stmt.clone());
        }
        let stmt = c.prepare(sql).await?;
        *slot = Some(stmt.clone());
        Ok(stmt)
    }

    async fn apply(&mut self, c: &impl GenericClient, op: &BatchOp) -> OpResult {
        match op {
            BatchOp::Records(rows) => {
                if rows.is_empty() {
                    return Ok(Vec::new());
                }
                let stmt = Self::stmt(c, &mut self.record, UPSERT_RECORD).await?;
                let mut max = self.max_sync_time.unwrap_or(i64::MIN);
                for row in rows {
                    c.execute(
                        &stmt,
                        &[&row.app_key, &row.owner_id, &row.call_id, &row.sync_time, &row.body, &row.fence],
                    )
                    .await?;
                    max = max.max(row.sync_time);
                }
                self.max_sync_time = Some(max);
                Ok(Vec::new())
            }
            BatchOp::PutCalls(rows) => {
                if rows.is_empty() {
                    return Ok(Vec::new());
                }
                let stmt = Self::stmt(c, &mut self.put_call, UPSERT_CALL).await?;
                for row in rows {
                    c.execute(&stmt, &[&row.app_key, &row.call_id, &row.body, &row.fence]).await?;
                }
                Ok(Vec::new())
            }
            BatchOp::RemoveCalls(keys) => {
                if keys.is_empty() {
                    return Ok(Vec::new());
                }
                let stmt = Self::stmt(c, &mut self.remove_call, DELETE_CALL).await?;
                for (app_key, call_id) in keys {
                    c.execute(&stmt, &[app_key, call_id]).await?;
                }
                Ok(Vec::new())
            }
            BatchOp::Offline { .. } | BatchOp::RemoveOffline { .. } | BatchOp::AliveMark(_) => {
                apply_in(c, op).await
            }
        }
    }

    /// Raises the stored highest `sync_time` to the batch's; to be done before the commit.
    async fn finish(self, c: &impl GenericClient) -> Result<(), StorageError> {
        if let Some(max) = self.max_sync_time {
            c.execute(RAISE_MAX_SYNC_TIME, &[&max]).await?;
        }
        Ok(())
    }
}

async fn enqueue_offline_in(
    c: &impl GenericClient,
    app_key: &str,
    user_id: &str,
    bodies: &[Vec<u8>],
) -> Result<Vec<i64>, StorageError> {
    let mut ids = Vec::with_capacity(bodies.len());
    if bodies.is_empty() {
        return Ok(ids);
    }
    let stmt = c
        .prepare("INSERT INTO offline_events (app_key, user_id, body) VALUES ($1, $2, $3) RETURNING id")
        .await?;
    for body in bodies {
        ids.push(c.query_one(&stmt, &[&app_key, &user_id, body]).await?.try_get(0)?);
    }
    Ok(ids)
}

async fn remove_offline_in(
    c: &impl GenericClient,
    app_key: &str,
    user_id: &str,
    ids: &[i64],
) -> Result<(), StorageError> {
    c.execute(
        "DELETE FROM offline_events WHERE app_key = $1 AND user_id = $2 AND id = ANY($3)",
        &[&app_key, &user_id, &ids],
    )
    .await?;
    Ok(())
}

async fn put_active_calls_in(c: &impl GenericClient, rows: &[CallRow]) -> Result<(), StorageError> {
    if rows.is_empty() {
        return Ok(());
    }
    let stmt = c.prepare(UPSERT_CALL).await?;
    for row in rows {
        c.execute(&stmt, &[&row.app_key, &row.call_id, &row.body, &row.fence]).await?;
    }
    Ok(())
}

async fn remove_active_calls_in(
    c: &impl GenericClient,
    keys: &[(String, String)],
) -> Result<(), StorageError> {
    if keys.is_empty() {
        return Ok(());
    }
    let stmt = c.prepare(DELETE_CALL).await?;
    for (app_key, call_id) in keys {
        c.execute(&stmt, &[app_key, call_id]).await?;
    }
    Ok(())
}

async fn apply_in(c: &impl GenericClient, op: &BatchOp) -> OpResult {
    match op {
        BatchOp::Records(rows) => append_records_in(c, rows).await.map(|()| Vec::new()),
        BatchOp::Offline { app_key, user_id, bodies } => {
            enqueue_offline_in(c, app_key, user_id, bodies).await
        }
        BatchOp::RemoveOffline { app_key, user_id, ids } => {
            remove_offline_in(c, app_key, user_id, ids).await.map(|()| Vec::new())
        }
        BatchOp::PutCalls(rows) => put_active_calls_in(c, rows).await.map(|()| Vec::new()),
        BatchOp::RemoveCalls(keys) => remove_active_calls_in(c, keys).await.map(|()| Vec::new()),
        BatchOp::AliveMark(at_ms) => set_alive_mark_in(c, *at_ms).await.map(|()| Vec::new()),
    }
}

/// Runs one op in its own transaction on the write connection.
async fn write_one(inner: &Inner, op: BatchOp) -> OpResult {
    let mut guard = inner.write_client().await?;
    let client = guard.as_mut().ok_or(StorageError::Closed)?;
    let tx = client.transaction().await?;
    let out = apply_in(&tx, &op).await?;
    tx.commit().await?;
    Ok(out)
}

impl Storage for PostgresStorage {
    fn apps(&self) -> Result<Vec<AppCredentials>, StorageError> {
        self.run(|inner| async move {
            let client = inner.read_client().await?;
            let rows = client.query("SELECT app_key, app_secret FROM apps ORDER BY seq", &[]).await?;
            rows.iter()
                .map(|r| Ok(AppCredentials { app_key: r.try_get(0)?, app_secret: r.try_get(1)? }))
                .collect()
        })
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
        let app = app.clone();
        self.run(|inner| async move {
            let mut guard = inner.write_client().await?;
            let client = guard.as_mut().ok_or(StorageError::Closed)?;
            let inserted = client
                .execute(
                    "INSERT INTO apps (app_key, app_secret) VALUES ($1, $2) ON CONFLICT (app_key) DO NOTHING",
                    &[&app.app_key, &app.app_secret],
                )
                .await?;
            if inserted == 0 {
                return Err(StorageError::InvalidArgument(format!("app {} already exists", app.app_key)));
            }
            Ok(())
        })
    }

    fn append_records(&self, rows: &[RecordRow]) -> Result<(), StorageError> {
        let op = BatchOp::Records(rows.to_vec());
        self.run(|inner| async move { write_one(&inner, op).await.map(drop) })
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
        let first = sync_time == FIRST_PAGE;
        let sql = match (order, first) {
            (PageOrder::Desc, true) => {
                "SELECT call_id, sync_time, body, fence FROM records
                 WHERE app_key = $1 AND owner_id = $2
                 ORDER BY sync_time DESC, call_id DESC LIMIT $3"
            }
            (PageOrder::Desc, false) => {
                "SELECT call_id, sync_time, body, fence FROM records
                 WHERE app_key = $1 AND owner_id = $2 AND sync_time < $4
                 ORDER BY sync_time DESC, call_id DESC LIMIT $3"
            }
            (PageOrder::Asc, true) => {
                "SELECT call_id, sync_time, body, fence FROM records
                 WHERE app_key = $1 AND owner_id = $2
                 ORDER BY sync_time ASC, call_id ASC LIMIT $3"
            }
            (PageOrder::Asc, false) => {
                "SELECT call_id, sync_time, body, fence FROM records
                 WHERE app_key = $1 AND owner_id = $2 AND sync_time > $4
                 ORDER BY sync_time ASC, call_id ASC LIMIT $3"
            }
        };
        // Fetch one extra row to learn whether there is more.
        let limit = i64::from(count) + 1;
        let (app_key, owner_id) = (app_key.to_owned(), owner_id.to_owned());
        let mut rows = self.run(|inner| async move {
            let client = inner.read_client().await?;
            let found = if first {
                client.query(sql, &[&app_key, &owner_id, &limit]).await?
            } else {
                client.query(sql, &[&app_key, &owner_id, &limit, &sync_time]).await?
            };
            found
                .iter()
                .map(|r| {
                    Ok(RecordRow {
                        app_key: app_key.clone(),
                        owner_id: owner_id.clone(),
                        call_id: r.try_get(0)?,
                        sync_time: r.try_get(1)?,
                        body: r.try_get(2)?,
                        fence: r.try_get(3)?,
                    })
                })
                .collect::<Result<Vec<_>, StorageError>>()
        })?;
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
        let (app_key, owner_id, call_id) = (app_key.to_owned(), owner_id.to_owned(), call_id.to_owned());
        self.run(|inner| async move {
            let client = inner.read_client().await?;
            let found = client
                .query_opt(
                    "SELECT sync_time, body, fence FROM records
                     WHERE app_key = $1 AND call_id = $2 AND owner_id = $3",
                    &[&app_key, &call_id, &owner_id],
                )
                .await?;
            found
                .map(|r| {
                    Ok(RecordRow {
                        sync_time: r.try_get(0)?,
                        body: r.try_get(1)?,
                        fence: r.try_get(2)?,
                        app_key,
                        owner_id,
                        call_id,
                    })
                })
                .transpose()
        })
    }

    fn delete_records(
        &self,
        app_key: &str,
        owner_id: &str,
        call_ids: &[String],
    ) -> Result<u64, StorageError> {
        let (app_key, owner_id, call_ids) = (app_key.to_owned(), owner_id.to_owned(), call_ids.to_vec());
        self.run(|inner| async move {
            let mut guard = inner.write_client().await?;
            let client = guard.as_mut().ok_or(StorageError::Closed)?;
            Ok(client
                .execute(
                    "DELETE FROM records WHERE app_key = $1 AND owner_id = $2 AND call_id = ANY($3)",
                    &[&app_key, &owner_id, &call_ids],
                )
                .await?)
        })
    }

    fn delete_all_records(&self, app_key: &str, owner_id: &str) -> Result<u64, StorageError> {
        let (app_key, owner_id) = (app_key.to_owned(), owner_id.to_owned());
        self.run(|inner| async move {
            let mut guard = inner.write_client().await?;
            let client = guard.as_mut().ok_or(StorageError::Closed)?;
            Ok(client
                .execute("DELETE FROM records WHERE app_key = $1 AND owner_id = $2", &[&app_key, &owner_id])
                .await?)
        })
    }

    fn max_sync_time(&self) -> Result<i64, StorageError> {
        self.run(|inner| async move {
            let client = inner.read_client().await?;
            let row = client.query_opt("SELECT value FROM meta WHERE key = 'max_sync_time'", &[]).await?;
            let value: Option<i64> = row.map(|r| r.try_get(0)).transpose()?;
            Ok(value.unwrap_or(0).max(0))
        })
    }

    fn enqueue_offline(
        &self,
        app_key: &str,
        user_id: &str,
        bodies: &[Vec<u8>],
    ) -> Result<Vec<i64>, StorageError> {
        let op = BatchOp::Offline {
            app_key: app_key.to_owned(),
            user_id: user_id.to_owned(),
            bodies: bodies.to_vec(),
        };
        self.run(|inner| async move { write_one(&inner, op).await })
    }

    fn offline_events(&self, app_key: &str, user_id: &str) -> Result<Vec<OfflineRow>, StorageError> {
        let (app_key, user_id) = (app_key.to_owned(), user_id.to_owned());
        self.run(|inner| async move {
            let client = inner.read_client().await?;
            let rows = client
                .query(
                    "SELECT id, body FROM offline_events WHERE app_key = $1 AND user_id = $2 ORDER BY id",
                    &[&app_key, &user_id],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(OfflineRow {
                        id: r.try_get(0)?,
                        app_key: app_key.clone(),
                        user_id: user_id.clone(),
                        body: r.try_get(1)?,
                    })
                })
                .collect()
        })
    }

    fn remove_offline(&self, app_key: &str, user_id: &str, ids: &[i64]) -> Result<(), StorageError> {
        let op = BatchOp::RemoveOffline {
            app_key: app_key.to_owned(),
            user_id: user_id.to_owned(),
            ids: ids.to_vec(),
        };
        self.run(|inner| async move { write_one(&inner, op).await.map(drop) })
    }

    fn put_active_calls(&self, rows: &[CallRow]) -> Result<(), StorageError> {
        let op = BatchOp::PutCalls(rows.to_vec());
        self.run(|inner| async move { write_one(&inner, op).await.map(drop) })
    }

    fn remove_active_calls(&self, keys: &[(String, String)]) -> Result<(), StorageError> {
        let op = BatchOp::RemoveCalls(keys.to_vec());
        self.run(|inner| async move { write_one(&inner, op).await.map(drop) })
    }

    fn active_calls(&self) -> Result<Vec<CallRow>, StorageError> {
        self.run(|inner| async move {
            let client = inner.read_client().await?;
            let rows = client
                .query(
                    "SELECT app_key, call_id, body, fence FROM active_calls ORDER BY app_key, call_id",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(CallRow {
                        app_key: r.try_get(0)?,
                        call_id: r.try_get(1)?,
                        body: r.try_get(2)?,
                        fence: r.try_get(3)?,
                    })
                })
                .collect()
        })
    }

    fn set_alive_mark(&self, at_ms: i64) -> Result<(), StorageError> {
        self.run(|inner| async move { write_one(&inner, BatchOp::AliveMark(at_ms)).await.map(drop) })
    }

    fn alive_mark(&self) -> Result<Option<i64>, StorageError> {
        self.run(|inner| async move {
            let client = inner.read_client().await?;
            let row = client.query_opt("SELECT value FROM meta WHERE key = 'alive_mark_ms'", &[]).await?;
            Ok(row.map(|r| r.try_get(0)).transpose()?)
        })
    }

    fn claim_nonce(
        &self,
        app_key: &str,
        nonce: &str,
        now: i64,
        forget_at: i64,
    ) -> Result<bool, StorageError> {
        let (app_key, nonce) = (app_key.to_owned(), nonce.to_owned());
        self.run(|inner| async move {
            let mut guard = inner.write_client().await?;
            let client = guard.as_mut().ok_or(StorageError::Closed)?;
            let tx = client.transaction().await?;
            tx.execute("DELETE FROM admin_nonces WHERE forget_at <= $1", &[&now]).await?;
            let inserted = tx
                .execute(
                    "INSERT INTO admin_nonces (app_key, nonce, forget_at) VALUES ($1, $2, $3)
                     ON CONFLICT (app_key, nonce) DO NOTHING",
                    &[&app_key, &nonce, &forget_at],
                )
                .await?;
            tx.commit().await?;
            Ok(inserted == 1)
        })
    }

    /// Commits the whole batch in one transaction, as SQLite does: applied plainly first
    /// ([`BatchStatements`]), and only when an op fails replayed with a savepoint per op, so the
    /// failing op is undone alone.
    fn apply_batch(&self, ops: &[BatchOp]) -> Result<Vec<OpResult>, StorageError> {
        let ops = ops.to_vec();
        self.run(|inner| async move {
            let mut guard = inner.write_client().await?;
            let client = guard.as_mut().ok_or(StorageError::Closed)?;
            {
                let tx = client.transaction().await?;
                let mut results = Vec::with_capacity(ops.len());
                let mut batch = BatchStatements::default();
                for op in &ops {
                    match batch.apply(&tx, op).await {
                        Ok(r) => results.push(Ok(r)),
                        Err(_) => break,
                    }
                }
                if results.len() == ops.len() && batch.finish(&tx).await.is_ok() {
                    tx.commit().await?;
                    return Ok(results);
                }
                tx.rollback().await?;
            }
            let mut tx = client.transaction().await?;
            let mut results = Vec::with_capacity(ops.len());
            for op in &ops {
                let sp = tx.savepoint("op").await?;
                let result = apply_in(&sp, op).await;
                if result.is_ok() {
                    sp.commit().await?;
                } else {
                    sp.rollback().await?;
                }
                results.push(result);
            }
            tx.commit().await?;
            Ok(results)
        })
    }
}
