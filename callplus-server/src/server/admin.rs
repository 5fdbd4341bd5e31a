//! The admin HTTP API: token minting for the app's backend, ending calls and removing
//! participants (`POST /v1/calls/end`), signing users' devices out (`POST /v1/users/sign_out`),
//! `/metrics`, `/healthz`.
//!
//! The `POST` endpoints are authenticated like the seed vendors' server APIs: the request carries
//! `X-App-Key`, `X-Nonce` (1–128 visible ASCII characters, never reused within the time
//! window), `X-Timestamp` (Unix seconds, within ±300 s of the server clock) and `X-Signature` =
//! hex(HMAC-SHA256(app_secret, path + "\n" + nonce + "\n" + timestamp + "\n" + body)), where
//! `path` is the endpoint's (`/v1/tokens`).
//!
//! The signed message must have exactly one reading: the path and the nonce cannot hold a
//! newline and the timestamp is plain digits without sign or leading zero, so no two header sets
//! sign the same bytes (with fields simply glued together, moving the nonce's last digit into
//! the timestamp gave a second request with the same signature). The path is signed so that a
//! request cannot be replayed to another endpoint whose body reads the same
//! (`{"user_id": "bob"}` asks for a token at one and signs Bob out at another). Nonces are kept in storage until their
//! request could no longer be accepted, so a replay is refused across restarts too.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::auth::Auth;
use super::driver::{DriverHandle, unix_ms};
use super::metrics::Metrics;
use crate::storage::Storage;
use crate::token;
use callplus_session::switchboard::ServerEnd;
use callplus_session::{AppKey, CallId, Code, DeviceId, UserId};

/// Largest accepted request body.
const MAX_BODY: usize = 16 * 1024;
/// Allowed clock difference for `X-Timestamp`, in seconds.
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;
/// Token lifetime when the request gives none.
const DEFAULT_TTL_SECS: u64 = 86_400;
/// Longest token lifetime the API grants.
const MAX_TTL_SECS: u64 = 365 * 86_400;
/// Longest nonce.
const MAX_NONCE_LEN: usize = 128;
/// Most digits of `X-Timestamp` (Unix seconds fit in 12 digits for the next 30,000 years).
const MAX_TIMESTAMP_DIGITS: usize = 12;

/// The signed endpoints' paths, as routed and as signed.
const TOKENS: &str = "/v1/tokens";
const END_CALL: &str = "/v1/calls/end";
const SIGN_OUT: &str = "/v1/users/sign_out";

/// Admin API state.
pub(crate) struct AdminState {
    pub(crate) auth: Arc<Auth>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) driver: DriverHandle,
    /// Where used nonces are kept (see [`Storage::claim_nonce`]).
    pub(crate) storage: Arc<dyn Storage>,
}

/// The admin router.
pub(crate) fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route(TOKENS, post(mint_token))
        .route(END_CALL, post(end_call))
        .route(SIGN_OUT, post(sign_out))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Body of `POST /v1/tokens`. Unknown fields are refused, as in every admin body, so a body
/// signed for one endpoint is never read as another's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MintRequest {
    user_id: String,
    ttl_secs: Option<u64>,
}

