//! The switchboard's output queue.
//!
//! A reliable frame is queued as a reference into its session's outbox (connection, session,
//! seq) and cloned from there only when the driver polls it, so the frame is not moved through
//! the queue; every other output is queued as is. Order is preserved across both kinds.

use std::collections::VecDeque;

use crate::call::SessionKey;

use super::output::{ConnId, Output};

/// One queued output: a reference to an outbox frame, or the next of `others`.
#[derive(Debug, Clone, Copy)]
pub(super) enum Slot {
    Frame { conn: ConnId, sk: SessionKey, seq: u64, epoch: u32 },
    Other,
}

#[derive(Debug, Default)]
pub(super) struct Outputs {
    slots: VecDeque<Slot>,
    others: VecDeque<Output>,
    /// Whether to note the calls saved or forgotten (a node of several keeps its in-call
    /// marks in step with them).
    pub(super) track_calls: bool,
    /// The calls saved or forgotten since the marks were last brought in step.
    pub(super) touched: Vec<crate::model::ids::CallId>,
    /// Outputs held back until the input's in-call marks are queued, then queued after them
    /// (`Switchboard::finish_input`): the presence lookup of a callee being rung
    /// (`cluster::locate`), so the owner writes the ringing mark before it looks for the
    /// callee's devices (see `NodeOutput::Locate`).
    pub(super) after_marks: Vec<Output>,
}

impl Outputs {
    /// An empty queue; `track_calls` notes the calls saved or forgotten (see `touched`).
    pub(super) fn new(track_calls: bool) -> Outputs {
        Outputs { track_calls, ..Outputs::default() }
    }

    /// Queues an output.
    pub(super) fn push_back(&mut self, output: Output) {
        if self.track_calls {
            match &output {
                Output::SaveCall { call, .. } => self.touched.push(call.call_id.clone()),
                Output::ForgetCall { call_id, .. } => self.touched.push(call_id.clone()),
                _ => {}
            }
        }
        self.others.push_back(output);
        self.slots.push_back(Slot::Other);
    }

    /// Queues the transmission of frame `seq` of session `sk` on `conn` (its connection
    /// `epoch`).
    pub(super) fn frame(&mut self, conn: ConnId, sk: SessionKey, seq: u64, epoch: u32) {
        self.slots.push_back(Slot::Frame { conn, sk, seq, epoch });
    }

    pub(super) fn pop_slot(&mut self) -> Option<Slot> {
        self.slots.pop_front()
    }

    pub(super) fn pop_other(&mut self) -> Option<Output> {
        self.others.pop_front()
    }
}
