//! `tracer agent`: re-attach across restarts, /metrics checked by promtool and against /proc,
//! /events through `curl -N`, a slow client, the webhook, bad config, a busy port, least
//! privilege, a container's pid namespace, a compressed soak of target churn, and several
//! targets on one loaded object.

#![expect(
    clippy::float_cmp,
    reason = "the metric samples compared are whole counts, exact in f64"
)]

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tracer_tests::{
    Event, Process, TempDir, compile_c, free_port, http_get, maps_count, proc_status,
    programs_held, programs_unloaded, rss_kib, ss_states, start_redis, tracer_bin,
    wait_for_listener,
};

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms")
}

/// A running `tracer agent`, its NDJSON stdout parsed.
struct Agent {
    process: Process,
    port: u16,
}

impl Agent {
    fn start(args: &[&str]) -> Self {
        let port = free_port();
        let mut command = Command::new(tracer_bin());
        command
            .args(["agent", "--listen", &format!("127.0.0.1:{port}")])
            .args(args);
        let agent = Self {
            process: Process::spawn(&mut command),
            port,
        };
        wait_for_listener(port, "the agent");
        agent
    }

    /// The next event of type `kind` on stdout.
    fn expect(&self, kind: &str, timeout: Duration) -> Event {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {kind} event from the agent within {timeout:?}"
            );
            let (at, line) = self.process.next_line(left).expect("agent running");
            let event = Event {
                at,
                json: serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line}")),
            };
            if event.kind() == kind {
                return event;
            }
        }
    }

    fn get(&self, path: &str) -> String {
        http_get(self.port, path)
    }

    /// Samples of /metrics: (name with labels, value).
    fn metrics(&self) -> BTreeMap<String, f64> {
        self.get("/metrics")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect()
    }
}

/// A copy of the acceptor (a server that keeps every connection) under a name of the test's
/// own, so that `--match` finds only it.
fn marked_acceptor(dir: &TempDir, name: &str) -> PathBuf {
    let built = compile_c("acceptor", dir.path());
    let marked = dir.path().join(name);
    std::fs::rename(&built, &marked).expect("rename");
    marked
}

fn start_acceptor(binary: &Path) -> (Process, u16) {
    let server = Process::spawn(Command::new(binary).arg("0"));
    let (_, ready) = server.expect_line("READY", Duration::from_secs(5));
    let port = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("port="))
        .and_then(|p| p.parse().ok())
        .expect("port");
    (server, port)
}

#[test]
fn a_restarted_target_is_reattached_within_a_second() {
    let dir = TempDir::new("agent-restart");
    let marker = format!("broker-{}", std::process::id());
    let binary = marked_acceptor(&dir, &marker);
    let agent = Agent::start(&["--match", &format!("broker={marker}")]);
    let (mut server, _) = start_acceptor(&binary);
    let attached = agent.expect("target_attached", Duration::from_secs(5));
    assert_eq!(attached.u64("pid"), u64::from(server.pid));
    for restart in 0..3 {
        drop(server);
        let exit = agent.expect("target_exit", Duration::from_secs(5));
        let spawned_ms = now_ms();
        let (next, _) = start_acceptor(&binary);
        server = next;
        let attached = agent.expect("target_attached", Duration::from_secs(5));
        assert_eq!(
            attached.u64("pid"),
            u64::from(server.pid),
            "restart {restart}"
        );
        assert!(
            attached.json["cmdline"]
                .as_str()
                .expect("cmdline")
                .contains(&marker)
        );
        let took = attached.u64("ts").saturating_sub(spawned_ms);
        println!(
            "restart {restart}: exit {}, re-attached {took} ms after the new process started",
            exit.json
        );
        assert!(took < 1000, "re-attached {took} ms after the restart");
        // Only the live pid has series.
        agent.expect("vma", Duration::from_secs(5));
        let metrics = agent.metrics();
        let pids: Vec<&String> = metrics
            .keys()
            .filter(|k| k.starts_with("tracer_vma_count{"))
            .collect();
        assert_eq!(
            pids,
            [&format!(
                "tracer_vma_count{{target=\"broker\",pid=\"{}\"}}",
                server.pid
            )]
        );
        assert_eq!(metrics["tracer_targets"], 1.0);
    }
}

/// An acceptor with `clients` connected to it, which stay open while the pair lives.
fn acceptor_with_clients(binary: &Path, clients: usize) -> (Process, Vec<TcpStream>) {
    let (server, port) = start_acceptor(binary);
    let connected: Vec<TcpStream> = (0..clients)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    server.expect_line(&format!("ACCEPTED {clients}"), Duration::from_secs(5));
    (server, connected)
}