/// Reply of `POST /v1/tokens`.
#[derive(Debug, Serialize)]
struct MintReply {
    token: String,
    expires_at: u64,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// hex(HMAC-SHA256(secret, path + "\n" + nonce + "\n" + timestamp + "\n" + body)): what a
/// client puts in `X-Signature` for a request to the endpoint `path` (`"/v1/tokens"`).
///
/// ```
/// use callplus_server::server::sign_request;
///
/// let signature = sign_request("app-secret", "/v1/tokens", "nonce-1", "1700000000", b"{}");
/// assert_eq!(signature.len(), 64);
/// assert_ne!(signature, sign_request("app-secret", "/v1/users/sign_out", "nonce-1", "1700000000", b"{}"));
/// ```
pub fn sign_request(app_secret: &str, path: &str, nonce: &str, timestamp: &str, body: &[u8]) -> String {
    hex(&signed_message_mac(app_secret, path, nonce, timestamp, body).finalize().into_bytes())
}

/// The MAC over the one encoding of a request that is signed.
fn signed_message_mac(secret: &str, path: &str, nonce: &str, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = new_mac(secret);
    mac.update(path.as_bytes());
    mac.update(b"\n");
    mac.update(nonce.as_bytes());
    mac.update(b"\n");
    mac.update(timestamp.as_bytes());
    mac.update(b"\n");
    mac.update(body);
    mac
}

/// Whether `nonce` is 1–128 visible ASCII characters (no space, no control character), so the
/// newline that ends it in the signed message cannot be part of it.
fn valid_nonce(nonce: &str) -> bool {
    !nonce.is_empty() && nonce.len() <= MAX_NONCE_LEN && nonce.bytes().all(|b| b.is_ascii_graphic())
}

/// `X-Timestamp` as Unix seconds: 1–12 ASCII digits, no sign, no leading zero. Anything else
/// (`+5`, `0005`, ` 5`) is refused, so one instant has one spelling.
fn parse_timestamp(s: &str) -> Option<i64> {
    let digits_only =
        !s.is_empty() && s.len() <= MAX_TIMESTAMP_DIGITS && s.bytes().all(|b| b.is_ascii_digit());
    if !digits_only || s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

fn new_mac(secret: &str) -> Hmac<Sha256> {
    // HMAC takes keys of any length, so this never falls back.
    Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| Hmac::<Sha256>::new(&Default::default()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
}

/// A request signed with an app's secret, whose nonce is now used up.
struct Signed {
    app_key: String,
    secret: String,
    /// The server clock, Unix seconds.
    now: i64,
}

/// Checks a signed admin request (see the module's documentation) and claims its nonce, or
/// returns the answer refusing it.
async fn authenticate(
    state: &AdminState,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Signed, Response> {
    let (Some(app_key), Some(nonce), Some(timestamp), Some(signature)) = (
        header_str(headers, "x-app-key"),
        header_str(headers, "x-nonce"),
        header_str(headers, "x-timestamp"),
        header_str(headers, "x-signature"),
    ) else {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "X-App-Key, X-Nonce, X-Timestamp and X-Signature headers are required",
        ));
    };
    if !valid_nonce(nonce) {
        return Err(error(StatusCode::UNAUTHORIZED, "X-Nonce must be 1-128 visible ASCII characters"));
    }
    let now = unix_ms() / 1000;
    let Some(ts) = parse_timestamp(timestamp) else {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "X-Timestamp must be Unix seconds: digits only, no sign, no leading zero",
        ));
    };
    if (now - ts).abs() > MAX_CLOCK_SKEW_SECS {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "X-Timestamp is more than 300 s away from the server clock",
        ));
    }
    let Some(secret) = state.auth.secret(app_key).await else {
        return Err(error(StatusCode::UNAUTHORIZED, "unknown app key or bad signature"));
    };
    let mac = signed_message_mac(&secret, path, nonce, timestamp, body);
    let valid = unhex(signature.trim()).is_some_and(|sig| mac.verify_slice(&sig).is_ok());
    if !valid {
        return Err(error(StatusCode::UNAUTHORIZED, "unknown app key or bad signature"));
    }
    // Remembered (durably, before the answer) for as long as this timestamp is acceptable.
    let forget_at = ts.max(now) + 2 * MAX_CLOCK_SKEW_SECS;
    let (storage, key, used) = (state.storage.clone(), app_key.to_owned(), nonce.to_owned());
    match tokio::task::spawn_blocking(move || storage.claim_nonce(&key, &used, now, forget_at)).await {
        Ok(Ok(true)) => Ok(Signed { app_key: app_key.to_owned(), secret, now }),
        Ok(Ok(false)) => Err(error(StatusCode::UNAUTHORIZED, "X-Nonce was already used")),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot record an admin nonce");
            Err(error(StatusCode::INTERNAL_SERVER_ERROR, "storage error"))
        }
        Err(e) => {
            tracing::error!(error = %e, "admin nonce task failed");
            Err(error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))
        }
    }
}

