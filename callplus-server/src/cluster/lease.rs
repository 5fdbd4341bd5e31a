//! Call-ownership leases: exactly one node owns a call at a time.
//!
//! `callplus:{app}:call:{call}:owner` holds `"{node}|{token}"` with a TTL. Acquiring is atomic
//! (a Lua script: set only if absent, and take the next fencing token from
//! `callplus:{app}:call:{call}:epoch`); renewing and releasing compare the value first, so a node
//! never extends or deletes a successor's lease. The token only grows for a call, so durable
//! writes tagged with it can refuse a stale owner's late writes.
//!
//! The node that creates a call holds it with token 1 ([`Lease::first`]): call ids are unique
//! across nodes and runs, so nobody can have held the call before. The server writes such a
//! lease at its first renewal ([`CallLeases::renew_all`]), so a call shorter than a renewal
//! interval never touches Redis for its lease; a successor ([`CallLeases::take_over`]) always
//! gets a token of at least 2, whether or not the first lease was ever written, so fencing does
//! not depend on it.

use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

use super::{ClusterError, NodeId, ttl_ms};

/// How long a call's lease lasts unless its owner renews it (every third of it). Shorter than a
/// lost node takes to be noticed (its liveness key's TTL and the grace after it, about 8 s), so
/// by the time a survivor takes a lost owner's calls over their leases have expired.
pub const LEASE_TTL: Duration = Duration::from_secs(6);

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

/// Extends the lease if it is still ours (1). If it vanished (Redis lost its data, it expired
/// and nobody took it, or it was never written: a first lease), takes it back with the same
/// token and raises the epoch to at least that token so later owners still get larger ones (1),
/// unless the epoch is already past our token: a successor took the call (and may have released
/// it since), 0. Someone else's lease: 0.
const RENEW: &str = r"
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if current then return 0 end
local epoch = tonumber(redis.call('GET', KEYS[2]) or '0')
if epoch > tonumber(ARGV[3]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if epoch < tonumber(ARGV[3]) then redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4]) end
return 1
";

/// Takes a call over from the lost node ARGV[4]: free, or held by the lost node and the taker is
/// that node itself (a restart with the same id: the holder was its previous run), it is taken
/// with a token past the epoch and past 1 (the creator's), `{1, token}`. Held by the lost node
/// for another taker: `{2, ms left}`, try again when it expires. Held by anyone else: `{0, 0}`,
/// someone took it over already.
const TAKE: &str = r"
local current = redis.call('GET', KEYS[1])
if current then
  local holder = string.match(current, '^(.*)|[0-9]+$')
  if holder ~= ARGV[4] then return {0, 0} end
  if ARGV[1] ~= ARGV[4] then return {2, redis.call('PTTL', KEYS[1])} end
end
local epoch = tonumber(redis.call('GET', KEYS[2]) or '0')
if epoch < 1 then epoch = 1 end
local token = epoch + 1
redis.call('SET', KEYS[2], token, 'PX', ARGV[3])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return {1, token}
";

/// Deletes the lease only if it is still ours.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// A lease this node holds on a call.
///
/// ```
/// use callplus_server::cluster::{Lease, NodeId};
/// let node = NodeId::new("node-a").unwrap();
/// let lease = Lease::first(&node, "app", "node-a_x1-1");
/// assert_eq!(lease.token, 1);
/// ```
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

impl Lease {
    /// The lease of a call `node` has just created: token 1, the creator's. Nothing is written
    /// until it is renewed ([`CallLeases::renew`] writes a missing lease back).
    pub fn first(node: &NodeId, app_key: &str, call_id: &str) -> Lease {
        Lease::new(node, app_key, call_id, 1)
    }

    /// The lease `node` holds on the call with `token`; its stored value names both, so a
    /// renewal or release compares the whole value.
    fn new(node: &NodeId, app_key: &str, call_id: &str, token: u64) -> Lease {
        Lease {
            app_key: app_key.to_owned(),
            call_id: call_id.to_owned(),
            token,
            value: format!("{node}|{token}"),
        }
    }
}

/// What [`CallLeases::take_over`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TakeOver {
    /// The call is this node's now, with a token larger than any owner's before.
    Taken(Lease),
    /// The lost node's lease has not expired yet: try again after this long.
    Wait(Duration),
    /// Another node took the call over already: leave it alone.
    TakenElsewhere,
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
    take: Script,
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
            take: Script::new(TAKE),
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
        Ok(token.map(|token| Lease::new(&self.node, app_key, call_id, token)))
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

    /// Extends (or writes back) every lease of `leases` in one round trip: for each, whether it
    /// is still this node's, in order. `false`: another node took the call over, and this node
    /// must stop acting for it at once. A lease of token 1 never written before is written now.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] when Redis cannot be reached (the leases may still be ours: retry
    /// before they expire).
    pub async fn renew_all(&self, leases: &[Lease]) -> Result<Vec<bool>, ClusterError> {
        let mut batch = super::Batch::default();
        let slots: Vec<super::Slot> = leases
            .iter()
            .map(|lease| {
                let mut invocation = self.renew.key(owner_key(&lease.app_key, &lease.call_id));
                invocation
                    .key(epoch_key(&lease.app_key, &lease.call_id))
                    .arg(&lease.value)
                    .arg(ttl_ms(self.ttl))
                    .arg(lease.token)
                    .arg(EPOCH_TTL_MS);
                batch.push_script(&self.renew, &invocation)
            })
            .collect();
        let mut replies = batch.run(&mut self.conn.clone()).await?;
        slots.into_iter().map(|slot| Ok(replies.take::<i64>(slot)? == 1)).collect()
    }

    /// Gives up every lease of `leases` that is still ours, in one round trip (calls that
    /// ended). A lease never written costs a no-op.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] when Redis cannot be reached (the leases then expire by
    /// themselves).
    pub async fn release_all(&self, leases: &[Lease]) -> Result<(), ClusterError> {
        let mut batch = super::Batch::default();
        for lease in leases {
            let mut invocation = self.release.key(owner_key(&lease.app_key, &lease.call_id));
            invocation.arg(&lease.value);
            batch.push_script(&self.release, &invocation);
        }
        batch.run(&mut self.conn.clone()).await?;
        Ok(())
    }

    /// Takes over a call of the lost node `lost`, to end it: see [`TakeOver`]. The token is
    /// larger than any the call had, and at least 2, so writes fenced with it win over the
    /// creator's (token 1) even if the creator never wrote its lease.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] when Redis cannot be reached.
    pub async fn take_over(
        &self,
        app_key: &str,
        call_id: &str,
        lost: &str,
    ) -> Result<TakeOver, ClusterError> {
        let mut conn = self.conn.clone();
        let (outcome, n): (i64, i64) = self
            .take
            .key(owner_key(app_key, call_id))
            .key(epoch_key(app_key, call_id))
            .arg(self.node.as_str())
            .arg(ttl_ms(self.ttl))
            .arg(EPOCH_TTL_MS)
            .arg(lost)
            .invoke_async(&mut conn)
            .await?;
        Ok(match outcome {
            1 => {
                let token = u64::try_from(n).unwrap_or(0);
                TakeOver::Taken(Lease::new(&self.node, app_key, call_id, token))
            }
            2 => TakeOver::Wait(Duration::from_millis(u64::try_from(n).unwrap_or(0).max(1))),
            _ => TakeOver::TakenElsewhere,
        })
    }

    /// How long a lease lasts unless renewed.
    pub fn ttl(&self) -> Duration {
        self.ttl
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
