//! The demo phone page and the Web SDK, served at the device port's root.
//!
//! A browser opens `http://HOST:PORT/` (or `https://` with TLS) and gets a small phone that
//! signs in with a token, calls, rings, accepts, mutes and shows the call log, through the same
//! port's WebSocket (`/v1/ws`). The files are the checked-in ones of `callplus-web/` (the SDK
//! modules, the `wasm-bindgen` output, the page), embedded at build time, so the server needs
//! neither node nor wasm-bindgen. They hold no secret: the page asks the person for a token.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One embedded file: its URL path, content type and bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";

/// Everything the page loads; `/sdk/…` is the SDK package as a web developer would import it.
const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../../callplus-web/page/index.html"),
    },
    Asset {
        path: "/phone.js",
        content_type: JS,
        body: include_bytes!("../../../callplus-web/page/phone.js"),
    },
    Asset {
        path: "/phone.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../../callplus-web/page/phone.css"),
    },
    Asset {
        path: "/sdk/index.js",
        content_type: JS,
        body: include_bytes!("../../../callplus-web/js/index.js"),
    },
    Asset {
        path: "/sdk/media.js",
        content_type: JS,
        body: include_bytes!("../../../callplus-web/js/media.js"),
    },
    Asset {
        path: "/sdk/config.js",
        content_type: JS,
        body: include_bytes!("../../../callplus-web/js/config.js"),
    },
    Asset {
        path: "/sdk/pkg/callplus_web.js",
        content_type: JS,
        body: include_bytes!("../../../callplus-web/js/pkg/callplus_web.js"),
    },
    Asset {
        path: "/sdk/pkg/callplus_web_bg.wasm",
        content_type: "application/wasm",
        body: include_bytes!("../../../callplus-web/js/pkg/callplus_web_bg.wasm"),
    },
];

/// Scripts and the WebSocket only from this origin; wasm compiled, nothing inline but styles.
const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; connect-src 'self'; \
                   style-src 'self'; img-src 'self' data:; media-src 'self' blob: mediastream:; \
                   frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn respond(asset: &'static Asset) -> Response {
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if asset.path.starts_with("/sdk/") {
        // Public files without credentials: pages of other origins may import the SDK (module
        // scripts and the .wasm are fetched in CORS mode).
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    }
    response
}

/// The page's routes, merged with the gRPC and WebSocket routes of the device port.
pub(crate) fn router() -> axum::Router {
    ASSETS.iter().fold(axum::Router::new(), |router, asset| {
        router.route(asset.path, get(move || async move { respond(asset) }))
    })
}
