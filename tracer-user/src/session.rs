//! One traced process from attach to exit: the probes, the drain of their ring buffers, the
//! models fed by them, and the periodic reports. `attach` runs one session; the agent runs one
//! per target.

use std::{
    collections::HashMap,
    future::Future,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow};
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    task::JoinHandle,
    time::MissedTickBehavior,
};

use tracer_common::{task::ThreadSched, tcp::TupleKey};

use crate::{
    alert::Severity,
    death::{Death, LastState},
    event::{AlertDetail, AlertKind, Clocks, Event, MappingGroup, monotonic, now_ms},
    exhaustion::{self, Thresholds},
    fd::FdModel,
    memory::{MemoryModel, MemoryStatus},
    preflight::{self, Machine},
    probes::{self, Lost, ProbeError, Probes, Record},
    target::Target,
    tcp::{self, Census, TcpModel, TcpThresholds, proc::ProcSockets},
    threads::{ThreadModel, ThreadStatus, ThreadThresholds, Traffic},
    vma::{
        self, VmaModel, VmaStatus,
        maps::{Breakdown, MapsReader},
    },
};

/// How often the `vma` event, the alerts and the live view are refreshed.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// How often the ring buffers are drained between wakeups (records are submitted without a
/// wakeup until 64 KiB are pending, so the agent wakes once per batch).
const DRAIN_INTERVAL: Duration = Duration::from_millis(100);
/// How often `vm.max_map_count` is read again (operators raise it as the fix).
const LIMIT_INTERVAL: Duration = Duration::from_secs(5);
/// The /proc/PID/maps breakdown is read again when the count moved by this fraction...
const BREAKDOWN_MOVE: f64 = 0.01;
/// ...or by this many mappings, whichever is larger,...
const BREAKDOWN_MOVE_MIN: u32 = 64;
/// ...but no sooner than this after the previous read, nor than 50 times its cost.
const BREAKDOWN_MIN_GAP: Duration = Duration::from_secs(10);

/// What a session is told at start.
#[derive(Clone, Debug)]
pub struct Options {
    /// `--max-map-count`: a what-if limit instead of `vm.max_map_count`.
    pub max_map_count: Option<u32>,
    pub thresholds: Thresholds,
    pub rate_window: Duration,
    pub tcp: TcpThresholds,
    /// Capacity of the kernel's table of the target's sockets.
    pub max_sockets: u32,
    pub threads: ThreadThresholds,
    /// Raise `target_died` when the target exits (`tracer agent`).
    pub alert_on_death: bool,
}

/// How a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    TargetExited,
    Stopped,
}

/// What the live view shows, rebuilt every report interval.
pub struct Frame<'a> {
    pub target: &'a Target,
    /// Where the VMA count comes from.
    pub vma_source: &'static str,
    pub attached: Instant,
    pub vma: VmaStatus,
    pub breakdown: Option<&'a BreakdownReport>,
    pub tcp: &'a Census,
    pub threads: &'a ThreadStatus,
    pub fds: Option<exhaustion::Status>,
    pub memory: Option<&'a MemoryStatus>,
    pub lost: Lost,
}

/// The latest classified /proc/PID/maps.
pub struct BreakdownReport {
    pub breakdown: Breakdown,
    pub read_at: Instant,
    pub cost: Duration,
}

