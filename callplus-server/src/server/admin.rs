//! The admin HTTP API: token minting for the app's backend, `/metrics`, `/healthz`.
//!
//! `POST /v1/tokens` is authenticated like the seed vendors' server APIs: the request carries
//! `X-App-Key`, `X-Nonce` (1–128 chars, never reused within the time window), `X-Timestamp`
//! (Unix seconds, within ±300 s of the server clock) and `X-Signature` =
//! hex(HMAC-SHA256(app_secret, nonce + timestamp + body)).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

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
use crate::token;

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

/// Admin API state.
pub(crate) struct AdminState {
    pub(crate) auth: Arc<Auth>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) driver: DriverHandle,
    /// `(app_key, nonce)` seen recently → when it may be forgotten (Unix seconds).
    pub(crate) nonces: Mutex<HashMap<(String, String), i64>>,
}

/// The admin router.
pub(crate) fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/v1/tokens", post(mint_token))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Body of `POST /v1/tokens`.
#[derive(Debug, Deserialize)]
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

/// hex(HMAC-SHA256(secret, nonce + timestamp + body)): what a client puts in `X-Signature`.
pub fn sign_request(app_secret: &str, nonce: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = new_mac(app_secret);
    mac.update(nonce.as_bytes());
    mac.update(timestamp.as_bytes());
    mac.update(body);
    hex(&mac.finalize().into_bytes())
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

async fn mint_token(State(state): State<Arc<AdminState>>, headers: HeaderMap, body: Bytes) -> Response {
    let (Some(app_key), Some(nonce), Some(timestamp), Some(signature)) = (
        header_str(&headers, "x-app-key"),
        header_str(&headers, "x-nonce"),
        header_str(&headers, "x-timestamp"),
        header_str(&headers, "x-signature"),
    ) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "X-App-Key, X-Nonce, X-Timestamp and X-Signature headers are required",
        );
    };
    if nonce.is_empty() || nonce.len() > MAX_NONCE_LEN {
        return error(StatusCode::UNAUTHORIZED, "X-Nonce must be 1-128 characters");
    }
    let now = unix_ms() / 1000;
    let Ok(ts) = timestamp.parse::<i64>() else {
        return error(StatusCode::UNAUTHORIZED, "X-Timestamp must be Unix seconds");
    };
    if (now - ts).abs() > MAX_CLOCK_SKEW_SECS {
        return error(StatusCode::UNAUTHORIZED, "X-Timestamp is more than 300 s away from the server clock");
    }
    let Some(secret) = state.auth.secret(app_key).await else {
        return error(StatusCode::UNAUTHORIZED, "unknown app key or bad signature");
    };
    let mut mac = new_mac(&secret);
    mac.update(nonce.as_bytes());
    mac.update(timestamp.as_bytes());
    mac.update(&body);
    let valid = unhex(signature.trim()).is_some_and(|sig| mac.verify_slice(&sig).is_ok());
    if !valid {
        return error(StatusCode::UNAUTHORIZED, "unknown app key or bad signature");
    }
    {
        let mut nonces = state.nonces.lock().unwrap_or_else(PoisonError::into_inner);
        nonces.retain(|_, forget_at| *forget_at > now);
        let key = (app_key.to_owned(), nonce.to_owned());
        if nonces.contains_key(&key) {
            return error(StatusCode::UNAUTHORIZED, "X-Nonce was already used");
        }
        nonces.insert(key, ts.max(now) + 2 * MAX_CLOCK_SKEW_SECS);
    }
    let request: MintRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")),
    };
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

    #[test]
    fn hex_roundtrip() {
        assert_eq!(unhex(&hex(&[0, 1, 0xab, 0xff])), Some(vec![0, 1, 0xab, 0xff]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("é1"), None);
    }

    #[test]
    fn signature_is_hmac_of_nonce_timestamp_body() {
        // RFC 4231 test case 2 with the message split across the three parts.
        let sig = sign_request("Jefe", "what do ya want ", "for nothing", b"?");
        assert_eq!(sig, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }
}
