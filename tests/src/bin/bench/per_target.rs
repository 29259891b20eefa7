//! `bench --targets OUT.md`: what each target of `tracer agent` adds to the kernel's work per
//! event. The agent watches 1 or 4 processes at rest while loads that none of them is, one
//! after another, make the events every probe sees: TCP state changes, context switches,
//! thread lives, mmap-lock releases. With `kernel.bpf_stats_enabled`, the run counts and run
//! times of the agent's programs, summed over the programs of one name, divided by the hits of
//! an empty program the bench attaches to the same hook, say how many programs each event runs
//! and what they cost; the loads' rates say what that costs them. Written so that it measures
//! an agent with one loaded object per target and one with a single object for every target
//! alike.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use tracer_tests::{
    Netns, Process, Sysctl,
    bpf::{Empty, Hook, program_stats},
    free_port, http_get, program_ids, tracer_bin, wait_for_listener,
};

use super::{Bench, median};

/// The loads (tests/native/loops.c modes), none of them a target, run one after another: issue
/// 14's loop (TCP state changes), a thread's life (the task programs, context switches), and
/// mmap, mprotect, munmap (mmap-lock releases).
const LOADS: [&str; 3] = ["self", "spawn", "mm"];

/// Targets per side; 0 is the loads without the agent.
const SIDES: [usize; 3] = [0, 1, 4];

/// Interleaved rounds of the three sides, and each load's seconds in a round: about 90 s in
/// all.
const ROUNDS: usize = 5;
const SECONDS: f64 = 1.5;

/// tracer's programs that run on events, by full name, and their hooks: an empty program there
/// counts the events. The kernel keeps the first 15 bytes of a name.
const PROGRAMS: [(&str, Hook); 13] = [
    (
        "tracer_tcpstate",
        Hook::RawTracepoint("inet_sock_set_state"),
    ),
    ("tracer_switch", Hook::RawTracepoint("sched_switch")),
    ("tracer_newtask", Hook::RawTracepoint("task_newtask")),
    ("tracer_rename", Hook::RawTracepoint("task_rename")),
    ("tracer_taskexit", Hook::RawTracepoint("sched_process_exit")),
    ("tracer_exec", Hook::RawTracepoint("sched_process_exec")),
    ("tracer_oom", Hook::RawTracepoint("mark_victim")),
    ("tracer_mmaplock", Hook::RawTracepoint("mmap_lock_released")),
    ("tracer_sysexit", Hook::RawTracepoint("sys_exit")),
    ("tracer_fe_mmap", Hook::Fentry("__x64_sys_mmap")),
    ("tracer_fe_mprotect", Hook::Fentry("__x64_sys_mprotect")),
    ("tracer_fe_munmap", Hook::Fentry("__x64_sys_munmap")),
    ("tracer_fe_prctl", Hook::Fentry("__x64_sys_prctl")),
];

/// The place in PROGRAMS of the program the kernel calls `kernel_name`.
fn program_of(kernel_name: &str) -> Option<usize> {
    PROGRAMS
        .iter()
        .position(|(full, _)| full.get(..15).unwrap_or(full) == kernel_name)
}

fn hook_name(hook: Hook) -> &'static str {
    match hook {
        Hook::RawTracepoint(name) | Hook::Fentry(name) => name,
    }
}

/// The agent's programs of one name, summed over their copies.
#[derive(Clone, Copy, Default)]
struct Programs {
    copies: usize,
    run_time_ns: u64,
    runs: u64,
}

/// What the agent's programs (by the kernel's name) and the bench's empty programs (by their
/// place in PROGRAMS) have done so far.
#[derive(Default)]
struct Counts {
    programs: BTreeMap<String, Programs>,
    hits: BTreeMap<usize, u64>,
}

impl Counts {
    fn now(agent: &[u32], empties: &[(usize, Empty)]) -> Self {
        let mut counts = Self::default();
        for stats in program_stats() {
            if agent.contains(&stats.id) {
                let p = counts.programs.entry(stats.name).or_default();
                p.copies += 1;
                p.run_time_ns += stats.run_time_ns;
                p.runs += stats.run_cnt;
            } else if let Some((index, _)) = empties.iter().find(|(_, e)| e.id == stats.id) {
                counts.hits.insert(*index, stats.run_cnt);
            }
        }
        counts
    }

