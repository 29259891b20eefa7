//! The files shipped for operators in deploy/: the Prometheus rules pass promtool's own checks
//! and unit tests, every metric the rules and the Grafana dashboard use is one a running
//! agent exposes, the agent attaches under the systemd unit's restrictions, and the documented
//! capabilities are enough for a broker in another network namespace.

use std::{
    collections::BTreeSet,
    net::TcpStream,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use tracer_tests::{
    MemoryCgroup, Netns, Process, TempDir, compile_c, compile_java, free_port, http_get, java,
    ss_states, tracer_as_nobody, tracer_bin, wait_for_listener,
};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alerting_rules_pass_promtool_and_their_unit_tests() {
    let rules = deploy("prometheus/tracer-rules.yml");
    promtool(&["check", "rules", rules.to_str().expect("utf-8")]);
    let tests = deploy("prometheus/tracer-rules.test.yml");
    promtool(&["test", "rules", tests.to_str().expect("utf-8")]);
}

/// `tracer_*` names in a text (PromQL expressions of rules and panels).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("tracer_") {
        let name: String = rest[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[start + name.len()..];
        names.insert(name);
    }
    names
}

#[test]
fn rules_and_dashboard_use_only_metrics_the_agent_exposes() {
    let rules = std::fs::read_to_string(deploy("prometheus/tracer-rules.yml")).expect("rules");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/tracer-dashboard.json")).expect("dashboard"),
    )
    .expect("the dashboard is JSON");
    let mut used = metric_names(&rules);
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            used.extend(metric_names(target["expr"].as_str().expect("expr")));
        }
    }

    // An agent watching a process whose mappings grow, so that every series exists.
    let dir = TempDir::new("deploy");
    let workload = Process::spawn(
        Command::new(tracer_bin())
            .args([
                "demo-workload",
                "--rate",
                "200",
                "--stop-at",
                "5000",
                "--dir",
            ])
            .arg(dir.path()),
    );
    // And one leaking descriptors and memory in a memory cgroup with a limit, so that the fd
    // and memory series (limits, times to exhaustion) exist too.
    let cgroup = MemoryCgroup::new("deploy", 1 << 30);
    let leaker_binary = compile_c("fdleak", dir.path());
    let mut leaker =
        Process::spawn(&mut cgroup.wrap(Command::new(&leaker_binary).args(["1000", "50", "256"])));
    leaker.expect_line("READY", Duration::from_secs(5));
    leaker.send("GO");
    // And a Kafka broker (the compressed log manager of tests/java/kafka), so that its steady
    // state is exposed.
    compile_java("kafka/Kafka", dir.path());
    std::fs::write(
        dir.path().join("server.properties"),
        format!(
            "log.dirs={}\nlog.roll.ms=3000\nlog.retention.ms=12000\ntest.partitions=10\n",
            dir.path().join("logs").display()
        ),
    )
    .expect("server.properties");
    let mut command = java(dir.path(), "kafka.Kafka");
    command.arg("server.properties").current_dir(dir.path());
    let broker = Process::spawn(&mut command);
    broker.expect_line("READY", Duration::from_mins(1));
    let port = free_port();
    let _agent = Process::spawn(Command::new(tracer_bin()).args([
        "agent",
        "--quiet",
        "--pid",
        &broker.pid.to_string(),
        "--pid",
        &workload.pid.to_string(),
        "--pid",
        &leaker.pid.to_string(),
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]));
    wait_for_listener(port, "the agent");
    let deadline = Instant::now() + Duration::from_secs(30);
    let exposed = loop {
        std::thread::sleep(Duration::from_millis(500));
        let text = http_get(port, "/metrics");
        let complete = [
            "tracer_vma_exhaustion_eta_seconds{",
            "tracer_fd_exhaustion_eta_seconds{",
            "tracer_memory_limit_eta_seconds{",
            "tracer_vma_steady_state{",
        ]
        .iter()
        .all(|series| text.contains(series));
        if complete || Instant::now() > deadline {
            break text;
        }
    };
    let mut names: BTreeSet<String> = BTreeSet::new();
    for line in exposed.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let mut words = line.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        names.insert(name.to_owned());
        if kind == "counter" {
            names.insert(format!("{name}_total"));
        }
    }
    let missing: Vec<&String> = used.iter().filter(|n| !names.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "used but not exposed: {missing:?}; exposed: {names:?}"
    );
    assert!(
        exposed.contains("tracer_vma_exhaustion_eta_seconds{"),
        "no ETA series: {exposed}"
    );
}

