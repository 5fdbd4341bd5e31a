//! `callplus serve`: runs the signalling server until SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use callplus_session::IceServer;
use callplus_session::switchboard::{BusyPolicy, DevicePolicy, SwitchboardConfig};
use clap::{Args, ValueEnum};

use super::LogFormat;
use crate::server::config::{duration_ms_u32, parse_bytes, parse_duration, parse_ice_server};
use crate::server::{
    DEFAULT_ADMIN_LISTEN, DEFAULT_DATA_DIR, DEFAULT_LISTEN, Server, ServerOptions, ServerTls,
};

/// Busy callees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BusyArg {
    /// Ring anyway (call waiting) and tell the caller who is busy.
    Ring,
    /// Reject busy callees at once (BUSY / REMOTE_BUSY).
    Reject,
}

/// Devices per user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// Several devices per user; all ring.
    Multi,
    /// One device per user; a new login kicks the older one (KICKED_OTHER_LOGIN).
    Single,
}

/// Flags of `callplus serve`; each also reads a `CALLPLUS_*` environment variable.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address devices connect to (gRPC, and WebSocket at `/v1/ws`).
    #[arg(long, env = "CALLPLUS_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// PEM certificate chain for TLS on the device port (with `--tls-key`); devices then
    /// connect with `https://` or `wss://`.
    #[arg(long, env = "CALLPLUS_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "CALLPLUS_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve the admin API over TLS too, with `--tls-cert` and `--tls-key`.
    #[arg(long, env = "CALLPLUS_ADMIN_TLS", requires = "tls_cert")]
    pub admin_tls: bool,
    /// Admin HTTP address (token API, /metrics, /healthz); `off` disables it.
    #[arg(long, env = "CALLPLUS_ADMIN_LISTEN", default_value = DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: String,
    /// Data directory (SQLite database, created if missing).
    #[arg(long, env = "CALLPLUS_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Keep durable data in this PostgreSQL database (`postgres://USER:PASSWORD@HOST:PORT/DB`)
    /// instead of SQLite in `--data-dir`; its tables are created or migrated at start.
    #[arg(long, env = "CALLPLUS_POSTGRES", value_name = "URL")]
    pub postgres: Option<String>,
    /// Redis for presence and call ownership when several nodes serve one deployment
    /// (`redis://[:PASSWORD@]HOST:PORT[/DB]`), reachable at start. Each device's session is
    /// kept in Redis presence, and calls reach devices on any node through per-node inbox
    /// streams (call leases and take-over of a lost node's calls are not done yet).
    #[arg(long, env = "CALLPLUS_REDIS", value_name = "URL", requires = "node_id", hide_env_values = true)]
    pub redis: Option<String>,
    /// PEM CA certificate that `rediss://` Redis certificates must chain to (default: the
    /// system's trusted roots).
    #[arg(long, env = "CALLPLUS_REDIS_CA", value_name = "FILE", requires = "redis")]
    pub redis_ca: Option<PathBuf>,
    /// This node's id, unique in the deployment (1-32 characters of A-Z a-z 0-9 _ -); with
    /// `--redis`. It leads every call and session id the node mints.
    #[arg(long, env = "CALLPLUS_NODE_ID", value_name = "ID", requires = "redis")]
    pub node_id: Option<String>,
    /// Default ring timeout of a call (0 = ring until answered or cancelled).
    #[arg(long, env = "CALLPLUS_RING_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub ring_timeout: Duration,
    /// How long a change-media-type request waits for the peer.
    #[arg(long, env = "CALLPLUS_CHANGE_MEDIA_TYPE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub change_media_type_timeout: Duration,
    /// How often clients ping (told to them at connect).
    #[arg(long, env = "CALLPLUS_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// A device silent this long is gone: its calls end for it with NETWORK_ERROR.
    #[arg(long, env = "CALLPLUS_LIVENESS_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub liveness_timeout: Duration,
    /// How long after its last frame a device can resume its session with nothing lost.
    #[arg(long, env = "CALLPLUS_RESUME_WINDOW", default_value = "60s", value_parser = parse_duration)]
    pub resume_window: Duration,
    /// Most participants of a call with video.
    #[arg(long, env = "CALLPLUS_MAX_VIDEO_PARTICIPANTS", default_value_t = 16)]
    pub max_video_participants: usize,
    /// Most participants of an audio-only call.
    #[arg(long, env = "CALLPLUS_MAX_AUDIO_PARTICIPANTS", default_value_t = 32)]
    pub max_audio_participants: usize,
    /// What happens to a callee already in a call.
    #[arg(long, env = "CALLPLUS_BUSY_POLICY", value_enum, default_value = "ring")]
    pub busy_policy: BusyArg,
    /// Several devices per user, or one (a new login kicks the older device).
    #[arg(long, env = "CALLPLUS_DEVICE_POLICY", value_enum, default_value = "multi")]
    pub device_policy: DeviceArg,
    /// URL that push notifications for offline callees are POSTed to (JSON); none = no push.
    #[arg(long, env = "CALLPLUS_PUSH_WEBHOOK")]
    pub push_webhook: Option<String>,
    /// PEM file of the certificate authorities to trust for an `https://` push webhook instead
    /// of the public ones.
    #[arg(long, env = "CALLPLUS_PUSH_WEBHOOK_CA", value_name = "FILE", requires = "push_webhook")]
    pub push_webhook_ca: Option<PathBuf>,
    /// Tries per push notification, with exponential backoff.
    #[arg(long, env = "CALLPLUS_PUSH_ATTEMPTS", default_value_t = 4)]
    pub push_attempts: u32,
    /// STUN/TURN server for clients: `URL[,URL...][|USERNAME|CREDENTIAL]`; repeat the flag, or
    /// separate servers with `;` in the environment variable.
    #[arg(long = "ice-server", env = "CALLPLUS_ICE_SERVERS", value_delimiter = ';', value_parser = parse_ice_server)]
    pub ice_servers: Vec<IceServer>,
    /// Unacknowledged frames kept per device before it is dropped as too slow.
    #[arg(long, env = "CALLPLUS_MAX_UNACKED_FRAMES", default_value_t = 4096)]
    pub max_unacked_frames: usize,
    /// Bytes of unacknowledged frames kept per device before it is dropped as too slow (e.g.
    /// `8MiB`, `512KiB`, or a number of bytes).
    #[arg(long, env = "CALLPLUS_MAX_UNACKED_BYTES", default_value = "8MiB", value_parser = parse_bytes)]
    pub max_unacked_bytes: usize,
    /// Bytes of unacknowledged frames kept for all the devices of one user; past it the device
    /// holding the most is dropped as too slow.
    #[arg(long, env = "CALLPLUS_MAX_USER_UNACKED_BYTES", default_value = "32MiB", value_parser = parse_bytes)]
    pub max_user_unacked_bytes: usize,
    /// Most device sessions one user may have (connected or kept for a resume); a further
    /// device's Hello is refused with TOO_MANY_DEVICES. 0 = no limit.
    #[arg(long, env = "CALLPLUS_MAX_DEVICES_PER_USER", default_value_t = 16)]
    pub max_devices_per_user: usize,
    /// Do not run the selective forwarding unit: every call's media is peer to peer.
    #[arg(long, env = "CALLPLUS_NO_SFU")]
    pub no_sfu: bool,
    /// The local UDP address the SFU's media connections bind to (`ip:port`; port 0 for any).
    #[arg(long, env = "CALLPLUS_MEDIA_LISTEN", default_value = "0.0.0.0:0")]
    pub media_listen: String,
    /// Drive the SFU process (`callplus sfu`) at this URL (`http://host:port`, or
    /// `https://host:port` with `--sfu-ca`) instead of running the SFU in this server; with
    /// `--media-secret-file`. Several, comma-separated: each call's media is placed on one of
    /// them (the least loaded) and moves to another when its SFU is lost.
    #[arg(
        long,
        env = "CALLPLUS_SFU_URL",
        value_name = "URL",
        value_delimiter = ',',
        requires = "media_secret_file",
        conflicts_with = "no_sfu"
    )]
    pub sfu_url: Vec<String>,
    /// File of the media secret shared with the SFU process (the one `callplus sfu` created).
    #[arg(long, env = "CALLPLUS_MEDIA_SECRET_FILE", value_name = "FILE", requires = "sfu_url")]
    pub media_secret_file: Option<PathBuf>,
    /// PEM certificates trusted for an `https://` `--sfu-url`: the CA that signed the SFU's
    /// `--tls-cert`, or that certificate itself.
    #[arg(long, env = "CALLPLUS_SFU_CA", value_name = "FILE", requires = "sfu_url")]
    pub sfu_ca: Option<PathBuf>,
    /// MULTI calls made with at most this many participants stay peer to peer (0: every MULTI
    /// call's media goes through the SFU).
    #[arg(long, env = "CALLPLUS_MESH_MAX", default_value_t = 0)]
    pub mesh_max: usize,
    /// How long a participant whose connection to the SFU failed has to connect again before
    /// it is removed from the call with NETWORK_ERROR.
    #[arg(long, env = "CALLPLUS_MEDIA_RECOVERY", default_value = "20s", value_parser = parse_duration)]
    pub media_recovery: Duration,
    /// Most device-port connections open at once (0 = no limit); more wait in the backlog.
    #[arg(long, env = "CALLPLUS_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Worker threads of the async runtime (default: one per CPU core). One worker costs less
    /// CPU per call on a small machine and adds latency near its limit (docs/operations.md,
    /// "Worker threads").
    #[arg(long, env = "CALLPLUS_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
    /// How long an admin-port connection may take to send a complete request.
    #[arg(long, env = "CALLPLUS_ADMIN_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub admin_request_timeout: Duration,
    /// Sustained requests per second allowed per device.
    #[arg(long, env = "CALLPLUS_REQUESTS_PER_SECOND", default_value_t = 50)]
    pub requests_per_second: u32,
    /// Burst of requests allowed per device above the sustained rate.
    #[arg(long, env = "CALLPLUS_REQUEST_BURST", default_value_t = 200)]
    pub request_burst: u32,
    /// How long an ended call is kept in memory for GetCall; later, GetCall answers from the
    /// requester's call record.
    #[arg(long, env = "CALLPLUS_ENDED_CALL_RETENTION", default_value = "30s", value_parser = parse_duration)]
    pub ended_call_retention: Duration,
    /// How long a new stream may take to send its Hello.
    #[arg(long, env = "CALLPLUS_HELLO_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub hello_timeout: Duration,
    /// Frames queued per connection before a slow connection is closed (it can resume).
    #[arg(long, env = "CALLPLUS_OUTBOUND_QUEUE", default_value_t = 1024)]
    pub outbound_queue: usize,
    /// Log format.
    #[arg(long, env = "CALLPLUS_LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,
    /// Log filter when RUST_LOG is not set (e.g. `info`, `callplus_signal=debug`).
    #[arg(long, env = "CALLPLUS_LOG", default_value = "info")]
    pub log: String,
}

