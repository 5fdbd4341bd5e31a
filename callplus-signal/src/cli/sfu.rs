//! `callplus sfu`: the selective forwarding unit as its own process, for media on other
//! machines than the signalling servers (`callplus serve --sfu-url`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use super::LogFormat;
use crate::relay::{MediaSecret, SfuNode, SfuNodeOptions};

/// Where `callplus sfu` listens for signalling servers by default.
pub const DEFAULT_SFU_LISTEN: &str = "127.0.0.1:7702";

/// Flags of `callplus sfu`; each also reads a `CALLPLUS_*` environment variable.
#[derive(Debug, Clone, Args)]
pub struct SfuArgs {
    /// TCP address signalling servers attach to (gRPC `MediaRelay`; plain HTTP/2, so keep it
    /// on a private network).
    #[arg(long, env = "CALLPLUS_SFU_LISTEN", default_value = DEFAULT_SFU_LISTEN)]
    pub listen: String,
    /// The local UDP address media connections bind to (`ip:port`; port 0 for any).
    #[arg(long, env = "CALLPLUS_MEDIA_LISTEN", default_value = "0.0.0.0:0")]
    pub media_listen: String,
    /// File of the media secret shared with the signalling servers; created (random, mode
    /// 0600) when missing. Copy it to each `callplus serve --sfu-url`.
    #[arg(long, env = "CALLPLUS_MEDIA_SECRET_FILE", value_name = "FILE")]
    pub media_secret_file: PathBuf,
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
    let mut node = SfuNode::start(SfuNodeOptions {
        listen: args.listen.clone(),
        media_listen: vec![args.media_listen.clone()],
        secret,
    })
    .await
    .context("cannot start the SFU")?;
    println!("callplus sfu {} is running", env!("CARGO_PKG_VERSION"));
    println!("  relay (servers):  http://{}", node.addr());
    println!("  media (UDP):      {}", args.media_listen);
    let file = args.media_secret_file.display();
    if created {
        println!("  media secret:     {file} (created; copy it to each signalling server)");
    } else {
        println!("  media secret:     {file}");
    }
    println!();
    println!("Attach a signalling server with:");
    println!("  callplus serve --sfu-url http://{} --media-secret-file {file}", node.addr());
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
