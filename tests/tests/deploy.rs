//! The files shipped for operators in deploy/: the Prometheus rules pass promtool's own checks
//! and unit tests, and every metric the rules and the Grafana dashboard use is one a running
//! agent exposes.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use tracer_tests::{
    MemoryCgroup, Process, TempDir, compile_c, compile_java, free_port, http_get, java, tracer_bin,
    wait_for_listener,
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
