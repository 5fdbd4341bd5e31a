//! alice calls bob, bob accepts, alice hangs up; both print their events and call records.
//!
//! ```text
//! # against an embedded server (in memory, ephemeral port):
//! cargo run -p callplus-signal --example two_party
//! # against a running `callplus serve`:
//! cargo run -p callplus-signal --example two_party -- --endpoint http://127.0.0.1:7700 \
//!     --alice-token "$(callplus token --user alice)" --bob-token "$(callplus token --user bob)"
//! ```
#![allow(clippy::print_stdout)]

use std::time::Duration;

use anyhow::{Context as _, bail};
use callplus_session::client::CallOptions;
use callplus_session::{CallId, CallType, MediaType, RecordOrder};
use callplus_signal::client::{Client, ClientOptions, Event, EventStream, describe_event};
use callplus_signal::server::Server;
use clap::Parser;

/// How long to wait for any one event.
const WAIT: Duration = Duration::from_secs(10);

/// alice calls bob, bob accepts, alice hangs up.
#[derive(Debug, Parser)]
struct Args {
    /// A running server (`http://host:port`); an embedded one is started when absent.
    #[arg(long, env = "CALLPLUS_SERVER")]
    endpoint: Option<String>,
    /// alice's token (required with --endpoint).
    #[arg(long, env = "ALICE_TOKEN")]
    alice_token: Option<String>,
    /// bob's token (required with --endpoint).
    #[arg(long, env = "BOB_TOKEN")]
    bob_token: Option<String>,
}

/// One user: a client and its events, printed as they are taken.
struct Party {
    name: &'static str,
    client: Client,
    events: EventStream,
}

impl Party {
    async fn connect(name: &'static str, endpoint: &str, token: &str) -> anyhow::Result<Party> {
        let (client, events) = Client::connect(endpoint, token, ClientOptions::default())
            .await
            .with_context(|| format!("{name} cannot connect"))?;
        println!("[{name}] connected (device {})", client.device_id());
        Ok(Party { name, client, events })
    }

    /// Prints events until one matches `pred`.
    async fn wait_for(&mut self, what: &str, pred: impl Fn(&Event) -> bool) -> anyhow::Result<Event> {
        loop {
            match tokio::time::timeout(WAIT, self.events.next()).await {
                Ok(Some(event)) => {
                    println!("[{}] {}", self.name, describe_event(&event));
                    if pred(&event) {
                        return Ok(event);
                    }
                }
                Ok(None) => bail!("{}: connection closed while waiting for {what}", self.name),
                Err(_) => bail!("{}: no {what} within {WAIT:?}", self.name),
            }
        }
    }

    async fn print_records(&self) -> anyhow::Result<()> {
        let page = self.client.get_call_records(-1, 10, RecordOrder::Desc).await?;
        println!("[{}] {} call record(s):", self.name, page.records.len());
        for r in &page.records {
            println!(
                "[{}]   {} {:?} {:?} created {} duration {} ms, ended: {:?}",
                self.name,
                r.call.call_id,
                r.direction,
                r.call.media_type,
                r.call.created_at_ms,
                r.duration_ms,
                r.end_reason
            );
        }
        Ok(())
    }

    async fn finish(mut self) {
        self.client.disconnect().await;
        while let Some(event) = self.events.next().await {
            println!("[{}] {}", self.name, describe_event(&event));
        }
    }
}

fn ended(call_id: &CallId) -> impl Fn(&Event) -> bool + '_ {
    move |e| matches!(e, Event::CallEnded { session, .. } if session.call_id() == call_id)
}

fn record(call_id: &CallId) -> impl Fn(&Event) -> bool + '_ {
    move |e| matches!(e, Event::ReceivedCallRecord(r) if &r.call.call_id == call_id)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut embedded = None;
    let (endpoint, alice_token, bob_token) = match (args.endpoint, args.alice_token, args.bob_token) {
        (Some(endpoint), Some(alice), Some(bob)) => (endpoint, alice, bob),
        (Some(_), _, _) => {
            bail!("--endpoint needs --alice-token and --bob-token (or ALICE_TOKEN / BOB_TOKEN)")
        }
        (None, _, _) => {
            let server = Server::builder().in_memory().listen("127.0.0.1:0").no_admin().start().await?;
            let endpoint = format!("http://{}", server.grpc_addr());
            println!("embedded server on {endpoint}");
            let ttl = Duration::from_secs(3600);
            let tokens = (server.mint_token("alice", ttl)?, server.mint_token("bob", ttl)?);
            embedded = Some(server);
            (endpoint, tokens.0, tokens.1)
        }
    };

    let mut alice = Party::connect("alice", &endpoint, &alice_token).await?;
    let mut bob = Party::connect("bob", &endpoint, &bob_token).await?;
    let bob_id = bob.client.user_id().context("bob has a user id once connected")?;

    let started = alice
        .client
        .start_call(&[bob_id.as_str()], CallType::Single, MediaType::AudioVideo, CallOptions::default())
        .await?;
    let call_id = started.call_id().clone();
    println!("[alice] calling {bob_id}: call {call_id}");

    bob.wait_for("the invitation", |e| matches!(e, Event::ReceivedCall { .. })).await?;
    bob.client.ringing(&call_id).await?;
    println!("[bob] accepting");
    bob.client.accept(&call_id).await?;
    bob.wait_for("call connected", |e| matches!(e, Event::CallConnected { .. })).await?;
    alice.wait_for("call connected", |e| matches!(e, Event::CallConnected { .. })).await?;

    println!("[alice] hanging up");
    alice.client.hangup(None).await?;
    for party in [&mut alice, &mut bob] {
        // The end and the record may come in either order.
        let (mut got_end, mut got_record) = (false, false);
        while !(got_end && got_record) {
            let event = party
                .wait_for("the call's end and record", |e| ended(&call_id)(e) || record(&call_id)(e))
                .await?;
            got_end |= ended(&call_id)(&event);
            got_record |= record(&call_id)(&event);
        }
        party.print_records().await?;
    }

    alice.finish().await;
    bob.finish().await;
    if let Some(server) = embedded {
        server.shutdown().await?;
    }
    Ok(())
}
