//! A dedicated writer thread that batches storage writes.

use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use callplus_session::switchboard::FastMap;
use callplus_session::wire::{self, SnapshotCache};
use callplus_session::{AppKey, CallId, CallInfo, CallRecord};

use super::write_queue::{AbandonOnDrop, Msg, URGENT_OPS, WriteQueue};
use super::{BatchOp, OpResult, Storage, StorageError};

/// The most operations committed in one transaction; a longer queue is split into several.
const MAX_OPS_PER_BATCH: usize = URGENT_OPS;

/// The writer thread's name, by which a load test tells its CPU from the rest of the server's
/// (Linux shows the first 15 bytes, `callplus-storag`, in `/proc/<pid>/task/<tid>/comm`).
pub const WRITER_THREAD_NAME: &str = "callplus-storage-writer";

/// How long the writer collects writes after the first one of a batch before it commits
/// (unless a flush or a full batch comes first): the default of [`BatchWriter::spawn`].
///
/// A commit costs about the same for one write as for a hundred (SQLite writes every page the
/// transaction dirtied to the WAL), so under load a short wait makes each commit carry many
/// calls' records. Nothing waits for it: callers never block on writes, and every reader
/// flushes first, which commits at once. It is also how long the last writes can be lost to a
/// crash: 20 ms rather than 5 ms made the writer spend 0.8 times the CPU per call cycle at
/// 1,500 cycles/s, with the same p99 setup time (docs/performance.md, "The commit delay").
pub const DEFAULT_COMMIT_DELAY: Duration = Duration::from_millis(20);

/// How long the writer keeps retrying writes that failed because the database could not be
/// reached ([`StorageError::is_transient`]) before it gives them up as failed.
///
/// During an outage the writer thread waits and retries the same batch (backing off from
/// [`FIRST_RETRY_DELAY`] to [`MAX_RETRY_DELAY`]) while callers keep queuing: nothing is lost
/// as long as the database is back within this window. The window is the bound on what is
/// buffered: memory grows with the write rate times the window, and past it the writes are
/// logged and reported as failed by the next flush instead of being held forever.
pub const DEFAULT_OUTAGE_WINDOW: Duration = Duration::from_secs(30);

/// The first wait before retrying a batch that found the database unreachable.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);

/// The longest wait between two retries during an outage.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Called on the writer thread with the ids of the stored offline events (or the error).
///
/// It must not block: with tokio, send the result through a `tokio::sync::oneshot` channel.
pub type OfflineReply = Box<dyn FnOnce(Result<Vec<i64>, StorageError>) + Send + 'static>;

/// A write submitted to a [`BatchWriter`].
pub enum WriteOp {
    /// Store call records (upsert), like [`Storage::append_records`].
    Records(Vec<super::RecordRow>),
    /// Store events for an offline user, like [`Storage::enqueue_offline`].
    Offline {
        /// The app the user belongs to.
        app_key: String,
        /// The user the events are for.
        user_id: String,
        /// The encoded events, in order.
        bodies: Vec<Vec<u8>>,
        /// Receives the new event ids once they are committed, if given.
        reply: Option<OfflineReply>,
    },
    /// Remove delivered offline events, like [`Storage::remove_offline`].
    RemoveOffline {
        /// The app the user belongs to.
        app_key: String,
        /// The user the events were for.
        user_id: String,
        /// The ids of the events to remove.
        ids: Vec<i64>,
    },
    /// Store call snapshots (upsert), like [`Storage::put_active_calls`].
    PutCalls(Vec<super::CallRow>),
    /// Store one call record (upsert), as the switchboard made it.
    ///
    /// The record moves here whole and is encoded, and its row's keys made, on the writer's
    /// thread when it is written: the single-threaded driver neither encodes (a protobuf
    /// encoding, about 9 % of the server's instructions per call cycle when the driver did it)
    /// nor allocates for it (docs/performance.md, "Storage writes handed over as they are").
    Record {
        /// The app the record belongs to.
        app_key: AppKey,
        /// The record; its owner, call and sync time make the row's key.
        record: CallRecord,
        /// The call's owner's fencing token (see [`super::RecordRow::fence`]).
        fence: i64,
    },
    /// Store one call snapshot (upsert), as the switchboard made it: encoded on the writer's
    /// thread, and only if no later op of the same batch replaces or removes it.
    SaveCall {
        /// The app the call belongs to.
        app_key: AppKey,
        /// The snapshot (shared with the frames of the same change); its id is the row's key.
        call: Arc<CallInfo>,
        /// No snapshot of this call can be stored yet: this is the first save of a call this
        /// process made (not one read back from storage). When a later op of the same batch
        /// removes a fresh call, neither write is made: the table ends as it was.
        fresh: bool,
        /// The call's owner's fencing token (see [`super::CallRow::fence`]).
        fence: i64,
    },
    /// Remove call snapshots by `(app_key, call_id)`, like [`Storage::remove_active_calls`].
    RemoveCalls(Vec<(String, String)>),
    /// Remove one call's snapshot, by the switchboard's ids (see [`WriteOp::Record`]).
    ForgetCall {
        /// The app the call belongs to.
        app_key: AppKey,
        /// The call.
        call_id: CallId,
    },
    /// Note that the server is running with live calls, like [`Storage::set_alive_mark`].
    AliveMark(i64),
}

