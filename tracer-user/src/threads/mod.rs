//! The target's threads: how many there are, grouped by name (`kafka-producer-network-thread`
//! x 312), whether a group keeps growing (`thread_leak`), how busy each group is
//! (`threads_saturated`: Kafka's network-processor idle ratio, measured from outside the JVM),
//! and whether request-handling threads stopped running while work keeps arriving (`stall`).
//!
//! Births, renames and exits come from the kernel as records; time on and off CPU comes from
//! the kernel's per-thread accounts (`tracer_common::task::ThreadSched`), read every report.

pub mod blocked;

use std::collections::{HashMap, VecDeque};

use tracer_common::task::{ASLEEP, TASK_EXIT, TASK_NEW, TASK_RENAME, TaskEvent, ThreadSched};

use crate::{
    alert::{Change, Check, Latch, Severity},
    event::{AlertDetail, AlertKind, Event, StalledThread, ThreadGroup},
    exhaustion::rate::keep_window,
    units::{duration, thousands},
};

/// When the thread alerts fire.
#[derive(Clone, Debug, PartialEq)]
pub struct ThreadThresholds {
    /// `thread_leak`: a group grew by at least this many threads...
    pub leak_min: u32,
    /// ...within this window.
    pub leak_window_secs: f64,
    /// `threads_saturated`: a group of two or more threads busy (not asleep) this share of
    /// the time...
    pub busy: f64,
    /// ...over this window.
    pub saturation_window_secs: f64,
    /// `stall`: threads of these groups (name prefixes) not run for this long...
    pub stall_after_secs: f64,
    pub stall_groups: Vec<String>,
}

impl Default for ThreadThresholds {
    fn default() -> Self {
        Self {
            leak_min: 50,
            leak_window_secs: 600.0,
            busy: 0.9,
            saturation_window_secs: 30.0,
            stall_after_secs: 10.0,
            // Kafka's request handlers as the kernel names them (15 bytes): 2.x/3.x
            // `kafka-request-handler-N`, 3.x `data-plane-kafka-request-handler-N`.
            stall_groups: vec!["kafka-request-h".into(), "data-plane-kafk".into()],
        }
    }
}

/// A raised `threads_saturated` clears when the group's idle ratio is back above this.
const SATURATION_CLEAR_IDLE: f64 = 0.2;

/// Work arriving at the target, from the TCP model: a stall is only a stall when there is.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Traffic {
    pub new_per_second: f64,
    pub close_wait: u32,
    pub accept_queue: u32,
}

/// The group a thread belongs to: its name less a trailing number and separators
/// (`GC Thread#3` -> `GC Thread`, `kafka-request-handler-7` -> `kafka-request-handler`;
/// names are cut to 15 bytes by the kernel, so `kafka-producer-network-thread | producer-9`
/// arrives as `kafka-producer-` and groups as `kafka-producer`).
pub fn group_of(name: &str) -> &str {
    let trimmed = name
        .trim_end_matches(|c: char| c.is_ascii_digit())
        .trim_end_matches([' ', '-', '_', '#', '.', ':', '|', '/']);
    if trimmed.is_empty() { name } else { trimmed }
}

/// The previous reading of a thread's account.
#[derive(Clone, Copy, Debug)]
struct Seen {
    asleep_ns: u64,
    at_ns: u64,
    /// Whether the kernel had an account for it: until then its sleep is estimated from
    /// attach, and the first tick with an account starts counting afresh.
    accounted: bool,
}

/// Per group, across ticks.
#[derive(Default)]
struct GroupHistory {
    /// Thread count per tick, over the leak window.
    counts: VecDeque<(f64, u32)>,
    /// Per tick: nanoseconds asleep and nanoseconds of capacity (threads x wall time), over
    /// the saturation window.
    idle: VecDeque<(f64, (u64, u64))>,
    leak: Latch,
    saturated: Latch,
    stall: Latch,
}

impl GroupHistory {
    fn idle_ratio(&self) -> Option<f64> {
        let (asleep, capacity) = self
            .idle
            .iter()
            .fold((0u64, 0u64), |(a, c), &(_, (asleep, cap))| {
                (a + asleep, c + cap)
            });
        (capacity > 0).then(|| (asleep as f64 / capacity as f64).min(1.0))
    }

