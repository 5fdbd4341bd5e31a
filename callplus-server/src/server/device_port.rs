//! The device port's HTTP server: gRPC (HTTP/2) and WebSocket (HTTP/1.1 upgrade, or HTTP/2
//! extended CONNECT) on one listener.
//!
//! tonic's own server cannot complete an HTTP/1.1 upgrade, so the device port is served by
//! axum (hyper's HTTP/1.1 and HTTP/2, chosen per connection), with tonic's gRPC routes merged
//! into the same router as the WebSocket route. With TLS, ALPN offers `h2` and `http/1.1`:
//! gRPC clients pick `h2`, WebSocket clients (`wss://`) `http/1.1`.

use std::net::SocketAddr;

use axum::serve::{Listener, ListenerExt as _, TapIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

use super::tls_listener::TlsListener;

/// Serves `app` on `listener` (in TLS with `acceptor`) until `stop` fires and every connection
/// has closed.
pub(crate) async fn serve(
    listener: TcpListener,
    local: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    app: axum::Router,
    stop: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    match acceptor {
        Some(acceptor) => {
            let listener = TlsListener::new(listener, local, acceptor).tap_io(|tls| nodelay(tls.get_ref().0));
            run(listener, app, stop).await
        }
        None => run(listener.tap_io(|tcp| nodelay(tcp)), app, stop).await,
    }
}

/// Signalling frames are small and latency-bound.
fn nodelay(tcp: &TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

async fn run<L, F>(
    listener: TapIo<L, F>,
    app: axum::Router,
    stop: oneshot::Receiver<()>,
) -> std::io::Result<()>
where
    L: Listener<Addr = SocketAddr>,
    F: FnMut(&mut L::Io) + Send + 'static,
{
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async {
            let _ = stop.await;
        })
        .await
}
