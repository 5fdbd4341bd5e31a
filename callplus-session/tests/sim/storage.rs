//! In-memory stand-in for the server's storage, answering the switchboard's storage outputs the
//! way the SQLite storage does (same paging rules), so flows can check records and offline
//! delivery end to end.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use callplus_session::switchboard::{OfflineEvent, Output, PushRequest, Query, QueryAnswer, QueryResult};
use callplus_session::{
    AppKey, CallId, CallInfo, CallRecord, DeviceId, Event, RecordOrder, RecordPage, UserId,
};

#[derive(Default)]
pub struct SimStorage {
    /// Records per (app, owner), keyed by sync_time.
    pub records: HashMap<(AppKey, UserId), BTreeMap<i64, CallRecord>>,
    /// Offline events per (app, user), keyed by id.
    pub offline: HashMap<(AppKey, UserId), BTreeMap<i64, Event>>,
    next_offline_id: i64,
    /// Every push requested.
    pub pushes: Vec<PushRequest>,
    /// Saved live calls.
    pub calls: HashMap<(AppKey, CallId), std::sync::Arc<CallInfo>>,
    /// Every record ever written (deletes do not remove from here), in write order.
    pub written: Vec<(AppKey, CallRecord)>,
    /// The presence registry a node of several keeps: device → its live session's id.
    pub presence: HashMap<(AppKey, UserId, DeviceId), String>,
    /// The database several simulated nodes share (`sim::cluster`): when set, every write and
    /// query goes there instead.
    pub shared: Option<Rc<RefCell<SimStorage>>>,
    /// A node of several: its writes about a call carry a fencing token, its creator's (1)
    /// unless it took the call over (`lease_tokens`), as the server's driver does.
    pub fenced: bool,
    /// The fencing tokens of the calls this node took over (`sim::cluster`).
    pub lease_tokens: HashMap<CallId, i64>,
    /// The highest fencing token written per call; a record or snapshot written with a smaller
    /// one is refused, as the server's storage refuses it (`fence` column).
    pub fences: HashMap<(AppKey, CallId), i64>,
    /// The writes refused for their fencing token: (app, call).
    pub refused: Vec<(AppKey, CallId)>,
}

impl SimStorage {
    pub fn apply(&mut self, output: &Output) {
        let token = match output {
            Output::StoreRecord { record, .. } if self.fenced => {
                self.lease_tokens.get(&record.call.call_id).copied().unwrap_or(1)
            }
            Output::SaveCall { call, .. } if self.fenced => {
                self.lease_tokens.get(&call.call_id).copied().unwrap_or(1)
            }
            _ => 0,
        };
        if let Some(shared) = &self.shared {
            shared.borrow_mut().apply_fenced(output, token);
            return;
        }
        self.apply_fenced(output, token);
    }

    /// Applies a write that carries the fencing token `token` (0 on a single node).
    fn apply_fenced(&mut self, output: &Output, token: i64) {
        let call = match output {
            Output::StoreRecord { app, record } => Some((app.clone(), record.call.call_id.clone())),
            Output::SaveCall { app, call } => Some((app.clone(), call.call_id.clone())),
            _ => None,
        };
        if let Some(key) = call {
            let fence = self.fences.entry(key.clone()).or_insert(token);
            if token < *fence {
                self.refused.push(key);
                return;
            }
            *fence = token;
        }
        match output {
            Output::StoreRecord { app, record } => {
                self.written.push((app.clone(), record.clone()));
                self.records
                    .entry((app.clone(), record.owner.clone()))
                    .or_default()
                    .insert(record.sync_time, record.clone());
            }
            Output::StoreOffline { app, user, event } => {
                self.next_offline_id += 1;
                self.offline
                    .entry((app.clone(), user.clone()))
                    .or_default()
                    .insert(self.next_offline_id, event.clone());
            }
            Output::OfflineDelivered { app, user, ids } => {
                if let Some(queue) = self.offline.get_mut(&(app.clone(), user.clone())) {
                    for id in ids {
                        queue.remove(id);
                    }
                }
            }
            Output::Push(push) => self.pushes.push(push.clone()),
            Output::SaveCall { app, call } => {
                self.calls.insert((app.clone(), call.call_id.clone()), call.clone());
            }
            Output::ForgetCall { app, call_id } => {
                self.calls.remove(&(app.clone(), call_id.clone()));
            }
            Output::SessionOnline { device, .. } => {
                let key = (device.app.clone(), device.user.clone(), device.device.clone());
                self.presence.insert(key, device.session_id.clone());
            }
            Output::SessionEnded { device } => {
                // Compare-and-delete: a newer session of the device keeps its entry.
                let key = (device.app.clone(), device.user.clone(), device.device.clone());
                if self.presence.get(&key) == Some(&device.session_id) {
                    self.presence.remove(&key);
                }
            }
            Output::Transmit { .. }
            | Output::Close { .. }
            | Output::Query { .. }
            | Output::SfuSignal { .. }
            | Output::SfuLeave { .. }
            | Output::SfuPause { .. }
            | Output::SfuEndCall { .. }
            | Output::Node(_) => {}
        }
    }

    pub fn offline_for(&self, app: &AppKey, user: &UserId) -> Vec<OfflineEvent> {
        self.offline
            .get(&(app.clone(), user.clone()))
            .map(|q| q.iter().map(|(id, event)| OfflineEvent { id: *id, event: event.clone() }).collect())
            .unwrap_or_default()
    }

    pub fn records_of(&self, app: &AppKey, user: &UserId) -> Vec<CallRecord> {
        self.records
            .get(&(app.clone(), user.clone()))
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn run_query(&mut self, app: &AppKey, user: &UserId, query: &Query) -> QueryResult {
        if let Some(shared) = &self.shared {
            return shared.borrow_mut().run_query(app, user, query);
        }
        let key = (app.clone(), user.clone());
        match query {
            Query::Records { sync_time, count, order } => {
                let all = self.records.get(&key).cloned().unwrap_or_default();
                let count = *count as usize;
                let rows: Vec<CallRecord> = match order {
                    RecordOrder::Desc => all
                        .range(..if *sync_time < 0 { i64::MAX } else { *sync_time })
                        .rev()
                        .map(|(_, r)| r.clone())
                        .collect(),
                    RecordOrder::Asc => all
                        .range(if *sync_time < 0 { i64::MIN } else { sync_time + 1 }..)
                        .map(|(_, r)| r.clone())
                        .collect(),
                };
                let has_more = rows.len() > count;
                let records: Vec<CallRecord> = rows.into_iter().take(count).collect();
                let next = records.last().map_or(*sync_time, |r| r.sync_time);
                Ok(QueryAnswer::Records(RecordPage { records, has_more, sync_time: next }))
            }
            Query::DeleteRecords { call_ids } => {
                if let Some(records) = self.records.get_mut(&key) {
                    records.retain(|_, r| !call_ids.contains(&r.call.call_id));
                }
                Ok(QueryAnswer::Deleted)
            }
            Query::EndedCall { call_id } => {
                let record =
                    self.records.get(&key).and_then(|r| r.values().find(|r| &r.call.call_id == call_id));
                Ok(QueryAnswer::EndedCall(record.map(|r| r.call.clone())))
            }
            Query::OfflineEvents => Ok(QueryAnswer::OfflineEvents(self.offline_for(app, user))),
            Query::DeleteAllRecords => {
                self.records.remove(&key);
                Ok(QueryAnswer::Deleted)
            }
        }
    }
}
