//! Prometheus metrics of one server, served as text on the admin listener's `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label of `callplus_calls_ended_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    /// The end reason as the creator saw it (`HANGUP`, `REMOTE_NO_RESPONSE`, …).
    pub(crate) reason: &'static str,
}

/// Label of counters that count outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabel {
    /// The outcome.
    pub(crate) result: String,
}

/// Label of counters per listener.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PortLabel {
    /// `device` or `admin`.
    pub(crate) port: &'static str,
}

/// Every metric the server exports.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    /// Devices with a live connection (or a session the switchboard still keeps).
    pub(crate) connected_devices: Gauge,
    /// Unended calls.
    pub(crate) live_calls: Gauge,
    /// Calls created.
    pub(crate) calls_started: Counter,
    /// Calls ended, by the creator's end reason.
    pub(crate) calls_ended: Family<ReasonLabel, Counter>,
    /// Client frames handed to the switchboard.
    pub(crate) frames_in: Counter,
    /// Server frames queued to connections.
    pub(crate) frames_out: Counter,
    /// Of those, frames the driver wrote to the socket itself rather than through the
    /// connection's writer task (WebSocket connections with nothing queued).
    pub(crate) frames_out_direct: Counter,
    /// Connections accepted by the transport (before authentication).
    pub(crate) connections: Counter,
    /// Connections refused at Hello, by result code.
    pub(crate) auth_failures: Family<ResultLabel, Counter>,
    /// Devices cut for not reading: their connection's outbound queue was full (frames or
    /// bytes), or their session held more unacked frames or bytes than allowed.
    pub(crate) slow_consumers: Counter,
    /// Connections closed because they sent no Hello (device port) or no complete request
    /// (admin port) in time.
    pub(crate) silent_connections: Family<PortLabel, Counter>,
    /// Push webhook deliveries, by outcome.
    pub(crate) pushes: Family<ResultLabel, Counter>,
    /// Push deliveries that waited for an earlier one to the same callee of the same call (a
    /// cancellation behind its invitation): how often the webhook was still busy with it.
    pub(crate) push_waits: Counter,
    /// Presence registry commands (`serve --redis`), by outcome: `ok`, `error` (Redis
    /// unreachable or refusing), `dropped` (the queue to the presence task was full).
    pub(crate) presence: Family<ResultLabel, Counter>,
    /// Work across nodes (`serve --redis`), by outcome: `sent`, `received`, `error`
    /// (Redis unreachable, or an unreadable entry), `unroutable` (the node is gone),
    /// `dropped` (the queue to the routing task was full).
    pub(crate) node_messages: Family<ResultLabel, Counter>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("callplus");
        let m = Metrics {
            registry: Registry::default(),
            connected_devices: Gauge::default(),
            live_calls: Gauge::default(),
            calls_started: Counter::default(),
            calls_ended: Family::default(),
            frames_in: Counter::default(),
            frames_out: Counter::default(),
            frames_out_direct: Counter::default(),
            connections: Counter::default(),
            auth_failures: Family::default(),
            slow_consumers: Counter::default(),
            silent_connections: Family::default(),
            pushes: Family::default(),
            push_waits: Counter::default(),
            presence: Family::default(),
            node_messages: Family::default(),
        };
        registry.register("connected_devices", "Connected device sessions", m.connected_devices.clone());
        registry.register("live_calls", "Calls that have not ended", m.live_calls.clone());
        registry.register("calls_started", "Calls created", m.calls_started.clone());
        registry.register("calls_ended", "Calls ended, by the creator's end reason", m.calls_ended.clone());
        registry.register("frames_in", "Client frames received", m.frames_in.clone());
        registry.register("frames_out", "Server frames sent", m.frames_out.clone());
        registry.register(
            "frames_out_direct",
            "Server frames the driver wrote to the socket itself (WebSocket, nothing queued before them)",
            m.frames_out_direct.clone(),
        );
        registry.register("connections", "Signalling streams opened", m.connections.clone());
        registry.register("auth_failures", "Streams refused at Hello, by code", m.auth_failures.clone());
        registry.register(
            "slow_consumers",
            "Devices cut for not reading: outbound queue full, or too many unacked frames or bytes",
            m.slow_consumers.clone(),
        );
        registry.register(
            "silent_connections_closed",
            "Connections closed for sending no Hello (device port) or no complete request (admin port) in time",
            m.silent_connections.clone(),
        );
        registry.register("pushes", "Push webhook deliveries, by outcome", m.pushes.clone());
        registry.register(
            "push_waits",
            "Push deliveries that waited for an earlier one to the same callee of the same call",
            m.push_waits.clone(),
        );
        registry.register(
            "presence_updates",
            "Presence registry updates (--redis), by outcome: ok, error, dropped",
            m.presence.clone(),
        );
        registry.register(
            "node_messages",
            "Messages between nodes (--redis), by outcome: sent, received, error, unroutable, dropped",
            m.node_messages.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The metrics in the Prometheus text format.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }

    pub(crate) fn count_auth_failure(&self, code: &str) {
        self.auth_failures.get_or_create(&ResultLabel { result: code.to_owned() }).inc();
    }

    pub(crate) fn count_silent(&self, port: &'static str) {
        self.silent_connections.get_or_create(&PortLabel { port }).inc();
    }

    pub(crate) fn count_presence(&self, result: &str) {
        self.presence.get_or_create(&ResultLabel { result: result.to_owned() }).inc();
    }

    pub(crate) fn count_node(&self, result: &str) {
        self.node_messages.get_or_create(&ResultLabel { result: result.to_owned() }).inc();
    }

    pub(crate) fn count_push(&self, result: &str) {
        self.pushes.get_or_create(&ResultLabel { result: result.to_owned() }).inc();
    }
}
