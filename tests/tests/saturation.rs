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
    process::Command,
    time::{Duration, Instant},
};

use tracer_tests::{Process, TempDir, Tracer, compile_c, compile_java, java, port_of, tasks_named};

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

/// One group's idle ratio over the tracer's saturation window, and schedstat's over the same
/// wall time: 1 - (run + wait for a CPU) / wall, the run time scaled by the machine's stolen
/// share of busy time.
struct IdleWindow {
    ours: f64,
    schedstat: f64,
    /// Of the group's wall time, the share spent waiting for a CPU (schedstat's run_delay).
    waiting: f64,
    stolen: f64,
}

impl std::fmt::Display for IdleWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tracer {:.3}, schedstat {:.3} (waiting for a CPU {:.1}% of the time; the machine's \
             busy time {:.1}% stolen)",
            self.ours,
            self.schedstat,
            self.waiting * 100.0,
            self.stolen * 100.0
        )
    }
}

impl IdleWindow {
    fn assert_agrees(&self) {
        assert!((self.ours - self.schedstat).abs() < 0.1, "{self}");
    }
}

/// Reads schedstat for the threads named `comm` (a name that is its own group: no trailing
/// number), waits for the first `threads` report a 6-s saturation window later, reads
/// schedstat again.
fn idle_window(tracer: &Tracer, pid: u32, comm: &str) -> IdleWindow {
    let window = Duration::from_secs(6);
    let before = run_and_wait_ns(pid, comm);
    let machine_before = stolen_and_busy_ticks();
    let from = Instant::now();
    let event = tracer.after("threads", from + window);
    let after = run_and_wait_ns(pid, comm);
    let machine_after = stolen_and_busy_ticks();
    let capacity = from.elapsed().as_nanos() as f64 * after.len() as f64;
    let stolen = (machine_after.0 - machine_before.0) as f64
        / (machine_after.1 - machine_before.1).max(1) as f64;
    let (run, wait) = after
        .iter()
        .map(|(tid, &(run, wait))| {
            let (run0, wait0) = before.get(tid).copied().unwrap_or((run, wait));
            ((run - run0) as f64 / (1.0 - stolen), (wait - wait0) as f64)
        })
        .fold((0.0, 0.0), |(r, w), (run, wait)| (r + run, w + wait));
    IdleWindow {
        ours: group(&event, comm)["idle_ratio"]
            .as_f64()
            .expect("idle ratio"),
        schedstat: 1.0 - (run + wait) / capacity,
        waiting: wait / capacity,
        stolen,
    }
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

    let window = idle_window(&tracer, server.pid, "kafka-network-t");
    println!("idle ratio during the surge: {window}");
    window.assert_agrees();

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

/// Two threads that nap 1 ms and work 1 ms, at the lowest priority, sharing one CPU with a
/// busy loop at the default one: after every wakeup they wait for the CPU, and that wait is
/// busy, not idle (the scheduler's run_delay, which schedstat counts with the run time). An
/// idle ratio that ran each sleep to the next switch in read these threads as mostly idle.
#[test]
fn the_wait_for_a_cpu_after_a_wakeup_is_busy_not_idle() {
    let dir = TempDir::new("napper");
    let napper = compile_c("napper", dir.path());
    let loops = compile_c("loops", dir.path());
    let nappers = Process::spawn(
        Command::new("taskset")
            .args(["-c", "0", "nice", "-n", "19"])
            .arg(&napper)
            .arg("60"),
    );
    nappers.expect_line("READY", Duration::from_secs(10));
    let mut hog = Process::spawn(
        Command::new("taskset")
            .args(["-c", "0"])
            .arg(&loops)
            .args(["null", "60"]),
    );
    hog.expect_line("READY", Duration::from_secs(10));
    hog.send("GO");
    let tracer = Tracer::attach(nappers.pid, &["--saturation-window", "6s"]);
    // A first window to let the accounts of every thread start.
    tracer.after("threads", Instant::now() + Duration::from_secs(2));
    let window = idle_window(&tracer, nappers.pid, "napper");
    println!("nappers beside a busy loop: {window}");
    assert!(
        window.waiting > 0.2,
        "the nappers hardly waited for the CPU, nothing was tested: {window}"
    );
    window.assert_agrees();
}
