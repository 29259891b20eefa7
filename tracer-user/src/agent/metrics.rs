//! The Prometheus metrics, fed by the same events the NDJSON stream carries. Every per-target
//! series is labelled `target` (the stable name: the `--match` name, or the process's name for a
//! `--pid`) and `pid`; a target's series go away when it exits.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    alert::Severity,
    event::{AlertKind, Event, PROCESS_STATES},
    tcp::proc::state_name,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub target: String,
    pub pid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    target: String,
    pid: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    target: String,
    pid: String,
    kind: String,
    severity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RingLabels {
    target: String,
    pid: String,
    ring: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Why an event was not delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// A GET /events client did not read fast enough.
    SlowClient,
    /// Nothing read the agent's stdout fast enough.
    Stdout,
    /// Alerts arrived faster than the webhook took them.
    WebhookQueueFull,
    /// Every try to deliver an alert to the webhook failed.
    WebhookFailed,
}

impl Dropped {
    const ALL: [Self; 4] = [
        Self::SlowClient,
        Self::Stdout,
        Self::WebhookQueueFull,
        Self::WebhookFailed,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::SlowClient => "slow_client",
            Self::Stdout => "stdout",
            Self::WebhookQueueFull => "webhook_queue_full",
            Self::WebhookFailed => "webhook_failed",
        }
    }
}

const KINDS: [AlertKind; 4] = [
    AlertKind::VmaExhaustion,
    AlertKind::CloseWaitLeak,
    AlertKind::FinWait2Pileup,
    AlertKind::ConnectionSurge,
];
const SEVERITIES: [Severity; 2] = [Severity::Warning, Severity::Critical];
const RINGS: [&str; 2] = ["vma", "tcp"];

