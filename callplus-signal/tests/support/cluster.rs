//! One node of a test deployment: a real `callplus serve --postgres URL --redis URL --node-id
//! ID` on 127.0.0.1, heartbeats every 2 s, its data directory temporary.

use std::time::Duration;

use callplus_session::DeviceId;
use callplus_signal::client::{Client, ClientOptions, EventStream};

use super::process::{self, Banner};
use super::redis::OwnedRedis;

/// A running node.
pub struct Node {
    pub child: tokio::process::Child,
    pub banner: Banner,
    _dir: tempfile::TempDir,
}

impl Node {
    /// Starts the node `node_id` on the shared `postgres` database and `redis`.
    pub async fn start(postgres: &str, redis: &OwnedRedis, node_id: &str) -> Node {
        Node::start_with(postgres, redis, node_id, &[]).await
    }

    /// Like [`Node::start`], with `extra` flags for `serve`.
    pub async fn start_with(postgres: &str, redis: &OwnedRedis, node_id: &str, extra: &[&str]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let (child, banner, lines) = process::spawn(
            process::callplus()
                .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
                .args(["--heartbeat-interval", "2s", "--liveness-timeout", "8s"])
                .args(["--postgres", postgres, "--redis", &redis.url(), "--node-id", node_id])
                .args(["--media-listen", "127.0.0.1:0"])
                .args(extra)
                .arg("--data-dir")
                .arg(dir.path())
                .env("CALLPLUS_LOG", "warn")
                .env_remove("CALLPLUS_POSTGRES")
                .env_remove("CALLPLUS_REDIS"),
        )
        .await;
        process::drain(lines);
        Node { child, banner, _dir: dir }
    }

    /// The text after `label` on the node's banner.
    pub fn value(&self, label: &str) -> String {
        self.banner.value(label)
    }

    /// The token of `user`, signed with the app's `secret` (shown only by the node that made
    /// the app).
    pub fn token(&self, secret: &str, user: &str) -> String {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        callplus_signal::token::mint(&self.value("app key:"), secret, user, now, 3600).unwrap()
    }

    /// Connects `user`'s `device` with a token signed with the app's `secret`.
    pub async fn connect(&self, secret: &str, user: &str, device: &str) -> (Client, EventStream) {
        let options = ClientOptions {
            reconnect_backoff_min: Duration::from_millis(20),
            reconnect_backoff_max: Duration::from_millis(200),
            ..ClientOptions::default().with_device_id(DeviceId::new(device).unwrap())
        };
        Client::connect(&self.value("gRPC (devices):"), &self.token(secret, user), options).await.unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
