//! vm-checks: the checks of the kernel matrix (`cargo xtask vm-test`), run inside each guest
//! and on this machine. Each compares what tracer reports with the running kernel's own view
//! and prints one line on stdout, which the host parses:
//!
//! ```text
//! vm-check plan starts unloaded vma sockets threads targets proc_mode
//! vm-check <name> ok: <what was compared>
//! vm-check <name> FAIL: <why, in the kernel's and tracer's words>
//! vm-check done
//! ```
//!
//! Usage: `vm-checks WORKLOADS [--exclusive]` with `TRACER_BIN` naming the tracer. WORKLOADS
//! is the directory of the tests/native programs. `--exclusive` says that nothing else loads
//! BPF here (a guest): after tracer exits, the kernel's programs and maps must be exactly the
//! ones loaded before it started. Exits 1 if any check failed.

use std::{
    collections::{BTreeMap, BTreeSet},
    panic::{self, AssertUnwindSafe},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use tracer_tests::{
    Event, Process, Tracer, children, free_port, maps_count, port_of, proc_status, proc_tcp_states,
    tracer_bin,
};

const PLAN: &[&str] = &[
    "starts",
    "unloaded",
    "vma",
    "sockets",
    "threads",
    "targets",
    "proc_mode",
    "pod",
];

/// How long tracer may take to verify and attach its programs: an emulated CPU runs the
/// verifier tens of times slower than this machine does.
const ATTACH_TIMEOUT: Duration = Duration::from_mins(2);
/// Reports read sooner than this after a workload froze may have been computed before.
const SETTLE: Duration = Duration::from_millis(300);
/// In proc mode (`--mode proc`, sampled every second), a report that follows a sample taken
/// after the moment: two samples and the settling time.
const SAMPLED_SETTLE: Duration = Duration::from_millis(2300);
const LINE_TIMEOUT: Duration = Duration::from_secs(30);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (workloads, exclusive, expected_source) = match args.as_slice() {
        [dir] => (PathBuf::from(dir), false, None),
        [dir, flag] if flag == "--exclusive" => (PathBuf::from(dir), true, None),
        [dir, flag, source_flag, source]
            if flag == "--exclusive" && source_flag == "--vma-source" =>
        {
            (PathBuf::from(dir), true, Some(source.clone()))
        }
        _ => {
            eprintln!(
                "usage: vm-checks WORKLOADS [--exclusive [--vma-source S]]   (TRACER_BIN names the tracer)"
            );
            std::process::exit(2);
        }
    };
    let last_panic = capture_panics();
    println!("vm-check plan {}", PLAN.join(" "));
    let mut failed = false;
    let mut report = |name: &str, result: Result<String, String>| match result {
        Ok(detail) => println!("vm-check {name} ok: {detail}"),
        Err(why) => {
            failed = true;
            println!("vm-check {name} FAIL: {}", why.replace('\n', " | "));
        }
    };
    let run = |check: &dyn Fn() -> String| catch(&last_panic, check);
    let session = catch(&last_panic, || start(&workloads));
    match session {
        Ok(session) => {
            report("starts", Ok(session.detail.clone()));
            report("unloaded", run(&|| unloaded(&session, exclusive)));
            report("vma", run(&|| vma(&workloads, expected_source.as_deref())));
            report("sockets", run(&|| sockets(&workloads)));
            report("threads", run(&|| threads(&workloads)));
            report("targets", run(&|| targets(&workloads, &session.held)));
            report("proc_mode", run(&|| proc_mode(&workloads)));
            report("pod", run(&|| pod(&workloads)));
        }
        Err(why) => {
            report("starts", Err(why));
            for name in &PLAN[1..] {
                report(name, Err("not run: tracer does not start".to_owned()));
            }
        }
    }
    println!("vm-check done");
    std::process::exit(i32::from(failed));
}

/// Runs `f`, turning a panic into its message.
fn catch<T>(last_panic: &Mutex<Option<String>>, f: impl FnOnce() -> T) -> Result<T, String> {
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(|_| {
        last_panic
            .lock()
            .expect("panic message")
            .take()
            .unwrap_or_else(|| "panicked".to_owned())
    })
}

/// Keeps the message of the latest panic (with its location) for the report line.
fn capture_panics() -> Arc<Mutex<Option<String>>> {
    let last = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&last);
    panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!(" (at {}:{})", l.file(), l.line()))
            .unwrap_or_default();
        *slot.lock().expect("panic slot") = Some(format!("{message}{at}"));
    }));
    last
}