impl std::fmt::Debug for WriteOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteOp::Records(rows) => f.debug_tuple("Records").field(&rows.len()).finish(),
            WriteOp::Offline { app_key, user_id, bodies, reply } => f
                .debug_struct("Offline")
                .field("app_key", app_key)
                .field("user_id", user_id)
                .field("bodies", &bodies.len())
                .field("reply", &reply.is_some())
                .finish(),
            WriteOp::RemoveOffline { app_key, user_id, ids } => f
                .debug_struct("RemoveOffline")
                .field("app_key", app_key)
                .field("user_id", user_id)
                .field("ids", ids)
                .finish(),
            WriteOp::PutCalls(rows) => f.debug_tuple("PutCalls").field(&rows.len()).finish(),
            WriteOp::Record { app_key, record, fence } => f
                .debug_struct("Record")
                .field("app_key", app_key)
                .field("owner_id", &record.owner)
                .field("call_id", &record.call.call_id)
                .field("sync_time", &record.sync_time)
                .field("fence", fence)
                .finish(),
            WriteOp::SaveCall { app_key, call, fresh, fence } => f
                .debug_struct("SaveCall")
                .field("app_key", app_key)
                .field("call_id", &call.call_id)
                .field("fresh", fresh)
                .field("fence", fence)
                .finish(),
            WriteOp::RemoveCalls(keys) => f.debug_tuple("RemoveCalls").field(keys).finish(),
            WriteOp::ForgetCall { app_key, call_id } => {
                f.debug_struct("ForgetCall").field("app_key", app_key).field("call_id", call_id).finish()
            }
            WriteOp::AliveMark(at_ms) => f.debug_tuple("AliveMark").field(at_ms).finish(),
        }
    }
}

impl WriteOp {
    /// The op as the storage engine takes it; `snapshots` keeps the participants of the last
    /// snapshot encoded, which every participant's record of one call end shares.
    fn into_parts(self, snapshots: &mut SnapshotCache) -> (BatchOp, Option<OfflineReply>) {
        match self {
            WriteOp::Records(rows) => (BatchOp::Records(rows), None),
            WriteOp::Offline { app_key, user_id, bodies, reply } => {
                (BatchOp::Offline { app_key, user_id, bodies }, reply)
            }
            WriteOp::RemoveOffline { app_key, user_id, ids } => {
                (BatchOp::RemoveOffline { app_key, user_id, ids }, None)
            }
            WriteOp::PutCalls(rows) => (BatchOp::PutCalls(rows), None),
            WriteOp::Record { app_key, record, fence } => {
                let row = super::RecordRow {
                    app_key: app_key.as_str().to_owned(),
                    owner_id: record.owner.as_str().to_owned(),
                    call_id: record.call.call_id.as_str().to_owned(),
                    sync_time: record.sync_time,
                    body: wire::call_record_to_vec_with(&record, snapshots),
                    fence,
                };
                (BatchOp::Records(vec![row]), None)
            }
            WriteOp::SaveCall { app_key, call, fresh: _, fence } => {
                let row = super::CallRow {
                    app_key: app_key.as_str().to_owned(),
                    call_id: call.call_id.as_str().to_owned(),
                    body: wire::call_info_to_vec(&call),
                    fence,
                };
                (BatchOp::PutCalls(vec![row]), None)
            }
            WriteOp::RemoveCalls(keys) => (BatchOp::RemoveCalls(keys), None),
            WriteOp::ForgetCall { app_key, call_id } => {
                (BatchOp::RemoveCalls(vec![(app_key.as_str().to_owned(), call_id.as_str().to_owned())]), None)
            }
            WriteOp::AliveMark(at_ms) => (BatchOp::AliveMark(at_ms), None),
        }
    }
}