    /// Seconds the idle samples span.
    fn idle_span(&self) -> f64 {
        match (self.idle.front(), self.idle.back()) {
            (Some(first), Some(last)) => last.0 - first.0,
            _ => 0.0,
        }
    }
}

/// The live state, for the terminal view.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ThreadStatus {
    pub count: u32,
    /// Largest groups first.
    pub groups: Vec<ThreadGroup>,
}

/// The thread model of one target.
pub struct ThreadModel {
    pid: u32,
    thresholds: ThreadThresholds,
    /// Live threads and their names.
    names: HashMap<u32, String>,
    /// Monotonic seconds at attach: a thread without an account has not switched since then.
    attached: f64,
    seen: HashMap<u32, Seen>,
    groups: HashMap<String, GroupHistory>,
    /// CLOSE_WAIT count per tick, over the stall window.
    close_wait: VecDeque<(f64, u32)>,
    status: ThreadStatus,
}

impl ThreadModel {
    pub fn new(pid: u32, thresholds: ThreadThresholds, attached: f64) -> Self {
        Self {
            pid,
            thresholds,
            names: HashMap::new(),
            attached,
            seen: HashMap::new(),
            groups: HashMap::new(),
            close_wait: VecDeque::new(),
            status: ThreadStatus::default(),
        }
    }

    /// Learns the threads that exist from /proc/PID/task (at attach, and again whenever
    /// records were lost).
    pub fn seed(&mut self) -> std::io::Result<()> {
        let mut names = HashMap::new();
        for entry in std::fs::read_dir(format!("/proc/{}/task", self.pid))? {
            let Some(tid) = entry?.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            if let Ok(name) = std::fs::read_to_string(format!("/proc/{}/task/{tid}/comm", self.pid))
            {
                names.insert(tid, name.trim_end().to_owned());
            }
        }
        self.names = names;
        Ok(())
    }

    pub fn count(&self) -> u32 {
        self.names.len() as u32
    }

    /// Applies one record.
    pub fn record(&mut self, event: &TaskEvent) {
        let name = || {
            let end = event.comm.iter().position(|&b| b == 0).unwrap_or(16);
            String::from_utf8_lossy(&event.comm[..end]).into_owned()
        };
        match event.kind {
            // A thread is born with its creator's name, and most rename themselves at once.
            TASK_NEW | TASK_RENAME => {
                self.names.insert(event.tid, name());
            }
            TASK_EXIT => {
                self.names.remove(&event.tid);
                self.seen.remove(&event.tid);
            }
            _ => {}
        }
    }

