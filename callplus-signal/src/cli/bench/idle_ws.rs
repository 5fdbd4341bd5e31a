//! Idle devices over the WebSocket framing (`--idle-client websocket`): one bare socket per
//! device on `/v1/ws`, as a browser page connects, sending its Hello and then only Pings (with
//! its ack) once per heartbeat interval. It measures what a connected web device costs the
//! server, next to the raw gRPC stream of the default mode. The socket code here also carries
//! the raw call-cycle users of `--call-client websocket` ([`super::raw`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use callplus_proto::v1 as pb;
use futures_util::{SinkExt as _, StreamExt as _};
use prost::Message as _;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::idle::{IdleLink, Shared, WELCOME_TIMEOUT, hold, ping};

/// The WebSocket subprotocol the device port speaks.
const SUBPROTOCOL: &str = "callplus.v1";

/// `ws://host:port/v1/ws` for a plain `http://host:port` endpoint; TLS endpoints are refused
/// (the WebSocket modes measure the plain socket; the raw gRPC modes with `--tls` measure what
/// TLS adds).
pub(super) fn websocket_url(endpoint: &str) -> Result<String, String> {
    match endpoint.strip_prefix("http://") {
        Some(rest) => Ok(format!("ws://{}/v1/ws", rest.trim_end_matches('/'))),
        None => Err(format!("the websocket client needs a plain http:// server, not {endpoint}")),
    }
}

/// A device's socket to `/v1/ws`.
pub(super) type Socket = WebSocketStream<TcpStream>;

/// Connects one device and, once welcomed, holds it in a task of its own.
pub(super) async fn connect(
    url: &str,
    source: Option<IpAddr>,
    index: usize,
    token: String,
    shared: &Arc<Shared>,
) {
    match open(url, source, &format!("idle-ws-{index}"), token).await {
        Ok((socket, heartbeat)) => {
            shared.counters.connected.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(hold(WsLink(socket), heartbeat, shared.clone()));
        }
        Err(why) => shared.fail(why),
    }
}

async fn tcp(url: &str, source: Option<IpAddr>) -> Result<TcpStream, String> {
    let authority = url.strip_prefix("ws://").and_then(|r| r.split('/').next()).unwrap_or_default();
    let addr: SocketAddr = authority.parse().map_err(|_| format!("endpoint:{authority} is not host:port"))?;
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() };
    let socket = socket.map_err(|_| "tcp_socket".to_owned())?;
    if let Some(source) = source {
        socket.bind(SocketAddr::new(source, 0)).map_err(|_| "tcp_bind".to_owned())?;
    }
    let stream = socket.connect(addr).await.map_err(|_| "tcp_connect".to_owned())?;
    stream.set_nodelay(true).map_err(|_| "tcp_nodelay".to_owned())?;
    Ok(stream)
}

/// Opens the socket, sends the Hello and waits for the Welcome; returns the heartbeat interval.
pub(super) async fn open(
    url: &str,
    source: Option<IpAddr>,
    device_id: &str,
    token: String,
) -> Result<(Socket, Duration), String> {
    let stream = tcp(url, source).await?;
    let mut request = url.into_client_request().map_err(|e| format!("endpoint:{e}"))?;
    request.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(SUBPROTOCOL));
    // A small read buffer, as the server's: thousands of sockets in one process.
    let config = WebSocketConfig::default().read_buffer_size(4 * 1024);
    let (mut socket, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|_| "websocket_handshake".to_owned())?;
    let hello = pb::Hello {
        token,
        device_id: device_id.to_owned(),
        resume: None,
        client_version: format!("callplus-bench/{}", env!("CARGO_PKG_VERSION")),
    };
    let frame =
        pb::ClientFrame { seq: 0, ack: 0, request_id: 1, body: Some(pb::client_frame::Body::Hello(hello)) };
    if !send(&mut socket, &frame).await {
        return Err("stream_closed".to_owned());
    }
    let frame = match timeout(WELCOME_TIMEOUT, next(&mut socket)).await {
        Err(_) => return Err("timeout:welcome".to_owned()),
        Ok(None) => return Err("closed_before_welcome".to_owned()),
        Ok(Some(Err(_))) => return Err("undecodable_first_frame".to_owned()),
        Ok(Some(Ok(frame))) => frame,
    };
    match frame.body {
        Some(pb::server_frame::Body::Welcome(w)) => {
            Ok((socket, Duration::from_millis(u64::from(w.heartbeat_interval_ms.max(500)))))
        }
        Some(pb::server_frame::Body::Response(r)) => {
            let code = pb::ResultCode::try_from(r.code).map_or("UNKNOWN", |c| c.as_str_name());
            Err(format!("refused:{}", code.strip_prefix("RESULT_CODE_").unwrap_or(code)))
        }
        _ => Err("unexpected_first_frame".to_owned()),
    }
}

/// Sends one frame as a binary message; false once the socket is gone.
pub(super) async fn send(socket: &mut Socket, frame: &pb::ClientFrame) -> bool {
    socket.send(Message::Binary(frame.encode_to_vec().into())).await.is_ok()
}

/// The next server frame: `None` once the socket closed, `Some(Err)` for a binary message that
/// does not decode. Other messages (the server's pings) are skipped.
pub(super) async fn next(socket: &mut Socket) -> Option<Result<pb::ServerFrame, prost::DecodeError>> {
    loop {
        match socket.next().await? {
            Ok(Message::Binary(bytes)) => return Some(pb::ServerFrame::decode(bytes)),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// A web device: its socket.
struct WsLink(Socket);

impl IdleLink for WsLink {
    async fn ping(&mut self, ack: u64) -> bool {
        send(&mut self.0, &ping(ack)).await
    }

    async fn next_seq(&mut self) -> Option<u64> {
        // A frame that does not decode carries no sequence number to ack.
        next(&mut self.0).await.map(|f| f.map_or(0, |f| f.seq))
    }
}