impl ServeArgs {
    /// The switchboard settings these flags describe.
    ///
    /// # Errors
    /// When a duration does not fit in milliseconds as a `u32`.
    pub fn switchboard_config(&self) -> anyhow::Result<SwitchboardConfig> {
        let ms = |d: Duration| duration_ms_u32(d).map_err(anyhow::Error::msg);
        Ok(SwitchboardConfig {
            ring_timeout_ms: ms(self.ring_timeout)?,
            change_media_type_timeout_ms: ms(self.change_media_type_timeout)?,
            heartbeat_interval_ms: ms(self.heartbeat_interval)?,
            liveness_timeout_ms: ms(self.liveness_timeout)?,
            resume_window_ms: ms(self.resume_window)?,
            max_video_participants: self.max_video_participants,
            max_audio_participants: self.max_audio_participants,
            busy_policy: match self.busy_policy {
                BusyArg::Ring => BusyPolicy::RingBusy,
                BusyArg::Reject => BusyPolicy::AutoReject,
            },
            device_policy: match self.device_policy {
                DeviceArg::Multi => DevicePolicy::MultiDevice,
                DeviceArg::Single => DevicePolicy::SingleDevice,
            },
            push_enabled: self.push_webhook.is_some(),
            ice_servers: self.ice_servers.clone(),
            max_unacked_frames: self.max_unacked_frames,
            max_unacked_bytes: self.max_unacked_bytes,
            max_user_unacked_bytes: self.max_user_unacked_bytes,
            max_devices_per_user: self.max_devices_per_user,
            requests_per_second: self.requests_per_second,
            request_burst: self.request_burst,
            ended_call_retention_ms: ms(self.ended_call_retention)?,
            node_id: self.node_id.clone().unwrap_or_default(),
            media_recovery_ms: ms(self.media_recovery)?,
        })
    }
}

