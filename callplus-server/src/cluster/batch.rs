//! Several Redis commands sent together, in one round trip, each answered on its own.
//!
//! The routing task turns a run of queued work into a few batches instead of one round trip per
//! command (`server/routing/batch.rs`). Redis runs a pipeline's commands one after another in the
//! order they were written, on one connection, so what one piece of work writes is seen by the
//! reads written after it, exactly as when they ran one at a time. Errors are kept per command
//! ([`redis::Pipeline::ignore_errors`]): one refused command does not fail the others.

use redis::aio::ConnectionManager;
use redis::{Cmd, FromRedisValue, Pipeline, Script, ScriptInvocation, Value};

use super::ClusterError;

/// Where a command's reply will be in the [`Replies`] of its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot(usize);

/// Commands to send together.
///
/// ```no_run
/// # async fn run(conn: &mut redis::aio::ConnectionManager) -> Result<(), callplus_server::cluster::ClusterError> {
/// use callplus_server::cluster::Batch;
/// let mut batch = Batch::default();
/// let first = batch.push(redis::cmd("INCR").arg("counter").clone());
/// let second = batch.push(redis::cmd("GET").arg("counter").clone());
/// let mut replies = batch.run(conn).await?;
/// let after: i64 = replies.take(first)?;
/// let read: i64 = replies.take(second)?;
/// assert_eq!(after, read);
/// # Ok(()) }
/// ```
pub struct Batch {
    pipe: Pipeline,
    len: usize,
    /// Hashes of the scripts this batch loads before their first use.
    loaded: Vec<String>,
}

impl Default for Batch {
    fn default() -> Batch {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        Batch { pipe, len: 0, loaded: Vec::new() }
    }
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("commands", &self.len).finish_non_exhaustive()
    }
}

impl Batch {
    /// Whether nothing was written to the batch.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `cmd`; its reply will be at the returned slot.
    pub fn push(&mut self, cmd: Cmd) -> Slot {
        self.pipe.add_command(cmd);
        self.len += 1;
        Slot(self.len - 1)
    }

    /// Adds a script's invocation, loading the script first (once per batch): a pipelined
    /// `EVALSHA` is not retried after `NOSCRIPT`, and Redis forgets its scripts when it restarts.
    pub fn push_script(&mut self, script: &Script, invocation: &ScriptInvocation<'_>) -> Slot {
        let hash = script.get_hash();
        if !self.loaded.iter().any(|h| h == hash) {
            self.loaded.push(hash.to_owned());
            self.pipe.load_script(script);
            self.len += 1;
        }
        self.pipe.invoke_script(invocation);
        self.len += 1;
        Slot(self.len - 1)
    }

    /// Sends the batch and reads every reply.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] when Redis cannot be reached: none of the replies is known then
    /// (some of the commands may have run).
    pub async fn run(&self, conn: &mut ConnectionManager) -> Result<Replies, ClusterError> {
        if self.is_empty() {
            return Ok(Replies { values: Vec::new(), unsent: None });
        }
        let values: Vec<Value> = self.pipe.query_async(conn).await?;
        Ok(Replies { values: values.into_iter().map(Some).collect(), unsent: None })
    }
}

/// The replies of a [`Batch`], taken one by one.
#[derive(Debug)]
pub struct Replies {
    values: Vec<Option<Value>>,
    /// Why the batch got no replies at all, for each command's error.
    unsent: Option<String>,
}

impl Replies {
    /// The replies of a batch whose [`Batch::run`] failed with `error`: taking any of them fails
    /// with that error's text, so each command's caller handles its own failure.
    pub fn unsent(error: &ClusterError) -> Replies {
        Replies { values: Vec::new(), unsent: Some(error.to_string()) }
    }

    /// The reply at `slot`, converted.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] when Redis refused that command, the reply has another type, or
    /// the slot was already taken or is not in this batch.
    pub fn take<T: FromRedisValue>(&mut self, slot: Slot) -> Result<T, ClusterError> {
        let value = self.values.get_mut(slot.0).and_then(Option::take).ok_or_else(|| match &self.unsent {
            Some(why) => redis::RedisError::from((redis::ErrorKind::Io, "batch not sent", why.clone())),
            None => redis::RedisError::from((redis::ErrorKind::Client, "no reply at this slot of the batch")),
        })?;
        Ok(redis::from_redis_value(value).map_err(redis::RedisError::from)?)
    }
}
