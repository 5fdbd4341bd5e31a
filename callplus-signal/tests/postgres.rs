//! The server on PostgreSQL end to end: a real server on a throw-away PostgreSQL on 127.0.0.1,
//! a 1:1 call between two clients, and its records still there after the server restarts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use callplus_session::client::CallOptions;
use callplus_session::{CallId, CallType, EndReason, MediaType, RecordOrder};
use callplus_signal::client::{Client, ClientOptions, Event, EventStream};
use callplus_signal::server::{RunningServer, Server};
use tokio::time::{Instant, timeout_at};

/// Upper bound for any single wait.
const WAIT: Duration = Duration::from_secs(10);

async fn start(url: &str) -> RunningServer {
    Server::builder().postgres(url).listen("127.0.0.1:0").no_admin().start().await.expect("server starts")
}

fn token(server: &RunningServer, user: &str) -> String {
    let app = server.app_credentials();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    callplus_signal::token::mint(&app.app_key, &app.app_secret, user, now, 3600).unwrap()
}

async fn connect(server: &RunningServer, user: &str) -> (Client, EventStream) {
    let url = format!("http://{}", server.grpc_addr());
    Client::connect(&url, &token(server, user), ClientOptions::default()).await.expect("connects")
}

/// Takes events until one matches `pred`, within [`WAIT`].
async fn wait_for(events: &mut EventStream, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
    let deadline = Instant::now() + WAIT;
    loop {
        match timeout_at(deadline, events.next()).await {
            Ok(Some(event)) if pred(&event) => return event,
            Ok(Some(_)) => {}
            Ok(None) => panic!("stream ended waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

async fn record_ids(client: &Client) -> Vec<CallId> {
    let page = client.get_call_records(-1, 10, RecordOrder::Desc).await.expect("records");
    page.records.into_iter().map(|r| r.call.call_id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_on_postgres_keeps_its_records_across_a_restart() {
    let url = support::postgres::fresh_database();
    let server = start(&url).await;
    assert!(server.created_app(), "an empty database gets the default app");
    let app = server.app_credentials().clone();
    let (alice, mut alice_events) = connect(&server, "alice").await;
    let (bob, mut bob_events) = connect(&server, "bob").await;

    let call = alice
        .start_call(&["bob"], CallType::Single, MediaType::Audio, CallOptions::default())
        .await
        .expect("start_call");
    let call_id = call.call_id().clone();
    wait_for(&mut bob_events, "the call", |e| matches!(e, Event::ReceivedCall { .. })).await;
    bob.accept(&call_id).await.expect("accept");
    let connected = |e: &Event| matches!(e, Event::CallConnected { .. });
    wait_for(&mut alice_events, "alice connected", connected).await;
    wait_for(&mut bob_events, "bob connected", connected).await;
    // The live call reaches PostgreSQL (written behind the call, by the storage writer).
    let storage = server.storage();
    let deadline = Instant::now() + WAIT;
    while !storage.active_calls().unwrap().iter().any(|c| c.call_id == call_id.as_str()) {
        assert!(Instant::now() < deadline, "the live call never reached PostgreSQL");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    alice.hangup(Some(&call_id)).await.expect("hangup");
    let ended = wait_for(&mut bob_events, "bob ended", |e| matches!(e, Event::CallEnded { .. })).await;
    assert!(matches!(ended, Event::CallEnded { reason: EndReason::RemoteHangup, .. }), "{ended:?}");
    let record = |e: &Event| matches!(e, Event::ReceivedCallRecord(_));
    wait_for(&mut alice_events, "alice's record", record).await;
    wait_for(&mut bob_events, "bob's record", record).await;
    assert_eq!(record_ids(&alice).await, std::slice::from_ref(&call_id));
    assert_eq!(record_ids(&bob).await, std::slice::from_ref(&call_id));
    alice.disconnect().await;
    bob.disconnect().await;
    server.shutdown().await.expect("shutdown");

    // A new server on the same database: same app, same records, no call left live.
    let server = start(&url).await;
    assert!(!server.created_app());
    assert_eq!(server.app_credentials(), &app);
    assert!(server.storage().active_calls().unwrap().is_empty());
    let (alice, _alice_events) = connect(&server, "alice").await;
    let (bob, _bob_events) = connect(&server, "bob").await;
    assert_eq!(record_ids(&alice).await, std::slice::from_ref(&call_id));
    assert_eq!(record_ids(&bob).await, [call_id]);
    alice.disconnect().await;
    bob.disconnect().await;
    server.shutdown().await.expect("shutdown");
}

/// `callplus token --postgres URL` signs with the app a PostgreSQL-backed server created, and
/// the server accepts the token; `CALLPLUS_POSTGRES` works the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_command_reads_the_app_from_postgres() {
    let url = support::postgres::fresh_database();
    let server = start(&url).await;
    let app = server.app_credentials().clone();
    let empty_dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_callplus");
    let by_flag = std::process::Command::new(bin)
        .args(["token", "--user", "carol", "--postgres", &url, "--data-dir"])
        .arg(empty_dir.path())
        .env_remove("CALLPLUS_POSTGRES")
        .output()
        .unwrap();
    assert!(by_flag.status.success(), "{}", String::from_utf8_lossy(&by_flag.stderr));
    let by_env = std::process::Command::new(bin)
        .args(["token", "--user", "carol", "--data-dir"])
        .arg(empty_dir.path())
        .env("CALLPLUS_POSTGRES", &url)
        .output()
        .unwrap();
    assert!(by_env.status.success(), "{}", String::from_utf8_lossy(&by_env.stderr));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    for out in [by_flag, by_env] {
        let minted = String::from_utf8(out.stdout).unwrap();
        let claims =
            callplus_signal::token::verify(minted.trim(), &app.app_secret, now).expect("signed by the app");
        assert_eq!(claims.user_id, "carol");
        let (client, _events) = Client::connect(
            &format!("http://{}", server.grpc_addr()),
            minted.trim(),
            ClientOptions::default(),
        )
        .await
        .expect("the server accepts the token");
        drop(client);
    }
}

/// `sslmode=require` (and `verify-full`) with `sslrootcert` connects over TLS to a PostgreSQL
/// that refuses plaintext; without the right root the certificate is refused, and a URL without
/// `sslmode` is refused by the server (so the working connections really are encrypted).
#[test]
fn tls_to_postgres_follows_the_url() {
    use callplus_signal::storage::{PostgresStorage, RecordRow, Storage as _, StorageError};

    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let pg =
        support::postgres::OwnedPostgres::start_with_tls(&made.cert.pem(), &made.signing_key.serialize_pem());
    let ca = pg.dir().join("ca.pem");
    std::fs::write(&ca, made.cert.pem()).unwrap();
    let base = pg.url();

    for mode in ["require", "verify-full"] {
        let url = format!("{base}?sslmode={mode}&sslrootcert={}", ca.display());
        let storage = PostgresStorage::open(&url).unwrap_or_else(|e| panic!("sslmode={mode}: {e}"));
        let row = RecordRow {
            app_key: "app".into(),
            owner_id: mode.into(),
            call_id: "c1".into(),
            sync_time: 1,
            body: b"over TLS".to_vec(),
            fence: 0,
        };
        storage.append_records(std::slice::from_ref(&row)).unwrap();
        let page =
            storage.page_records("app", mode, -1, 10, callplus_signal::storage::PageOrder::Asc).unwrap();
        assert_eq!(page.rows, vec![row]);
    }

    let plaintext = PostgresStorage::open(&base);
    assert!(matches!(&plaintext, Err(StorageError::Postgres(_))), "plaintext refused: {plaintext:?}");
    // The Mozilla roots do not hold the test's certificate.
    let unknown_root = PostgresStorage::open(&format!("{base}?sslmode=require"));
    let text = unknown_root.as_ref().err().map(ToString::to_string).unwrap_or_default();
    assert!(text.contains("certificate"), "an unknown certificate is refused: {text}");
    let verify_ca = PostgresStorage::open(&format!("{base}?sslmode=verify-ca"));
    assert!(matches!(verify_ca, Err(StorageError::InvalidArgument(_))));
}
