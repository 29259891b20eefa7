//! One traced process from attach to exit: its share of the probes, the records they write for
//! it, the models fed by them, and the periodic reports. `attach` runs one session; the agent
//! runs one per target, all of them on one loaded object ([`Loader`]).

use std::{
    collections::HashMap,
    future::Future,
    path::PathBuf,
    rc::{Rc, Weak},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow};
use tokio::{task::JoinHandle, time::MissedTickBehavior};

use tracer_common::{
    task::ThreadSched,
    tcp::{ListenKey, TCP_CLOSE_WAIT, TCP_LISTEN, TupleKey},
    vma::VmaRegister,
};

use crate::{
    agent::state,
    alert::Severity,
    death::{Death, LastState},
    event::{AlertDetail, AlertKind, Clocks, Event, MappingGroup, monotonic, now_ms},
    exhaustion::{self, Thresholds},
    fd::FdModel,
    memory::{MemoryModel, MemoryStatus},
    preflight,
    probes::{
        Lost, ProbeError, Probes,
        shared::{Attached, Kernel, Records},
    },
    procmode::{self, Mode, Sampler, Source},
    scrub::Scrubber,
    target::Target,
    tcp::{self, Census, TcpModel, TcpThresholds, proc::ProcSockets},
    threads::{ThreadModel, ThreadStatus, ThreadThresholds, Traffic},
    vma::{
        self, VmaModel, VmaStatus,
        kafka::{LogConfig, SteadyState},
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
/// How often the socket counts are audited against sock_diag (a dump filtered by state in
/// the kernel and a scan of /proc/PID/fd, off the drain loop: tens of milliseconds at
/// 100,000 sockets).
const AUDIT_INTERVAL: Duration = Duration::from_mins(1);
/// The least time between two resyncs: while records keep being lost (a burst longer than
/// the ring buffer holds), one snapshot every few seconds heals the counts without the
/// snapshots themselves taking the CPU the drain needs.
const RESYNC_MIN_GAP: Duration = Duration::from_secs(3);
/// The least time between two resyncs for socket-probe runs the kernel skipped (which may be
/// any process's sockets, so a busy host has some every few seconds): the counts are right
/// again within this and a snapshot's time after a skipped run of the target's.
const MISSED_RUNS_GAP: Duration = Duration::from_secs(5);

/// A read of /proc/PID/maps under way: the reader back, its breakdown, and the steady state
/// projected from it (a Kafka broker's).
type Refresh = JoinHandle<(MapsReader, std::io::Result<Breakdown>, Option<SteadyState>)>;

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
    /// Masks secrets in the target's command line before it is shown anywhere.
    pub scrub: Scrubber,
    /// `--mode`.
    pub mode: Mode,
    /// The file keeping this target's long trends across restarts (agent `--state-dir`).
    pub state_file: Option<PathBuf>,
    /// Raise `target_died` when the target exits (`tracer agent`).
    pub alert_on_death: bool,
}

/// How often the state file is written.
const STATE_INTERVAL: Duration = Duration::from_mins(1);

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
    /// In proc mode, how often the counts are sampled.
    pub sampled: Option<Duration>,
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
    /// This target's share of the kernel side in eBPF mode; `None` in proc mode.
    probes: Option<Attached>,
    /// The records drained for this target, reused from drain to drain.
    records: Records,
    /// What feeds the models in proc mode.
    sampler: Option<Sampler>,
    vma: VmaModel,
    tcp: TcpModel,
    threads: ThreadModel,
    fds: FdModel,
    memory: MemoryModel,
    /// The kernel's thread accounts, read every report into this reused buffer.
    accounts: Vec<(u32, ThreadSched)>,
    /// Thread records lost as of the last report: more means the counts are re-read.
    task_lost: u64,
    /// Socket records lost as of the last resync: more means the table is rebuilt.
    tcp_lost: u64,
    /// Socket-probe runs skipped as of the last resync: more means the table is rebuilt too.
    tcp_missed_runs: u64,
    /// A snapshot of the target's sockets being taken on the blocking pool, and why.
    resync: Option<(JoinHandle<std::io::Result<ProcSockets>>, &'static str)>,
    /// When the socket table was last checked against the kernel.
    audited: Instant,
    /// When the last resync of the sockets started.
    resynced: Option<Instant>,
    limit_override: Option<u32>,
    breakdown: Option<BreakdownReport>,
    /// A read of /proc/PID/maps in flight on the blocking pool; the reader travels with it so
    /// its buffer is reused.
    refresh: Option<Refresh>,
    /// A Kafka broker's log settings, when the target is one.
    kafka: Option<Arc<LogConfig>>,
    state_file: Option<PathBuf>,
    state_saved: Instant,
    reader: Option<MapsReader>,
    attached: Instant,
    events: Vec<Event>,
    /// Alerts raised and not resolved, per kind and severity: resolved when the target dies.
    active: Active,
    alert_on_death: bool,
}

impl Session {
    /// Attaches to `target`: has the probes follow it first, then seeds the models from /proc
    /// so that nothing that happens in between is missed. In proc mode, also when the probes
    /// cannot load and `--mode` is `auto`, the models are fed from /proc samples instead.
    pub fn attach(
        mut target: Target,
        loader: &mut Loader,
        options: &Options,
    ) -> anyhow::Result<Self> {
        target.cmdline = options.scrub.command_line(&target.cmdline);
        let (mut probes, fell_back) = loader.attach(target.pid)?;

        let unreadable = |what: &str, e: std::io::Error| {
            let probes = fell_back.as_ref().map_or_else(String::new, |why| {
                format!(" (nor could the eBPF probes load: {why})")
            });
            anyhow!(
                "reading /proc/{}/{what}: {e} - run tracer as root, or give it CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH to watch another user's process{probes}",
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
        let mut vma = VmaModel::new(
            target.pid,
            breakdown.breakdown.map_count(),
            limit,
            options.thresholds,
            options.rate_window.as_secs_f64(),
        );
        let kafka = restore_and_project(&mut vma, target.pid, options, &reader);

        let mut tcp = TcpModel::new(target.pid, options.tcp);
        let sockets = match &mut probes {
            Some(probes) => seed_sockets(probes, target.pid),
            None => tcp::proc::read(target.pid),
        }
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => unreadable("fd", e),
            _ => anyhow!("reading the sockets of pid {}: {e}", target.pid),
        })?;
        tcp.seed(&sockets, monotonic());
        let sampler = match probes {
            Some(_) => None,
            None => {
                Some(Sampler::start(target.pid, &sockets).context("starting the /proc sampler")?)
            }
        };

        let mut threads = ThreadModel::new(target.pid, options.threads.clone(), monotonic());
        threads.seed().map_err(|e| unreadable("task", e))?;
        let window = options.rate_window.as_secs_f64();
        let fds = FdModel::new(target.pid, options.thresholds, window);
        let memory = MemoryModel::new(target.pid, options.thresholds, window);

        let mut events = vec![Event::TargetAttached {
            ts: now_ms(),
            pid: target.pid,
            cmdline: target.cmdline.clone(),
            mode: Mode::of(probes.is_some()).as_str(),
            vma_source: probes
                .as_ref()
                .map_or(procmode::PROC_MAPS, |p| p.probes().vma_source().as_str()),
        }];
        events.push(breakdown_event(target.pid, &breakdown));
        if let Some(why) = &fell_back {
            procmode::fall_back(why);
        }
        Ok(Self {
            target,
            probes,
            records: Records::default(),
            sampler,
            vma,
            tcp,
            threads,
            fds,
            memory,
            accounts: Vec::new(),
            task_lost: 0,
            tcp_lost: 0,
            tcp_missed_runs: 0,
            resync: None,
            audited: Instant::now(),
            resynced: None,
            limit_override: options.max_map_count,
            breakdown: Some(breakdown),
            refresh: None,
            kafka,
            state_file: options.state_file.clone(),
            state_saved: Instant::now(),
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
                ready = arrived(self.probes.as_ref()) => {
                    ready.context("polling the ring buffers")?;
                    if let Some(probes) = &self.probes {
                        probes.take(&mut self.records);
                    }
                    self.apply_records();
                }
                _ = drain.tick() => self.drain(),
                done = async { (&mut self.resync.as_mut().expect("guarded").0).await }, if self.resync.is_some() => {
                    let (_, reason) = self.resync.take().expect("guarded");
                    match done.context("the socket snapshot panicked")? {
                        Ok(found) => self.finish_resync(&found, reason),
                        Err(e) => log::warn!("reading the sockets of {} for a resync: {e}", self.target.pid),
                    }
                }
                done = async { self.refresh.as_mut().expect("guarded").await }, if self.refresh.is_some() => {
                    self.refresh = None;
                    let (reader, result, steady) = done.context("the /proc/PID/maps reader panicked")?;
                    self.reader = Some(reader);
                    if self.kafka.is_some() && result.is_ok() {
                        self.vma.set_steady_state(steady);
                    }
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
        self.save_state();
        if let Some(probes) = &self.probes {
            probes.drain_all(&mut self.records);
            self.apply_records();
        }
        let alive = end != End::TargetExited;
        if let Some(Ok((register, high))) = self
            .probes
            .as_ref()
            .map(|p| p.probes().vma_register(p.number(), alive))
        {
            self.vma.register(&register, high);
        }
        if !alive {
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
        for ((kind, severity, group), count) in std::mem::take(&mut self.active) {
            for _ in 0..count {
                self.events.push(Event::AlertResolved {
                    ts,
                    pid,
                    kind,
                    severity,
                    message: "the process exited".to_owned(),
                    group: group.clone(),
                });
            }
        }
        let vma = self.vma.status();
        let death = Death::new(
            self.probes
                .as_ref()
                .and_then(|p| p.probes().process_exit(p.number())),
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
        let Some(probes) = &self.probes else {
            return;
        };
        probes.drain(&mut self.records);
        self.apply_records();
        let due = self.tcp.due_for_probe(monotonic());
        if !due.is_empty()
            && let Some(probes) = &self.probes
            && let Err(e) = probes.probes().probe_held(&due)
        {
            log::warn!("asking the kernel about accepted sockets: {e}");
        }
    }

    /// Applies the records drained for this target, in the order of each ring; transitions
    /// become events, stamped with one clock read per batch.
    fn apply_records(&mut self) {
        for record in &self.records.vma {
            self.vma.record(*record);
        }
        let clocks = Clocks::now();
        for record in &self.records.tcp {
            self.tcp.record(record, clocks, &mut self.events);
        }
        for record in &self.records.task {
            self.threads.record(record);
        }
    }

    fn report(&mut self, sink: &mut dyn Sink) -> anyhow::Result<()> {
        self.drain();
        let lost = if let Some(probes) = &self.probes {
            let mut kernel = probes.probes();
            let (register, high) = kernel
                .vma_register(probes.number(), true)
                .context("reading the VMA register")?;
            self.vma.register(&register, high);
            kernel.lost().unwrap_or_default()
        } else {
            self.apply_samples();
            Lost::default()
        };
        let (now, ts) = (monotonic(), now_ms());
        self.vma.tick(now, ts, lost.vma_records, &mut self.events);
        self.tcp.tick(now, ts, &lost, &mut self.events);
        self.maybe_resync_sockets(&lost);
        self.threads_tick(now, ts, &lost);
        self.fds.tick(now, ts, &mut self.events);
        let arenas = self.breakdown.as_ref().map_or(0, |b| b.breakdown.arenas);
        self.memory.tick(now, ts, arenas, &mut self.events);
        if let Some(probes) = &self.probes {
            probes.probes().flush_log();
        }
        self.maybe_refresh_breakdown();
        if self.state_saved.elapsed() >= STATE_INTERVAL {
            self.save_state();
        }
        sink.frame(&Frame {
            target: &self.target,
            vma_source: self
                .probes
                .as_ref()
                .map_or(procmode::PROC_MAPS, |p| p.probes().vma_source().as_str()),
            attached: self.attached,
            vma: self.vma.status(),
            breakdown: self.breakdown.as_ref(),
            tcp: self.tcp.census(),
            threads: self.threads.status(),
            fds: self.fds.status(),
            memory: self.memory.status(),
            lost,
            sampled: self.sampler.as_ref().map(Sampler::period),
        })?;
        Ok(())
    }

    /// Starts rebuilding the socket table from the kernel's view when records were lost, or
    /// when the audit is due. The snapshot is taken off the drain loop; records applied
    /// meanwhile win over it.
    fn maybe_resync_sockets(&mut self, lost: &Lost) {
        // In proc mode every sample is a resync already.
        if self.probes.is_none()
            || self.resync.is_some()
            || self.resynced.is_some_and(|t| t.elapsed() < RESYNC_MIN_GAP)
        {
            return;
        }
        let reason = if lost.tcp_records > self.tcp_lost {
            "records_lost"
        } else if lost.tcp_missed_runs > self.tcp_missed_runs
            && self.resynced.is_none_or(|t| t.elapsed() >= MISSED_RUNS_GAP)
        {
            "missed_runs"
        } else if self.audited.elapsed() >= AUDIT_INTERVAL {
            "audit"
        } else {
            return;
        };
        self.tcp_lost = lost.tcp_records;
        self.tcp_missed_runs = lost.tcp_missed_runs;
        self.audited = Instant::now();
        self.resynced = Some(Instant::now());
        // Records are stamped up to a tick late (`TickClock`): those stamped a tick or more
        // after the resync began happened after it, and the snapshot, read two ticks after
        // (one of margin), holds every record stamped before.
        let tick = self
            .probes
            .as_ref()
            .map_or(Duration::ZERO, |p| p.probes().record_tick());
        self.tcp.begin_resync(monotonic() + tick.as_secs_f64());
        let pid = self.target.pid;
        let snapshot = tokio::task::spawn_blocking(move || {
            std::thread::sleep(2 * tick);
            tcp::proc::read(pid)
        });
        self.resync = Some((snapshot, reason));
    }

    /// Applies a snapshot: the records that arrived while it was taken first.
    fn finish_resync(&mut self, found: &ProcSockets, reason: &'static str) {
        if let Some(probes) = &self.probes {
            probes.drain(&mut self.records);
            // Too recent to apply yet: the snapshot may or may not show them.
            let held = probes.held_tcp();
            self.apply_records();
            for record in &held {
                self.tcp.touch(record);
            }
        }
        let resync = self.tcp.resync(found, monotonic());
        // An audit, or skipped runs that were others' sockets: nothing to tell.
        if reason != "records_lost" && resync.corrected == 0 {
            return;
        }
        self.events.push(Event::Resynced {
            ts: now_ms(),
            pid: self.target.pid,
            table: "sockets",
            reason,
            corrected: resync.corrected,
            before: resync.before,
            after: resync.after,
        });
    }

    /// Folds the kernel's thread accounts into the thread model, with the traffic a stall is
    /// judged against; re-reads the threads from /proc when records were lost.
    fn threads_tick(&mut self, now: f64, ts: u64, lost: &Lost) {
        if lost.task_records > self.task_lost {
            self.task_lost = lost.task_records;
            let before = self.threads.count();
            match self.threads.seed() {
                Ok(()) => self.events.push(Event::Resynced {
                    ts,
                    pid: self.target.pid,
                    table: "threads",
                    reason: "records_lost",
                    corrected: before.abs_diff(self.threads.count()),
                    before: [("threads", before)].into(),
                    after: [("threads", self.threads.count())].into(),
                }),
                Err(e) => log::debug!("re-reading /proc/{}/task: {e}", self.target.pid),
            }
        }
        if let Some(probes) = &self.probes {
            probes
                .probes()
                .thread_accounts(probes.number(), &mut self.accounts);
        }
        let census = self.tcp.census();
        let traffic = Traffic {
            new_per_second: census.new_per_second,
            close_wait: census.held.get(TCP_CLOSE_WAIT) + census.accept_queue.get(TCP_CLOSE_WAIT),
            accept_queue: census.accept_queue.total(),
        };
        self.threads.tick(
            (now, ts),
            &self.accounts,
            traffic,
            (lost.task_records, lost.threads_untracked),
            &mut self.events,
        );
        if let Some(probes) = &self.probes {
            let mut kernel = probes.probes();
            for tid in self.threads.stale(&self.accounts) {
                kernel.forget_thread(tid);
            }
        }
    }

    /// Proc mode: feeds the models the samples taken since the last report, as the probes'
    /// records and readings would be.
    fn apply_samples(&mut self) {
        let Some(sampler) = &mut self.sampler else {
            return;
        };
        let clocks = Clocks::now();
        while let Some(sample) = sampler.try_next() {
            if let Some(count) = sample.map_count {
                let register = VmaRegister {
                    count,
                    valid: 1,
                    ..VmaRegister::default()
                };
                self.vma.register(&register, count);
            }
            for record in &sample.tcp {
                self.tcp.record(record, clocks, &mut self.events);
            }
            for record in &sample.tasks {
                self.threads.record(record);
            }
            self.accounts = sample.accounts;
        }
    }

    /// Writes the long trends to the state file, if there is one.
    fn save_state(&mut self) {
        let Some(path) = &self.state_file else {
            return;
        };
        self.state_saved = Instant::now();
        let (now, ms) = (monotonic(), now_ms());
        let saved = state::State {
            version: state::VERSION,
            saved_ms: ms,
            vma: self.vma.history(now, ms),
        };
        if let Err(e) = state::save(path, &saved) {
            log::warn!("writing the state file {}: {e}", path.display());
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
        let kafka = self.kafka.clone();
        self.refresh = Some(tokio::task::spawn_blocking(move || {
            let result = reader.read(pid);
            let steady = match (&kafka, &result) {
                (Some(config), Ok(breakdown)) => {
                    vma::kafka::steady_state(pid, config, reader.text(), breakdown.map_count())
                }
                _ => None,
            };
            (reader, result, steady)
        }));
    }
}

/// Gives sessions their share of the probes: one loaded object for all of them, loaded for the
/// first and kept while any lives (the programs are detached with the last).
pub struct Loader {
    source: Source,
    mode: Mode,
    max_sockets: u32,
    loaded: Weak<Kernel>,
}

impl Loader {
    pub fn new(source: Source, options: &Options) -> Self {
        Self {
            source,
            mode: options.mode,
            max_sockets: options.max_sockets,
            loaded: Weak::new(),
        }
    }

    /// Has the probes follow `pid`, loading them if no session holds them; `None` for proc
    /// mode, also when they cannot load and `--mode` is `auto`, with the reason why not.
    fn attach(&mut self, pid: u32) -> anyhow::Result<(Option<Attached>, Option<String>)> {
        let machine = match &self.source {
            Source::Probes(machine) => machine,
            Source::Proc { fell_back } => return Ok((None, fell_back.clone())),
        };
        let kernel = if let Some(kernel) = self.loaded.upgrade() {
            kernel
        } else {
            let loaded = Probes::load(
                &machine.pidns,
                &machine.layout,
                &machine.clock,
                &machine.vma_sources,
                self.max_sockets,
            )
            .and_then(Kernel::new);
            match loaded {
                Ok(kernel) => {
                    self.loaded = Rc::downgrade(&kernel);
                    kernel
                }
                Err(e) => {
                    return on_probe_error(e, self.mode, preflight::memlock_charged())
                        .map(|why| (None, Some(why)));
                }
            }
        };
        let attached = kernel
            .attach(pid)
            .map_err(|e| anyhow!("following pid {pid} in the kernel: {e}"))?;
        Ok((Some(attached), None))
    }
}

/// What a failure to load the probes means in `mode`: in `auto`, when privilege or the kernel
/// refused them, the reason to fall back to proc mode; otherwise the error. Both name the fix
/// (`memlock_charged`: this kernel charges BPF maps to the memlock limit).
fn on_probe_error(e: ProbeError, mode: Mode, memlock_charged: bool) -> anyhow::Result<String> {
    let fall_back = matches!(e, ProbeError::Permission(_) | ProbeError::Rejected(_));
    let why = match e {
        ProbeError::Permission(e) if memlock_charged => format!(
            "{e} - this kernel charges BPF maps to the memlock limit: run `ulimit -l unlimited` (or set LimitMEMLOCK=infinity) and retry"
        ),
        ProbeError::Permission(e) => {
            format!("{e} - run tracer as root (or with CAP_BPF and CAP_PERFMON)")
        }
        ProbeError::Rejected(e) => {
            format!("{e} - the kernel refused the probes; tracer needs Linux 5.8+ with BTF")
        }
        ProbeError::Other(e) => e,
    };
    if fall_back && mode == Mode::Auto {
        Ok(why)
    } else {
        Err(anyhow!(why))
    }
}

/// Gives a fresh VMA model what is known beyond its count: the long trends of the state file,
/// and, for a Kafka broker, its steady state. Returns the broker's settings.
fn restore_and_project(
    vma: &mut VmaModel,
    pid: u32,
    options: &Options,
    reader: &MapsReader,
) -> Option<Arc<LogConfig>> {
    if let Some(path) = &options.state_file {
        match state::load(path) {
            Ok(Some(saved)) => vma.restore(&saved.vma, monotonic(), now_ms()),
            Ok(None) => {}
            Err(e) => log::warn!("{e} - ignored; the next save replaces it"),
        }
    }
    let kafka = match LogConfig::discover(pid) {
        None => None,
        Some(Ok(config)) => Some(Arc::new(config)),
        Some(Err(e)) => {
            log::warn!("Kafka broker settings: {e} - its steady state is not projected");
            None
        }
    };
    if let Some(config) = &kafka {
        vma.set_steady_state(vma::kafka::steady_state(
            pid,
            config,
            reader.text(),
            vma.count(),
        ));
    }
    kafka
}

/// Hands the kernel the target's sockets that existed before attach (it adopts them at their
/// first transition) and returns them for the model. They are listed twice, so that a socket
/// whose state changed while the kernel was being told is seeded with its later state.
fn seed_sockets(probes: &Attached, pid: u32) -> std::io::Result<ProcSockets> {
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
    let listeners: Vec<ListenKey> = before
        .sockets
        .iter()
        .filter(|s| s.state == TCP_LISTEN && s.held)
        .map(|s| ListenKey {
            netns: before.netns,
            port: s.tuple.sport,
            family: u16::from(s.tuple.family),
            addr: s.tuple.saddr,
        })
        .collect();
    let unseeded = probes
        .probes()
        .seed_tcp(probes.number(), &listeners, &tuples)
        .map_err(std::io::Error::other)?;
    if unseeded > 0 {
        log::warn!("{unseeded} existing sockets did not fit in the kernel's table (--max-sockets)");
    }
    tcp::proc::read(pid)
}

/// Until records arrive for the target; never, in proc mode.
async fn arrived(probes: Option<&Attached>) -> std::io::Result<()> {
    match probes {
        Some(probes) => probes.arrived().await,
        None => std::future::pending().await,
    }
}

/// The alerts raised and not yet resolved, by kind, severity and thread group.
type Active = HashMap<(AlertKind, Severity, Option<String>), u32>;

/// Keeps count of the alerts raised and not yet resolved.
fn track_active(active: &mut Active, events: &[Event]) {
    for event in events {
        match event {
            Event::Alert {
                kind,
                severity,
                detail,
                ..
            } => {
                let key = (*kind, *severity, detail.group().map(str::to_owned));
                *active.entry(key).or_default() += 1;
            }
            Event::AlertResolved {
                kind,
                severity,
                group,
                ..
            } => {
                let key = (*kind, *severity, group.clone());
                if let Some(count) = active.get_mut(&key) {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        active.remove(&key);
                    }
                }
            }
            _ => {}
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_falls_back_with_the_fix_ebpf_refuses_with_it() {
        let denied = || ProbeError::Permission("creating maps: Operation not permitted".to_owned());
        let why = on_probe_error(denied(), Mode::Auto, true).unwrap();
        assert!(why.contains("ulimit -l unlimited"), "{why}");
        let why = on_probe_error(denied(), Mode::Auto, false).unwrap();
        assert!(why.contains("CAP_BPF"), "{why}");
        let e = on_probe_error(denied(), Mode::Ebpf, false).unwrap_err();
        assert!(e.to_string().contains("CAP_BPF"), "{e}");
        let refused = ProbeError::Rejected("no way to read the VMA count".to_owned());
        let why = on_probe_error(refused, Mode::Auto, false).unwrap();
        assert!(why.contains("Linux 5.8+"), "{why}");
        // Anything else is no reason to watch less exactly.
        let other = ProbeError::Other("reading the ring: Bad address".to_owned());
        assert!(on_probe_error(other, Mode::Auto, false).is_err());
    }
}
