//! The operator's side of a call, through the real server: the admin API removes a participant
//! (`KICKED_BY_SERVER`) or ends a call for everyone (`ENDED_BY_SERVER`), and real clients see it.
#![allow(clippy::expect_used)]

use callplus_session::client::CallOptions;
use callplus_session::{CallId, EndReason, ParticipantState};
use callplus_tests::{
    CallType, Code, Event, MediaType, Party, TestServer, config, connected, ended_with, record_of,
    remote_state,
};

/// Starts a MULTI call from `caller` to `callees`.
async fn multi(caller: &Party, callees: &[&str]) -> CallId {
    caller
        .client
        .start_call(callees, CallType::Multi, MediaType::Audio, CallOptions::default())
        .await
        .expect("multi start_call")
        .call_id()
        .clone()
}

fn end_body(call: &CallId, user: Option<&str>) -> String {
    match user {
        Some(user) => serde_json::json!({ "call_id": call.as_str(), "user_id": user }).to_string(),
        None => serde_json::json!({ "call_id": call.as_str() }).to_string(),
    }
}

#[tokio::test]
async fn the_operator_removes_a_participant_then_ends_the_call() {
    let server = TestServer::start(config()).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut carol = server.user("carol").await;
    let call = multi(&alice, &["bob", "carol"]).await;
    bob.answer(&call).await;
    carol.answer(&call).await;
    alice.expect(connected(&call), "alice connected").await;

    let (status, reply) = server.admin_post("/v1/calls/end", &end_body(&call, Some("bob"))).await;
    assert_eq!(status, 200, "{reply}");
    bob.expect(ended_with(&call, EndReason::KickedByServer), "bob removed").await;
    for party in [&mut alice, &mut carol] {
        let Event::RemoteUserStateChanged { reason, .. } =
            party.expect(remote_state(&call, "bob", ParticipantState::Ended), "bob removed").await
        else {
            unreachable!()
        };
        assert_eq!(reason, Some(EndReason::KickedByServer));
    }
    let info = alice.client.get_call(&call).await.expect("get_call");
    assert!(!info.is_ended(), "two remain: the call goes on");
    // Bob cannot come back by himself.
    let refused = bob.client.join_call(&call).await.expect_err("a removed user cannot rejoin");
    assert_eq!(refused.code, Code::NotInCall, "{refused}");
    assert!(bob.client.get_available_calls().await.expect("available calls").is_empty());

    // Removing him again, or someone never in the call: 409. Another call id: 404.
    let (status, reply) = server.admin_post("/v1/calls/end", &end_body(&call, Some("bob"))).await;
    assert_eq!((status, reply["code"].as_str()), (409, Some("NOT_IN_CALL")), "{reply}");
    let (status, _) = server.admin_post("/v1/calls/end", &end_body(&call, Some("mallory"))).await;
    assert_eq!(status, 409);
    let unknown = CallId::new("no-such-call").expect("an id");
    let (status, reply) = server.admin_post("/v1/calls/end", &end_body(&unknown, None)).await;
    assert_eq!((status, reply["code"].as_str()), (404, Some("CALL_NOT_FOUND")), "{reply}");
    // Not JSON of this endpoint (a token request's body), or not an id: 400, and nothing ends.
    let (status, _) = server.admin_post("/v1/calls/end", r#"{"user_id":"alice"}"#).await;
    assert_eq!(status, 400);
    let (status, _) = server.admin_post("/v1/calls/end", r#"{"call_id":"no spaces"}"#).await;
    assert_eq!(status, 400);
    let null_user = format!(r#"{{"call_id":"{}","user_id":null}}"#, call.as_str());
    let (status, reply) = server.admin_post("/v1/calls/end", &null_user).await;
    assert_eq!(status, 400, "a null user ends nothing: {reply}");
    let (status, _) = server.admin_post("/v1/tokens", &end_body(&call, Some("alice"))).await;
    assert_eq!(status, 400, "an end request's body mints no token");

    let (status, reply) = server.admin_post("/v1/calls/end", &end_body(&call, None)).await;
    assert_eq!(status, 200, "{reply}");
    for party in [&mut alice, &mut carol] {
        party.expect(ended_with(&call, EndReason::EndedByServer), "the call ended by the operator").await;
        let Event::ReceivedCallRecord(record) = party.expect(record_of(&call), "record").await else {
            unreachable!()
        };
        assert_eq!(record.end_reason, EndReason::EndedByServer);
    }
    let Event::ReceivedCallRecord(record) = bob.expect(record_of(&call), "bob's record").await else {
        unreachable!()
    };
    assert_eq!(record.end_reason, EndReason::KickedByServer);
    let (status, _) = server.admin_post("/v1/calls/end", &end_body(&call, None)).await;
    assert_eq!(status, 404, "an ended call is not found");
    server.shutdown().await;
}

#[tokio::test]
async fn the_operator_removing_one_of_two_ends_a_single_call_for_the_other() {
    let server = TestServer::start(config()).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let call = callplus_tests::establish(&mut alice, &mut bob, MediaType::Audio).await;
    let (status, reply) = server.admin_post("/v1/calls/end", &end_body(&call, Some("alice"))).await;
    assert_eq!(status, 200, "{reply}");
    alice.expect(ended_with(&call, EndReason::KickedByServer), "alice removed").await;
    bob.expect(ended_with(&call, EndReason::RemoteKickedByServer), "bob's call ends with her").await;
    server.shutdown().await;
}

fn sign_out_body(user: &str, device: Option<&str>) -> String {
    match device {
        Some(device) => serde_json::json!({ "user_id": user, "device_id": device }).to_string(),
        None => serde_json::json!({ "user_id": user }).to_string(),
    }
}

/// The operator signs one device of a user out, then all of them: each is told
/// `KICKED_BY_SERVER`, stops, and its call ends; the peer of a 1:1 call sees the remote form.
#[tokio::test]
async fn the_operator_signs_a_device_out_then_the_user() {
    use callplus_tests::{ConnectionState, state_is};

    let server = TestServer::start(config()).await;
    let mut alice = server.user("alice").await;
    let mut phone = server.device("bob", "bob-phone").await;
    let mut tablet = server.device("bob", "bob-tablet").await;
    let call = alice.call("bob", MediaType::Audio).await;
    phone.answer(&call).await;
    alice.expect(connected(&call), "alice connected").await;

    // One device: the tablet, which holds no leg of the call.
    let (status, reply) =
        server.admin_post("/v1/users/sign_out", &sign_out_body("bob", Some("bob-tablet"))).await;
    assert_eq!((status, reply["signed_out"].as_u64()), (200, Some(1)), "{reply}");
    let kicked = ConnectionState::Kicked(EndReason::KickedByServer);
    tablet.expect(state_is(kicked), "tablet signed out").await;
    let stopped = tablet.client.get_available_calls().await.map_err(|e| e.code);
    assert_eq!(stopped.expect_err("a signed-out client stops"), Code::NotConnected);
    let info = alice.client.get_call(&call).await.expect("get_call");
    assert!(!info.is_ended(), "the phone's call goes on");

    // A sign-out and a token request can have the same body: each is signed for its endpoint,
    // so neither can be replayed to the other.
    let bob_body = sign_out_body("bob", None);
    let (status, _) = server.admin_post_signed_for("/v1/users/sign_out", "/v1/tokens", &bob_body).await;
    assert_eq!(status, 401, "a sign-out replayed as a token request mints nothing");
    let (status, _) = server.admin_post_signed_for("/v1/tokens", "/v1/users/sign_out", &bob_body).await;
    assert_eq!(status, 401, "a token request replayed as a sign-out signs nobody out");
    assert_eq!(phone.client.connection_state(), ConnectionState::Connected);

    // Bad input signs nobody out: an explicit null device (which would widen it to all), a
    // bad id, a body of another endpoint.
    let (status, _) = server.admin_post("/v1/users/sign_out", r#"{"user_id":"bob","device_id":null}"#).await;
    assert_eq!(status, 400);
    let (status, _) = server.admin_post("/v1/users/sign_out", &sign_out_body("no spaces", None)).await;
    assert_eq!(status, 400);
    let (status, _) = server.admin_post("/v1/users/sign_out", &end_body(&call, Some("bob"))).await;
    assert_eq!(status, 400);
    let info = alice.client.get_call(&call).await.expect("get_call");
    assert!(!info.is_ended(), "still on");

    // Every device of bob: the phone, in the call.
    let (status, reply) = server.admin_post("/v1/users/sign_out", &sign_out_body("bob", None)).await;
    assert_eq!((status, reply["signed_out"].as_u64()), (200, Some(1)), "{reply}");
    phone.expect(state_is(ConnectionState::Kicked(EndReason::KickedByServer)), "phone signed out").await;
    phone.expect(ended_with(&call, EndReason::KickedByServer), "the phone's call ends").await;
    alice.expect(ended_with(&call, EndReason::RemoteKickedByServer), "alice's ends with it").await;
    let Event::ReceivedCallRecord(record) = alice.expect(record_of(&call), "alice's record").await else {
        unreachable!()
    };
    assert_eq!(record.end_reason, EndReason::RemoteKickedByServer);

    // Nobody left to sign out: 0, and nothing else happens.
    let (status, reply) = server.admin_post("/v1/users/sign_out", &sign_out_body("bob", None)).await;
    assert_eq!((status, reply["signed_out"].as_u64()), (200, Some(0)), "{reply}");
    server.shutdown().await;
}
