//! Half-closed socket leaks, for real: servers that stop closing (a deadlocked JVM broker, a
//! Redis frozen with SIGSTOP), clients left waiting in FIN_WAIT2, sockets from before attach,
//! a veth path between two network namespaces, 100,000 sockets, and a surge of new clients.
//! The tracer's counts are compared with `ss -tanp` for the target's pid.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use tracer_tests::{
    Event, Netns, Process, TempDir, Tracer, VethPair, compile_c, compile_java, java, port_of,
    rss_kib, signal, ss_states, start_redis,
};

/// `--close-wait-after` for these tests.
const CLOSE_WAIT_AFTER: Duration = Duration::from_secs(3);
/// The alert must come within the threshold plus one report interval; the rest is slack for
/// the test's own reading of the stream.
const ALERT_SLACK: Duration = Duration::from_millis(1500);

/// The deadlocking Kafka-like JVM server (see tests/java/StuckBroker.java), its port, and the
/// temp dir holding its classes.
fn stuck_broker(name: &str, netns: Option<&Netns>) -> (Process, u16, TempDir) {
    let classes = TempDir::new(name);
    compile_java("StuckBroker", classes.path());
    let java = java(classes.path(), "StuckBroker");
    let mut command = match netns {
        Some(ns) => {
            let mut inside = ns.exec(Path::new("java"));
            inside.args(java.get_args());
            inside
        }
        None => java,
    };
    let broker = Process::spawn(&mut command);
    let (_, ready) = broker.expect_line("READY", Duration::from_secs(30));
    (broker, port_of(&ready), classes)
}

fn connect(addr: &str, port: u16, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            TcpStream::connect((addr, port))
                .unwrap_or_else(|e| panic!("connect {addr}:{port}: {e}"))
        })
        .collect()
}

/// Waits until the tracer's `sockets` states equal `ss -tanp` for `pid` and equal `expected`;
/// panics with both after a few reports. Nothing changes meanwhile in the callers' scenarios,
/// so a mismatch that persists is a real one.
fn assert_states(tracer: &Tracer, pid: u32, netns: Option<&Netns>, expected: &[(&str, u64)]) {
    let expected: std::collections::BTreeMap<String, u64> =
        expected.iter().map(|&(s, n)| (s.to_owned(), n)).collect();
    let mut last = None;
    for _ in 0..5 {
        let ss = ss_states(pid, netns);
        let reported = tracer.states_after(Instant::now());
        if reported == ss && ss == expected {
            return;
        }
        last = Some((reported, ss));
    }
    let (reported, ss) = last.expect("compared");
    panic!("tracer {reported:?}, ss {ss:?}, expected {expected:?}");
}

/// The first `alert` of `kind`, checking on the way that every `sockets` report matches `ss`.
fn expect_alert(tracer: &Tracer, kind: &str, pid: u32, netns: Option<&Netns>) -> Event {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "no {kind} alert within 30 s");
        let event = tracer.next(Duration::from_secs(5)).expect("tracer running");
        match event.kind() {
            "alert" if event.json["kind"] == kind => return event,
            "alert" => panic!("unexpected alert {}", event.json),
            "sockets" => {
                assert_eq!(
                    event.states(),
                    ss_states(pid, netns),
                    "a sampled report differs from ss"
                );
            }
            _ => {}
        }
    }
}