/// The values of `Key=` in the shipped systemd unit, split at whitespace.
fn unit_setting(key: &str) -> Vec<String> {
    let unit = std::fs::read_to_string(deploy("systemd/tracer-agent.service")).expect("unit");
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in the unit"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// The unit's capabilities as setpriv takes them: `+bpf,+perfmon,...`.
fn unit_capabilities() -> String {
    unit_setting("AmbientCapabilities")
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs `tracer ARGS` as systemd runs the unit's service, as far as the tracer can tell:
/// user nobody (as `DynamicUser=`) with only the unit's capabilities, `NoNewPrivileges=`, and
/// `RestrictAddressFamilies=` as systemd implements it, a seccomp filter that fails
/// `socket()` of any other family with EAFNOSUPPORT.
fn run_as_unit(families: &[String], args: &[&str]) -> Output {
    let family = |name: &str| match name {
        "AF_UNIX" => libc::AF_UNIX,
        "AF_INET" => libc::AF_INET,
        "AF_INET6" => libc::AF_INET6,
        "AF_NETLINK" => libc::AF_NETLINK,
        other => panic!("add {other} to the test"),
    };
    let allowed: Vec<u32> = families
        .iter()
        .map(|f| u32::try_from(family(f)).expect("family"))
        .collect();
    let n = u8::try_from(allowed.len()).expect("few families");
    let mut filter = vec![
        ld(0),
        jeq(u32::try_from(libc::SYS_socket).expect("nr"), 0, n + 2),
        ld(16),
    ];
    for (i, &f) in allowed.iter().enumerate() {
        filter.push(jeq(f, n - u8::try_from(i).expect("few"), 0));
    }
    filter.push(ret(errno(libc::EAFNOSUPPORT)));
    filter.push(ret(libc::SECCOMP_RET_ALLOW));
    let mut command = tracer_as_nobody(&unit_capabilities());
    command.args(args);
    with_seccomp(&mut command, filter);
    command.output().expect("run the tracer as the unit")
}

// Classic BPF for a seccomp filter over `struct seccomp_data`: nr at 0, arch at 4,
// instruction_pointer at 8, args[6] at 16.
fn ld(offset: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: 0x20,
        jt: 0,
        jf: 0,
        k: offset,
    }
}

fn jeq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: 0x15,
        jt,
        jf,
        k,
    }
}

fn ret(k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: 0x06,
        jt: 0,
        jf: 0,
        k,
    }
}

fn errno(errno: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | u32::try_from(errno).expect("errno")
}

