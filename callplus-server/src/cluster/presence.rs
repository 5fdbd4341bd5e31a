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

use super::batch::{Batch, Replies, Slot};
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

/// The user's devices whose own key is alive, as `[device, "{node}|{session}", …]`; the index
/// fields of expired devices are dropped on the way. One round trip, and atomic: no device
/// registering meanwhile can have its fresh field dropped.
const LOOKUP: &str = r"
local index = redis.call('HGETALL', KEYS[1])
local found = {}
local stale = {}
for i = 1, #index, 2 do
  local value = redis.call('GET', ARGV[1] .. index[i])
  if value then
    found[#found + 1] = index[i]
    found[#found + 1] = value
  else
    stale[#stale + 1] = index[i]
  end
end
if #stale > 0 then redis.call('HDEL', KEYS[1], unpack(stale)) end
return found
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
    lookup: Script,
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
        Presence {
            conn,
            node,
            ttl,
            renew: Script::new(RENEW),
            unregister: Script::new(UNREGISTER),
            lookup: Script::new(LOOKUP),
        }
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
        let mut batch = Batch::default();
        let written = self.register_in(&mut batch, app_key, user_id, device_id, session_id);
        Presence::registered(&mut batch.run(&mut self.conn.clone()).await?, written)
    }

    /// [`Presence::register`] as part of `batch`: the device's key first, then the index, so a
    /// lookup between the two finds the device either in full or not at all.
    pub fn register_in(
        &self,
        batch: &mut Batch,
        app_key: &str,
        user_id: &str,
        device_id: &str,
        session_id: &str,
    ) -> [Slot; 2] {
        let value = self.value(session_id);
        let mut set = redis::cmd("SET");
        set.arg(device_key(app_key, user_id, device_id)).arg(&value).arg("PX").arg(ttl_ms(self.ttl));
        let mut index = redis::cmd("HSET");
        index.arg(user_key(app_key, user_id)).arg(device_id).arg(&value);
        [batch.push(set), batch.push(index)]
    }

    /// Whether a [`Presence::register_in`] was written.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] when Redis refused either command.
    pub fn registered(replies: &mut Replies, slots: [Slot; 2]) -> Result<(), ClusterError> {
        for slot in slots {
            replies.take::<redis::Value>(slot)?;
        }
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
        let mut batch = Batch::default();
        let slot = self.lookup_in(&mut batch, app_key, user_id);
        Presence::found(&mut batch.run(&mut self.conn.clone()).await?, slot)
    }

    /// [`Presence::lookup`] as part of `batch`; read the answer with [`Presence::found`].
    pub fn lookup_in(&self, batch: &mut Batch, app_key: &str, user_id: &str) -> Slot {
        let mut invocation = self.lookup.key(user_key(app_key, user_id));
        invocation.arg(device_key(app_key, user_id, ""));
        batch.push_script(&self.lookup, &invocation)
    }

    /// The answer to a [`Presence::lookup_in`], sorted by device id.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] when Redis refused the lookup.
    pub fn found(replies: &mut Replies, slot: Slot) -> Result<Vec<DeviceLocation>, ClusterError> {
        let pairs: Vec<(String, String)> = replies.take(slot)?;
        let mut found: Vec<DeviceLocation> = pairs
            .into_iter()
            .filter_map(|(device_id, value)| {
                let (node_id, session_id) = value.split_once('|')?;
                Some(DeviceLocation {
                    device_id,
                    node_id: node_id.to_owned(),
                    session_id: session_id.to_owned(),
                })
            })
            .collect();
        found.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        Ok(found)
    }
}