pub struct Metrics {
    registry: Registry,
    vma_count: Family<TargetLabels, Gauge>,
    vma_limit: Family<TargetLabels, Gauge>,
    vma_growth: Family<TargetLabels, FloatGauge>,
    vma_eta: Family<TargetLabels, FloatGauge>,
    tcp_sockets: Family<StateLabels, Gauge>,
    tcp_accept_queue: Family<TargetLabels, Gauge>,
    close_wait_leaks: Family<TargetLabels, Gauge>,
    close_wait_oldest: Family<TargetLabels, FloatGauge>,
    new_connections: Family<TargetLabels, FloatGauge>,
    events_lost: Family<RingLabels, Gauge>,
    untracked: Family<TargetLabels, Gauge>,
    alerts: Family<AlertLabels, Gauge>,
    targets: Gauge,
    attaches: Counter,
    dropped: Family<ReasonLabels, Counter>,
    webhook_sent: Counter,
    cpu: Counter<f64, AtomicU64>,
    rss: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut metrics = Self {
            vma_count: Family::default(),
            vma_limit: Family::default(),
            vma_growth: Family::default(),
            vma_eta: Family::default(),
            tcp_sockets: Family::default(),
            tcp_accept_queue: Family::default(),
            close_wait_leaks: Family::default(),
            close_wait_oldest: Family::default(),
            new_connections: Family::default(),
            events_lost: Family::default(),
            untracked: Family::default(),
            alerts: Family::default(),
            targets: Gauge::default(),
            attaches: Counter::default(),
            dropped: Family::default(),
            webhook_sent: Counter::default(),
            cpu: Counter::default(),
            rss: Gauge::default(),
            registry: Registry::default(),
        };
        metrics.register();
        // Every reason is exported from the start, at 0, so rates work before the first drop.
        for reason in Dropped::ALL {
            metrics.dropped(reason, 0);
        }
        metrics
    }

    /// Names and describes every metric in the registry.
    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "tracer_vma_count",
            "Memory mappings of the target (mm->map_count)",
            self.vma_count.clone(),
        );
        r.register(
            "tracer_vma_limit",
            "vself.max_map_count (or the --max-map-count what-if)",
            self.vma_limit.clone(),
        );
        r.register(
            "tracer_vma_growth_per_minute",
            "Trend of the VMA count, mappings per minute",
            self.vma_growth.clone(),
        );
        r.register(
            "tracer_vma_exhaustion_eta_seconds",
            "Seconds until the VMA count reaches the limit at its trend (absent when not growing)",
            self.vma_eta.clone(),
        );
        r.register(
            "tracer_tcp_sockets",
            "TCP sockets the target holds, per state",
            self.tcp_sockets.clone(),
        );
        r.register(
            "tracer_tcp_accept_queue",
            "Connections on the target's listening ports not accepted yet",
            self.tcp_accept_queue.clone(),
        );
        r.register(
            "tracer_close_wait_leaks",
            "Sockets in CLOSE_WAIT for longer than the leak threshold",
            self.close_wait_leaks.clone(),
        );
        r.register(
            "tracer_close_wait_oldest_seconds",
            "Age of the oldest CLOSE_WAIT socket (0 when none)",
            self.close_wait_oldest.clone(),
        );
        r.register(
            "tracer_tcp_new_connections_per_second",
            "New connections on the target's listening ports, last 10 s",
            self.new_connections.clone(),
        );
        r.register(
            "tracer_events_lost",
            "Kernel records dropped because a ring buffer was full (total since attach)",
            self.events_lost.clone(),
        );
        r.register(
            "tracer_tcp_untracked_sockets",
            "Sockets not followed because --max-sockets was reached (total since attach)",
            self.untracked.clone(),
        );
        r.register(
            "tracer_alert_active",
            "1 while an alert condition is raised",
            self.alerts.clone(),
        );
        r.register(
            "tracer_targets",
            "Processes the agent is attached to",
            self.targets.clone(),
        );
        r.register(
            "tracer_target_attaches",
            "Attaches to a target process since the agent started",
            self.attaches.clone(),
        );
        r.register(
            "tracer_events_dropped",
            "Events not delivered, by reason",
            self.dropped.clone(),
        );
        r.register(
            "tracer_webhook_deliveries",
            "Alerts delivered to the webhook",
            self.webhook_sent.clone(),
        );
        r.register(
            "tracer_agent_cpu_seconds",
            "CPU time the agent itself used",
            self.cpu.clone(),
        );
        r.register(
            "tracer_agent_resident_memory_bytes",
            "Resident memory of the agent itself",
            self.rss.clone(),
        );
    }

    /// The Prometheus text exposition of every series.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Updates the series of `labels`' target from one event.
    pub fn observe(&self, labels: &TargetLabels, event: &Event) {
        match event {
            Event::TargetAttached { .. } => {
                self.targets.inc();
                self.attaches.inc();
            }
            Event::Vma {
                map_count,
                max_map_count,
                growth_per_min,
                eta_seconds,
                events_lost,
                ..
            } => {
                self.vma_count
                    .get_or_create(labels)
                    .set(i64::from(*map_count));
                self.vma_limit
                    .get_or_create(labels)
                    .set(i64::from(*max_map_count));
                self.vma_growth
                    .get_or_create(labels)
                    .set(growth_per_min.unwrap_or(0.0));
                // No series while the count is not growing: `eta < 3600` rules stay simple.
                match eta_seconds {
                    Some(eta) => {
                        self.vma_eta.get_or_create(labels).set(*eta as f64);
                    }
                    None => {
                        self.vma_eta.remove(labels);
                    }
                }
                self.events_lost
                    .get_or_create(&ring(labels, "vma"))
                    .set(saturate(*events_lost));
            }
            Event::Sockets {
                states,
                accept_queue,
                close_wait_oldest_seconds,
                close_wait_leaked,
                new_connections_per_second,
                events_lost,
                untracked,
                ..
            } => {
                for state in PROCESS_STATES {
                    self.tcp_sockets
                        .get_or_create(&state_labels(labels, state_name(state)))
                        .set(i64::from(states.get(state)));
                }
                self.tcp_accept_queue
                    .get_or_create(labels)
                    .set(i64::from(accept_queue.total()));
                self.close_wait_leaks
                    .get_or_create(labels)
                    .set(i64::from(*close_wait_leaked));
                self.close_wait_oldest
                    .get_or_create(labels)
                    .set(close_wait_oldest_seconds.unwrap_or(0.0));
                self.new_connections
                    .get_or_create(labels)
                    .set(*new_connections_per_second);
                self.events_lost
                    .get_or_create(&ring(labels, "tcp"))
                    .set(saturate(*events_lost));
                self.untracked
                    .get_or_create(labels)
                    .set(saturate(*untracked));
            }
            Event::Alert { kind, severity, .. } => {
                self.alerts
                    .get_or_create(&alert_labels(labels, *kind, *severity))
                    .set(1);
            }
            Event::AlertResolved { kind, severity, .. } => {
                self.alerts
                    .get_or_create(&alert_labels(labels, *kind, *severity))
                    .set(0);
            }
            Event::TargetExit { .. } => self.forget(labels),
            Event::VmaBreakdown { .. } | Event::TcpState { .. } => {}
        }
    }

    /// Removes every series of a target no longer watched.
    pub fn forget(&self, labels: &TargetLabels) {
        self.targets.dec();
        for family in [
            &self.vma_count,
            &self.vma_limit,
            &self.tcp_accept_queue,
            &self.close_wait_leaks,
            &self.untracked,
        ] {
            family.remove(labels);
        }
        for family in [
            &self.vma_growth,
            &self.vma_eta,
            &self.close_wait_oldest,
            &self.new_connections,
        ] {
            family.remove(labels);
        }
        for state in PROCESS_STATES {
            self.tcp_sockets
                .remove(&state_labels(labels, state_name(state)));
        }
        for name in RINGS {
            self.events_lost.remove(&ring(labels, name));
        }
        for kind in KINDS {
            for severity in SEVERITIES {
                self.alerts.remove(&alert_labels(labels, kind, severity));
            }
        }
    }

    /// Counts events not delivered.
    pub fn dropped(&self, reason: Dropped, count: u64) {
        self.dropped
            .get_or_create(&ReasonLabels {
                reason: reason.as_str().to_owned(),
            })
            .inc_by(count);
    }

    pub fn webhook_delivered(&self) {
        self.webhook_sent.inc();
    }

    /// The agent's own CPU time (total) and resident memory.
    pub fn agent_usage(&self, cpu_seconds: f64, rss_bytes: u64) {
        let seen = self.cpu.get();
        if cpu_seconds > seen {
            self.cpu.inc_by(cpu_seconds - seen);
        }
        self.rss.set(saturate(rss_bytes));
    }
}

