//! The signalling server's side of a remote SFU (`serve --sfu-url`): the switchboard's SFU work
//! goes down a `MediaRelay.Attach` stream to a `callplus sfu` process, its events come back up.
//!
//! The stream is opened again, with backoff, whenever it breaks or cannot be opened; work that
//! comes while there is no stream is dropped. After each attach, every participant device whose
//! SFU connection may be gone (its signals went to an earlier stream, or were dropped) is
//! reported failed, and the switchboard routes it afresh: a new token, a new connection to the
//! SFU as it is now. A refusal (wrong media secret) is logged as an error and retried at the
//! longest backoff, so fixing the secret on the SFU's side is enough.

use std::collections::HashSet;
use std::time::Duration;

use callplus_proto::v1 as pb;
use callplus_proto::v1::media_relay_client::MediaRelayClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Streaming;

use super::driver::{DriverHandle, Input};
use super::media_relay::SfuCommand;
use crate::relay::RemoteSfu;
use crate::relay::wire::{self, Participant};

/// First wait before attaching again.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait before attaching again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long opening the connection to the SFU may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the connection to the SFU is pinged (HTTP/2 PING).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered before the connection counts as lost.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an attach failed.
#[derive(Debug, thiserror::Error)]
enum AttachError {
    /// The SFU cannot be reached.
    #[error("cannot reach the SFU: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The SFU refused this server.
    #[error("the SFU refused this server: {0}")]
    Refused(String),
    /// The stream could not be opened.
    #[error("the SFU did not open the relay stream: {0}")]
    Stream(tonic::Status),
    /// The URL is not usable.
    #[error("invalid SFU URL: {0}")]
    Url(String),
}

/// An open relay stream.
struct Attached {
    commands: mpsc::UnboundedSender<pb::RelayCommand>,
    events: Streaming<pb::RelayEvent>,
}

async fn attach(remote: &RemoteSfu) -> Result<Attached, AttachError> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(remote.url.clone())
        .map_err(|e| AttachError::Url(e.to_string()))?;
    if let Some(ca) = &remote.tls_ca_pem {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca));
        endpoint = endpoint.tls_config(tls)?;
    }
    let endpoint = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        // An SFU machine that vanishes without closing the connection is noticed too.
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let channel = endpoint.connect().await?;
    let mut client = MediaRelayClient::new(channel);
    let (commands, rx) = mpsc::unbounded_channel();
    let mut request = tonic::Request::new(UnboundedReceiverStream::new(rx));
    let bearer = format!("Bearer {}", remote.secret.attach_proof());
    let bearer = bearer.parse().map_err(|_| AttachError::Url("unusable attach proof".to_owned()))?;
    request.metadata_mut().insert("authorization", bearer);
    match client.attach(request).await {
        Ok(response) => Ok(Attached { commands, events: response.into_inner() }),
        Err(status) if status.code() == tonic::Code::Unauthenticated => {
            Err(AttachError::Refused(status.message().to_owned()))
        }
        Err(status) => Err(AttachError::Stream(status)),
    }
}

/// Participant devices whose SFU connection hangs on the current stream.
#[derive(Default)]
struct Tracked(HashSet<Participant>);

impl Tracked {
    fn note(&mut self, command: &SfuCommand) {
        match command {
            SfuCommand::Signal { call_id, user, device, .. } => {
                self.0.insert(Participant {
                    call_id: call_id.clone(),
                    user: user.clone(),
                    device: device.clone(),
                });
            }
            SfuCommand::Leave { call_id, user, device } => {
                self.0.remove(&Participant {
                    call_id: call_id.clone(),
                    user: user.clone(),
                    device: device.clone(),
                });
            }
            SfuCommand::EndCall { call_id } => self.0.retain(|p| &p.call_id != call_id),
            SfuCommand::Pause { .. } => {}
        }
    }
}

