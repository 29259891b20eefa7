//! The Prometheus metrics, fed by the same events the NDJSON stream carries. Every per-target
//! series is labelled `target` (the stable name: the `--match` name, or the process's name for a
//! `--pid`) and `pid`; a target's series go away when it exits.

use std::{
    collections::HashMap,
    sync::{Mutex, atomic::AtomicU64},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    alert::Severity,
    event::{AlertKind, Event, PROCESS_STATES},
    tcp::proc::state_name,
    vma::source::VmaSource,
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
struct GroupLabels {
    target: String,
    pid: String,
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    target: String,
    pid: String,
    source: String,
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

const SEVERITIES: [Severity; 2] = [Severity::Warning, Severity::Critical];
const RINGS: [&str; 3] = ["vma", "tcp", "task"];

pub struct Metrics {
    registry: Registry,
    vma_count: Family<TargetLabels, Gauge>,
    vma_source: Family<SourceLabels, Gauge>,
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
    fds: Family<TargetLabels, Gauge>,
    fd_limit: Family<TargetLabels, Gauge>,
    fd_eta: Family<TargetLabels, FloatGauge>,
    memory: Family<TargetLabels, Gauge>,
    memory_limit: Family<TargetLabels, Gauge>,
    memory_eta: Family<TargetLabels, FloatGauge>,
    rss: Family<TargetLabels, Gauge>,
    arenas: Family<TargetLabels, Gauge>,
    threads: Family<TargetLabels, Gauge>,
    group_threads: Family<GroupLabels, Gauge>,
    group_idle: Family<GroupLabels, FloatGauge>,
    group_stalled: Family<GroupLabels, Gauge>,
    /// The thread groups exported per target, to remove the series of groups that are gone.
    groups: Mutex<HashMap<TargetLabels, Vec<String>>>,
    targets: Gauge,
    attaches: Counter,
    dropped: Family<ReasonLabels, Counter>,
    webhook_sent: Counter,
    cpu: Counter<f64, AtomicU64>,
    agent_rss: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut metrics = Self {
            vma_count: Family::default(),
            vma_source: Family::default(),
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
            fds: Family::default(),
            fd_limit: Family::default(),
            fd_eta: Family::default(),
            memory: Family::default(),
            memory_limit: Family::default(),
            memory_eta: Family::default(),
            rss: Family::default(),
            arenas: Family::default(),
            threads: Family::default(),
            group_threads: Family::default(),
            group_idle: Family::default(),
            group_stalled: Family::default(),
            groups: Mutex::default(),
            targets: Gauge::default(),
            attaches: Counter::default(),
            dropped: Family::default(),
            webhook_sent: Counter::default(),
            cpu: Counter::default(),
            agent_rss: Gauge::default(),
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
            "tracer_vma_source",
            "Where the VMA count comes from on this kernel (1 for the source in use): mmap_lock, syscall_fexit or syscall_tracepoint",
            self.vma_source.clone(),
        );
        r.register(
            "tracer_vma_limit",
            "vm.max_map_count (or the --max-map-count what-if)",
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
            self.agent_rss.clone(),
        );
        self.register_resources();
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
            Event::TargetAttached { vma_source, .. } => {
                self.targets.inc();
                self.attaches.inc();
                self.vma_source
                    .get_or_create(&source_labels(labels, vma_source))
                    .set(1);
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
                set_or_remove(&self.vma_eta, labels, eta_seconds.map(|e| e as f64));
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
            Event::Fds { .. } | Event::Memory { .. } | Event::Threads { .. } => {
                self.observe_resources(labels, event);
            }
            Event::TargetExit { .. } => self.forget(labels),
            Event::VmaBreakdown { .. } | Event::TcpState { .. } => {}
        }
    }

    /// Removes every series of a target no longer watched.
    pub fn forget(&self, labels: &TargetLabels) {
        self.targets.dec();
        for source in VmaSource::ALL {
            self.vma_source
                .remove(&source_labels(labels, source.as_str()));
        }
        for family in [
            &self.vma_count,
            &self.vma_limit,
            &self.tcp_accept_queue,
            &self.close_wait_leaks,
            &self.untracked,
            &self.fds,
            &self.fd_limit,
            &self.memory,
            &self.memory_limit,
            &self.rss,
            &self.arenas,
            &self.threads,
        ] {
            family.remove(labels);
        }
        for family in [
            &self.vma_growth,
            &self.vma_eta,
            &self.close_wait_oldest,
            &self.new_connections,
            &self.fd_eta,
            &self.memory_eta,
        ] {
            family.remove(labels);
        }
        let groups = self
            .groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(labels)
            .unwrap_or_default();
        for name in groups {
            self.forget_group(labels, &name);
        }
        for state in PROCESS_STATES {
            self.tcp_sockets
                .remove(&state_labels(labels, state_name(state)));
        }
        for name in RINGS {
            self.events_lost.remove(&ring(labels, name));
        }
        for kind in AlertKind::ALL {
            for severity in SEVERITIES {
                self.alerts.remove(&alert_labels(labels, kind, severity));
            }
        }
    }

    /// Names and describes the metrics of file descriptors, memory and threads.
    fn register_resources(&mut self) {
        let r = &mut self.registry;
        for (name, help, family) in [
            (
                "tracer_fds",
                "Open file descriptors of the target (/proc/PID/fd)",
                &self.fds,
            ),
            (
                "tracer_fd_limit",
                "The target's soft RLIMIT_NOFILE (absent if unlimited)",
                &self.fd_limit,
            ),
            (
                "tracer_memory_bytes",
                "Working set of the target's memory cgroup (usage less inactive file cache), or its RSS without one",
                &self.memory,
            ),
            (
                "tracer_memory_limit_bytes",
                "Memory limit of the target's cgroup (absent if unlimited)",
                &self.memory_limit,
            ),
            (
                "tracer_rss_bytes",
                "Resident memory of the target (VmRSS)",
                &self.rss,
            ),
            (
                "tracer_malloc_arenas",
                "glibc malloc arenas (64 MiB reservations) in the target's maps",
                &self.arenas,
            ),
            ("tracer_threads", "Threads of the target", &self.threads),
        ] {
            r.register(name, help, family.clone());
        }
        for (name, help, family) in [
            (
                "tracer_fd_exhaustion_eta_seconds",
                "Seconds until the fd count reaches RLIMIT_NOFILE at its trend (absent when not growing)",
                &self.fd_eta,
            ),
            (
                "tracer_memory_limit_eta_seconds",
                "Seconds until memory reaches the cgroup's limit at its trend (absent when not growing)",
                &self.memory_eta,
            ),
        ] {
            r.register(name, help, family.clone());
        }
        r.register(
            "tracer_thread_group_threads",
            "Threads of the target per name group (name less its number)",
            self.group_threads.clone(),
        );
        r.register(
            "tracer_thread_group_idle_ratio",
            "Share of a thread group's time spent asleep over the saturation window (Kafka's NetworkProcessorAvgIdlePercent, from outside)",
            self.group_idle.clone(),
        );
        r.register(
            "tracer_thread_group_stalled",
            "Threads of a group that have not run for longer than --stall-after",
            self.group_stalled.clone(),
        );
    }

    /// Updates the series of file descriptors, memory and threads from one event.
    fn observe_resources(&self, labels: &TargetLabels, event: &Event) {
        match event {
            Event::Fds {
                count,
                limit,
                eta_seconds,
                ..
            } => {
                self.fds.get_or_create(labels).set(i64::from(*count));
                set_or_remove(&self.fd_limit, labels, limit.map(saturate));
                set_or_remove(&self.fd_eta, labels, eta_seconds.map(|e| e as f64));
            }
            Event::Memory {
                rss_bytes,
                working_set_bytes,
                limit_bytes,
                eta_seconds,
                malloc_arenas,
                ..
            } => {
                self.memory
                    .get_or_create(labels)
                    .set(saturate(working_set_bytes.unwrap_or(*rss_bytes)));
                set_or_remove(&self.memory_limit, labels, limit_bytes.map(saturate));
                set_or_remove(&self.memory_eta, labels, eta_seconds.map(|e| e as f64));
                self.rss.get_or_create(labels).set(saturate(*rss_bytes));
                self.arenas
                    .get_or_create(labels)
                    .set(i64::from(*malloc_arenas));
            }
            Event::Threads {
                count,
                groups,
                events_lost,
                ..
            } => {
                self.threads.get_or_create(labels).set(i64::from(*count));
                self.events_lost
                    .get_or_create(&ring(labels, "task"))
                    .set(saturate(*events_lost));
                for group in groups {
                    let key = group_labels(labels, &group.name);
                    self.group_threads
                        .get_or_create(&key)
                        .set(i64::from(group.threads));
                    set_or_remove(&self.group_idle, &key, group.idle_ratio);
                    self.group_stalled
                        .get_or_create(&key)
                        .set(i64::from(group.stalled));
                }
                let names = groups.iter().map(|g| g.name.clone()).collect();
                let gone = self
                    .groups
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(labels.clone(), names)
                    .unwrap_or_default();
                for name in gone {
                    if !groups.iter().any(|g| g.name == name) {
                        self.forget_group(labels, &name);
                    }
                }
            }
            _ => {}
        }
    }

    fn forget_group(&self, labels: &TargetLabels, name: &str) {
        let key = group_labels(labels, name);
        self.group_threads.remove(&key);
        self.group_idle.remove(&key);
        self.group_stalled.remove(&key);
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
        self.agent_rss.set(saturate(rss_bytes));
    }
}

/// Sets the series, or removes it when there is no value (no limit, not growing), so that
/// rules like `eta < 3600` stay simple.
fn set_or_remove<L, N, A>(family: &Family<L, Gauge<N, A>>, labels: &L, value: Option<N>)
where
    L: Clone + std::hash::Hash + Eq,
    A: prometheus_client::metrics::gauge::Atomic<N> + Default,
{
    match value {
        Some(value) => {
            family.get_or_create(labels).set(value);
        }
        None => {
            family.remove(labels);
        }
    }
}

fn source_labels(labels: &TargetLabels, source: &str) -> SourceLabels {
    SourceLabels {
        target: labels.target.clone(),
        pid: labels.pid.clone(),
        source: source.to_owned(),
    }
}

fn group_labels(labels: &TargetLabels, group: &str) -> GroupLabels {
    GroupLabels {
        target: labels.target.clone(),
        pid: labels.pid.clone(),
        group: group.to_owned(),
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
                vma_source: "syscall_fexit",
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
            text.contains(r#"tracer_vma_source{target="kafka",pid="42",source="syscall_fexit"} 1"#),
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
        metrics.observe(
            &kafka,
            &Event::TargetExit {
                ts: 1,
                pid: 42,
                death: crate::death::Death::default(),
            },
        );
        let text = metrics.encode();
        assert!(
            !text.contains(r#"pid="42""#),
            "series of an exited target remain:\n{text}"
        );
        assert!(text.contains("tracer_targets 0"), "{text}");
        assert!(text.contains("tracer_target_attaches_total 1"), "{text}");
    }
}
