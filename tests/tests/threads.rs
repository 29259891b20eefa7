//! Thread counts after the kernel's task ring dropped records: the tracer stopped (SIGSTOP)
//! while its target starts and ends far more threads than the ring holds must, once resumed,
//! report the threads /proc/PID/task lists, and say it re-read them.

use std::time::{Duration, Instant};

use tracer_tests::{Process, TempDir, Tracer, compile_c, proc_status, signal};

/// Thread starts and exits while the tracer is stopped: two records each, against the 8,192
/// records (24 bytes and an 8-byte header each) of the task ring's 256 KiB.
const CYCLES: usize = 12;
const PER_CYCLE: usize = 1000;

#[test]
fn thread_counts_heal_within_seconds_after_the_task_ring_overflows() {
    let dir = TempDir::new("task-ring");
    let binary = compile_c("threads", dir.path());
    let mut target = Process::spawn(&mut std::process::Command::new(&binary));
    target.expect_line("READY", Duration::from_secs(5));
    let tracer = Tracer::attach(target.pid, &[]);
    let first = tracer.after("threads", Instant::now());
    assert_eq!(first.u64("count"), 1, "{}", first.json);

    signal(tracer.process.pid, libc::SIGSTOP);
    for _ in 0..CYCLES {
        target.send(&format!("+{PER_CYCLE}"));
        target.expect_line("THREADS", Duration::from_secs(30));
        target.send(&format!("-{PER_CYCLE}"));
        target.expect_line("THREADS", Duration::from_secs(30));
    }
    // 37 left alive, and the main thread.
    target.send("+37");
    let (_, alive) = target.expect_line("THREADS", Duration::from_secs(30));
    assert_eq!(alive, "THREADS 38");
    assert_eq!(proc_status(target.pid, "Threads"), 38);
    let resumed = Instant::now();
    signal(tracer.process.pid, libc::SIGCONT);

    let report = loop {
        let report = tracer.after("threads", Instant::now());
        if report.u64("count") == 38 {
            break report;
        }
        assert!(
            resumed.elapsed() < Duration::from_secs(10),
            "10 s after resuming: tracer {}, /proc/PID/status 38",
            report.json
        );
    };
    assert!(
        report.u64("events_lost") > 0,
        "the task ring overflowed: {}",
        report.json
    );
    assert_eq!(
        std::fs::read_dir(format!("/proc/{}/task", target.pid))
            .expect("/proc/PID/task")
            .count(),
        38
    );
    let resynced = tracer.seen("resynced");
    let resync = resynced
        .iter()
        .find(|e| e.json["table"] == "threads" && e.json["reason"] == "records_lost")
        .unwrap_or_else(|| panic!("no resynced event for the threads: {resynced:?}"));
    println!("{}", resync.json);
    assert_eq!(resync.json["after"]["threads"], 38, "{}", resync.json);
    assert!(resync.u64("corrected") > 0, "{}", resync.json);
    // Nothing raised for a count that went back down.
    assert!(
        tracer.seen("alert").is_empty(),
        "{:?}",
        tracer.seen("alert")
    );
}