/// Owns all writes on one OS thread, so callers never wait for the disk.
///
/// [`submit`](Self::submit) only queues (the queue is unbounded). The thread takes everything
/// queued within a short commit delay and commits it through [`Storage::apply_batch`] — one
/// transaction per batch for SQLite — so the write rate grows with load instead of capping it.
/// Ops are applied in submission order; a call snapshot that a later op of the same batch
/// replaces or removes is skipped, since only the last state of a call is ever read, and a
/// fresh call (see [`WriteOp::SaveCall`]) removed in the batch that first saves it costs the
/// table no write at all. A failing
/// op is logged and does not stop the others; failures are also reported by the next
/// [`flush`](Self::flush).
///
/// Dropping the writer waits for the queue to drain; prefer [`shutdown`](Self::shutdown), which
/// also reports errors.
#[derive(Debug)]
pub struct BatchWriter {
    queue: Arc<WriteQueue>,
    thread: Option<JoinHandle<()>>,
    retries: Arc<AtomicU64>,
}

impl BatchWriter {
    /// Starts the writer thread over `storage`.
    ///
    /// # Panics
    /// If the OS cannot start a thread (as [`std::thread::spawn`] does).
    pub fn spawn(storage: Arc<dyn Storage>) -> BatchWriter {
        Self::spawn_with_delay(storage, DEFAULT_COMMIT_DELAY)
    }

    /// Starts the writer thread with its own commit delay (see [`DEFAULT_COMMIT_DELAY`]); zero
    /// commits whatever is queued as soon as the previous commit is done.
    ///
    /// # Panics
    /// If the OS cannot start a thread (as [`std::thread::spawn`] does).
    pub fn spawn_with_delay(storage: Arc<dyn Storage>, commit_delay: Duration) -> BatchWriter {
        Self::spawn_with(storage, commit_delay, DEFAULT_OUTAGE_WINDOW)
    }

    /// Starts the writer thread with its own commit delay and outage window (see
    /// [`DEFAULT_OUTAGE_WINDOW`]).
    ///
    /// # Panics
    /// If the OS cannot start a thread (as [`std::thread::spawn`] does).
    pub fn spawn_with(
        storage: Arc<dyn Storage>,
        commit_delay: Duration,
        outage_window: Duration,
    ) -> BatchWriter {
        let queue = Arc::new(WriteQueue::default());
        let retries = Arc::new(AtomicU64::new(0));
        let theirs = queue.clone();
        let policy = Retry { window: outage_window, retries: retries.clone() };
        let thread = std::thread::Builder::new()
            .name(WRITER_THREAD_NAME.into())
            .spawn(move || run(storage.as_ref(), &theirs, commit_delay, &policy));
        match thread {
            Ok(handle) => BatchWriter { queue, thread: Some(handle), retries },
            // Not an input error: the process is out of threads, as `thread::spawn` would panic.
            Err(e) => panic!("cannot start the storage writer thread: {e}"),
        }
    }

    /// Queues a write without waiting. If the writer has stopped, the write is dropped with an
    /// error log (an `Offline` reply is dropped uncalled) and the next flush returns
    /// [`StorageError::Closed`].
    pub fn submit(&self, op: WriteOp) {
        self.submit_all(vec![op]);
    }

