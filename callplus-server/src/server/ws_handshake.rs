//! The WebSocket opening handshake on the device port: an HTTP/1.1 Upgrade (RFC 6455, 4.2) or
//! an HTTP/2 extended CONNECT (RFC 8441), answered by hyper, which then hands over the
//! connection's bytes ([`OnUpgrade`]) for the server's own framing ([`super::ws_framing`]).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse as _, Response};
use hyper::upgrade::OnUpgrade;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// The only WebSocket version there is (RFC 6455, 4.1).
const VERSION: &str = "13";

/// An accepted handshake: the response to send, and the connection once it is sent.
pub(crate) struct Accepted {
    /// `101 Switching Protocols` (HTTP/1.1) or `200 OK` (HTTP/2).
    pub(crate) response: Response,
    /// Resolves to the upgraded connection once hyper has written the response.
    pub(crate) on_upgrade: OnUpgrade,
}

/// Why a request is not an acceptable WebSocket handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// `400 Bad Request`, `405 Method Not Allowed` or `426 Upgrade Required`.
    pub(crate) status: StatusCode,
    /// Said in the response's body.
    pub(crate) why: &'static str,
}

impl Refusal {
    /// The response that refuses the request; a `426` names the version this server speaks.
    pub(crate) fn into_response(self) -> Response {
        let mut response = (self.status, self.why).into_response();
        if self.status == StatusCode::UPGRADE_REQUIRED {
            response.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static(VERSION));
        }
        response
    }
}

/// Checks `request` as a WebSocket opening handshake and accepts it, selecting `subprotocol`
/// if the client offers it (offering none is fine).
///
/// # Errors
/// `400 Bad Request` for a request that is not a WebSocket handshake, `426 Upgrade Required`
/// for another WebSocket version or a connection that cannot be upgraded.
pub(crate) fn accept(request: &mut Request, subprotocol: &'static str) -> Result<Accepted, Refusal> {
    let headers = request.headers();
    let key = if request.version() <= Version::HTTP_11 {
        if request.method() != Method::GET {
            return Err(refuse(StatusCode::METHOD_NOT_ALLOWED, "a WebSocket upgrade is a GET"));
        }
        if !has_token(headers, header::CONNECTION, "upgrade") {
            return Err(refuse(StatusCode::BAD_REQUEST, "`Connection` must include `upgrade`"));
        }
        if !has_token(headers, header::UPGRADE, "websocket") {
            return Err(refuse(StatusCode::BAD_REQUEST, "`Upgrade` must be `websocket`"));
        }
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
            return Err(refuse(StatusCode::BAD_REQUEST, "`Sec-WebSocket-Key` is missing"));
        };
        Some(derive_accept_key(key.as_bytes()))
    } else {
        let protocol = request.extensions().get::<hyper::ext::Protocol>();
        if request.method() != Method::CONNECT || protocol.is_none_or(|p| p.as_str() != "websocket") {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "WebSocket over HTTP/2 is a CONNECT with `:protocol websocket`",
            ));
        }
        None
    };
    if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes() != VERSION.as_bytes()) {
        return Err(refuse(StatusCode::UPGRADE_REQUIRED, "this server speaks WebSocket version 13"));
    }
    // A browser fails the connection unless the selected subprotocol is one it offered, as
    // written: compared exactly.
    let offered = items(headers, header::SEC_WEBSOCKET_PROTOCOL).any(|item| item == subprotocol.as_bytes());
    let Some(on_upgrade) = request.extensions_mut().remove::<OnUpgrade>() else {
        return Err(refuse(StatusCode::UPGRADE_REQUIRED, "this connection cannot be upgraded"));
    };
    let mut response = Response::new(Body::empty());
    if let Some(accept) = key {
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        // The accept key is base64, always a valid header value.
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
    }
    if offered {
        response.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(subprotocol));
    }
    Ok(Accepted { response, on_upgrade })
}

/// Whether a comma-separated header (any of its lines) has `token`, compared without case.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    items(headers, name).any(|item| item.eq_ignore_ascii_case(token.as_bytes()))
}

/// The items of a comma-separated header, over all its lines, trimmed.
fn items(headers: &HeaderMap, name: header::HeaderName) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
}

