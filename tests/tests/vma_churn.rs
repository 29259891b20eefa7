//! Heavy mmap/mprotect/munmap churn from several threads at once: the tracer's count must
//! equal /proc/PID/maps every time the churn stops, however the threads raced.

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use tracer_tests::{Process, TempDir, Tracer, compile_c, maps_count, programs_unloaded};

#[test]
fn count_is_exact_after_concurrent_churn() {
    let dir = TempDir::new("churn");
    let churn = compile_c("churn", dir.path());
    let mut workload = Process::spawn(Command::new(&churn).args(["4", "30"]));
    workload.expect_line("READY", Duration::from_secs(5));
    let tracer = Tracer::attach(workload.pid, &[]);
    workload.send("GO");

    let mut compared = 0;
    let mut last_ops = 0;
    for round in 0..6 {
        thread::sleep(Duration::from_millis(1500));
        workload.send("PAUSE");
        let (paused_at, line) = workload.expect_line("PAUSED", Duration::from_secs(5));
        let ops: u64 = line
            .trim_start_matches("PAUSED ")
            .parse()
            .expect("PAUSED <ops>");
        assert!(
            ops > last_ops + 1000,
            "round {round}: the churn barely ran ({ops} ops)"
        );
        last_ops = ops;
        let expected = maps_count(workload.pid).expect("workload alive");
        // The first report after the pause began reflects the stable state.
        let event = tracer.vma_after(paused_at + Duration::from_millis(50));
        assert_eq!(
            maps_count(workload.pid),
            Some(expected),
            "the workload changed its mappings while paused"
        );
        assert_eq!(
            event.u64("map_count"),
            u64::from(expected),
            "round {round}: tracer says {}, /proc/{}/maps says {expected}",
            event.json,
            workload.pid
        );
        compared += 1;
        workload.send("RESUME");
        workload.expect_line("RESUMED", Duration::from_secs(5));
    }
    assert_eq!(compared, 6);
    // Several hundred thousand changes went by; none may be dropped silently.
    let last = tracer.vma_after(Instant::now());
    println!("churn: {last_ops} rounds, last report {}", last.json);

    drop(workload);
    tracer.expect("target_exit", Duration::from_secs(5));
    let mut tracer = tracer;
    assert!(
        tracer.process.wait(Duration::from_secs(5)).success(),
        "attach exits 0 after target_exit"
    );
    assert!(programs_unloaded("tracer_"), "a program was left attached");
}
