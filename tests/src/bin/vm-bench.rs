//! vm-bench: the cost side of the kernel matrix (`cargo xtask bench`), run inside a guest
//! whose clock counts instructions (qemu `-icount`), so that a ratio with and without tracer
//! repeats whatever the host does. Prints one line per loop, which the host turns into a table:
//!
//! ```text
//! vm-bench <loop> | <untraced per second> | <with tracer per second, or why there is none>
//! vm-run-time <program> | <target or others> | <ns per hit> | <empty program's ns per hit> | <hits per iteration>
//! vm-bench done
//! ```
//!
//! Usage: `vm-bench WORKLOADS SECONDS ROUNDS [run-time]` with `TRACER_BIN` naming the tracer. Loops
//! (tests/native/loops.c): `mm` and `tcp` watched by tracer themselves; `fault`, `mm` and
//! `null` in an unrelated process placed in a cgroup as deep as a Kubernetes pod's
//! container, while tracer watches another process. Medians of ROUNDS runs of SECONDS per
//! side, the sides taking turns after a warm-up run of each.
//!
//! Then, with `run-time`, table (d) of BENCHMARKS.md on this kernel: with `kernel.bpf_stats_enabled`, each
//! program's run time per hit over SECONDS of the loop that drives it, watched (target hits)
//! and beside a watched idle process (others' hits), and that of an empty program (`r0 = 0;
//! exit`) of the same type on the same hook over the same hits: the floor of the statistics'
//! own clock reads, which the host less from the program's to give its body.

use std::{
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use tracer_tests::{
    Process, Tracer,
    bpf::{Empty, Hook, Stats, program_stats},
};

/// A container's cgroup on a Kubernetes node (cgroup v2, systemd driver): the depth at which
/// 6.1's and 6.12's `mmap_lock` events build the memory cgroup's path for every event.
const POD_CGROUP: &str =
    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-1.scope";
const ATTACH_TIMEOUT: Duration = Duration::from_mins(2);
/// `kernel.bpf_stats_enabled` (5.1+): run_time_ns and run_cnt of every program.
const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// A row of table (d): tracer's programs whose kernel names (15 characters at most) start with
/// one of `programs`, summed, against empty programs on their hooks.
struct Row {
    label: &'static str,
    programs: &'static [&'static str],
    hooks: &'static [Hook],
}

/// The loops (tests/native/loops.c) that drive each program, and the rows they measure.
/// `syscall_fentry`'s 20 programs share one body: the three the `mm` loop calls stand for all.
const RUN_TIME: [(&str, &[Row]); 3] = [
    (
        "mm",
        &[Row {
            label: "syscall_fentry (tracer_fe_mmap, _mprotect, _munmap)",
            programs: &["tracer_fe_mmap", "tracer_fe_mprot", "tracer_fe_munma"],
            hooks: &[
                Hook::Fentry("__x64_sys_mmap"),
                Hook::Fentry("__x64_sys_mprotect"),
                Hook::Fentry("__x64_sys_munmap"),
            ],
        }],
    ),
    (
        "tcp",
        &[
            Row {
                label: "tracer_tcpstate",
                programs: &["tracer_tcpstate"],
                hooks: &[Hook::RawTracepoint("inet_sock_set_state")],
            },
            Row {
                label: "tracer_switch",
                programs: &["tracer_switch"],
                hooks: &[Hook::RawTracepoint("sched_switch")],
            },
        ],
    ),
    (
        "spawn",
        &[
            Row {
                label: "tracer_newtask",
                programs: &["tracer_newtask"],
                hooks: &[Hook::RawTracepoint("task_newtask")],
            },
            Row {
                label: "tracer_rename",
                programs: &["tracer_rename"],
                hooks: &[Hook::RawTracepoint("task_rename")],
            },
            Row {
                label: "tracer_taskexit",
                programs: &["tracer_taskexit"],
                hooks: &[Hook::RawTracepoint("sched_process_exit")],
            },
        ],
    ),
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (workloads, seconds, rounds, run_time) = match args.as_slice() {
        [w, s, r] => (w, s, r, false),
        [w, s, r, flag] if flag == "run-time" => (w, s, r, true),
        _ => {
            eprintln!(
                "usage: vm-bench WORKLOADS SECONDS ROUNDS [run-time]   (TRACER_BIN names the tracer)"
            );
            std::process::exit(2);
        }
    };
    let bench = Bench {
        loops: Path::new(workloads).join("loops"),
        seconds: seconds.clone(),
        rounds: rounds.parse().expect("ROUNDS is a number"),
        cgroup: pod_cgroup(),
    };
    for (name, mode, watched) in [
        ("watched mm", "mm", true),
        ("watched tcp", "tcp", true),
        ("others' page faults (pod cgroup)", "fault", false),
        ("others' mm (pod cgroup)", "mm", false),
        ("others' getppid (pod cgroup)", "null", false),
    ] {
        let (untraced, traced) = bench.medians(mode, watched);
        let text = |rate: Result<f64, String>| rate.map_or_else(|why| why, |r| format!("{r:.0}"));
        println!("vm-bench {name} | {} | {}", text(untraced), text(traced));
    }
    if run_time {
        bench.run_time();
    }
    println!("vm-bench done");
}