impl ServeArgs {
    /// `--redis` and `--node-id`, checked (URL parsed, id spelled right), not connected.
    ///
    /// # Errors
    /// When the URL or the node id cannot be used.
    pub fn cluster_config(&self) -> anyhow::Result<Option<crate::cluster::ClusterConfig>> {
        match (&self.redis, &self.node_id) {
            (Some(url), Some(id)) => {
                let ca = match &self.redis_ca {
                    Some(path) => {
                        Some(std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?)
                    }
                    None => None,
                };
                Ok(Some(crate::cluster::ClusterConfig::with_tls_ca(url, id, ca)?))
            }
            (None, None) => Ok(None),
            _ => anyhow::bail!("--redis and --node-id go together"),
        }
    }
}

impl ServeArgs {
    /// The SFU processes of `--sfu-url`, with the secret read from `--media-secret-file` and,
    /// for `https://` ones, the certificates of `--sfu-ca`; empty for the SFU in this server.
    ///
    /// # Errors
    /// A URL is neither `http://` nor `https://`, an `https://` one has no `--sfu-ca` (or
    /// `--sfu-ca` is given with no `https://` one), a URL is listed twice, or the secret or CA
    /// file cannot be read.
    pub fn remote_sfus(&self) -> anyhow::Result<Vec<crate::relay::RemoteSfu>> {
        let Some(file) = &self.media_secret_file else {
            return Ok(Vec::new());
        };
        let mut https = false;
        for (i, url) in self.sfu_url.iter().enumerate() {
            tonic::transport::Endpoint::from_shared(url.clone())
                .with_context(|| format!("--sfu-url {url} is not a URL"))?;
            match url.split_once("://").map(|(scheme, _)| scheme) {
                Some("http") => {}
                Some("https") => https = true,
                _ => anyhow::bail!("--sfu-url {url}: expected http://HOST:PORT or https://HOST:PORT"),
            }
            if self.sfu_url[..i].contains(url) {
                anyhow::bail!("--sfu-url {url} is listed twice");
            }
        }
        let tls_ca_pem = match (https, &self.sfu_ca) {
            (false, None) => None,
            (false, Some(_)) => anyhow::bail!("--sfu-ca goes with an https:// --sfu-url"),
            (true, Some(ca)) => {
                Some(std::fs::read(ca).with_context(|| format!("cannot read --sfu-ca {}", ca.display()))?)
            }
            (true, None) => {
                anyhow::bail!("an https:// --sfu-url needs --sfu-ca: the certificates that vouch for the SFU")
            }
        };
        let secret = crate::relay::MediaSecret::read(file)?;
        Ok(self
            .sfu_url
            .iter()
            .map(|url| crate::relay::RemoteSfu {
                url: url.clone(),
                secret: secret.clone(),
                tls_ca_pem: if url.starts_with("https://") { tls_ca_pem.clone() } else { None },
            })
            .collect())
    }
}