/// A tracer attached to an idle workload, with what it held while running.
struct Session {
    tracer: Mutex<Process>,
    _target: Process,
    /// BPF programs and maps loaded before tracer started.
    before: Objects,
    /// The ones tracer held file descriptors for, from /proc/PID/fdinfo.
    held: Objects,
    detail: String,
}

/// Starts tracer on a quiet workload; panics with tracer's own error if it does not attach.
fn start(workloads: &Path) -> Session {
    let before = Objects::loaded();
    let target = Process::spawn(Command::new(workloads.join("loops")).args(["idle", "3600"]));
    target.expect_line("READY", LINE_TIMEOUT);
    let started = Instant::now();
    let mut command = Command::new(tracer_bin());
    command
        .args(["attach", "--pid", &target.pid.to_string(), "--json"])
        .stderr(Stdio::piped());
    let mut tracer = Process::spawn(&mut command);
    let stderr = tracer.child.stderr.take().expect("piped stderr");
    let stderr = thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    loop {
        let left = ATTACH_TIMEOUT.saturating_sub(started.elapsed());
        assert!(
            !left.is_zero(),
            "tracer printed no target_attached within {ATTACH_TIMEOUT:?}"
        );
        match tracer.next_line(left) {
            Some((_, line)) if line.contains(r#""type":"target_attached""#) => break,
            Some(_) => {}
            None => {
                let status = tracer.wait(LINE_TIMEOUT);
                let stderr = stderr.join().unwrap_or_default();
                panic!(
                    "tracer exited ({status}) before attaching: {}",
                    stderr.trim()
                );
            }
        }
    }
    let attached = started.elapsed();
    let held = Objects::held_by(tracer.pid);
    assert!(
        !held.programs.is_empty(),
        "tracer attached but /proc/{}/fdinfo shows no BPF program",
        tracer.pid
    );
    Session {
        detail: format!(
            "attached in {:.1} s, holding {} BPF programs and {} maps",
            attached.as_secs_f64(),
            held.programs.len(),
            held.maps.len()
        ),
        tracer: Mutex::new(tracer),
        _target: target,
        before,
        held,
    }
}

/// SIGTERM ends tracer with status 0, and what it loaded is gone from the kernel.
fn unloaded(session: &Session, exclusive: bool) -> String {
    let mut tracer = session.tracer.lock().expect("tracer");
    signal(tracer.pid, libc::SIGTERM);
    let status: ExitStatus = tracer.wait(LINE_TIMEOUT);
    assert!(status.success(), "tracer exited {status} on SIGTERM");
    // The kernel frees a program after an RCU grace period once its last fd closes.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = Objects::loaded();
        let left_programs: Vec<u32> = session
            .held
            .programs
            .intersection(&now.programs)
            .copied()
            .collect();
        let left_maps: Vec<u32> = session.held.maps.intersection(&now.maps).copied().collect();
        let new_programs: Vec<u32> = now
            .programs
            .difference(&session.before.programs)
            .copied()
            .collect();
        let new_maps: Vec<u32> = now.maps.difference(&session.before.maps).copied().collect();
        let clean = left_programs.is_empty()
            && left_maps.is_empty()
            && (!exclusive || (new_programs.is_empty() && new_maps.is_empty()));
        if clean {
            return format!(
                "exit 0 on SIGTERM; its {} programs and {} maps are gone{}",
                session.held.programs.len(),
                session.held.maps.len(),
                if exclusive {
                    format!(
                        ", the kernel holds what it held before ({} programs, {} maps)",
                        now.programs.len(),
                        now.maps.len()
                    )
                } else {
                    String::new()
                }
            );
        }
        assert!(
            Instant::now() < deadline,
            "5 s after tracer exited, still loaded: its programs {left_programs:?}, its maps \
             {left_maps:?}; programs loaded since it started {new_programs:?}, maps {new_maps:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The VMA count equals /proc/PID/maps each time a two-thread mmap/mprotect/munmap churn is
/// frozen with SIGSTOP; a spike between two reports shows in the peak; the source is
/// `expected_source` when given.
fn vma(workloads: &Path, expected_source: Option<&str>) -> String {
    let mut churn = Process::spawn(Command::new(workloads.join("churn")).args(["2", "3600"]));
    churn.expect_line("READY", LINE_TIMEOUT);
    let tracer = Tracer::attach_within(churn.pid, &[], ATTACH_TIMEOUT);
    let counts = frozen_counts(&mut churn, &tracer, 5, SETTLE);
    churn.send("PAUSE");
    let (_, ops) = churn.expect_line("PAUSED", LINE_TIMEOUT);
    // A peak the heal cannot see: ~300 mappings made and unmapped within milliseconds. Only
    // the source's own programs can put it in the next report's `peak`.
    let spiked = Instant::now();
    churn.send(&format!("SPIKE {SPIKE}"));
    let (_, line) = churn.expect_line("SPIKED", LINE_TIMEOUT);
    let top: u64 = line
        .trim_start_matches("SPIKED peak=")
        .parse()
        .expect("SPIKED peak=N");
    let first = tracer.vma_after(spiked);
    let second = tracer.vma_after(Instant::now());
    let seen = first.u64("peak").max(second.u64("peak"));
    assert!(
        seen >= top,
        "a spike to {top} mappings: the next reports' peak is {seen} ({} then {})",
        first.json,
        second.json
    );
    let source = tracer.seen("target_attached")[0].json["vma_source"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if let Some(expected) = expected_source {
        assert_eq!(source, expected, "the VMA source chosen on this kernel");
    }
    format!(
        "source {source}: {} frozen moments of 2-thread churn ({} changes), counts {counts:?} \
         equal /proc/PID/maps; a {SPIKE}-mapping spike to {top} seen in the peak",
        counts.len(),
        ops.trim_start_matches("PAUSED ")
    )
}

/// Pages of the spike `vma` makes and undoes between two reports.
const SPIKE: u32 = 300;

/// Starts `churn` (from `READY`) and freezes it `rounds` times a second apart: at each frozen
/// moment the first `vma` report `settle` after it must equal /proc/PID/maps. Returns the
/// counts, which must not all be the same (else nothing was tested); leaves it running.
fn frozen_counts(
    churn: &mut Process,
    tracer: &Tracer,
    rounds: usize,
    settle: Duration,
) -> Vec<u32> {
    churn.send("GO");
    let mut counts = Vec::new();
    for round in 0..rounds {
        thread::sleep(Duration::from_secs(1));
        let stopped_at = freeze(churn.pid);
        let expected = maps_count(churn.pid).expect("churn alive");
        let event = tracer.vma_after(stopped_at + settle);
        assert_eq!(
            maps_count(churn.pid),
            Some(expected),
            "the stopped churn changed its mappings"
        );
        assert_eq!(
            event.u64("map_count"),
            u64::from(expected),
            "frozen moment {round}: /proc/{}/maps says {expected} mappings, tracer says {}",
            churn.pid,
            event.json
        );
        counts.push(expected);
        signal(churn.pid, libc::SIGCONT);
    }
    let distinct: BTreeSet<u32> = counts.iter().copied().collect();
    assert!(
        distinct.len() > 1,
        "the churn never changed the count between frozen moments ({counts:?}): nothing was tested"
    );
    counts
}

/// Proc mode (`--mode proc`) on this kernel: the VMA count at frozen moments of the churn and
/// the server's socket states after its clients closed equal the kernel's own view, once a
/// sample after the moment is in (what the mode cannot see, changes between samples, is not
/// asked of it).
fn proc_mode(workloads: &Path) -> String {
    let mut churn = Process::spawn(Command::new(workloads.join("churn")).args(["2", "3600"]));
    churn.expect_line("READY", LINE_TIMEOUT);
    let tracer = Tracer::attach_within(churn.pid, &["--mode", "proc"], ATTACH_TIMEOUT);
    let mode = tracer.seen("target_attached")[0].json["mode"].clone();
    assert_eq!(mode, "proc", "target_attached's mode under --mode proc");
    let counts = frozen_counts(&mut churn, &tracer, 3, SAMPLED_SETTLE);
    drop(tracer);
    drop(churn);
    let sockets = sockets_with(workloads, &["--mode", "proc"], SAMPLED_SETTLE);
    format!(
        "sampled: {} frozen moments of churn, counts {counts:?} equal /proc/PID/maps; {sockets}",
        counts.len()
    )
}

/// CLOSE_WAIT and ESTABLISHED per the tracer equal /proc/net/tcp for the server's sockets,
/// after clients closed 20 of its 27 connections while it was stopped.
fn sockets(workloads: &Path) -> String {
    sockets_with(workloads, &[], SETTLE)
}

/// [`sockets`] with tracer run with `args`, its reports read `settle` after the kernel's view
/// settled.
fn sockets_with(workloads: &Path, args: &[&str], settle: Duration) -> String {
    const CLOSING: u64 = 20;
    const KEPT: u64 = 7;
    let (server, port) = acceptor(workloads);
    let tracer = Tracer::attach_within(server.pid, args, ATTACH_TIMEOUT);
    let client = |n: u64| {
        let process = Process::spawn(Command::new(workloads.join("halfclose")).args([
            "127.0.0.1",
            &port.to_string(),
            &n.to_string(),
        ]));
        process.expect_line("READY", LINE_TIMEOUT);
        process
    };
    let mut closing = client(CLOSING);
    let _kept = client(KEPT);
    loop {
        let (_, line) = server.expect_line("ACCEPTED", LINE_TIMEOUT);
        if line.trim_start_matches("ACCEPTED ").parse::<u64>() == Ok(CLOSING + KEPT) {
            break;
        }
    }
    freeze(server.pid);
    closing.send("CLOSE");
    closing.expect_line("CLOSED", LINE_TIMEOUT);
    let expected: BTreeMap<String, u64> = [
        ("CLOSE_WAIT", CLOSING),
        ("ESTABLISHED", KEPT),
        ("LISTEN", 1),
    ]
    .into_iter()
    .map(|(s, n)| (s.to_owned(), n))
    .collect();
    let kernel = settle_sockets(server.pid, &expected);
    let settled = Instant::now();
    // Nothing changes while the server is stopped: a mismatch over three reports is real.
    let mut reported = tracer.states_after(settled + settle);
    for _ in 0..2 {
        if reported == kernel {
            break;
        }
        reported = tracer.states_after(Instant::now());
    }
    signal(server.pid, libc::SIGCONT);
    let first = tracer
        .seen("sockets")
        .first()
        .map(|e| format!("{:?}", e.states()))
        .unwrap_or_default();
    assert_eq!(
        reported,
        kernel,
        "tracer's states (left) differ from /proc/{}/net/tcp{{,6}} for its sockets (right); \
         its first report after attach, before any client: {first}; {} tcp_state events",
        server.pid,
        tracer.seen("tcp_state").len()
    );
    format!(
        "sockets {reported:?} equal /proc/PID/net/tcp{{,6}} of its fds after clients closed while it was stopped"
    )
}

/// The `threads` event's count equals /proc/PID/status `Threads:` and /proc/PID/task as
/// threads start and exit.
fn threads(workloads: &Path) -> String {
    let mut process = Process::spawn(&mut Command::new(workloads.join("threads")));
    process.expect_line("READY", LINE_TIMEOUT);
    let tracer = Tracer::attach_within(process.pid, &[], ATTACH_TIMEOUT);
    let mut counts = Vec::new();
    for step in ["+5", "+20", "-13", "+1", "-12"] {
        process.send(step);
        let (at, line) = process.expect_line("THREADS", LINE_TIMEOUT);
        let own: u64 = line
            .trim_start_matches("THREADS ")
            .parse()
            .unwrap_or_else(|_| panic!("bad reply {line:?}"));
        let status = proc_status(process.pid, "Threads");
        let tasks = std::fs::read_dir(format!("/proc/{}/task", process.pid))
            .expect("/proc/PID/task")
            .count() as u64;
        assert!(
            status == own && tasks == own,
            "after {step}: the workload counts {own} threads, /proc/PID/status Threads: {status}, \
             /proc/PID/task {tasks}"
        );
        let event = tracer.after("threads", at + SETTLE);
        assert_eq!(
            event.u64("count"),
            own,
            "after {step}: /proc/{}/status says {own} threads, tracer says {}",
            process.pid,
            event.json
        );
        counts.push(own);
    }
    format!(
        "counts {counts:?} after each change equal /proc/PID/status Threads: and /proc/PID/task"
    )
}

/// tracer and the threads workload both in a new pid namespace (`unshare --pid --fork
/// --mount-proc`), as a pod with `shareProcessNamespace` runs them: the probes load there
/// (not the /proc fallback, which once hid a scheduler probe the verifier refused only in a pid
/// namespace), the target has the namespace's pid, and its thread count is its /proc's.
fn pod(workloads: &Path) -> String {
    let script = format!(
        "exec 3<&0; {} <&3 > /dev/null & exec {} attach --pid $! --json",
        workloads.join("threads").display(),
        tracer_bin().display()
    );
    let mut command = Command::new("unshare");
    command.args(["--pid", "--fork", "--mount-proc", "sh", "-c", &script]);
    let tracer = Tracer::spawn(&mut command, ATTACH_TIMEOUT);
    let attached = tracer.seen("target_attached")[0].json.clone();
    assert_eq!(attached["mode"], "ebpf", "{attached}");
    let pid = attached["pid"].as_u64().expect("pid");
    assert!(pid < 10, "the pid is the namespace's: {attached}");
    // unshare -> the namespace's init (tracer, by exec) -> the workload.
    let init = children(tracer.process.pid)[0];
    let workload = children(init)[0];
    let own = proc_status(workload, "Threads");
    let event = tracer.after("threads", Instant::now() + SETTLE);
    assert_eq!(
        event.u64("count"),
        own,
        "/proc says {own} threads: {}",
        event.json
    );
    format!(
        "probes loaded in a new pid namespace; target pid {pid} there, {own} threads as /proc says"
    )
}

/// `tracer agent` with three targets on its one loaded object: a two-thread churn (started
/// after attach, so its threads arrive as records too), the threads workload and a server
/// whose clients come and close. At four moments when all are frozen each target's VMA count,
/// threads and socket states equal /proc/PID/maps, /proc/PID/status and /proc/PID/net/tcp;
/// the threads workload is killed before the last, and the other two stay right. The agent
/// holds as many programs and maps as `tracer attach` with one target (`single`), the same ones
/// after the exit.
fn targets(workloads: &Path, single: &Objects) -> String {
    // (threads workload's step, connections of the round's new client); None: it is killed.
    const ROUNDS: [(Option<&str>, u64); 4] = [
        (Some("+6"), 5),
        (Some("+10"), 8),
        (Some("-9"), 3),
        (None, 2),
    ];
    let started = Instant::now();
    let mut churn = Process::spawn(Command::new(workloads.join("churn")).args(["2", "3600"]));
    churn.expect_line("READY", LINE_TIMEOUT);
    let workload = Process::spawn(&mut Command::new(workloads.join("threads")));
    workload.expect_line("READY", LINE_TIMEOUT);
    let threads_pid = workload.pid;
    let mut threads = Some(workload);
    let mut server = Server::start(workloads);
    let mut agent = Agent::start(&[churn.pid, threads_pid, server.process.pid]);
    let held = Objects::held_by(agent.process.pid);
    assert!(
        held.programs.len() == single.programs.len() && held.maps.len() == single.maps.len(),
        "the agent with 3 targets holds {} programs and {} maps, tracer attach with one {} and {}",
        held.programs.len(),
        held.maps.len(),
        single.programs.len(),
        single.maps.len()
    );
    churn.send("GO");
    let mut targets = vec![
        (churn.pid, "churn"),
        (threads_pid, "threads"),
        (server.process.pid, "server"),
    ];
    let mut seen: BTreeMap<&str, Vec<View>> = BTreeMap::new();
    let mut exit = None;
    for (round, (step, connections)) in ROUNDS.into_iter().enumerate() {
        if let Some(step) = step {
            let workload = threads.as_mut().expect("the threads workload runs");
            workload.send(step);
            workload.expect_line("THREADS", LINE_TIMEOUT);
        } else {
            drop(threads.take());
            targets.retain(|&(pid, _)| pid != threads_pid);
            exit = Some(agent.next_of("target_exit", threads_pid, LINE_TIMEOUT));
            let now = Objects::held_by(agent.process.pid);
            assert!(
                now.programs == held.programs && now.maps == held.maps,
                "after a target exited the agent holds programs {:?} and maps {:?}, before {:?} \
                 and {:?}",
                now.programs,
                now.maps,
                held.programs,
                held.maps
            );
        }
        let expected = server.next_client(workloads, connections);
        thread::sleep(Duration::from_secs(1));
        let views = frozen_views(&mut agent, &targets, (server.process.pid, &expected), round);
        for (&(_, name), view) in targets.iter().zip(views) {
            seen.entry(name).or_default().push(view);
        }
    }
    let churned: BTreeSet<u32> = seen["churn"].iter().map(|v| v.vma).collect();
    assert!(
        churned.len() > 1,
        "the churn never changed its count between frozen moments ({:?}): nothing was tested",
        seen["churn"]
    );
    let exit = exit.expect("the threads workload was killed");
    assert_eq!(
        exit.json["signal"], "SIGKILL",
        "the killed threads workload's target_exit: {}",
        exit.json
    );
    let describe = |name: &str| {
        seen[name]
            .iter()
            .map(View::brief)
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "one object for 3 targets ({} programs and {} maps, as attach's for one); at {} frozen \
         moments each target's VMA count/threads/sockets equal /proc: churn [{}], threads [{}] \
         (killed before the last: target_exit SIGKILL, the same programs held after), server \
         [{}]; {:.0} s",
        held.programs.len(),
        held.maps.len(),
        ROUNDS.len(),
        describe("churn"),
        describe("threads"),
        describe("server"),
        started.elapsed().as_secs_f64()
    )
}

/// Freezes every one of `targets` (pid, name), waits until the kernel shows the server's
/// sockets in the states expected of them (`server`: its pid and them), and returns each
/// target's view, which the agent's reports after must equal (in `round`); thaws them.
fn frozen_views(
    agent: &mut Agent,
    targets: &[(u32, &str)],
    server: (u32, &BTreeMap<String, u64>),
    round: usize,
) -> Vec<View> {
    for &(pid, _) in targets {
        freeze(pid);
    }
    settle_sockets(server.0, server.1);
    let settled = Instant::now();
    let mut views = Vec::new();
    for &(pid, name) in targets {
        let kernel = View::of_kernel(pid);
        let reported = View::reported(agent, pid, settled + SETTLE, &kernel);
        assert_eq!(
            reported, kernel,
            "frozen moment {round}: the agent's view of {name} (pid {pid}, left) differs from \
             /proc/{pid}/{{maps,status,net/tcp}} (right)"
        );
        views.push(kernel);
    }
    for &(pid, _) in targets {
        signal(pid, libc::SIGCONT);
    }
    views
}

/// The acceptor and the halfclose clients `targets` connects to it.
struct Server {
    process: Process,
    port: u16,
    /// Each client with its connections.
    clients: Vec<(Process, u64)>,
    accepted: u64,
    closed: u64,
}

impl Server {
    fn start(workloads: &Path) -> Self {
        let (process, port) = acceptor(workloads);
        Self {
            process,
            port,
            clients: Vec::new(),
            accepted: 0,
            closed: 0,
        }
    }

    /// A new client of `connections`, accepted; the previous one closes its side, leaving
    /// the server's sockets of it in CLOSE_WAIT. Returns the states the server's sockets then
    /// have.
    fn next_client(&mut self, workloads: &Path, connections: u64) -> BTreeMap<String, u64> {
        let client = Process::spawn(Command::new(workloads.join("halfclose")).args([
            "127.0.0.1",
            &self.port.to_string(),
            &connections.to_string(),
        ]));
        client.expect_line("READY", LINE_TIMEOUT);
        self.accepted += connections;
        loop {
            let (_, line) = self.process.expect_line("ACCEPTED", LINE_TIMEOUT);
            if line.trim_start_matches("ACCEPTED ").parse::<u64>() == Ok(self.accepted) {
                break;
            }
        }
        if let Some((previous, n)) = self.clients.last_mut() {
            previous.send("CLOSE");
            previous.expect_line("CLOSED", LINE_TIMEOUT);
            self.closed += *n;
        }
        self.clients.push((client, connections));
        [
            ("CLOSE_WAIT", self.closed),
            ("ESTABLISHED", self.accepted - self.closed),
            ("LISTEN", 1),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| (s.to_owned(), n))
        .collect()
    }
}

/// The acceptor (tests/native/acceptor.c) on a port of its choosing, once ready; and the port.
fn acceptor(workloads: &Path) -> (Process, u16) {
    let server = Process::spawn(Command::new(workloads.join("acceptor")).arg("0"));
    let (_, ready) = server.expect_line("READY", LINE_TIMEOUT);
    let port = port_of(&ready);
    (server, port)
}

/// Until /proc/PID/net/tcp{,6} shows `expected` for `pid`'s sockets (the peers' FINs are
/// processed in softirq context, a moment after the close), 10 s at most.
fn settle_sockets(pid: u32, expected: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let kernel = proc_tcp_states(pid);
        if kernel == *expected {
            return kernel;
        }
        assert!(
            Instant::now() < deadline,
            "the kernel's view never settled: /proc/{pid}/net/tcp shows {kernel:?}, the scenario \
             expects {expected:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// One target's counts at a frozen moment: its VMA count, threads and sockets per state.
#[derive(Clone, Debug, PartialEq, Eq)]
struct View {
    vma: u32,
    threads: u64,
    sockets: BTreeMap<String, u64>,
}

impl View {
    /// /proc's: `maps` (less `[vsyscall]`), `status` `Threads:`, `net/tcp{,6}` of its fds.
    fn of_kernel(pid: u32) -> Self {
        Self {
            vma: maps_count(pid).unwrap_or_else(|| panic!("pid {pid} is gone")),
            threads: proc_status(pid, "Threads"),
            sockets: proc_tcp_states(pid),
        }
    }

    /// The agent's, from its first `vma`, `threads` and `sockets` reports about `pid` read
    /// after `after`; each kind is read up to three times while it differs from `kernel`
    /// (nothing changes while the target is stopped: a mismatch over three reports is real).
    fn reported(agent: &mut Agent, pid: u32, after: Instant, kernel: &Self) -> Self {
        let vma = agent.report("vma", pid, after, |e| {
            e.u64("map_count") == u64::from(kernel.vma)
        });
        let threads = agent.report("threads", pid, after, |e| e.u64("count") == kernel.threads);
        let sockets = agent.report("sockets", pid, after, |e| e.states() == kernel.sockets);
        Self {
            vma: u32::try_from(vma.u64("map_count")).expect("map_count fits u32"),
            threads: threads.u64("count"),
            sockets: sockets.states(),
        }
    }

    fn brief(&self) -> String {
        let sockets: Vec<String> = self
            .sockets
            .iter()
            .map(|(state, n)| format!(" {state} {n}"))
            .collect();
        format!("{}/{}{}", self.vma, self.threads, sockets.concat())
    }
}

/// `tracer agent --pid ...` with its NDJSON on stdout, every event read kept.
struct Agent {
    process: Process,
    history: Vec<Event>,
}

impl Agent {
    /// Starts the agent on `pids`; returns once each is attached, or panics with the agent's
    /// own error.
    fn start(pids: &[u32]) -> Self {
        let started = Instant::now();
        let mut command = Command::new(tracer_bin());
        command
            .args(["agent", "--listen", &format!("127.0.0.1:{}", free_port())])
            .args(
                pids.iter()
                    .flat_map(|pid| ["--pid".to_owned(), pid.to_string()]),
            )
            .stderr(Stdio::piped());
        let mut process = Process::spawn(&mut command);
        let stderr = process.child.stderr.take().expect("piped stderr");
        let stderr = thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
        let mut agent = Self {
            process,
            history: Vec::new(),
        };
        for &pid in pids {
            let left = ATTACH_TIMEOUT.saturating_sub(started.elapsed());
            if agent.next_within("target_attached", pid, left).is_none() {
                let status = agent.process.wait(LINE_TIMEOUT);
                let stderr = stderr.join().unwrap_or_default();
                panic!(
                    "the agent exited ({status}) before attaching to {pid}: {}",
                    stderr.trim()
                );
            }
        }
        agent
    }

    /// The first event of type `kind` about `pid` read after `after` (kept or read now).
    fn after(&mut self, kind: &str, pid: u32, after: Instant) -> Event {
        let matches = |e: &Event| e.kind() == kind && e.json["pid"] == pid && e.at > after;
        if let Some(event) = self.history.iter().find(|e| matches(e)) {
            return event.clone();
        }
        self.read_until(&format!("{kind} about {pid}"), matches, LINE_TIMEOUT)
            .unwrap_or_else(|| panic!("the agent exited before a {kind} report about {pid}"))
    }

    /// [`Agent::after`], then the next ones while `fits` does not hold, three at most.
    fn report(
        &mut self,
        kind: &str,
        pid: u32,
        after: Instant,
        fits: impl Fn(&Event) -> bool,
    ) -> Event {
        let mut event = self.after(kind, pid, after);
        for _ in 0..2 {
            if fits(&event) {
                break;
            }
            event = self.after(kind, pid, event.at);
        }
        event
    }

    /// The next event of type `kind` about `pid` not yet read, within `timeout`.
    fn next_of(&mut self, kind: &str, pid: u32, timeout: Duration) -> Event {
        self.next_within(kind, pid, timeout)
            .unwrap_or_else(|| panic!("the agent exited before a {kind} event about {pid}"))
    }

    /// [`Agent::next_of`], `None` when the agent exits first.
    fn next_within(&mut self, kind: &str, pid: u32, timeout: Duration) -> Option<Event> {
        let matches = |e: &Event| e.kind() == kind && e.json["pid"] == pid;
        self.read_until(&format!("{kind} about {pid}"), matches, timeout)
    }

    /// Reads events until one `matches` (`what`), within `timeout`; `None` when the agent exits
    /// first.
    fn read_until(
        &mut self,
        what: &str,
        matches: impl Fn(&Event) -> bool,
        timeout: Duration,
    ) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {what} from the agent within {timeout:?}"
            );
            let event = self.read(left)?;
            if matches(&event) {
                return Some(event);
            }
        }
    }

    /// The next line of stdout, parsed and kept; `None` at EOF.
    fn read(&mut self, timeout: Duration) -> Option<Event> {
        let (at, line) = self.process.next_line(timeout)?;
        let event = Event {
            at,
            json: serde_json::from_str(&line).unwrap_or_else(|e| {
                panic!("the agent printed a line that is not JSON ({e}): {line}")
            }),
        };
        self.history.push(event.clone());
        Some(event)
    }
}

fn signal(pid: u32, signal: i32) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill has no memory preconditions.
    assert_eq!(
        unsafe { libc::kill(pid, signal) },
        0,
        "kill({pid}, {signal})"
    );
}

/// SIGSTOPs `pid` and returns once every one of its threads is stopped.
fn freeze(pid: u32) -> Instant {
    signal(pid, libc::SIGSTOP);
    let deadline = Instant::now() + LINE_TIMEOUT;
    loop {
        let running = std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("/proc/PID/task")
            .filter_map(Result::ok)
            .filter(|task| {
                std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
                    // The state follows the parenthesised name, which may hold spaces.
                    stat.rsplit_once(") ")
                        .is_some_and(|(_, rest)| !rest.starts_with('t') && !rest.starts_with('T'))
                })
            })
            .count();
        if running == 0 {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "pid {pid} did not stop");
        thread::sleep(Duration::from_millis(10));
    }
}

