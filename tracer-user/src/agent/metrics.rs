//! The Prometheus metrics, fed by the same events the NDJSON stream carries. Every per-target
//! series is labelled `target` (the stable name: the `--match` name, or the process's name for a
//! `--pid`) and `pid`; a target's series go away when it exits.

use std::{
    collections::HashMap,
    sync::{Mutex, atomic::AtomicU64},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, LabelSetEncoder, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    alert::Severity,
    event::{AlertKind, Event, PROCESS_STATES},
    procmode::{Mode, PROC_MAPS},
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
struct ModeLabels {
    target: String,
    pid: String,
    mode: String,
}

/// An alert's series: `group` only for the alerts about a thread group.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct AlertLabels {
    target: String,
    pid: String,
    kind: String,
    severity: String,
    group: Option<String>,
}

impl EncodeLabelSet for AlertLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let mut labels = vec![
            ("target", self.target.as_str()),
            ("pid", self.pid.as_str()),
            ("kind", self.kind.as_str()),
            ("severity", self.severity.as_str()),
        ];
        if let Some(group) = &self.group {
            labels.push(("group", group.as_str()));
        }
        labels.encode(encoder)
    }
}

/// The series of a counter that spans every process of a target (no `pid`), so that it never
/// goes back when the target restarts and is attached again.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetCountLabels {
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RingLabels {
    target: String,
    ring: String,
}

/// Which session-total a counter follows: a process's ring, or its untracked sockets.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Tally {
    Lost(&'static str),
    Untracked,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    target: String,
    table: String,
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

/// Why a client of GET /events was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// `--events-clients` were connected already: answered 503.
    Limit,
    /// It took nothing for `--events-idle` while lines waited: disconnected.
    Idle,
}

impl Refused {
    const ALL: [Self; 2] = [Self::Limit, Self::Idle];

    fn as_str(self) -> &'static str {
        match self {
            Self::Limit => "limit",
            Self::Idle => "idle",
        }
    }
}

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

pub struct Metrics {
    registry: Registry,
    vma_count: Family<TargetLabels, Gauge>,
    vma_source: Family<SourceLabels, Gauge>,
    vma_limit: Family<TargetLabels, Gauge>,
    vma_growth: Family<TargetLabels, FloatGauge>,
    vma_eta: Family<TargetLabels, FloatGauge>,
    vma_steady_state: Family<TargetLabels, Gauge>,
    tcp_sockets: Family<StateLabels, Gauge>,
    tcp_accept_queue: Family<TargetLabels, Gauge>,
    close_wait_leaks: Family<TargetLabels, Gauge>,
    close_wait_oldest: Family<TargetLabels, FloatGauge>,
    new_connections: Family<TargetLabels, FloatGauge>,
    events_lost: Family<RingLabels, Counter>,
    untracked: Family<TargetCountLabels, Counter>,
    /// Each process's totals as its session last reported them (sessions count from attach),
    /// so that the counters above grow by the difference.
    tallies: Mutex<HashMap<(TargetLabels, Tally), u64>>,
    resyncs: Family<TableLabels, Counter>,
    resync_corrections: Family<TableLabels, Counter>,
    alerts: Family<AlertLabels, Gauge>,
    /// The alert series of each target, removed with it.
    alert_series: Mutex<HashMap<TargetLabels, Vec<AlertLabels>>>,
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
    mode: Family<ModeLabels, Gauge>,
    attaches: Counter,
    dropped: Family<ReasonLabels, Counter>,
    clients: Gauge,
    clients_refused: Family<ReasonLabels, Counter>,
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
            vma_steady_state: Family::default(),
            tcp_sockets: Family::default(),
            tcp_accept_queue: Family::default(),
            close_wait_leaks: Family::default(),
            close_wait_oldest: Family::default(),
            new_connections: Family::default(),
            events_lost: Family::default(),
            resyncs: Family::default(),
            resync_corrections: Family::default(),
            untracked: Family::default(),
            tallies: Mutex::default(),
            alerts: Family::default(),
            alert_series: Mutex::default(),
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
            mode: Family::default(),
            attaches: Counter::default(),
            dropped: Family::default(),
            clients: Gauge::default(),
            clients_refused: Family::default(),
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
        for reason in Refused::ALL {
            metrics
                .clients_refused
                .get_or_create(&ReasonLabels {
                    reason: reason.as_str().to_owned(),
                })
                .inc_by(0);
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
            "Where the VMA count comes from on this kernel (1 for the source in use): mmap_lock, syscall_fentry or syscall_tracepoint (eBPF), proc_maps (proc mode)",
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
            "tracer_vma_steady_state",
            "Where a Kafka broker's VMA count will hold, from its retention, roll cadence and partitions (absent when unknown)",
            self.vma_steady_state.clone(),
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
            "Kernel records dropped because a ring buffer was full, every process of the target",
            self.events_lost.clone(),
        );
        r.register(
            "tracer_tcp_untracked_sockets",
            "Sockets not followed because --max-sockets was reached, every process of the target",
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
            "tracer_mode",
            "1 for how the target is watched: mode ebpf (exact, from the probes) or proc (sampled from /proc, not exact)",
            self.mode.clone(),
        );
        r.register(
            "tracer_target_attaches",
            "Attaches to a target process since the agent started",
            self.attaches.clone(),
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
        self.register_delivery();
        self.register_resyncs();
    }

