//! Durable storage: apps, call records, offline events, active calls, the server's alive mark
//! and the admin API's used nonces.
//!
//! Storage is bytes-oriented: the server stores protobuf-encoded records and events as opaque
//! blobs, and only the columns it looks things up by are typed. This keeps storage independent
//! of the message types, and lets other engines implement [`Storage`] with the same tests.
//!
//! [`SqliteStorage`] is the default, embedded engine; [`PostgresStorage`] keeps the same tables
//! on a PostgreSQL server (`serve --postgres URL`). [`BatchWriter`] moves writes onto a
//! dedicated thread that commits everything queued in one transaction, so storage never caps
//! call throughput.
//!
//! Everything is isolated by `app_key`: no method ever returns another app's rows.

mod postgres;
mod postgres_tls;
mod sqlite;
mod write_queue;
mod writer;

pub use crate::token::AppCredentials;
pub use postgres::PostgresStorage;
pub use sqlite::SqliteStorage;
pub use writer::{
    BatchWriter, DEFAULT_COMMIT_DELAY, DEFAULT_OUTAGE_WINDOW, OfflineReply, WRITER_THREAD_NAME, WriteOp,
};

/// The largest page [`Storage::page_records`] returns.
pub const MAX_PAGE_SIZE: u32 = 100;

/// The `sync_time` that asks [`Storage::page_records`] for the first page.
pub const FIRST_PAGE: i64 = -1;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The SQLite engine reported an error.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The PostgreSQL server or its connection reported an error. The text already holds its
    /// cause, so it is not also given as the error's source (which would print it twice).
    #[error("postgres: {}", postgres_text(.0))]
    Postgres(tokio_postgres::Error),
    /// The database could not be reached for a write of a batch (the batch's error, given to
    /// each of its ops); like a connection error of [`StorageError::Postgres`] it is transient.
    #[error("database unreachable: {0}")]
    Unavailable(String),
    /// A file system operation (creating the data directory) failed.
    #[error("storage I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The caller passed an argument storage cannot accept (page size, duplicate app, …).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The storage (or its writer thread) has shut down.
    #[error("storage is closed")]
    Closed,
    /// Writes queued on a [`BatchWriter`] failed since the last flush; each failure was also
    /// logged when it happened.
    #[error("{failed} queued write(s) failed; first error: {first}")]
    WriteFailed {
        /// How many queued operations failed.
        failed: u64,
        /// The first failure, as text.
        first: String,
    },
    /// The database was written by a newer version of callplus.
    #[error("database schema version {found} is newer than the supported version {supported}")]
    IncompatibleSchema {
        /// The version found in the database.
        found: i64,
        /// The newest version this build understands.
        supported: i64,
    },
}

impl From<tokio_postgres::Error> for StorageError {
    fn from(e: tokio_postgres::Error) -> Self {
        StorageError::Postgres(e)
    }
}

impl StorageError {
    /// Whether the error says the database could not be reached (connection refused or lost,
    /// the server shutting down or starting up), or that the operation lost a race with another
    /// writer (a deadlock, a serialization failure: several nodes write one database), rather
    /// than that it refused the operation: the same operation may succeed when tried again, so
    /// the writer retries it.
    pub fn is_transient(&self) -> bool {
        let e = match self {
            StorageError::Postgres(e) => e,
            StorageError::Unavailable(_) => return true,
            _ => return false,
        };
        if e.is_closed() {
            return true;
        }
        if let Some(db) = e.as_db_error() {
            // Class 08: connection exception; 57P01-57P03: admin/crash shutdown, starting up;
            // 40P01 deadlock detected and 40001 serialization failure: PostgreSQL rolled the
            // transaction back to let the other one through, and says to try again.
            let code = db.code().code();
            return code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "40P01" | "40001");
        }
        let mut source = std::error::Error::source(e);
        while let Some(cause) = source {
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                // A refused certificate comes wrapped in an I/O error; retrying cannot fix it.
                let tls = io.get_ref().is_some_and(|inner| inner.is::<tokio_rustls::rustls::Error>());
                return !tls;
            }
            source = cause.source();
        }
        false
    }
}