/// BPF programs and maps by id.
struct Objects {
    programs: BTreeSet<u32>,
    maps: BTreeSet<u32>,
}

/// `enum bpf_cmd` of include/uapi/linux/bpf.h (both since Linux 4.13).
const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_MAP_GET_NEXT_ID: libc::c_long = 12;

impl Objects {
    /// Every program and map the kernel has loaded, walking the ids with the bpf syscall.
    fn loaded() -> Self {
        Self {
            programs: all_ids(BPF_PROG_GET_NEXT_ID),
            maps: all_ids(BPF_MAP_GET_NEXT_ID),
        }
    }

    /// The programs and maps `pid` holds an fd for (`prog_id:` / `map_id:` in fdinfo; a
    /// link's fdinfo names its program too).
    fn held_by(pid: u32) -> Self {
        let mut objects = Self {
            programs: BTreeSet::new(),
            maps: BTreeSet::new(),
        };
        for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
            .expect("/proc/PID/fdinfo")
            .filter_map(Result::ok)
        {
            let Ok(info) = std::fs::read_to_string(fd.path()) else {
                continue;
            };
            for line in info.lines() {
                let Some((key, value)) = line.split_once(':') else {
                    continue;
                };
                let Ok(id) = value.trim().parse() else {
                    continue;
                };
                match key {
                    "prog_id" => objects.programs.insert(id),
                    "map_id" => objects.maps.insert(id),
                    _ => false,
                };
            }
        }
        objects
    }
}

fn all_ids(command: libc::c_long) -> BTreeSet<u32> {
    let mut ids = BTreeSet::new();
    let mut start = 0u32;
    loop {
        // union bpf_attr for *_GET_NEXT_ID: start_id, next_id, open_flags.
        let mut attr = [start, 0u32, 0u32];
        // SAFETY: attr is a valid bpf_attr prefix of the size passed.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                command,
                attr.as_mut_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        if ret != 0 {
            let error = std::io::Error::last_os_error();
            assert_eq!(
                error.raw_os_error(),
                Some(libc::ENOENT),
                "bpf(GET_NEXT_ID) failed: {error}"
            );
            return ids;
        }
        ids.insert(attr[1]);
        start = attr[1];
    }
}
