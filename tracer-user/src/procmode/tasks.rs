//! The target's threads from samples of /proc/PID/task: births, renames and exits become the
//! records the thread model takes from the kernel, and each thread's time on and off a CPU
//! becomes the account the kernel would keep (`ThreadSched`), so the same model judges idle
//! ratios, saturation and stalls.
//!
//! Per thread, `stat` gives the name and the state (R running; S, D and the rest asleep) and
//! `schedstat` (present when the kernel has `CONFIG_SCHED_INFO`, as distribution kernels do)
//! gives nanoseconds on a CPU, nanoseconds waiting for one, and the number of runs. Between two
//! samples a thread slept for the wall time less both; without `schedstat`, CPU time comes
//! from `stat` (clock ticks) and the wait for a CPU counts as sleep. A thread that has not run
//! since a sample (same run count, asleep) has been blocked since at least that sample: a
//! stall is seen one interval late at most, and a run shorter than the interval is not missed
//! (the run count moves).

use std::{collections::HashMap, io};

use super::steal::StealClock;
use crate::target::stat_fields;
use tracer_common::task::{
    ASLEEP, RUNNING, TASK_EXIT, TASK_NEW, TASK_RENAME, TaskEvent, ThreadSched,
};

/// One thread's reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    pub comm: [u8; 16],
    pub running: bool,
    pub cpu_ns: u64,
    pub wait_ns: u64,
    /// Runs on a CPU so far; `None` without `schedstat`.
    pub runs: Option<u64>,
}

/// What is kept of a thread between samples.
#[derive(Clone, Copy, Debug)]
struct Kept {
    reading: Reading,
    at_ns: u64,
    /// Estimated sleep since first seen.
    asleep_ns: u64,
    /// The last sample at which it had run since the one before (or was running).
    ran_at_ns: u64,
}

/// Turns samples of /proc/PID/task into thread records and accounts.
pub struct TaskSampler {
    pid: u32,
    kept: HashMap<u32, Kept>,
    /// Nanoseconds per clock tick of `stat`'s CPU times.
    tick_ns: u64,
    /// CPU time falls short of the time held on a CPU by what the hypervisor stole.
    steal: StealClock,
}

impl TaskSampler {
    pub fn new(pid: u32) -> Self {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Self {
            pid,
            kept: HashMap::new(),
            tick_ns: 1_000_000_000 / u64::try_from(hz).unwrap_or(100).max(1),
            steal: StealClock::default(),
        }
    }

    /// Reads every thread at `now_ns` (CLOCK_MONOTONIC); appends the births, renames and exits
    /// since the previous sample to `events` and every live thread's account to `accounts`.
    pub fn sample(
        &mut self,
        now_ns: u64,
        events: &mut Vec<TaskEvent>,
        accounts: &mut Vec<(u32, ThreadSched)>,
    ) -> io::Result<()> {
        let mut readings = Vec::new();
        for entry in std::fs::read_dir(format!("/proc/{}/task", self.pid))? {
            let Some(tid) = entry?.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            // A thread that exits between the listing and its files is gone.
            if let Some(reading) = self.read(tid) {
                readings.push((tid, reading));
            }
        }
        let stolen = self.steal.factor();
        self.update(now_ns, stolen, &readings, events, accounts);
        Ok(())
    }

    fn read(&self, tid: u32) -> Option<Reading> {
        let base = format!("/proc/{}/task/{tid}", self.pid);
        let stat = std::fs::read(format!("{base}/stat")).ok()?;
        let schedstat = std::fs::read_to_string(format!("{base}/schedstat")).ok();
        parse(&stat, schedstat.as_deref(), self.tick_ns)
    }

    /// Folds one sample's readings in (the pure part of [`Self::sample`]); CPU time since the
    /// previous sample is multiplied by `stolen` (see `StealClock::factor`).
    fn update(
        &mut self,
        now_ns: u64,
        stolen: f64,
        readings: &[(u32, Reading)],
        events: &mut Vec<TaskEvent>,
        accounts: &mut Vec<(u32, ThreadSched)>,
    ) {
        let mut gone = std::mem::take(&mut self.kept);
        for &(tid, reading) in readings {
            let kept = if let Some(before) = gone.remove(&tid) {
                if before.reading.comm != reading.comm {
                    events.push(task_event(TASK_RENAME, tid, reading.comm));
                }
                let ran = reading.running
                    || reading.cpu_ns != before.reading.cpu_ns
                    || reading.runs != before.reading.runs;
                let cpu = reading.cpu_ns.saturating_sub(before.reading.cpu_ns) as f64 * stolen;
                let busy = cpu as u64 + reading.wait_ns.saturating_sub(before.reading.wait_ns);
                Kept {
                    reading,
                    at_ns: now_ns,
                    asleep_ns: before.asleep_ns
                        + now_ns.saturating_sub(before.at_ns).saturating_sub(busy),
                    ran_at_ns: if ran { now_ns } else { before.ran_at_ns },
                }
            } else {
                events.push(task_event(TASK_NEW, tid, reading.comm));
                Kept {
                    reading,
                    at_ns: now_ns,
                    asleep_ns: 0,
                    ran_at_ns: now_ns,
                }
            };
            accounts.push((tid, account(&kept, now_ns)));
            self.kept.insert(tid, kept);
        }
        for tid in gone.into_keys() {
            events.push(task_event(TASK_EXIT, tid, [0; 16]));
        }
    }
}

