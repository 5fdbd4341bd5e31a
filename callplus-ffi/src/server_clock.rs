//! The server's clock as the C objects read it.
//!
//! Call times (start, first frame, end) are stamped by the server, so talk time "so far" must
//! count to the server's now, not to this machine's: a phone whose clock is a minute off would
//! otherwise show a minute too much or too little.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ::callplus_client::Client;

/// Milliseconds since the Unix epoch, by this machine's clock.
fn local_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// One client's reading of the server's clock, shared by the client and every session made
/// from its events or its current call.
///
/// While the client lives, a reading is the client's own (`callplus_client_server_time_ms`),
/// so a session's talk time and the client's server time always agree. A session may outlive
/// its client (C frees them separately), and must not keep a freed client's connection alive:
/// when the client is freed its last reading is kept and counted on by this machine's
/// monotonic clock.
#[derive(Default)]
pub(crate) struct ServerClock {
    source: Mutex<Source>,
}

/// Where a [`ServerClock`] reads the time.
#[derive(Default)]
enum Source {
    /// Before the client connected: this machine's clock, as the client itself reads before
    /// its first Welcome.
    #[default]
    Local,
    /// The connected client.
    Client(Client),
    /// The freed client's last reading, and when it was taken.
    Last { server_ms: i64, at: Instant },
}

impl ServerClock {
    fn lock(&self) -> MutexGuard<'_, Source> {
        self.source.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the time from `client` from now on.
    pub(crate) fn attach(&self, client: Client) {
        *self.lock() = Source::Client(client);
    }

    /// Lets go of the client (it is being freed): later readings count on from its last one.
    pub(crate) fn detach(&self) {
        let mut source = self.lock();
        if let Source::Client(client) = &*source {
            let server_ms = client.server_time_ms();
            *source = Source::Last { server_ms, at: Instant::now() };
        }
    }

    /// The server's clock now (Unix ms).
    pub(crate) fn now_ms(&self) -> i64 {
        match &*self.lock() {
            Source::Local => local_now_ms(),
            Source::Client(client) => client.server_time_ms(),
            Source::Last { server_ms, at } => {
                server_ms.saturating_add(i64::try_from(at.elapsed().as_millis()).unwrap_or(i64::MAX))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_unattached_clock_reads_this_machine_s_clock() {
        let clock = ServerClock::default();
        let before = local_now_ms();
        let now = clock.now_ms();
        assert!(before <= now && now <= local_now_ms(), "{before} {now}");
        // Detaching without a client changes nothing.
        clock.detach();
        let now = clock.now_ms();
        assert!(before <= now && now <= local_now_ms(), "{before} {now}");
    }

    #[test]
    fn a_detached_clock_counts_on_from_the_last_reading() {
        let clock = ServerClock::default();
        // A server clock far from this machine's: only the last reading can give it.
        let last = 1_000_000;
        *clock.lock() = Source::Last { server_ms: last, at: Instant::now() };
        let first = clock.now_ms();
        let second = clock.now_ms();
        assert!(last <= first && first <= second, "{last} {first} {second}");
        assert!(second < last + 60_000, "counted from the reading, not from this machine's clock");
    }
}
