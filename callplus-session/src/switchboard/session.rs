//! Device sessions: the per-device numbering, ack/replay buffers, liveness and rate limit.

use crate::error::Error;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use crate::link::{Inbox, Outbox};
use crate::model::ids::{AppKey, DeviceId, UserId};
use crate::model::message::{ClientFrame, ServerBody};

use super::output::ConnId;

/// Most early client frames a session holds while waiting for a gap to fill.
const MAX_HELD_FRAMES: usize = 64;

/// A numbered client frame waiting in the inbox: a converted frame, or one that did not convert
/// (still numbered, so the stream's numbering stays intact; it is answered with its error).
// Short-lived (converted frames pass straight through unless they arrive early), so the size
// difference is cheaper than a box per frame.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(super) enum Inbound {
    Frame(ClientFrame),
    Invalid { request_id: u64, error: Error },
}

/// One device's session. It outlives transport connections (resume).
#[derive(Debug)]
pub(super) struct Session {
    pub(super) id: String,
    pub(super) app: AppKey,
    pub(super) user: UserId,
    pub(super) device: DeviceId,
    pub(super) conn: Option<ConnId>,
    /// Changes whenever `conn` does, so frames queued for an earlier connection are never
    /// written to a later one (even if the driver reused the connection id).
    pub(super) epoch: u32,
    /// The bodies of the frames sent and not acked, shared with their transmissions
    /// ([`crate::model::message::OutFrame`]): transmitting, replaying, acking and dropping them
    /// moves a pointer. A transmission takes its ack when it is made.
    pub(super) outbox: Outbox<Arc<ServerBody>>,
    /// Estimated bytes of the frames in `outbox` ([`super::frame_bytes`]).
    pub(super) outbox_bytes: usize,
    /// The estimated bytes of each frame in `outbox`, in the same order.
    pub(super) sizes: VecDeque<usize>,
    /// The unacked bytes of all the sessions of this session's user (shared among them).
    pub(super) user_bytes: Arc<AtomicUsize>,
    /// Listed in the switchboard's `grown` (its user is over its bytes; checked when the input
    /// ends).
    pub(super) grown: bool,
    /// Orders the client's numbered frames. It carries no payload: the frames that arrive
    /// early wait in `held` (the inbox decides what is held, delivered or dropped), so frames
    /// that arrive in order never leave the stack.
    pub(super) inbox: Inbox<()>,
    pub(super) held: BTreeMap<u64, Inbound>,
    pub(super) last_seen: i64,
    /// Silent past the liveness timeout: its legs were ended; kept only for a resume.
    pub(super) stale: bool,
    /// The deadline of the session's armed timer entry (lazy cancellation: entries with another
    /// deadline are ignored when they fire).
    pub(super) timer_at: i64,
    /// Rate limit bucket in thousandths of a request.
    bucket: i64,
    bucket_at: i64,
    /// Outbox seqs of frames that carry stored offline events, with their storage ids.
    pub(super) offline: Vec<(u64, i64)>,
    /// Storage ids of offline events this session acked recently: a driver may hand them again
    /// before their deletion lands, and they must not be delivered twice.
    pub(super) offline_done: VecDeque<i64>,
    /// On the owner of a call, a device connected to another node: that node. Such a session
    /// has no connection and no outbox; its frames leave as node messages (`cluster`).
    pub(super) remote: Option<String>,
    /// On a device's own node: the other nodes it sent requests to or got frames from, told
    /// when the session ends (`cluster`).
    pub(super) peers: Vec<String>,
    /// When the session was opened (a node of several kicks only sessions older than a login
    /// elsewhere under the single-device policy).
    pub(super) since: i64,
}

/// How many delivered offline ids a session remembers.
const OFFLINE_DONE_KEPT: usize = 1024;

impl Session {
    pub(super) fn new(
        id: String,
        app: AppKey,
        user: UserId,
        device: DeviceId,
        conn: ConnId,
        now_ms: i64,
        burst: u32,
    ) -> Session {
        Session {
            id,
            app,
            user,
            device,
            conn: Some(conn),
            epoch: 0,
            outbox: Outbox::new(),
            outbox_bytes: 0,
            sizes: VecDeque::new(),
            user_bytes: Arc::default(),
            grown: false,
            inbox: Inbox::new(MAX_HELD_FRAMES),
            held: BTreeMap::new(),
            last_seen: now_ms,
            stale: false,
            timer_at: i64::MIN,
            bucket: i64::from(burst.max(1)).saturating_mul(1000),
            bucket_at: now_ms,
            offline: Vec::new(),
            offline_done: VecDeque::new(),
            remote: None,
            peers: Vec::new(),
            since: now_ms,
        }
    }

    /// Whether the stored event `id` is in flight to, or was delivered to, this session.
    pub(super) fn holds_offline(&self, id: i64) -> bool {
        self.offline.iter().any(|(_, o)| *o == id) || self.offline_done.contains(&id)
    }

    /// Records that stored events were acked.
    pub(super) fn offline_delivered(&mut self, ids: &[i64]) {
        for &id in ids {
            if self.offline_done.len() >= OFFLINE_DONE_KEPT {
                self.offline_done.pop_front();
            }
            self.offline_done.push_back(id);
        }
    }

    /// Takes one request from the token bucket; false when the device is over its rate.
    /// `per_second == 0` disables the limit.
    pub(super) fn take_token(&mut self, now_ms: i64, per_second: u32, burst: u32) -> bool {
        if per_second == 0 {
            return true;
        }
        let cap = i64::from(burst.max(1)).saturating_mul(1000);
        let elapsed = now_ms.saturating_sub(self.bucket_at).max(0);
        self.bucket = self.bucket.saturating_add(elapsed.saturating_mul(i64::from(per_second))).min(cap);
        self.bucket_at = self.bucket_at.max(now_ms);
        if self.bucket >= 1000 {
            self.bucket -= 1000;
            true
        } else {
            false
        }
    }

    /// Moves the session to another connection (or none).
    pub(super) fn set_conn(&mut self, conn: Option<ConnId>) -> Option<ConnId> {
        self.epoch = self.epoch.wrapping_add(1);
        std::mem::replace(&mut self.conn, conn)
    }

    /// The ack value for frames sent now.
    pub(super) fn ack(&self) -> u64 {
        self.inbox.last_in_order()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        fn ok<T>(r: Result<T, crate::Error>) -> T {
            r.unwrap_or_else(|e| panic!("{e}"))
        }
        let mut s = Session::new(
            "s".into(),
            ok(AppKey::new("a")),
            ok(UserId::new("u")),
            ok(DeviceId::new("d")),
            1,
            0,
            3,
        );
        assert!((0..3).all(|_| s.take_token(0, 10, 3)));
        assert!(!s.take_token(0, 10, 3));
        assert!(!s.take_token(50, 10, 3));
        assert!(s.take_token(100, 10, 3), "one more after 100 ms at 10/s");
        assert!(s.take_token(i64::MAX, u32::MAX, 3), "no overflow");
    }
}
