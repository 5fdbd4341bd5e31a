//! The device port's HTTP server: gRPC (HTTP/2) and WebSocket (HTTP/1.1 upgrade, or HTTP/2
//! extended CONNECT) on one listener.
//!
//! The device port is served by axum (hyper's HTTP/1.1 and HTTP/2, chosen per connection): the
//! gRPC method `Signal.Connect` ([`super::grpc`]), the WebSocket upgrade ([`super::websocket`])
//! and the web page are routes of one router, and any other request gets gRPC's
//! `UNIMPLEMENTED`. With TLS, ALPN offers `h2` and `http/1.1`: gRPC clients pick `h2`,
//! WebSocket clients (`wss://`) `http/1.1`.
//!
//! Connections come from a [`GuardedListener`]: bounded in number, accepted without spinning
//! when the process is out of descriptors, and closed unless they carry an authenticated Hello
//! in time ([`super::silence`]). Each request gets the connection's [`ConnInfo`] as axum
//! connect-info, through which the connection task marks the connection greeted.

use axum::serve::Listener;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

use super::silence::{ConnInfo, GuardedListener};
use super::tls_listener::TlsListener;

/// Serves `app` on `listener` (in TLS with `acceptor`) until `stop` fires and every connection
/// has closed.
pub(crate) async fn serve(
    listener: GuardedListener,
    acceptor: Option<TlsAcceptor>,
    app: axum::Router,
    stop: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    match acceptor {
        Some(acceptor) => run(TlsListener::new(listener, acceptor), app, stop).await,
        None => run(listener, app, stop).await,
    }
}

async fn run<L>(listener: L, app: axum::Router, stop: oneshot::Receiver<()>) -> std::io::Result<()>
where
    L: Listener,
    L::Addr: std::fmt::Debug,
    ConnInfo: for<'a> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
{
    axum::serve(listener, app.into_make_service_with_connect_info::<ConnInfo>())
        .with_graceful_shutdown(async {
            let _ = stop.await;
        })
        .await
}