    /// What happened since `before`.
    fn since(self, before: &Self) -> Self {
        let programs = self
            .programs
            .into_iter()
            .map(|(name, p)| {
                let b = before.programs.get(&name).copied().unwrap_or_default();
                let delta = Programs {
                    copies: p.copies,
                    run_time_ns: p.run_time_ns - b.run_time_ns,
                    runs: p.runs - b.runs,
                };
                (name, delta)
            })
            .collect();
        let hits = self
            .hits
            .into_iter()
            .map(|(index, hits)| (index, hits - before.hits.get(&index).copied().unwrap_or(0)))
            .collect();
        Self { programs, hits }
    }
}

/// One load's run beside one side.
struct Window {
    rate: f64,
    seconds: f64,
    counts: Counts,
}

/// The loads' runs of one round and side, in LOADS' order.
type Run = [Window; LOADS.len()];

/// Of one program name (or "", every program) on one side, a value per round.
#[derive(Default)]
struct Rounds {
    copies: Vec<f64>,
    /// Hits of the program's hook per second of the loads (where it has one).
    hits_per_second: Vec<f64>,
    /// Per hit of its hook, or per second where it has none (or no hits).
    runs_per_event: Vec<f64>,
    ns_per_event: Vec<f64>,
}

/// By program name, the agent with 1 target and with 4.
type Rows = BTreeMap<String, [Rounds; 2]>;

pub fn cost(bench: &Bench, md: &mut String) {
    let started = Instant::now();
    let load_before = load_average();
    let stats = Sysctl::set("kernel.bpf_stats_enabled", "1");
    let targets: Vec<Process> = (0..4).map(|_| bench.idle()).collect();
    let pids: Vec<u32> = targets.iter().map(|t| t.pid).collect();
    // An empty program on the hook of every program of tracer's that the agent loads, for
    // every side alike.
    let loaded = {
        let (agent, ids) = agent(&pids[..1]);
        let names = Counts::now(&ids, &[]).programs;
        drop(agent);
        names
    };
    let empties: Vec<(usize, Empty)> = (0..PROGRAMS.len())
        .filter(|&index| loaded.keys().any(|name| program_of(name) == Some(index)))
        .map(|index| (index, Empty::attach(PROGRAMS[index].1)))
        .collect();
    let mut rates: [Vec<[f64; LOADS.len()]>; SIDES.len()] = Default::default();
    let mut rows = Rows::new();
    for round in 0..ROUNDS {
        for offset in 0..SIDES.len() {
            let index = (round + offset) % SIDES.len();
            let run = sample(bench, &pids[..SIDES[index]], &empties);
            rates[index].push(std::array::from_fn(|load| run[load].rate));
            if index > 0 {
                add_round(&mut rows, index - 1, &run);
            }
        }
    }
    drop((empties, targets, stats));
    let rates: [[f64; LOADS.len()]; SIDES.len()] = rates.map(|runs| {
        std::array::from_fn(|load| median(&mut runs.iter().map(|r| r[load]).collect::<Vec<_>>()))
    });
    write(md, &rows, &rates);
    let _ = writeln!(
        md,
        "\nLoad average before and after: {load_before} and {}; the run took {:.0} s.",
        load_average(),
        started.elapsed().as_secs_f64()
    );
}

/// Folds one run of the agent with `side`'s targets into the rows: each program's runs and run
/// time over the three loads, per hit of its hook (per second where it has none of its own).
/// The row named "" sums every program, per second.
fn add_round(rows: &mut Rows, side: usize, run: &Run) {
    let names: BTreeSet<&String> = run.iter().flat_map(|w| w.counts.programs.keys()).collect();
    let seconds: f64 = run.iter().map(|w| w.seconds).sum();
    for name in names {
        let rounds = &mut rows.entry(name.clone()).or_default()[side];
        let hits: f64 = program_of(name).map_or(0.0, |index| {
            run.iter()
                .map(|w| w.counts.hits.get(&index).copied().unwrap_or(0) as f64)
                .sum()
        });
        if hits > 0.0 {
            rounds.hits_per_second.push(hits / seconds);
        }
        let per = if hits > 0.0 { hits } else { seconds };
        let of = |w: &Window| w.counts.programs.get(name).copied().unwrap_or_default();
        let copies = run.iter().map(|w| of(w).copies).max().unwrap_or(0);
        rounds.copies.push(copies as f64);
        let runs: u64 = run.iter().map(|w| of(w).runs).sum();
        rounds.runs_per_event.push(runs as f64 / per);
        let time: u64 = run.iter().map(|w| of(w).run_time_ns).sum();
        rounds.ns_per_event.push(time as f64 / per);
    }
    let all = || run.iter().flat_map(|w| w.counts.programs.values());
    let rounds = &mut rows.entry(String::new()).or_default()[side];
    let copies: usize = run[0].counts.programs.values().map(|p| p.copies).sum();
    rounds.copies.push(copies as f64);
    let runs: u64 = all().map(|p| p.runs).sum();
    rounds.runs_per_event.push(runs as f64 / seconds);
    let time: u64 = all().map(|p| p.run_time_ns).sum();
    rounds.ns_per_event.push(time as f64 / seconds);
}