    /// Threads the kernel keeps an account for that are no longer the target's: their
    /// accounts can go (the kernel drops them at exit; this catches the ones it missed).
    pub fn stale<'a>(
        &'a self,
        accounts: &'a [(u32, ThreadSched)],
    ) -> impl Iterator<Item = u32> + 'a {
        accounts
            .iter()
            .map(|&(tid, _)| tid)
            .filter(|tid| !self.names.contains_key(tid))
    }

    /// One report at `t_secs` (monotonic, the kernel's clock; `ts` for events): folds the
    /// accounts into the groups, raises or resolves alerts, and appends the `threads` event.
    /// `lost` is the records lost and the threads the kernel could not account.
    pub fn tick(
        &mut self,
        (t_secs, ts): (f64, u64),
        accounts: &[(u32, ThreadSched)],
        traffic: Traffic,
        lost: (u64, u64),
        out: &mut Vec<Event>,
    ) {
        let ticks = self.fold(t_secs, accounts);

        self.close_wait.push_back((t_secs, traffic.close_wait));
        keep_window(
            &mut self.close_wait,
            t_secs,
            self.thresholds.stall_after_secs,
        );
        let close_wait_grew = self
            .close_wait
            .front()
            .is_some_and(|&(_, first)| traffic.close_wait > first);
        let arriving = traffic.new_per_second > 0.0 || traffic.accept_queue > 0 || close_wait_grew;

        let judge = Judge {
            pid: self.pid,
            thresholds: &self.thresholds,
            t_secs,
            ts,
            traffic: arriving.then_some(traffic),
        };
        let mut groups = Vec::with_capacity(ticks.len());
        for (name, tick) in ticks {
            let history = self.groups.entry(name.clone()).or_default();
            groups.push(judge.group(name, tick, history, out));
        }
        self.groups
            .retain(|name, _| groups.iter().any(|g| &g.name == name));
        self.seen.retain(|tid, _| self.names.contains_key(tid));
        groups.sort_by(|a, b| b.threads.cmp(&a.threads).then_with(|| a.name.cmp(&b.name)));

        self.status = ThreadStatus {
            count: self.count(),
            groups: groups.clone(),
        };
        out.push(Event::Threads {
            ts,
            pid: self.pid,
            count: self.count(),
            groups,
            events_lost: lost.0,
            untracked: lost.1,
        });
    }

    /// Per group, this tick: its threads, their sleep and capacity since the previous tick,
    /// and those blocked for longer than the stall threshold.
    fn fold(&mut self, t_secs: f64, accounts: &[(u32, ThreadSched)]) -> HashMap<String, GroupTick> {
        let accounts: HashMap<u32, &ThreadSched> = accounts.iter().map(|(t, a)| (*t, a)).collect();
        let now_ns = (t_secs * 1e9) as u64;
        let attached_ns = (self.attached * 1e9) as u64;
        let mut ticks: HashMap<String, GroupTick> = HashMap::new();
        for (&tid, name) in &self.names {
            let account = accounts.get(&tid);
            // Asleep so far: completed sleeps plus the one in progress. A thread that has not
            // switched since attach has been asleep all along (or runs without ever being
            // switched out, which an idle CPU allows; rare on a server).
            let (asleep_ns, blocked_since) = match account {
                Some(a) if a.state == ASLEEP => (
                    a.asleep_ns + now_ns.saturating_sub(a.since_ns),
                    Some(a.since_ns),
                ),
                Some(a) => (a.asleep_ns, None),
                None => (now_ns.saturating_sub(attached_ns), Some(attached_ns)),
            };
            let group = ticks.entry(group_of(name).to_owned()).or_default();
            group.threads += 1;
            let seen = Seen {
                asleep_ns,
                at_ns: now_ns,
                accounted: account.is_some(),
            };
            if let Some(prev) = self.seen.insert(tid, seen)
                && prev.accounted == seen.accounted
            {
                group.asleep_ns += asleep_ns.saturating_sub(prev.asleep_ns);
                group.capacity_ns += now_ns.saturating_sub(prev.at_ns);
            }
            if let Some(since) = blocked_since {
                let blocked = now_ns.saturating_sub(since) as f64 / 1e9;
                if blocked >= self.thresholds.stall_after_secs {
                    group.stalled.push(StalledThread {
                        tid,
                        name: name.clone(),
                        blocked_seconds: blocked.round() as u64,
                        syscall: None,
                        wchan: None,
                    });
                }
            }
        }
        ticks
    }

    pub fn status(&self) -> &ThreadStatus {
        &self.status
    }
}

/// One group's tick.
#[derive(Default)]
struct GroupTick {
    threads: u32,
    asleep_ns: u64,
    capacity_ns: u64,
    stalled: Vec<StalledThread>,
}

/// What the alerts of a group are judged with at one tick.
struct Judge<'a> {
    pid: u32,
    thresholds: &'a ThreadThresholds,
    t_secs: f64,
    ts: u64,
    /// The traffic, when work is arriving (a stall needs it).
    traffic: Option<Traffic>,
}