/// A PostgreSQL error with its cause: `tokio_postgres::Error` alone prints only its kind
/// ("db error"), not the server's message.
fn postgres_text(e: &tokio_postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// One user's record of one call (a protobuf-encoded call record in `body`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRow {
    /// The app the record belongs to.
    pub app_key: String,
    /// The user whose call log this record is in.
    pub owner_id: String,
    /// The call the record describes.
    pub call_id: String,
    /// The paging cursor: the server gives every record a time that increases with each write
    /// (seed its counter from [`Storage::max_sync_time`]); it should be unique per owner.
    pub sync_time: i64,
    /// The encoded record.
    pub body: Vec<u8>,
    /// The fencing token of the call's owner when it wrote this (its lease's; 0 on a single
    /// node): a write whose token is smaller than the stored row's changes nothing, so an owner
    /// that lost the call to a successor cannot overwrite what the successor wrote.
    pub fence: i64,
}

/// The direction of a [`Storage::page_records`] page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageOrder {
    /// Oldest first; continues with records whose `sync_time` is greater than the cursor.
    Asc,
    /// Newest first; continues with records whose `sync_time` is less than the cursor.
    Desc,
}

/// One page of call records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordPage {
    /// The records, in the requested order.
    pub rows: Vec<RecordRow>,
    /// Whether more records exist beyond this page in the same direction.
    pub has_more: bool,
    /// The cursor for the next page: the last row's `sync_time`, or the input cursor when the
    /// page is empty.
    pub sync_time: i64,
}

/// An event stored for a user until their device comes back online.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineRow {
    /// The event's id; ids only increase, also across restarts.
    pub id: i64,
    /// The app the user belongs to.
    pub app_key: String,
    /// The user the event is for.
    pub user_id: String,
    /// The encoded event.
    pub body: Vec<u8>,
}

/// A snapshot of an unended call, kept so calls survive a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRow {
    /// The app the call belongs to.
    pub app_key: String,
    /// The call's id.
    pub call_id: String,
    /// The encoded call state.
    pub body: Vec<u8>,
    /// The fencing token of the call's owner when it wrote this (its lease's; 0 on a single
    /// node): a write whose token is smaller than the stored row's changes nothing, so an owner
    /// that lost the call to a successor cannot overwrite what the successor wrote.
    pub fence: i64,
}

/// One write in a batch given to [`Storage::apply_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    /// [`Storage::append_records`].
    Records(Vec<RecordRow>),
    /// [`Storage::enqueue_offline`].
    Offline {
        /// The app the user belongs to.
        app_key: String,
        /// The user the events are for.
        user_id: String,
        /// The encoded events, in order.
        bodies: Vec<Vec<u8>>,
    },
    /// [`Storage::remove_offline`].
    RemoveOffline {
        /// The app the user belongs to.
        app_key: String,
        /// The user the events were for.
        user_id: String,
        /// The ids of the events to remove.
        ids: Vec<i64>,
    },
    /// [`Storage::put_active_calls`].
    PutCalls(Vec<CallRow>),
    /// [`Storage::remove_active_calls`]; keys are `(app_key, call_id)`.
    RemoveCalls(Vec<(String, String)>),
    /// [`Storage::set_alive_mark`].
    AliveMark(i64),
}

/// The result of one [`BatchOp`]: the new offline event ids for [`BatchOp::Offline`], empty for
/// the others.
pub type OpResult = Result<Vec<i64>, StorageError>;

