//! A TLS listener for `axum::serve`, on the device port and on the admin port.
//!
//! axum takes connections from a [`Listener`] one at a time; doing each TLS handshake inside
//! `accept` would let one slow or silent client hold up every other. Handshakes therefore run
//! in their own tasks (bounded in number and time), and `accept` hands out the connections
//! that completed one. The TCP connections come from a [`GuardedListener`], so the deadline of
//! a connection that never speaks runs through the handshake and after it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::silence::{ConnInfo, Guarded, GuardedListener};

type Io = TlsStream<Guarded<TcpStream>>;

/// Longest a client may take to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; further connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 256;

/// Connections of `tcp` that completed a TLS handshake with `acceptor`.
pub(crate) struct TlsListener {
    ready: mpsc::Receiver<(Io, SocketAddr)>,
    local: SocketAddr,
    acceptor_task: JoinHandle<()>,
}

impl TlsListener {
    /// Starts handshaking the connections of `tcp`. Must be called inside a tokio runtime.
    pub(crate) fn new(tcp: GuardedListener, acceptor: TlsAcceptor) -> Self {
        let local = tcp.local_addr();
        let (tx, ready) = mpsc::channel(MAX_HANDSHAKES);
        let acceptor_task = tokio::spawn(accept_loop(tcp, acceptor, tx));
        TlsListener { ready, local, acceptor_task }
    }
}

async fn accept_loop(mut tcp: GuardedListener, acceptor: TlsAcceptor, tx: mpsc::Sender<(Io, SocketAddr)>) {
    // The port this listener serves (`device` or `admin`), named in its logs.
    let port = tcp.port();
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        // The guarded listener backs off on failed accepts itself.
        let Some(stream) = tcp.next().await else { return };
        let peer = stream.peer().unwrap_or(tcp.local_addr());
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(port, %peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(port, %peer, "TLS handshake timed out"),
            }
            drop(permit);
        });
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor_task.abort();
    }
}

impl Listener for TlsListener {
    type Io = Io;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop only ends with the listener itself.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// axum's connect-info of a device-port connection in TLS.
impl Connected<IncomingStream<'_, TlsListener>> for ConnInfo {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        stream.io().get_ref().0.info().clone()
    }
}
