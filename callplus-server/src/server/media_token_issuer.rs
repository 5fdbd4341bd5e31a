//! The switchboard's media-token signer: never the same token twice for one participant device.
//!
//! A token is a MAC over (call, user, device, expiry), and the expiry is counted in whole
//! seconds. When a device's SFU connection fails the switchboard sends it a fresh route, and the
//! device's engine restarts its media only if the route changed. A route sent again within the
//! second of the one before would carry the very same token: the device kept its connection to
//! a dead SFU and never offered to the new one (seen when an SFU process was killed right after
//! the call connected). Each device's next token therefore expires at least a second after its
//! last one; a device seldom gets more than a few routes, so its expiry moves by seconds at most.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use callplus_session::{CallId, DeviceId, UserId};
use callplus_sfu::MediaTokens;

/// Devices remembered before the expired ones are forgotten (doubled while most are live).
const FIRST_PRUNE_AT: usize = 1024;

/// Issues media tokens valid for `ttl_s` seconds, each different from the last one of its device.
pub(crate) struct TokenIssuer {
    tokens: MediaTokens,
    ttl_s: u64,
    state: Mutex<Issued>,
}

struct Issued {
    /// The expiry of the last token of each participant device, while it is valid.
    last: HashMap<(CallId, UserId, DeviceId), u64>,
    /// The size at which expired entries are dropped next.
    prune_at: usize,
}

impl TokenIssuer {
    pub(crate) fn new(tokens: MediaTokens, ttl_s: u64) -> Self {
        TokenIssuer {
            tokens,
            ttl_s,
            state: Mutex::new(Issued { last: HashMap::new(), prune_at: FIRST_PRUNE_AT }),
        }
    }

    /// A token for this device of this call, valid `ttl_s` from `now_s` (Unix seconds), or
    /// from just after the device's last token's expiry if that is later.
    pub(crate) fn issue(&self, call: &CallId, user: &UserId, device: &DeviceId, now_s: u64) -> String {
        let wanted = now_s.saturating_add(self.ttl_s);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.last.len() >= state.prune_at {
            state.last.retain(|_, expires| *expires > now_s);
            state.prune_at = (state.last.len() * 2).max(FIRST_PRUNE_AT);
        }
        let key = (call.clone(), user.clone(), device.clone());
        let expires = match state.last.get(&key) {
            Some(&last) if last >= wanted => last.saturating_add(1),
            _ => wanted,
        };
        state.last.insert(key, expires);
        drop(state);
        self.tokens.issue(call, user, device, expires)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn ids(user: &str) -> (CallId, UserId, DeviceId) {
        (CallId::new("call-1").unwrap(), UserId::new(user).unwrap(), DeviceId::new("phone").unwrap())
    }

    #[test]
    fn a_device_routed_again_within_the_second_gets_a_different_valid_token() {
        let issuer = TokenIssuer::new(MediaTokens::new(b"k".repeat(32)), 3600);
        let (call, alice, phone) = ids("alice");
        let now = 1_800_000_000;
        let first = issuer.issue(&call, &alice, &phone, now);
        let second = issuer.issue(&call, &alice, &phone, now);
        let third = issuer.issue(&call, &alice, &phone, now);
        assert_ne!(first, second);
        assert_ne!(second, third);
        let verifier = MediaTokens::new(b"k".repeat(32));
        for token in [&first, &second, &third] {
            verifier.verify(token, &call, &alice, &phone, now).unwrap();
        }
        // Another device is not pushed back by alice's routes.
        let (_, bob, _) = ids("bob");
        assert!(issuer.issue(&call, &bob, &phone, now).starts_with(&format!("v1.{}.", now + 3600)));
        // A second later alice's token expires an hour after it again.
        assert!(issuer.issue(&call, &alice, &phone, now + 10).starts_with(&format!("v1.{}.", now + 3610)));
    }

    #[test]
    fn expired_devices_are_forgotten_once_there_are_many() {
        let issuer = TokenIssuer::new(MediaTokens::new(b"k".repeat(32)), 10);
        let call = CallId::new("call-1").unwrap();
        let phone = DeviceId::new("phone").unwrap();
        for i in 0..FIRST_PRUNE_AT {
            issuer.issue(&call, &UserId::new(&format!("u{i}")).unwrap(), &phone, 100);
        }
        // Long after those expired, the next issue drops them.
        issuer.issue(&call, &UserId::new("late").unwrap(), &phone, 1_000);
        let state = issuer.state.lock().unwrap();
        assert_eq!(state.last.len(), 1);
        assert_eq!(state.prune_at, FIRST_PRUNE_AT);
    }
}