/// Receives what a session reports.
pub trait Sink {
    /// New events, in order. An error stops the session (the reader went away).
    fn events(&mut self, events: &[Event]) -> std::io::Result<()>;
    /// The state after each report interval.
    fn frame(&mut self, frame: &Frame<'_>) -> std::io::Result<()>;
}

pub struct Session {
    target: Target,
    probes: Probes,
    vma_events: AsyncFd<RingBuf<MapData>>,
    tcp_events: AsyncFd<RingBuf<MapData>>,
    task_events: AsyncFd<RingBuf<MapData>>,
    vma: VmaModel,
    tcp: TcpModel,
    threads: ThreadModel,
    fds: FdModel,
    memory: MemoryModel,
    /// The kernel's thread accounts, read every report into this reused buffer.
    accounts: Vec<(u32, ThreadSched)>,
    /// Thread records lost as of the last report: more means the counts are re-read.
    task_lost: u64,
    limit_override: Option<u32>,
    breakdown: Option<BreakdownReport>,
    /// A read of /proc/PID/maps in flight on the blocking pool; the reader travels with it so
    /// its buffer is reused.
    refresh: Option<JoinHandle<(MapsReader, std::io::Result<Breakdown>)>>,
    reader: Option<MapsReader>,
    attached: Instant,
    events: Vec<Event>,
    /// Alerts raised and not resolved, per kind and severity: resolved when the target dies.
    active: HashMap<(AlertKind, Severity), u32>,
    alert_on_death: bool,
}

impl Session {
    /// Attaches to `target`: loads the probes first, then seeds the models from /proc so that
    /// nothing that happens in between is missed.
    pub fn attach(target: Target, machine: &Machine, options: &Options) -> anyhow::Result<Self> {
        let mut probes = Probes::attach(target.pid, &machine.pidns, &machine.layout, &machine.vma_sources, options.max_sockets).map_err(|e| match e {
            ProbeError::Permission(e) if preflight::memlock_charged() => anyhow!(
                "{e} - this kernel charges BPF maps to the memlock limit: run `ulimit -l unlimited` (or set LimitMEMLOCK=infinity) and retry"
            ),
            ProbeError::Permission(e) => anyhow!("{e} - run tracer as root (or with CAP_BPF and CAP_PERFMON)"),
            ProbeError::Rejected(e) => anyhow!("{e} - the kernel refused the probes; tracer needs Linux 5.8+ with BTF"),
            ProbeError::Other(e) => anyhow!(e),
        })?;
        let rings = probes
            .take_rings()
            .context("the ring buffers were already taken")?;
        let poll = |ring, what: &str| {
            // SAFETY: each ring buffer owns its map fd, which stays open until it is dropped
            // with its AsyncFd.
            unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
                .map_err(|e| anyhow!("polling the {what} ring buffer: {e}"))
        };
        let vma_events = poll(rings.vma, "VMA")?;
        let tcp_events = poll(rings.tcp, "TCP")?;
        let task_events = poll(rings.task, "thread")?;

        let unreadable = |what: &str, e: std::io::Error| {
            anyhow!(
                "reading /proc/{}/{what}: {e} - run tracer as root, or give it CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH to watch another user's process",
                target.pid
            )
        };
        let mut reader = MapsReader::new();
        let started = Instant::now();
        let seed = reader.read(target.pid).map_err(|e| unreadable("maps", e))?;
        let breakdown = BreakdownReport {
            cost: started.elapsed(),
            read_at: Instant::now(),
            breakdown: seed,
        };
        let limit = match options.max_map_count {
            Some(limit) => limit,
            None => vma::read_max_map_count()
                .with_context(|| format!("reading {}", vma::MAX_MAP_COUNT))?,
        };
        let vma = VmaModel::new(
            target.pid,
            breakdown.breakdown.map_count(),
            limit,
            options.thresholds,
            options.rate_window.as_secs_f64(),
        );

        let mut tcp = TcpModel::new(target.pid, options.tcp);
        tcp.seed(
            &seed_sockets(&mut probes, target.pid).map_err(|e| unreadable("fd", e))?,
            monotonic(),
        );

        let mut threads = ThreadModel::new(target.pid, options.threads.clone(), monotonic());
        threads.seed().map_err(|e| unreadable("task", e))?;
        let window = options.rate_window.as_secs_f64();
        let fds = FdModel::new(target.pid, options.thresholds, window);
        let memory = MemoryModel::new(target.pid, options.thresholds, window);

        let mut events = vec![Event::TargetAttached {
            ts: now_ms(),
            pid: target.pid,
            cmdline: target.cmdline.clone(),
            vma_source: probes.vma_source().as_str(),
        }];
        events.push(breakdown_event(target.pid, &breakdown));
        Ok(Self {
            target,
            probes,
            vma_events,
            tcp_events,
            task_events,
            vma,
            tcp,
            threads,
            fds,
            memory,
            accounts: Vec::new(),
            task_lost: 0,
            limit_override: options.max_map_count,
            breakdown: Some(breakdown),
            refresh: None,
            reader: Some(reader),
            attached: Instant::now(),
            events,
            active: HashMap::new(),
            alert_on_death: options.alert_on_death,
        })
    }