    /// Names and describes the metrics of the delivery of events: clients, drops, webhook.
    fn register_delivery(&mut self) {
        let r = &mut self.registry;
        r.register(
            "tracer_events_dropped",
            "Events not delivered, by reason",
            self.dropped.clone(),
        );
        r.register(
            "tracer_events_clients",
            "Clients of GET /events connected now",
            self.clients.clone(),
        );
        r.register(
            "tracer_events_clients_refused",
            "Clients of GET /events turned away: refused at --events-clients (limit) or cut off after --events-idle (idle)",
            self.clients_refused.clone(),
        );
        r.register(
            "tracer_webhook_deliveries",
            "Alerts delivered to the webhook",
            self.webhook_sent.clone(),
        );
    }

    /// Names and describes the counters of resyncs.
    fn register_resyncs(&mut self) {
        let r = &mut self.registry;
        for (name, help, family) in [
            (
                "tracer_resyncs",
                "Rebuilds of a table from the kernel's view (after lost records, or by the audit)",
                &self.resyncs,
            ),
            (
                "tracer_resync_corrections",
                "Entries a resync had to add, remove or change",
                &self.resync_corrections,
            ),
        ] {
            r.register(name, help, family.clone());
        }
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
            Event::TargetAttached {
                mode, vma_source, ..
            } => {
                self.mode.get_or_create(&mode_labels(labels, mode)).set(1);
                self.targets.inc();
                self.attaches.inc();
                self.vma_source
                    .get_or_create(&source_labels(labels, vma_source))
                    .set(1);
                // A new session counts from 0 again.
                self.tallies
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .retain(|(key, _), _| key != labels);
            }
            Event::Vma {
                map_count,
                max_map_count,
                growth_per_min,
                eta_seconds,
                events_lost,
                steady_state,
                ..
            } => {
                set_or_remove(&self.vma_steady_state, labels, steady_state.map(i64::from));
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
                self.tally(labels, Tally::Lost("vma"), *events_lost);
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
                self.tally(labels, Tally::Lost("tcp"), *events_lost);
                self.tally(labels, Tally::Untracked, *untracked);
            }
            Event::Alert {
                kind,
                severity,
                detail,
                ..
            } => self.alert(labels, *kind, *severity, detail.group(), 1),
            Event::AlertResolved {
                kind,
                severity,
                group,
                ..
            } => self.alert(labels, *kind, *severity, group.as_deref(), 0),
            Event::Fds { .. } | Event::Memory { .. } | Event::Threads { .. } => {
                self.observe_resources(labels, event);
            }
            Event::Resynced {
                table, corrected, ..
            } => {
                let table = table_labels(labels, table);
                self.resyncs.get_or_create(&table).inc();
                self.resync_corrections
                    .get_or_create(&table)
                    .inc_by(u64::from(*corrected));
            }
            Event::TargetExit { .. } => self.forget(labels),
            Event::VmaBreakdown { .. } | Event::VmaStep { .. } | Event::TcpState { .. } => {}
        }
    }

    /// Grows the counter of `tally` by what the session's total `now` adds to its last one.
    fn tally(&self, labels: &TargetLabels, tally: Tally, now: u64) {
        let mut tallies = self
            .tallies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let seen = tallies.entry((labels.clone(), tally)).or_insert(0);
        // A total below the last one is a new count (it cannot shrink within a session).
        let added = now.checked_sub(*seen).unwrap_or(now);
        *seen = now;
        match tally {
            Tally::Lost(ring) => self.events_lost.get_or_create(&RingLabels {
                target: labels.target.clone(),
                ring: ring.to_owned(),
            }),
            Tally::Untracked => self.untracked.get_or_create(&TargetCountLabels {
                target: labels.target.clone(),
            }),
        }
        .inc_by(added);
    }

    fn alert(
        &self,
        labels: &TargetLabels,
        kind: AlertKind,
        severity: Severity,
        group: Option<&str>,
        active: i64,
    ) {
        let key = AlertLabels {
            target: labels.target.clone(),
            pid: labels.pid.clone(),
            kind: kind.as_str().to_owned(),
            severity: severity.as_str().to_owned(),
            group: group.map(str::to_owned),
        };
        self.alerts.get_or_create(&key).set(active);
        let mut series = self
            .alert_series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let known = series.entry(labels.clone()).or_default();
        if !known.contains(&key) {
            known.push(key);
        }
    }

    /// Removes every series of a target no longer watched (its counters stay: they span
    /// every process of the target).
    pub fn forget(&self, labels: &TargetLabels) {
        self.targets.dec();
        for mode in [Mode::Ebpf, Mode::Proc] {
            self.mode.remove(&mode_labels(labels, mode.as_str()));
        }
        self.tallies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|(key, _), _| key != labels);
        for source in VmaSource::ALL
            .map(VmaSource::as_str)
            .into_iter()
            .chain([PROC_MAPS])
        {
            self.vma_source.remove(&source_labels(labels, source));
        }
        for family in [
            &self.vma_count,
            &self.vma_limit,
            &self.vma_steady_state,
            &self.tcp_accept_queue,
            &self.close_wait_leaks,
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
        let alerts = self
            .alert_series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(labels)
            .unwrap_or_default();
        for key in alerts {
            self.alerts.remove(&key);
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
                self.tally(labels, Tally::Lost("task"), *events_lost);
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

    /// Counts a client of GET /events turned away.
    pub fn refused(&self, reason: Refused) {
        self.clients_refused
            .get_or_create(&ReasonLabels {
                reason: reason.as_str().to_owned(),
            })
            .inc();
    }

    /// Clients of GET /events connected now.
    pub fn clients(&self, count: usize) {
        self.clients.set(i64::try_from(count).unwrap_or(i64::MAX));
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

fn table_labels(labels: &TargetLabels, table: &str) -> TableLabels {
    TableLabels {
        target: labels.target.clone(),
        table: table.to_owned(),
    }
}

fn state_labels(labels: &TargetLabels, state: &str) -> StateLabels {
    StateLabels {
        target: labels.target.clone(),
        pid: labels.pid.clone(),
        state: state.to_owned(),
    }
}

fn mode_labels(labels: &TargetLabels, mode: &str) -> ModeLabels {
    ModeLabels {
        target: labels.target.clone(),
        pid: labels.pid.clone(),
        mode: mode.to_owned(),
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
                mode: "proc",
                vma_source: "proc_maps",
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
                steady_state: None,
                steady_state_crossing_seconds: None,
                growth_per_hour_6h: None,
                growth_per_day_7d: None,
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
            text.contains(r#"tracer_vma_source{target="kafka",pid="42",source="proc_maps"} 1"#),
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
            text.contains(r#"tracer_events_lost_total{target="kafka",ring="vma"} 3"#),
            "{text}"
        );
        assert!(text.contains("tracer_targets 1"), "{text}");
        assert!(
            text.contains(r#"tracer_mode{target="kafka",pid="42",mode="proc"} 1"#),
            "{text}"
        );
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

    fn vma(pid: u32, events_lost: u64) -> Event {
        Event::Vma {
            ts: 0,
            pid,
            map_count: 100,
            peak: 100,
            max_map_count: 65_530,
            usage: 0.0,
            growth_per_min: None,
            eta_seconds: None,
            events_lost,
            steady_state: None,
            steady_state_crossing_seconds: None,
            growth_per_hour_6h: None,
            growth_per_day_7d: None,
        }
    }

    fn attached(pid: u32) -> Event {
        Event::TargetAttached {
            ts: 0,
            pid,
            cmdline: "java kafka.Kafka".into(),
            mode: "ebpf",
            vma_source: "mmap_lock",
        }
    }

    #[test]
    fn lost_records_count_up_across_restarts() {
        let metrics = Metrics::new();
        let lost = |text: &str| {
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(r#"tracer_events_lost_total{target="kafka",ring="vma"} "#)
                })
                .map(|v| v.parse::<u64>().expect("a number"))
        };
        metrics.observe(&labels(42), &attached(42));
        metrics.observe(&labels(42), &vma(42, 3));
        metrics.observe(&labels(42), &vma(42, 5));
        assert_eq!(lost(&metrics.encode()), Some(5));
        metrics.observe(
            &labels(42),
            &Event::TargetExit {
                ts: 1,
                pid: 42,
                death: crate::death::Death::default(),
            },
        );
        assert_eq!(
            lost(&metrics.encode()),
            Some(5),
            "kept when the process goes"
        );
        // The restarted broker counts from 0 in its own session; the counter goes on.
        metrics.observe(&labels(43), &attached(43));
        metrics.observe(&labels(43), &vma(43, 2));
        assert_eq!(lost(&metrics.encode()), Some(7));
        // A re-attach to the same process starts its session's count again.
        metrics.observe(&labels(43), &attached(43));
        metrics.observe(&labels(43), &vma(43, 1));
        let text = metrics.encode();
        assert_eq!(lost(&text), Some(8), "{text}");
        assert!(text.contains("# TYPE tracer_events_lost counter"), "{text}");
    }

    #[test]
    fn resyncs_count_on_across_restarts() {
        let metrics = Metrics::new();
        let resynced = |pid| Event::Resynced {
            ts: 0,
            pid,
            table: "threads",
            reason: "records_lost",
            corrected: 3,
            before: std::collections::BTreeMap::new(),
            after: std::collections::BTreeMap::new(),
        };
        metrics.observe(&labels(42), &attached(42));
        metrics.observe(&labels(42), &resynced(42));
        metrics.observe(
            &labels(42),
            &Event::TargetExit {
                ts: 1,
                pid: 42,
                death: crate::death::Death::default(),
            },
        );
        metrics.observe(&labels(43), &attached(43));
        metrics.observe(&labels(43), &resynced(43));
        let text = metrics.encode();
        assert!(
            text.contains(r#"tracer_resyncs_total{target="kafka",table="threads"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tracer_resync_corrections_total{target="kafka",table="threads"} 6"#),
            "{text}"
        );
    }

    #[test]
    fn thread_group_alerts_carry_their_group() {
        let metrics = Metrics::new();
        let kafka = labels(42);
        metrics.observe(&kafka, &attached(42));
        for group in ["kafka-producer", "kafka-consumer"] {
            metrics.observe(
                &kafka,
                &Event::Alert {
                    ts: 0,
                    pid: 42,
                    kind: AlertKind::ThreadLeak,
                    severity: Severity::Warning,
                    message: String::new(),
                    detail: crate::event::AlertDetail::Threads {
                        group: group.into(),
                        threads: 60,
                        growth: Some(55),
                        idle_ratio: None,
                    },
                },
            );
        }
        metrics.observe(
            &kafka,
            &Event::AlertResolved {
                ts: 1,
                pid: 42,
                kind: AlertKind::ThreadLeak,
                severity: Severity::Warning,
                message: String::new(),
                group: Some("kafka-consumer".into()),
            },
        );
        let text = metrics.encode();
        assert!(
            text.contains(r#"tracer_alert_active{target="kafka",pid="42",kind="thread_leak",severity="warning",group="kafka-producer"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tracer_alert_active{target="kafka",pid="42",kind="thread_leak",severity="warning",group="kafka-consumer"} 0"#),
            "{text}"
        );
        metrics.observe(
            &kafka,
            &Event::TargetExit {
                ts: 2,
                pid: 42,
                death: crate::death::Death::default(),
            },
        );
        assert!(!metrics.encode().contains("tracer_alert_active{"));
    }
}
