//! The per-node inbox: a Redis Stream `callplus:node:{node}:inbox` that other nodes `XADD` to
//! and its node reads with `XREAD BLOCK` from the last id it processed (see "The per-node
//! delivery channel" in `docs/architecture.md` for why a stream and not pub/sub), and the
//! node's liveness key `callplus:node:{node}:alive`, which its reader renews while it runs so
//! senders can tell a node that is gone from one that is slow.

use std::time::Duration;

use callplus_session::switchboard::NodeMessage;
use redis::aio::ConnectionManager;

use super::batch::{Batch, Replies, Slot};
use super::message::{decode, encode};
use super::{ClusterError, NodeId, ttl_ms};

/// About how many entries an inbox keeps (`XADD … MAXLEN ~`): a dead or stuck node's inbox
/// does not grow without bound.
pub const INBOX_MAXLEN: usize = 100_000;

/// How long a node counts as alive after its last renewal.
pub const ALIVE_TTL: Duration = Duration::from_secs(5);

/// How long one `XREAD` blocks (below the connection's response timeout).
pub const READ_BLOCK: Duration = Duration::from_millis(1_000);

fn inbox_key(node: &str) -> String {
    format!("callplus:node:{node}:inbox")
}

fn alive_key(node: &str) -> String {
    format!("callplus:node:{node}:alive")
}

/// Sends messages to other nodes' inboxes.
#[derive(Clone)]
pub struct Outbox {
    conn: ConnectionManager,
    node: NodeId,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("node", &self.node).finish_non_exhaustive()
    }
}

impl Outbox {
    /// Sends as `node`.
    pub fn new(conn: ConnectionManager, node: NodeId) -> Outbox {
        Outbox { conn, node }
    }

    /// Appends `message` to `to`'s inbox.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] when Redis cannot be reached.
    pub async fn send(&self, to: &str, message: &NodeMessage) -> Result<(), ClusterError> {
        let mut batch = Batch::default();
        let slot = self.send_in(&mut batch, to, message);
        Outbox::sent(&mut batch.run(&mut self.conn.clone()).await?, slot)
    }

    /// [`Outbox::send`] as part of `batch`.
    pub fn send_in(&self, batch: &mut Batch, to: &str, message: &NodeMessage) -> Slot {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(inbox_key(to)).arg("MAXLEN").arg("~").arg(INBOX_MAXLEN).arg("*");
        for (k, v) in encode(self.node.as_str(), message) {
            cmd.arg(k).arg(v);
        }
        batch.push(cmd)
    }

    /// Whether a [`Outbox::send_in`] was appended.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] when Redis refused it.
    pub fn sent(replies: &mut Replies, slot: Slot) -> Result<(), ClusterError> {
        replies.take::<String>(slot)?;
        Ok(())
    }

    /// Whether `node` renewed its liveness key within [`ALIVE_TTL`].
    ///
    /// # Errors
    /// [`ClusterError::Redis`] when Redis cannot be reached.
    pub async fn is_alive(&self, node: &str) -> Result<bool, ClusterError> {
        let mut batch = Batch::default();
        let slot = Outbox::is_alive_in(&mut batch, node);
        Outbox::alive(&mut batch.run(&mut self.conn.clone()).await?, slot)
    }

    /// [`Outbox::is_alive`] as part of `batch`.
    pub fn is_alive_in(batch: &mut Batch, node: &str) -> Slot {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(alive_key(node));
        batch.push(cmd)
    }

    /// The answer to a [`Outbox::is_alive_in`].
    ///
    /// # Errors
    /// [`ClusterError::Redis`] when Redis refused it.
    pub fn alive(replies: &mut Replies, slot: Slot) -> Result<bool, ClusterError> {
        Ok(replies.take::<u32>(slot)? == 1)
    }

    /// The connection batches run on: the one this outbox sends on, so a batch and a single send
    /// keep the order they were made in.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Marks this node alive for [`ALIVE_TTL`]; `false` when the mark was not there any more
    /// (the node's first mark, or Redis lost its data, or the node went unseen past the TTL):
    /// what the node keeps in Redis may be gone too.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] when Redis cannot be reached.
    pub async fn mark_alive(&self) -> Result<bool, ClusterError> {
        let mut conn = self.conn.clone();
        let previous: Option<String> = redis::cmd("SET")
            .arg(alive_key(self.node.as_str()))
            .arg(1)
            .arg("PX")
            .arg(ttl_ms(ALIVE_TTL))
            .arg("GET")
            .query_async(&mut conn)
            .await?;
        Ok(previous.is_some())
    }
}

/// One entry read from the inbox: its stream id and the message (or why it could not be read).
pub type Received = (String, Result<(String, NodeMessage), ClusterError>);

/// Reads this node's inbox in order. It needs a connection of its own: `XREAD BLOCK` holds its
/// connection while it waits.
pub struct InboxReader {
    conn: ConnectionManager,
    key: String,
    /// The id of the last entry read; `None` until the first read settles where to start.
    last: Option<String>,
}

impl std::fmt::Debug for InboxReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxReader")
            .field("key", &self.key)
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

/// Parses a stream id `ms-seq` for comparison.
fn id_of(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

impl InboxReader {
    /// The reader of `node`'s inbox, on its own connection.
    pub fn new(conn: ConnectionManager, node: &NodeId) -> InboxReader {
        InboxReader { conn, key: inbox_key(node.as_str()), last: None }
    }

    /// The id of the newest entry of the stream, `0-0` when it is empty or missing.
    async fn newest(&mut self) -> Result<String, ClusterError> {
        let newest: Vec<(String, redis::Value)> = redis::cmd("XREVRANGE")
            .arg(&self.key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.conn)
            .await?;
        Ok(newest.into_iter().next().map_or_else(|| "0-0".to_owned(), |(id, _)| id))
    }

    /// Where to continue after a failed read: from the last id, unless the stream now ends
    /// before it (Redis restarted without its data): then from the start of the new stream.
    pub async fn resync(&mut self) -> Result<(), ClusterError> {
        let newest = self.newest().await?;
        match &self.last {
            Some(last) if id_of(&newest) < id_of(last) => {
                tracing::warn!(
                    stream = %self.key,
                    %last,
                    %newest,
                    "the inbox restarted behind the last entry read (Redis lost its data); reading it from its start"
                );
                self.last = Some("0-0".to_owned());
            }
            Some(_) => {}
            None => self.last = Some(newest),
        }
        Ok(())
    }

    /// The next entries, waiting up to [`READ_BLOCK`] for one; empty when none came.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] when Redis cannot be reached; call [`InboxReader::resync`] once
    /// it can be again.
    pub async fn read(&mut self) -> Result<Vec<Received>, ClusterError> {
        if self.last.is_none() {
            self.resync().await?;
        }
        let last = self.last.clone().unwrap_or_else(|| "0-0".to_owned());
        type Reply = Option<Vec<(String, Vec<(String, Vec<Vec<u8>>)>)>>;
        let reply: Reply = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(256)
            .arg("BLOCK")
            .arg(u64::try_from(READ_BLOCK.as_millis()).unwrap_or(1_000))
            .arg("STREAMS")
            .arg(&self.key)
            .arg(&last)
            .query_async(&mut self.conn)
            .await?;
        let mut out = Vec::new();
        for (_, entries) in reply.unwrap_or_default() {
            for (id, fields) in entries {
                self.last = Some(id.clone());
                out.push((id, decode(&fields)));
            }
        }
        Ok(out)
    }
}
