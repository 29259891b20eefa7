//! A broker whose request handler threads deadlock while its acceptor keeps taking new
//! connections (tests/java/StuckBroker.java): the tracer must raise `stall` naming the stuck
//! threads, the lock wait they are blocked in, and the thread-dump command, while clients are
//! still connecting; and an idle healthy broker must not raise it.

use std::{
    net::TcpStream,
    thread,
    time::{Duration, Instant},
};

use tracer_tests::{Process, TempDir, Tracer, compile_java, java, port_of};

const HANDLERS: usize = 4;

fn broker(classes: &TempDir, mode: &str) -> (Process, u16) {
    let mut command = java(classes.path(), "StuckBroker");
    command.args(["--handlers", &HANDLERS.to_string(), "--mode", mode]);
    let broker = Process::spawn(&mut command);
    let (_, ready) = broker.expect_line("READY", Duration::from_secs(30));
    let port = port_of(&ready);
    (broker, port)
}

#[test]
fn deadlocked_request_handlers_raise_stall_with_their_names_and_waits() {
    let classes = TempDir::new("stall");
    compile_java("StuckBroker", classes.path());
    let (broker, port) = broker(&classes, "stuck");
    let tracer = Tracer::attach(broker.pid, &["--stall-after", "5s"]);

    // One connection per handler closes the deadlock; then clients keep arriving, 2 a second.
    let started = Instant::now();
    let (alert, _clients) = tracer.clients_until_stall(port);
    println!(
        "stall after {:.1}s: {}",
        started.elapsed().as_secs_f64(),
        alert.json["message"]
    );
    assert_eq!(alert.json["severity"], "critical");
    assert_eq!(alert.json["group"], "data-plane-kafk", "{}", alert.json);
    assert!(
        alert.json["hint"]
            .as_str()
            .expect("hint")
            .starts_with(&format!("jstack {}", broker.pid))
    );
    let threads = alert.json["threads"].as_array().expect("threads");
    // At least half the group (the handlers and the acceptor) has stopped: the handlers that
    // have been stuck for the threshold by now.
    assert!(threads.len() * 2 > HANDLERS, "{}", alert.json);
    for thread in threads {
        let tid = thread["tid"].as_u64().expect("tid");
        // The kernel agrees: a thread of the broker, named so, blocked in futex (202).
        let task = format!("/proc/{}/task/{tid}", broker.pid);
        let comm = std::fs::read_to_string(format!("{task}/comm")).expect("comm");
        assert_eq!(comm.trim_end(), "data-plane-kafk");
        assert_eq!(thread["name"], "data-plane-kafk");
        let syscall = std::fs::read_to_string(format!("{task}/syscall")).expect("syscall");
        #[cfg(target_arch = "x86_64")]
        assert!(syscall.starts_with("202 "), "{tid}: {syscall}");
        assert_eq!(thread["syscall"], "futex", "{thread}");
        assert!(thread["blocked_seconds"].as_u64().expect("seconds") >= 5);
    }
    assert!(
        alert.json["message"]
            .as_str()
            .expect("message")
            .contains("futex")
    );
    // The broker is still taking connections: the alert came before clients give up.
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
}

#[test]
fn an_idle_healthy_broker_is_not_a_stall() {
    let classes = TempDir::new("no-stall");
    compile_java("StuckBroker", classes.path());
    let (broker, port) = broker(&classes, "healthy");
    let tracer = Tracer::attach(broker.pid, &["--stall-after", "3s"]);
    // Idle handlers for longer than the threshold, then a few clients served and closed.
    thread::sleep(Duration::from_secs(5));
    for _ in 0..6 {
        drop(TcpStream::connect(("127.0.0.1", port)).expect("connect"));
        thread::sleep(Duration::from_millis(500));
    }
    let end = tracer.after("threads", Instant::now() + Duration::from_secs(4));
    assert!(
        !tracer
            .seen("alert")
            .iter()
            .any(|a| a.json["kind"] == "stall"),
        "{:?}",
        tracer
            .seen("alert")
            .iter()
            .map(|a| &a.json)
            .collect::<Vec<_>>()
    );
    println!("threads at the end: {}", end.json);
}
