//! Media between devices on different nodes of a deployment: two real `callplus serve` nodes on
//! one PostgreSQL and one Redis (all started by the test on 127.0.0.1), real media clients on
//! each. A 1:1 call's peer-to-peer media is negotiated through both nodes (the SDP and ICE of
//! the device on the other node travel through the owner's routing), and a group call's media
//! goes through the owner's SFU for every participant, wherever their signalling lives.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use callplus_media::{MediaEvent, MediaKind};
use callplus_session::{CallType, MediaType};
use support::cluster::Node;
use support::media::{MediaParty, Server, ended, first_frame, frames, received};
use support::redis::OwnedRedis;

fn server(node: &Node, secret: &str) -> Server {
    Server {
        url: node.value("gRPC (devices):"),
        app_key: node.value("app key:"),
        app_secret: secret.to_owned(),
    }
}

/// A status report with exactly one connection, to `user` (its device is not checked).
fn one_connection_to(user: &str) -> impl Fn(&MediaEvent) -> bool + '_ {
    move |e| matches!(e, MediaEvent::Stats(s) if s.per_peer.len() == 1 && s.per_peer[0].user.as_str() == user)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_flows_between_devices_on_different_nodes_peer_to_peer_and_through_the_owners_sfu() {
    let Some(redis) = OwnedRedis::start() else { return };
    let postgres = support::postgres::fresh_database();
    let a = Node::start(&postgres, &redis, "node-a").await;
    let b = Node::start(&postgres, &redis, "node-b").await;
    let secret = a.value("app secret:");
    let tmp = tempfile::tempdir().unwrap();
    let (on_a, on_b) = (server(&a, &secret), server(&b, &secret));
    let mut alice = MediaParty::connect(&on_a, "alice", 440.0, (320, 240), tmp.path()).await;
    let mut bob = MediaParty::connect(&on_b, "bob", 660.0, (160, 120), tmp.path()).await;
    let mut carol = MediaParty::connect(&on_b, "carol", 880.0, (240, 176), tmp.path()).await;

    // --- alice on A calls bob on B, audio and video, peer to peer. ---------------------------
    let started =
        alice.client.start_call(&["bob"], CallType::Single, MediaType::AudioVideo, Default::default()).await;
    let call = started.unwrap().call_id().clone();
    assert!(call.as_str().starts_with("node-a_"), "owned by the caller's node: {call:?}");
    bob.expect("the call on node B", received(&call)).await;
    bob.client.accept(&call).await.unwrap();
    for (party, from) in [(&mut alice, "bob"), (&mut bob, "alice")] {
        party.expect_media(&format!("{from}'s video"), first_frame(from, MediaKind::Video)).await;
        let mut audio = party.frames_from(from, MediaKind::Audio).await;
        frames(&mut audio, 50, &format!("{from}'s audio at {}", party.name)).await;
        // One connection, straight to the other device: no SFU in a 1:1 call.
        party.expect_media("a report of one connection", one_connection_to(from)).await;
    }
    alice.client.hangup(Some(&call)).await.unwrap();
    bob.expect("the end on node B", ended(&call)).await;

    // --- a group call made on A with two participants on B: through node A's SFU. ------------
    let started = alice
        .client
        .start_call(&["bob", "carol"], CallType::Multi, MediaType::AudioVideo, Default::default())
        .await;
    let group = started.unwrap().call_id().clone();
    for party in [&mut bob, &mut carol] {
        party.expect("the group call on node B", received(&group)).await;
        party.client.accept(&group).await.unwrap();
    }
    for party in [&mut alice, &mut bob, &mut carol] {
        let me = party.name.clone();
        for from in ["alice", "bob", "carol"].into_iter().filter(|n| *n != me) {
            party.expect_media(&format!("{from}'s video"), first_frame(from, MediaKind::Video)).await;
            let mut video = party.frames_from(from, MediaKind::Video).await;
            frames(&mut video, 10, &format!("{from}'s video at {}", party.name)).await;
        }
        let sfu = callplus_signal::server::SFU_USER;
        party.expect_media("a report of one connection, the SFU's", one_connection_to(sfu)).await;
    }
    alice.client.hangup(Some(&group)).await.unwrap();
    bob.client.hangup(Some(&group)).await.unwrap();
    carol.expect("the group call's end", ended(&group)).await;
}