fn command_to_wire(command: SfuCommand) -> pb::RelayCommand {
    use pb::relay_command::Body;
    let body = match command {
        SfuCommand::Signal { call_id, user, device, payload } => {
            Body::Signal(wire::signal_to_wire(&call_id, &user, &device, &payload))
        }
        SfuCommand::Leave { call_id, user, device } => {
            Body::Leave(wire::participant_to_wire(&call_id, &user, &device))
        }
        SfuCommand::Pause { call_id, user, device, kind, paused } => Body::Pause(pb::RelayPause {
            participant: Some(wire::participant_to_wire(&call_id, &user, &device)),
            kind: kind.into(),
            paused,
        }),
        SfuCommand::EndCall { call_id } => {
            Body::EndCall(pb::RelayEndCall { call_id: call_id.as_str().to_owned() })
        }
    };
    pb::RelayCommand { body: Some(body) }
}

/// The driver input an SFU event becomes; `None` for one that makes no sense.
fn event_to_input(event: pb::RelayEvent) -> Option<Input> {
    use pb::relay_event::Body;
    let result = match event.body? {
        Body::Signal(signal) => wire::signal_from_wire(signal).map(|(p, payload)| Input::SfuSignal {
            call_id: p.call_id,
            to_user: p.user,
            to_device: p.device,
            payload,
        }),
        Body::Connected(p) => wire::participant_from_wire(&p).map(|p| Input::SfuConnection {
            call_id: p.call_id,
            user: p.user,
            device: p.device,
            connected: true,
        }),
        Body::Failed(p) => wire::participant_from_wire(&p).map(|p| {
            tracing::info!(call = %p.call_id, user = %p.user, device = %p.device, "sfu connection failed");
            Input::SfuConnection { call_id: p.call_id, user: p.user, device: p.device, connected: false }
        }),
    };
    result.map_err(|e| tracing::warn!(error = %e, "the SFU sent an unusable event")).ok()
}

/// What a relay stream reports of itself (to the placement of several SFUs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkState {
    /// The stream is open: work sent now reaches the SFU.
    Attached,
    /// The stream broke: work sent now is dropped until it attaches again.
    Lost,
}

/// How a relay stream ended.
enum Ended {
    /// The stream broke; attach again.
    Broken,
    /// The driver is gone; stop.
    Stop,
}

/// Runs until the driver is gone (or `rx` closes), telling `on_state` when the stream attaches
/// and when it is lost.
pub(crate) async fn run(
    remote: RemoteSfu,
    mut rx: mpsc::UnboundedReceiver<SfuCommand>,
    driver: DriverHandle,
    on_state: impl Fn(LinkState),
) {
    let mut tracked = Tracked::default();
    let mut backoff = MIN_BACKOFF;
    loop {
        match attach(&remote).await {
            Ok(attached) => {
                tracing::info!(url = %remote.url, "attached to the SFU");
                on_state(LinkState::Attached);
                backoff = MIN_BACKOFF;
                for p in std::mem::take(&mut tracked.0) {
                    let input = Input::SfuConnection {
                        call_id: p.call_id,
                        user: p.user,
                        device: p.device,
                        connected: false,
                    };
                    if !driver.send(input).await {
                        return;
                    }
                }
                match relay(attached, &mut rx, &driver, &mut tracked).await {
                    Ended::Stop => return,
                    Ended::Broken => {
                        tracing::warn!(url = %remote.url, "lost the SFU; attaching again");
                        on_state(LinkState::Lost);
                    }
                }
            }
            Err(AttachError::Refused(reason)) => {
                tracing::error!(url = %remote.url, %reason, "the SFU refused this server; check --media-secret-file");
                backoff = MAX_BACKOFF;
            }
            Err(e) => {
                tracing::warn!(url = %remote.url, error = %e, retry_in = ?backoff, "cannot attach to the SFU")
            }
        }
        // Wait before the next attempt; work that comes meanwhile cannot be applied.
        let wait = tokio::time::sleep(backoff);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                () = &mut wait => break,
                command = rx.recv() => match command {
                    Some(command) => {
                        tracing::debug!(?command, "no SFU attached: dropped SFU work");
                        tracked.note(&command);
                    }
                    None => return,
                },
            }
        }
        backoff = backoff.saturating_mul(2).min(MAX_BACKOFF);
    }
}

