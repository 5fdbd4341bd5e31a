//! Validated identifiers. A value of these types is always well-formed, so the state machines
//! never re-check ids that came off the wire.

use std::fmt;
use std::sync::Arc;

use crate::error::{Code, Error};

/// Longest user, device, app or call id accepted.
pub const MAX_ID_LEN: usize = 64;

fn is_id_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_LEN && s.bytes().all(is_id_char)
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $code:expr, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `s`: 1–64 characters of `[A-Za-z0-9_-]`.
            pub fn new(s: &str) -> Result<Self, Error> {
                if valid_id(s) {
                    Ok(Self(Arc::from(s)))
                } else {
                    Err(Error::new($code, format!(concat!("invalid ", $what, " {:?}: expected 1-64 characters of [A-Za-z0-9_-]"), truncate(s))))
                }
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

/// Shortens untrusted input before it is echoed in an error message.
fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

id_type!(
    /// A user of an app.
    ///
    /// ```
    /// use callplus_session::UserId;
    /// assert!(UserId::new("alice_01").is_ok());
    /// assert!(UserId::new("no spaces").is_err());
    /// ```
    UserId,
    Code::UserIdInvalid,
    "user id"
);
id_type!(
    /// One installation of the app (a phone, a browser tab, a desktop client).
    DeviceId,
    Code::ParamError,
    "device id"
);
id_type!(
    /// A tenant: everything (users, calls, records) is isolated per app key.
    AppKey,
    Code::ParamError,
    "app key"
);
id_type!(
    /// A server-made call id.
    CallId,
    Code::CallIdInvalid,
    "call id"
);
id_type!(
    /// A change-media-type transaction id.
    TransactionId,
    Code::TransactionIdInvalid,
    "transaction id"
);
