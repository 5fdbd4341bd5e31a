//! The `callplus` command line: `serve`, `sfu`, `token`, and the terminal softphone (`dial`, `listen`).

pub mod bench;
pub mod serve;
pub mod sfu;
pub mod softphone;
pub mod token;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Sets up `tracing` output on stderr; the filter comes from `RUST_LOG` (default `filter`).
pub fn init_logging(format: LogFormat, filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let result = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let Err(e) = result {
        eprintln!("logging already set up: {e}");
    }
}

/// Client TLS settings from the command line's `--tls-ca FILE` and `--tls-domain NAME`.
///
/// # Errors
/// The CA file cannot be read.
pub fn tls_options(
    ca: Option<&std::path::Path>,
    domain: Option<&str>,
) -> anyhow::Result<crate::client::TlsOptions> {
    use anyhow::Context as _;
    let mut tls = crate::client::TlsOptions::default();
    if let Some(path) = ca {
        let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        tls = tls.with_ca_pem(pem);
    }
    if let Some(domain) = domain {
        tls = tls.with_domain(domain);
    }
    Ok(tls)
}