async fn relay(
    mut attached: Attached,
    rx: &mut mpsc::UnboundedReceiver<SfuCommand>,
    driver: &DriverHandle,
    tracked: &mut Tracked,
) -> Ended {
    loop {
        tokio::select! {
            command = rx.recv() => match command {
                Some(command) => {
                    tracked.note(&command);
                    if attached.commands.send(command_to_wire(command)).is_err() {
                        return Ended::Broken;
                    }
                }
                None => return Ended::Stop,
            },
            event = attached.events.message() => match event {
                Ok(Some(event)) => {
                    if let Some(input) = event_to_input(event)
                        && !driver.send(input).await
                    {
                        return Ended::Stop;
                    }
                }
                Ok(None) => return Ended::Broken,
                Err(status) => {
                    // A broken connection, or a frame that is not a relay event (garbage, or
                    // larger than the decoder's limit): the stream is given up either way.
                    tracing::warn!(code = ?status.code(), error = %status.message(), "the SFU's relay stream failed");
                    return Ended::Broken;
                }
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::relay::MediaSecret;

    /// A fake SFU on 127.0.0.1 whose relay stream sends `body` (gRPC-framed bytes) and then ends
    /// without a status.
    async fn fake_sfu(body: Vec<u8>) -> String {
        let attach = move || {
            let body = body.clone();
            async move {
                axum::response::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(axum::body::Body::from(body))
                    .unwrap()
            }
        };
        let app = axum::Router::new().route("/callplus.v1.MediaRelay/Attach", axum::routing::post(attach));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    /// One gRPC length-prefixed frame (uncompressed) declaring `len` bytes and carrying `bytes`.
    fn frame(len: u32, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(bytes);
        out
    }

    /// Relays from a fake SFU sending `body`: the stream must end as broken, within a deadline and
    /// without a panic, and the driver must get nothing from it.
    async fn relay_from(body: Vec<u8>) {
        let remote =
            RemoteSfu { url: fake_sfu(body).await, secret: MediaSecret::generate(), tls_ca_pem: None };
        let attached = attach(&remote).await.expect("the fake SFU opens the stream");
        let (tx, mut inputs) = mpsc::channel(8);
        let driver = DriverHandle::from_sender(tx);
        let (_commands, mut rx) = mpsc::unbounded_channel();
        let ended = tokio::time::timeout(
            Duration::from_secs(10),
            relay(attached, &mut rx, &driver, &mut Tracked::default()),
        )
        .await
        .expect("the relay gives the stream up");
        assert!(matches!(ended, Ended::Broken), "a bad stream is broken, not the driver's end");
        assert!(inputs.try_recv().is_err(), "nothing of it reaches the driver");
    }

    #[tokio::test]
    async fn garbage_from_the_sfu_ends_the_stream_cleanly() {
        relay_from(frame(6, &[0xff; 6])).await;
    }

    #[tokio::test]
    async fn an_oversized_frame_from_the_sfu_ends_the_stream_cleanly() {
        // Declares 2 GiB: refused from its header, before anything is buffered.
        relay_from(frame(0x7fff_ffff, &[0; 64])).await;
    }

    #[tokio::test]
    async fn an_event_with_unusable_ids_is_dropped_and_a_truncated_frame_ends_the_stream() {
        let signal = pb::RelaySignal {
            call_id: String::new(),
            user_id: "a user".into(),
            device_id: String::new(),
            payload: Some(pb::relay_signal::Payload::SdpOffer("v=0".into())),
        };
        let event = pb::RelayEvent { body: Some(pb::relay_event::Body::Signal(signal)) }.encode_to_vec();
        let empty = pb::RelayEvent { body: None }.encode_to_vec();
        let mut body = frame(event.len() as u32, &event);
        body.extend(frame(empty.len() as u32, &empty));
        body.extend(frame(100, &[1, 2, 3]));
        relay_from(body).await;
    }
}
