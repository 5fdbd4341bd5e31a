//! Server settings beyond the switchboard's: transport limits, push delivery, and parsers for
//! the textual forms used by flags and environment variables.

use std::time::Duration;

use callplus_session::IceServer;

/// Transport and delivery settings of a server (the call rules are in
/// [`SwitchboardConfig`](callplus_session::switchboard::SwitchboardConfig)).
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// How long a new stream may take to send its Hello before it is closed. A device-port
    /// connection that has carried no authenticated Hello one second after this is closed
    /// whole (plain TCP silence, an HTTP/2 preface with no stream, a slow trickle of bytes).
    pub hello_timeout: Duration,
    /// How long an admin-port connection may take to send a complete request (from its accept,
    /// or from the last response on it) before it is closed.
    pub admin_request_timeout: Duration,
    /// Most device-port connections open at once (0 = no limit); further connections wait in
    /// the kernel's backlog until one closes. The open-file limit must leave room for them.
    pub max_connections: usize,
    /// Estimated bytes queued per connection before the connection is closed as too slow.
    /// Raised to at least the switchboard's `max_unacked_bytes` + 1 MiB so a resume's replay
    /// always fits.
    pub outbound_queue_bytes: usize,
    /// Frames queued per connection before the connection is closed as too slow (the device can
    /// resume; the frames stay in the switchboard's outbox). Raised to at least
    /// `max_unacked_frames + 256` so a resume's replay always fits.
    pub outbound_queue: usize,
    /// Where push notifications for offline callees are POSTed (`http://` or `https://`);
    /// `None` disables push.
    pub push_webhook: Option<String>,
    /// PEM certificates of the authorities trusted for an `https://` webhook instead of the
    /// public ones (a push gateway with a private CA or a self-signed certificate).
    pub push_webhook_ca_pem: Option<Vec<u8>>,
    /// Tries per push notification (with exponential backoff between them).
    pub push_attempts: u32,
    /// Delay before the second try; doubles for each further try.
    pub push_backoff: Duration,
    /// Timeout of one push request.
    pub push_timeout: Duration,
    /// How long shutdown waits for connections to take their last frames.
    pub drain_timeout: Duration,
    /// Whether to create a default app when storage holds none.
    pub create_default_app: bool,
    /// Whether the server runs the selective forwarding unit MULTI calls' media goes through
    /// (else every call's media is peer to peer).
    pub sfu: bool,
    /// Local UDP addresses the SFU's connections bind to (`ip:port`, port 0 for any).
    pub media_listen: Vec<String>,
    /// MULTI calls made with at most this many participants (creator included) stay peer to
    /// peer; 0 sends every MULTI call through the SFU.
    pub mesh_max: usize,
    /// How long a media token (a device's credential for the SFU) is valid.
    pub media_token_ttl: Duration,
    /// Drive these SFU processes (`callplus sfu`) instead of running the SFU in this server;
    /// with `sfu` on. With several, each call's media is placed on one of them; they share one
    /// media secret.
    pub remote_sfus: Vec<crate::relay::RemoteSfu>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            hello_timeout: Duration::from_secs(10),
            admin_request_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            outbound_queue_bytes: 9 << 20,
            outbound_queue: 1024,
            push_webhook: None,
            push_webhook_ca_pem: None,
            push_attempts: 4,
            push_backoff: Duration::from_millis(500),
            push_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            create_default_app: true,
            sfu: true,
            media_listen: vec!["0.0.0.0:0".to_owned()],
            mesh_max: 0,
            media_token_ttl: Duration::from_secs(3600),
            remote_sfus: Vec::new(),
        }
    }
}

/// Parses a duration: a number with a unit `ms`, `s`, `m` or `h` (`250ms`, `20s`, `10m`), or a
/// plain number of seconds.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let bad = || format!("invalid duration {s:?}: use e.g. 250ms, 20s, 10m, 1h or a number of seconds");
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    }
    .ok_or_else(bad)?;
    Ok(Duration::from_millis(ms))
}

/// Parses a size in bytes: a number with an optional unit `B`, `KiB`, `MiB` or `GiB` (`K`,
/// `M`, `G` are the same binary units): `8MiB`, `512K`, `1048576`.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let bad = || format!("invalid size {s:?}: use e.g. 8MiB, 512KiB or a number of bytes");
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(bad());
    }
    let n: usize = digits.parse().map_err(|_| bad())?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        _ => return Err(bad()),
    };
    n.checked_mul(1usize << shift).ok_or_else(bad)
}

/// A duration as whole milliseconds that fit a `u32` (the switchboard's unit).
///
/// # Errors
/// When the duration is longer than about 49 days.
pub fn duration_ms_u32(d: Duration) -> Result<u32, String> {
    u32::try_from(d.as_millis()).map_err(|_| format!("duration {d:?} is too long"))
}

/// Parses an ICE server: `URL[,URL…][|USERNAME|CREDENTIAL]`, e.g. `stun:stun.example.org:3478`
/// or `turn:turn.example.org:3478?transport=udp|alice|s3cret`.
///
/// # Errors
/// When there is no URL or the credential part is incomplete.
pub fn parse_ice_server(s: &str) -> Result<IceServer, String> {
    let mut parts = s.trim().split('|');
    let urls: Vec<String> = parts
        .next()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    if urls.is_empty() {
        return Err(format!("invalid ICE server {s:?}: expected URL[,URL...][|USERNAME|CREDENTIAL]"));
    }
    let (username, credential) = match (parts.next(), parts.next(), parts.next()) {
        (None, None, None) => (String::new(), String::new()),
        (Some(u), Some(c), None) => (u.to_owned(), c.to_owned()),
        _ => return Err(format!("invalid ICE server {s:?}: expected URL[,URL...][|USERNAME|CREDENTIAL]")),
    };
    Ok(IceServer { urls, username, credential })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("20"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "s", "1x", "-1s", "1.5s", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("8MiB"), Ok(8 << 20));
        assert_eq!(parse_bytes("512K"), Ok(512 << 10));
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("1G"), Ok(1 << 30));
        for bad in ["", "M", "1x", "-1", "1.5M", "99999999999999999999G"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ice_servers() {
        let stun = parse_ice_server("stun:stun.example.org:3478").ok();
        assert_eq!(stun.map(|s| s.urls), Some(vec!["stun:stun.example.org:3478".to_owned()]));
        let turn = parse_ice_server("turn:a:3478,turn:b:443?transport=tcp|alice|pw").ok();
        assert_eq!(turn.as_ref().map(|s| s.urls.len()), Some(2));
        assert_eq!(turn.map(|s| (s.username, s.credential)), Some(("alice".into(), "pw".into())));
        assert!(parse_ice_server("").is_err());
        assert!(parse_ice_server("turn:a|alice").is_err());
    }
}
