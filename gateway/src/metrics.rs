//! What the gateway holds right now and what it has done: Prometheus text
//! at `/metrics`, the same live counts as JSON at `/status` (which tests
//! and operators read to prove nothing leaked).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};
use serde::Serialize;

use dialtone_room::stats::MediaStatsSnapshot;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoopLabel {
    media_loop: String,
}

/// Live counts plus totals. Gauges move through [`Held`] guards so a task
/// that ends any way at all gives back what it counted.
pub struct Metrics {
    registry: Registry,
    pub ws_connections: Gauge,
    pub sessions: Gauge,
    pub registrations: Gauge,
    pub tasks: Gauge,
    pub sip_transactions: Gauge,
    pub sip_connections: Gauge,
    pub sip_dialogs: Gauge,
    pub calls: Gauge,
    pub media_ports: Gauge,
    pub rooms: Gauge,
    pub room_members: Gauge,
    pub media_points: Gauge,
    pub recordings: Gauge,
    pub sessions_started: Counter,
    pub sessions_failed: Family<ReasonLabel, Counter>,
    pub protocol_errors: Family<ReasonLabel, Counter>,
    /// Relays the kernel fast path carries now, and the packets it has
    /// forwarded (counted as the gateway reads them back, about a second
    /// late).
    pub kernel_relays: Gauge,
    pub kernel_forwarded_packets: Counter,
    /// Each media loop's last second, set as `/metrics` is read.
    media_loop_busy: Family<LoopLabel, Gauge<f64, AtomicU64>>,
    media_loop_rooms: Family<LoopLabel, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: String,
}

#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    pub max_points_per_session: usize,
    pub max_members: usize,
    pub max_rooms: usize,
    pub max_recordings: usize,
    pub max_recording_bytes: u64,
}

/// The `/status` document.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub version: &'static str,
    /// A drain has started: this gateway takes no new sessions.
    pub draining: bool,
    pub ws_connections: i64,
    pub sessions: i64,
    pub registrations: i64,
    pub tasks: i64,
    pub sip_transactions: i64,
    pub sip_connections: i64,
    pub sip_dialogs: i64,
    pub calls: i64,
    pub media_ports: i64,
    /// Conference rooms (CREATE_ROOM).
    pub rooms: i64,
    /// JOIN_ROOM points and calls placed into rooms.
    pub room_members: i64,
    /// CREATE_MEDIA_POINT points.
    pub media_points: i64,
    pub recordings: i64,
    /// The configured limits the counts above run into.
    pub limits: Limits,
    /// RTP statistics of each call whose media flows, by callId.
    pub media: BTreeMap<String, MediaStatsSnapshot>,
}

