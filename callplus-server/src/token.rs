//! HMAC-signed user tokens and app credentials.
//!
//! A token proves that the app's backend (which holds the app secret) let a user connect. It has
//! three dot-separated parts:
//!
//! ```text
//! cp1.<base64url-nopad(payload JSON)>.<base64url-nopad(HMAC-SHA256(app_secret, "cp1." + payload_b64))>
//! ```
//!
//! with the payload `{"app":app_key,"uid":user_id,"iat":unix_secs,"exp":unix_secs,"nonce":hex}`.
//!
//! The server first calls [`peek_app_key`] to learn which app's secret to check with, then
//! [`verify`]. This module never reads the clock: the caller passes the current time in.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use callplus_session::Code;
use hmac::{Hmac, KeyInit, Mac};
use rand::Rng as _;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The version prefix of every token this module mints.
const PREFIX: &str = "cp1.";

/// Tokens longer than this (in bytes) are rejected before any decoding.
pub const MAX_TOKEN_LEN: usize = 4096;

/// The longest user id or app key, in characters.
pub const MAX_ID_LEN: usize = 64;

/// Length in bytes of an HMAC-SHA256 tag.
const TAG_LEN: usize = 32;

/// Why a token could not be minted, parsed or verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token does not have the expected shape: wrong prefix or parts, bad base64, bad JSON,
    /// or a payload field (user id, app key) that is not valid.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The signature does not match the payload under this app secret.
    #[error("token signature does not verify")]
    BadSignature,
    /// The token was valid but its expiry has passed.
    #[error("token expired at {expired_at} (unix seconds)")]
    Expired {
        /// When the token expired, in seconds since the Unix epoch.
        expired_at: u64,
    },
    /// An argument given to mint a token (or a TTL string) is not valid.
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

impl TokenError {
    /// The protocol result code for this error: 81002 (`TOKEN_INVALID`) or 81003
    /// (`TOKEN_EXPIRED`).
    pub fn code_number(&self) -> i32 {
        match self {
            TokenError::Expired { .. } => Code::TokenExpired.number(),
            TokenError::Malformed(_) | TokenError::BadSignature | TokenError::InvalidInput(_) => {
                Code::TokenInvalid.number()
            }
        }
    }
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// The app the token was minted for.
    pub app_key: String,
    /// The user the token names.
    pub user_id: String,
    /// When the token was minted, in seconds since the Unix epoch.
    pub issued_at: u64,
    /// When the token stops being valid, in seconds since the Unix epoch.
    pub expires_at: u64,
}

/// An app's key (public, names the tenant) and secret (signs its tokens).
#[derive(Clone, PartialEq, Eq)]
pub struct AppCredentials {
    /// The public app key, e.g. `app_Q3x…`.
    pub app_key: String,
    /// The secret used to sign the app's tokens.
    pub app_secret: String,
}

impl std::fmt::Debug for AppCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret in logs.
        f.debug_struct("AppCredentials")
            .field("app_key", &self.app_key)
            .field("app_secret", &"<redacted>")
            .finish()
    }
}

/// The JSON payload carried by a token.
#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    app: String,
    uid: String,
    iat: u64,
    exp: u64,
    nonce: String,
}

/// Whether `s` is 1–64 characters of `[A-Za-z0-9_-]` (the rule for user ids and app keys).
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Mints a token for `user_id` of app `app_key`, valid from `issued_at_unix_secs` for `ttl_secs`.
///
/// # Errors
/// [`TokenError::InvalidInput`] when the app key or user id is not 1–64 characters of
/// `[A-Za-z0-9_-]`, the secret is empty, or the TTL is zero or overflows.
pub fn mint(
    app_key: &str,
    app_secret: &str,
    user_id: &str,
    issued_at_unix_secs: u64,
    ttl_secs: u64,
) -> Result<String, TokenError> {
    if !is_valid_id(app_key) {
        return Err(TokenError::InvalidInput("app key must be 1-64 characters of [A-Za-z0-9_-]".into()));
    }
    if !is_valid_id(user_id) {
        return Err(TokenError::InvalidInput("user id must be 1-64 characters of [A-Za-z0-9_-]".into()));
    }
    if app_secret.is_empty() {
        return Err(TokenError::InvalidInput("app secret is empty".into()));
    }
    if ttl_secs == 0 {
        return Err(TokenError::InvalidInput("ttl must be positive".into()));
    }
    let exp = issued_at_unix_secs
        .checked_add(ttl_secs)
        .ok_or_else(|| TokenError::InvalidInput("issued_at + ttl overflows".into()))?;
    let nonce_bytes: [u8; 16] = rand::rng().random();
    let payload = Payload {
        app: app_key.to_owned(),
        uid: user_id.to_owned(),
        iat: issued_at_unix_secs,
        exp,
        nonce: hex(&nonce_bytes),
    };
    let json = serde_json::to_vec(&payload)
        .map_err(|e| TokenError::InvalidInput(format!("cannot encode payload: {e}")))?;
    let payload_b64 = URL_SAFE_NO_PAD.encode(json);
    let mut mac = new_mac(app_secret)?;
    mac.update(PREFIX.as_bytes());
    mac.update(payload_b64.as_bytes());
    let tag = mac.finalize().into_bytes();
    Ok(format!("{PREFIX}{payload_b64}.{}", URL_SAFE_NO_PAD.encode(tag.as_slice())))
}