/// The account the kernel would keep: a thread asleep now has been since it last ran, and
/// the model adds that sleep in progress itself.
fn account(kept: &Kept, now_ns: u64) -> ThreadSched {
    if kept.reading.running {
        ThreadSched {
            on_cpu_ns: kept.reading.cpu_ns,
            asleep_ns: kept.asleep_ns,
            since_ns: now_ns,
            state: RUNNING,
            ..ThreadSched::default()
        }
    } else {
        ThreadSched {
            on_cpu_ns: kept.reading.cpu_ns,
            asleep_ns: kept
                .asleep_ns
                .saturating_sub(now_ns.saturating_sub(kept.ran_at_ns)),
            since_ns: kept.ran_at_ns,
            state: ASLEEP,
            ..ThreadSched::default()
        }
    }
}

fn task_event(kind: u16, tid: u32, comm: [u8; 16]) -> TaskEvent {
    TaskEvent {
        kind,
        target: 0,
        tid,
        comm,
    }
}

/// Parses a thread's `stat` (`tid (comm) S ... utime stime ...`; the name may hold spaces and
/// parentheses, so it ends at the last `)`) and `schedstat` (`cpu_ns wait_ns runs`). `None`
/// for a thread that is a zombie or dead, or text that does not parse.
pub fn parse(stat: &[u8], schedstat: Option<&str>, tick_ns: u64) -> Option<Reading> {
    let open = stat.iter().position(|&b| b == b'(')?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    let name = stat.get(open + 1..close)?;
    let mut comm = [0u8; 16];
    let n = name.len().min(15);
    comm[..n].copy_from_slice(&name[..n]);
    let stat = String::from_utf8_lossy(stat);
    // Fields after the name: 3 state, ... 14 utime, 15 stime (proc_pid_stat(5)).
    let fields: Vec<&str> = stat_fields(&stat)?.collect();
    let state = *fields.first()?.as_bytes().first()?;
    if matches!(state, b'Z' | b'X') {
        return None;
    }
    let (cpu_ns, wait_ns, runs) = match schedstat.map(|s| {
        s.split_ascii_whitespace()
            .map(str::parse::<u64>)
            .collect::<Result<Vec<_>, _>>()
    }) {
        Some(Ok(v)) if v.len() >= 3 => (v[0], v[1], Some(v[2])),
        _ => {
            let ticks: u64 =
                fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            (ticks * tick_ns, 0, None)
        }
    };
    Some(Reading {
        comm,
        running: state == b'R',
        cpu_ns,
        wait_ns,
        runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn stat(name: &str, state: char) -> Vec<u8> {
        format!("4242 ({name}) {state} 1 4242 4242 0 -1 4194624 100 0 0 0 250 50 0 0 20 0 31 0 1000 1 1 1")
            .into_bytes()
    }

    fn reading(name: &str, running: bool, cpu_ns: u64, runs: u64) -> Reading {
        let mut comm = [0u8; 16];
        comm[..name.len()].copy_from_slice(name.as_bytes());
        Reading {
            comm,
            running,
            cpu_ns,
            wait_ns: 0,
            runs: Some(runs),
        }
    }

    #[test]
    fn parses_stat_and_schedstat() {
        let r = parse(
            &stat("kafka-request-h", 'S'),
            Some("123456 789 42\n"),
            10_000_000,
        )
        .unwrap();
        assert_eq!(&r.comm[..15], b"kafka-request-h");
        assert!(!r.running);
        assert_eq!((r.cpu_ns, r.wait_ns, r.runs), (123_456, 789, Some(42)));
        // Without schedstat: utime + stime ticks.
        let r = parse(&stat("a) (b", 'R'), None, 10_000_000).unwrap();
        assert_eq!(&r.comm[..5], b"a) (b");
        assert!(r.running);
        assert_eq!((r.cpu_ns, r.runs), (300 * 10_000_000, None));
        assert_eq!(parse(&stat("gone", 'Z'), None, 1), None);
        assert_eq!(parse(b"garbage", None, 1), None);
    }

    #[test]
    fn births_renames_exits() {
        let mut sampler = TaskSampler::new(1);
        let (mut events, mut accounts) = (Vec::new(), Vec::new());
        sampler.update(
            0,
            1.0,
            &[
                (1, reading("java", false, 0, 1)),
                (2, reading("java", false, 0, 1)),
            ],
            &mut events,
            &mut accounts,
        );
        assert_eq!(events.iter().filter(|e| e.kind == TASK_NEW).count(), 2);
        events.clear();
        sampler.update(
            SEC,
            1.0,
            &[
                (1, reading("java", false, 0, 1)),
                (2, reading("GC Thread#0", false, 0, 1)),
            ],
            &mut events,
            &mut accounts,
        );
        assert_eq!(
            events,
            vec![task_event(
                TASK_RENAME,
                2,
                reading("GC Thread#0", false, 0, 1).comm
            )]
        );
        events.clear();
        sampler.update(
            2 * SEC,
            1.0,
            &[(2, reading("GC Thread#0", false, 0, 1))],
            &mut events,
            &mut accounts,
        );
        assert_eq!(events, vec![task_event(TASK_EXIT, 1, [0; 16])]);
    }

    #[test]
    fn a_blocked_thread_is_asleep_since_it_last_ran() {
        let mut sampler = TaskSampler::new(1);
        let (mut events, mut accounts) = (Vec::new(), Vec::new());
        // Runs a quarter of the first two seconds, then never again.
        sampler.update(
            0,
            1.0,
            &[(7, reading("handler", false, 0, 10))],
            &mut events,
            &mut accounts,
        );
        sampler.update(
            SEC,
            1.0,
            &[(7, reading("handler", false, SEC / 4, 20))],
            &mut events,
            &mut accounts,
        );
        sampler.update(
            2 * SEC,
            1.0,
            &[(7, reading("handler", false, SEC / 2, 30))],
            &mut events,
            &mut accounts,
        );
        accounts.clear();
        for s in 3..=12 {
            accounts.clear();
            sampler.update(
                s * SEC,
                1.0,
                &[(7, reading("handler", false, SEC / 2, 30))],
                &mut events,
                &mut accounts,
            );
        }
        let (_, a) = accounts[0];
        assert_eq!(a.state, ASLEEP);
        assert_eq!(
            a.since_ns,
            2 * SEC,
            "blocked since the last sample it ran in"
        );
        // Asleep 1.5 s of the first two; the model adds the 10 s in progress.
        assert_eq!(a.asleep_ns, 3 * SEC / 2);
        assert_eq!(a.asleep_ns + (12 * SEC - a.since_ns), 23 * SEC / 2);

        // A busy thread: on a CPU the whole time, never asleep.
        let mut sampler = TaskSampler::new(1);
        accounts.clear();
        sampler.update(
            0,
            1.0,
            &[(8, reading("busy", true, 0, 1))],
            &mut events,
            &mut accounts,
        );
        accounts.clear();
        sampler.update(
            SEC,
            1.0,
            &[(8, reading("busy", true, SEC, 1))],
            &mut events,
            &mut accounts,
        );
        assert_eq!(accounts[0].1.state, RUNNING);
        assert_eq!(accounts[0].1.asleep_ns, 0);

        // On a host that stole a tenth of the machine's busy time, a thread that held its CPU
        // all along has 0.9 s of CPU time a second: still never asleep.
        let mut sampler = TaskSampler::new(1);
        for s in 0..=2 {
            accounts.clear();
            sampler.update(
                s * SEC,
                1.0 / 0.9,
                &[(9, reading("busy", false, s * SEC * 9 / 10, s + 1))],
                &mut events,
                &mut accounts,
            );
        }
        assert!(accounts[0].1.asleep_ns < SEC / 1000, "{:?}", accounts[0].1);
    }

    #[test]
    fn own_threads() {
        let mut sampler = TaskSampler::new(std::process::id());
        let (mut events, mut accounts) = (Vec::new(), Vec::new());
        sampler
            .sample(
                (crate::event::monotonic() * 1e9) as u64,
                &mut events,
                &mut accounts,
            )
            .unwrap();
        let live = std::fs::read_dir("/proc/self/task").unwrap().count();
        assert!(
            accounts.len().abs_diff(live) <= 2,
            "{} vs {live}",
            accounts.len()
        );
        assert!(accounts.iter().any(|&(tid, _)| tid == std::process::id()));
    }
}
