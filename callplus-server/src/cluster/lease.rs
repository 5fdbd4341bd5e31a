//! Call-ownership leases: exactly one node owns a call at a time.
//!
//! `callplus:{app}:call:{call}:owner` holds `"{node}|{token}"` with a TTL. Acquiring is atomic
//! (a Lua script: set only if absent, and take the next fencing token from
//! `callplus:{app}:call:{call}:epoch`); renewing and releasing compare the value first, so a node
//! never extends or deletes a successor's lease. The token only grows for a call, so durable
//! writes tagged with it can refuse a stale owner's late writes.

use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

use super::{ClusterError, NodeId, ttl_ms};

/// How long a call's epoch counter is kept after its last acquisition: far longer than any call.
const EPOCH_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// Sets the lease if absent and returns the new fencing token, or nil if someone holds it.
const ACQUIRE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local token = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return token
";

/// Extends the lease if it is still ours (1). If it vanished (Redis lost its data, or it expired
/// and nobody took it), takes it back with the same token and raises the epoch to at least that
/// token so later owners still get larger ones (1). Someone else's lease: 0.
const RENEW: &str = r"
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if current then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local epoch = tonumber(redis.call('GET', KEYS[2]) or '0')
if epoch < tonumber(ARGV[3]) then redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4]) end
return 1
";

/// Deletes the lease only if it is still ours.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// A lease this node holds on a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The app the call belongs to.
    pub app_key: String,
    /// The call.
    pub call_id: String,
    /// The fencing token: larger for every new owner of the call.
    pub token: u64,
    value: String,
}

/// Acquires, renews and releases call leases for one node.
#[derive(Clone)]
pub struct CallLeases {
    conn: ConnectionManager,
    node: NodeId,
    ttl: Duration,
    acquire: Script,
    renew: Script,
    release: Script,
}

impl std::fmt::Debug for CallLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallLeases").field("node", &self.node).field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

fn owner_key(app_key: &str, call_id: &str) -> String {
    format!("callplus:{app_key}:call:{call_id}:owner")
}

fn epoch_key(app_key: &str, call_id: &str) -> String {
    format!("callplus:{app_key}:call:{call_id}:epoch")
}

impl CallLeases {
    /// Leases for `node`, each lasting `ttl` unless renewed (renew every `ttl / 3`).
    pub fn new(conn: ConnectionManager, node: NodeId, ttl: Duration) -> CallLeases {
        CallLeases {
            conn,
            node,
            ttl,
            acquire: Script::new(ACQUIRE),
            renew: Script::new(RENEW),
            release: Script::new(RELEASE),
        }
    }

    /// Takes the call's lease if nobody holds it; `None` if another node (or this one) does.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] when Redis cannot be reached.
    pub async fn acquire(&self, app_key: &str, call_id: &str) -> Result<Option<Lease>, ClusterError> {
        let mut conn = self.conn.clone();
        let token: Option<u64> = self
            .acquire
            .key(owner_key(app_key, call_id))
            .key(epoch_key(app_key, call_id))
            .arg(self.node.as_str())
            .arg(ttl_ms(self.ttl))
            .arg(EPOCH_TTL_MS)
            .invoke_async(&mut conn)
            .await?;
        Ok(token.map(|token| Lease {
            app_key: app_key.to_owned(),
            call_id: call_id.to_owned(),
            token,
            value: format!("{}|{token}", self.node),
        }))
    }

    /// Extends the lease by the TTL. `false`: another node holds the call now, and this node
    /// must stop acting for it at once.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] when Redis cannot be reached (the lease may still be ours: retry
    /// before it expires).
    pub async fn renew(&self, lease: &Lease) -> Result<bool, ClusterError> {
        let mut conn = self.conn.clone();
        let renewed: i64 = self
            .renew
            .key(owner_key(&lease.app_key, &lease.call_id))
            .key(epoch_key(&lease.app_key, &lease.call_id))
            .arg(&lease.value)
            .arg(ttl_ms(self.ttl))
            .arg(lease.token)
            .arg(EPOCH_TTL_MS)
            .invoke_async(&mut conn)
            .await?;
        Ok(renewed == 1)
    }

    /// Gives the lease up if it is still ours; `false` if it was not (nothing deleted).
    ///
    /// # Errors
    /// [`ClusterError::Redis`] when Redis cannot be reached (the lease then expires by itself).
    pub async fn release(&self, lease: &Lease) -> Result<bool, ClusterError> {
        let mut conn = self.conn.clone();
        let deleted: i64 = self
            .release
            .key(owner_key(&lease.app_key, &lease.call_id))
            .arg(&lease.value)
            .invoke_async(&mut conn)
            .await?;
        Ok(deleted == 1)
    }

    /// The node holding the call's lease and its token, if anyone holds it.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] when Redis cannot be reached.
    pub async fn owner(&self, app_key: &str, call_id: &str) -> Result<Option<(String, u64)>, ClusterError> {
        let mut conn = self.conn.clone();
        let value: Option<String> =
            redis::cmd("GET").arg(owner_key(app_key, call_id)).query_async(&mut conn).await?;
        Ok(value.and_then(|v| {
            let (node, token) = v.rsplit_once('|')?;
            Some((node.to_owned(), token.parse().ok()?))
        }))
    }
}
