//! The sans-IO core of callplus.
//!
//! Nothing in this crate opens a socket, reads a clock, spawns a thread or touches a file. Time
//! comes in as an argument (`now_ms`, milliseconds since the Unix epoch) and everything the
//! engines want done comes out of `poll_*` methods. The network layer (`callplus-signal`) and the
//! tests drive these engines; see `docs/architecture.md` for the loop.
#![forbid(unsafe_code)]

pub mod call;
pub mod client;
pub mod error;
pub mod limits;
pub mod link;
pub mod media_token;
pub mod model;
pub mod switchboard;
pub mod wire;

pub use error::{Code, Error};
pub use model::ids::{AppKey, CallId, DeviceId, TransactionId, UserId};
pub use model::kinds::{
    CallState, CallType, ChangeMediaTypeResult, Delivery, Direction, EndReason, MediaKind, MediaType,
    ParticipantState, RecordOrder,
};
pub use model::message::{
    ClientBody, ClientFrame, Event, Hello, MediaPayload, OutFrame, Request, Response, ResponseBody, Resume,
    ServerBody, ServerFrame, SfuRoute, StartCall, Welcome,
};
pub use model::snapshot::{
    CallInfo, CallRecord, CallSummary, DeviceLeg, IceServer, Participant, PushConfig, RecordPage,
};
