//! What `GET /metrics` reports, in the Prometheus (`OpenMetrics`) text format.
//!
//! Counters and gauges are atomics: the hot path (messages in, frames out)
//! never takes a lock. Labelled families are only touched when connections
//! open, close or are refused.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::server::backend::StoreCounters;

/// A `reason` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// Why.
    pub reason: &'static str,
}

/// The server's counters.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Chat connections open now.
    pub connections: Gauge,
    /// Chat connections opened since start.
    pub connections_opened: Counter,
    /// Connections refused before the upgrade, by reason.
    pub refused: Family<Reason, Counter>,
    /// Chat connections closed, by reason.
    pub closed: Family<Reason, Counter>,
    /// Rooms with at least one client.
    pub rooms: Gauge,
    /// Text and binary frames received from clients.
    pub messages_received: Counter,
    /// Bytes of those frames.
    pub bytes_received: Counter,
    /// Frames written to clients (one per recipient).
    pub frames_delivered: Counter,
    /// Frames skipped for clients that fell behind.
    pub frames_missed: Counter,
    /// Bytes of frames held for clients (histories, frames not taken or
    /// not written yet, replays, `/history` answers), counted against
    /// `--max-memory`; kept by the hub's `Budget`.
    pub memory_bytes: Gauge,
    /// `--max-memory`.
    pub memory_limit_bytes: Gauge,
    /// Messages refused because `--max-memory` was reached.
    pub server_full: Counter,
    /// With `--redis`: 1 while the link to Redis is up, else 0.
    pub cluster_link_up: Gauge,
    /// With `--redis`: times the link to Redis was lost.
    pub cluster_outages: Counter,
    /// With `--redis`: events received from Redis.
    pub cluster_received: Counter,
    /// Whether the server runs with `--redis`.
    clustered: bool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(false, None)
    }
}

impl Metrics {
    /// Whether new clients are taken: not with `--redis` while the link is
    /// down, when they are turned away with 1013 (`/readyz`).
    pub fn ready(&self) -> bool {
        !self.clustered || self.cluster_link_up.get() == 1
    }

    /// The counters of a server, with those of the Redis link if
    /// `clustered`, and those of its store if it has one.
    pub fn new(clustered: bool, store: Option<&StoreCounters>) -> Self {
        let mut registry = Registry::with_prefix("chat");
        let metrics = Self {
            connections: Gauge::default(),
            connections_opened: Counter::default(),
            refused: Family::default(),
            closed: Family::default(),
            rooms: Gauge::default(),
            messages_received: Counter::default(),
            bytes_received: Counter::default(),
            frames_delivered: Counter::default(),
            frames_missed: Counter::default(),
            memory_bytes: Gauge::default(),
            memory_limit_bytes: Gauge::default(),
            server_full: Counter::default(),
            cluster_link_up: Gauge::default(),
            cluster_outages: Counter::default(),
            cluster_received: Counter::default(),
            clustered,
            registry: Registry::default(),
        };
        registry.register("connections", "Chat connections open now", metrics.connections.clone());
        registry.register(
            "connections_opened",
            "Chat connections opened since start",
            metrics.connections_opened.clone(),
        );
        registry.register(
            "refused",
            "Connections answered with an HTTP error instead of an upgrade, by reason",
            metrics.refused.clone(),
        );
        registry.register("closed", "Chat connections closed, by reason", metrics.closed.clone());
        registry.register("rooms", "Rooms with at least one client", metrics.rooms.clone());
        registry.register(
            "messages_received",
            "Frames received from clients",
            metrics.messages_received.clone(),
        );
        registry.register(
            "received_bytes",
            "Bytes of frames received from clients",
            metrics.bytes_received.clone(),
        );
        registry.register(
            "frames_delivered",
            "Frames written to clients, one per recipient",
            metrics.frames_delivered.clone(),
        );
        registry.register(
            "frames_missed",
            "Frames skipped for clients that fell behind",
            metrics.frames_missed.clone(),
        );
        registry.register(
            "memory_bytes",
            "Bytes of frames held for clients (histories, frames not taken or not written yet, \
             replays, history answers), against --max-memory",
            metrics.memory_bytes.clone(),
        );
        registry.register(
            "memory_limit_bytes",
            "The most memory_bytes may reach (--max-memory)",
            metrics.memory_limit_bytes.clone(),
        );
        registry.register(
            "server_full",
            "Messages refused because --max-memory was reached",
            metrics.server_full.clone(),
        );
        if clustered {
            registry.register(
                "cluster_link_up",
                "1 while the link to Redis is up, else 0",
                metrics.cluster_link_up.clone(),
            );
            registry.register(
                "cluster_outages",
                "Times the link to Redis was lost",
                metrics.cluster_outages.clone(),
            );
            registry.register(
                "cluster_received",
                "Events received from Redis",
                metrics.cluster_received.clone(),
            );
        }
        if let Some(store) = store {
            register_store(&mut registry, store);
        }
        Self { registry, ..metrics }
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Counts a refusal.
    pub fn refuse(&self, reason: &'static str) {
        self.refused.get_or_create(&Reason { reason }).inc();
    }
}

/// The store's counters (`--db`), in-process only.
fn register_store(registry: &mut Registry, store: &StoreCounters) {
    let counters: [(&str, &str, &Counter); 5] = [
        ("store_written", "Messages written to the store (--db)", &store.written),
        (
            "store_dropped",
            "Messages delivered but not stored: the writer's queue was full \
             (--db-queue-bytes)",
            &store.dropped,
        ),
        ("store_failed", "Messages delivered but not stored: their write failed", &store.failed),
        ("store_errors", "Store transactions that failed", &store.errors),
        (
            "store_trimmed",
            "Messages deleted by retention (--keep-messages, --keep-for, --db-max-bytes)",
            &store.trimmed,
        ),
    ];
    for (name, help, counter) in counters {
        registry.register(name, help, counter.clone());
    }
    let gauges: [(&str, &str, &Gauge); 3] = [
        ("store_queue_bytes", "Message bytes waiting for the store's writer", &store.queue_bytes),
        ("store_bytes", "Message bytes the store holds, against --db-max-bytes", &store.bytes),
        ("store_up", "1 while the store's last transaction succeeded, else 0", &store.up),
    ];
    for (name, help, gauge) in gauges {
        registry.register(name, help, gauge.clone());
    }
}