/// Runs `callplus serve`.
///
/// # Errors
/// When the configuration is invalid, storage cannot be opened, an address cannot be bound,
/// or the final storage flush fails.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    super::init_logging(args.log_format, &args.log);
    let config = args.switchboard_config()?;
    let cluster = args.cluster_config()?;
    let options = ServerOptions {
        hello_timeout: args.hello_timeout,
        admin_request_timeout: args.admin_request_timeout,
        max_connections: args.max_connections,
        outbound_queue: args.outbound_queue,
        push_webhook: args.push_webhook.clone(),
        push_webhook_ca_pem: match &args.push_webhook_ca {
            Some(path) => {
                Some(std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?)
            }
            None => None,
        },
        push_attempts: args.push_attempts.max(1),
        sfu: !args.no_sfu,
        media_listen: vec![args.media_listen.clone()],
        mesh_max: args.mesh_max,
        remote_sfus: args.remote_sfus()?,
        ..ServerOptions::default()
    };
    let mut builder = Server::builder().listen(&args.listen).config(config).options(options);
    builder = match &args.postgres {
        Some(url) => builder.postgres(url),
        None => builder.data_dir(&args.data_dir),
    };
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let tls = ServerTls::from_files(cert, key)?;
        if args.admin_tls {
            builder = builder.admin_tls(tls.clone());
        }
        builder = builder.tls(tls);
    }
    if let Some(cluster) = &cluster {
        builder = builder.cluster(cluster.clone());
    }
    builder = if args.admin_listen.eq_ignore_ascii_case("off") {
        builder.no_admin()
    } else {
        builder.admin_listen(&args.admin_listen)
    };
    let mut server = builder.start().await.context("cannot start the server")?;

    let data_dir = args.data_dir.display();
    println!("callplus {} is running", env!("CARGO_PKG_VERSION"));
    println!("  gRPC (devices):   {}", server.grpc_url());
    println!("  WebSocket:        {}", server.websocket_url());
    println!("  web phone:        {}/  (sign in with a token)", server.grpc_url());
    match server.admin_url() {
        Some(url) => {
            println!(
                "  admin API:        {url}  (POST /v1/tokens, /v1/calls/end, /v1/users/sign_out; GET /metrics, /healthz)"
            )
        }
        None => println!("  admin API:        off"),
    }
    if args.postgres.is_some() {
        println!("  storage:          PostgreSQL");
    } else {
        println!("  data directory:   {data_dir}");
    }
    for url in &args.sfu_url {
        println!("  SFU:              {url} (callplus sfu)");
    }
    if let Some(cluster) = &cluster {
        println!("  node id:          {} (Redis: presence and routing between nodes)", cluster.node_id);
    }
    let app = server.app_credentials();
    if server.created_app() {
        println!();
        println!("Created the default app. Its secret is shown only this once; keep it safe:");
        println!("  app key:    {}", app.app_key);
        println!("  app secret: {}", app.app_secret);
    } else {
        println!("  app key:          {}", app.app_key);
    }
    println!();
    println!("Get a token for a user with:");
    let dir_flag = if args.postgres.is_some() {
        " --postgres <the same URL>".to_owned()
    } else if args.data_dir.as_os_str() == DEFAULT_DATA_DIR {
        String::new()
    } else {
        format!(" --data-dir {}", shell_quote(&data_dir.to_string()))
    };
    println!("  callplus token --user alice{dir_flag}");
    // Listening before saying so: a SIGTERM right after the banner stops the server cleanly.
    let stop = crate::server::shutdown::signal();
    println!("Stop with Ctrl-C (or SIGTERM); nothing is lost.");

    tokio::select! {
        () = stop => {}
        () = server.failed() => tracing::error!("a server task failed; stopping"),
    }
    server.shutdown().await.context("shutdown did not complete cleanly")?;
    Ok(())
}

