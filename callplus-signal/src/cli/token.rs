//! `callplus token`: mints a user token from the data directory or explicit app credentials.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Args;

use crate::server::DEFAULT_DATA_DIR;
use crate::storage::{PostgresStorage, SqliteStorage, Storage};
use crate::token;

/// Flags of `callplus token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The user the token is for (1-64 characters of [A-Za-z0-9_-]).
    #[arg(long)]
    pub user: String,
    /// How long the token is valid: seconds, or with a unit (90s, 30m, 24h, 7d).
    #[arg(long, default_value = "24h")]
    pub ttl: String,
    /// Data directory of the server whose app signs the token.
    #[arg(long, env = "CALLPLUS_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Read the app from this PostgreSQL database (the one `serve --postgres` uses) instead of
    /// the data directory.
    #[arg(long, env = "CALLPLUS_POSTGRES", value_name = "URL", hide_env_values = true)]
    pub postgres: Option<String>,
    /// App key; alone it picks an app from the server's storage, with --app-secret the storage
    /// is not read.
    #[arg(long, env = "CALLPLUS_APP_KEY")]
    pub app_key: Option<String>,
    /// App secret (with --app-key).
    #[arg(long, env = "CALLPLUS_APP_SECRET", requires = "app_key", hide_env_values = true)]
    pub app_secret: Option<String>,
}

/// Runs `callplus token`: prints the token on stdout and its expiry on stderr.
///
/// # Errors
/// When the TTL or user id is invalid, the data directory holds no (such) app.
pub fn token(args: &TokenArgs) -> anyhow::Result<()> {
    let ttl = token::parse_ttl(&args.ttl)?;
    let (app_key, app_secret) = match (&args.app_key, &args.app_secret) {
        (Some(key), Some(secret)) => (key.clone(), secret.clone()),
        (key, _) => {
            let (storage, place) = open_storage(args)?;
            let apps = storage.apps()?;
            let app = match key {
                Some(key) => apps.into_iter().find(|a| &a.app_key == key),
                None => apps.into_iter().next(),
            };
            let Some(app) = app else {
                bail!("no such app in {place}");
            };
            (app.app_key, app.app_secret)
        }
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let minted = token::mint(&app_key, &app_secret, &args.user, now, ttl)?;
    println!("{minted}");
    eprintln!("token for user {} of app {app_key}, valid for {ttl} s", args.user);
    Ok(())
}

/// The storage the server keeps its apps in, and how to name it in messages.
fn open_storage(args: &TokenArgs) -> anyhow::Result<(Box<dyn Storage>, String)> {
    if let Some(url) = &args.postgres {
        // The URL may hold a password: never print it.
        let storage = PostgresStorage::open(url).context("cannot open the PostgreSQL storage")?;
        return Ok((Box::new(storage), "the PostgreSQL database".to_owned()));
    }
    if !args.data_dir.join("callplus.db").exists() {
        bail!(
            "no callplus data in {}: start `callplus serve` there first, or pass --postgres URL, \
             or --app-key and --app-secret",
            args.data_dir.display()
        );
    }
    let storage = SqliteStorage::open(&args.data_dir)
        .with_context(|| format!("cannot open {}", args.data_dir.display()))?;
    Ok((Box::new(storage), args.data_dir.display().to_string()))
}