/// Durable storage used by the server. Implementations are shared between threads.
pub trait Storage: Send + Sync + 'static {
    /// All apps, in the order they were added.
    fn apps(&self) -> Result<Vec<AppCredentials>, StorageError>;

    /// Adds an app. Fails with [`StorageError::InvalidArgument`] if the key exists or is not
    /// 1–64 characters of `[A-Za-z0-9_-]`, or the secret is empty.
    fn insert_app(&self, app: &AppCredentials) -> Result<(), StorageError>;

    /// Stores records, replacing any with the same `(app_key, owner_id, call_id)`.
    fn append_records(&self, rows: &[RecordRow]) -> Result<(), StorageError>;

    /// One page of a user's call records (CallPlus `getCallRecords`).
    ///
    /// `sync_time == -1` ([`FIRST_PAGE`]) asks for the first page (newest first for
    /// [`PageOrder::Desc`], oldest first for [`PageOrder::Asc`]); any other value continues after
    /// that cursor. `count` must be 1..=100, otherwise [`StorageError::InvalidArgument`].
    fn page_records(
        &self,
        app_key: &str,
        owner_id: &str,
        sync_time: i64,
        count: u32,
        order: PageOrder,
    ) -> Result<RecordPage, StorageError>;

    /// The user's record of one call, if there is one (`GetCall` of a call no longer held in
    /// memory: the record holds the call as it ended).
    fn record(&self, app_key: &str, owner_id: &str, call_id: &str)
    -> Result<Option<RecordRow>, StorageError>;

    /// Deletes the user's records of the given calls; returns how many were deleted.
    fn delete_records(&self, app_key: &str, owner_id: &str, call_ids: &[String])
    -> Result<u64, StorageError>;

    /// Deletes all of the user's records; returns how many were deleted.
    fn delete_all_records(&self, app_key: &str, owner_id: &str) -> Result<u64, StorageError>;

    /// The highest `sync_time` ever stored (also counting deleted records), or 0.
    fn max_sync_time(&self) -> Result<i64, StorageError>;

    /// Stores events for an offline user; returns their ids, increasing, in the given order.
    fn enqueue_offline(
        &self,
        app_key: &str,
        user_id: &str,
        bodies: &[Vec<u8>],
    ) -> Result<Vec<i64>, StorageError>;

    /// The user's stored events, oldest first.
    fn offline_events(&self, app_key: &str, user_id: &str) -> Result<Vec<OfflineRow>, StorageError>;

    /// Removes the user's stored events with these ids (unknown ids are ignored).
    fn remove_offline(&self, app_key: &str, user_id: &str, ids: &[i64]) -> Result<(), StorageError>;

    /// Stores call snapshots, replacing any with the same `(app_key, call_id)`.
    fn put_active_calls(&self, rows: &[CallRow]) -> Result<(), StorageError>;

    /// Removes call snapshots by `(app_key, call_id)` (unknown keys are ignored).
    fn remove_active_calls(&self, keys: &[(String, String)]) -> Result<(), StorageError>;

    /// All stored call snapshots.
    fn active_calls(&self) -> Result<Vec<CallRow>, StorageError>;

    /// Notes that the server was running, with live calls, at `at_ms` (ms since the Unix
    /// epoch). After a crash, the calls found saved end at the last such mark.
    fn set_alive_mark(&self, at_ms: i64) -> Result<(), StorageError>;

    /// The latest [`set_alive_mark`](Self::set_alive_mark), if any.
    fn alive_mark(&self) -> Result<Option<i64>, StorageError>;

    /// Records that an admin request of `app_key` used `nonce`, until `forget_at` (Unix
    /// seconds); nonces whose `forget_at` is at or before `now` (Unix seconds) are forgotten
    /// first. Returns `false` when the nonce is already recorded: the request is a replay. The
    /// nonce is committed when this returns, so it is refused again after a restart or a crash.
    fn claim_nonce(&self, app_key: &str, nonce: &str, now: i64, forget_at: i64)
    -> Result<bool, StorageError>;

    /// Applies several writes, returning one result per op, in order.
    ///
    /// An `Err` for one op means that op was not applied; the others were. An outer `Err` means
    /// **none** of the ops was applied. The provided implementation applies the ops one by
    /// one; engines override it to commit the whole batch in one transaction.
    fn apply_batch(&self, ops: &[BatchOp]) -> Result<Vec<OpResult>, StorageError> {
        Ok(ops.iter().map(|op| apply_one(self, op)).collect())
    }
}

/// Applies one op through the plain trait methods.
fn apply_one<S: Storage + ?Sized>(storage: &S, op: &BatchOp) -> OpResult {
    match op {
        BatchOp::Records(rows) => storage.append_records(rows).map(|()| Vec::new()),
        BatchOp::Offline { app_key, user_id, bodies } => storage.enqueue_offline(app_key, user_id, bodies),
        BatchOp::RemoveOffline { app_key, user_id, ids } => {
            storage.remove_offline(app_key, user_id, ids).map(|()| Vec::new())
        }
        BatchOp::PutCalls(rows) => storage.put_active_calls(rows).map(|()| Vec::new()),
        BatchOp::RemoveCalls(keys) => storage.remove_active_calls(keys).map(|()| Vec::new()),
        BatchOp::AliveMark(at_ms) => storage.set_alive_mark(*at_ms).map(|()| Vec::new()),
    }
}