impl Bench {
    /// Table (d): every row of [`RUN_TIME`], target and others' hits.
    fn run_time(&self) {
        // Before 5.11 the kernel charges BPF programs to RLIMIT_MEMLOCK (64 KiB in the guest).
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: setrlimit reads the struct, which lives across the call.
        assert_eq!(
            unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const unlimited) },
            0
        );
        std::fs::write(STATS, "1").expect("enable bpf_stats");
        for (mode, rows) in RUN_TIME {
            let [target, others] = [true, false].map(|watched| self.run_times(mode, watched, rows));
            for (row, hits) in rows.iter().zip(target).chain(rows.iter().zip(others)) {
                println!("vm-run-time {} | {} | {}", row.label, hits.0, hits.1);
            }
        }
        std::fs::write(STATS, "0").expect("disable bpf_stats");
    }
}

struct Bench {
    loops: PathBuf,
    seconds: String,
    rounds: usize,
    cgroup: PathBuf,
}

impl Bench {
    /// The median rates of `mode` without and with tracer, which watches the loop itself
    /// (`watched`) or an idle process beside it. The sides take turns, after one discarded
    /// run of each, so that what the guest kernel warms up over time (caches, the maple
    /// tree's nodes) favours neither.
    fn medians(&self, mode: &str, watched: bool) -> (Result<f64, String>, Result<f64, String>) {
        let mut without = Vec::new();
        let mut with = Vec::new();
        for round in 0..=self.rounds {
            let bare = self.once(mode, watched, false);
            let traced = self.once(mode, watched, true);
            let failed = traced.is_err();
            if round > 0 || failed {
                without.push(bare);
                with.push(traced);
            }
            if failed {
                break;
            }
        }
        (median(without), median(with))
    }

    fn once(&self, mode: &str, watched: bool, traced: bool) -> Result<f64, String> {
        let mut looping = Process::spawn(Command::new(&self.loops).args([mode, &self.seconds]));
        looping.expect_line("READY", Duration::from_secs(30));
        let idle = (!watched).then(|| {
            let idle = Process::spawn(Command::new(&self.loops).args(["idle", "3600"]));
            idle.expect_line("READY", Duration::from_secs(30));
            std::fs::write(self.cgroup.join("cgroup.procs"), looping.pid.to_string())
                .expect("move the loop into the pod cgroup");
            idle
        });
        let session = if traced {
            let target = idle.as_ref().map_or(looping.pid, |idle| idle.pid);
            Some(attach(target)?)
        } else {
            None
        };
        looping.send("GO");
        let (_, result) = looping.expect_line("RESULT", Duration::from_mins(10));
        drop(session);
        drop(idle);
        rate_of(&result)
    }
}

/// The rate of a loop's RESULT line.
fn rate_of(result: &str) -> Result<f64, String> {
    result
        .split_whitespace()
        .find_map(|field| field.strip_prefix("rate="))
        .and_then(|rate| rate.parse().ok())
        .ok_or_else(|| format!("no rate in {result:?}"))
}

