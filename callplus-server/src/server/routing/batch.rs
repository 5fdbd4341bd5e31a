//! A run of queued routing work done in (at most) three Redis round trips instead of one or
//! more per piece of work.
//!
//! 1. **State**: every write of the run's shared state (in-call marks, a device's presence
//!    entry) and every read (presence lookups, marks) in the order the work was queued. Redis
//!    runs a pipeline's commands in order, so a read sees every write queued before it: the
//!    owner's ringing mark is written before its `Locate` reads presence, a connecting device's
//!    entry before its `FindRinging` reads the marks (docs/architecture.md, "A late device is
//!    never missed"), exactly as when they ran one at a time.
//! 2. **Liveness** of the nodes the run would send to, only for those not seen alive within the
//!    last [`ALIVE_EVERY`](super::ALIVE_EVERY) (usually none).
//! 3. **Messages**: every `XADD` to another node's inbox, in the order the work was queued,
//!    including those that depend on a read of step 1 (an event routed to the nodes presence
//!    named). Messages to one node therefore keep the switchboard's order, which is all the
//!    receiving side relies on. They leave after every state write of the run, never before a
//!    write queued ahead of them.
//!
//! The answers the switchboard waits for (presence lookups, busy checks) go back to the driver
//! after step 2, before the messages are sent.

use std::collections::HashMap;

use callplus_session::switchboard::{CallMark, NodeMessage, NodeOutput, QueryId, RemoteDevice, owner_node};
use callplus_session::{AppKey, CallId, DeviceId, Event, UserId};
use tokio::time::Instant;

use super::{NodeInput, Work, Worker};
use crate::cluster::{Batch, ClusterError, InCallMarks, Outbox, Presence, Replies, Slot};

/// What one piece of work wrote in step 1, and what it does with the answers.
enum Step {
    InCall {
        written: Slot,
    },
    Locate {
        id: QueryId,
        found: Slot,
    },
    CheckBusy {
        id: QueryId,
        marks: Vec<(UserId, Slot)>,
    },
    FindRinging {
        app: AppKey,
        user: UserId,
        device: DeviceId,
        session_id: String,
        registered: [Slot; 2],
        marks: Slot,
    },
    KickElsewhere {
        app: AppKey,
        user: UserId,
        device: DeviceId,
        at_ms: i64,
        found: Slot,
    },
    SignOutElsewhere {
        app: AppKey,
        user: UserId,
        device: Option<DeviceId>,
        found: Slot,
    },
    Route {
        app: AppKey,
        user: UserId,
        event: Event,
        store_if_absent: bool,
        found: Slot,
    },
    Recheck {
        app: AppKey,
        user: UserId,
        found: Slot,
    },
    Send {
        node: String,
        message: Box<NodeMessage>,
    },
}

/// A piece of work after step 1: the nodes it needs alive, and what it sends to them.
enum Resolved {
    /// Nothing more to do.
    Done,
    /// An answer the switchboard waits for, sent before anything else of the run.
    Answer(NodeInput),
    /// Answered once the owners of these marks are known alive.
    Busy { id: QueryId, marked: Vec<(UserId, CallId, String)> },
    /// `message` to each of `nodes` that is alive (`checked`) or to each of them (`!checked`);
    /// `then` says what to do when none of them got it.
    Fanout { nodes: Vec<String>, checked: bool, message: Box<NodeMessage>, then: Unsent },
}

/// What a [`Resolved::Fanout`] that reached no node does.
enum Unsent {
    /// Nothing: reaching no node is an answer too (no device elsewhere, no owner to tell).
    Nothing,
    /// A message the switchboard addressed to one node: counted as unroutable and dropped.
    Drop,
    /// A forwarded request: answer it CALL_NOT_FOUND.
    Refuse,
    /// A routed event: store it for the user (when asked to).
    Store { app: AppKey, user: UserId, event: Box<Event> },
}

impl Worker {
    /// Carries out `run` in order (see the module's doc); takeover locks are taken and given
    /// back on their own, between the runs before and after them.
    pub(super) async fn run_batch(&mut self, run: &mut Vec<Work>) {
        let mut pending = Vec::new();
        for work in run.drain(..) {
            match work {
                Work::Out(NodeOutput::AcquireTakeover { node }) => {
                    self.execute(std::mem::take(&mut pending)).await;
                    self.take_over(node).await;
                }
                Work::Release { node } => {
                    self.execute(std::mem::take(&mut pending)).await;
                    self.release(node).await;
                }
                // Kept in memory; written and renewed together on the renewal tick.
                lease @ (Work::Hold { .. } | Work::DropLease { .. }) => self.lease_work(lease),
                other => pending.push(other),
            }
        }
        self.execute(pending).await;
    }