/// Waits until the agent's metrics for `pid` equal the kernel's: its VMA count (/proc/PID/maps),
/// threads (/proc/PID/status) and socket states (`ss`); panics with the difference otherwise.
fn matches_the_kernel(agent: &Agent, name: &str, pid: u32) {
    let labels = format!("target=\"{name}\",pid=\"{pid}\"");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = agent.metrics();
        let ss = ss_states(pid, None);
        let mut ours = BTreeMap::new();
        let mut kernel = BTreeMap::new();
        for state in ["ESTABLISHED", "LISTEN", "CLOSE_WAIT", "SYN_RECV"] {
            let key = format!("tracer_tcp_sockets{{{labels},state=\"{state}\"}}");
            ours.insert(state.to_owned(), metrics.get(&key).copied());
            kernel.insert(
                state.to_owned(),
                Some(ss.get(state).copied().unwrap_or(0) as f64),
            );
        }
        ours.insert(
            "vma".to_owned(),
            metrics
                .get(&format!("tracer_vma_count{{{labels}}}"))
                .copied(),
        );
        kernel.insert("vma".to_owned(), maps_count(pid).map(f64::from));
        ours.insert(
            "threads".to_owned(),
            metrics.get(&format!("tracer_threads{{{labels}}}")).copied(),
        );
        kernel.insert(
            "threads".to_owned(),
            Some(proc_status(pid, "Threads") as f64),
        );
        if ours == kernel {
            println!("pid {pid}: {ours:?}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid}: the agent says {ours:?}, the kernel {kernel:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn several_targets_share_one_object_and_keep_their_own_counts() {
    let dir = TempDir::new("agent-fleet");
    let marker = format!("fleet-{}", std::process::id());
    let binary = marked_acceptor(&dir, &marker);
    let mut fleet: Vec<(Process, Vec<TcpStream>)> = [2, 5, 9]
        .into_iter()
        .map(|clients| acceptor_with_clients(&binary, clients))
        .collect();
    let agent = Agent::start(&["--match", &format!("fleet={marker}")]);
    for _ in 0..fleet.len() {
        agent.expect("target_attached", Duration::from_secs(5));
    }
    for (server, _) in &fleet {
        matches_the_kernel(&agent, "fleet", server.pid);
    }
    // One copy of each program for all three: a target more is no program run more.
    let held = programs_held(agent.process.pid);
    let mut unique = held.clone();
    unique.dedup();
    assert_eq!(held, unique, "programs loaded more than once: {held:?}");
    assert!(held.iter().any(|p| p == "tracer_tcpstate"), "{held:?}");

    // One goes; another comes (and may be given the index the first had): every count stays
    // its own target's.
    let (gone, _) = fleet.remove(1);
    let gone_pid = gone.pid;
    drop(gone);
    let exit = agent.expect("target_exit", Duration::from_secs(5));
    assert_eq!(exit.u64("pid"), u64::from(gone_pid));
    fleet.push(acceptor_with_clients(&binary, 4));
    // While every `--match` has a process, /proc is scanned every 5 s.
    agent.expect("target_attached", Duration::from_secs(10));
    let (first, clients) = &mut fleet[0];
    let extra = TcpStream::connect(
        clients[0]
            .peer_addr()
            .expect("the first acceptor's address"),
    )
    .expect("connect");
    first.expect_line("ACCEPTED 3", Duration::from_secs(5));
    clients.push(extra);
    for (server, _) in &fleet {
        matches_the_kernel(&agent, "fleet", server.pid);
    }
    assert_eq!(agent.metrics()["tracer_targets"], 3.0);
    assert_eq!(programs_held(agent.process.pid), held);
}

#[test]
fn metrics_pass_promtool_and_match_the_kernel() {
    let dir = TempDir::new("agent-metrics");
    let (server, port) = start_acceptor(&compile_c("acceptor", dir.path()));
    let clients: Vec<TcpStream> = (0..7)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    server.expect_line("ACCEPTED 7", Duration::from_secs(5));
    let agent = Agent::start(&["--pid", &server.pid.to_string()]);
    agent.expect("sockets", Duration::from_secs(5));
    agent.expect("vma", Duration::from_secs(5));
    let text = agent.get("/metrics");

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (cargo xtask setup installs it)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let checked = promtool.wait_with_output().expect("promtool");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    // Exit 1 is a parse error; 3 is lint advice. Two kinds of advice are expected: the issue
    // names the metric tracer_vma_count, and the OpenMetrics text puts a counter's HELP on
    // its name without _total, which promtool reads as the classic format.
    assert_ne!(
        checked.status.code(),
        Some(1),
        "promtool could not parse /metrics: {report}"
    );
    for line in report.lines() {
        let expected = line.contains("tracer_vma_count non-histogram")
            || (line.contains("_total no help text")
                && text.contains(&format!(
                    "# HELP {} ",
                    line.split("_total").next().unwrap_or_default()
                )));
        assert!(expected, "promtool: {line}");
    }

    let metrics = agent.metrics();
    let labels = format!("target=\"acceptor\",pid=\"{}\"", server.pid);
    let vma = metrics[&format!("tracer_vma_count{{{labels}}}")];
    assert_eq!(
        vma,
        f64::from(maps_count(server.pid).expect("alive")),
        "against /proc/PID/maps"
    );
    let limit: f64 = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .expect("sysctl")
        .trim()
        .parse()
        .expect("number");
    assert_eq!(metrics[&format!("tracer_vma_limit{{{labels}}}")], limit);
    let ss = ss_states(server.pid, None);
    for (state, n) in [("ESTABLISHED", 7.0), ("LISTEN", 1.0), ("CLOSE_WAIT", 0.0)] {
        assert_eq!(
            metrics[&format!("tracer_tcp_sockets{{{labels},state=\"{state}\"}}")],
            n,
            "{state}"
        );
        assert_eq!(ss.get(state).copied().unwrap_or(0) as f64, n, "ss {state}");
    }
    assert!(metrics["tracer_agent_resident_memory_bytes"] > 0.0);
    assert!(metrics.contains_key("tracer_agent_cpu_seconds_total"));
    // Counters of the target as a whole (no pid), so that a restart does not reset them.
    assert_eq!(
        metrics["tracer_events_lost_total{target=\"acceptor\",ring=\"vma\"}"],
        0.0
    );
    assert_eq!(
        metrics["tracer_tcp_untracked_sockets_total{target=\"acceptor\"}"],
        0.0
    );
    for name in ["tracer_events_lost", "tracer_tcp_untracked_sockets"] {
        assert!(text.contains(&format!("# TYPE {name} counter")), "{text}");
    }
    drop(clients);
    assert_eq!(agent.get("/healthz"), "ok\n");
}

#[test]
fn events_stream_through_curl() {
    let dir = TempDir::new("agent-curl");
    let (server, _) = start_acceptor(&compile_c("acceptor", dir.path()));
    let agent = Agent::start(&["--pid", &server.pid.to_string(), "--quiet"]);
    let url = format!("http://127.0.0.1:{}/events", agent.port);
    let ndjson = Process::spawn(Command::new("curl").args(["-sN", &url]));
    let sse =
        Process::spawn(Command::new("curl").args(["-sN", "-H", "Accept: text/event-stream", &url]));
    let (_, line) = ndjson.expect_line("{\"type\":\"vma\"", Duration::from_secs(5));
    assert!(
        serde_json::from_str::<serde_json::Value>(&line).is_ok(),
        "{line}"
    );
    let (_, data) = sse.expect_line("data: {\"type\":\"vma\"", Duration::from_secs(5));
    assert!(
        serde_json::from_str::<serde_json::Value>(&data["data: ".len()..]).is_ok(),
        "{data}"
    );
    drop(server);
    ndjson.expect_line("{\"type\":\"target_exit\"", Duration::from_secs(5));
    sse.expect_line("data: {\"type\":\"target_exit\"", Duration::from_secs(5));
}

#[test]
fn a_slow_client_does_not_slow_the_agent() {
    let dir = TempDir::new("agent-slow");
    let (server, port) = start_redis(&dir);
    let agent = Agent::start(&["--pid", &server.pid.to_string(), "--events-idle", "3s"]);
    // A client that asks for the stream and never reads it.
    let mut stalled = TcpStream::connect(("127.0.0.1", agent.port)).expect("connect");
    write!(
        stalled,
        "GET /events?events=all HTTP/1.1\r\nHost: localhost\r\n\r\n"
    )
    .expect("request");
    // About 75,000 tcp_state events (five per connection): more than the stalled client's
    // socket buffers and queue can hold.
    let churn = thread::spawn(move || {
        for _ in 0..15 {
            let batch: Vec<TcpStream> = (0..1000)
                .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
                .collect();
            drop(batch);
            thread::sleep(Duration::from_millis(100));
        }
    });
    // Meanwhile the agent keeps its one-second rhythm on stdout.
    let mut last = agent.expect("vma", Duration::from_secs(5)).at;
    let mut longest = Duration::ZERO;
    while !churn.is_finished() {
        let at = agent.expect("vma", Duration::from_secs(5)).at;
        longest = longest.max(at - last);
        last = at;
    }
    churn.join().expect("churn");
    println!("longest gap between vma events under load with a stalled client: {longest:?}");
    assert!(
        longest < Duration::from_secs(3),
        "the agent stalled for {longest:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = agent.metrics();
        let dropped = metrics
            .get("tracer_events_dropped_total{reason=\"slow_client\"}")
            .copied()
            .unwrap_or(0.0);
        if dropped > 0.0 {
            println!("events dropped for the stalled client: {dropped}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stalled client's drops are not counted: {metrics:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(agent.get("/healthz"), "ok\n");
    // It took nothing for --events-idle while lines waited: cut off, its place freed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = agent.metrics();
        if metrics.get("tracer_events_clients_refused_total{reason=\"idle\"}") == Some(&1.0) {
            assert_eq!(metrics["tracer_events_clients"], 0.0, "{metrics:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the idle client was not cut: {metrics:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut rest = Vec::new();
    match stalled.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
}

#[test]
fn events_clients_are_capped() {
    let target = Process::spawn(Command::new("sleep").arg("60"));
    let agent = Agent::start(&["--pid", &target.pid.to_string(), "--events-clients", "2"]);
    let url = format!("http://127.0.0.1:{}/events", agent.port);
    let clients: Vec<Process> = (0..2)
        .map(|_| Process::spawn(Command::new("curl").args(["-sN", &url])))
        .collect();
    for client in &clients {
        client.expect_line("{\"type\":\"vma\"", Duration::from_secs(5));
    }
    let refused = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &url])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&refused.stdout), "503");
    let metrics = agent.metrics();
    assert_eq!(metrics["tracer_events_clients"], 2.0, "{metrics:?}");
    assert_eq!(
        metrics["tracer_events_clients_refused_total{reason=\"limit\"}"], 1.0,
        "{metrics:?}"
    );
    // A client that leaves frees its place.
    drop(clients);
    let again = Process::spawn(Command::new("curl").args(["-sN", &url]));
    again.expect_line("{\"type\":\"vma\"", Duration::from_secs(5));
}

#[test]
fn a_client_that_leaves_a_quiet_stream_is_no_longer_counted() {
    let target = Process::spawn(Command::new("sleep").arg("60"));
    let agent = Agent::start(&["--pid", &target.pid.to_string()]);
    // Alerts only: no line is sent to it that would notice it has gone.
    let url = format!("http://127.0.0.1:{}/events?events=alerts", agent.port);
    let client = Process::spawn(Command::new("curl").args(["-sN", &url]));
    let counted = |n: f64| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let metrics = agent.metrics();
            if metrics["tracer_events_clients"] == n {
                return;
            }
            assert!(Instant::now() < deadline, "not {n} clients: {metrics:?}");
            thread::sleep(Duration::from_millis(100));
        }
    };
    counted(1.0);
    drop(client);
    counted(0.0);
}

/// A webhook receiver on loopback: answers each request (one per connection) with the next of
/// `statuses` (the last one repeated), and hands over every body it was sent.
struct Hook {
    port: u16,
    bodies: std::sync::mpsc::Receiver<String>,
}

impl Hook {
    fn start(statuses: &[&'static str]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let statuses = statuses.to_vec();
        let (tx, bodies) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for n in 0.. {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                let status = statuses[n.min(statuses.len() - 1)];
                let mut reader = BufReader::new(stream);
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = value.trim().parse().expect("length");
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let _ = write!(
                    reader.get_mut(),
                    "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                if tx.send(String::from_utf8(body).expect("utf-8")).is_err() {
                    return;
                }
            }
        });
        Self { port, bodies }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn next(&self, timeout: Duration) -> String {
        self.bodies
            .recv_timeout(timeout)
            .unwrap_or_else(|e| panic!("no webhook request within {timeout:?}: {e}"))
    }
}

/// An agent watching a process with a what-if limit just above its count (vma_exhaustion,
/// warning then critical, at once), its alerts posted to `webhook`; extra flags after.
fn alerting_agent(webhook: &str, extra: &[&str]) -> (Process, Agent) {
    let target = Process::spawn(Command::new("sleep").arg("60"));
    let limit = (maps_count(target.pid).expect("alive") + 1).to_string();
    let pid = target.pid.to_string();
    let flags = [
        &[
            "--pid",
            &pid,
            "--max-map-count",
            &limit,
            "--webhook",
            webhook,
        ][..],
        extra,
    ]
    .concat();
    let agent = Agent::start(&flags);
    (target, agent)
}

#[test]
fn alerts_reach_the_webhook_through_retries() {
    // The first delivery fails with 500, the next one succeeds.
    let hook = Hook::start(&["500 Internal Server Error", "200 OK"]);
    let (_target, agent) = alerting_agent(&hook.url(), &[]);
    agent.expect("alert", Duration::from_secs(5));
    let first = hook.next(Duration::from_secs(5));
    let second = hook.next(Duration::from_secs(5));
    assert_eq!(first, second, "the same alert, retried");
    let alert: serde_json::Value = serde_json::from_str(&second).expect("JSON");
    assert_eq!(alert["type"], "alert");
    assert_eq!(alert["kind"], "vma_exhaustion");
    assert_eq!(alert["severity"], "warning");
    // Then the critical one, in order, at the first try.
    let critical: serde_json::Value =
        serde_json::from_str(&hook.next(Duration::from_secs(5))).expect("JSON");
    assert_eq!(critical["severity"], "critical", "{critical}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while agent
        .metrics()
        .get("tracer_webhook_deliveries_total")
        .copied()
        != Some(2.0)
    {
        assert!(Instant::now() < deadline, "delivery not counted");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn refused_alerts_are_not_retried() {
    // 400: the webhook refuses the request; another try would be refused again.
    let hook = Hook::start(&["400 Bad Request", "200 OK"]);
    let (_target, agent) = alerting_agent(&hook.url(), &[]);
    let warning: serde_json::Value =
        serde_json::from_str(&hook.next(Duration::from_secs(5))).expect("JSON");
    let next: serde_json::Value =
        serde_json::from_str(&hook.next(Duration::from_secs(5))).expect("JSON");
    assert_eq!(warning["severity"], "warning", "{warning}");
    assert_eq!(
        next["severity"], "critical",
        "the next alert, not a retry: {next}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = agent.metrics();
        let failed = metrics["tracer_events_dropped_total{reason=\"webhook_failed\"}"];
        let delivered = metrics["tracer_webhook_deliveries_total"];
        if (failed, delivered) == (1.0, 1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "failed {failed}, delivered {delivered}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// An HTTPS webhook receiver whose certificate a private CA signed; returns it, its port and
/// the CA's PEM file.
fn https_hook(dir: &TempDir) -> (Process, u16, PathBuf) {
    let path = |name: &str| dir.path().join(name);
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "1",
                "-subj",
                "/CN=tracer test CA",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "hook.key",
                "-out",
                "hook.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    );
    std::fs::write(path("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("write");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "hook.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "hook.pem",
        "-days",
        "1",
        "-extfile",
        "san.ext",
    ]);
    let server = "import http.server, ssl, sys
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers['Content-Length']))
        self.send_response(200)
        self.send_header('Content-Length', '0')
        self.end_headers()
        print('BODY', body.decode(), flush=True)
    def log_message(self, *args):
        pass
httpd = http.server.HTTPServer(('127.0.0.1', 0), Hook)
tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
tls.load_cert_chain(sys.argv[1], sys.argv[2])
httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
print('READY', httpd.server_address[1], flush=True)
httpd.serve_forever()
";
    let hook = Process::spawn(
        Command::new("python3")
            .args(["-c", server])
            .arg(path("hook.pem"))
            .arg(path("hook.key")),
    );
    let (_, ready) = hook.expect_line("READY", Duration::from_secs(10));
    let port = ready["READY ".len()..].trim().parse().expect("port");
    (hook, port, path("ca.pem"))
}

#[test]
fn a_webhook_behind_a_private_ca() {
    let dir = TempDir::new("agent-ca");
    let (hook, hook_port, ca) = https_hook(&dir);
    let (_target, _agent) = alerting_agent(
        &format!("https://127.0.0.1:{hook_port}/hook"),
        &["--webhook-ca", ca.to_str().expect("utf-8")],
    );
    let (_, body) = hook.expect_line("BODY ", Duration::from_secs(10));
    let alert: serde_json::Value = serde_json::from_str(&body["BODY ".len()..]).expect("JSON");
    assert_eq!(alert["kind"], "vma_exhaustion", "{alert}");
}

#[test]
fn secrets_on_the_command_line_never_leave() {
    const SECRET: &str = "hunter2";
    let marker = format!("secret-broker-{}", std::process::id());
    // A failing first delivery makes the agent log the webhook's URL, which has a password.
    let hook = Hook::start(&["500 Internal Server Error", "200 OK"]);
    let webhook = format!(
        "http://oncall:{SECRET}@127.0.0.1:{}/hook/{SECRET}",
        hook.port
    );
    let port = free_port();
    let mut command = Command::new(tracer_bin());
    command
        .args(["-vv", "agent", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--match", &marker, "--webhook", &webhook])
        .args(["--max-map-count", "2"])
        .stderr(Stdio::piped());
    let mut agent = Process::spawn(&mut command);
    let mut stderr = agent.child.stderr.take().expect("piped stderr");
    let logs = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    wait_for_listener(port, "the agent");
    let events = Process::spawn(
        Command::new("curl").args(["-sN", &format!("http://127.0.0.1:{port}/events")]),
    );
    thread::sleep(Duration::from_millis(300));
    // As a broker started with KAFKA_OPTS and a JAAS --override looks in /proc/PID/cmdline.
    let jaas = format!(
        "sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username=\"admin\" password=\"{SECRET}\";"
    );
    let target = Process::spawn(Command::new("sh").args([
        "-c",
        "sleep 60; : $0",
        &marker,
        &format!("-Djavax.net.ssl.keyStorePassword={SECRET}"),
        "kafka.Kafka",
        "--override",
        &jaas,
    ]));
    let (_, attached) = agent.expect_line("{\"type\":\"target_attached\"", Duration::from_secs(10));
    let (_, streamed) =
        events.expect_line("{\"type\":\"target_attached\"", Duration::from_secs(10));
    let attached: serde_json::Value = serde_json::from_str(&attached).expect("JSON");
    assert_eq!(attached["pid"], target.pid, "{attached}");
    let cmdline = attached["cmdline"].as_str().expect("cmdline");
    assert!(
        cmdline.contains("-Djavax.net.ssl.keyStorePassword=********")
            && cmdline.contains("username=\"admin\" password=********"),
        "{cmdline}"
    );
    let alert = hook.next(Duration::from_secs(10));
    let retried = hook.next(Duration::from_secs(10));
    let mut seen = vec![streamed, alert, retried, http_get(port, "/metrics")];
    // Everything on stdout so far.
    while let Some((_, line)) = agent.try_line() {
        seen.push(line);
    }
    seen.push(attached.to_string());
    // SAFETY: a signal to a child we spawned.
    unsafe { libc::kill(i32::try_from(agent.pid).expect("pid"), libc::SIGTERM) };
    assert!(agent.wait(Duration::from_secs(5)).success());
    let logs = logs.join().expect("stderr");
    assert!(
        logs.contains("webhook http://oncall:********@127.0.0.1"),
        "{logs}"
    );
    seen.push(logs);
    for text in &seen {
        assert!(!text.contains(SECRET), "a secret left: {text}");
    }
}

/// Runs the agent to its end; returns its exit status and stderr.
fn agent_fails(args: &[&str]) -> (std::process::ExitStatus, String) {
    let out = Command::new(tracer_bin())
        .arg("agent")
        .args(args)
        .output()
        .expect("run agent");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_config_busy_port_and_open_listen_fail_cleanly() {
    let dir = TempDir::new("agent-bad");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "[[target]]\nmatch = 'kafka'\n\n[thresholds]\nclose_wait = \"5s\"\n",
    )
    .expect("write");
    let (status, stderr) = agent_fails(&["--config", config.to_str().expect("utf-8")]);
    assert!(!status.success());
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("line 5") && stderr.contains("close_wait"),
        "{stderr}"
    );

    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let (status, stderr) =
        agent_fails(&["--match", "kafka", "--listen", &format!("127.0.0.1:{port}")]);
    assert!(!status.success());
    assert!(
        stderr.contains("in use") && stderr.contains("--listen"),
        "{stderr}"
    );

    let (status, stderr) = agent_fails(&["--match", "kafka", "--listen", "0.0.0.0:0"]);
    assert!(!status.success());
    assert!(stderr.contains("--allow-remote"), "{stderr}");

    let (status, stderr) = agent_fails(&["--pid", "4000000"]);
    assert!(!status.success());
    assert!(stderr.contains("no process with pid 4000000"), "{stderr}");
    assert!(programs_unloaded("tracer_"));
}

#[test]
fn sigterm_detaches_cleanly() {
    let target = Process::spawn(Command::new("sleep").arg("60"));
    let mut agent = Agent::start(&["--pid", &target.pid.to_string()]);
    agent.expect("vma", Duration::from_secs(5));
    // SAFETY: a signal to a child we spawned.
    assert_eq!(
        unsafe {
            libc::kill(
                i32::try_from(agent.process.pid).expect("pid"),
                libc::SIGTERM,
            )
        },
        0
    );
    assert!(
        agent.process.wait(Duration::from_secs(5)).success(),
        "exit 0 on SIGTERM"
    );
    assert!(programs_unloaded("tracer_"));
}

#[test]
fn inside_a_container_pid_namespace() {
    // The agent and its target in a pid namespace of their own, with their own /proc, as in a
    // Kubernetes pod with shareProcessNamespace: the probes filter on the namespace's pids.
    let dir = TempDir::new("agent-pidns");
    let marker = format!("pod-broker-{}", std::process::id());
    let binary = marked_acceptor(&dir, &marker);
    let script = format!(
        "sleep 30 | {binary} 0 > /dev/null & exec {tracer} agent --match {marker} --listen 127.0.0.1:0 --duration 4",
        binary = binary.display(),
        tracer = tracer_bin().display()
    );
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "sh", "-c", &script])
        .output()
        .expect("unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    let attached = events
        .iter()
        .find(|e| e["type"] == "target_attached")
        .expect("attached");
    assert!(
        attached["pid"].as_u64().expect("pid") < 100,
        "a pid of the namespace: {attached}"
    );
    let vma = events
        .iter()
        .rev()
        .find(|e| e["type"] == "vma")
        .expect("vma");
    assert!(vma["map_count"].as_u64().expect("count") > 10, "{vma}");
    let sockets = events
        .iter()
        .rev()
        .find(|e| e["type"] == "sockets")
        .expect("sockets");
    assert_eq!(sockets["states"]["LISTEN"], 1, "{sockets}");
}

#[test]
fn memory_stays_flat_through_target_churn() {
    let dir = TempDir::new("agent-soak");
    let marker = format!("soak-broker-{}", std::process::id());
    let binary = marked_acceptor(&dir, &marker);
    let agent = Agent::start(&["--match", &marker, "--quiet"]);
    let mut rss_after = Vec::new();
    for cycle in 1..=40 {
        let (server, port) = start_acceptor(&binary);
        // Each incarnation serves a burst of connections: socket table churn too.
        let clients: Vec<TcpStream> = (0..300)
            .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
            .collect();
        thread::sleep(Duration::from_millis(700));
        drop(clients);
        drop(server);
        if cycle == 10 || cycle == 40 {
            thread::sleep(Duration::from_millis(500));
            rss_after.push(rss_kib(agent.process.pid));
        }
    }
    let metrics = agent.metrics();
    println!(
        "agent RSS after 10 restarts {} KiB, after 40 {} KiB; {metrics:?}",
        rss_after[0], rss_after[1]
    );
    assert!(
        metrics["tracer_target_attaches_total"] >= 35.0,
        "{metrics:?}"
    );
    assert!(
        rss_after[1] < rss_after[0] + 4096,
        "RSS grew from {} to {} KiB",
        rss_after[0],
        rss_after[1]
    );
    assert!(
        !metrics.keys().any(|k| k.starts_with("tracer_vma_count{"))
            || metrics["tracer_targets"] <= 1.0
    );
}

/// Every line `process` prints within `wait` (and those already waiting), as JSON.
fn lines_within(process: &Process, wait: Duration) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + wait;
    let mut lines = Vec::new();
    loop {
        match process.try_line() {
            // The blank line after each Server-Sent Event.
            Some((_, line)) if line.is_empty() => {}
            Some((_, line)) => lines.push(
                serde_json::from_str(line.trim_start_matches("data: "))
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line}")),
            ),
            None if Instant::now() >= deadline => return lines,
            None => thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn types(events: &[serde_json::Value]) -> std::collections::BTreeSet<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().expect("type").to_owned())
        .collect()
}

#[test]
fn the_firehose_is_a_choice() {
    let dir = TempDir::new("agent-events");
    let marker = format!("events-broker-{}", std::process::id());
    let binary = marked_acceptor(&dir, &marker);
    // A limit of 2 mappings: vma_exhaustion as soon as the target is attached.
    let agent = Agent::start(&["--match", &marker, "--max-map-count", "2"]);
    let url = format!("http://127.0.0.1:{}/events", agent.port);
    let default = Process::spawn(Command::new("curl").args(["-sN", &url]));
    let all = Process::spawn(Command::new("curl").args(["-sN", &format!("{url}?events=all")]));
    let alerts = Process::spawn(Command::new("curl").args([
        "-sN",
        "-H",
        "Accept: text/event-stream",
        &format!("{url}?events=alerts"),
    ]));
    let bad = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{url}?events=tcp"),
        ])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&bad.stdout), "400");
    thread::sleep(Duration::from_millis(300));
    let (_server, port) = start_acceptor(&binary);
    agent.expect("target_attached", Duration::from_secs(10));
    let clients: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    let wait = Duration::from_secs(3);
    let (all, default, alerts) = (
        types(&lines_within(&all, wait)),
        types(&lines_within(&default, Duration::ZERO)),
        types(&lines_within(&alerts, Duration::ZERO)),
    );
    assert!(
        all.contains("tcp_state") && all.contains("sockets") && all.contains("alert"),
        "{all:?}"
    );
    assert!(
        !default.contains("tcp_state") && default.contains("sockets") && default.contains("alert"),
        "what on-call needs, no transitions: {default:?}"
    );
    assert_eq!(
        alerts,
        ["alert", "target_attached"]
            .map(str::to_owned)
            .into_iter()
            .collect(),
        "only alerts, attach and exit"
    );
    // The agent's stdout follows --events (summary by default).
    let stdout = types(&lines_within(&agent.process, Duration::ZERO));
    assert!(
        !stdout.contains("tcp_state") && stdout.contains("sockets"),
        "{stdout:?}"
    );
    drop(clients);
}

