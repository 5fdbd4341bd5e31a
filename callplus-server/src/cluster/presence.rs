//! The presence registry: which node (and connection) each device is on.
//!
//! `callplus:{app}:presence:{user}:{device}` holds `"{node}|{session}"` with a TTL that the
//! device's heartbeats renew; the hash `callplus:{app}:presence:{user}` indexes a user's devices
//! so a sender finds them in one read. Hash fields have no TTL of their own, so a lookup keeps
//! only the devices whose own key is alive and still says the same thing, and drops the others
//! from the hash.

use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

use super::{ClusterError, NodeId, ttl_ms};

/// Extends the device's entry if it is still this connection's (1); writes it again if it
/// vanished (Redis lost its data, or it expired while the device is still connected here) (1);
/// another connection's entry (the device moved to another node): 0.
const RENEW: &str = r"
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if current then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[1])
return 1
";

/// Removes the device's entry only if it is still this connection's.
const UNREGISTER: &str = r"
local removed = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then removed = redis.call('DEL', KEYS[1]) end
if redis.call('HGET', KEYS[2], ARGV[2]) == ARGV[1] then redis.call('HDEL', KEYS[2], ARGV[2]) end
return removed
";

/// Where one of a user's devices is connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceLocation {
    /// The device.
    pub device_id: String,
    /// The node holding its connection.
    pub node_id: String,
    /// Its session on that node.
    pub session_id: String,
}

/// Registers this node's devices and finds anyone's.
#[derive(Clone)]
pub struct Presence {
    conn: ConnectionManager,
    node: NodeId,
    ttl: Duration,
    renew: Script,
    unregister: Script,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence").field("node", &self.node).field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

fn user_key(app_key: &str, user_id: &str) -> String {
    format!("callplus:{app_key}:presence:{user_id}")
}

fn device_key(app_key: &str, user_id: &str, device_id: &str) -> String {
    format!("callplus:{app_key}:presence:{user_id}:{device_id}")
}

impl Presence {
    /// Presence for `node`; an entry lives `ttl` unless renewed (about 3 heartbeat intervals).
    pub fn new(conn: ConnectionManager, node: NodeId, ttl: Duration) -> Presence {
        Presence { conn, node, ttl, renew: Script::new(RENEW), unregister: Script::new(UNREGISTER) }
    }

    fn value(&self, session_id: &str) -> String {
        format!("{}|{session_id}", self.node)
    }

    /// Notes that the device is connected here with `session_id` (replacing wherever it was).
    ///
    /// # Errors
    /// [`ClusterError::Redis`] when Redis cannot be reached.
    pub async fn register(
        &self,
        app_key: &str,
        user_id: &str,
        device_id: &str,
        session_id: &str,
    ) -> Result<(), ClusterError> {
        let mut conn = self.conn.clone();
        let value = self.value(session_id);
        redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(device_key(app_key, user_id, device_id))
            .arg(&value)
            .arg("PX")
            .arg(ttl_ms(self.ttl))
            .ignore()
            .cmd("HSET")
            .arg(user_key(app_key, user_id))
            .arg(device_id)
            .arg(&value)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Renews the device's entry (on its heartbeat). `false`: the device is registered by
    /// another connection now (it reconnected elsewhere), so this one is stale.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] when Redis cannot be reached.
    pub async fn renew(
        &self,
        app_key: &str,
        user_id: &str,
        device_id: &str,
        session_id: &str,
    ) -> Result<bool, ClusterError> {
        let mut conn = self.conn.clone();
        let renewed: i64 = self
            .renew
            .key(device_key(app_key, user_id, device_id))
            .key(user_key(app_key, user_id))
            .arg(self.value(session_id))
            .arg(ttl_ms(self.ttl))
            .arg(device_id)
            .invoke_async(&mut conn)
            .await?;
        Ok(renewed == 1)
    }

    /// Removes the device's entry if it is still this connection's (a clean disconnect).
    ///
    /// # Errors
    /// [`ClusterError::Redis`] when Redis cannot be reached (the entry then expires by itself).
    pub async fn unregister(
        &self,
        app_key: &str,
        user_id: &str,
        device_id: &str,
        session_id: &str,
    ) -> Result<bool, ClusterError> {
        let mut conn = self.conn.clone();
        let removed: i64 = self
            .unregister
            .key(device_key(app_key, user_id, device_id))
            .key(user_key(app_key, user_id))
            .arg(self.value(session_id))
            .arg(device_id)
            .invoke_async(&mut conn)
            .await?;
        Ok(removed == 1)
    }

    /// Where the user's devices are connected now (any node), sorted by device id.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] when Redis cannot be reached.
    pub async fn lookup(&self, app_key: &str, user_id: &str) -> Result<Vec<DeviceLocation>, ClusterError> {
        let mut conn = self.conn.clone();
        let index: Vec<(String, String)> =
            redis::cmd("HGETALL").arg(user_key(app_key, user_id)).query_async(&mut conn).await?;
        if index.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> =
            index.iter().map(|(device, _)| device_key(app_key, user_id, device)).collect();
        let live: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        let mut found = Vec::new();
        let mut stale = Vec::new();
        for ((device_id, _), value) in index.into_iter().zip(live) {
            let parsed = value.as_deref().and_then(|v| v.split_once('|'));
            match parsed {
                Some((node_id, session_id)) => found.push(DeviceLocation {
                    device_id,
                    node_id: node_id.to_owned(),
                    session_id: session_id.to_owned(),
                }),
                None => stale.push(device_id),
            }
        }
        if !stale.is_empty() {
            // Expired devices; a device registering again meanwhile rewrites its field, and a
            // field deleted too eagerly comes back with its next renewal.
            redis::cmd("HDEL")
                .arg(user_key(app_key, user_id))
                .arg(&stale)
                .query_async::<()>(&mut conn)
                .await?;
        }
        found.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        Ok(found)
    }
}