impl Bench {
    /// One run of `mode` for SECONDS with tracer watching it (`watched`) or an idle process
    /// beside it, and empty programs on the rows' hooks: per row, the line's fields after
    /// the row's label (`target` or `others`, then the figures), or why there are none.
    fn run_times(&self, mode: &str, watched: bool, rows: &[Row]) -> Vec<(String, String)> {
        let side = if watched { "target" } else { "others" };
        let seconds: f64 = self.seconds.parse().expect("SECONDS is a number");
        let mut looping =
            Process::spawn(Command::new(&self.loops).args([mode, &(seconds + 1.0).to_string()]));
        looping.expect_line("READY", Duration::from_secs(30));
        let idle = (!watched).then(|| {
            let idle = Process::spawn(Command::new(&self.loops).args(["idle", "3600"]));
            idle.expect_line("READY", Duration::from_secs(30));
            idle
        });
        let Ok(tracer) = attach(idle.as_ref().map_or(looping.pid, |idle| idle.pid)) else {
            return rows
                .iter()
                .map(|_| (side.to_owned(), "tracer did not attach".to_owned()))
                .collect();
        };
        let empties: Vec<Vec<Empty>> = rows
            .iter()
            .map(|row| row.hooks.iter().map(|&hook| Empty::attach(hook)).collect())
            .collect();
        looping.send("GO");
        thread::sleep(Duration::from_millis(200));
        let (before, started) = (program_stats(), Instant::now());
        thread::sleep(Duration::from_secs_f64(seconds));
        let (after, sampled) = (program_stats(), started.elapsed().as_secs_f64());
        let (_, result) = looping.expect_line("RESULT", Duration::from_mins(10));
        drop(tracer);
        let rate = rate_of(&result).unwrap_or(f64::NAN);
        rows.iter()
            .zip(&empties)
            .map(|(row, empties)| {
                let ours = |stats: &[Stats]| {
                    sum(stats.iter().filter(|s| {
                        s.name.starts_with("tracer_")
                            && row.programs.iter().any(|p| s.name.starts_with(p))
                    }))
                };
                let theirs = |stats: &[Stats]| {
                    sum(stats
                        .iter()
                        .filter(|s| empties.iter().any(|e| e.id == s.id)))
                };
                let (time, runs) = difference(ours(&before), ours(&after));
                let (empty_time, empty_runs) = difference(theirs(&before), theirs(&after));
                let figures = format!(
                    "{:.1} | {:.1} | {:.3}",
                    time / runs,
                    empty_time / empty_runs,
                    runs / sampled / rate
                );
                (side.to_owned(), figures)
            })
            .collect()
    }
}

/// Run time and runs, summed.
fn sum<'a>(stats: impl Iterator<Item = &'a Stats>) -> (u64, u64) {
    stats.fold((0, 0), |(time, runs), s| {
        (time + s.run_time_ns, runs + s.run_cnt)
    })
}

/// Run time (ns) and runs between two sums, as floats for division (at least one run).
fn difference(before: (u64, u64), after: (u64, u64)) -> (f64, f64) {
    (
        (after.0 - before.0) as f64,
        (after.1 - before.1).max(1) as f64,
    )
}

fn median(rates: Vec<Result<f64, String>>) -> Result<f64, String> {
    let mut rates = rates.into_iter().collect::<Result<Vec<f64>, String>>()?;
    rates.sort_by(f64::total_cmp);
    Ok(rates[rates.len() / 2])
}

/// tracer attached to `pid`, or tracer's failure as text.
fn attach(pid: u32) -> Result<Tracer, String> {
    std::panic::catch_unwind(|| Tracer::attach_within(pid, &[], ATTACH_TIMEOUT))
        .map_err(|_| "tracer did not attach".to_owned())
}

/// Creates the pod-deep cgroup with the memory controller enabled on the way down.
fn pod_cgroup() -> PathBuf {
    let mut dir = PathBuf::from("/sys/fs/cgroup");
    for part in POD_CGROUP.split('/') {
        std::fs::write(dir.join("cgroup.subtree_control"), "+memory")
            .unwrap_or_else(|e| panic!("enable memory in {}: {e}", dir.display()));
        dir.push(part);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    }
    dir
}
