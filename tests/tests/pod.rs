//! The sidecar's view: a JVM broker (tests/java/StuckBroker.java, Kafka 3.x thread names) and
//! tracer both inside a new pid namespace (`unshare --pid --fork --mount-proc`), as a pod with
//! `shareProcessNamespace` runs them. Thread ids must be the namespace's, as its /proc shows
//! them: a healthy broker under traffic raises nothing and its thread count is /proc's, and a
//! deadlocked one raises `stall` naming threads that exist in its /proc/PID/task.

use std::{
    net::TcpStream,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use tracer_tests::{TempDir, Tracer, children, compile_java, namespace_tids, port_of, tracer_bin};

/// Starts the broker and, once it listens, tracer attached to it, both in a new pid
/// namespace. Returns tracer, the broker's host pid and its port.
fn pod(classes: &TempDir, mode: &str, args: &str) -> (Tracer, u32, u16) {
    let out = classes.path().join("broker.out");
    let script = format!(
        // The broker keeps the test's stdin (it exits at EOF): a background job's would be
        // /dev/null.
        "exec 3<&0; java -Xmx64m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:-UsePerfData -cp {classes} StuckBroker --handlers 4 --mode {mode} <&3 > {out} & \
         while ! grep -q READY {out}; do sleep 0.1; done; \
         exec {tracer} attach --pid $! --json {args}",
        classes = classes.path().display(),
        out = out.display(),
        tracer = tracer_bin().display(),
    );
    let mut command = Command::new("unshare");
    command.args(["--pid", "--fork", "--mount-proc", "sh", "-c", &script]);
    let tracer = Tracer::spawn(&mut command, Duration::from_secs(30));
    let attached = &tracer.seen("target_attached")[0];
    assert!(
        attached.u64("pid") < 10,
        "the pid is the namespace's: {}",
        attached.json
    );
    // The probes themselves, not the /proc fallback (which once hid a scheduler probe that
    // the verifier refused in a pid namespace).
    assert_eq!(attached.json["mode"], "ebpf", "{}", attached.json);
    // unshare -> the namespace's init (now tracer, by exec) -> java.
    let init = children(tracer.process.pid)[0];
    let broker = children(init)
        .into_iter()
        .find(|&c| {
            std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|n| n.trim() == "java")
        })
        .expect("the broker in the namespace");
    let ready = std::fs::read_to_string(&out).expect("broker output");
    (
        tracer,
        broker,
        port_of(
            ready
                .lines()
                .find(|l| l.starts_with("READY"))
                .expect("READY"),
        ),
    )
}

#[test]
fn a_healthy_broker_in_a_pid_namespace_raises_nothing_and_its_threads_match_proc() {
    let classes = TempDir::new("pod-healthy");
    compile_java("StuckBroker", classes.path());
    let (tracer, broker, port) = pod(&classes, "healthy", "--stall-after 5s");
    // 2.5 clients a second for 12 s, each served and closed: work keeps arriving.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(12) {
        drop(TcpStream::connect(("127.0.0.1", port)).expect("connect"));
        thread::sleep(Duration::from_millis(400));
    }
    let threads = tracer.after("threads", Instant::now());
    let alerts: Vec<_> = tracer.seen("alert").into_iter().map(|a| a.json).collect();
    assert!(alerts.is_empty(), "{alerts:?}");
    let in_proc = namespace_tids(broker).len() as u64;
    assert_eq!(threads.u64("count"), in_proc, "{}", threads.json);
    println!("threads: {}", threads.json);
}

#[test]
fn a_deadlocked_broker_in_a_pid_namespace_raises_stall_naming_its_threads() {
    let classes = TempDir::new("pod-stuck");
    compile_java("StuckBroker", classes.path());
    let (tracer, broker, port) = pod(&classes, "stuck", "--stall-after 5s");
    let (alert, _clients) = tracer.clients_until_stall(port);
    println!("stall: {}", alert.json["message"]);
    let tids = namespace_tids(broker);
    let threads = alert.json["threads"].as_array().expect("threads");
    assert!(!threads.is_empty(), "{}", alert.json);
    for thread in threads {
        let tid = thread["tid"].as_u64().expect("tid") as u32;
        // A thread the namespace's /proc/PID/task lists, named as the kernel names it.
        let host = tids
            .get(&tid)
            .unwrap_or_else(|| panic!("{tid} is not in {tids:?}"));
        let comm =
            std::fs::read_to_string(format!("/proc/{broker}/task/{host}/comm")).expect("comm");
        assert_eq!(comm.trim_end(), "data-plane-kafk");
        assert_eq!(thread["syscall"], "futex", "{thread}");
    }
}