/// Each load in turn for SECONDS, beside an agent watching `targets` (none: no agent).
fn sample(bench: &Bench, targets: &[u32], empties: &[(usize, Empty)]) -> Run {
    // Its own network namespace per run, for the self loop's TIME_WAIT sockets.
    let netns = Netns::new("bench");
    let loads: [Process; LOADS.len()] = LOADS.map(|mode| {
        let mut command = if mode == "self" {
            netns.exec(&bench.loops)
        } else {
            Command::new(&bench.loops)
        };
        let load = Process::spawn(command.args([mode, &SECONDS.to_string()]));
        load.expect_line("READY", Duration::from_secs(5));
        load
    });
    let agent = (!targets.is_empty()).then(|| agent(targets));
    let ids = agent.as_ref().map_or(Vec::new(), |(_, ids)| ids.clone());
    let run = loads.map(|mut load| {
        let (before, started) = (Counts::now(&ids, empties), Instant::now());
        load.send("GO");
        let (_, result) = load.expect_line("RESULT", Duration::from_mins(1));
        let counts = Counts::now(&ids, empties).since(&before);
        Window {
            rate: super::rate_of(&result),
            seconds: started.elapsed().as_secs_f64(),
            counts,
        }
    });
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
            .unwrap_or_default()
            .trim(),
        "1",
        "something else turned kernel.bpf_stats_enabled off during the run: run again"
    );
    run
}

/// `tracer agent --quiet` watching `targets`, once it says it is attached to all of them, and
/// the ids of its programs.
fn agent(targets: &[u32]) -> (Process, Vec<u32>) {
    let port = free_port();
    let mut command = Command::new(tracer_bin());
    command.args(["agent", "--quiet", "--listen", &format!("127.0.0.1:{port}")]);
    for pid in targets {
        command.args(["--pid", &pid.to_string()]);
    }
    let agent = Process::spawn(&mut command);
    wait_for_listener(port, "the agent");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attached = http_get(port, "/metrics")
            .lines()
            .find_map(|l| l.strip_prefix("tracer_targets "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        if attached == Some(targets.len() as f64) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent reports {attached:?} targets of {}",
            targets.len()
        );
        thread::sleep(Duration::from_millis(50));
    }
    // The last attach's probes settle.
    thread::sleep(Duration::from_millis(300));
    let ids = program_ids(agent.pid)
        .into_iter()
        .map(|id| u32::try_from(id).expect("a program id"))
        .collect();
    (agent, ids)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_owned()
}

fn write(md: &mut String, rows: &Rows, rates: &[[f64; LOADS.len()]; SIDES.len()]) {
    let version = Command::new(tracer_bin())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let _ = writeln!(
        md,
        "\n## Targets of `tracer agent`: kernel work per event with 1 and with 4 targets\n"
    );
    let _ = writeln!(
        md,
        "`tracer agent --quiet --pid A [--pid B --pid C --pid D]` watching 1 or 4 processes at rest (`loops idle`, which \
         maps and unmaps a page ten times a second), while three loads, none of them a target, run one after another \
         for {SECONDS} s each: `loops self` (issue 14's loop: connect to its own loopback listener, accept, close both; \
         in a network namespace of its own), `loops spawn` (a thread started, named with `prctl(PR_SET_NAME)` and joined \
         per iteration: the task programs, and context switches) and `loops mm` (mmap, mprotect, munmap: mmap-lock \
         releases). {ROUNDS} interleaved rounds of the loads without the agent, beside it with 1 target and with 4; \
         medians. With `kernel.bpf_stats_enabled=1` throughout, `run_cnt` and `run_time_ns` of the agent's programs \
         (found by the agent's fds), summed over the programs of one name (loaded: how many) and over the three loads, \
         per hit of the program's hook: the run count of an empty program (`r0 = 0; exit`) the bench keeps on the same \
         hook on every side. Every hit on the machine counts, the loads' and others'. `run_time_ns` includes the \
         statistics' own two clock reads per run (the empty program's run time, table (d): about 50 ns). Tracer: \
         `{version}` ({}).\n",
        tracer_bin().display()
    );
    program_table(md, rows);
    rate_table(md, rates);
    let _ = writeln!(
        md,
        "\nReproduce: `TRACER_BIN=$PWD/target/release/tracer target/release/bench --targets OUT.md` (as root, after \
         `cargo xtask build` and `cargo build --release -p tracer-tests --bins`)."
    );
}

