//! A time-compressed Kafka log manager (a JVM whose main class is `kafka.Kafka`, started with
//! a relative `config/server.properties` and an `--override`, 1,000 partitions rolling every
//! 3 s and keeping 12 s) climbs fast and then holds where retention bounds it. The tracer must
//! project that hold from the broker's settings and its mapped indexes before the count gets
//! there: holding under the limit raises no `vma_exhaustion` (the climb toward the hold is not
//! a death), holding over it warns before the count crosses the limit.

use std::time::{Duration, Instant};

use tracer_tests::{Event, Process, TempDir, Tracer, compile_java, java};

/// A broker JVM (not started rolling yet), its tracer with a what-if `--max-map-count`, and the
/// directories they live in.
fn broker(name: &str, max_map_count: u32) -> (Process, Tracer, [TempDir; 3]) {
    let classes = TempDir::new(name);
    compile_java("kafka/Kafka", classes.path());
    let logs = TempDir::tmpfs(&format!("{name}-logs"));
    let home = TempDir::new(&format!("{name}-home"));
    std::fs::create_dir_all(home.path().join("config")).expect("config dir");
    std::fs::write(
        home.path().join("config/server.properties"),
        format!(
            "log.dirs={}\nlog.roll.ms=3000\n# overridden on the command line\nlog.retention.ms=600000\ntest.partitions=1000\n",
            logs.path().display()
        ),
    )
    .expect("server.properties");
    let mut command = java(classes.path(), "kafka.Kafka");
    command
        .args([
            "config/server.properties",
            "--override",
            "log.retention.ms=12000",
        ])
        .current_dir(home.path());
    let jvm = Process::spawn(&mut command);
    jvm.expect_line("READY", Duration::from_mins(1));
    let tracer = Tracer::attach(jvm.pid, &["--max-map-count", &max_map_count.to_string()]);
    (jvm, tracer, [classes, logs, home])
}

/// Follows the tracer until `until` says stop or 90 s pass; returns the `vma` events and the
/// alerts seen.
fn follow(tracer: &Tracer, mut until: impl FnMut(&Event) -> bool) -> (Vec<Event>, Vec<Event>) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut vma, mut alerts) = (Vec::new(), Vec::new());
    while Instant::now() < deadline {
        let Some(event) = tracer.next(Duration::from_secs(5)) else {
            panic!("the tracer exited")
        };
        match event.kind() {
            "vma" => vma.push(event.clone()),
            "alert" => alerts.push(event.clone()),
            _ => {}
        }
        if until(&event) {
            break;
        }
    }
    (vma, alerts)
}

#[test]
fn kafka_holding_under_the_limit_is_projected_and_raises_no_vma_alert() {
    // The hold is about 10,000 index mappings plus the JVM's: ~73% of 14,000.
    let (mut jvm, tracer, _dirs) = broker("kafka-under", 14_000);
    jvm.send("GO");
    jvm.expect_line("HOLDING", Duration::from_mins(1));
    // Twenty seconds of holding after the first deletion.
    let hold_from = Instant::now() + Duration::from_secs(5);
    let end = hold_from + Duration::from_secs(20);
    let (vma, alerts) = follow(&tracer, |e| e.at > end);
    let vma_alerts: Vec<_> = alerts
        .iter()
        .filter(|a| a.json["kind"] == "vma_exhaustion")
        .map(|a| a.json.to_string())
        .collect();
    assert!(
        vma_alerts.is_empty(),
        "alerts for a broker that holds: {vma_alerts:?}"
    );

    let mut counts: Vec<u64> = vma
        .iter()
        .filter(|e| e.at > hold_from)
        .map(|e| e.u64("map_count"))
        .collect();
    counts.sort_unstable();
    let hold = counts[counts.len() / 2] as f64;
    let first = vma
        .iter()
        .find(|e| e.json["steady_state"].is_u64())
        .expect("a steady state");
    let steady = first.u64("steady_state") as f64;
    println!(
        "hold {hold}, steady state {steady} first reported at {} mappings",
        first.u64("map_count")
    );
    assert!(
        (steady - hold).abs() <= 0.10 * hold,
        "steady state {steady} vs hold {hold}"
    );
    assert!(
        (first.u64("map_count") as f64) < 0.9 * hold,
        "the steady state came only once the count was there: {}",
        first.json
    );
    assert!(
        first.json["steady_state_crossing_seconds"].is_null(),
        "{}",
        first.json
    );
    // The broker goes before its log dirs.
    drop(tracer);
    drop(jvm);
}

#[test]
fn kafka_holding_over_the_limit_warns_vma_before_the_crossing() {
    let limit = 8000;
    let (mut jvm, tracer, _dirs) = broker("kafka-over", limit);
    jvm.send("GO");
    let mut warning: Option<Event> = None;
    let (vma, _) = follow(&tracer, |e| {
        if e.kind() == "alert" && e.json["kind"] == "vma_exhaustion" && warning.is_none() {
            warning = Some(e.clone());
        }
        e.kind() == "vma" && e.u64("map_count") >= u64::from(limit)
    });
    let crossed = vma.last().expect("vma events");
    assert!(
        crossed.u64("map_count") >= u64::from(limit),
        "the count never crossed the limit: {}",
        crossed.json
    );
    let warning = warning.expect("a warning before the crossing");
    let message = warning.json["message"].as_str().unwrap_or_default();
    println!(
        "warned {:.1} s before the crossing: {message}",
        (crossed.at - warning.at).as_secs_f64()
    );
    assert!(warning.at < crossed.at);
    assert!(message.contains("Kafka steady state"), "{message}");
    assert!(
        message.contains("1,000 partitions x 5 segments x 2"),
        "{message}"
    );
    assert!(message.contains("(2x the steady state)"), "{message}");
    let projected = vma
        .iter()
        .find(|e| e.json["steady_state_crossing_seconds"].is_u64())
        .expect("a crossing time");
    assert!(
        projected.u64("steady_state") > u64::from(limit),
        "{}",
        projected.json
    );
}
