//! A surge of clients saturating a pool of network threads (Kafka's network processors) while
//! the machine still has CPU to spare elsewhere: the tracer must report the group's idle ratio
//! near 0 and raise `threads_saturated`, and its idle ratio must agree with the kernel's own
//! per-thread accounting in /proc/PID/task/TID/schedstat.
//!
//! On a virtual machine schedstat's CPU time leaves out what the hypervisor stole while a
//! thread held its CPU (the task clock skips steal under `CONFIG_PARAVIRT_TIME_ACCOUNTING`),
//! while the tracer's clock does not: the comparison scales schedstat's CPU time by the
//! machine's stolen share of busy time over the same window (/proc/stat).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use tracer_tests::{Process, TempDir, Tracer, compile_java, java, port_of, tasks_named};

/// Nanoseconds each thread named `comm` spent on a CPU and waiting for one, per tid, from
/// /proc/PID/task/TID/schedstat.
fn run_and_wait_ns(pid: u32, comm: &str) -> HashMap<u32, (u64, u64)> {
    tasks_named(pid, comm)
        .into_iter()
        .filter_map(|(tid, dir)| {
            let stat = std::fs::read_to_string(dir.join("schedstat")).ok()?;
            let mut fields = stat
                .split_whitespace()
                .map(|f| f.parse::<u64>().unwrap_or(0));
            Some((tid, (fields.next()?, fields.next()?)))
        })
        .collect()
}

/// The machine's stolen and busy clock ticks (`cpu` line of /proc/stat: user nice system idle
/// iowait irq softirq steal; busy is all but idle and iowait).
fn stolen_and_busy_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .expect("cpu line")
        .split_whitespace()
        .map(|f| f.parse().expect("ticks"))
        .collect();
    let busy = ticks[..3].iter().sum::<u64>() + ticks[5..8].iter().sum::<u64>();
    (ticks[7], busy)
}

fn group(event: &tracer_tests::Event, name: &str) -> serde_json::Value {
    event
        .group(name)
        .cloned()
        .unwrap_or_else(|| panic!("no group {name} in {}", event.json))
}

#[test]
fn a_connection_surge_saturates_the_network_threads_and_is_flagged() {
    let classes = TempDir::new("busy-pool");
    compile_java("BusyPool", classes.path());
    let mut server_command = java(classes.path(), "BusyPool");
    server_command.args(["--threads", "2", "--work-us", "2000"]);
    let server = Process::spawn(&mut server_command);
    let (_, ready) = server.expect_line("READY", Duration::from_secs(30));
    let port = port_of(&ready);
    let tracer = Tracer::attach(server.pid, &["--saturation-window", "6s"]);

    // At rest the processors sleep in their 300 ms polls: idle.
    let rest = tracer.after("threads", Instant::now() + Duration::from_secs(7));
    let idle = group(&rest, "kafka-network-t");
    assert_eq!(idle["threads"], 2, "{idle}");
    assert!(
        idle["idle_ratio"].as_f64().expect("idle ratio") > 0.9,
        "{idle}"
    );

    let mut client_command = java(classes.path(), "BusyPool");
    client_command.args([
        "--client",
        "--port",
        &port.to_string(),
        "--connections",
        "20",
        "--seconds",
        "25",
    ]);
    let mut client = Process::spawn(&mut client_command);
    let surge = Instant::now();
    let alert = tracer.expect_kind("alert", "threads_saturated", Duration::from_secs(25));
    assert_eq!(alert.json["group"], "kafka-network-t", "{}", alert.json);
    assert!(
        alert.json["idle_ratio"].as_f64().expect("idle ratio") <= 0.1,
        "{}",
        alert.json
    );
    println!(
        "threads_saturated {:.1}s into the surge: {}",
        (alert.at - surge).as_secs_f64(),
        alert.json["message"]
    );

    // The idle ratio over a window against schedstat's busy time over the same window.
    let window = Duration::from_secs(6);
    let before = run_and_wait_ns(server.pid, "kafka-network-t");
    let machine_before = stolen_and_busy_ticks();
    let from = Instant::now();
    let event = tracer.after("threads", from + window);
    let after = run_and_wait_ns(server.pid, "kafka-network-t");
    let machine_after = stolen_and_busy_ticks();
    let wall = from.elapsed().as_nanos() as f64;
    let stolen = (machine_after.0 - machine_before.0) as f64
        / (machine_after.1 - machine_before.1).max(1) as f64;
    let busy: f64 = after
        .iter()
        .map(|(tid, &(run, wait))| {
            let (run0, wait0) = before.get(tid).copied().unwrap_or((run, wait));
            (run - run0) as f64 / (1.0 - stolen) + (wait - wait0) as f64
        })
        .sum();
    let proc_idle = 1.0 - busy / (wall * after.len() as f64);
    let ours = group(&event, "kafka-network-t")["idle_ratio"]
        .as_f64()
        .expect("idle ratio");
    println!(
        "idle ratio during the surge: tracer {ours:.3}, schedstat {proc_idle:.3} \
         (the machine's busy time {:.1}% stolen)",
        stolen * 100.0
    );
    assert!(
        (ours - proc_idle).abs() < 0.1,
        "tracer {ours:.3} vs schedstat {proc_idle:.3}"
    );

    client.expect_line("CLIENT", Duration::from_mins(1));
    let _ = client.wait(Duration::from_secs(10));
    // After the surge the group idles again and the alert resolves.
    let resolved = tracer.expect_kind(
        "alert_resolved",
        "threads_saturated",
        Duration::from_secs(20),
    );
    println!("resolved: {}", resolved.json["message"]);
}
