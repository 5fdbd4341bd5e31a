//! TLS on the device port (gRPC and WebSocket) and the admin API.
//!
//! Devices carry tokens and call metadata; anything beyond a trusted network needs the
//! stream encrypted. The server terminates TLS itself (rustls) so a single
//! binary is enough; a TLS-terminating proxy in front still works with plaintext here.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::ServerError;

/// The certificate chain and private key the device port (and the admin API) present.
///
/// ```no_run
/// # async fn run() -> Result<(), callplus_server::server::ServerError> {
/// use callplus_server::server::{Server, ServerTls};
///
/// let tls = ServerTls::from_files("/etc/callplus/cert.pem".as_ref(), "/etc/callplus/key.pem".as_ref())?;
/// let server = Server::builder().listen("0.0.0.0:7700").tls(tls).start().await?;
/// println!("devices connect to {}", server.grpc_url());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ServerTls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never reaches a log.
        f.debug_struct("ServerTls").field("cert_pem_bytes", &self.cert_pem.len()).finish_non_exhaustive()
    }
}

impl ServerTls {
    /// A PEM certificate chain (leaf first) and its PEM private key (PKCS#8, PKCS#1 or SEC1).
    /// They are checked when the server starts.
    pub fn from_pem(cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        ServerTls { cert_pem: cert_pem.into(), key_pem: key_pem.into() }
    }

    /// Reads the certificate chain and the key from PEM files.
    ///
    /// # Errors
    /// [`ServerError::Tls`] when a file cannot be read.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, ServerError> {
        let read = |path: &Path, what: &str| {
            std::fs::read(path)
                .map_err(|e| ServerError::Tls(format!("cannot read the {what} {}: {e}", path.display())))
        };
        Ok(ServerTls::from_pem(read(cert, "certificate")?, read(key, "private key")?))
    }

    /// The same certificate and key for a tonic server (the SFU process's relay service).
    pub(crate) fn tonic_config(&self) -> tonic::transport::ServerTlsConfig {
        let identity = tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem);
        tonic::transport::ServerTlsConfig::new().identity(identity)
    }

    /// A rustls acceptor (HTTP/2 or HTTP/1.1 by ALPN), with the certificate
    /// and key parsed and matched now.
    pub(super) fn acceptor(&self) -> Result<TlsAcceptor, ServerError> {
        let invalid =
            |what: &str, e: &dyn std::fmt::Display| ServerError::Tls(format!("invalid {what}: {e}"));
        let chain = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("certificate", &e))?;
        if chain.is_empty() {
            return Err(ServerError::Tls("the certificate file holds no PEM certificate".to_owned()));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(|e| invalid("private key", &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("TLS settings", &e))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| invalid("certificate or key", &e))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}