/// Makes `command` run under the seccomp `filter` (and `NoNewPrivileges`).
fn with_seccomp(command: &mut Command, filter: Vec<libc::sock_filter>) {
    // SAFETY: only prctl between fork and exec; the filter lives in the closure, which the
    // child owns.
    unsafe {
        command.pre_exec(move || {
            let program = libc::sock_fprog {
                len: u16::try_from(filter.len()).expect("short"),
                filter: filter.as_ptr().cast_mut(),
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &raw const program,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A root process holding a listener and two connections.
fn server_with_clients(dir: &TempDir) -> (Process, Vec<TcpStream>) {
    let server = Process::spawn(Command::new(compile_c("acceptor", dir.path())).arg("0"));
    let (_, ready) = server.expect_line("READY", Duration::from_secs(5));
    let port: u16 = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("port="))
        .and_then(|p| p.parse().ok())
        .expect("port");
    let clients = (0..2)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    server.expect_line("ACCEPTED 2", Duration::from_secs(5));
    (server, clients)
}

fn events(output: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The non-zero `states` of the last `sockets` event.
fn last_states(events: &[serde_json::Value]) -> std::collections::BTreeMap<String, u64> {
    let sockets = events
        .iter()
        .rev()
        .find(|e| e["type"] == "sockets")
        .expect("a sockets event");
    sockets["states"]
        .as_object()
        .expect("states")
        .iter()
        .filter_map(|(state, n)| Some((state.clone(), n.as_u64()?)).filter(|(_, n)| *n > 0))
        .collect()
}

#[test]
fn the_agent_attaches_under_the_systemd_units_restrictions() {
    let dir = TempDir::new("deploy-unit");
    let (server, _clients) = server_with_clients(&dir);
    let families = unit_setting("RestrictAddressFamilies");
    let pid = server.pid.to_string();
    let output = run_as_unit(
        &families,
        &[
            "agent",
            "--pid",
            &pid,
            "--listen",
            "127.0.0.1:0",
            "--duration",
            "3",
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    assert!(!stderr.contains("WARN"), "{stderr}");
    let events = events(&output);
    assert!(
        events.iter().any(|e| e["type"] == "target_attached"),
        "not attached: {stderr}"
    );
    assert_eq!(last_states(&events), ss_states(server.pid, None));

    // The unit as it was shipped before, without AF_NETLINK: the error names the filter and
    // its fix, not a capability.
    let without: Vec<String> = families.into_iter().filter(|f| f != "AF_NETLINK").collect();
    let output = run_as_unit(
        &without,
        &["attach", "--json", "--duration", "2", "--pid", &pid],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("RestrictAddressFamilies") && stderr.contains("AF_NETLINK"),
        "{stderr}"
    );
    assert!(!stderr.contains("CAP_SYS_PTRACE"), "{stderr}");
}

#[test]
fn the_documented_capabilities_reach_a_broker_in_another_network_namespace() {
    // A containerised broker watched from the host: its own network namespace; the tracer as
    // user nobody with the four capabilities of README and the unit, no CAP_SYS_ADMIN (which
    // entering the namespace would need).
    let caps = unit_capabilities();
    assert_eq!(caps, "+bpf,+perfmon,+sys_ptrace,+dac_read_search");
    let net = Netns::new("caps");
    let dir = TempDir::new("deploy-netns");
    let server = Process::spawn(net.exec(&compile_c("acceptor", dir.path())).arg("0"));
    let (_, ready) = server.expect_line("READY", Duration::from_secs(5));
    let port = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("port="))
        .expect("port")
        .to_owned();
    let clients: Vec<Process> = (0..3)
        .map(|_| {
            Process::spawn(net.exec(Path::new("bash")).args([
                "-c",
                &format!("exec 3<>/dev/tcp/127.0.0.1/{port}; echo CONNECTED; exec sleep 60"),
            ]))
        })
        .collect();
    for client in &clients {
        client.expect_line("CONNECTED", Duration::from_secs(5));
    }
    server.expect_line("ACCEPTED 3", Duration::from_secs(5));
    let output = tracer_as_nobody(&caps)
        .args([
            "attach",
            "--json",
            "--duration",
            "3",
            "--pid",
            &server.pid.to_string(),
        ])
        .output()
        .expect("run tracer");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    let events = events(&output);
    let expected = ss_states(server.pid, Some(&net));
    assert_eq!(expected.get("ESTABLISHED"), Some(&3), "{expected:?}");
    assert_eq!(last_states(&events), expected);
}

/// A kernel without sock_diag for TCP (before 3.3, as CentOS 6's 2.6.32, or built without
/// `tcp_diag`), imitated by failing `socket(AF_NETLINK, _, NETLINK_SOCK_DIAG)` with
/// EPROTONOSUPPORT: in either mode the sockets come from /proc/PID/net/tcp, equal to `ss`.
#[test]
fn without_sock_diag_the_sockets_come_from_proc_net_tcp() {
    let dir = TempDir::new("no-sock-diag");
    let (server, _clients) = server_with_clients(&dir);
    let filter = vec![
        ld(0),
        jeq(u32::try_from(libc::SYS_socket).expect("nr"), 0, 4),
        ld(16),
        jeq(u32::try_from(libc::AF_NETLINK).expect("family"), 0, 2),
        ld(32),
        jeq(
            u32::try_from(libc::NETLINK_SOCK_DIAG).expect("protocol"),
            1,
            0,
        ),
        ret(libc::SECCOMP_RET_ALLOW),
        ret(errno(libc::EPROTONOSUPPORT)),
    ];
    for mode in ["ebpf", "proc"] {
        let mut command = Command::new(tracer_bin());
        command.args([
            "attach",
            "--json",
            "--duration",
            "3",
            "--mode",
            mode,
            "--pid",
            &server.pid.to_string(),
        ]);
        with_seccomp(&mut command, filter.clone());
        let output = command.output().expect("run tracer");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{mode}: {:?}: {stderr}",
            output.status
        );
        let expected = ss_states(server.pid, None);
        assert_eq!(expected.get("ESTABLISHED"), Some(&2), "{expected:?}");
        assert_eq!(last_states(&events(&output)), expected, "{mode}");
    }
}