    /// Runs until the target exits, `stop` resolves, or the sink fails.
    pub async fn run(
        mut self,
        sink: &mut dyn Sink,
        stop: impl Future<Output = ()>,
    ) -> anyhow::Result<End> {
        tokio::pin!(stop);
        let mut report = tokio::time::interval(REPORT_INTERVAL);
        report.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut drain = tokio::time::interval(DRAIN_INTERVAL);
        drain.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut limit_read = Instant::now();

        let end = loop {
            tokio::select! {
                () = &mut stop => break End::Stopped,
                () = self.target.exited() => break End::TargetExited,
                guard = self.vma_events.readable_mut() => {
                    let mut guard = guard.context("polling the VMA ring buffer")?;
                    apply_records(guard.get_inner_mut(), |r| self.vma.record(r));
                    guard.clear_ready();
                }
                guard = self.tcp_events.readable_mut() => {
                    let mut guard = guard.context("polling the TCP ring buffer")?;
                    drain_tcp(guard.get_inner_mut(), &mut self.tcp, &mut self.events);
                    guard.clear_ready();
                }
                guard = self.task_events.readable_mut() => {
                    let mut guard = guard.context("polling the thread ring buffer")?;
                    apply_records(guard.get_inner_mut(), |r| self.threads.record(&r));
                    guard.clear_ready();
                }
                _ = drain.tick() => self.drain(),
                done = async { self.refresh.as_mut().expect("guarded").await }, if self.refresh.is_some() => {
                    self.refresh = None;
                    let (reader, result) = done.context("the /proc/PID/maps reader panicked")?;
                    self.reader = Some(reader);
                    if let Some(report) = self.breakdown.as_mut()
                        && let Ok(breakdown) = result
                    {
                        report.cost = report.read_at.elapsed();
                        report.breakdown = breakdown;
                        self.events.push(breakdown_event(self.target.pid, report));
                    }
                }
                _ = report.tick() => {
                    if limit_read.elapsed() >= LIMIT_INTERVAL && self.limit_override.is_none() {
                        limit_read = Instant::now();
                        if let Ok(limit) = vma::read_max_map_count() {
                            self.vma.set_limit(limit);
                        }
                    }
                    self.report(sink)?;
                }
            }
            if !self.events.is_empty() {
                track_active(&mut self.active, &self.events);
                sink.events(&self.events)?;
                self.events.clear();
            }
        };

        // Whatever the target did last is in the ring buffers and the register: report it.
        self.drain();
        if let Ok((register, high)) = self.probes.vma_register() {
            self.vma.register(&register, high);
        }
        if end == End::TargetExited {
            self.died();
        }
        sink.events(&self.events)?;
        Ok(end)
    }

