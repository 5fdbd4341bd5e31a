//! The table of requests awaiting their response.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::ids::{CallId, TransactionId};
use crate::model::kinds::MediaKind;

use super::event::RequestId;

/// What the engine does when a request's answer (or its timeout) comes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Op {
    /// StartCall: the response creates the current call.
    StartCall,
    /// Accept: the response makes the call current.
    Accept(CallId),
    /// JoinCall: the response creates (or revives) the current call.
    Join(CallId),
    /// Hangup: the call ends here once the server confirms (or the request times out).
    Hangup(CallId),
    /// RequestChangeMediaType: the response names this device's transaction.
    RequestChangeMediaType(CallId),
    /// Cancel or reply: a refused transaction is forgotten.
    Transaction(CallId, TransactionId),
    /// SetMediaState: the response confirms this user's camera / microphone state.
    SetMediaState(CallId, MediaKind, bool),
    /// GetCall: the response refreshes the session.
    GetCall(CallId),
    /// Nothing to do beyond reporting the result.
    Plain,
}

impl Op {
    /// Whether the request, once answered, makes a call current (so no other call may start).
    fn claims_current(&self) -> bool {
        matches!(self, Op::StartCall | Op::Accept(_) | Op::Join(_))
    }
}

/// A request awaiting its response.
#[derive(Debug, Clone)]
pub(super) struct Pending {
    pub(super) op: Op,
    pub(super) deadline_ms: i64,
    /// Sent by the engine on its own: its completion is not reported to the app.
    pub(super) internal: bool,
}

/// Requests by id, with their deadlines in order.
#[derive(Debug, Clone, Default)]
pub(super) struct Requests {
    by_id: BTreeMap<RequestId, Pending>,
    deadlines: BTreeSet<(i64, RequestId)>,
}

impl Requests {
    pub(super) fn insert(&mut self, id: RequestId, pending: Pending) {
        self.deadlines.insert((pending.deadline_ms, id));
        if let Some(old) = self.by_id.insert(id, pending) {
            self.deadlines.remove(&(old.deadline_ms, id));
        }
    }

    pub(super) fn remove(&mut self, id: RequestId) -> Option<Pending> {
        let pending = self.by_id.remove(&id)?;
        self.deadlines.remove(&(pending.deadline_ms, id));
        Some(pending)
    }

    /// The earliest deadline.
    pub(super) fn next_deadline(&self) -> Option<i64> {
        self.deadlines.first().map(|(deadline, _)| *deadline)
    }

    /// Removes and returns one request whose deadline is at or before `now_ms`.
    pub(super) fn pop_expired(&mut self, now_ms: i64) -> Option<(RequestId, Pending)> {
        let &(deadline, id) = self.deadlines.first()?;
        if deadline > now_ms {
            return None;
        }
        self.deadlines.remove(&(deadline, id));
        self.by_id.remove(&id).map(|p| (id, p))
    }

    /// Removes every request, oldest first.
    pub(super) fn drain(&mut self) -> Vec<(RequestId, Pending)> {
        self.deadlines.clear();
        std::mem::take(&mut self.by_id).into_iter().collect()
    }

    /// Whether a request that will make a call current is in flight.
    pub(super) fn claims_current(&self) -> bool {
        self.by_id.values().any(|p| p.op.claims_current())
    }

    /// Whether an accept or join of `call` is in flight (its answer opens the call here).
    pub(super) fn opens(&self, call: &CallId) -> bool {
        self.by_id.values().any(|p| matches!(&p.op, Op::Accept(c) | Op::Join(c) if c == call))
    }

    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }
}
