//! How the client reaches the server.
//!
//! The driver only needs a pipe of protocol frames: open it, push [`pb::ClientFrame`]s into it,
//! read [`pb::ServerFrame`]s (or the reason it broke) out of it. [`Transport`] is that contract;
//! [`GrpcTransport`] implements it on the tonic bidirectional stream, and
//! [`crate::websocket::WsTransport`] on a WebSocket carrying the same frames.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use callplus_proto::v1 as pb;
use callplus_proto::v1::signal_client::SignalClient;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::{Error, TlsOptions};
use callplus_session::Code;
use callplus_session::error::error_chain;

/// Largest server frame the client accepts (records pages and call lists are the big ones).
pub(crate) const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// Why a transport could not be opened or broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TransportError {
    /// The server could not be reached or the connection broke.
    Io(String),
    /// The server refused the stream with a status (auth failures when the server checks the
    /// token before the stream opens).
    Refused(Error),
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransportError::Io(msg) => f.write_str(msg),
            TransportError::Refused(e) => write!(f, "{e}"),
        }
    }
}

/// One open pipe of frames to the server. Dropping it closes the pipe.
pub(crate) struct Connection {
    /// Frames to send; closing it half-closes the stream.
    pub(crate) tx: Option<mpsc::UnboundedSender<pb::ClientFrame>>,
    /// Frames received, then at most one error; ends when the stream ends.
    pub(crate) rx: mpsc::UnboundedReceiver<Result<pb::ServerFrame, TransportError>>,
    /// The task that moves bytes; aborted when the connection is dropped.
    pump: JoinHandle<()>,
}

impl Connection {
    /// A connection whose `pump` moves frames between the socket and these queues.
    pub(crate) fn new(
        tx: mpsc::UnboundedSender<pb::ClientFrame>,
        rx: mpsc::UnboundedReceiver<Result<pb::ServerFrame, TransportError>>,
        pump: JoinHandle<()>,
    ) -> Self {
        Connection { tx: Some(tx), rx, pump }
    }

    /// Queues a frame. A closed pipe drops it: the reader side reports the break.
    pub(crate) fn send(&self, frame: pb::ClientFrame) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(frame);
        }
    }

    /// Ends the outgoing half after the frames already queued.
    pub(crate) fn close_send(&mut self) {
        self.tx = None;
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

/// A future that opens a connection.
pub(crate) type Connecting = Pin<Box<dyn Future<Output = Result<Connection, TransportError>> + Send>>;

/// Opens connections to one server.
pub(crate) trait Transport: Send + Sync + 'static {
    /// Opens a new connection. The returned [`Connection`] accepts frames at once (the first one
    /// must be the engine's Hello); the server's frames arrive on `rx`.
    fn connect(&self) -> Connecting;
}

/// The gRPC transport: one `Signal.Connect` bidirectional stream over a fresh HTTP/2 connection
/// per attempt, with HTTP/2 keep-alives so a dead TCP path is noticed even when idle.
pub(crate) struct GrpcTransport {
    endpoint: tonic::transport::Endpoint,
}

impl GrpcTransport {
    /// A transport for `endpoint` (`http://host:port`, or `https://host:port` with `tls`).
    pub(crate) fn new(endpoint: &str, connect_timeout: Duration, tls: &TlsOptions) -> Result<Self, Error> {
        let endpoint = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| Error::new(Code::ParamError, format!("invalid endpoint {endpoint:?}: {e}")))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        Ok(GrpcTransport { endpoint: tls.apply(endpoint)? })
    }
}

impl Transport for GrpcTransport {
    fn connect(&self) -> Connecting {
        let endpoint = self.endpoint.clone();
        Box::pin(async move {
            let channel = endpoint.connect().await.map_err(|e| TransportError::Io(error_chain(&e)))?;
            let (out_tx, out_rx) = mpsc::unbounded_channel();
            let (in_tx, in_rx) = mpsc::unbounded_channel();
            let pump = tokio::spawn(async move {
                let mut client = SignalClient::new(channel).max_decoding_message_size(MAX_FRAME_BYTES);
                let mut stream = match client.connect(UnboundedReceiverStream::new(out_rx)).await {
                    Ok(response) => response.into_inner(),
                    Err(status) => {
                        let _ = in_tx.send(Err(status_error(&status)));
                        return;
                    }
                };
                loop {
                    match stream.message().await {
                        Ok(Some(frame)) => {
                            if in_tx.send(Ok(frame)).is_err() {
                                return;
                            }
                        }
                        Ok(None) => return,
                        Err(status) => {
                            let _ = in_tx.send(Err(status_error(&status)));
                            return;
                        }
                    }
                }
            });
            Ok(Connection { tx: Some(out_tx), rx: in_rx, pump })
        })
    }
}

/// Maps a gRPC status to a transport error: authentication refusals (which stop the client)
/// keep the protocol code named in the message, if any; every other status is an I/O failure
/// the client recovers from by reconnecting. (The callplus server refuses in-band, with a
/// Response to the Hello; this covers proxies and gateways that check credentials.)
fn status_error(status: &tonic::Status) -> TransportError {
    let message = status.message().to_owned();
    let code = match status.code() {
        tonic::Code::Unauthenticated => Some(code_in_message(&message).unwrap_or(Code::TokenInvalid)),
        tonic::Code::PermissionDenied => Some(code_in_message(&message).unwrap_or(Code::Forbidden)),
        _ => None,
    };
    match code {
        Some(code) => TransportError::Refused(Error::new(code, message)),
        None => TransportError::Io(format!("{:?}: {}", status.code(), message)),
    }
}

/// Finds a protocol code (8xxxx) mentioned in a status message.
fn code_in_message(message: &str) -> Option<Code> {
    message
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| s.len() == 5 && (s.starts_with("80") || s.starts_with("81")))
        .find_map(|s| s.parse::<i32>().ok().and_then(Code::from_number))
        .filter(|c| *c != Code::Internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_in_status_messages_are_kept() {
        assert_eq!(code_in_message("token expired (code 81003)"), Some(Code::TokenExpired));
        assert_eq!(code_in_message("no code here"), None);
        let e = status_error(&tonic::Status::unauthenticated("bad signature"));
        assert_eq!(e, TransportError::Refused(Error::new(Code::TokenInvalid, "bad signature")));
        assert!(matches!(status_error(&tonic::Status::unavailable("down")), TransportError::Io(_)));
    }
}
