//! The takeover lock of a lost node: which surviving node ends the lost node's calls.
//!
//! `callplus:node:{lost}:takeover` holds the winner's node id (`SET NX PX`). Every survivor that
//! notices the loss tries it; the one that sets it reads the lost node's saved calls from
//! durable storage *after* winning and ends them, then releases the key (compare-and-delete)
//! once the ends are committed, so a node that wins it later finds nothing left to end. The TTL
//! only covers a winner that dies while ending them: the key expires and the next survivor to
//! notice takes over what is still saved. See "Owner death" in `docs/architecture.md`.

use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

use super::{ClusterError, NodeId, ttl_ms};

/// How long a winner may take to end a lost node's calls before another node may try.
pub const TAKEOVER_TTL: Duration = Duration::from_secs(30);

/// Deletes the key only if it still names this node.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

fn takeover_key(node: &str) -> String {
    format!("callplus:node:{node}:takeover")
}

/// Takes and gives back lost nodes' takeover locks for one node.
#[derive(Clone)]
pub struct Takeovers {
    conn: ConnectionManager,
    node: NodeId,
    release: Script,
}

impl std::fmt::Debug for Takeovers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Takeovers").field("node", &self.node).finish_non_exhaustive()
    }
}

impl Takeovers {
    /// Locks taken as `node`.
    pub fn new(conn: ConnectionManager, node: NodeId) -> Takeovers {
        Takeovers { conn, node, release: Script::new(RELEASE) }
    }

    /// Tries to win the right to end `lost`'s calls: `true` if this node won it.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] when Redis cannot be reached (try again later).
    pub async fn acquire(&self, lost: &str) -> Result<bool, ClusterError> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(takeover_key(lost))
            .arg(self.node.as_str())
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms(TAKEOVER_TTL))
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }

    /// Gives the lock on `lost` back if this node still holds it; `false` if it did not.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] when Redis cannot be reached (the lock then expires by itself).
    pub async fn release(&self, lost: &str) -> Result<bool, ClusterError> {
        let mut conn = self.conn.clone();
        let deleted: i64 =
            self.release.key(takeover_key(lost)).arg(self.node.as_str()).invoke_async(&mut conn).await?;
        Ok(deleted == 1)
    }

    /// The node holding the lock on `lost`, if any.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] when Redis cannot be reached.
    pub async fn holder(&self, lost: &str) -> Result<Option<String>, ClusterError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("GET").arg(takeover_key(lost)).query_async(&mut conn).await?)
    }
}
