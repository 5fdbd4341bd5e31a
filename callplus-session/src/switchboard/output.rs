//! What the switchboard asks its driver to do.

use std::sync::Arc;

use crate::error::Error;
use crate::model::ids::{AppKey, CallId, DeviceId, UserId};
use crate::model::kinds::{MediaKind, MediaType, RecordOrder};
use crate::model::message::{Event, MediaPayload, OutFrame};
use crate::model::snapshot::{CallInfo, CallRecord, PushConfig, RecordPage};

/// A transport connection, numbered by the driver. A device session outlives its connections:
/// after a reconnect the same session continues on a new `ConnId`.
pub type ConnId = u64;

/// Identifies a storage query the driver must answer with `complete_query`.
pub type QueryId = u64;

/// An event stored for a user who had no connected device, handed back on the next connect.
#[derive(Debug, Clone, PartialEq)]
pub struct OfflineEvent {
    /// Storage id, used to delete it once a device acked it.
    pub id: i64,
    /// The event.
    pub event: Event,
}

/// A push notification to send to an offline callee through the webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct PushRequest {
    /// An invitation, or its withdrawal.
    pub kind: PushKind,
    /// The app.
    pub app: AppKey,
    /// Who to wake.
    pub callee: UserId,
    /// The call.
    pub call_id: CallId,
    /// Who calls.
    pub caller: UserId,
    /// Media type.
    pub media_type: MediaType,
    /// The caller's push settings.
    pub push_config: Option<Box<PushConfig>>,
    /// The caller's extra data.
    pub extra: String,
}

/// What a push tells the callee's phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PushKind {
    /// A call is ringing for the callee (the push config of `start_call` or `invite`).
    #[default]
    Invite,
    /// The call pushed earlier was cancelled before the callee answered, so the notification
    /// can be withdrawn (the push config of the caller's `hangup`).
    Cancel,
}

/// A storage operation on behalf of a device request.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    /// One page of the user's records.
    Records {
        /// -1 for the first page.
        sync_time: i64,
        /// 1..=100.
        count: u32,
        /// Order.
        order: RecordOrder,
    },
    /// Delete some of the user's records.
    DeleteRecords {
        /// The calls.
        call_ids: Vec<CallId>,
    },
    /// Delete all of the user's records.
    DeleteAllRecords,
    /// The user's own record of a call the switchboard no longer holds (`GetCall` after the
    /// ended call's retention): the call as it ended, or nothing for a call the user was never
    /// in (or whose record the user deleted).
    EndedCall {
        /// The call.
        call_id: CallId,
    },
    /// The user's stored offline events, oldest first, for a device that just connected. The
    /// driver runs it after every storage write queued before it, so an event stored before
    /// the device connected is in the answer; later ones go to the device directly.
    OfflineEvents,
}

/// The driver's answer to a [`Query`].
#[derive(Debug, Clone, PartialEq)]
pub enum QueryAnswer {
    /// A page of records.
    Records(RecordPage),
    /// Records were deleted.
    Deleted,
    /// The user's stored offline events.
    OfflineEvents(Vec<OfflineEvent>),
    /// The call as it ended, from the user's record of it ([`Query::EndedCall`]).
    EndedCall(Option<Arc<CallInfo>>),
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// SDP/ICE from a participant device to the call's SFU: `Sfu::handle_signal`.
    SfuSignal {
        /// The call.
        call_id: CallId,
        /// The sending user (a connected participant of the call).
        from_user: UserId,
        /// The sending device.
        from_device: DeviceId,
        /// What it sent.
        payload: MediaPayload,
    },
    /// A participant device left an SFU call: close its SFU connection.
    SfuLeave {
        /// The call.
        call_id: CallId,
        /// The user.
        user: UserId,
        /// The device it was in the call on.
        device: DeviceId,
    },
    /// A participant of an SFU call turned its camera (video) or microphone (audio) off
    /// (`paused`) or on: the SFU stops forwarding that stream to the others, or resumes it
    /// (with a key frame asked of the publisher, for video).
    SfuPause {
        /// The call.
        call_id: CallId,
        /// The publishing user.
        user: UserId,
        /// The device it is in the call on.
        device: DeviceId,
        /// Which stream.
        kind: MediaKind,
        /// Off (`true`) or on again.
        paused: bool,
    },
    /// An SFU call ended: close all its SFU connections.
    SfuEndCall {
        /// The call.
        call_id: CallId,
    },
    /// Write this frame to the connection. Its body is shared with the session's outbox (a
    /// transmission costs a reference count, not a copy).
    Transmit {
        /// The connection.
        conn: ConnId,
        /// The frame.
        frame: OutFrame,
    },
    /// Close the connection after the frames already transmitted on it.
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// Persist a call record for its owner.
    StoreRecord {
        /// The app.
        app: AppKey,
        /// The record (its `owner` says whose).
        record: CallRecord,
    },
    /// Persist an event for a user with no connected device; hand it back on their next connect.
    StoreOffline {
        /// The app.
        app: AppKey,
        /// The user.
        user: UserId,
        /// The event.
        event: Event,
    },
    /// Stored offline events reached a device and were acked: delete them.
    OfflineDelivered {
        /// The app.
        app: AppKey,
        /// The user.
        user: UserId,
        /// Storage ids.
        ids: Vec<i64>,
    },
    /// Send a push notification.
    Push(PushRequest),
    /// Run a storage query and answer with `complete_query`.
    Query {
        /// The query's id.
        id: QueryId,
        /// The app.
        app: AppKey,
        /// The user it is for.
        user: UserId,
        /// What to do.
        query: Query,
    },
    /// A live call changed: persist its snapshot so a crash can end it cleanly on restart.
    SaveCall {
        /// The app.
        app: AppKey,
        /// The snapshot (shared with the events and responses of the same change).
        call: Arc<CallInfo>,
    },
    /// A call ended: forget its saved snapshot.
    ForgetCall {
        /// The app.
        app: AppKey,
        /// The call.
        call_id: CallId,
    },
    /// A device's session was welcomed on a connection (fresh or resumed): a node of several
    /// registers the device's presence. Emitted only with a node id
    /// ([`SwitchboardConfig::node_id`](super::SwitchboardConfig::node_id)).
    SessionOnline {
        /// The connection now carrying the session.
        conn: ConnId,
        /// The presence entry.
        device: DevicePresence,
    },
    /// A device's session ended for good (expired past its resume window, replaced, kicked,
    /// logged out, dropped as too slow, or the server stopped) — not a lost connection whose
    /// session can still resume: a node of several removes the device's presence. Emitted only
    /// with a node id.
    SessionEnded {
        /// The presence entry.
        device: DevicePresence,
    },
    /// Work across nodes (a node of several only): a message to another node's inbox, a
    /// presence lookup, an event routed to a user's devices on other nodes.
    Node(super::cluster::NodeOutput),
}

/// Which session of which device: what a node of several writes in its presence registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePresence {
    /// The app.
    pub app: AppKey,
    /// The user.
    pub user: UserId,
    /// The device.
    pub device: DeviceId,
    /// The session's id (as told in its Welcome).
    pub session_id: String,
}

/// Keeps `Error` in this module's vocabulary for `complete_query`.
pub type QueryResult = Result<QueryAnswer, Error>;
