//! The device port serves the demo phone and the Web SDK: the checked-in files, byte for byte,
//! with their content types, a Content-Security-Policy on the page, and CORS on the SDK so that
//! pages of other origins can import it; beside the gRPC and WebSocket routes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use callplus_tests::{TestServer, config, http_get as get, http_header as header};

fn checked_in(path: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../callplus-web").join(path)).unwrap()
}

#[tokio::test]
async fn the_device_port_serves_the_demo_phone_and_the_sdk() {
    let server = TestServer::start(config()).await;

    let (status, headers, body) = get(&server, "/").await;
    assert!(status.ends_with("200 OK"), "{status}");
    assert_eq!(header(&headers, "content-type"), Some("text/html; charset=utf-8"));
    let csp = header(&headers, "content-security-policy").expect("the page has a CSP");
    assert!(
        csp.contains("script-src 'self' 'wasm-unsafe-eval'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    assert_eq!(body, checked_in("page/index.html"));
    assert_eq!(header(&headers, "access-control-allow-origin"), None, "the page itself is not shared");

    for (path, file, kind) in [
        ("/phone.js", "page/phone.js", "text/javascript; charset=utf-8"),
        ("/sdk/index.js", "js/index.js", "text/javascript; charset=utf-8"),
        ("/sdk/media.js", "js/media.js", "text/javascript; charset=utf-8"),
        ("/sdk/config.js", "js/config.js", "text/javascript; charset=utf-8"),
        ("/sdk/pkg/callplus_web.js", "js/pkg/callplus_web.js", "text/javascript; charset=utf-8"),
        ("/sdk/pkg/callplus_web_bg.wasm", "js/pkg/callplus_web_bg.wasm", "application/wasm"),
    ] {
        let (status, headers, body) = get(&server, path).await;
        assert!(status.ends_with("200 OK"), "{path}: {status}");
        assert_eq!(header(&headers, "content-type"), Some(kind), "{path}");
        assert_eq!(body, checked_in(file), "{path} is the checked-in {file}");
        if path.starts_with("/sdk/") {
            assert_eq!(header(&headers, "access-control-allow-origin"), Some("*"), "{path}");
        }
    }

    // Any other path is no file: it falls through to the gRPC router, which answers
    // `UNIMPLEMENTED` (grpc-status 12) with an empty body, as it always did.
    for path in ["/sdk/secret.txt", "/../Cargo.toml", "/sdk/../../Cargo.toml", "/phone.css/x"] {
        let (_, headers, body) = get(&server, path).await;
        assert_eq!(header(&headers, "grpc-status"), Some("12"), "{path}: {headers:?}");
        assert!(body.is_empty(), "{path}: {}", String::from_utf8_lossy(&body));
    }
    server.shutdown().await;
}