/// Per program name: runs and run time per hit of its hook, with 1 and with 4 targets.
fn program_table(md: &mut String, rows: &Rows) {
    let m = |v: &[f64]| (!v.is_empty()).then(|| median(&mut v.to_vec()));
    let _ = writeln!(
        md,
        "| program | hook | hits/s: 1 target | 4 targets | loaded: 1 target | 4 targets | runs per hit: 1 target | 4 targets | 4 / 1 | run time per hit: 1 target | 4 targets | 4 / 1 |"
    );
    let _ = writeln!(
        md,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    let mut quiet = Vec::new();
    let mut ordered: Vec<(&String, Option<usize>)> =
        rows.keys().map(|name| (name, program_of(name))).collect();
    // The programs in PROGRAMS' order, then the others by name, then the sum.
    ordered.sort_by_key(|&(name, index)| {
        (
            name.is_empty(),
            index.unwrap_or(PROGRAMS.len()),
            name.clone(),
        )
    });
    let number =
        |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
    for (name, index) in ordered {
        let [one, four] = &rows[name];
        let copies = [one, four].map(|r| number(m(&r.copies), 0));
        let hits = [one, four].map(|r| m(&r.hits_per_second));
        let runs = [one, four].map(|r| m(&r.runs_per_event));
        let ns = [one, four].map(|r| m(&r.ns_per_event));
        let (label, hook) = match index {
            _ if name.is_empty() => (
                "all of the agent's programs".to_owned(),
                "per second of the loads".to_owned(),
            ),
            Some(index) if hits[0].is_some() => (
                format!("`{}`", PROGRAMS[index].0),
                format!("`{}`", hook_name(PROGRAMS[index].1)),
            ),
            _ => {
                quiet.push(format!(
                    "`{name}` ({} and {} loaded, {} and {} runs per second)",
                    copies[0],
                    copies[1],
                    number(runs[0], 1),
                    number(runs[1], 1)
                ));
                continue;
            }
        };
        let ratio = |[one, four]: [Option<f64>; 2]| match (one, four) {
            (Some(one), Some(four)) if one > 0.0 => format!("**{:.2}**", four / one),
            _ => "-".to_owned(),
        };
        let time = |v: Option<f64>| v.map_or("-".to_owned(), nanoseconds);
        // Runs per second in the sum's row.
        let digits = if name.is_empty() { 0 } else { 3 };
        let _ = writeln!(
            md,
            "| {label} | {hook} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            number(hits[0], 0),
            number(hits[1], 0),
            copies[0],
            copies[1],
            number(runs[0], digits),
            number(runs[1], digits),
            ratio(runs),
            time(ns[0]),
            time(ns[1]),
            ratio(ns)
        );
    }
    if !quiet.is_empty() {
        let _ = writeln!(
            md,
            "\nAlso loaded, run on demand or on events these loads do not make (1 target and 4): {}.",
            quiet.join(", ")
        );
    }
}

/// Iterations per second of each load on each side.
fn rate_table(md: &mut String, rates: &[[f64; LOADS.len()]; SIDES.len()]) {
    let _ = writeln!(
        md,
        "\nIterations per second of each load, medians of the same rounds (every side with the bench's empty programs):\n"
    );
    let _ = writeln!(
        md,
        "| load (not a target) | no agent | agent, 1 target | agent, 4 targets | 1 target / none | 4 targets / none | 4 targets / 1 target |"
    );
    let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- | --- |");
    for (load, mode) in LOADS.iter().enumerate() {
        let [none, one, four] = rates.map(|side| side[load]);
        let _ = writeln!(
            md,
            "| `{mode}` | {none:.0}/s | {one:.0}/s | {four:.0}/s | {:.3} | {:.3} | {:.3} |",
            one / none,
            four / none,
            four / one
        );
    }
}

/// A run time: ns below 10 us, us below 10 ms, ms above.
fn nanoseconds(ns: f64) -> String {
    if ns < 1e4 {
        format!("{ns:.1} ns")
    } else if ns < 1e7 {
        format!("{:.1} us", ns / 1e3)
    } else {
        format!("{:.1} ms", ns / 1e6)
    }
}
