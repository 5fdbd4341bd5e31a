//! Conversions between the prost wire messages and the domain model.
//!
//! This is the only place that sees prost's optional fields and raw enum numbers: inbound
//! messages are validated here (ids, enums, required parts, list and size limits) and become
//! typed errors with protocol codes; outbound domain values always convert.

mod client;
mod encode;
mod server;
mod snapshot;

pub use client::FrameError;
pub use encode::{
    SnapshotCache, append_server_frame, append_server_frame_with, call_info_to_vec, call_record_to_vec,
    call_record_to_vec_with, encode_server_frame, server_frame_len, server_frame_to_vec,
};
pub use server::{event_from_wire, event_to_wire, server_frame_from_wire};

use crate::error::{Code, Error};

/// An id (or any string-like value) as an owned `String`, copied straight from its `str`:
/// `to_string()` on an id goes through `Display` and the formatting machinery, which cost the
/// server about 6 % of its instructions per call cycle in the outbound conversions.
pub(crate) fn owned(id: &impl AsRef<str>) -> String {
    id.as_ref().to_owned()
}
use crate::limits;
use crate::model::ids::{CallId, UserId};

/// Validates a list of user ids: not empty, not longer than the limit, no duplicates.
pub(crate) fn user_list(ids: &[String]) -> Result<Vec<UserId>, Error> {
    if ids.is_empty() {
        return Err(Error::new(Code::UserListInvalid, "the user list is empty"));
    }
    if ids.len() > limits::MAX_USER_LIST {
        return Err(Error::new(
            Code::UserListInvalid,
            format!("the user list has {} entries; at most {} are allowed", ids.len(), limits::MAX_USER_LIST),
        ));
    }
    let mut out: Vec<UserId> = Vec::with_capacity(ids.len());
    for id in ids {
        // docs/protocol.md#client-operations: bad ids in a call's user list are a PARAM_ERROR.
        let user = UserId::new(id).map_err(|e| Error::new(Code::ParamError, e.message))?;
        if out.contains(&user) {
            return Err(Error::new(Code::UserListInvalid, format!("user {user} is listed twice")));
        }
        out.push(user);
    }
    Ok(out)
}

pub(crate) fn call_id(s: &str) -> Result<CallId, Error> {
    CallId::new(s)
}

pub(crate) fn bounded(what: &str, s: String, max: usize) -> Result<String, Error> {
    if s.len() > max {
        return Err(Error::new(
            Code::ParamError,
            format!("{what} is {} bytes; at most {max} are allowed", s.len()),
        ));
    }
    Ok(s)
}

pub(crate) fn opt_ms(ms: i64) -> Option<i64> {
    (ms != 0).then_some(ms)
}
