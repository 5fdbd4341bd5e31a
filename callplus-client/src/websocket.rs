//! The WebSocket transport (`ws://` and `wss://` endpoints): the same frames as the gRPC stream,
//! one protobuf `ClientFrame` / `ServerFrame` per binary message, as a browser sends them.
//!
//! Useful where only HTTP/1.1 gets through (some proxies and gateways) and to exercise the
//! server's WebSocket path with the same engine as the gRPC one.

use std::sync::Arc;
use std::time::Duration;

use callplus_proto::v1 as pb;
use callplus_session::{Code, Error};
use futures_util::{SinkExt as _, StreamExt as _};
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::TlsOptions;
use crate::transport::{Connecting, Connection, MAX_FRAME_BYTES, Transport, TransportError};

/// The server's WebSocket path, used when the endpoint names none.
const DEFAULT_PATH: &str = "/v1/ws";
/// The subprotocol offered to the server.
const SUBPROTOCOL: &str = "callplus.v1";

/// A byte stream a WebSocket runs over (TCP or TLS).
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Opens a fresh WebSocket per attempt.
pub(crate) struct WsTransport {
    url: String,
    host: String,
    port: u16,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    connect_timeout: Duration,
}

impl WsTransport {
    /// A transport for `endpoint` (`ws://host:port[/path]`, or `wss://…` checked as `tls` says);
    /// without a path, the server's `/v1/ws`.
    pub(crate) fn new(endpoint: &str, connect_timeout: Duration, tls: &TlsOptions) -> Result<Self, Error> {
        let invalid =
            |why: &str| Error::new(Code::ParamError, format!("invalid endpoint {endpoint:?}: {why}"));
        let uri: Uri = endpoint.parse().map_err(|e| invalid(&format!("{e}")))?;
        let secure = match uri.scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            _ => return Err(invalid("not a ws:// or wss:// URL")),
        };
        let host = uri.host().ok_or_else(|| invalid("no host"))?.trim_matches(['[', ']']).to_owned();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let url = match uri.path() {
            "" | "/" => format!("{}{DEFAULT_PATH}", endpoint.trim_end_matches('/')),
            _ => endpoint.to_owned(),
        };
        let tls = match (secure, tls.ca_pem.is_some() || tls.domain.is_some()) {
            (true, _) => Some(client_config(tls, &host)?),
            (false, true) => {
                return Err(Error::new(
                    Code::ParamError,
                    format!("TLS settings are given but {endpoint} is not a wss:// endpoint"),
                ));
            }
            (false, false) => None,
        };
        Ok(WsTransport { url, host, port, tls, connect_timeout })
    }
}

/// rustls settings from the client's TLS options: the given CA or the bundled Mozilla roots,
/// the given name or the endpoint's host, and HTTP/1.1 (the WebSocket upgrade) by ALPN.
fn client_config(
    tls: &TlsOptions,
    host: &str,
) -> Result<(Arc<rustls::ClientConfig>, ServerName<'static>), Error> {
    let invalid =
        |e: &dyn std::fmt::Display| Error::new(Code::ParamError, format!("invalid TLS settings: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                roots.add(cert.map_err(|e| invalid(&e))?).map_err(|e| invalid(&e))?;
            }
            if roots.is_empty() {
                return Err(invalid(&"the CA holds no PEM certificate"));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = tls.domain.as_deref().unwrap_or(host).to_owned();
    let name = ServerName::try_from(name).map_err(|e| invalid(&e))?;
    Ok((Arc::new(config), name))
}

impl Transport for WsTransport {
    fn connect(&self) -> Connecting {
        let (url, host, port, tls) = (self.url.clone(), self.host.clone(), self.port, self.tls.clone());
        let connect_timeout = self.connect_timeout;
        Box::pin(async move {
            let opened = tokio::time::timeout(connect_timeout, open(&url, &host, port, tls)).await;
            let ws = opened.map_err(|_| TransportError::Io(format!("connecting to {url} timed out")))??;
            let (out_tx, out_rx) = mpsc::unbounded_channel();
            let (in_tx, in_rx) = mpsc::unbounded_channel();
            let pump = tokio::spawn(pump(ws, out_rx, in_tx));
            Ok(Connection::new(out_tx, in_rx, pump))
        })
    }
}

type Socket = tokio_tungstenite::WebSocketStream<Box<dyn Io>>;

async fn open(
    url: &str,
    host: &str,
    port: u16,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
) -> Result<Socket, TransportError> {
    let io_error = |e: &dyn std::fmt::Display| TransportError::Io(format!("{url}: {e}"));
    let tcp = TcpStream::connect((host, port)).await.map_err(|e| io_error(&e))?;
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let io: Box<dyn Io> = match tls {
        Some((config, name)) => Box::new(
            tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| io_error(&e))?,
        ),
        None => Box::new(tcp),
    };
    let mut request = url.into_client_request().map_err(|e| io_error(&e))?;
    request.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(SUBPROTOCOL));
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES));
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, io, Some(config))
        .await
        .map_err(|e| io_error(&e))?;
    Ok(ws)
}

