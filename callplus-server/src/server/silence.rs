//! Closing connections that never speak, and accepting without spinning.
//!
//! A TCP connection costs a file descriptor whether or not anything is said on it. A peer that
//! opens connections and stays silent (plain TCP, an HTTP/2 preface and no stream, a request
//! sent a byte at a time) would otherwise hold them for ever, and once the process runs out of
//! descriptors nobody can connect. Every accepted socket is therefore wrapped in a [`Guarded`]
//! stream with a deadline:
//!
//! - device port ([`Mode::UntilGreeted`]): the connection must carry an authenticated Hello
//!   before the deadline; the connection task ([`super::connection`], for gRPC and WebSocket
//!   alike) marks it greeted through [`ConnInfo`], which axum hands to every request on the
//!   connection as its connect-info. A WebSocket keeps its connection's deadline across the
//!   upgrade (the upgraded stream is the same guarded socket);
//! - admin port ([`Mode::PerRequest`]): each request must be complete, and answered, within the
//!   deadline; every response written starts a new one (so an idle keep-alive connection is
//!   closed after the same time).
//!
//! When the deadline passes, reads and writes fail with `TimedOut` and the HTTP server drops
//! the connection.
//!
//! [`GuardedListener`] (an axum [`Listener`](axum::serve::Listener), under TLS or not) accepts
//! with a bound on open connections, and when `accept` fails (out of file descriptors:
//! `EMFILE`) it logs and backs off instead of retrying at once.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};

use super::metrics::Metrics;

/// First pause after a failed `accept`; doubles up to [`MAX_ACCEPT_BACKOFF`].
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// Longest pause after a failed `accept`.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// What a connection must do before its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Be marked greeted (an authenticated Hello); then it has no deadline.
    UntilGreeted,
    /// Get a response written; each one starts a new deadline.
    PerRequest,
}

/// The settings of one listener's guard.
#[derive(Debug, Clone)]
pub(crate) struct Guard {
    pub(crate) mode: Mode,
    pub(crate) timeout: Duration,
    /// `device` or `admin`, for logs and metrics.
    pub(crate) port: &'static str,
    pub(crate) metrics: Arc<Metrics>,
}

/// What the device port tells each request about its connection (axum's connect-info, a
/// request extension `ConnectInfo<ConnInfo>`).
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    pub(crate) peer: Option<SocketAddr>,
    greeted: Arc<AtomicBool>,
}

impl ConnInfo {
    /// The peer's address, when known.
    pub(crate) fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The connection carried an authenticated Hello: it may stay open.
    pub(crate) fn greet(&self) {
        self.greeted.store(true, Ordering::Release);
    }
}

/// A socket that fails once its deadline passes (see the module docs).
#[derive(Debug)]
pub(crate) struct Guarded<S> {
    inner: S,
    info: ConnInfo,
    guard: Guard,
    deadline: Option<Pin<Box<Sleep>>>,
    expired: bool,
    _slot: Option<OwnedSemaphorePermit>,
}

impl<S> Guarded<S> {
    pub(crate) fn new(
        inner: S,
        peer: Option<SocketAddr>,
        guard: Guard,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Self {
        let deadline = Some(Box::pin(tokio::time::sleep(guard.timeout)));
        let info = ConnInfo { peer, greeted: Arc::new(AtomicBool::new(false)) };
        Guarded { inner, info, guard, deadline, expired: false, _slot: slot }
    }

    /// Bytes went out: on the admin port, a response; the next request gets a new deadline.
    fn wrote(&mut self) {
        if self.guard.mode == Mode::PerRequest
            && let Some(deadline) = &mut self.deadline
        {
            deadline.as_mut().reset(Instant::now() + self.guard.timeout);
        }
    }

    /// `Err(TimedOut)` once the deadline has passed.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.expired {
            return Err(timed_out());
        }
        if self.guard.mode == Mode::UntilGreeted && self.info.greeted.load(Ordering::Acquire) {
            self.deadline = None;
        }
        if let Some(deadline) = &mut self.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            self.expired = true;
            self.deadline = None;
            tracing::debug!(port = self.guard.port, peer = ?self.info.peer, "closing a connection that did not speak in time");
            self.guard.metrics.count_silent(self.guard.port);
            return Err(timed_out());
        }
        Ok(())
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the connection did not speak in time")
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.wrote();
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.wrote();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S> Guarded<S> {
    /// The peer address of the connection.
    pub(crate) fn peer(&self) -> Option<SocketAddr> {
        self.info.peer
    }

    /// The connection's info, shared with the requests it carries.
    pub(crate) fn info(&self) -> &ConnInfo {
        &self.info
    }
}

