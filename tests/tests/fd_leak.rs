//! A process that opens files and never closes them, until EMFILE ("Too many open files"): the
//! tracer must warn before it gets there, and its count must be /proc/PID/fd's.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use tracer_tests::{Process, TempDir, Tracer, compile_c};

/// The leaking process's soft RLIMIT_NOFILE, and how fast it leaks: ~15 s to exhaustion.
const LIMIT: u64 = 600;
const RATE: &str = "40";

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count() as u64
}

#[test]
fn fd_exhaustion_is_flagged_before_emfile_and_counts_match_proc() {
    let dir = TempDir::new("fd-leak");
    let binary = compile_c("fdleak", dir.path());
    let mut leaker = Process::spawn(Command::new(&binary).args([&LIMIT.to_string(), RATE]));
    leaker.expect_line("READY", Duration::from_secs(5));
    let tracer = Tracer::attach(leaker.pid, &[]);

    let first = tracer.expect("fds", Duration::from_secs(5));
    assert_eq!(first.json["limit"].as_u64(), Some(LIMIT), "{}", first.json);
    assert!(first.u64("count") < 10, "{}", first.json);

    leaker.send("GO");
    let started = Instant::now();
    let alert = tracer.expect_kind("alert", "fd_exhaustion", Duration::from_secs(30));
    // The alert must come before the process runs out: EMFILE has not been printed yet.
    assert!(
        leaker.try_line().is_none(),
        "EMFILE came before the alert: {}",
        alert.json
    );
    let eta = alert.json["eta_seconds"].as_u64().expect("an ETA");
    let left = (LIMIT as f64 - open_fds(leaker.pid) as f64) / 40.0;
    assert!(
        (eta as f64 - left).abs() < 5.0,
        "ETA {eta}s, but {left:.1}s are left at 40 fds/s: {}",
        alert.json
    );
    println!(
        "fd_exhaustion after {:.1}s: {}",
        started.elapsed().as_secs_f64(),
        alert.json["message"]
    );

    let (emfile_at, line) = leaker.expect_line("EMFILE", Duration::from_secs(30));
    let held: u64 = line
        .trim_start_matches("EMFILE open=")
        .parse()
        .expect("a count");
    assert_eq!(held, LIMIT);
    // At rest now: the tracer's count equals /proc/PID/fd's.
    let fds = tracer.after("fds", emfile_at + Duration::from_millis(1100));
    assert_eq!(fds.u64("count"), open_fds(leaker.pid), "{}", fds.json);
    assert_eq!(fds.u64("count"), LIMIT);
    assert_eq!(fds.json["usage"].as_f64(), Some(1.0));
    let critical = tracer
        .seen("alert")
        .into_iter()
        .find(|e| e.json["kind"] == "fd_exhaustion" && e.json["severity"] == "critical");
    assert!(
        critical.is_some_and(|c| c.at < emfile_at),
        "no critical fd_exhaustion before EMFILE"
    );
}
