//! Settings of the client engine and options of a new call.

use crate::model::ids::DeviceId;
use crate::model::snapshot::PushConfig;

/// How a [`ClientEngine`](super::ClientEngine) identifies itself and how patient it is.
///
/// ```
/// use callplus_session::DeviceId;
/// use callplus_session::client::ClientConfig;
///
/// # fn main() -> Result<(), callplus_session::Error> {
/// let config = ClientConfig::new(DeviceId::new("phone-1")?, "token-from-your-backend");
/// assert_eq!(config.request_timeout_ms, 10_000);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// This installation of the app; stable across restarts.
    pub device_id: DeviceId,
    /// The token minted by the app's backend; sent in every Hello. Replace it with
    /// [`ClientEngine::set_token`](super::ClientEngine::set_token) when it expires.
    pub token: String,
    /// SDK name and version, for the server's logs.
    pub client_version: String,
    /// How long a request (and the Hello) may wait for its answer before it completes with
    /// `Timeout`.
    pub request_timeout_ms: u32,
    /// Ping interval used when the server's Welcome does not name one.
    pub default_heartbeat_interval_ms: u32,
}

impl ClientConfig {
    /// Default request timeout: 10 s.
    pub const DEFAULT_REQUEST_TIMEOUT_MS: u32 = 10_000;
    /// Default ping interval: 5 s.
    pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u32 = 5_000;

    /// A configuration with the default timeouts and this crate's version as client version.
    pub fn new(device_id: DeviceId, token: impl Into<String>) -> Self {
        ClientConfig {
            device_id,
            token: token.into(),
            client_version: concat!("callplus-session/", env!("CARGO_PKG_VERSION")).to_owned(),
            request_timeout_ms: Self::DEFAULT_REQUEST_TIMEOUT_MS,
            default_heartbeat_interval_ms: Self::DEFAULT_HEARTBEAT_INTERVAL_MS,
        }
    }
}

/// Optional parts of [`ClientEngine::start_call`](super::ClientEngine::start_call).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallOptions {
    /// Push settings for callees with no connected device.
    pub push: Option<PushConfig>,
    /// Opaque data delivered to the callees with the invitation (at most 4 KiB).
    pub extra: String,
    /// Ring timeout of this call; `None` for the server's default, `Some(0)` to ring until
    /// answered or cancelled.
    pub ring_timeout_ms: Option<u32>,
}