impl Judge<'_> {
    /// Folds one group's tick into its history, raises or resolves its alerts, and returns
    /// its line of the `threads` event.
    fn group(
        &self,
        name: String,
        tick: GroupTick,
        history: &mut GroupHistory,
        out: &mut Vec<Event>,
    ) -> ThreadGroup {
        let (t_secs, threads) = (self.t_secs, tick.threads);
        history.counts.push_back((t_secs, threads));
        keep_window(
            &mut history.counts,
            t_secs,
            self.thresholds.leak_window_secs,
        );
        if tick.capacity_ns > 0 {
            history
                .idle
                .push_back((t_secs, (tick.asleep_ns, tick.capacity_ns)));
        }
        keep_window(
            &mut history.idle,
            t_secs,
            self.thresholds.saturation_window_secs,
        );
        let idle_ratio = history.idle_ratio();

        // thread_leak: the group grew by leak_min within the window.
        let lowest = history
            .counts
            .iter()
            .map(|&(_, c)| c)
            .min()
            .unwrap_or(threads);
        let growth = threads - lowest.min(threads);
        let leak = Check {
            firing: growth >= self.thresholds.leak_min,
            cleared: growth < self.thresholds.leak_min / 2,
        };
        if let Some(change) = history.leak.update(leak) {
            let oldest = history.counts.front().map_or(t_secs, |&(t, _)| t);
            out.push(Event::alert_change(
                self.pid,
                self.ts,
                (AlertKind::ThreadLeak, Severity::Warning),
                change,
                match change {
                    Change::Raise => format!(
                        "{threads} {name} threads, +{growth} in {}: threads are created and never exit, a thread leak \
                         (Kafka clients: a producer or consumer created per message and never closed); each holds a \
                         stack and often a 64 MiB malloc arena, so native memory grows with them",
                        duration(t_secs - oldest)
                    ),
                    Change::Resolve => format!("{threads} {name} threads, no longer growing"),
                },
                AlertDetail::Threads {
                    group: name.clone(),
                    threads,
                    growth: Some(growth),
                    idle_ratio,
                },
            ));
        }

        // threads_saturated: two or more threads, asleep less than (1 - busy) of a full
        // window.
        let full = history.idle_span() >= self.thresholds.saturation_window_secs * 0.8;
        let saturated = Check {
            firing: threads >= 2
                && full
                && idle_ratio.is_some_and(|idle| idle <= 1.0 - self.thresholds.busy),
            cleared: idle_ratio.is_none_or(|idle| idle >= SATURATION_CLEAR_IDLE),
        };
        if let Some(change) = history.saturated.update(saturated) {
            let idle = idle_ratio.unwrap_or(0.0);
            out.push(Event::alert_change(
                self.pid,
                self.ts,
                (AlertKind::ThreadsSaturated, Severity::Warning),
                change,
                match change {
                    Change::Raise => format!(
                        "{threads} {name} threads busy {:.0}% of the last {} (idle ratio {idle:.2}): the group is \
                         saturated and work queues behind it while the machine's CPU may look fine (Kafka's network \
                         processors: NetworkProcessorAvgIdlePercent near 0; add num.network.threads or spread the \
                         connections)",
                        (1.0 - idle) * 100.0,
                        duration(self.thresholds.saturation_window_secs)
                    ),
                    Change::Resolve => format!("{name} threads idle {:.0}% of the time again", idle * 100.0),
                },
                AlertDetail::Threads {
                    group: name.clone(),
                    threads,
                    growth: None,
                    idle_ratio,
                },
            ));
        }

        let stalled = tick.stalled.len() as u32;
        self.stall(&name, threads, tick.stalled, history, out);

        ThreadGroup {
            name,
            threads,
            idle_ratio: idle_ratio.map(|r| (r * 1000.0).round() / 1000.0),
            stalled,
        }
    }

    /// `stall`: at least half of a request group blocked for `stall_after`, with work
    /// arriving.
    fn stall(
        &self,
        name: &str,
        threads: u32,
        mut stalled: Vec<StalledThread>,
        history: &mut GroupHistory,
        out: &mut Vec<Event>,
    ) {
        let watched = self
            .thresholds
            .stall_groups
            .iter()
            .any(|prefix| name.starts_with(prefix.as_str()) || prefix.starts_with(name));
        let stuck = stalled.len() as u32;
        let stall = Check {
            firing: watched && stuck > 0 && stuck * 2 >= threads && self.traffic.is_some(),
            cleared: stuck == 0,
        };
        if let Some(change) = history.stall.update(stall) {
            stalled.sort_by_key(|s| s.tid);
            let message = match change {
                Change::Raise => {
                    for thread in &mut stalled {
                        let (syscall, wchan) = blocked::read(self.pid, thread.tid);
                        thread.syscall = syscall;
                        thread.wchan = wchan;
                    }
                    stall_message(
                        self.pid,
                        name,
                        threads,
                        &stalled,
                        self.traffic.unwrap_or_default(),
                    )
                }
                Change::Resolve => format!("{name} threads are running again"),
            };
            out.push(Event::alert_change(
                self.pid,
                self.ts,
                (AlertKind::Stall, Severity::Critical),
                change,
                message,
                AlertDetail::Stall {
                    group: name.to_owned(),
                    threads: stalled.clone(),
                    hint: format!("jstack {0} (or jcmd {0} Thread.print)", self.pid),
                },
            ));
        }
    }
}