    async fn execute(&mut self, run: Vec<Work>) {
        if run.is_empty() {
            return;
        }
        let mut state = Batch::default();
        let steps: Vec<Step> = run.into_iter().filter_map(|work| self.write(&mut state, work)).collect();
        let mut replies = match state.run(&mut self.conn).await {
            Ok(replies) => replies,
            Err(e) => Replies::unsent(&e),
        };
        let mut resolved = Vec::with_capacity(steps.len());
        for step in steps {
            match self.resolve(&mut replies, step) {
                Resolved::Answer(input) => self.tell(input).await,
                other => resolved.push(other),
            }
        }
        let alive = self.liveness(&resolved).await;
        let mut messages = Batch::default();
        let mut fanouts = Vec::new();
        for step in resolved {
            match step {
                Resolved::Done | Resolved::Answer(_) => {}
                Resolved::Busy { id, marked } => {
                    let calls = marked
                        .into_iter()
                        .filter(|(_, _, owner)| alive.get(owner).copied().unwrap_or(true))
                        .map(|(user, call, _)| (user, call))
                        .collect();
                    self.tell(NodeInput::BusyFound { id, calls }).await;
                }
                Resolved::Fanout { nodes, checked, message, then } => {
                    let slots: Vec<(String, Slot)> = nodes
                        .into_iter()
                        .filter(|node| !checked || alive.get(node).copied().unwrap_or(true))
                        .map(|node| {
                            let slot = self.outbox.send_in(&mut messages, &node, &message);
                            (node, slot)
                        })
                        .collect();
                    fanouts.push((slots, message, then));
                }
            }
        }
        let mut replies = match messages.run(&mut self.conn).await {
            Ok(replies) => replies,
            Err(e) => Replies::unsent(&e),
        };
        for (slots, message, then) in fanouts {
            let mut sent = false;
            for (node, slot) in slots {
                match Outbox::sent(&mut replies, slot) {
                    Ok(()) => {
                        self.metrics.count_node("sent");
                        sent = true;
                    }
                    Err(e) => {
                        self.metrics.count_node("error");
                        tracing::warn!(%node, error = %e, "message to another node not sent");
                    }
                }
            }
            if !sent {
                self.unsent(*message, then).await;
            }
        }
    }

    /// Step 1 for one piece of work: what it writes and reads.
    fn write(&self, batch: &mut Batch, work: Work) -> Option<Step> {
        let step = match work {
            Work::Out(out) => match out {
                NodeOutput::InCall { app, user, call_id, mark } => {
                    let mark = mark.map(CallMark::as_str);
                    Step::InCall {
                        written: InCallMarks::set_in(
                            batch,
                            app.as_str(),
                            user.as_str(),
                            call_id.as_str(),
                            mark,
                        ),
                    }
                }
                NodeOutput::Locate { id, app, user } => {
                    Step::Locate { id, found: self.presence.lookup_in(batch, app.as_str(), user.as_str()) }
                }
                NodeOutput::CheckBusy { id, app, users } => {
                    let marks = users
                        .into_iter()
                        .map(|user| {
                            let slot = InCallMarks::read_in(batch, app.as_str(), user.as_str());
                            (user, slot)
                        })
                        .collect();
                    Step::CheckBusy { id, marks }
                }
                NodeOutput::FindRinging { app, user, device, session_id } => {
                    // In presence first, then the marks (`NodeOutput::Locate` says why). The
                    // presence task registers the session too, but on its own schedule; this
                    // write (the same entry) orders the two reads.
                    let registered = self.presence.register_in(
                        batch,
                        app.as_str(),
                        user.as_str(),
                        device.as_str(),
                        &session_id,
                    );
                    let marks = InCallMarks::read_in(batch, app.as_str(), user.as_str());
                    Step::FindRinging { app, user, device, session_id, registered, marks }
                }
                NodeOutput::KickElsewhere { app, user, device, at_ms } => {
                    let found = self.presence.lookup_in(batch, app.as_str(), user.as_str());
                    Step::KickElsewhere { app, user, device, at_ms, found }
                }
                NodeOutput::SignOutElsewhere { app, user, device } => {
                    let found = self.presence.lookup_in(batch, app.as_str(), user.as_str());
                    Step::SignOutElsewhere { app, user, device, found }
                }
                NodeOutput::Route { app, user, event, store_if_absent } => {
                    let found = self.presence.lookup_in(batch, app.as_str(), user.as_str());
                    Step::Route { app, user, event, store_if_absent, found }
                }
                NodeOutput::Send { node, message } => Step::Send { node, message },
                // Taken apart by `run_batch`; here for completeness.
                NodeOutput::AcquireTakeover { .. } => return None,
            },
            Work::Recheck { app, user } => {
                let found = self.presence.lookup_in(batch, app.as_str(), user.as_str());
                Step::Recheck { app, user, found }
            }
            Work::Release { .. } | Work::Hold { .. } | Work::DropLease { .. } => return None,
        };
        Some(step)
    }