    /// Queues several writes at once, in order, as [`submit`](Self::submit) does for one: a
    /// caller that produces writes in bursts wakes the writer thread once per burst.
    pub fn submit_all(&self, mut ops: Vec<WriteOp>) {
        self.submit_from(&mut ops);
    }

    /// Queues the writes in `ops`, in order, as [`submit_all`](Self::submit_all) does, and
    /// leaves `ops` empty with its capacity: a caller that queues a few writes at a time (the
    /// driver, once per drain) reuses one buffer instead of allocating one per burst.
    pub fn submit_from(&self, ops: &mut Vec<WriteOp>) {
        if ops.is_empty() {
            return;
        }
        if !self.queue.push_ops(ops) {
            tracing::error!(?ops, "storage writer has stopped; writes dropped");
            ops.clear();
        }
    }

    /// Blocks until every write submitted before this call is committed.
    ///
    /// # Errors
    /// [`StorageError::WriteFailed`] if any write failed since the previous flush,
    /// [`StorageError::Closed`] if the writer thread has stopped.
    pub fn flush(&self) -> Result<(), StorageError> {
        let (done_tx, done_rx) = mpsc::channel();
        self.queue.push(Msg::Flush(done_tx)).map_err(|_| StorageError::Closed)?;
        done_rx.recv().map_err(|_| StorageError::Closed)?
    }

    /// How many times the writer has retried a batch because the database was unreachable,
    /// since it started (an outage shows as a run of retries).
    pub fn outage_retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Flushes, stops the thread and waits for it.
    ///
    /// # Errors
    /// As [`flush`](Self::flush).
    pub fn shutdown(mut self) -> Result<(), StorageError> {
        let flushed = self.flush();
        self.stop();
        flushed
    }

    fn stop(&mut self) {
        // Closing the queue ends the thread once it has drained it.
        self.queue.close();
        if let Some(Err(_)) = self.thread.take().map(JoinHandle::join) {
            tracing::error!("storage writer thread panicked");
        }
    }
}

impl Drop for BatchWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Failures since the last flush.
#[derive(Default)]
struct Failures {
    count: u64,
    first: Option<String>,
}

impl Failures {
    fn record(&mut self, e: &StorageError) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(e.to_string());
        }
    }

    fn take_result(&mut self) -> Result<(), StorageError> {
        let failures = std::mem::take(self);
        match failures.first {
            None => Ok(()),
            Some(first) => Err(StorageError::WriteFailed { failed: failures.count, first }),
        }
    }
}

/// How the writer thread retries writes during a database outage.
struct Retry {
    window: Duration,
    retries: Arc<AtomicU64>,
}

fn run(storage: &dyn Storage, queue: &WriteQueue, commit_delay: Duration, policy: &Retry) {
    let _abandon = AbandonOnDrop(queue);
    let mut failures = Failures::default();
    let mut ops = Vec::new();
    let mut replies = Vec::new();
    let mut flushes = Vec::new();
    let mut submitted_ops = Vec::new();
    let mut snapshots = SnapshotCache::default();
    while let Some(batch) = queue.next_batch(commit_delay) {
        for msg in batch {
            match msg {
                Msg::Ops(submitted) => submitted_ops.extend(submitted),
                // Answered after everything taken with it is applied: more than it asked for.
                Msg::Flush(done) => flushes.push(done),
            }
        }
        coalesce_saves(&mut submitted_ops);
        for op in submitted_ops.drain(..) {
            let (op, reply) = op.into_parts(&mut snapshots);
            ops.push(op);
            replies.push(reply);
        }
        let mut pending_replies = replies.drain(..);
        for chunk in ops.chunks(MAX_OPS_PER_BATCH) {
            let results = apply_retrying(storage, chunk, policy);
            for ((op, reply), result) in chunk.iter().zip(pending_replies.by_ref()).zip(results) {
                if let Err(e) = &result {
                    tracing::error!(error = %e, ?op, "storage write failed");
                    failures.record(e);
                }
                if let Some(reply) = reply {
                    reply(result);
                }
            }
        }
        drop(pending_replies);
        ops.clear();
        // Every flush in this batch was queued after the ops before it, which are now applied.
        if !flushes.is_empty() {
            let result = failures.take_result();
            for done in flushes.drain(..) {
                let copy = match &result {
                    Ok(()) => Ok(()),
                    Err(StorageError::WriteFailed { failed, first }) => {
                        Err(StorageError::WriteFailed { failed: *failed, first: first.clone() })
                    }
                    Err(_) => Err(StorageError::Closed),
                };
                // The flusher may have given up waiting; nothing to do then.
                let _ = done.send(copy);
            }
        }
    }
    tracing::debug!("storage writer stopped");
}