#[test]
fn attach_json_keeps_every_transition_unless_told() {
    let dir = TempDir::new("attach-events");
    let (server, port) = start_acceptor(&compile_c("acceptor", dir.path()));
    for (flags, transitions) in [(&[][..], true), (&["--events", "summary"][..], false)] {
        let tracer =
            tracer_tests::Tracer::attach(server.pid, &[&["--duration", "3"][..], flags].concat());
        let clients: Vec<TcpStream> = (0..5)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
            .collect();
        let mut seen = Vec::new();
        while let Some(event) = tracer.next(Duration::from_secs(10)) {
            seen.push(event.json);
        }
        let seen = types(&seen);
        assert_eq!(
            seen.contains("tcp_state"),
            transitions,
            "{flags:?}: {seen:?}"
        );
        assert!(seen.contains("sockets"), "{flags:?}: {seen:?}");
        drop(clients);
    }
}

/// The state file of `--state-dir`: written at detach with the long trends' samples of the
/// count, read back by the next agent (the samples keep their first run's time), and a corrupt
/// file is ignored and replaced.
#[test]
fn state_dir_keeps_the_long_trends_across_agent_restarts() {
    let dir = TempDir::new("state-dir");
    let state = dir.path().join("forecast.json");
    let target = Process::spawn(Command::new("sleep").arg("67.25"));
    let run = || {
        let out = Command::new(tracer_bin())
            .args([
                "agent",
                "--listen",
                "127.0.0.1:0",
                "--quiet",
                "--duration",
                "3",
            ])
            .args(["--match", r"forecast=^sleep 67\.25$", "--state-dir"])
            .arg(dir.path())
            .output()
            .expect("run the agent");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&state).expect("a state file after detach");
        (
            serde_json::from_str::<serde_json::Value>(&text).expect("JSON"),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let started = now_ms();
    let (first, _) = run();
    assert_eq!(first["version"], 1, "{first}");
    let samples = first["vma"].as_array().expect("vma samples");
    assert_eq!(samples.len(), 2, "6 h and 7 d: {first}");
    let sample = &samples[0][0];
    let at = sample[0].as_u64().expect("ms");
    assert!(at >= started && at <= now_ms(), "{first}");
    assert_eq!(
        sample[1].as_f64(),
        maps_count(target.pid).map(f64::from),
        "{first}"
    );
    // The next agent restores them: the sample of the first run is still there. (It lives on
    // the monotonic clock in between, so its Unix time may come back a millisecond off.)
    let (second, _) = run();
    let restored = &second["vma"][0][0];
    assert_eq!(restored[1], sample[1], "{second}");
    let restored_at = restored[0].as_u64().expect("ms");
    assert!(restored_at.abs_diff(at) <= 2, "{second}");
    // A corrupt file is reported, ignored and replaced.
    std::fs::write(&state, b"{\"version\":1,").expect("corrupt it");
    let (third, log) = run();
    assert!(log.contains("is corrupt"), "{log}");
    assert_eq!(third["version"], 1, "{third}");
    let fresh_at = third["vma"][0][0][0].as_u64().expect("ms");
    assert!(
        fresh_at > at + 1000,
        "a fresh sample, not the first run's: {third}"
    );
}
