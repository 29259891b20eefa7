//! A JVM that creates a Kafka producer per message and never closes it: every producer leaks a
//! `kafka-producer-network-thread` and native memory, until the memory cgroup's limit kills
//! the JVM (no Java OutOfMemoryError, no heap dump). The tracer must flag the thread leak and
//! the memory limit before the kill, and its thread counts must be /proc's.

use std::time::{Duration, Instant};

use tracer_tests::{
    MemoryCgroup, Process, TempDir, Tracer, compile_java, java, proc_status, tasks_named,
};

/// The container's memory limit: a JVM of ~40 MiB reaches it after ~180 leaked producers of
/// 2 MiB each.
const LIMIT: u64 = 400 << 20;

/// Threads of the target as /proc/PID/status says, and its group of producer threads as
/// /proc/PID/task/*/comm says.
fn proc_threads(pid: u32) -> (u64, u64) {
    (
        proc_status(pid, "Threads"),
        tasks_named(pid, "kafka-producer-").len() as u64,
    )
}

#[test]
fn a_producer_per_message_is_flagged_as_thread_leak_and_memory_limit_before_the_oom_kill() {
    let classes = TempDir::new("producer-leak");
    compile_java("ProducerLeak", classes.path());
    let cgroup = MemoryCgroup::new("producer-leak", LIMIT);
    let mut jvm = java(classes.path(), "ProducerLeak");
    jvm.arg("--buffer-kib").arg("2048");
    let mut command = cgroup.wrap(&jvm);
    // Direct buffers are the leak: let them grow past -Xmx.
    command.env("JDK_JAVA_OPTIONS", "-XX:MaxDirectMemorySize=4g");
    let mut leaker = Process::spawn(&mut command);
    leaker.expect_line("READY", Duration::from_secs(30));
    let tracer = Tracer::attach(leaker.pid, &["--thread-leak-min", "20"]);

    // 30 producers, then at rest: the counts must be /proc's.
    leaker.send("GROW 30");
    let (grown_at, _) = leaker.expect_line("GREW", Duration::from_secs(30));
    let mut matched = None;
    for _ in 0..10 {
        let before = proc_threads(leaker.pid);
        let event = tracer.after("threads", Instant::now());
        let after = proc_threads(leaker.pid);
        let producers = event
            .group("kafka-producer")
            .and_then(|g| g["threads"].as_u64());
        if before == after && (event.u64("count"), producers) == (before.0, Some(before.1)) {
            matched = Some(event);
            break;
        }
    }
    let threads =
        matched.expect("the thread counts never matched /proc/PID/status and /proc/PID/task");
    assert!(proc_threads(leaker.pid).1 == 30, "{}", threads.json);
    let memory = tracer.after("memory", grown_at);
    assert_eq!(
        memory.json["limit_bytes"].as_u64(),
        Some(LIMIT),
        "{}",
        memory.json
    );
    assert!(memory.json["cgroup"].is_string(), "{}", memory.json);

    // Then the leak: 5 producers (10 MiB) a second until the kernel kills the JVM.
    leaker.send("LEAK 5");
    let leak_started = Instant::now();
    let mut alerts = Vec::new();
    let exit = loop {
        let event = tracer
            .next(Duration::from_mins(2))
            .expect("the tracer ended without a target_exit");
        match event.kind() {
            "alert" => alerts.push(event),
            "target_exit" => break event,
            _ => {}
        }
    };
    let status = leaker.wait(Duration::from_secs(10));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "the JVM was not killed by the OOM killer: {status}"
    );
    // The kernel told it: the OOM killer chose it, and its alerts were closed before the exit.
    assert_eq!(exit.json["oom_killed"], true, "{}", exit.json);
    assert_eq!(exit.json["signal"], "SIGKILL", "{}", exit.json);
    assert!(
        exit.json["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("killed by the OOM killer")),
        "{}",
        exit.json
    );
    let resolved = tracer.seen("alert_resolved");
    for kind in ["thread_leak", "memory_limit"] {
        assert!(
            resolved
                .iter()
                .any(|r| r.json["kind"] == kind && r.at <= exit.at),
            "{kind} not resolved at the exit"
        );
    }
    for kind in ["thread_leak", "memory_limit"] {
        let alert = alerts
            .iter()
            .find(|a| a.json["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} alert before the kill"));
        assert!(alert.at < exit.at);
        println!(
            "{kind} {:.1}s after the leak started, {:.1}s before the kill: {}",
            (alert.at - leak_started).as_secs_f64(),
            (exit.at - alert.at).as_secs_f64(),
            alert.json["message"]
        );
    }
    let leak = alerts
        .iter()
        .find(|a| a.json["kind"] == "thread_leak")
        .expect("checked");
    assert_eq!(leak.json["group"], "kafka-producer", "{}", leak.json);
    let memory = alerts
        .iter()
        .find(|a| a.json["kind"] == "memory_limit")
        .expect("checked");
    assert!(
        memory.json["eta_seconds"].as_u64().is_some(),
        "{}",
        memory.json
    );
}