    /// The target is gone: every alert still active is resolved, and its death told with what
    /// the kernel saw.
    fn died(&mut self) {
        track_active(&mut self.active, &self.events);
        let ts = now_ms();
        let pid = self.target.pid;
        for ((kind, severity), count) in std::mem::take(&mut self.active) {
            for _ in 0..count {
                self.events.push(Event::AlertResolved {
                    ts,
                    pid,
                    kind,
                    severity,
                    message: "the process exited".to_owned(),
                });
            }
        }
        let vma = self.vma.status();
        let death = Death::new(
            self.probes.process_exit(),
            LastState {
                memory_usage: self
                    .memory
                    .status()
                    .and_then(|m| Some(m.status.count / m.status.limit?)),
                vma_count: vma.count,
                vma_limit: vma.limit,
            },
        );
        if self.alert_on_death {
            self.events.push(Event::Alert {
                ts,
                pid,
                kind: AlertKind::TargetDied,
                severity: Severity::Critical,
                message: format!("{} (pid {pid}) died: {}", self.target.comm, death.reason),
                detail: AlertDetail::Death(death.clone()),
            });
        }
        self.events.push(Event::TargetExit { ts, pid, death });
    }

    /// Applies what the probes wrote, then asks the kernel about queued sockets that may have
    /// been accepted since.
    fn drain(&mut self) {
        apply_records(self.vma_events.get_mut(), |r| self.vma.record(r));
        drain_tcp(self.tcp_events.get_mut(), &mut self.tcp, &mut self.events);
        apply_records(self.task_events.get_mut(), |r| self.threads.record(&r));
        let due = self.tcp.due_for_probe(monotonic());
        if !due.is_empty()
            && let Err(e) = self.probes.probe_held(&due)
        {
            log::warn!("asking the kernel about accepted sockets: {e}");
        }
    }

    fn report(&mut self, sink: &mut dyn Sink) -> anyhow::Result<()> {
        self.drain();
        let (register, high) = self
            .probes
            .vma_register()
            .context("reading the VMA register")?;
        self.vma.register(&register, high);
        let lost = self.probes.lost().unwrap_or_default();
        let (now, ts) = (monotonic(), now_ms());
        self.vma.tick(now, ts, lost.vma_records, &mut self.events);
        self.tcp.tick(now, ts, &lost, &mut self.events);
        self.threads_tick(now, ts, &lost);
        self.fds.tick(now, ts, &mut self.events);
        let arenas = self.breakdown.as_ref().map_or(0, |b| b.breakdown.arenas);
        self.memory.tick(now, ts, arenas, &mut self.events);
        self.probes.flush_log();
        self.maybe_refresh_breakdown();
        sink.frame(&Frame {
            target: &self.target,
            vma_source: self.probes.vma_source().as_str(),
            attached: self.attached,
            vma: self.vma.status(),
            breakdown: self.breakdown.as_ref(),
            tcp: self.tcp.census(),
            threads: self.threads.status(),
            fds: self.fds.status(),
            memory: self.memory.status(),
            lost,
        })?;
        Ok(())
    }

    /// Folds the kernel's thread accounts into the thread model, with the traffic a stall is
    /// judged against; re-reads the threads from /proc when records were lost.
    fn threads_tick(&mut self, now: f64, ts: u64, lost: &Lost) {
        if lost.task_records > self.task_lost {
            self.task_lost = lost.task_records;
            if let Err(e) = self.threads.seed() {
                log::debug!("re-reading /proc/{}/task: {e}", self.target.pid);
            }
        }
        self.probes.thread_accounts(&mut self.accounts);
        let census = self.tcp.census();
        let traffic = Traffic {
            new_per_second: census.new_per_second,
            close_wait: census.held.get(tcp::CLOSE_WAIT) + census.accept_queue.get(tcp::CLOSE_WAIT),
            accept_queue: census.accept_queue.total(),
        };
        self.threads.tick(
            (now, ts),
            &self.accounts,
            traffic,
            (lost.task_records, lost.threads_untracked),
            &mut self.events,
        );
        for tid in self.threads.stale(&self.accounts) {
            self.probes.forget_thread(tid);
        }
    }