/// A signed request to `path` with its body read as `T`, or the answer refusing it: `401` for
/// the signature (see [`authenticate`]), `400` for a body that is not `T`'s JSON, or that gives
/// `widening`'s field (whose absence means what its second part says) as an explicit `null`.
async fn signed_body<T: serde::de::DeserializeOwned>(
    state: &AdminState,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
    widening: Option<(&str, &str)>,
) -> Result<(Signed, T), Response> {
    let signed = authenticate(state, path, headers, body).await?;
    let request = serde_json::from_slice(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))?;
    if let Some((field, absent)) = widening
        && explicit_null(body, field)
    {
        return Err(error(StatusCode::BAD_REQUEST, format!("{field} is null: leave it out to {absent}")));
    }
    Ok((signed, request))
}

async fn mint_token(State(state): State<Arc<AdminState>>, headers: HeaderMap, body: Bytes) -> Response {
    let (Signed { app_key, secret, now }, request) =
        match signed_body::<MintRequest>(&state, TOKENS, &headers, &body, None).await {
            Ok(signed) => signed,
            Err(refused) => return refused,
        };
    let app_key = app_key.as_str();
    let ttl = request.ttl_secs.unwrap_or(DEFAULT_TTL_SECS);
    if ttl == 0 || ttl > MAX_TTL_SECS {
        return error(StatusCode::BAD_REQUEST, format!("ttl_secs must be 1..={MAX_TTL_SECS}"));
    }
    let issued_at = u64::try_from(now).unwrap_or(0);
    match token::mint(app_key, &secret, &request.user_id, issued_at, ttl) {
        Ok(token) => {
            tracing::info!(app = app_key, user = %request.user_id, ttl, "token minted over the admin API");
            Json(MintReply { token, expires_at: issued_at + ttl }).into_response()
        }
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

/// Whether `body` gives `field` as an explicit `null`. Where an absent field widens what a
/// request does (every participant, every device), a null would read the same: a backend that
/// meant one and lost its id must not act on all.
fn explicit_null(body: &[u8], field: &str) -> bool {
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body)
        .is_ok_and(|map| map.get(field).is_some_and(serde_json::Value::is_null))
}

/// Body of `POST /v1/calls/end`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndCallRequest {
    call_id: String,
    /// Remove only this user (`KICKED_BY_SERVER`); absent, the call ends for everyone
    /// (`ENDED_BY_SERVER`).
    user_id: Option<String>,
}

/// `POST /v1/calls/end`: the operator ends a call, or removes one participant from it. `200`
/// once done; `202` with the node's id when the call's id names another node (the request went
/// there, whose answer is logged there, not returned); `404` (`CALL_NOT_FOUND`) for no live
/// call of this app with this id; `409` (`NOT_IN_CALL`) for a user with no place in the call;
/// `503` while the server stops.
async fn end_call(State(state): State<Arc<AdminState>>, headers: HeaderMap, body: Bytes) -> Response {
    let (Signed { app_key, .. }, request) = match signed_body::<EndCallRequest>(
        &state,
        END_CALL,
        &headers,
        &body,
        Some(("user_id", "end the call for everyone")),
    )
    .await
    {
        Ok(signed) => signed,
        Err(refused) => return refused,
    };
    let ids = (
        AppKey::new(&app_key),
        CallId::new(&request.call_id),
        request.user_id.as_deref().map(UserId::new).transpose(),
    );
    let (Ok(app), Ok(call_id), Ok(user)) = ids else {
        return error(StatusCode::BAD_REQUEST, "call_id and user_id must be valid ids");
    };
    match state.driver.end_call(app, call_id, user).await {
        Some(Ok(ServerEnd::Done)) => Json(serde_json::json!({ "ended": true })).into_response(),
        Some(Ok(ServerEnd::Forwarded { node })) => {
            (StatusCode::ACCEPTED, Json(serde_json::json!({ "forwarded_to": node }))).into_response()
        }
        Some(Err(e)) => {
            let status = match e.code {
                Code::CallNotFound => StatusCode::NOT_FOUND,
                Code::NotInCall => StatusCode::CONFLICT,
                Code::InvalidState => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            };
            let body = serde_json::json!({ "error": e.message, "code": e.code.name() });
            (status, Json(body)).into_response()
        }
        None => error(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping"),
    }
}

/// Body of `POST /v1/users/sign_out`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignOutRequest {
    user_id: String,
    /// Sign out only this device; absent, every device of the user.
    device_id: Option<String>,
}

