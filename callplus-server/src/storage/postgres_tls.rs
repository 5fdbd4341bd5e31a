//! TLS to PostgreSQL, chosen by the URL's `sslmode` (rustls: no OpenSSL on the system).
//!
//! `tokio-postgres` parses `sslmode=disable|prefer|require` only and leaves certificate checks to
//! the TLS connector. The engine reads `sslmode` and `sslrootcert` itself, so the URL can use
//! the libpq spellings operators know:
//!
//! - no `sslmode`, `disable`, `allow`, `prefer`: plaintext (no TLS is attempted);
//! - `require`, `verify-full`: TLS, and the server's certificate must chain to `sslrootcert`
//!   (a PEM file) or, without it, to the Mozilla roots, and name the host connected to. This is
//!   stricter than libpq's `require` (which accepts any certificate): an unchecked certificate
//!   would let anyone on the path read the app secrets and records.
//! - `verify-ca` (chain without host name) is refused: use `verify-full`.

use std::sync::Arc;

use tokio_postgres::Config;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;

use super::StorageError;

/// Where to connect and with which TLS.
pub(super) struct Target {
    /// The parsed connection settings (`sslmode` set to what the connector does).
    pub config: Config,
    /// The TLS connector; `None` for plaintext.
    pub tls: Option<MakeRustlsConnect>,
}

/// Parses a `postgres://` URL or a `key=value` string, taking out `sslmode` and `sslrootcert`.
///
/// # Errors
/// [`StorageError::InvalidArgument`] for an unsupported `sslmode`, an unreadable or empty
/// `sslrootcert`, or a URL `tokio-postgres` does not accept (its text is not repeated: it may
/// hold a password).
pub(super) fn parse(url: &str) -> Result<Target, StorageError> {
    let (rest, mode, root_cert) = take_tls_options(url);
    let mut config: Config =
        rest.parse().map_err(|e| StorageError::InvalidArgument(format!("invalid PostgreSQL URL: {e}")))?;
    let verify = match mode.as_deref() {
        None | Some("disable" | "allow" | "prefer") => false,
        Some("require" | "verify-full") => true,
        Some("verify-ca") => {
            return Err(StorageError::InvalidArgument(
                "sslmode=verify-ca is not supported: use verify-full (checks the chain and the host name)"
                    .into(),
            ));
        }
        Some(other) => return Err(StorageError::InvalidArgument(format!("unknown sslmode `{other}`"))),
    };
    if !verify {
        config.ssl_mode(SslMode::Disable);
        return Ok(Target { config, tls: None });
    }
    config.ssl_mode(SslMode::Require);
    Ok(Target { config, tls: Some(MakeRustlsConnect::new(client_config(root_cert.as_deref())?)) })
}

/// The rustls client settings: roots from `root_cert` (a PEM file) or the Mozilla roots.
fn client_config(root_cert: Option<&str>) -> Result<rustls::ClientConfig, StorageError> {
    let invalid = |what: String| StorageError::InvalidArgument(format!("PostgreSQL TLS: {what}"));
    let mut roots = rustls::RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let pem =
                std::fs::read(path).map_err(|e| invalid(format!("cannot read sslrootcert {path}: {e}")))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| invalid(format!("sslrootcert {path}: {e}")))?;
                roots.add(cert).map_err(|e| invalid(format!("sslrootcert {path}: {e}")))?;
            }
            if roots.is_empty() {
                return Err(invalid(format!("sslrootcert {path} holds no PEM certificate")));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Splits `sslmode` and `sslrootcert` out of the URL's query (`postgres://…?sslmode=…`) or the
/// `key=value` string, returning the rest unchanged.
fn take_tls_options(url: &str) -> (String, Option<String>, Option<String>) {
    let mut mode = None;
    let mut root = None;
    let mut take = |key: &str, value: &str| match key {
        "sslmode" => {
            mode = Some(value.to_owned());
            true
        }
        "sslrootcert" => {
            root = Some(percent_decode(value));
            true
        }
        _ => false,
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return (url.to_owned(), None, None);
        };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                !take(key, value)
            })
            .collect();
        let rest = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
        return (rest, mode, root);
    }
    let kept: Vec<&str> = url
        .split_whitespace()
        .filter(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            !take(key.trim(), value.trim())
        })
        .collect();
    (kept.join(" "), mode, root)
}

/// Decodes `%XX` escapes (a file path in a URL query); anything malformed is kept as is.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (b, hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(decoded)) => {
                out.push(decoded);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_are_taken_out_of_both_url_forms() {
        let (rest, mode, root) = take_tls_options(
            "postgres://u@h:5/db?connect_timeout=3&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        );
        assert_eq!(rest, "postgres://u@h:5/db?connect_timeout=3");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));
        let (rest, mode, root) = take_tls_options("host=h user=u sslmode=require dbname=db");
        assert_eq!(rest, "host=h user=u dbname=db");
        assert_eq!(mode.as_deref(), Some("require"));
        assert_eq!(root, None);
        let (rest, mode, _) = take_tls_options("postgres://u@h/db?sslmode=disable");
        assert_eq!((rest.as_str(), mode.as_deref()), ("postgres://u@h/db", Some("disable")));
    }

    #[test]
    fn modes_choose_plaintext_or_checked_tls() {
        let plain = parse("postgres://u@h/db").unwrap();
        assert!(plain.tls.is_none());
        let tls = parse("postgres://u@h/db?sslmode=require").unwrap();
        assert!(tls.tls.is_some());
        assert_eq!(tls.config.get_ssl_mode(), SslMode::Require);
        assert!(matches!(
            parse("postgres://u@h/db?sslmode=verify-ca"),
            Err(StorageError::InvalidArgument(_))
        ));
        assert!(matches!(parse("postgres://u@h/db?sslmode=bogus"), Err(StorageError::InvalidArgument(_))));
        assert!(matches!(
            parse("postgres://u@h/db?sslmode=require&sslrootcert=/nonexistent/ca.pem"),
            Err(StorageError::InvalidArgument(_))
        ));
    }
}