/// Checks a leak alert (`close_wait_leak` or `fin_wait2_pileup`) against the `total` sockets
/// that leaked, all from `peers`. The alert is a snapshot of the first report in which sockets
/// were old enough, and sockets closed a few milliseconds apart may straddle it: it counts from
/// one to all of them, its peers add up to its count, and the next reports count them all.
fn assert_leak(tracer: &Tracer, alert: &Event, total: u64, peers: &[&str], field: &str) {
    let count = alert.u64("count");
    assert!((1..=total).contains(&count), "{}", alert.json);
    let listed: u64 = alert.json["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .map(|p| p["count"].as_u64().expect("count"))
        .sum();
    assert_eq!(listed, count, "peers add up: {}", alert.json);
    for peer in alert.json["peers"].as_array().expect("peers") {
        assert!(
            peers.contains(&peer["addr"].as_str().expect("addr")),
            "unexpected peer in {}",
            alert.json
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let report = tracer.after("sockets", Instant::now());
        if report.json[field] == total {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{field} never reached {total}: {}",
            report.json
        );
    }
}

fn peer_count(alert: &Event, addr: &str) -> u64 {
    alert.json["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .filter(|p| p["addr"] == addr)
        .map(|p| p["count"].as_u64().expect("count"))
        .sum()
}

#[test]
fn a_deadlocked_jvm_broker_leaks_close_wait_and_recovers() {
    deadlocked_jvm_broker(&[]);
}

/// The same broker watched from /proc samples: the same counts once sampled, the alert one
/// sample to see the sockets and one to report them later at most.
#[test]
fn a_deadlocked_jvm_broker_leaks_close_wait_and_recovers_in_proc_mode() {
    deadlocked_jvm_broker(&["--mode", "proc"]);
}

/// How often proc mode samples (`procmode::SAMPLE_INTERVAL`).
const PROC_SAMPLE: Duration = Duration::from_secs(1);

/// A deadlocking JVM broker whose 25 clients close: CLOSE_WAIT leak, then its recovery,
/// watched with `mode` (an empty slice: eBPF, where every report must match `ss`).
fn deadlocked_jvm_broker(mode: &[&str]) {
    let (mut broker, port, _classes) = stuck_broker("stuck-broker", None);
    let tracer = Tracer::attach(broker.pid, &[&["--close-wait-after", "3s"], mode].concat());
    let sampled = if mode.is_empty() {
        Duration::ZERO
    } else {
        2 * PROC_SAMPLE
    };
    // IPv4 clients land on the JVM's dual-stack listener as IPv4-mapped IPv6; some use ::1.
    let mut clients = connect("127.0.0.1", port, 20);
    clients.extend(connect("::1", port, 5));
    broker.expect_line("ACCEPTED 25", Duration::from_secs(10));
    assert_states(
        &tracer,
        broker.pid,
        None,
        &[("ESTABLISHED", 25), ("LISTEN", 1)],
    );

    drop(clients);
    let closed_at = Instant::now();
    let alert = if sampled.is_zero() {
        expect_alert(&tracer, "close_wait_leak", broker.pid, None)
    } else {
        // Between two samples a report lags ss: only the alert is checked on the way.
        tracer.expect_kind("alert", "close_wait_leak", Duration::from_secs(30))
    };
    let delay = alert.at - closed_at;
    assert!(
        delay <= CLOSE_WAIT_AFTER + Duration::from_secs(1) + sampled + ALERT_SLACK,
        "alert after {delay:?}"
    );
    assert!(
        delay >= CLOSE_WAIT_AFTER,
        "alert before the threshold: {delay:?}"
    );
    assert_leak(
        &tracer,
        &alert,
        25,
        &["::ffff:127.0.0.1", "::1"],
        "close_wait_leaked",
    );
    assert!(
        alert.json["message"]
            .as_str()
            .expect("message")
            .contains("jstack")
    );
    assert_states(
        &tracer,
        broker.pid,
        None,
        &[("CLOSE_WAIT", 25), ("LISTEN", 1)],
    );

    broker.send("RELEASE");
    broker.expect_line("CLOSED 25", Duration::from_secs(10));
    let resolved = tracer.expect("alert_resolved", Duration::from_secs(5));
    assert_eq!(resolved.json["kind"], "close_wait_leak");
    assert_states(&tracer, broker.pid, None, &[("LISTEN", 1)]);
}

#[test]
fn a_redis_frozen_with_sigstop_leaks_close_wait_and_recovers() {
    let dir = TempDir::new("redis");
    let (redis, port) = start_redis(&dir);
    // The probe connection above is closed by Redis at once; wait for it to go.
    thread::sleep(Duration::from_millis(300));
    let tracer = Tracer::attach(redis.pid, &["--close-wait-after", "3s"]);
    let mut clients = connect("127.0.0.1", port, 30);
    for client in &mut clients {
        client.write_all(b"PING\r\n").expect("ping");
        let mut pong = [0; 7];
        client.read_exact(&mut pong).expect("pong");
    }
    assert_states(
        &tracer,
        redis.pid,
        None,
        &[("ESTABLISHED", 30), ("LISTEN", 1)],
    );

    let pid = i32::try_from(redis.pid).expect("pid");
    // SAFETY: signals to a child we spawned.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    drop(clients);
    let closed_at = Instant::now();
    let alert = expect_alert(&tracer, "close_wait_leak", redis.pid, None);
    let delay = alert.at - closed_at;
    assert!(
        delay <= CLOSE_WAIT_AFTER + Duration::from_secs(1) + ALERT_SLACK,
        "alert after {delay:?}"
    );
    assert_leak(&tracer, &alert, 30, &["127.0.0.1"], "close_wait_leaked");
    assert_states(
        &tracer,
        redis.pid,
        None,
        &[("CLOSE_WAIT", 30), ("LISTEN", 1)],
    );

    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let resolved = tracer.expect("alert_resolved", Duration::from_secs(5));
    assert_eq!(resolved.json["kind"], "close_wait_leak");
    assert_states(&tracer, redis.pid, None, &[("LISTEN", 1)]);
}

#[test]
fn sockets_from_before_attach_are_followed() {
    let (broker, port, _classes) = stuck_broker("before-attach", None);
    let clients = connect("127.0.0.1", port, 10);
    broker.expect_line("ACCEPTED 10", Duration::from_secs(10));
    let tracer = Tracer::attach(broker.pid, &["--close-wait-after", "3s"]);
    assert_states(
        &tracer,
        broker.pid,
        None,
        &[("ESTABLISHED", 10), ("LISTEN", 1)],
    );
    drop(clients);
    let alert = expect_alert(&tracer, "close_wait_leak", broker.pid, None);
    assert_leak(
        &tracer,
        &alert,
        10,
        &["::ffff:127.0.0.1"],
        "close_wait_leaked",
    );
    assert_states(
        &tracer,
        broker.pid,
        None,
        &[("CLOSE_WAIT", 10), ("LISTEN", 1)],
    );
    // The sockets were adopted at their first transition: the new states came as events.
    let transitions = tracer.seen("tcp_state");
    assert_eq!(
        transitions
            .iter()
            .filter(|e| e.json["new"] == "CLOSE_WAIT")
            .count(),
        10,
        "one tcp_state per socket"
    );
}

#[test]
fn a_client_left_waiting_in_fin_wait2() {
    let dir = TempDir::new("fin-wait2");
    let halfclose = compile_c("halfclose", dir.path());
    let server = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = server.local_addr().expect("addr").port();
    let accepted = thread::spawn(move || {
        // The peer that never closes: holds every connection until the test drops them.
        (0..24)
            .map(|_| server.accept().expect("accept").0)
            .collect::<Vec<_>>()
    });
    let mut client =
        Process::spawn(Command::new(&halfclose).args(["127.0.0.1", &port.to_string(), "24"]));
    client.expect_line("READY", Duration::from_secs(10));
    let peers = accepted.join().expect("server thread");
    let tracer = Tracer::attach(
        client.pid,
        &["--fin-wait2-after", "2s", "--fin-wait2-min", "20"],
    );
    assert_states(&tracer, client.pid, None, &[("ESTABLISHED", 24)]);

    // shutdown(SHUT_WR): the fds stay open, so ss shows FIN-WAIT-2 with the pid, for as long
    // as the peers do not close their side.
    client.send("SHUTDOWN");
    client.expect_line("SHUTDOWN 24", Duration::from_secs(5));
    let alert = expect_alert(&tracer, "fin_wait2_pileup", client.pid, None);
    // It fires once at least --fin-wait2-min (20) of the 24 are old enough.
    assert!(alert.u64("count") >= 20, "{}", alert.json);
    assert_eq!(
        peer_count(&alert, "127.0.0.1"),
        alert.u64("count"),
        "{}",
        alert.json
    );
    assert_states(&tracer, client.pid, None, &[("FIN_WAIT2", 24)]);

    // The peers finally close: the client's sockets are done (their TIME_WAIT belongs to no
    // process), and the pile-up resolves.
    drop(peers);
    let resolved = tracer.after("alert_resolved", Instant::now());
    assert_eq!(resolved.json["kind"], "fin_wait2_pileup");
    assert_states(&tracer, client.pid, None, &[]);
}

#[test]
fn across_a_veth_between_network_namespaces() {
    let net = VethPair::new();
    let (broker, port, _classes) = stuck_broker("veth", Some(&net.a));
    let tracer = Tracer::attach(broker.pid, &["--close-wait-after", "3s"]);
    let dir = TempDir::new("veth-client");
    let halfclose = compile_c("halfclose", dir.path());
    let mut client =
        Process::spawn(
            net.b
                .exec(&halfclose)
                .args([VethPair::A_ADDR, &port.to_string(), "15"]),
        );
    client.expect_line("READY", Duration::from_secs(10));
    broker.expect_line("ACCEPTED 15", Duration::from_secs(10));
    assert_states(
        &tracer,
        broker.pid,
        Some(&net.a),
        &[("ESTABLISHED", 15), ("LISTEN", 1)],
    );
    client.send("CLOSE");
    let alert = expect_alert(&tracer, "close_wait_leak", broker.pid, Some(&net.a));
    assert_leak(
        &tracer,
        &alert,
        15,
        &[&format!("::ffff:{}", VethPair::B_ADDR)],
        "close_wait_leaked",
    );
    assert_states(
        &tracer,
        broker.pid,
        Some(&net.a),
        &[("CLOSE_WAIT", 15), ("LISTEN", 1)],
    );
}

/// Runs the acceptor (a server that keeps every connection) and returns it with its port.
fn acceptor(dir: &TempDir) -> (Process, u16) {
    let binary = compile_c("acceptor", dir.path());
    let server = Process::spawn(Command::new(&binary).arg("0"));
    let (_, ready) = server.expect_line("READY", Duration::from_secs(5));
    (server, port_of(&ready))
}

#[test]
fn a_hundred_thousand_sockets_stay_exact_and_bounded() {
    // A process can hold more sockets than its open-files limit (20,000 on these machines)
    // in its accept queue: 100,000 connections it never accepts, in a network namespace of
    // the test's own where the queue may be that long.
    const CLIENTS: usize = 6;
    const PER_CLIENT: usize = 16_667;
    let net = Netns::new("100k");
    net.sysctl("net.core.somaxconn", "262144");
    net.sysctl("net.ipv4.tcp_max_syn_backlog", "262144");
    let dir = TempDir::new("100k");
    let binary = compile_c("acceptor", dir.path());
    let server = Process::spawn(net.exec(&binary).args(["0", "--no-accept"]));
    let (_, ready) = server.expect_line("READY", Duration::from_secs(5));
    let port = port_of(&ready).to_string();
    let tracer = Tracer::attach(server.pid, &[]);
    let halfclose = compile_c("halfclose", dir.path());
    // Each client to another loopback address, so that each has the whole ephemeral port range.
    let clients: Vec<Process> = (1..=CLIENTS)
        .map(|i| {
            Process::spawn(net.exec(&halfclose).args([
                &format!("127.0.0.{i}"),
                &port,
                &PER_CLIENT.to_string(),
            ]))
        })
        .collect();
    for client in &clients {
        client.expect_line("READY", Duration::from_mins(2));
    }
    let total = (CLIENTS * PER_CLIENT) as u64;
    let queued = ss_queued(&net, &port);
    assert_eq!(
        queued, total,
        "ss shows every connection in the accept queue"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        let report = tracer.after("sockets", Instant::now());
        if report.json["accept_queue"]["ESTABLISHED"] == total || Instant::now() > deadline {
            break report;
        }
    };
    assert_eq!(
        report.json["accept_queue"]["ESTABLISHED"], total,
        "{}",
        report.json
    );
    assert_eq!(report.json["states"]["LISTEN"], 1, "{}", report.json);
    // Records the ring could not hold (a busy machine) are healed by a resync: the counts
    // above are exact either way.
    println!(
        "records lost on the way: {} (healed by a resync)",
        report.json["events_lost"]
    );
    assert_eq!(report.json["untracked"], 0, "{}", report.json);
    let rss = rss_kib(tracer.process.pid);
    println!("tracer RSS with {total} sockets: {rss} KiB");
    assert!(
        rss < 256 * 1024,
        "tracer RSS {rss} KiB with {total} sockets"
    );
}

/// Connections waiting in the accept queue of local port `port`: ESTABLISHED, no process.
fn ss_queued(net: &Netns, port: &str) -> u64 {
    let out = net
        .exec(Path::new("ss"))
        .args([
            "-tanH",
            "state",
            "established",
            "sport",
            &format!("= :{port}"),
        ])
        .output()
        .expect("ss");
    String::from_utf8_lossy(&out.stdout).lines().count() as u64
}

#[test]
fn sockets_beyond_max_sockets_are_counted_not_lost_silently() {
    let dir = TempDir::new("max-sockets");
    let (server, port) = acceptor(&dir);
    let tracer = Tracer::attach(server.pid, &["--max-sockets", "200"]);
    let clients = connect("127.0.0.1", port, 500);
    server.expect_line("ACCEPTED 500", Duration::from_secs(10));
    let report = tracer.after("sockets", Instant::now() + Duration::from_millis(200));
    let untracked = report.json["untracked"].as_u64().expect("untracked");
    let reported = report.json["states"]["ESTABLISHED"]
        .as_u64()
        .expect("count");
    assert!(untracked >= 300, "{}", report.json);
    assert!(reported <= 200, "{}", report.json);
    drop(clients);
    // Still alive and reporting.
    tracer.after("sockets", Instant::now());
}

#[test]
fn a_surge_of_new_connections_against_the_baseline() {
    let dir = TempDir::new("surge");
    let (server, port) = acceptor(&dir);
    let tracer = Tracer::attach(server.pid, &["--surge-min", "50"]);
    let mut clients = Vec::new();
    // The usual: two new clients a second for 42 s (the baseline needs 30 s of history
    // before the last 10 s).
    for _ in 0..84 {
        clients.extend(connect("127.0.0.1", port, 1));
        thread::sleep(Duration::from_millis(500));
    }
    let surge_at = Instant::now();
    clients.extend(connect("127.0.0.1", port, 1500));
    // The clients never close, so the fd count climbs too: its own alert may come first.
    let alert = loop {
        let alert = tracer.after("alert", surge_at);
        if alert.json["kind"] == "connection_surge" {
            break alert;
        }
    };
    assert!(
        alert.json["new_connections_per_second"]
            .as_f64()
            .expect("rate")
            >= 50.0
    );
    // The first report inside the burst may see part of it.
    assert!(peer_count(&alert, "127.0.0.1") >= 500, "{}", alert.json);
    loop {
        let resolved = tracer.after("alert_resolved", surge_at);
        if resolved.json["kind"] == "connection_surge" {
            break;
        }
    }
}

#[test]
fn counts_heal_within_seconds_after_the_ring_overflows() {
    // The scenario: a server accepting on two ports, one closing on EOF, one never
    // closing; the tracer stopped while 20,000 connections churn, far more records than
    // the ring buffer holds, then 200 left open and 50 closed on the never-closing port.
    const CHURN: usize = 20_000;
    let dir = TempDir::new("resync");
    let binary = compile_c("twoports", dir.path());
    let server = Process::spawn(&mut Command::new(&binary));
    let (_, ready) = server.expect_line("READY", Duration::from_secs(5));
    let port = port_of(&ready);
    let keep: u16 = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("keep="))
        .and_then(|p| p.parse().ok())
        .expect("keep port");
    let tracer = Tracer::attach(server.pid, &[]);
    tracer.after("sockets", Instant::now());
    signal(tracer.process.pid, libc::SIGSTOP);
    for _ in 0..CHURN {
        drop(TcpStream::connect(("127.0.0.1", port)).expect("connect"));
    }
    server.expect_line(&format!("CLOSED {CHURN}"), Duration::from_mins(1));
    let mut kept = connect("127.0.0.1", keep, 250);
    kept.truncate(200);
    server.expect_line("KEPT 250", Duration::from_secs(10));
    let resumed = Instant::now();
    signal(tracer.process.pid, libc::SIGCONT);
    let expected: std::collections::BTreeMap<String, u64> =
        [("CLOSE_WAIT", 50), ("ESTABLISHED", 200), ("LISTEN", 2)]
            .into_iter()
            .map(|(s, n)| (s.to_owned(), n))
            .collect();
    let report = loop {
        let report = tracer.after("sockets", Instant::now());
        let ss = ss_states(server.pid, None);
        assert_eq!(ss, expected, "ss itself");
        if report.states() == expected {
            break report;
        }
        assert!(
            resumed.elapsed() < Duration::from_secs(10),
            "10 s after resuming: tracer {:?}, ss {ss:?}",
            report.states()
        );
    };
    assert!(
        report.u64("events_lost") > 0,
        "the ring overflowed: {}",
        report.json
    );
    let resyncs = tracer.seen("resynced");
    let resync = resyncs
        .iter()
        .find(|e| e.json["table"] == "sockets" && e.json["reason"] == "records_lost")
        .unwrap_or_else(|| panic!("no resynced event: {resyncs:?}"));
    assert!(resync.u64("corrected") > 0, "{}", resync.json);
    assert_eq!(resync.json["after"]["CLOSE_WAIT"], 50, "{}", resync.json);
    drop(kept);
}

#[test]
fn listeners_sharing_a_port_and_a_stranger_beside_them() {
    listeners_sharing_a_port(&[]);
}

/// Proc mode tells the twins apart by their inodes: keyed by addresses alone, every sample
/// found one "new" listener and the count grew by one a second.
#[test]
fn listeners_sharing_a_port_and_a_stranger_beside_them_in_proc_mode() {
    listeners_sharing_a_port(&["--mode", "proc"]);
}

/// The target listens on one port with two IPv4 sockets (SO_REUSEPORT) and an IPv6 one; the
/// test itself, a stranger, listens on the same port at another address. Watched with `mode`.
fn listeners_sharing_a_port(mode: &[&str]) {
    let dir = TempDir::new("listeners");
    let binary = compile_c("listeners", dir.path());
    let mut server = Process::spawn(&mut Command::new(&binary));
    let (_, ready) = server.expect_line("READY", Duration::from_secs(5));
    let port = port_of(&ready);
    let stranger = TcpListener::bind(("127.0.0.2", port)).expect("bind the stranger");
    let tracer = Tracer::attach(server.pid, mode);
    let theirs = connect("127.0.0.2", port, 7);
    let held: Vec<TcpStream> = (0..7)
        .map(|_| stranger.accept().expect("accept").0)
        .collect();
    let mut ours = connect("127.0.0.1", port, 10);
    ours.extend(connect("::1", port, 10));
    server.expect_line("ACCEPTED 20", Duration::from_secs(10));
    assert_states(
        &tracer,
        server.pid,
        None,
        &[("ESTABLISHED", 20), ("LISTEN", 3)],
    );
    // One of the twins closes; the other keeps the port, and what arrives is still its.
    server.send("CLOSE");
    server.expect_line("CLOSED", Duration::from_secs(5));
    ours.extend(connect("127.0.0.1", port, 10));
    server.expect_line("ACCEPTED 30", Duration::from_secs(10));
    assert_states(
        &tracer,
        server.pid,
        None,
        &[("ESTABLISHED", 30), ("LISTEN", 2)],
    );
    let report = tracer.after("sockets", Instant::now());
    assert_eq!(
        report.json["accept_queue"],
        serde_json::json!({}),
        "{}",
        report.json
    );
    drop((theirs, held, ours));
}