/// Moves frames between the queues and the socket until either side ends.
async fn pump(
    ws: Socket,
    mut out_rx: mpsc::UnboundedReceiver<pb::ClientFrame>,
    in_tx: mpsc::UnboundedSender<Result<pb::ServerFrame, TransportError>>,
) {
    let (mut sink, mut stream) = ws.split();
    let mut sending = true;
    loop {
        tokio::select! {
            frame = out_rx.recv(), if sending => {
                let message = match frame {
                    Some(frame) => Message::Binary(frame.encode_to_vec().into()),
                    // The driver closed its half: say goodbye, then read until the server closes.
                    None => {
                        sending = false;
                        Message::Close(None)
                    }
                };
                if let Err(e) = sink.send(message).await {
                    let _ = in_tx.send(Err(TransportError::Io(format!("WebSocket send: {e}"))));
                    return;
                }
            }
            message = stream.next() => {
                let frame = match message {
                    Some(Ok(Message::Binary(bytes))) => pb::ServerFrame::decode(bytes)
                        .map_err(|e| TransportError::Io(format!("undecodable server frame: {e}"))),
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Ok(Message::Text(_))) => {
                        Err(TransportError::Io("the server sent a text message".to_owned()))
                    }
                    Some(Ok(Message::Close(_))) | None => return,
                    Some(Err(e)) => Err(TransportError::Io(format!("WebSocket receive: {e}"))),
                };
                let failed = frame.is_err();
                if in_tx.send(frame).is_err() || failed {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    fn transport(endpoint: &str, tls: &TlsOptions) -> Result<WsTransport, Error> {
        WsTransport::new(endpoint, Duration::from_secs(1), tls)
    }

    #[test]
    fn endpoints_without_a_path_get_the_servers_path() {
        let t = transport("ws://127.0.0.1:7700", &TlsOptions::default()).expect("valid");
        assert_eq!(
            (t.url.as_str(), t.host.as_str(), t.port),
            ("ws://127.0.0.1:7700/v1/ws", "127.0.0.1", 7700)
        );
        let t = transport("ws://[::1]:7700/", &TlsOptions::default()).expect("valid");
        assert_eq!((t.url.as_str(), t.host.as_str()), ("ws://[::1]:7700/v1/ws", "::1"));
        let t = transport("wss://calls.example.org/custom", &TlsOptions::default()).expect("valid");
        assert_eq!((t.url.as_str(), t.port), ("wss://calls.example.org/custom", 443));
        assert!(t.tls.is_some());
    }

    #[test]
    fn tls_settings_on_a_plaintext_endpoint_are_refused() {
        let err = transport("ws://127.0.0.1:7700", &TlsOptions::default().with_domain("example.org"))
            .err()
            .expect("refused");
        assert_eq!(err.code, Code::ParamError);
        let err = transport("http://127.0.0.1:7700", &TlsOptions::default()).err().expect("not ws");
        assert_eq!(err.code, Code::ParamError);
    }
}
