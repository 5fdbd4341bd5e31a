//! The web engine's API, driven as a page drives it (bytes in, bytes and JSON out) against a
//! real server on 127.0.0.1: a full 1:1 video call with media negotiation relayed through the
//! engine's media commands, records, and refused input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use callplus_proto::prost::Message as _;
use callplus_proto::v1 as pb;
use callplus_proto::v1::signal_client::SignalClient;
use callplus_server::server::{RunningServer, Server};
use callplus_web::WebEngine;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

const WAIT: Duration = Duration::from_secs(20);

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_millis() as f64)
}

/// One page: the engine and its connection to the server.
struct Page {
    engine: WebEngine,
    tx: mpsc::UnboundedSender<pb::ClientFrame>,
    events: Vec<Value>,
    driver: Vec<Value>,
    media: Vec<Value>,
}

impl Page {
    /// Moves everything the engine put out: frames to the server, the rest to the logs.
    fn flush(&mut self) {
        while let Some(bytes) = self.engine.poll_transmit() {
            let frame =
                pb::ClientFrame::decode(bytes.as_slice()).expect("the engine's bytes are a ClientFrame");
            let _ = self.tx.send(frame);
        }
        while let Some(text) = self.engine.poll_event() {
            self.events.push(serde_json::from_str(&text).expect("event JSON"));
        }
        while let Some(text) = self.engine.poll_driver_event() {
            self.driver.push(serde_json::from_str(&text).expect("driver event JSON"));
        }
        while let Some(text) = self.engine.poll_media() {
            self.media.push(serde_json::from_str(&text).expect("media command JSON"));
        }
    }

    fn event(&self, kind: &str) -> Option<&Value> {
        self.events.iter().find(|e| e["type"] == kind)
    }

    fn media(&self, kind: &str) -> Option<&Value> {
        self.media.iter().find(|e| e["type"] == kind)
    }

    fn completed(&self, request_id: u64) -> Option<&Value> {
        self.driver.iter().find(|e| e["type"] == "requestCompleted" && e["requestId"] == request_id)
    }
}

/// Pages connected to one server; frames from the server arrive on one channel.
struct World {
    server: RunningServer,
    pages: Vec<Page>,
    inbound: mpsc::UnboundedReceiver<(usize, Vec<u8>)>,
    inbound_tx: mpsc::UnboundedSender<(usize, Vec<u8>)>,
}

impl World {
    async fn start() -> World {
        let server = Server::builder()
            .listen("127.0.0.1:0")
            .admin_listen("127.0.0.1:0")
            .in_memory()
            .start()
            .await
            .expect("the server starts");
        let (inbound_tx, inbound) = mpsc::unbounded_channel();
        World { server, pages: Vec::new(), inbound, inbound_tx }
    }