/// `POST /v1/users/sign_out`: the operator closes a user's sessions (every device, or one),
/// which end with `KICKED_BY_SERVER` and do not reconnect by themselves. `200` with how many
/// sessions this node closed (`"signed_out"`; on a node of several the nodes holding the user's
/// other devices are told too and close theirs); `503` while the server stops. The user's token
/// stays valid until it expires: to keep a user out, stop minting tokens for them as well.
async fn sign_out(State(state): State<Arc<AdminState>>, headers: HeaderMap, body: Bytes) -> Response {
    let (Signed { app_key, .. }, request) = match signed_body::<SignOutRequest>(
        &state,
        SIGN_OUT,
        &headers,
        &body,
        Some(("device_id", "sign out every device")),
    )
    .await
    {
        Ok(signed) => signed,
        Err(refused) => return refused,
    };
    let ids = (
        AppKey::new(&app_key),
        UserId::new(&request.user_id),
        request.device_id.as_deref().map(DeviceId::new).transpose(),
    );
    let (Ok(app), Ok(user), Ok(device)) = ids else {
        return error(StatusCode::BAD_REQUEST, "user_id and device_id must be valid ids");
    };
    match state.driver.sign_out(app, user, device).await {
        Some(Ok(closed)) => Json(serde_json::json!({ "signed_out": closed })).into_response(),
        Some(Err(_)) | None => error(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping"),
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics.encode(),
    )
        .into_response()
}

async fn healthz(State(state): State<Arc<AdminState>>) -> Response {
    if state.driver.is_closed() {
        (StatusCode::SERVICE_UNAVAILABLE, "stopped\n").into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPECTED_SIGNATURE: &str = "c491d6db13d9821f11e4c3b0929c651ccc4204c4bae353cd25747d7c4b36e316";

    #[test]
    fn hex_roundtrip() {
        assert_eq!(unhex(&hex(&[0, 1, 0xab, 0xff])), Some(vec![0, 1, 0xab, 0xff]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("é1"), None);
    }

    #[test]
    fn signature_is_hmac_of_newline_joined_fields() {
        // HMAC-SHA256("Jefe", "/v1/tokens\nnonce-1\n1700000000\n{}"), computed independently
        // (`printf '/v1/tokens\nnonce-1\n1700000000\n{}' | openssl dgst -sha256 -hmac Jefe`).
        let sig = sign_request("Jefe", "/v1/tokens", "nonce-1", "1700000000", b"{}");
        assert_eq!(sig, EXPECTED_SIGNATURE);
    }

    #[test]
    fn moving_a_digit_between_nonce_and_timestamp_changes_the_signature() {
        let a = sign_request("secret", TOKENS, "n12", "1700000000", b"{}");
        let b = sign_request("secret", TOKENS, "n1", "21700000000", b"{}");
        assert_ne!(a, b);
    }

    #[test]
    fn timestamps_have_one_spelling() {
        assert_eq!(parse_timestamp("1700000000"), Some(1_700_000_000));
        for bad in [
            "",
            "+1700000000",
            "01700000000",
            "0",
            "-5",
            " 1700000000",
            "1700000000 ",
            "1e9",
            "1234567890123",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn nonces_are_visible_ascii() {
        assert!(valid_nonce("a1-B2_c3.~"));
        for bad in ["", "a b", "a\nb", "é", &"x".repeat(129)] {
            assert!(!valid_nonce(bad), "{bad:?}");
        }
    }
}
