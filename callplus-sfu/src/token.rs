//! Media tokens: the credential that lets one device of one call connect to the SFU.
//!
//! The signalling server knows who is in a call; the SFU only knows who presents a valid token.
//! A token is `v1.<expiry>.<tag>`: the expiry in Unix seconds and an HMAC-SHA256 tag, under a
//! secret the server and the SFU share, over the call, the user, the device and the expiry. It
//! travels inside the device's SDP offer ([`callplus_session::media_token`]), so the SFU answers
//! (and hands out its ICE credentials and DTLS fingerprint) only to the device it was issued to;
//! another device, or the same one in another call, is refused before any connection exists.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use callplus_session::{CallId, DeviceId, UserId};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const VERSION: &str = "v1";

/// Why a media token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The offer carried no token.
    #[error("no media token in the offer")]
    Missing,
    /// Not a token of ours (wrong format or version).
    #[error("malformed media token")]
    Malformed,
    /// The tag does not match: issued for another call, user or device, or under another secret.
    #[error("media token not issued for this participant")]
    WrongParticipant,
    /// Past its expiry.
    #[error("media token expired")]
    Expired,
}

/// Issues and checks media tokens under one secret.
#[derive(Clone)]
pub struct MediaTokens {
    secret: Vec<u8>,
}

impl std::fmt::Debug for MediaTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MediaTokens { secret: <hidden> }")
    }
}

impl MediaTokens {
    /// Tokens under `secret` (any length; 32 random bytes is right).
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        MediaTokens { secret: secret.into() }
    }

    fn tag(&self, call: &CallId, user: &UserId, device: &DeviceId, expires_s: u64) -> HmacSha256 {
        // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
        let mut mac = match HmacSha256::new_from_slice(&self.secret) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of every length"),
        };
        // Ids are `[A-Za-z0-9_-]`: a newline cannot occur inside one, so the fields cannot shift.
        mac.update(format!("callplus-sfu-media\n{call}\n{user}\n{device}\n{expires_s}").as_bytes());
        mac
    }

    /// A token for this device of this call, valid until `expires_s` (Unix seconds).
    pub fn issue(&self, call: &CallId, user: &UserId, device: &DeviceId, expires_s: u64) -> String {
        let tag = self.tag(call, user, device, expires_s).finalize().into_bytes();
        format!("{VERSION}.{expires_s}.{}", URL_SAFE_NO_PAD.encode(tag.as_slice()))
    }

    /// Checks that `token` was issued for this device of this call and is not expired at
    /// `now_s` (Unix seconds).
    ///
    /// # Errors
    /// The [`TokenError`] that refused it.
    pub fn verify(
        &self,
        token: &str,
        call: &CallId,
        user: &UserId,
        device: &DeviceId,
        now_s: u64,
    ) -> Result<(), TokenError> {
        let mut parts = token.split('.');
        let (Some(VERSION), Some(expires), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let expires_s: u64 = expires.parse().map_err(|_| TokenError::Malformed)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| TokenError::Malformed)?;
        self.tag(call, user, device, expires_s)
            .verify_slice(&tag)
            .map_err(|_| TokenError::WrongParticipant)?;
        if now_s >= expires_s {
            return Err(TokenError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(call: &str, user: &str, device: &str) -> (CallId, UserId, DeviceId) {
        match (CallId::new(call), UserId::new(user), DeviceId::new(device)) {
            (Ok(c), Ok(u), Ok(d)) => (c, u, d),
            _ => panic!("test ids are valid"),
        }
    }

    #[test]
    fn a_token_is_good_for_its_participant_only_and_until_it_expires() {
        let tokens = MediaTokens::new(b"secret".to_vec());
        let (call, alice, phone) = ids("c1", "alice", "phone");
        let token = tokens.issue(&call, &alice, &phone, 1_000);
        assert_eq!(tokens.verify(&token, &call, &alice, &phone, 999), Ok(()));
        assert_eq!(tokens.verify(&token, &call, &alice, &phone, 1_000), Err(TokenError::Expired));

        let (other_call, bob, laptop) = ids("c2", "bob", "laptop");
        for (c, u, d) in [(&other_call, &alice, &phone), (&call, &bob, &phone), (&call, &alice, &laptop)] {
            assert_eq!(tokens.verify(&token, c, u, d, 10), Err(TokenError::WrongParticipant));
        }
        let other_secret = MediaTokens::new(b"other".to_vec());
        assert_eq!(other_secret.verify(&token, &call, &alice, &phone, 10), Err(TokenError::WrongParticipant));
        // A later expiry written into the token breaks its tag.
        let extended = token.replacen("1000", "9000", 1);
        assert_eq!(tokens.verify(&extended, &call, &alice, &phone, 10), Err(TokenError::WrongParticipant));
    }

    #[test]
    fn garbage_is_malformed() {
        let tokens = MediaTokens::new(b"secret".to_vec());
        let (call, alice, phone) = ids("c1", "alice", "phone");
        for bad in ["", "v1", "v1.10", "v2.10.AAAA", "v1.x.AAAA", "v1.10.!!", "v1.10.AA.extra"] {
            assert_eq!(tokens.verify(bad, &call, &alice, &phone, 0), Err(TokenError::Malformed), "{bad:?}");
        }
    }
}