    /// Starts a new read of /proc/PID/maps when the count moved enough and the last read is
    /// old enough: at 65k mappings a read takes tens of milliseconds and holds the target's
    /// mmap lock for reading, so it is never done on a timer alone.
    fn maybe_refresh_breakdown(&mut self) {
        let (Some(report), Some(_)) = (&self.breakdown, &self.reader) else {
            return;
        };
        let count = self.vma.count();
        let seen = report.breakdown.map_count();
        let moved = count.abs_diff(seen);
        let threshold = BREAKDOWN_MOVE_MIN.max((f64::from(count) * BREAKDOWN_MOVE) as u32);
        let gap = BREAKDOWN_MIN_GAP.max(report.cost * 50);
        if moved < threshold || report.read_at.elapsed() < gap {
            return;
        }
        let mut reader = self.reader.take().expect("checked above");
        let pid = self.target.pid;
        if let Some(report) = self.breakdown.as_mut() {
            report.read_at = Instant::now();
        }
        self.refresh = Some(tokio::task::spawn_blocking(move || {
            let result = reader.read(pid);
            (reader, result)
        }));
    }
}

/// Hands the kernel the target's sockets that existed before attach (it adopts them at their
/// first transition) and returns them for the model. They are listed twice, so that a socket
/// whose state changed while the kernel was being told is seeded with its later state.
fn seed_sockets(probes: &mut Probes, pid: u32) -> std::io::Result<ProcSockets> {
    let before = tcp::proc::read(pid)?;
    let tuples: Vec<TupleKey> = before
        .sockets
        .iter()
        .map(|s| TupleKey {
            netns: before.netns,
            family: u16::from(s.tuple.family),
            sport: s.tuple.sport,
            dport: s.tuple.dport,
            pad: 0,
            saddr: s.tuple.saddr,
            daddr: s.tuple.daddr,
        })
        .collect();
    let unseeded = probes
        .seed_tcp(before.netns, &before.listen_ports, &tuples)
        .map_err(std::io::Error::other)?;
    if unseeded > 0 {
        log::warn!("{unseeded} existing sockets did not fit in the kernel's table (--max-sockets)");
    }
    tcp::proc::read(pid)
}

/// Keeps count of the alerts raised and not yet resolved, per kind and severity.
fn track_active(active: &mut HashMap<(AlertKind, Severity), u32>, events: &[Event]) {
    for event in events {
        match event {
            Event::Alert { kind, severity, .. } => {
                *active.entry((*kind, *severity)).or_default() += 1;
            }
            Event::AlertResolved { kind, severity, .. } => {
                if let Some(count) = active.get_mut(&(*kind, *severity)) {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        active.remove(&(*kind, *severity));
                    }
                }
            }
            _ => {}
        }
    }
}

/// Applies every pending record of one ring buffer, in order.
fn apply_records<T: Record>(ring: &mut RingBuf<MapData>, mut apply: impl FnMut(T)) {
    while let Some(item) = ring.next() {
        if let Some(record) = probes::decode(&item) {
            apply(record);
        }
    }
}

/// Applies every pending TCP record; transitions become events, stamped with one clock read
/// per batch.
fn drain_tcp(ring: &mut RingBuf<MapData>, tcp: &mut TcpModel, events: &mut Vec<Event>) {
    let clocks = Clocks::now();
    apply_records(ring, |record| tcp.record(&record, clocks, events));
}

fn breakdown_event(pid: u32, report: &BreakdownReport) -> Event {
    Event::VmaBreakdown {
        ts: now_ms(),
        pid,
        map_count: report.breakdown.map_count(),
        read_ms: (report.cost.as_secs_f64() * 10_000.0).round() / 10.0,
        groups: report
            .breakdown
            .groups
            .iter()
            .map(|g| MappingGroup {
                class: g.class.as_str(),
                pattern: g.pattern.clone(),
                dir: g.dir.clone(),
                mappings: g.mappings,
                files: g.files,
                bytes: g.bytes,
            })
            .collect(),
    }
}
