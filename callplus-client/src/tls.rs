//! How the client checks a server it reaches over TLS (`https://` endpoints).
//!
//! A plaintext `http://` endpoint with TLS settings is refused rather than silently used
//! without encryption: settings the app made mean it expects the connection to be private.

use callplus_session::{Code, Error};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// Trust settings for `https://` endpoints.
///
/// The default trusts the public web's certificate authorities (the Mozilla root store,
/// bundled, so it behaves the same on every platform) and checks the certificate against the
/// endpoint's host name.
///
/// ```
/// use callplus_client::{ClientOptions, TlsOptions};
///
/// // A server with a certificate from a private CA, reached by IP address.
/// let ca_pem = b"-----BEGIN CERTIFICATE-----\n...".to_vec();
/// let options = ClientOptions::default()
///     .with_tls(TlsOptions::default().with_ca_pem(ca_pem).with_domain("calls.example.internal"));
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM certificates of the authorities to trust instead of the public ones: a private CA,
    /// or the server's own self-signed certificate.
    pub ca_pem: Option<Vec<u8>>,
    /// The name the server's certificate must carry, when it differs from the endpoint's host
    /// (an endpoint given as an IP address, a name behind a tunnel).
    pub domain: Option<String>,
}

impl TlsOptions {
    /// These settings trusting only the authorities in `pem`.
    pub fn with_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// These settings checking the certificate against `domain`.
    pub fn with_domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// Whether anything differs from the defaults.
    fn is_set(&self) -> bool {
        self.ca_pem.is_some() || self.domain.is_some()
    }

    /// Applies these settings to `endpoint`: TLS for `https://`; `http://` stays plaintext but
    /// only when no setting asks for TLS. Public for tools that open raw signalling streams
    /// (the load tool's idle devices) with the client's TLS rules.
    ///
    /// # Errors
    /// `PARAM_ERROR` for TLS settings on an `http://` endpoint or an unusable CA.
    pub fn apply(&self, endpoint: Endpoint) -> Result<Endpoint, Error> {
        match endpoint.uri().scheme_str() {
            Some("https") => {
                let mut config = ClientTlsConfig::new();
                config = match &self.ca_pem {
                    Some(pem) => config.ca_certificate(Certificate::from_pem(pem)),
                    None => config.with_webpki_roots(),
                };
                if let Some(domain) = &self.domain {
                    config = config.domain_name(domain.clone());
                }
                endpoint
                    .tls_config(config)
                    .map_err(|e| Error::new(Code::ParamError, format!("invalid TLS settings: {e}")))
            }
            _ if self.is_set() => Err(Error::new(
                Code::ParamError,
                format!("TLS settings are given but {} is not an https:// endpoint", endpoint.uri()),
            )),
            _ => Ok(endpoint),
        }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    fn endpoint(url: &'static str) -> Endpoint {
        Endpoint::from_static(url)
    }

    #[test]
    fn plaintext_endpoints_refuse_tls_settings() {
        let err = TlsOptions::default()
            .with_domain("example.org")
            .apply(endpoint("http://127.0.0.1:7700"))
            .expect_err("TLS settings on http:// must be refused");
        assert_eq!(err.code, Code::ParamError);
        assert!(err.message.contains("https://"), "{}", err.message);
    }

    #[test]
    fn plaintext_endpoints_without_settings_pass() {
        assert!(TlsOptions::default().apply(endpoint("http://127.0.0.1:7700")).is_ok());
    }

    #[test]
    fn https_endpoints_take_the_default_roots_or_a_ca() {
        assert!(TlsOptions::default().apply(endpoint("https://127.0.0.1:7700")).is_ok());
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
        let with_ca = TlsOptions::default().with_ca_pem(ca.cert.pem()).with_domain("localhost");
        assert!(with_ca.apply(endpoint("https://127.0.0.1:7700")).is_ok());
    }
}