    /// Step 1's answers for one piece of work.
    fn resolve(&mut self, replies: &mut Replies, step: Step) -> Resolved {
        match step {
            Step::InCall { written } => {
                if let Err(e) = replies.take::<redis::Value>(written) {
                    self.metrics.count_node("error");
                    tracing::warn!(error = %e, "in-call mark not written");
                }
                Resolved::Done
            }
            Step::Locate { id, found } => {
                let failed = "presence lookup failed; only this node's devices are rung";
                let devices: Vec<RemoteDevice> = self
                    .found(replies, found, failed)
                    .into_iter()
                    .filter(|d| d.node_id != self.node.as_str())
                    .filter_map(|d| {
                        Some(RemoteDevice {
                            node: d.node_id,
                            device: DeviceId::new(&d.device_id).ok()?,
                            session_id: d.session_id,
                        })
                    })
                    .collect();
                for d in &devices {
                    self.peers.entry(d.node.clone()).or_insert_with(Instant::now);
                }
                Resolved::Answer(NodeInput::Located { id, devices })
            }
            Step::CheckBusy { id, marks } => {
                let mut marked = Vec::new();
                for (user, slot) in marks {
                    marked.extend(self.marked(replies, &user, slot, CallMark::Connected));
                }
                Resolved::Busy { id, marked }
            }
            Step::FindRinging { app, user, device, session_id, registered, marks } => {
                if let Err(e) = Presence::registered(replies, registered) {
                    tracing::debug!(error = %e, "presence not written before reading the ringing marks");
                }
                let mut owners: Vec<String> = self
                    .marked(replies, &user, marks, CallMark::Ringing)
                    .into_iter()
                    .map(|(_, _, o)| o)
                    .collect();
                owners.sort();
                owners.dedup();
                let message = Box::new(NodeMessage::DeviceOnline { app, user, device, session_id });
                Resolved::Fanout { nodes: owners, checked: true, message, then: Unsent::Nothing }
            }
            Step::KickElsewhere { app, user, device, at_ms, found } => {
                let failed = "presence lookup failed; older logins elsewhere not kicked";
                let nodes = self.other_nodes(replies, found, Some(&device), failed);
                let message = Box::new(NodeMessage::LoggedIn { app, user, device, at_ms });
                Resolved::Fanout { nodes, checked: true, message, then: Unsent::Nothing }
            }
            Step::SignOutElsewhere { app, user, device, found } => {
                let failed = "presence lookup failed; devices on other nodes not signed out";
                let mut nodes: Vec<String> = self
                    .found(replies, found, failed)
                    .into_iter()
                    .filter(|d| d.node_id != self.node.as_str())
                    .filter(|d| device.as_ref().is_none_or(|only| d.device_id == only.as_str()))
                    .map(|d| d.node_id)
                    .collect();
                nodes.sort();
                nodes.dedup();
                let message = Box::new(NodeMessage::SignOut { app, user, device });
                Resolved::Fanout { nodes, checked: true, message, then: Unsent::Nothing }
            }
            Step::Route { app, user, event, store_if_absent, found } => {
                let failed = "presence lookup failed; the event is kept for the user";
                let nodes = self.other_nodes(replies, found, None, failed);
                let message = Box::new(NodeMessage::UserEvent {
                    app: app.clone(),
                    user: user.clone(),
                    event: event.clone(),
                });
                let then = if store_if_absent {
                    Unsent::Store { app, user, event: Box::new(event) }
                } else {
                    Unsent::Nothing
                };
                Resolved::Fanout { nodes, checked: true, message, then }
            }
            Step::Recheck { app, user, found } => {
                let nodes = match Presence::found(replies, found) {
                    Ok(found) => {
                        let mut nodes: Vec<String> = found
                            .into_iter()
                            .map(|d| d.node_id)
                            .filter(|n| n != self.node.as_str())
                            .collect();
                        nodes.sort();
                        nodes.dedup();
                        nodes
                    }
                    Err(_) => Vec::new(),
                };
                let message = Box::new(NodeMessage::OfflineWaiting { app, user });
                Resolved::Fanout { nodes, checked: false, message, then: Unsent::Nothing }
            }
            Step::Send { node, message } => {
                let then = if matches!(*message, NodeMessage::Request { .. }) {
                    Unsent::Refuse
                } else {
                    Unsent::Drop
                };
                Resolved::Fanout { nodes: vec![node], checked: true, message, then }
            }
        }
    }