/// The `stall` alert text: who stopped, in what, while what keeps arriving, and what to do.
fn stall_message(
    pid: u32,
    group: &str,
    threads: u32,
    stalled: &[StalledThread],
    traffic: Traffic,
) -> String {
    let longest = stalled.iter().map(|s| s.blocked_seconds).max().unwrap_or(0);
    let mut waits: Vec<&str> = stalled
        .iter()
        .filter_map(|s| s.syscall.as_deref().or(s.wchan.as_deref()))
        .collect();
    waits.sort_unstable();
    waits.dedup();
    format!(
        "{} of {threads} {group} threads have not run for {}{} while work keeps arriving ({:.1} new connections/s, \
         {} in CLOSE_WAIT, {} not accepted): the request threads are stuck (a deadlock?) - take a thread dump now: \
         jstack {pid} (or jcmd {pid} Thread.print)",
        stalled.len(),
        duration(longest as f64),
        if waits.is_empty() {
            String::new()
        } else {
            format!(", blocked in {}", waits.join(", "))
        },
        traffic.new_per_second,
        thousands(traffic.close_wait.into()),
        thousands(traffic.accept_queue.into()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comm(name: &str) -> [u8; 16] {
        let mut comm = [0u8; 16];
        comm[..name.len()].copy_from_slice(name.as_bytes());
        comm
    }

    fn new(tid: u32, name: &str) -> TaskEvent {
        TaskEvent {
            kind: TASK_NEW,
            target: 0,
            tid,
            comm: comm(name),
        }
    }

    fn alerts(events: &[Event]) -> Vec<(AlertKind, bool)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Alert { kind, .. } => Some((*kind, true)),
                Event::AlertResolved { kind, .. } => Some((*kind, false)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn names_group_without_their_numbers() {
        assert_eq!(group_of("GC Thread#3"), "GC Thread");
        assert_eq!(group_of("kafka-request-h"), "kafka-request-h");
        assert_eq!(group_of("kafka-producer-"), "kafka-producer");
        assert_eq!(group_of("pool-1-thread-12"), "pool-1-thread");
        assert_eq!(group_of("42"), "42");
        assert_eq!(group_of("java"), "java");
    }

    #[test]
    fn a_growing_group_raises_thread_leak_once_and_renames_move_threads() {
        let thresholds = ThreadThresholds {
            leak_min: 10,
            ..ThreadThresholds::default()
        };
        let mut model = ThreadModel::new(1, thresholds, 0.0);
        let mut out = Vec::new();
        model.record(&new(1, "java"));
        for tick in 0..30u32 {
            // Created under the creator's name, then renamed, as the JVM does.
            model.record(&new(100 + tick, "app-sender"));
            model.record(&TaskEvent {
                kind: TASK_RENAME,
                target: 0,
                tid: 100 + tick,
                comm: comm("kafka-producer-"),
            });
            let t = f64::from(tick);
            model.tick((t, 0), &[], Traffic::default(), (0, 0), &mut out);
        }
        assert_eq!(alerts(&out), vec![(AlertKind::ThreadLeak, true)]);
        let status = model.status();
        assert_eq!(status.count, 31);
        assert_eq!(status.groups[0].name, "kafka-producer");
        assert_eq!(status.groups[0].threads, 30);
        // They exit: the leak resolves.
        out.clear();
        for tid in 100..130 {
            model.record(&TaskEvent {
                kind: TASK_EXIT,
                target: 0,
                tid,
                comm: [0; 16],
            });
        }
        model.tick((30.0, 0), &[], Traffic::default(), (0, 0), &mut out);
        assert_eq!(model.count(), 1);
        assert!(
            alerts(&out).is_empty(),
            "the group is gone with its threads"
        );
    }

    /// Accounts of two threads of `group` at `t`: `busy` of each second spent not asleep.
    fn accounts(t: f64, busy: f64) -> Vec<(u32, ThreadSched)> {
        (1..=2)
            .map(|tid| {
                (
                    tid,
                    ThreadSched {
                        on_cpu_ns: (t * busy * 1e9) as u64,
                        asleep_ns: (t * (1.0 - busy) * 1e9) as u64,
                        since_ns: (t * 1e9) as u64,
                        state: tracer_common::task::RUNNING,
                        ..ThreadSched::default()
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_group_busy_all_window_is_saturated_and_clears_when_idle() {
        let mut model = ThreadModel::new(1, ThreadThresholds::default(), 0.0);
        model.record(&new(1, "kafka-network-t"));
        model.record(&new(2, "kafka-network-t"));
        let mut out = Vec::new();
        for s in 1..=40 {
            let t = f64::from(s);
            model.tick(
                (t, 0),
                &accounts(t, 0.97),
                Traffic::default(),
                (0, 0),
                &mut out,
            );
        }
        assert_eq!(alerts(&out), vec![(AlertKind::ThreadsSaturated, true)]);
        let group = &model.status().groups[0];
        assert_eq!(group.name, "kafka-network-t");
        assert!(
            (group.idle_ratio.unwrap() - 0.03).abs() < 0.005,
            "{group:?}"
        );
        // Idle from now on: asleep the whole time since the last switch.
        out.clear();
        for s in 41..=80 {
            let t = f64::from(s);
            let mut idle = accounts(40.0, 0.97);
            for (_, a) in &mut idle {
                a.state = ASLEEP;
            }
            model.tick((t, 0), &idle, Traffic::default(), (0, 0), &mut out);
        }
        assert_eq!(alerts(&out), vec![(AlertKind::ThreadsSaturated, false)]);
    }

    #[test]
    fn request_threads_asleep_while_connections_arrive_is_a_stall() {
        let mut model = ThreadModel::new(1, ThreadThresholds::default(), 0.0);
        for tid in 1..=4 {
            model.record(&new(tid, "kafka-request-h"));
        }
        model.record(&new(9, "kafka-socket-ac"));
        let asleep_since_attach: Vec<(u32, ThreadSched)> = Vec::new();
        let mut out = Vec::new();
        // No traffic: threads asleep for long is just an idle server.
        for s in 1..=20 {
            let t = f64::from(s);
            model.tick(
                (t, 0),
                &asleep_since_attach,
                Traffic::default(),
                (0, 0),
                &mut out,
            );
        }
        assert!(alerts(&out).is_empty());
        let traffic = Traffic {
            new_per_second: 3.0,
            close_wait: 12,
            accept_queue: 0,
        };
        model.tick((21.0, 0), &asleep_since_attach, traffic, (0, 0), &mut out);
        assert_eq!(alerts(&out), vec![(AlertKind::Stall, true)]);
        let Some(Event::Alert {
            message,
            detail: AlertDetail::Stall { threads, hint, .. },
            ..
        }) = out.iter().find(|e| matches!(e, Event::Alert { .. }))
        else {
            panic!("{out:?}")
        };
        assert_eq!(threads.len(), 4);
        assert_eq!(threads[0].blocked_seconds, 21);
        assert!(
            message.contains("4 of 4 kafka-request-h threads have not run for 21s"),
            "{message}"
        );
        assert_eq!(hint, "jstack 1 (or jcmd 1 Thread.print)");
    }
}
