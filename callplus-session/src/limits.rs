//! Protocol limits enforced when frames are converted from the wire.

/// Most user ids in one start-call or invite list.
pub const MAX_USER_LIST: usize = 64;
/// Most call ids in one delete request.
pub const MAX_DELETE_IDS: usize = 100;
/// Largest record page.
pub const MAX_RECORD_PAGE: u32 = 100;
/// Largest `extra` attached to a call or invitation.
pub const MAX_EXTRA_BYTES: usize = 4096;
/// Largest encoded push config.
pub const MAX_PUSH_CONFIG_BYTES: usize = 8192;
/// Largest SDP.
pub const MAX_SDP_BYTES: usize = 64 * 1024;
/// Largest ICE candidate line or mid.
pub const MAX_CANDIDATE_BYTES: usize = 1024;
/// Largest token.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Largest session id.
pub const MAX_SESSION_ID_BYTES: usize = 128;
/// Largest encoded frame the server accepts (checked by the transport before decoding).
pub const MAX_FRAME_BYTES: usize = 256 * 1024;