/// Reads the app key from a token **without verifying it**, so the caller can look up the
/// secret to [`verify`] it with. Never trust anything else from an unverified token.
///
/// # Errors
/// [`TokenError::Malformed`] when the token cannot be parsed.
pub fn peek_app_key(token: &str) -> Result<String, TokenError> {
    let parts = split(token)?;
    let payload = decode_payload(parts.payload_b64)?;
    Ok(payload.app)
}

/// Verifies a token's signature with `app_secret` and its expiry against `now_unix_secs`.
///
/// The token's shape is checked first, then its signature (in constant time), then its expiry.
///
/// # Errors
/// [`TokenError::Malformed`] for a token that cannot be parsed, [`TokenError::BadSignature`]
/// when the signature does not match, [`TokenError::Expired`] when `now_unix_secs` is at or
/// past the expiry, [`TokenError::InvalidInput`] when `app_secret` is empty.
pub fn verify(token: &str, app_secret: &str, now_unix_secs: u64) -> Result<TokenClaims, TokenError> {
    let parts = split(token)?;
    // The whole shape is checked first (peek_app_key parses it anyway), so garbage is always
    // Malformed and only a well-formed token with a wrong signature is BadSignature.
    let payload = decode_payload(parts.payload_b64)?;
    let tag = URL_SAFE_NO_PAD
        .decode(parts.signature_b64)
        .map_err(|_| TokenError::Malformed("signature is not base64url".into()))?;
    if tag.len() != TAG_LEN {
        return Err(TokenError::Malformed("signature has the wrong length".into()));
    }
    if app_secret.is_empty() {
        return Err(TokenError::InvalidInput("app secret is empty".into()));
    }
    let mut mac = new_mac(app_secret)?;
    mac.update(PREFIX.as_bytes());
    mac.update(parts.payload_b64.as_bytes());
    mac.verify_slice(&tag).map_err(|_| TokenError::BadSignature)?;
    if now_unix_secs >= payload.exp {
        return Err(TokenError::Expired { expired_at: payload.exp });
    }
    Ok(TokenClaims {
        app_key: payload.app,
        user_id: payload.uid,
        issued_at: payload.iat,
        expires_at: payload.exp,
    })
}

/// Makes a new app key (`app_` + 16 random alphanumerics) and secret (43 characters: base64url
/// of 32 random bytes).
pub fn generate_app() -> AppCredentials {
    let mut rng = rand::rng();
    let suffix: String = (&mut rng).sample_iter(Alphanumeric).take(16).map(char::from).collect();
    let secret: [u8; 32] = rng.random();
    AppCredentials { app_key: format!("app_{suffix}"), app_secret: URL_SAFE_NO_PAD.encode(secret) }
}

/// Parses a time-to-live: plain seconds (`"3600"`) or a number with a unit suffix `s`, `m`, `h`
/// or `d` (`"90s"`, `"30m"`, `"24h"`, `"7d"`).
///
/// # Errors
/// [`TokenError::InvalidInput`] for an empty, non-numeric, zero or overflowing value, or an
/// unknown unit.
pub fn parse_ttl(s: &str) -> Result<u64, TokenError> {
    let s = s.trim();
    let bad = || TokenError::InvalidInput(format!("invalid ttl {s:?}: use e.g. 3600, 90s, 30m, 24h, 7d"));
    let (digits, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c.to_ascii_lowercase()),
        Some(_) => (s, 's'),
        None => return Err(bad()),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    let secs = n.checked_mul(mult).ok_or_else(bad)?;
    if secs == 0 {
        return Err(bad());
    }
    Ok(secs)
}

/// The two base64 parts of a token, still encoded.
struct Parts<'a> {
    payload_b64: &'a str,
    signature_b64: &'a str,
}