/// axum's connect-info of a plaintext device-port connection.
impl Connected<IncomingStream<'_, GuardedListener>> for ConnInfo {
    fn connect_info(stream: IncomingStream<'_, GuardedListener>) -> Self {
        stream.io().info().clone()
    }
}

/// Accepts on `listener` until `out` is closed, wrapping each connection with `guard` and
/// holding at most `max_connections` open (0 = no bound; further connections wait in the
/// kernel's backlog). Failed accepts are logged and retried after a growing pause.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    guard: Guard,
    max_connections: usize,
    out: mpsc::Sender<Guarded<TcpStream>>,
) {
    let slots = (max_connections > 0).then(|| Arc::new(Semaphore::new(max_connections)));
    let mut backoff = MIN_ACCEPT_BACKOFF;
    let mut warned_full = false;
    loop {
        let slot = match &slots {
            Some(slots) => {
                if slots.available_permits() == 0 && !warned_full {
                    tracing::warn!(
                        port = guard.port,
                        max_connections,
                        "connection limit reached; new connections wait"
                    );
                    warned_full = true;
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => Some(slot),
                        Err(_) => return,
                    },
                    () = out.closed() => return,
                }
            }
            None => None,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = out.closed() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = MIN_ACCEPT_BACKOFF;
                warned_full = false;
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
                let guarded = Guarded::new(stream, Some(peer), guard.clone(), slot);
                if out.send(guarded).await.is_err() {
                    return;
                }
            }
            Err(e) if is_per_connection(&e) => {}
            Err(e) => {
                tracing::error!(
                    port = guard.port,
                    error = %e,
                    retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                    "accept failed (out of file descriptors? see the open-file limit in docs/operations.md); backing off"
                );
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = out.closed() => return,
                }
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
            }
        }
    }
}

/// Errors that concern one connection only (it went away before it was accepted).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// A listener for `axum::serve` (or under a [`TlsListener`](super::tls_listener::TlsListener)):
/// guarded connections from an [`accept_loop`].
pub(crate) struct GuardedListener {
    rx: mpsc::Receiver<Guarded<TcpStream>>,
    local: SocketAddr,
    port: &'static str,
    task: tokio::task::JoinHandle<()>,
}

impl GuardedListener {
    /// Starts accepting on `listener` (bound to `local`). Must be called inside a tokio runtime.
    pub(crate) fn spawn(
        listener: TcpListener,
        local: SocketAddr,
        guard: Guard,
        max_connections: usize,
    ) -> Self {
        let port = guard.port;
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(accept_loop(listener, guard, max_connections, tx));
        GuardedListener { rx, local, port, task }
    }

    /// `device` or `admin`: the port this listener serves, for logs.
    pub(crate) fn port(&self) -> &'static str {
        self.port
    }

    /// The next guarded connection; `None` once the accept loop has stopped.
    pub(crate) async fn next(&mut self) -> Option<Guarded<TcpStream>> {
        self.rx.recv().await
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for GuardedListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = Guarded<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(io) => {
                let peer = io.peer().unwrap_or(self.local);
                (io, peer)
            }
            // The accept loop only ends with the listener itself.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