    async fn open(&mut self, user: &str, device: &str) -> usize {
        let token = self.server.mint_token(user, Duration::from_secs(3600)).expect("a token");
        let mut engine = WebEngine::new(device, &token, "callplus-web-test").expect("an engine");
        let channel = tonic::transport::Channel::from_shared(self.server.grpc_url())
            .expect("a URL")
            .connect()
            .await
            .expect("the server answers");
        let mut client = SignalClient::new(channel);
        let (tx, rx) = mpsc::unbounded_channel();
        let mut stream =
            client.connect(UnboundedReceiverStream::new(rx)).await.expect("a stream").into_inner();
        let idx = self.pages.len();
        let inbound = self.inbound_tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(frame)) = stream.message().await {
                if inbound.send((idx, frame.encode_to_vec())).is_err() {
                    break;
                }
            }
        });
        engine.transport_connected(now());
        self.pages.push(Page { engine, tx, events: Vec::new(), driver: Vec::new(), media: Vec::new() });
        self.pages[idx].flush();
        self.until(&format!("{user} connected"), |w| w.pages[idx].engine.connection_state() == "CONNECTED")
            .await;
        idx
    }

    /// Runs the pages (frames, timers) until `done` holds; fails after [`WAIT`].
    async fn until(&mut self, what: &str, done: impl Fn(&World) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            for page in &mut self.pages {
                page.flush();
            }
            if done(self) {
                return;
            }
            let now_ms = now();
            let next_timer =
                self.pages.iter().filter_map(|p| p.engine.poll_timeout()).fold(f64::INFINITY, f64::min);
            let until_timer = Duration::from_millis((next_timer - now_ms).clamp(0.0, 60_000.0) as u64);
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("{what}: timed out"));
            match tokio::time::timeout(left.min(until_timer), self.inbound.recv()).await {
                Ok(Some((idx, bytes))) => {
                    self.pages[idx].engine.handle_frame(now(), &bytes).expect("a valid frame")
                }
                Ok(None) => panic!("{what}: the connections closed"),
                Err(_) => {
                    for page in &mut self.pages {
                        page.engine.handle_timeout(now());
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn a_video_call_between_two_pages_negotiates_media_through_the_engine() {
    let mut w = World::start().await;
    let (alice, bob) = (w.open("alice", "alice-web").await, w.open("bob", "bob-web").await);

    let users = vec!["bob".to_owned()];
    let start =
        w.pages[alice].engine.start_call(now(), &users, "SINGLE", "AUDIO_VIDEO", "hello", -1.0, "").unwrap();
    w.until("bob rings and alice's start completes", |w| {
        w.pages[bob].event("receivedCall").is_some() && w.pages[alice].completed(start).is_some()
    })
    .await;
    let received = w.pages[bob].event("receivedCall").unwrap().clone();
    assert_eq!(received["extra"], "hello");
    assert_eq!(received["inviter"], "alice");
    assert_eq!(received["session"]["mediaType"], "AUDIO_VIDEO");
    assert_eq!(received["session"]["state"], "INCOMING");
    let call_id = received["session"]["callId"].as_str().unwrap().to_owned();
    assert_eq!(w.pages[alice].completed(start).unwrap()["result"]["call"]["callId"], call_id.as_str());
    assert!(w.pages[alice].media.is_empty() && w.pages[bob].media.is_empty(), "no media before the answer");

    w.pages[bob].engine.accept(now(), &call_id).unwrap();
    w.until("both connected", |w| {
        w.pages[alice].event("callConnected").is_some() && w.pages[bob].event("callConnected").is_some()
    })
    .await;
    // The engine decided: alice's ("alice", "alice-web") sorts first, so she offers.
    let alice_start = w.pages[alice].media("start").unwrap().clone();
    assert_eq!(alice_start["callId"], call_id.as_str());
    assert_eq!(alice_start["mediaType"], "AUDIO_VIDEO");
    assert_eq!(
        alice_start["peers"],
        serde_json::json!([{ "userId": "bob", "deviceId": "bob-web", "offerer": true }])
    );
    assert_eq!(alice_start["cameraEnabled"], true);
    let bob_start = w.pages[bob].media("start").unwrap().clone();
    assert_eq!(
        bob_start["peers"],
        serde_json::json!([{ "userId": "alice", "deviceId": "alice-web", "offerer": false }])
    );

    // The pages' RTCPeerConnections would produce these; the engine routes them.
    w.pages[alice]
        .engine
        .send_media_signal(now(), &call_id, "bob", "bob-web", "offer", "v=0 offer", "", 0)
        .unwrap();
    w.pages[alice]
        .engine
        .send_media_signal(
            now(),
            &call_id,
            "bob",
            "bob-web",
            "candidate",
            "candidate:1 1 udp 1 127.0.0.1 9 typ host",
            "0",
            0,
        )
        .unwrap();
    w.until("bob applies the offer and the candidate", |w| {
        w.pages[bob].media.iter().filter(|m| m["type"] == "applySignal").count() == 2
    })
    .await;
    let applied: Vec<&Value> = w.pages[bob].media.iter().filter(|m| m["type"] == "applySignal").collect();
    assert_eq!(applied[0]["signal"], serde_json::json!({ "kind": "offer", "sdp": "v=0 offer" }));
    assert_eq!(applied[1]["signal"]["kind"], "candidate");
    assert_eq!(applied[1]["signal"]["sdpMid"], "0");
    assert_eq!(applied[1]["fromDevice"], "alice-web");
    w.pages[bob]
        .engine
        .send_media_signal(now(), &call_id, "alice", "alice-web", "answer", "v=0 answer", "", 0)
        .unwrap();
    w.until("alice applies the answer", |w| w.pages[alice].media("applySignal").is_some()).await;
    assert_eq!(w.pages[alice].media("applySignal").unwrap()["signal"]["sdp"], "v=0 answer");

    // A rendered frame: the engine reports the call's first one, and both pages hear of it.
    w.pages[bob].engine.media_first_frame(now(), &call_id).unwrap();
    w.until("first frame time", |w| {
        w.pages[alice].event("callFirstFrameTime").is_some()
            && w.pages[bob].event("callFirstFrameTime").is_some()
    })
    .await;

    w.pages[alice].engine.set_camera_enabled(now(), false).unwrap();
    w.until("bob sees the camera off", |w| w.pages[bob].event("remoteCameraStateChanged").is_some()).await;
    assert_eq!(w.pages[alice].media("setDevice").unwrap()["kind"], "VIDEO");
    assert_eq!(w.pages[alice].media("setDevice").unwrap()["enabled"], false);

    w.pages[alice].engine.hangup(now(), "", r#"{"title": "Missed call"}"#).unwrap();
    w.until("both ended with records and summaries", |w| {
        [alice, bob].iter().all(|&p| {
            let page = &w.pages[p];
            ["callEnded", "receivedCallRecord", "receivedCallPlusSummaryMessage"]
                .iter()
                .all(|k| page.event(k).is_some())
        })
    })
    .await;
    assert_eq!(w.pages[alice].event("callEnded").unwrap()["reason"], "HANGUP");
    assert_eq!(w.pages[bob].event("callEnded").unwrap()["reason"], "REMOTE_HANGUP");
    assert!(w.pages[alice].media("stop").is_some() && w.pages[bob].media("stop").is_some());
    let summary = &w.pages[bob].event("receivedCallPlusSummaryMessage").unwrap()["summary"];
    assert_eq!(
        (summary["caller"].as_str(), summary["direction"].as_str()),
        (Some("alice"), Some("INCOMING"))
    );

    let page = w.pages[alice].engine.get_call_records(now(), -1.0, 10, "DESC").unwrap();
    w.until("records", |w| w.pages[alice].completed(page).is_some()).await;
    let records = &w.pages[alice].completed(page).unwrap()["result"]["records"];
    assert_eq!(records[0]["call"]["callId"], call_id.as_str());
    assert_eq!(records[0]["direction"], "OUTGOING");
}

#[tokio::test]
async fn bad_input_from_a_page_gets_a_clear_error() {
    let mut w = World::start().await;
    let alice = w.open("alice", "alice-web").await;
    let engine = &mut w.pages[alice].engine;

    let e = engine.accept(now(), "not a call id!").unwrap_err();
    let json: Value = serde_json::from_str(&callplus_web::error_json(&e)).unwrap();
    assert_eq!(json["name"], "CALL_ID_INVALID");
    assert_eq!(json["code"], 80008);

    let e = engine.start_call(now(), &["bob".to_owned()], "TRIPLE", "AUDIO", "", -1.0, "").unwrap_err();
    assert_eq!(e.code, callplus_session::Code::ParamError);
    let e = engine.start_call(now(), &["bob".to_owned()], "SINGLE", "HOLOGRAM", "", -1.0, "").unwrap_err();
    assert_eq!(e.code, callplus_session::Code::MediaTypeInvalid);
    let e = engine.start_call(now(), &[], "SINGLE", "AUDIO", "", -1.0, "").unwrap_err();
    assert_eq!(e.code, callplus_session::Code::UserListInvalid);
    for push in ["[1]", "{\"title\": 5}", "{\"ios\": \"x\"}", "{\"android\": {\"vendor\": {\"k\": 1}}}", "{"]
    {
        let e = engine.start_call(now(), &["bob".to_owned()], "SINGLE", "AUDIO", "", -1.0, push).unwrap_err();
        assert_eq!(e.code, callplus_session::Code::ParamError, "pushConfig {push}");
        assert!(e.message.contains("pushConfig"), "{}", e.message);
        let e = engine.hangup(now(), "", push).unwrap_err();
        assert_eq!(e.code, callplus_session::Code::ParamError, "hangup's pushConfig {push}");
    }
    let e = engine.send_media_signal(now(), "c1", "bob", "d", "telepathy", "x", "", 0).unwrap_err();
    assert_eq!(e.code, callplus_session::Code::ParamError);

    let e = engine.handle_frame(now(), &[0xff, 0xff, 0xff]).unwrap_err();
    assert_eq!(e.code, callplus_session::Code::FrameInvalid);
    assert_eq!(engine.connection_state(), "CONNECTED", "garbage from the wire changes nothing");
    assert!(WebEngine::new("bad device!", "t", "v").is_err());
}
