//! Push notifications for offline callees, POSTed as JSON to the configured webhook: the
//! invitation, and its cancellation when the caller hangs up before the callee answered.
//!
//! Each notification is tried a few times with exponential backoff; before every try of an
//! invitation the driver is asked whether the call is still live, so an ended call is never
//! pushed as ringing.

use std::sync::Arc;
use std::time::Duration;

use callplus_session::switchboard::{PushKind, PushRequest};
use callplus_session::{MediaType, PushConfig};
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::{Semaphore, mpsc};

use super::driver::DriverHandle;
use super::metrics::Metrics;
use super::push_lanes::PushLanes;

/// Push requests waiting for the worker.
pub(crate) const PUSH_QUEUE: usize = 4096;
/// Notifications in flight at once.
const CONCURRENCY: usize = 64;

/// The JSON body POSTed to the webhook.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PushPayload {
    /// `invite` (a call rings for the callee) or `cancel` (the call pushed before was
    /// cancelled before the callee answered: withdraw its notification).
    pub kind: String,
    /// The app.
    pub app_key: String,
    /// The user to wake.
    pub callee: String,
    /// The call.
    pub call_id: String,
    /// Who calls.
    pub caller: String,
    /// `AUDIO` or `AUDIO_VIDEO`.
    pub media_type: String,
    /// The caller's push settings (`title`, `content`, `template_id`, `ios`, `android`,
    /// `custom_data`): those of `start_call` or `invite` for an invitation, of `hangup` for a
    /// cancellation; or `null`.
    pub push_config: Value,
    /// The caller's extra data.
    pub extra: String,
}

impl PushPayload {
    /// The payload of a push request.
    pub fn new(request: &PushRequest) -> Self {
        PushPayload {
            kind: match request.kind {
                PushKind::Invite => "invite",
                PushKind::Cancel => "cancel",
            }
            .to_owned(),
            app_key: request.app.as_str().to_owned(),
            callee: request.callee.as_str().to_owned(),
            call_id: request.call_id.as_str().to_owned(),
            caller: request.caller.as_str().to_owned(),
            media_type: match request.media_type {
                MediaType::Audio => "AUDIO",
                MediaType::AudioVideo => "AUDIO_VIDEO",
            }
            .to_owned(),
            push_config: request.push_config.as_deref().map_or(Value::Null, push_config_json),
            extra: request.extra.clone(),
        }
    }
}

/// The push settings as a JSON object.
pub fn push_config_json(p: &PushConfig) -> Value {
    let mut obj = Map::new();
    obj.insert("title".into(), json!(p.title));
    obj.insert("content".into(), json!(p.content));
    obj.insert("template_id".into(), json!(p.template_id));
    obj.insert("disable_push".into(), json!(p.disable_push));
    obj.insert("custom_data".into(), json!(p.custom_data));
    if let Some(ios) = &p.ios {
        obj.insert(
            "ios".into(),
            json!({
                "thread_id": ios.thread_id,
                "apns_collapse_id": ios.apns_collapse_id,
                "category": ios.category,
                "rich_media_uri": ios.rich_media_uri,
                "voip": ios.voip,
            }),
        );
    }
    if let Some(android) = &p.android {
        obj.insert(
            "android".into(),
            json!({
                "channel_id": android.channel_id,
                "collapse_key": android.collapse_key,
                "vendor": android.vendor,
            }),
        );
    }
    Value::Object(obj)
}

/// Delivery settings.
#[derive(Debug, Clone)]
pub(crate) struct PushSettings {
    pub(crate) url: String,
    pub(crate) attempts: u32,
    pub(crate) backoff: Duration,
}

/// The HTTP client for `url`, checked before the server starts so that a typo in the URL or an
/// unreadable CA stops the start instead of failing every notification later.
///
/// `https://` webhooks trust the bundled Mozilla roots, or only the authorities in `ca_pem`.
pub(crate) fn http_client(
    url: &str,
    ca_pem: Option<&[u8]>,
    timeout: Duration,
) -> Result<reqwest::Client, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("invalid webhook URL {url:?}: {e}"))?;
    match parsed.scheme() {
        "http" | "https" => {}
        other => return Err(format!("the webhook URL {url:?} must be http:// or https://, not {other}://")),
    }
    if ca_pem.is_some() && parsed.scheme() != "https" {
        return Err(format!("a webhook CA is given but {url:?} is not an https:// URL"));
    }
    let mut builder = reqwest::Client::builder().timeout(timeout);
    if let Some(pem) = ca_pem {
        let roots = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| format!("cannot read the webhook CA certificates: {e}"))?;
        if roots.is_empty() {
            return Err("the webhook CA file holds no PEM certificate".to_owned());
        }
        builder = builder.tls_built_in_root_certs(false);
        for root in roots {
            builder = builder.add_root_certificate(root);
        }
    }
    builder.build().map_err(|e| format!("cannot build the webhook HTTP client: {e}"))
}

/// Takes push requests from the driver and delivers them until the queue closes.
pub(crate) async fn run(
    settings: PushSettings,
    client: reqwest::Client,
    mut rx: mpsc::Receiver<PushRequest>,
    driver: DriverHandle,
    metrics: Arc<Metrics>,
) {
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    let lanes = PushLanes::default();
    while let Some(request) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else { break };
        let (client, settings, driver, metrics) =
            (client.clone(), settings.clone(), driver.clone(), metrics.clone());
        // Queued here, in the order the switchboard made them: a cancellation goes after the
        // invitation it withdraws.
        let key = (
            request.app.as_str().to_owned(),
            request.call_id.as_str().to_owned(),
            request.callee.as_str().to_owned(),
        );
        let mut turn = lanes.queue(key);
        if turn.waits() {
            metrics.push_waits.inc();
        }
        tokio::spawn(async move {
            turn.wait().await;
            deliver(&client, &settings, &driver, &metrics, request).await;
            drop(turn);
            drop(permit);
        });
    }
}

async fn deliver(
    client: &reqwest::Client,
    settings: &PushSettings,
    driver: &DriverHandle,
    metrics: &Metrics,
    request: PushRequest,
) {
    if request.push_config.as_ref().is_some_and(|p| p.disable_push) {
        return;
    }
    let payload = PushPayload::new(&request);
    let mut delay = settings.backoff;
    for attempt in 1..=settings.attempts.max(1) {
        let ringing = request.kind == PushKind::Invite;
        if ringing && !driver.is_call_live(request.app.clone(), request.call_id.clone()).await {
            tracing::debug!(call = %request.call_id, "call ended; push skipped");
            metrics.count_push("skipped_ended");
            return;
        }
        match client.post(&settings.url).json(&payload).send().await {
            Ok(resp) if resp.status().is_success() => {
                tracing::debug!(call = %request.call_id, callee = %request.callee, "push delivered");
                metrics.count_push("delivered");
                return;
            }
            Ok(resp) => {
                tracing::warn!(attempt, status = %resp.status(), call = %request.call_id, "push webhook refused");
            }
            Err(e) => {
                let error = callplus_session::error::error_chain(&e);
                tracing::warn!(attempt, %error, call = %request.call_id, "push webhook failed");
            }
        }
        if attempt < settings.attempts {
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2);
        }
    }
    metrics.count_push("failed");
    tracing::error!(call = %request.call_id, callee = %request.callee, "push not delivered; giving up");
}