fn split(token: &str) -> Result<Parts<'_>, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed(format!("token longer than {MAX_TOKEN_LEN} bytes")));
    }
    let rest =
        token.strip_prefix(PREFIX).ok_or_else(|| TokenError::Malformed("missing cp1. prefix".into()))?;
    let mut it = rest.split('.');
    match (it.next(), it.next(), it.next()) {
        (Some(payload_b64), Some(signature_b64), None)
            if !payload_b64.is_empty() && !signature_b64.is_empty() =>
        {
            Ok(Parts { payload_b64, signature_b64 })
        }
        _ => Err(TokenError::Malformed("expected cp1.<payload>.<signature>".into())),
    }
}

fn decode_payload(payload_b64: &str) -> Result<Payload, TokenError> {
    let json = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|_| TokenError::Malformed("payload is not base64url".into()))?;
    let payload: Payload = serde_json::from_slice(&json)
        .map_err(|e| TokenError::Malformed(format!("payload is not valid JSON: {e}")))?;
    if !is_valid_id(&payload.app) {
        return Err(TokenError::Malformed("invalid app key in payload".into()));
    }
    if !is_valid_id(&payload.uid) {
        return Err(TokenError::Malformed("invalid user id in payload".into()));
    }
    Ok(payload)
}

fn new_mac(app_secret: &str) -> Result<HmacSha256, TokenError> {
    // HMAC accepts keys of any length; this cannot fail, but we do not unwrap.
    HmacSha256::new_from_slice(app_secret.as_bytes())
        .map_err(|_| TokenError::InvalidInput("unusable app secret".into()))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "app_test";
    const SECRET: &str = "s3cr3t-s3cr3t-s3cr3t";
    const T0: u64 = 1_700_000_000;

    #[test]
    fn roundtrip() {
        let token = mint(KEY, SECRET, "alice_01", T0, 3600).unwrap();
        assert!(token.starts_with("cp1."));
        assert_eq!(peek_app_key(&token).unwrap(), KEY);
        let claims = verify(&token, SECRET, T0 + 10).unwrap();
        assert_eq!(
            claims,
            TokenClaims {
                app_key: KEY.into(),
                user_id: "alice_01".into(),
                issued_at: T0,
                expires_at: T0 + 3600,
            }
        );
    }

    #[test]
    fn tokens_are_unique_per_mint() {
        let a = mint(KEY, SECRET, "alice", T0, 60).unwrap();
        let b = mint(KEY, SECRET, "alice", T0, 60).unwrap();
        assert_ne!(a, b, "the nonce makes each token distinct");
    }

    #[test]
    fn wrong_secret_is_bad_signature() {
        let token = mint(KEY, SECRET, "alice", T0, 3600).unwrap();
        let err = verify(&token, "another-secret", T0).unwrap_err();
        assert_eq!(err, TokenError::BadSignature);
        assert_eq!(err.code_number(), 81002);
    }

    #[test]
    fn tampered_payload_is_bad_signature() {
        let token = mint(KEY, SECRET, "alice", T0, 3600).unwrap();
        let mut parts = token.split('.');
        let (_, payload_b64, sig) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        let json = URL_SAFE_NO_PAD.decode(payload_b64).unwrap();
        let mut value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        value["uid"] = "mallory".into();
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&value).unwrap());
        let forged = format!("cp1.{forged_payload}.{sig}");
        // The forged token parses fine, so only the signature can catch it.
        assert_eq!(peek_app_key(&forged).unwrap(), KEY);
        assert_eq!(verify(&forged, SECRET, T0), Err(TokenError::BadSignature));

        // Flipping one character of the signature is caught too.
        let mut bad_sig: Vec<u8> = sig.bytes().collect();
        bad_sig[0] = if bad_sig[0] == b'A' { b'B' } else { b'A' };
        let forged = format!("cp1.{payload_b64}.{}", String::from_utf8(bad_sig).unwrap());
        assert_eq!(verify(&forged, SECRET, T0), Err(TokenError::BadSignature));
    }

    #[test]
    fn expired_token() {
        let token = mint(KEY, SECRET, "alice", T0, 60).unwrap();
        assert!(verify(&token, SECRET, T0 + 59).is_ok());
        let err = verify(&token, SECRET, T0 + 60).unwrap_err();
        assert_eq!(err, TokenError::Expired { expired_at: T0 + 60 });
        assert_eq!(err.code_number(), 81003);
    }

    #[test]
    fn garbage_is_malformed() {
        let huge = format!("cp1.{}.{}", "A".repeat(5000), "B".repeat(43));
        let valid_sig = URL_SAFE_NO_PAD.encode([0u8; 32]);
        let garbage = [
            String::new(),
            "cp1.".into(),
            "cp1..".into(),
            "cp2.abc.def".into(),
            "hello".into(),
            "cp1.!!!!.????".into(),
            format!("cp1.!!!!.{valid_sig}"),
            format!("cp1.{}.{valid_sig}", URL_SAFE_NO_PAD.encode("not json")),
            "cp1.a.b.c".into(),
            huge,
        ];
        for g in &garbage {
            assert!(
                matches!(verify(g, SECRET, T0), Err(TokenError::Malformed(_))),
                "verify({g:.40?}) should be Malformed"
            );
            assert!(
                matches!(peek_app_key(g), Err(TokenError::Malformed(_))),
                "peek_app_key({g:.40?}) should be Malformed"
            );
        }
    }

    #[test]
    fn signed_payload_with_bad_user_id_is_malformed() {
        // Even a correctly signed payload must carry a valid user id.
        let payload = URL_SAFE_NO_PAD
            .encode(br#"{"app":"app_test","uid":"bad id!","iat":1,"exp":99999999999,"nonce":"00"}"#);
        let mut mac = new_mac(SECRET).unwrap();
        mac.update(PREFIX.as_bytes());
        mac.update(payload.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes().as_slice());
        let token = format!("cp1.{payload}.{sig}");
        assert!(matches!(verify(&token, SECRET, T0), Err(TokenError::Malformed(_))));
    }

    #[test]
    fn mint_validates_input() {
        for (key, secret, uid, ttl) in [
            ("", SECRET, "alice", 60),
            ("app key", SECRET, "alice", 60),
            (KEY, SECRET, "", 60),
            (KEY, SECRET, "al ice", 60),
            (KEY, SECRET, &"a".repeat(65), 60),
            (KEY, "", "alice", 60),
            (KEY, SECRET, "alice", 0),
        ] {
            assert!(
                matches!(mint(key, secret, uid, T0, ttl), Err(TokenError::InvalidInput(_))),
                "mint({key:?}, {secret:?}, {uid:?}, {ttl}) should fail"
            );
        }
        assert!(matches!(mint(KEY, SECRET, "alice", u64::MAX, 1), Err(TokenError::InvalidInput(_))));
        assert!(mint(KEY, SECRET, &"a".repeat(64), T0, 60).is_ok());
    }

    #[test]
    fn generated_apps_have_the_documented_shape() {
        let a = generate_app();
        let b = generate_app();
        assert_ne!(a.app_key, b.app_key);
        assert_ne!(a.app_secret, b.app_secret);
        let suffix = a.app_key.strip_prefix("app_").unwrap();
        assert_eq!(suffix.len(), 16);
        assert!(suffix.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert!(is_valid_id(&a.app_key));
        assert_eq!(a.app_secret.len(), 43);
        assert_eq!(URL_SAFE_NO_PAD.decode(&a.app_secret).unwrap().len(), 32);
        assert!(!format!("{a:?}").contains(&a.app_secret), "Debug must redact");
        // A generated app can mint and verify.
        let token = mint(&a.app_key, &a.app_secret, "bob", T0, 60).unwrap();
        assert_eq!(verify(&token, &a.app_secret, T0).unwrap().user_id, "bob");
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("3600"), Ok(3600));
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("30m"), Ok(1800));
        assert_eq!(parse_ttl("24h"), Ok(86_400));
        assert_eq!(parse_ttl("7d"), Ok(604_800));
        for bad in ["", "0", "0h", "h", "-5", "1.5h", "10w", "1 h", "99999999999999999999d", "5dd"] {
            assert!(
                matches!(parse_ttl(bad), Err(TokenError::InvalidInput(_))),
                "parse_ttl({bad:?}) should fail"
            );
        }
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,300}") {
            let v = verify(&s, SECRET, T0);
            prop_assert!(v.is_err());
            let _ = peek_app_key(&s);
            let prefixed = format!("cp1.{s}");
            prop_assert!(verify(&prefixed, SECRET, T0).is_err());
            let _ = peek_app_key(&prefixed);
        }

        #[test]
        fn arbitrary_base64_parts_never_verify(a in "[A-Za-z0-9_-]{0,200}", b in "[A-Za-z0-9_-]{0,64}") {
            let token = format!("cp1.{a}.{b}");
            prop_assert!(verify(&token, SECRET, T0).is_err());
            let _ = peek_app_key(&token);
        }
    }
}
