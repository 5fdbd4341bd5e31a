//! The thread the switchboard's driver and every device connection run on.
//!
//! The switchboard is one task by design, and every frame of every device passes through it.
//! On tokio's multi-threaded runtime, a drain that wrote to two gRPC streams woke two tasks
//! (each stream's, then its HTTP/2 connection's), and the runtime woke a parked worker to take
//! the second: a futex, a thread switch and a cache miss per drain, which cost a gRPC call
//! cycle about 1.5 times its CPU on two cores (docs/performance.md, "The signalling thread").
//! Here the driver, the device port's listener and every connection task it spawns (HTTP/2,
//! WebSocket, TLS) share one thread with its own current-thread runtime and I/O driver, so a
//! wake-up between them is a queue push. The SFU, the admin port, the cluster's tasks and push
//! webhooks stay on the main runtime and use the other cores; storage reads and the storage
//! writer run on threads of their own either way.

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// The signalling thread's runtime. Dropping this stops it and waits until it has: whatever
/// still runs on it is dropped on that thread, as tasks are when a runtime stops, before the
/// drop returns (a server dropped without shutdown lets go of its storage before another is
/// opened on the same data).
#[derive(Debug)]
pub(crate) struct SignalThread {
    handle: Handle,
    /// Sending it ends the thread.
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SignalThread {
    /// Starts the thread.
    ///
    /// # Errors
    /// The runtime or the thread could not be created (out of memory or threads).
    pub(crate) fn start() -> std::io::Result<SignalThread> {
        let runtime = Builder::new_current_thread().enable_all().thread_name("callplus-signal").build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("callplus-signal".to_owned()).spawn(move || {
            // Tasks run while this waits; the runtime is dropped here, on its own thread.
            let _ = runtime.block_on(stopped);
            drop(runtime);
            tracing::debug!("signalling thread stopped");
        })?;
        Ok(SignalThread { handle, stop: Some(stop), thread: Some(thread) })
    }

    /// Where to spawn the driver and the device port.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for SignalThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.thread().id() != std::thread::current().id()
        {
            // Only cancelling tasks is left to it: quick.
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Tasks spawned on it run on the one signalling thread, not the caller's runtime, and are
    /// dropped when it stops.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tasks_run_on_the_signalling_thread_and_end_with_it() {
        let thread = SignalThread::start().unwrap();
        let names = thread.handle().spawn(async {
            let first = std::thread::current().name().map(str::to_owned);
            // A task it spawns itself stays there too.
            let inner = tokio::spawn(async { std::thread::current().name().map(str::to_owned) });
            (first, inner.await.unwrap())
        });
        let (first, inner) = names.await.unwrap();
        assert_eq!(first.as_deref(), Some("callplus-signal"));
        assert_eq!(inner.as_deref(), Some("callplus-signal"));

        // A task still waiting when the thread stops is dropped, and its sender with it.
        let (held, mut released) = oneshot::channel::<()>();
        let (started, running) = oneshot::channel::<()>();
        thread.handle().spawn(async move {
            let _held = held;
            let _ = started.send(());
            std::future::pending::<()>().await;
        });
        running.await.unwrap();
        drop(thread);
        // Already dropped when `drop` returns.
        assert_eq!(released.try_recv(), Err(oneshot::error::TryRecvError::Closed));
    }
}