fn refuse(status: StatusCode, why: &'static str) -> Refusal {
    Refusal { status, why }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn request(build: impl FnOnce(axum::http::request::Builder) -> axum::http::request::Builder) -> Request {
        let builder = Request::builder().uri("/v1/ws").method(Method::GET);
        let mut request = build(builder).body(Body::empty()).unwrap();
        // What hyper puts on every request of a connection it can upgrade; a plain request
        // made here resolves to an error, which is not awaited.
        let on_upgrade = hyper::upgrade::on(Request::new(Body::empty()));
        request.extensions_mut().insert(on_upgrade);
        request
    }

    fn handshake(b: axum::http::request::Builder) -> axum::http::request::Builder {
        b.header("connection", "keep-alive, Upgrade")
            .header("upgrade", "WebSocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
    }

    #[test]
    fn an_http1_upgrade_is_answered_with_the_accept_key_and_the_offered_subprotocol() {
        let mut request = request(|b| handshake(b).header("sec-websocket-protocol", "chat, callplus.v1"));
        let accepted = accept(&mut request, "callplus.v1").map_err(|r| r.status).unwrap();
        let response = accepted.response;
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        // RFC 6455's own example.
        assert_eq!(response.headers()[header::SEC_WEBSOCKET_ACCEPT], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(response.headers()[header::SEC_WEBSOCKET_PROTOCOL], "callplus.v1");
        assert!(request.extensions().get::<OnUpgrade>().is_none(), "the upgrade is taken");
    }

    #[test]
    fn no_subprotocol_is_selected_unless_offered_as_written() {
        let mut plain = request(handshake);
        let accepted = accept(&mut plain, "callplus.v1").map_err(|r| r.status).unwrap();
        assert!(accepted.response.headers().get(header::SEC_WEBSOCKET_PROTOCOL).is_none());
        let mut shouted = request(|b| handshake(b).header("sec-websocket-protocol", "CALLPLUS.V1"));
        let accepted = accept(&mut shouted, "callplus.v1").map_err(|r| r.status).unwrap();
        assert!(accepted.response.headers().get(header::SEC_WEBSOCKET_PROTOCOL).is_none(), "another name");
    }

    #[test]
    fn an_http2_connect_with_the_websocket_protocol_is_answered_ok() {
        let mut connect = request(|b| {
            b.version(Version::HTTP_2)
                .method(Method::CONNECT)
                .header("sec-websocket-version", "13")
                .extension(hyper::ext::Protocol::from_static("websocket"))
        });
        let accepted = accept(&mut connect, "callplus.v1").map_err(|r| r.status).unwrap();
        assert_eq!(accepted.response.status(), StatusCode::OK);
        assert!(accepted.response.headers().get(header::SEC_WEBSOCKET_ACCEPT).is_none());
        let mut other = request(|b| {
            b.version(Version::HTTP_2)
                .method(Method::CONNECT)
                .header("sec-websocket-version", "13")
                .extension(hyper::ext::Protocol::from_static("webtransport"))
        });
        assert_eq!(accept(&mut other, "callplus.v1").err().map(|r| r.status), Some(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn requests_that_are_not_handshakes_are_refused() {
        let status = |build: fn(axum::http::request::Builder) -> axum::http::request::Builder| {
            accept(&mut request(build), "callplus.v1").err().map(|r| r.status)
        };
        assert_eq!(status(|b| b), Some(StatusCode::BAD_REQUEST));
        assert_eq!(status(|b| handshake(b).method(Method::POST)), Some(StatusCode::METHOD_NOT_ALLOWED));
        assert_eq!(
            status(|b| b
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-version", "13")),
            Some(StatusCode::BAD_REQUEST),
            "no key"
        );
        let mut old = request(|b| {
            b.header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-version", "8")
                .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        });
        let refused = accept(&mut old, "callplus.v1").err().unwrap().into_response();
        assert_eq!(refused.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(refused.headers()[header::SEC_WEBSOCKET_VERSION], "13");
    }

    #[test]
    fn a_request_hyper_cannot_upgrade_is_refused() {
        let mut request = Request::builder().uri("/v1/ws");
        request = handshake(request);
        let mut request = request.body(Body::empty()).unwrap();
        assert_eq!(
            accept(&mut request, "callplus.v1").err().map(|r| r.status),
            Some(StatusCode::UPGRADE_REQUIRED)
        );
    }
}
