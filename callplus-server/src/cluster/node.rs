//! A node's identity and its connection to Redis.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::ClusterError;

/// A node's id, unique in the deployment: 1-32 characters of `[A-Za-z0-9_-]` (it leads every call id the
/// node mints, which must stay within 64 characters), so it can sit in
/// Redis keys and values next to `:` and `|` separators.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeId(String);

impl NodeId {
    /// Checks and wraps a node id.
    ///
    /// # Errors
    /// [`ClusterError::InvalidArgument`] for an empty, long or oddly spelled id.
    pub fn new(id: &str) -> Result<NodeId, ClusterError> {
        let ok = !id.is_empty() && callplus_session::switchboard::valid_node_id(id);
        if ok {
            Ok(NodeId(id.to_owned()))
        } else {
            Err(ClusterError::InvalidArgument(format!(
                "node id `{id}` must be 1-32 characters of A-Z a-z 0-9 _ -"
            )))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `serve --redis URL --node-id ID`, checked.
#[derive(Clone)]
pub struct ClusterConfig {
    /// The Redis client (URL parsed, not connected).
    pub client: redis::Client,
    /// This node's id.
    pub node_id: NodeId,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never print it.
        f.debug_struct("ClusterConfig").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

impl ClusterConfig {
    /// Parses the Redis URL (`redis://[:PASSWORD@]HOST:PORT[/DB]`) and the node id, without
    /// connecting.
    ///
    /// # Errors
    /// [`ClusterError::InvalidArgument`] for a URL or node id that cannot be used.
    pub fn new(redis_url: &str, node_id: &str) -> Result<ClusterConfig, ClusterError> {
        Self::with_tls_ca(redis_url, node_id, None)
    }

    /// Like [`new`](Self::new); a `rediss://` URL connects with TLS (rustls) and checks the
    /// server's certificate against `ca_pem` (PEM) if given, else the system's trusted roots.
    ///
    /// # Errors
    /// [`ClusterError::InvalidArgument`] for a URL or node id that cannot be used, or a CA with
    /// a plaintext `redis://` URL (it would silently not be used).
    pub fn with_tls_ca(
        redis_url: &str,
        node_id: &str,
        ca_pem: Option<Vec<u8>>,
    ) -> Result<ClusterConfig, ClusterError> {
        let node_id = NodeId::new(node_id)?;
        // The error text may quote the URL, password included: keep only its kind.
        let invalid = |e: redis::RedisError| {
            ClusterError::InvalidArgument(format!("invalid Redis URL ({:?})", e.kind()))
        };
        let tls = redis_url.starts_with("rediss://");
        let client = match ca_pem {
            Some(_) if !tls => {
                return Err(ClusterError::InvalidArgument(
                    "a Redis CA is given but the URL is not rediss://".into(),
                ));
            }
            Some(root_cert) => redis::Client::build_with_tls(
                redis_url,
                redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) },
            )
            .map_err(invalid)?,
            None => redis::Client::open(redis_url).map_err(invalid)?,
        };
        Ok(ClusterConfig { client, node_id })
    }
}

/// Opens a connection manager: one multiplexed connection that reconnects by itself (with
/// backoff) when Redis restarts, so a node keeps running through a Redis restart and its next
/// commands succeed once Redis is back.
///
/// # Errors
/// [`ClusterError::Redis`] when Redis cannot be reached at all now.
pub async fn connect(client: &redis::Client) -> Result<ConnectionManager, ClusterError> {
    let config = ConnectionManagerConfig::new()
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1))
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    Ok(client.get_connection_manager_with_config(config).await?)
}
