//! `callplus sfu`: the selective forwarding unit as its own process, for media on other
//! machines than the signalling servers (`callplus serve --sfu-url`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use super::LogFormat;
use crate::relay::{MediaSecret, SfuNode, SfuNodeOptions};
use crate::server::ServerTls;

/// Where `callplus sfu` listens for signalling servers by default.
pub const DEFAULT_SFU_LISTEN: &str = "127.0.0.1:7702";

/// Flags of `callplus sfu`; each also reads a `CALLPLUS_*` environment variable.
#[derive(Debug, Clone, Args)]
pub struct SfuArgs {
    /// TCP address signalling servers attach to (gRPC `MediaRelay`; plain HTTP/2 unless
    /// `--tls-cert` is given, so without it keep it on a private network).
    #[arg(long, env = "CALLPLUS_SFU_LISTEN", default_value = DEFAULT_SFU_LISTEN)]
    pub listen: String,
    /// The local UDP address media connections bind to (`ip:port`; port 0 for any).
    #[arg(long, env = "CALLPLUS_MEDIA_LISTEN", default_value = "0.0.0.0:0")]
    pub media_listen: String,
    /// File of the media secret shared with the signalling servers; created (random, mode
    /// 0600) when missing. Copy it to each `callplus serve --sfu-url`.
    #[arg(long, env = "CALLPLUS_MEDIA_SECRET_FILE", value_name = "FILE")]
    pub media_secret_file: PathBuf,
    /// PEM certificate chain the relay service presents (servers then attach with
    /// `--sfu-url https://…` and `--sfu-ca`).
    #[arg(long, env = "CALLPLUS_SFU_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "CALLPLUS_SFU_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "CALLPLUS_LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,
    /// Log filter when RUST_LOG is not set (e.g. `info`, `callplus_sfu=debug`).
    #[arg(long, env = "CALLPLUS_LOG", default_value = "info")]
    pub log: String,
}

/// Runs `callplus sfu` until SIGTERM or Ctrl-C.
///
/// # Errors
/// The secret file cannot be read or created, or the relay address cannot be bound.
pub async fn sfu(args: SfuArgs) -> anyhow::Result<()> {
    super::init_logging(args.log_format, &args.log);
    let (secret, created) = MediaSecret::read_or_create(&args.media_secret_file)?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(ServerTls::from_files(cert, key)?),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut node = SfuNode::start(SfuNodeOptions {
        listen: args.listen.clone(),
        media_listen: vec![args.media_listen.clone()],
        secret,
        tls,
    })
    .await
    .context("cannot start the SFU")?;
    println!("callplus sfu {} is running", env!("CARGO_PKG_VERSION"));
    println!("  relay (servers):  {scheme}://{}", node.addr());
    println!("  media (UDP):      {}", args.media_listen);
    let file = args.media_secret_file.display();
    if created {
        println!("  media secret:     {file} (created; copy it to each signalling server)");
    } else {
        println!("  media secret:     {file}");
    }
    println!();
    println!("Attach a signalling server with:");
    let ca = if scheme == "https" { " --sfu-ca CA.pem" } else { "" };
    println!("  callplus serve --sfu-url {scheme}://{} --media-secret-file {file}{ca}", node.addr());
    println!("Stop with Ctrl-C (or SIGTERM).");
    tokio::select! {
        () = crate::server::shutdown::signal() => {}
        result = node.stopped() => {
            result.context("the SFU relay service failed")?;
            return Ok(());
        }
    }
    node.shutdown().await.context("the SFU relay service failed")?;
    Ok(())
}
