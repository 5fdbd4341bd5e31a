//! Keeps this node's devices in the Redis presence registry (`serve --redis`), off the driver.
//!
//! The driver only hands small notes to a bounded queue ([`PresenceQueue::note`], never
//! waiting): a session welcomed on a connection, a heartbeat on a connection, a session ended
//! for good. One task turns them into [`Presence`] commands, in order. When Redis is down the
//! commands fail (the connection manager's timeouts bound each one) and the queue may fill:
//! notes are then dropped and counted, and signalling goes on untouched. Nothing is lost for
//! good: the next heartbeat's renewal writes a missing entry back, and an entry whose removal
//! was dropped expires by its TTL.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use callplus_session::switchboard::{ConnId, DevicePresence};
use tokio::sync::mpsc;

use super::metrics::Metrics;
use crate::cluster::Presence;

/// Notes queued for the presence task before further ones are dropped.
pub(crate) const PRESENCE_QUEUE: usize = 4096;

/// What the driver tells the presence task.
#[derive(Debug)]
pub(crate) enum Note {
    /// The session was welcomed on `conn` (fresh or resumed): register the device here.
    /// `registered` fires once the registration was attempted (done or failed).
    Online { conn: ConnId, device: DevicePresence, registered: Option<tokio::sync::oneshot::Sender<()>> },
    /// The device on `conn` sent a heartbeat: renew its entry.
    Heartbeat { conn: ConnId },
    /// The session ended for good: remove the device's entry (if still this session's).
    Ended { device: DevicePresence },
}

/// How long a stopping server waits for the presence task to remove its devices' entries.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The driver's end of the presence queue.
#[derive(Debug)]
pub(crate) struct PresenceQueue {
    tx: mpsc::Sender<Note>,
    metrics: Arc<Metrics>,
    task: tokio::task::JoinHandle<()>,
}

impl PresenceQueue {
    /// Queues a note without waiting; a full queue drops it (counted and logged).
    pub(crate) fn note(&self, note: Note) {
        if let Err(e) = self.tx.try_send(note) {
            self.metrics.count_presence("dropped");
            tracing::debug!(note = ?e.into_inner(), "presence queue full; note dropped");
        }
    }

    /// Closes the queue and waits (bounded by [`CLOSE_TIMEOUT`]) for the notes already queued,
    /// so a stopping server removes its devices' entries instead of leaving them to expire.
    pub(crate) async fn close(self) {
        let PresenceQueue { tx, task, .. } = self;
        drop(tx);
        if tokio::time::timeout(CLOSE_TIMEOUT, task).await.is_err() {
            tracing::warn!(
                "presence registry not updated in time at shutdown; the entries left expire by TTL"
            );
        }
    }
}

/// Starts the presence task; it stops when every [`PresenceQueue`] is dropped.
pub(crate) fn spawn(presence: Presence, metrics: Arc<Metrics>) -> PresenceQueue {
    let (tx, rx) = mpsc::channel(PRESENCE_QUEUE);
    let task = tokio::spawn(run(presence, rx, metrics.clone()));
    PresenceQueue { tx, metrics, task }
}

async fn run(presence: Presence, mut rx: mpsc::Receiver<Note>, metrics: Arc<Metrics>) {
    // Which session each connection carries, so a heartbeat knows what to renew.
    let mut on: HashMap<ConnId, DevicePresence> = HashMap::new();
    // Whether the last command failed: log the first failure and the recovery, not each one.
    let mut failing = false;
    while let Some(note) = rx.recv().await {
        let result = match note {
            Note::Online { conn, device, registered } => {
                // A resumed session leaves its older connection behind.
                on.retain(|_, d| d.session_id != device.session_id);
                let r = presence
                    .register(
                        device.app.as_str(),
                        device.user.as_str(),
                        device.device.as_str(),
                        &device.session_id,
                    )
                    .await;
                on.insert(conn, device);
                if let Some(registered) = registered {
                    let _ = registered.send(());
                }
                r.map(|()| true)
            }
            Note::Heartbeat { conn } => match on.get(&conn) {
                Some(d) => {
                    presence.renew(d.app.as_str(), d.user.as_str(), d.device.as_str(), &d.session_id).await
                }
                None => continue,
            },
            Note::Ended { device } => {
                on.retain(|_, d| d.session_id != device.session_id);
                presence
                    .unregister(
                        device.app.as_str(),
                        device.user.as_str(),
                        device.device.as_str(),
                        &device.session_id,
                    )
                    .await
            }
        };
        match result {
            Ok(_) => {
                metrics.count_presence("ok");
                if failing {
                    failing = false;
                    tracing::info!("presence registry reachable again");
                }
            }
            Err(e) => {
                metrics.count_presence("error");
                if !failing {
                    failing = true;
                    tracing::warn!(error = %e, "presence registry unreachable; signalling goes on, entries are written back on renewal");
                }
            }
        }
    }
}