fn shell_quote(s: &str) -> String {
    if s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:=@".contains(&b)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    #[test]
    fn redis_and_node_id_are_parsed_and_checked_together() {
        let serve =
            |argv: &[&str]| Serve::try_parse_from(std::iter::once("serve").chain(argv.iter().copied()));
        let args = serve(&["--redis", "redis://127.0.0.1:6379/", "--node-id", "node-1"]).unwrap().args;
        let cluster = args.cluster_config().unwrap().expect("configured");
        assert_eq!(cluster.node_id.as_str(), "node-1");
        assert!(serve(&[]).unwrap().args.cluster_config().unwrap().is_none(), "single node by default");
        assert!(serve(&["--redis", "redis://127.0.0.1:6379/"]).is_err(), "--redis needs --node-id");
        assert!(serve(&["--node-id", "node-1"]).is_err(), "--node-id needs --redis");
        let bad_id = serve(&["--redis", "redis://127.0.0.1:6379/", "--node-id", "no spaces"]).unwrap().args;
        assert!(bad_id.cluster_config().is_err());
        let bad_url = serve(&["--redis", "http://x", "--node-id", "n"]).unwrap().args;
        assert!(bad_url.cluster_config().is_err());
    }

    #[test]
    fn media_recovery_reaches_the_switchboard() {
        let serve =
            |argv: &[&str]| Serve::try_parse_from(std::iter::once("serve").chain(argv.iter().copied()));
        let default = serve(&[]).unwrap().args.switchboard_config().unwrap();
        assert_eq!(default.media_recovery_ms, SwitchboardConfig::default().media_recovery_ms);
        let short = serve(&["--media-recovery", "2s"]).unwrap().args.switchboard_config().unwrap();
        assert_eq!(short.media_recovery_ms, 2_000);
        assert!(serve(&["--media-recovery", "soon"]).is_err());
    }

    #[test]
    fn sfu_url_goes_with_a_readable_media_secret_file() {
        let serve =
            |argv: &[&str]| Serve::try_parse_from(std::iter::once("serve").chain(argv.iter().copied()));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("media.secret");
        let path = file.to_str().unwrap();
        assert!(serve(&[]).unwrap().args.remote_sfus().unwrap().is_empty(), "in-process SFU by default");
        assert!(serve(&["--sfu-url", "http://127.0.0.1:7702"]).is_err(), "--sfu-url needs the secret");
        assert!(serve(&["--media-secret-file", path]).is_err(), "the secret needs --sfu-url");
        let with_no_sfu = ["--sfu-url", "http://127.0.0.1:7702", "--media-secret-file", path, "--no-sfu"];
        assert!(serve(&with_no_sfu).is_err(), "--sfu-url and --no-sfu contradict");
        let args = serve(&["--sfu-url", "http://127.0.0.1:7702", "--media-secret-file", path]).unwrap().args;
        assert!(args.remote_sfus().is_err(), "a missing secret file");
        let (secret, _) = crate::relay::MediaSecret::read_or_create(&file).unwrap();
        let remotes = args.remote_sfus().unwrap();
        let [remote] = remotes.as_slice() else { panic!("one SFU: {remotes:?}") };
        assert_eq!(remote.url, "http://127.0.0.1:7702");
        assert_eq!(remote.secret.token_key(), secret.token_key());
        assert_eq!(remote.tls_ca_pem, None, "plaintext");
        let not_http = serve(&["--sfu-url", "127.0.0.1:7702", "--media-secret-file", path]).unwrap().args;
        assert!(not_http.remote_sfus().is_err());

        // https:// needs the certificates that vouch for the SFU, and only https:// takes them.
        let https = ["--sfu-url", "https://127.0.0.1:7702", "--media-secret-file", path];
        assert!(serve(&https).unwrap().args.remote_sfus().is_err(), "https without --sfu-ca");
        let ca = dir.path().join("ca.pem");
        let ca_path = ca.to_str().unwrap();
        let with_ca: Vec<&str> = https.iter().copied().chain(["--sfu-ca", ca_path]).collect();
        assert!(serve(&with_ca).unwrap().args.remote_sfus().is_err(), "an unreadable CA file");
        std::fs::write(&ca, b"-----BEGIN CERTIFICATE-----").unwrap();
        let remotes = serve(&with_ca).unwrap().args.remote_sfus().unwrap();
        assert_eq!(remotes[0].tls_ca_pem.as_deref(), Some(&b"-----BEGIN CERTIFICATE-----"[..]));
        let http_with_ca =
            ["--sfu-url", "http://127.0.0.1:7702", "--media-secret-file", path, "--sfu-ca", ca_path];
        assert!(serve(&http_with_ca).unwrap().args.remote_sfus().is_err(), "--sfu-ca on plaintext");
        assert!(serve(&["--sfu-ca", ca_path]).is_err(), "--sfu-ca needs --sfu-url");

        // Several SFUs, comma-separated: each its own URL, one secret, the CA for https ones.
        let list = "http://127.0.0.1:7702,https://127.0.0.1:7703";
        let both =
            serve(&["--sfu-url", list, "--media-secret-file", path, "--sfu-ca", ca_path]).unwrap().args;
        let remotes = both.remote_sfus().unwrap();
        let urls: Vec<&str> = remotes.iter().map(|r| r.url.as_str()).collect();
        assert_eq!(urls, ["http://127.0.0.1:7702", "https://127.0.0.1:7703"]);
        assert!(remotes[0].tls_ca_pem.is_none() && remotes[1].tls_ca_pem.is_some());
        let twice = "http://127.0.0.1:7702,http://127.0.0.1:7702";
        assert!(
            serve(&["--sfu-url", twice, "--media-secret-file", path]).unwrap().args.remote_sfus().is_err()
        );
    }
}
