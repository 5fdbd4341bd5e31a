//! A raw WebSocket signalling connection: hand-made protobuf frames, one per binary message, as a
//! browser would send them, and hostile messages no well-behaved client sends.

use std::net::SocketAddr;
use std::sync::Arc;

use callplus_proto::v1 as pb;
use callplus_proto::v1::client_frame::Body;
use callplus_proto::v1::server_frame::Body as ServerBody;
use callplus_signal::server::{WEBSOCKET_PATH, WEBSOCKET_SUBPROTOCOL};
use futures_util::{SinkExt as _, StreamExt as _};
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, http};

use crate::WAIT;

/// Reads an HTTP response's status line and headers, a byte at a time so that nothing after
/// them is taken from the socket.
async fn read_http_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0];
        let n = timeout(WAIT, tcp.read(&mut byte)).await.expect("the response in time").expect("readable");
        assert_eq!(n, 1, "the connection closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Any byte stream a WebSocket can run over (TCP, TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A WebSocket to the device port.
pub struct WsStream {
    ws: WebSocketStream<Box<dyn Io>>,
    /// The seq of the next reliable request (carried over to a resumed connection).
    pub next_seq: u64,
    /// The next request id.
    pub next_request: u64,
    /// Highest server seq received.
    pub ack: u64,
    /// Events received while waiting for responses, in order, with their seq.
    pub events: Vec<(u64, pb::event::Kind)>,
    /// The server's Close frame, once received.
    pub close: Option<CloseFrame>,
    /// The subprotocol the server selected.
    pub protocol: Option<String>,
    /// The payloads of the WebSocket pongs received, in order.
    pub pongs: Vec<Vec<u8>>,
}

impl WsStream {
    /// Opens `ws://addr/v1/ws` (no Hello yet), offering the callplus subprotocol.
    pub async fn open(addr: SocketAddr) -> WsStream {
        let tcp = TcpStream::connect(addr).await.expect("the device port accepts");
        WsStream::handshake(Box::new(tcp), &format!("ws://{addr}{WEBSOCKET_PATH}"), true).await
    }

    /// Opens the server's advertised WebSocket URL (`ws://…`).
    pub async fn open_url(url: &str) -> WsStream {
        let addr = url.strip_prefix("ws://").and_then(|rest| rest.split('/').next()).expect("a ws:// URL");
        let tcp = TcpStream::connect(addr).await.expect("the device port accepts");
        WsStream::handshake(Box::new(tcp), url, true).await
    }

    /// Opens `wss://localhost:port/v1/ws`, trusting the certificate `ca_pem`.
    pub async fn open_tls(addr: SocketAddr, ca_pem: &str) -> WsStream {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.expect("a PEM certificate")).expect("a usable certificate");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        // What a browser offers for a wss:// URL.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = TcpStream::connect(addr).await.expect("the device port accepts");
        let name = ServerName::try_from("localhost").expect("a server name");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        let url = format!("wss://localhost:{}{WEBSOCKET_PATH}", addr.port());
        WsStream::handshake(Box::new(tls), &url, true).await
    }

    /// Opens `ws://addr/v1/ws` without offering a subprotocol.
    pub async fn open_without_subprotocol(addr: SocketAddr) -> WsStream {
        let tcp = TcpStream::connect(addr).await.expect("the device port accepts");
        WsStream::handshake(Box::new(tcp), &format!("ws://{addr}{WEBSOCKET_PATH}"), false).await
    }

    /// Opens `ws://addr/v1/ws` with a handshake written by hand, then writes `raw` as the
    /// first bytes of the WebSocket: frames no WebSocket library sends (unmasked, reserved
    /// bits set).
    pub async fn open_then_write(addr: SocketAddr, raw: &[u8]) -> WsStream {
        let mut tcp = TcpStream::connect(addr).await.expect("the device port accepts");
        let request = format!(
            "GET {WEBSOCKET_PATH} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.expect("the handshake is written");
        let head = read_http_head(&mut tcp).await;
        assert!(head.starts_with("HTTP/1.1 101"), "the upgrade is accepted: {head}");
        tcp.write_all(raw).await.expect("the raw bytes are written");
        WsStream::upgraded(Box::new(tcp), None).await
    }

    /// The client's end of a connection already upgraded to WebSocket.
    async fn upgraded(io: Box<dyn Io>, protocol: Option<String>) -> WsStream {
        let ws = WebSocketStream::from_raw_socket(
            io,
            tokio_tungstenite::tungstenite::protocol::Role::Client,
            None,
        )
        .await;
        WsStream::new(ws, protocol)
    }

    fn new(ws: WebSocketStream<Box<dyn Io>>, protocol: Option<String>) -> WsStream {
        WsStream {
            ws,
            next_seq: 1,
            next_request: 100,
            ack: 0,
            events: Vec::new(),
            close: None,
            protocol,
            pongs: Vec::new(),
        }
    }

    async fn handshake(io: Box<dyn Io>, url: &str, subprotocol: bool) -> WsStream {
        let mut request = url.into_client_request().expect("a WebSocket request");
        if subprotocol {
            request.headers_mut().insert(
                http::header::SEC_WEBSOCKET_PROTOCOL,
                http::HeaderValue::from_static(WEBSOCKET_SUBPROTOCOL),
            );
        }
        // Large messages allowed so that oversized frames reach the server.
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(16 << 20))
            .max_frame_size(Some(16 << 20));
        let (ws, response) =
            timeout(WAIT, tokio_tungstenite::client_async_with_config(request, io, Some(config)))
                .await
                .expect("the upgrade in time")
                .expect("the upgrade");
        let protocol = response
            .headers()
            .get(http::header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        WsStream::new(ws, protocol)
    }

    /// Opens `http://addr/v1/ws` as WebSocket over HTTP/2 (extended CONNECT, RFC 8441), the
    /// way a browser does on an HTTP/2 connection it already has.
    pub async fn open_h2(addr: SocketAddr) -> WsStream {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let tcp = TcpStream::connect(addr).await.expect("the device port accepts");
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .expect("HTTP/2 handshake");
        tokio::spawn(connection);
        let url = format!("http://{addr}{WEBSOCKET_PATH}");
        let request = |method: http::Method| {
            let mut request = http::Request::builder()
                .method(method.clone())
                .uri(&url)
                .header(http::header::SEC_WEBSOCKET_VERSION, "13")
                .header(http::header::SEC_WEBSOCKET_PROTOCOL, WEBSOCKET_SUBPROTOCOL);
            if method == http::Method::CONNECT {
                request = request.extension(hyper::ext::Protocol::from_static("websocket"));
            }
            request.body(http_body_util::Empty::<bytes::Bytes>::new()).expect("a request")
        };
        // Extended CONNECT may only be sent once the server's SETTINGS allowed it: any answered
        // request proves they arrived (the server sends them first).
        let plain = timeout(WAIT, sender.send_request(request(http::Method::GET))).await;
        plain.expect("answered in time").expect("a plain GET is answered");
        let response = timeout(WAIT, sender.send_request(request(http::Method::CONNECT)))
            .await
            .expect("answered in time")
            .expect("the CONNECT is answered");
        assert_eq!(response.status(), http::StatusCode::OK, "{response:?}");
        let protocol = response
            .headers()
            .get(http::header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let upgraded = hyper::upgrade::on(response).await.expect("the stream is the WebSocket");
        WsStream::upgraded(Box::new(TokioIo::new(upgraded)), protocol).await
    }

    /// Sends a message as is; false if the socket is closed.
    pub async fn send_message(&mut self, message: Message) -> bool {
        self.ws.send(message).await.is_ok()
    }

    /// Sends a frame as one binary message; false if the socket is closed.
    pub async fn send(&mut self, frame: pb::ClientFrame) -> bool {
        self.send_message(Message::Binary(frame.encode_to_vec().into())).await
    }

    /// Sends a Hello (resuming `resume` if given) and returns the Welcome, or the refusal.
    pub async fn hello_resuming(
        &mut self,
        token: &str,
        device: &str,
        resume: Option<pb::Resume>,
    ) -> Result<pb::Welcome, pb::Response> {
        let hello = pb::Hello {
            token: token.to_owned(),
            device_id: device.to_owned(),
            resume,
            client_version: "callplus-tests-ws".into(),
        };
        let frame = pb::ClientFrame { seq: 0, ack: 0, request_id: 1, body: Some(Body::Hello(hello)) };
        assert!(self.send(frame).await, "socket open");
        loop {
            match self.next().await.and_then(|f| f.body) {
                Some(ServerBody::Welcome(w)) => return Ok(w),
                Some(ServerBody::Response(r)) => return Err(r),
                Some(_) => continue,
                None => panic!("the socket closed without Welcome or refusal"),
            }
        }
    }

    /// Sends a fresh Hello and returns the Welcome, or the refusal.
    pub async fn hello(&mut self, token: &str, device: &str) -> Result<pb::Welcome, pb::Response> {
        self.hello_resuming(token, device, None).await
    }

    /// The next frame; `None` when the server closed the socket (its Close is kept in `close`).
    /// A text message from the server fails the test: the server sends binary frames only.
    pub async fn next(&mut self) -> Option<pb::ServerFrame> {
        loop {
            let message = timeout(WAIT, self.ws.next()).await.expect("a frame or the end in time");
            match message? {
                Ok(Message::Binary(bytes)) => {
                    let frame = pb::ServerFrame::decode(bytes).expect("one ServerFrame per message");
                    self.ack = self.ack.max(frame.seq);
                    return Some(frame);
                }
                Ok(Message::Close(close)) => {
                    self.close = close;
                    return None;
                }
                Ok(Message::Pong(payload)) => self.pongs.push(payload.to_vec()),
                Ok(Message::Ping(_) | Message::Frame(_)) => continue,
                Ok(Message::Text(text)) => panic!("the server sent a text message: {text}"),
                Err(_) => return None,
            }
        }
    }

    /// The next `Response`, skipping anything else; `None` if the socket closed first.
    pub async fn next_response(&mut self) -> Option<pb::Response> {
        loop {
            if let ServerBody::Response(r) = self.next().await?.body? {
                return Some(r);
            }
        }
    }

    /// Sends `body` as the next reliable request; returns its request id.
    pub async fn request(&mut self, body: Body) -> u64 {
        let (seq, request_id) = (self.next_seq, self.next_request);
        self.next_seq += 1;
        self.next_request += 1;
        let frame = pb::ClientFrame { seq, ack: self.ack, request_id, body: Some(body) };
        assert!(self.send(frame).await, "socket open");
        request_id
    }

    /// Acknowledges everything received so far (a Ping carrying the ack).
    pub async fn ping(&mut self) {
        let frame =
            pb::ClientFrame { seq: 0, ack: self.ack, request_id: 0, body: Some(Body::Ping(pb::Ping {})) };
        assert!(self.send(frame).await, "socket open");
    }

    /// The response to `request_id` (events on the way are kept in `events`); `None` if the
    /// socket closed first.
    pub async fn response_to(&mut self, request_id: u64) -> Option<pb::Response> {
        loop {
            let frame = self.next().await?;
            match frame.body {
                Some(ServerBody::Response(r)) if r.request_id == request_id => return Some(r),
                Some(ServerBody::Event(pb::Event { kind: Some(kind) })) => {
                    self.events.push((frame.seq, kind))
                }
                _ => {}
            }
        }
    }

    /// The first event matching `pred`, from those already received or the next ones; the
    /// events before it stay in `events`.
    pub async fn event(
        &mut self,
        pred: impl Fn(&pb::event::Kind) -> bool,
        what: &str,
    ) -> (u64, pb::event::Kind) {
        if let Some(i) = self.events.iter().position(|(_, kind)| pred(kind)) {
            return self.events.remove(i);
        }
        loop {
            let frame = self.next().await.unwrap_or_else(|| panic!("the socket closed before {what}"));
            if let Some(ServerBody::Event(pb::Event { kind: Some(kind) })) = frame.body {
                if pred(&kind) {
                    return (frame.seq, kind);
                }
                self.events.push((frame.seq, kind));
            }
        }
    }

    /// Sends `body` and returns the response's code (`Err` with the raw number if unknown).
    pub async fn call(&mut self, body: Body) -> Result<pb::ResultCode, i32> {
        let id = self.request(body).await;
        let r = self.response_to(id).await.expect("a response before the socket closes");
        pb::ResultCode::try_from(r.code).map_err(|_| r.code)
    }

    /// Drops the connection without a Close, as a lost network does.
    pub fn drop_connection(self) {
        drop(self.ws);
    }
}