impl Metrics {
    /// The registry, with the configured `limits` as the `dialtone_limit` gauge family.
    pub fn new(limits: &Limits) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("dialtone");
        let metrics = Metrics {
            ws_connections: Gauge::default(),
            sessions: Gauge::default(),
            registrations: Gauge::default(),
            tasks: Gauge::default(),
            sip_transactions: Gauge::default(),
            sip_connections: Gauge::default(),
            sip_dialogs: Gauge::default(),
            calls: Gauge::default(),
            media_ports: Gauge::default(),
            rooms: Gauge::default(),
            room_members: Gauge::default(),
            media_points: Gauge::default(),
            recordings: Gauge::default(),
            sessions_started: Counter::default(),
            sessions_failed: Family::default(),
            protocol_errors: Family::default(),
            kernel_relays: Gauge::default(),
            kernel_forwarded_packets: Counter::default(),
            media_loop_busy: Family::default(),
            media_loop_rooms: Family::default(),
            registry: Registry::default(),
        };
        let gauges: [(&str, &str, &Gauge); 14] = [
            (
                "ws_connections",
                "Open client WebSockets",
                &metrics.ws_connections,
            ),
            ("sessions", "Started client sessions", &metrics.sessions),
            (
                "registrations",
                "SIP registrations held for sessions",
                &metrics.registrations,
            ),
            (
                "tasks",
                "Session and connection tasks alive",
                &metrics.tasks,
            ),
            (
                "sip_transactions",
                "SIP transactions in progress",
                &metrics.sip_transactions,
            ),
            (
                "sip_connections",
                "SIP stream connections open",
                &metrics.sip_connections,
            ),
            ("sip_dialogs", "SIP dialogs held", &metrics.sip_dialogs),
            ("calls", "Calls in progress", &metrics.calls),
            (
                "media_ports",
                "RTP/RTCP port pairs leased",
                &metrics.media_ports,
            ),
            ("rooms", "Conference rooms (CREATE_ROOM)", &metrics.rooms),
            (
                "room_members",
                "Points and calls that joined a room",
                &metrics.room_members,
            ),
            (
                "media_points",
                "Media points of CREATE_MEDIA_POINT",
                &metrics.media_points,
            ),
            (
                "recordings",
                "Recordings being written",
                &metrics.recordings,
            ),
            (
                "kernel_relays",
                "Relays the kernel fast path carries now",
                &metrics.kernel_relays,
            ),
        ];
        register_all(&mut registry, &gauges);
        let limit: Family<LimitLabel, Gauge> = Family::default();
        let configured = [
            (
                "max_points_per_session",
                limits.max_points_per_session as i64,
            ),
            ("max_members", limits.max_members as i64),
            ("max_rooms", limits.max_rooms as i64),
            ("max_recordings", limits.max_recordings as i64),
            (
                "max_recording_bytes",
                i64::try_from(limits.max_recording_bytes).unwrap_or(i64::MAX),
            ),
        ];
        for (name, value) in configured {
            limit
                .get_or_create(&LimitLabel {
                    limit: name.to_string(),
                })
                .set(value);
        }
        registry.register("limit", "Configured limits, by name", limit);
        let counters: [(&str, &str, &Counter); 2] = [
            (
                "sessions_started",
                "Sessions that reached SESSION_STARTED",
                &metrics.sessions_started,
            ),
            (
                "kernel_forwarded_packets",
                "RTP packets the kernel fast path forwarded",
                &metrics.kernel_forwarded_packets,
            ),
        ];
        register_all(&mut registry, &counters);
        registry.register(
            "sessions_failed",
            "Sessions that ended in SESSION_FAILED, by reason",
            metrics.sessions_failed.clone(),
        );
        registry.register(
            "protocol_errors",
            "ERROR replies sent to clients, by code",
            metrics.protocol_errors.clone(),
        );
        registry.register(
            "media_loop_busy_ratio",
            "Share of its last second each media loop spent working",
            metrics.media_loop_busy.clone(),
        );
        registry.register(
            "media_loop_rooms",
            "Rooms each media loop held at the end of its last second",
            metrics.media_loop_rooms.clone(),
        );
        Arc::new(Metrics {
            registry,
            ..metrics
        })
    }

    /// Each media loop's busy share (0 to 1) and rooms, in loop order.
    pub fn set_media_loops(&self, loops: impl Iterator<Item = (f64, i64)>) {
        for (index, (busy, rooms)) in loops.enumerate() {
            let label = LoopLabel {
                media_loop: index.to_string(),
            };
            self.media_loop_busy.get_or_create(&label).set(busy);
            self.media_loop_rooms.get_or_create(&label).set(rooms);
        }
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    pub fn status(&self) -> Status {
        Status {
            version: env!("CARGO_PKG_VERSION"),
            draining: false,
            ws_connections: self.ws_connections.get(),
            sessions: self.sessions.get(),
            registrations: self.registrations.get(),
            tasks: self.tasks.get(),
            sip_transactions: self.sip_transactions.get(),
            sip_connections: self.sip_connections.get(),
            sip_dialogs: self.sip_dialogs.get(),
            calls: self.calls.get(),
            media_ports: self.media_ports.get(),
            rooms: self.rooms.get(),
            room_members: self.room_members.get(),
            media_points: self.media_points.get(),
            recordings: self.recordings.get(),
            limits: Limits::default(),
            media: BTreeMap::new(),
        }
    }
}

/// One unit of a gauge, given back when dropped.
pub struct Held(Gauge<i64, AtomicI64>);

impl Held {
    pub fn new(gauge: &Gauge) -> Held {
        gauge.inc();
        Held(gauge.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Registers each metric of a table under its name, with its help text.
fn register_all<M: Metric + Clone>(registry: &mut Registry, table: &[(&str, &str, &M)]) {
    for (name, help, metric) in table {
        registry.register(*name, *help, M::clone(metric));
    }
}
