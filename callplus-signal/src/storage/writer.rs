//! A dedicated writer thread that batches storage writes.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use super::{BatchOp, OpResult, Storage, StorageError};

/// The most operations committed in one transaction; a longer queue is split into several.
const MAX_OPS_PER_BATCH: usize = 4096;

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
    /// Remove call snapshots by `(app_key, call_id)`, like [`Storage::remove_active_calls`].
    RemoveCalls(Vec<(String, String)>),
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
            WriteOp::RemoveCalls(keys) => f.debug_tuple("RemoveCalls").field(keys).finish(),
        }
    }
}

impl WriteOp {
    fn into_parts(self) -> (BatchOp, Option<OfflineReply>) {
        match self {
            WriteOp::Records(rows) => (BatchOp::Records(rows), None),
            WriteOp::Offline { app_key, user_id, bodies, reply } => {
                (BatchOp::Offline { app_key, user_id, bodies }, reply)
            }
            WriteOp::RemoveOffline { app_key, user_id, ids } => {
                (BatchOp::RemoveOffline { app_key, user_id, ids }, None)
            }
            WriteOp::PutCalls(rows) => (BatchOp::PutCalls(rows), None),
            WriteOp::RemoveCalls(keys) => (BatchOp::RemoveCalls(keys), None),
        }
    }
}

enum Msg {
    Op(WriteOp),
    Flush(Sender<Result<(), StorageError>>),
}

/// Owns all writes on one OS thread, so callers never wait for the disk.
///
/// [`submit`](Self::submit) only queues (the queue is unbounded). The thread takes everything
/// queued at once and commits it through [`Storage::apply_batch`] — one transaction per batch
/// for SQLite — so the write rate grows with load instead of capping it. Ops are applied in
/// submission order. A failing op is logged and does not stop the others; failures are also
/// reported by the next [`flush`](Self::flush).
///
/// Dropping the writer waits for the queue to drain; prefer [`shutdown`](Self::shutdown), which
/// also reports errors.
#[derive(Debug)]
pub struct BatchWriter {
    tx: Option<Sender<Msg>>,
    thread: Option<JoinHandle<()>>,
}

impl BatchWriter {
    /// Starts the writer thread over `storage`.
    ///
    /// # Panics
    /// If the OS cannot start a thread (as [`std::thread::spawn`] does).
    pub fn spawn(storage: Arc<dyn Storage>) -> BatchWriter {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("callplus-storage-writer".into())
            .spawn(move || run(storage.as_ref(), &rx));
        match thread {
            Ok(handle) => BatchWriter { tx: Some(tx), thread: Some(handle) },
            // Not an input error: the process is out of threads, as `thread::spawn` would panic.
            Err(e) => panic!("cannot start the storage writer thread: {e}"),
        }
    }

    /// Queues a write without waiting. If the writer has stopped, the write is dropped with an
    /// error log (an `Offline` reply is dropped uncalled) and the next flush returns
    /// [`StorageError::Closed`].
    pub fn submit(&self, op: WriteOp) {
        let sent = match &self.tx {
            Some(tx) => tx.send(Msg::Op(op)).map_err(|e| e.0),
            None => Err(Msg::Op(op)),
        };
        if let Err(Msg::Op(op)) = sent {
            tracing::error!(?op, "storage writer has stopped; write dropped");
        }
    }

    /// Blocks until every write submitted before this call is committed.
    ///
    /// # Errors
    /// [`StorageError::WriteFailed`] if any write failed since the previous flush,
    /// [`StorageError::Closed`] if the writer thread has stopped.
    pub fn flush(&self) -> Result<(), StorageError> {
        let (done_tx, done_rx) = mpsc::channel();
        let tx = self.tx.as_ref().ok_or(StorageError::Closed)?;
        tx.send(Msg::Flush(done_tx)).map_err(|_| StorageError::Closed)?;
        done_rx.recv().map_err(|_| StorageError::Closed)?
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
        // Closing the channel ends the thread once it has drained the queue.
        self.tx = None;
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

fn run(storage: &dyn Storage, rx: &Receiver<Msg>) {
    let mut failures = Failures::default();
    let mut ops = Vec::new();
    let mut replies = Vec::new();
    let mut flushes = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Op(op) => {
                    let (op, reply) = op.into_parts();
                    ops.push(op);
                    replies.push(reply);
                }
                Msg::Flush(done) => flushes.push(done),
            }
            if ops.len() >= MAX_OPS_PER_BATCH {
                break;
            }
            // Empty or disconnected: apply what we have (a closed channel ends the loop after).
            next = rx.try_recv().ok();
        }
        if !ops.is_empty() {
            let results = apply(storage, &ops);
            for ((op, reply), result) in ops.drain(..).zip(replies.drain(..)).zip(results) {
                if let Err(e) = &result {
                    tracing::error!(error = %e, ?op, "storage write failed");
                    failures.record(e);
                }
                if let Some(reply) = reply {
                    reply(result);
                }
            }
        }
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