fn saturate(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn ring(labels: &TargetLabels, ring: &str) -> RingLabels {
    RingLabels {
        target: labels.target.clone(),
        pid: labels.pid.clone(),
        ring: ring.to_owned(),
    }
}

fn state_labels(labels: &TargetLabels, state: &str) -> StateLabels {
    StateLabels {
        target: labels.target.clone(),
        pid: labels.pid.clone(),
        state: state.to_owned(),
    }
}

fn alert_labels(labels: &TargetLabels, kind: AlertKind, severity: Severity) -> AlertLabels {
    AlertLabels {
        target: labels.target.clone(),
        pid: labels.pid.clone(),
        kind: kind.as_str().to_owned(),
        severity: severity.as_str().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::StateCounts;

    fn labels(pid: u32) -> TargetLabels {
        TargetLabels {
            target: "kafka".into(),
            pid: pid.to_string(),
        }
    }

    #[test]
    fn series_follow_events_and_leave_with_the_target() {
        let metrics = Metrics::new();
        let kafka = labels(42);
        metrics.observe(
            &kafka,
            &Event::TargetAttached {
                ts: 0,
                pid: 42,
                cmdline: "java kafka.Kafka".into(),
            },
        );
        metrics.observe(
            &kafka,
            &Event::Vma {
                ts: 0,
                pid: 42,
                map_count: 61_000,
                peak: 61_000,
                max_map_count: 65_530,
                usage: 0.93,
                growth_per_min: Some(120.0),
                eta_seconds: None,
                events_lost: 3,
            },
        );
        let mut states = StateCounts {
            all: true,
            ..StateCounts::default()
        };
        states.add(8);
        metrics.observe(
            &kafka,
            &Event::Sockets {
                ts: 0,
                pid: 42,
                states,
                accept_queue: StateCounts::default(),
                orphaned: StateCounts::default(),
                close_wait_oldest_seconds: Some(12.5),
                close_wait_leaked: 1,
                new_connections_per_second: 0.0,
                peers: Vec::new(),
                events_lost: 0,
                untracked: 0,
            },
        );
        let text = metrics.encode();
        assert!(
            text.contains(r#"tracer_vma_count{target="kafka",pid="42"} 61000"#),
            "{text}"
        );
        assert!(
            !text.contains("tracer_vma_exhaustion_eta_seconds{"),
            "no ETA while not growing: {text}"
        );
        assert!(
            text.contains(r#"tracer_tcp_sockets{target="kafka",pid="42",state="CLOSE_WAIT"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tracer_close_wait_leaks{target="kafka",pid="42"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tracer_events_lost{target="kafka",pid="42",ring="vma"} 3"#),
            "{text}"
        );
        assert!(text.contains("tracer_targets 1"), "{text}");
        metrics.observe(&kafka, &Event::TargetExit { ts: 1, pid: 42 });
        let text = metrics.encode();
        assert!(
            !text.contains(r#"pid="42""#),
            "series of an exited target remain:\n{text}"
        );
        assert!(text.contains("tracer_targets 0"), "{text}");
        assert!(text.contains("tracer_target_attaches_total 1"), "{text}");
    }
}