/// Coalesces a batch's snapshot writes before anything is encoded:
///
/// - every snapshot (`SaveCall`, or a row of `PutCalls`) that a later op of the batch replaces
///   or removes is left out (a `SaveCall` becomes an empty write, so it is never encoded): only
///   the last state of a call is ever read;
/// - a fresh call (no snapshot stored before its first save, which is in this batch) whose last
///   op in the batch removes it is not written either way: its saves are left out as above and
///   its removal too. Under load most calls start and end within one commit delay, so this
///   spares the `active_calls` table a delete per call.
///
/// Ops stay in place (emptied), so results still line up with submissions. Records are never
/// touched: an ended call's records are written whatever happens to its snapshot. The keys
/// are borrowed from the ops while deciding, so nothing is cloned.
fn coalesce_saves(ops: &mut [WriteOp]) {
    /// A key's ops in the batch, seen from its last op backwards.
    struct Seen {
        /// Where the key's last op removes its snapshot: `(op, key)` in a `RemoveCalls`.
        removed_last: Option<(usize, usize)>,
        /// The key's earliest op so far (backwards) is a fresh `SaveCall`.
        fresh_first: bool,
    }
    /// A removal of `key` at `(op, position in the op)`, seen going backwards: the key's last
    /// op if none was seen before it; otherwise its earliest op so far, which is not a save.
    fn removal<'k>(
        seen: &mut FastMap<(&'k str, &'k str), Seen>,
        key: (&'k str, &'k str),
        at: (usize, usize),
    ) {
        seen.entry(key)
            .and_modify(|s| s.fresh_first = false)
            .or_insert(Seen { removed_last: Some(at), fresh_first: false });
    }
    let mut emptied = Vec::new();
    let mut dropped: Vec<(usize, usize)> = Vec::new();
    {
        // App keys and call ids are the server's own (no client chooses a key here), so the
        // switchboard's fast hasher serves, as for its own map of calls.
        let mut seen: FastMap<(&str, &str), Seen> = FastMap::default();
        for (i, op) in ops.iter().enumerate().rev() {
            match op {
                WriteOp::SaveCall { app_key, call, fresh, .. } => {
                    match seen.entry((app_key.as_str(), call.call_id.as_str())) {
                        Entry::Occupied(mut later) => {
                            later.get_mut().fresh_first = *fresh;
                            emptied.push(i);
                        }
                        Entry::Vacant(last) => {
                            last.insert(Seen { removed_last: None, fresh_first: *fresh });
                        }
                    }
                }
                WriteOp::PutCalls(rows) => {
                    for (j, row) in rows.iter().enumerate().rev() {
                        match seen.entry((row.app_key.as_str(), row.call_id.as_str())) {
                            Entry::Occupied(mut later) => {
                                later.get_mut().fresh_first = false;
                                dropped.push((i, j));
                            }
                            Entry::Vacant(last) => {
                                last.insert(Seen { removed_last: None, fresh_first: false });
                            }
                        }
                    }
                }
                WriteOp::RemoveCalls(keys) => {
                    for (j, (app_key, call_id)) in keys.iter().enumerate().rev() {
                        removal(&mut seen, (app_key.as_str(), call_id.as_str()), (i, j));
                    }
                }
                WriteOp::ForgetCall { app_key, call_id } => {
                    removal(&mut seen, (app_key.as_str(), call_id.as_str()), (i, 0));
                }
                WriteOp::Records(_)
                | WriteOp::Record { .. }
                | WriteOp::Offline { .. }
                | WriteOp::RemoveOffline { .. }
                | WriteOp::AliveMark(_) => {}
            }
        }
        // A fresh call removed last: its saves are all emptied (the removal comes after them);
        // the removal goes too. (An earlier removal between two of its saves stays: a no-op.)
        dropped.extend(seen.values().filter(|s| s.fresh_first).filter_map(|s| s.removed_last));
    }
    for i in emptied {
        if let Some(op) = ops.get_mut(i) {
            *op = WriteOp::PutCalls(Vec::new());
        }
    }
    // Highest positions first, so the earlier positions of the same op stay valid.
    dropped.sort_unstable_by(|a, b| b.cmp(a));
    for (i, j) in dropped {
        match ops.get_mut(i) {
            Some(WriteOp::PutCalls(rows)) if j < rows.len() => drop(rows.remove(j)),
            Some(WriteOp::RemoveCalls(keys)) if j < keys.len() => drop(keys.remove(j)),
            Some(op @ WriteOp::ForgetCall { .. }) => *op = WriteOp::RemoveCalls(Vec::new()),
            _ => {}
        }
    }
}