    /// Step 2: whether each node the run sends to (or counts marks of) is alive, asking Redis
    /// only about those not seen alive within [`ALIVE_EVERY`](super::ALIVE_EVERY). A node Redis
    /// could not tell about counts as alive: the send then fails too, and says so.
    async fn liveness(&mut self, resolved: &[Resolved]) -> HashMap<String, bool> {
        let mut alive = HashMap::new();
        let mut wanted: Vec<&str> = Vec::new();
        for step in resolved {
            match step {
                Resolved::Busy { marked, .. } => {
                    wanted.extend(marked.iter().map(|(_, _, owner)| owner.as_str()))
                }
                Resolved::Fanout { nodes, checked: true, .. } => {
                    wanted.extend(nodes.iter().map(String::as_str))
                }
                _ => {}
            }
        }
        let mut batch = Batch::default();
        let mut asked = Vec::new();
        for node in wanted {
            if alive.contains_key(node) {
                continue;
            }
            alive.insert(node.to_owned(), true);
            if self.peers.get(node).is_none_or(|at| at.elapsed() >= super::ALIVE_EVERY) {
                asked.push((node.to_owned(), Outbox::is_alive_in(&mut batch, node)));
            }
        }
        if asked.is_empty() {
            return alive;
        }
        let mut replies = match batch.run(&mut self.conn).await {
            Ok(replies) => replies,
            Err(e) => Replies::unsent(&e),
        };
        for (node, slot) in asked {
            match Outbox::alive(&mut replies, slot) {
                Ok(true) => {
                    self.peers.insert(node, Instant::now());
                }
                Ok(false) => {
                    alive.insert(node, false);
                }
                Err(_) => {}
            }
        }
        alive
    }

    /// What a message that reached no node does.
    async fn unsent(&mut self, message: NodeMessage, then: Unsent) {
        match then {
            Unsent::Nothing => {}
            Unsent::Drop => {
                self.metrics.count_node("unroutable");
                tracing::debug!(message = ?message, "node cannot be reached; message dropped");
            }
            Unsent::Refuse => {
                self.metrics.count_node("unroutable");
                if let NodeMessage::Request { app, user, session_id, request_id, .. } = message {
                    tracing::debug!("the call's node cannot be reached; request refused");
                    self.tell(NodeInput::Unroutable { app, user, session_id, request_id }).await;
                }
            }
            Unsent::Store { app, user, event } => self.tell(NodeInput::Store { app, user, event }).await,
        }
    }

    /// A presence lookup's devices; none when it failed, which is counted and logged as `failed`.
    fn found(&self, replies: &mut Replies, slot: Slot, failed: &str) -> Vec<crate::cluster::DeviceLocation> {
        Presence::found(replies, slot).unwrap_or_else(|e: ClusterError| {
            self.metrics.count_node("error");
            tracing::warn!(error = %e, "{failed}");
            Vec::new()
        })
    }

    /// The other nodes holding a device of the user (but `except`), by a presence lookup, each
    /// once.
    fn other_nodes(
        &self,
        replies: &mut Replies,
        slot: Slot,
        except: Option<&DeviceId>,
        failed: &str,
    ) -> Vec<String> {
        let mut nodes: Vec<String> = self
            .found(replies, slot, failed)
            .into_iter()
            .filter(|d| d.node_id != self.node.as_str())
            .filter(|d| except.is_none_or(|device| d.device_id != device.as_str()))
            .map(|d| d.node_id)
            .collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }

    /// `user`'s marks `wanted` whose owner is another node, with that owner (this node's own
    /// calls are judged by its switchboard; whether the owner is alive is step 2's). A failed
    /// read finds none: nobody busy, no late ringing.
    fn marked(
        &self,
        replies: &mut Replies,
        user: &UserId,
        slot: Slot,
        wanted: CallMark,
    ) -> Vec<(UserId, CallId, String)> {
        let found = match InCallMarks::marks(replies, slot) {
            Ok(found) => found,
            Err(e) => {
                self.metrics.count_node("error");
                tracing::warn!(error = %e, "in-call marks not read; none counts");
                return Vec::new();
            }
        };
        found
            .into_iter()
            .filter(|(_, mark)| CallMark::parse(mark) == Some(wanted))
            .filter_map(|(call, _)| {
                let call = CallId::new(&call).ok()?;
                let owner = owner_node(&call)?.to_owned();
                (owner != self.node.as_str()).then(|| (user.clone(), call, owner))
            })
            .collect()
    }
}