/// Applies a batch as [`apply`] does, then retries the ops that failed only because the
/// database was unreachable, in order, until they succeed, fail for another reason, or the
/// outage outlasts the policy's window. Ops that succeeded are not applied again.
///
/// A write whose commit reached the database just as the connection broke may be applied
/// twice; every write is an upsert or a delete except storing offline events, which could then
/// be stored (and later delivered) twice.
fn apply_retrying(storage: &dyn Storage, ops: &[BatchOp], policy: &Retry) -> Vec<OpResult> {
    let mut results = apply(storage, ops);
    let started = Instant::now();
    let mut delay = FIRST_RETRY_DELAY;
    loop {
        let failed: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.as_ref().is_err_and(StorageError::is_transient))
            .map(|(i, _)| i)
            .collect();
        if failed.is_empty() {
            return results;
        }
        if started.elapsed() >= policy.window {
            tracing::error!(
                ops = failed.len(),
                window = ?policy.window,
                "database unreachable for longer than the outage window; writes given up"
            );
            return results;
        }
        let retries = policy.retries.fetch_add(1, Ordering::Relaxed);
        if retries == 0 || delay == MAX_RETRY_DELAY {
            tracing::warn!(ops = failed.len(), "database unreachable; holding writes and retrying");
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(MAX_RETRY_DELAY);
        let again: Vec<BatchOp> = failed.iter().filter_map(|&i| ops.get(i).cloned()).collect();
        for (i, result) in failed.into_iter().zip(apply(storage, &again)) {
            if let Some(slot) = results.get_mut(i) {
                *slot = result;
            }
        }
    }
}

/// Applies a batch; if the batch as a whole fails (nothing applied), retries op by op so one
/// bad op cannot sink the others.
fn apply(storage: &dyn Storage, ops: &[BatchOp]) -> Vec<OpResult> {
    match storage.apply_batch(ops) {
        Ok(results) if results.len() == ops.len() => results,
        Ok(results) => {
            // A broken `apply_batch` implementation; report rather than guess.
            tracing::error!(
                expected = ops.len(),
                got = results.len(),
                "Storage::apply_batch returned the wrong number of results"
            );
            ops.iter()
                .map(|_| {
                    Err(StorageError::InvalidArgument(
                        "apply_batch returned the wrong number of results".into(),
                    ))
                })
                .collect()
        }
        // The database is unreachable: every op would fail the same way; the caller retries.
        Err(e) if e.is_transient() => {
            let text = e.to_string();
            ops.iter().map(|_| Err(StorageError::Unavailable(text.clone()))).collect()
        }
        Err(e) if ops.len() > 1 => {
            tracing::warn!(error = %e, ops = ops.len(), "storage batch failed; retrying op by op");
            ops.iter()
                .map(|op| match storage.apply_batch(std::slice::from_ref(op)) {
                    Ok(mut r) if r.len() == 1 => r.pop().unwrap_or(Err(StorageError::Closed)),
                    Ok(_) => Err(StorageError::InvalidArgument(
                        "apply_batch returned the wrong number of results".into(),
                    )),
                    Err(e) => Err(e),
                })
                .collect()
        }
        Err(e) => vec![Err(e)],
    }
}
