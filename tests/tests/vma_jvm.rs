//! A real JVM that rolls log segments the way Kafka does (FileChannel.map of each segment's
//! .index and .timeindex, kept mapped) until it dies at the real default vm.max_map_count,
//! and a JVM at rest. The tracer's count must equal /proc/PID/maps whenever the JVM pauses,
//! warning and critical alerts must come before the JVM dies, and the time to exhaustion
//! reported at half the headroom must be within 15% of the actual time of death.

use std::{
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use tracer_tests::{
    Event, Process, Sysctl, TempDir, Tracer, compile_java, maps_count, programs_unloaded,
};

/// The kernel's default, which Kafka brokers die at.
const DEFAULT_MAX_MAP_COUNT: u64 = 65_530;

fn java(classes: &Path, class: &str, args: &[&str]) -> Command {
    let mut command = Command::new("java");
    command
        .args([
            "-Xmx64m",
            "-Xms64m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Xss512k",
        ])
        .args([
            "-XX:-UsePerfData",
            "-XX:+UnlockDiagnosticVMOptions",
            "-XX:-LogVMOutput",
        ])
        .arg(format!(
            "-XX:ErrorFile={}/hs_err_pid%p.log",
            classes.display()
        ))
        .arg("-cp")
        .arg(classes)
        .arg(class)
        .args(args);
    command
}

/// A SegmentRoller JVM writing into its own tmpfs, waiting for "GO"; the temp dirs live as
/// long as the returned guards.
fn segment_roller(name: &str, args: &[&str]) -> (Process, String, [TempDir; 2]) {
    let classes = TempDir::new(name);
    compile_java("SegmentRoller", classes.path());
    // tmpfs: creating tens of thousands of index files on ext4 is far slower.
    let logs = TempDir::tmpfs(&format!("{name}-logs"));
    let root = logs.path().to_str().expect("utf-8 path").to_owned();
    let jvm = Process::spawn(&mut java(
        classes.path(),
        "SegmentRoller",
        &[&["--root", &root], args].concat(),
    ));
    jvm.expect_line("READY", Duration::from_secs(30));
    (jvm, root, [classes, logs])
}

/// What the test saw of a JVM's run to its death.
#[derive(Default)]
struct Observed {
    /// Pauses at which the tracer's count was compared with /proc, and pauses skipped because
    /// the JVM's own threads changed the mappings meanwhile.
    compared: u32,
    skipped: u32,
    died_at: Option<Instant>,
    at_half: Option<Event>,
    warning: Option<Event>,
    critical: Option<Event>,
    exit: Option<Event>,
    /// "ts count eta" of every report, to show when an assertion on them fails.
    reports: Vec<String>,
}

/// Follows the JVM and the tracer until the tracer reports the JVM's exit. At each pause the
/// JVM's count is read from /proc once it is quiet, then compared with the tracer's next report
/// (`exact`), or with its reports during the pause until one carries a sample taken in it
/// (proc mode).
fn follow_to_death(jvm: &Process, tracer: &Tracer, half_headroom: u64, exact: bool) -> Observed {
    let deadline = Instant::now() + Duration::from_mins(5);
    let mut seen = Observed::default();
    let mut pending: Option<(u32, Instant)> = None;
    while seen.exit.is_none() {
        assert!(
            Instant::now() < deadline,
            "the JVM did not die within 5 minutes"
        );
        while let Some((at, line)) = jvm.try_line() {
            if line.starts_with("PAUSE ") {
                thread::sleep(Duration::from_millis(800));
                pending = Some((maps_count(jvm.pid).expect("JVM alive"), Instant::now()));
            } else if line.starts_with("DIED") {
                println!("JVM: {line}");
                seen.died_at = Some(at);
            }
        }
        let Some(event) = tracer.try_next() else {
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        match event.kind() {
            "vma" => {
                seen.reports.push(format!(
                    "{} {} {}",
                    event.u64("ts"),
                    event.u64("map_count"),
                    event.json["eta_seconds"]
                ));
                if seen.at_half.is_none() && event.u64("map_count") >= half_headroom {
                    seen.at_half = Some(event.clone());
                }
                let Some((proc_count, read_at)) =
                    pending.take_if(|(_, read_at)| event.at > *read_at)
                else {
                    continue;
                };
                if maps_count(jvm.pid) != Some(proc_count) {
                    seen.skipped += 1;
                    continue;
                }
                if !exact && event.u64("map_count") != u64::from(proc_count) {
                    // A sample from before the pause: a later report carries a newer one.
                    pending = Some((proc_count, read_at));
                    continue;
                }
                assert_eq!(
                    event.u64("map_count"),
                    u64::from(proc_count),
                    "tracer {} vs /proc/{}/maps {proc_count} during a pause",
                    event.json,
                    jvm.pid
                );
                seen.compared += 1;
            }
            "alert" => {
                assert_eq!(event.json["kind"], "vma_exhaustion");
                let slot = if event.json["severity"] == "critical" {
                    &mut seen.critical
                } else {
                    &mut seen.warning
                };
                assert!(slot.is_none(), "one alert per condition: {}", event.json);
                *slot = Some(event);
            }
            "target_exit" => seen.exit = Some(event),
            _ => {}
        }
    }
    seen
}

#[test]
fn jvm_rolling_segments_to_death_is_predicted() {
    rolling_segments_to_death(&[], "2500");
    assert!(programs_unloaded("tracer_"));
}

/// The same death watched from /proc samples: the counts during the pauses (which are longer,
/// to leave a sample in each: at 60,000 mappings a read of the count is due only every 50
/// times its cost), the alerts before the death, the ETA within 15%.
#[test]
fn jvm_rolling_segments_to_death_is_predicted_in_proc_mode() {
    rolling_segments_to_death(&["--mode", "proc"], "6000");
}

/// A SegmentRoller rolls segments until it dies of Map failed, pausing for `pause_ms` every
/// 4,000 segments, watched with `mode` (an empty slice: eBPF).
fn rolling_segments_to_death(mode: &[&str], pause_ms: &str) {
    let _limit = Sysctl::set("vm.max_map_count", &DEFAULT_MAX_MAP_COUNT.to_string());
    let (mut jvm, _root, _dirs) = segment_roller(
        "jvm-death",
        &[
            "--partitions",
            "50",
            "--rate",
            "1000",
            "--pause-every",
            "4000",
            "--pause-ms",
            pause_ms,
        ],
    );
    let mut tracer = Tracer::attach(jvm.pid, mode);
    let expected = if mode.is_empty() { "ebpf" } else { "proc" };
    assert_eq!(tracer.seen("target_attached")[0].json["mode"], expected);
    let first = tracer.expect("vma", Duration::from_secs(5));
    let (start_count, limit) = (first.u64("map_count"), first.u64("max_map_count"));
    assert_eq!(limit, DEFAULT_MAX_MAP_COUNT);
    let half_headroom = start_count + (limit - start_count) / 2;
    jvm.send("GO");

    let seen = follow_to_death(&jvm, &tracer, half_headroom, mode.is_empty());
    let died_at = seen.died_at.expect("the JVM died of Map failed");
    assert!(
        seen.compared >= 5,
        "compared {} pauses (skipped {} where the JVM moved)",
        seen.compared,
        seen.skipped
    );
    let warning = seen.warning.expect("a warning before the JVM died");
    let critical = seen.critical.expect("a critical alert before the JVM died");
    assert!(
        warning.at < died_at && critical.at < died_at,
        "alerts came after the death"
    );
    let at_half = seen.at_half.expect("a report at half the headroom");
    let eta = at_half.json["eta_seconds"].as_f64().unwrap_or_else(|| {
        panic!(
            "no ETA at half the headroom; reports (ts count eta):\n{}",
            seen.reports.join("\n")
        )
    });
    let exit = seen.exit.expect("target_exit");
    let actual = (exit.u64("ts") - at_half.u64("ts")) as f64 / 1000.0;
    println!(
        "start {start_count}, half {half_headroom}: ETA {eta} s, death {actual:.1} s later; {} pauses compared, {} skipped; warning: {}",
        seen.compared, seen.skipped, warning.json["message"]
    );
    assert!(
        (eta - actual).abs() <= 0.15 * actual,
        "ETA {eta} s at half the headroom, but the JVM died {actual:.1} s later; reports (ts count eta):\n{}",
        seen.reports.join("\n")
    );
    assert!(
        !jvm.wait(Duration::from_secs(10)).success(),
        "the JVM died of Map failed"
    );
    assert!(
        tracer.process.wait(Duration::from_secs(10)).success(),
        "attach exits 0 after target_exit"
    );
}

#[test]
fn jvm_at_rest_matches_proc() {
    // 3,000 segments, then the JVM pauses for a minute with its 6,000 index mappings.
    let (mut jvm, root, _dirs) = segment_roller(
        "jvm-rest",
        &[
            "--rate",
            "0",
            "--max-segments",
            "3001",
            "--pause-every",
            "3000",
            "--pause-ms",
            "60000",
        ],
    );
    let tracer = Tracer::attach(jvm.pid, &[]);
    jvm.send("GO");
    jvm.expect_line("PAUSE", Duration::from_mins(1));
    thread::sleep(Duration::from_secs(2));
    let mut matched = 0;
    for _ in 0..10 {
        let before = maps_count(jvm.pid).expect("JVM alive");
        let event = tracer.vma_after(Instant::now());
        if maps_count(jvm.pid) != Some(before) {
            continue;
        }
        assert_eq!(event.u64("map_count"), u64::from(before), "{}", event.json);
        matched += 1;
        if matched == 3 {
            break;
        }
    }
    assert_eq!(matched, 3, "the JVM never rested");
    // The breakdown is read again once the count has moved and 10 s have passed since attach.
    let deadline = Instant::now() + Duration::from_secs(30);
    let index = loop {
        assert!(
            Instant::now() < deadline,
            "no breakdown with the segments' index files"
        );
        let _ = tracer.next(Duration::from_secs(5));
        let found = tracer.seen("vma_breakdown").iter().find_map(|b| {
            b.json["groups"]
                .as_array()?
                .iter()
                .find(|g| g["pattern"] == "*.index" && g["mappings"] == 3000)
                .cloned()
        });
        if let Some(index) = found {
            break index;
        }
    };
    assert_eq!(index["class"], "file", "{index}");
    assert_eq!(index["files"], 3000, "{index}");
    assert_eq!(index["dir"], root, "{index}");
}

#[test]
fn jvm_map_churn_is_followed_exactly() {
    let classes = TempDir::new("jvm-churn");
    compile_java("MapChurn", classes.path());
    let dir = classes.path().to_str().expect("utf-8 path");
    let mut jvm = Process::spawn(&mut java(
        classes.path(),
        "MapChurn",
        &[
            "--threads",
            "4",
            "--duration",
            "30",
            "--retain-per-sec",
            "50",
            "--dir",
            dir,
        ],
    ));
    jvm.expect_line("READY", Duration::from_secs(30));
    let tracer = Tracer::attach(jvm.pid, &[]);
    jvm.send("GO");
    let mut compared = 0;
    for _ in 0..8 {
        thread::sleep(Duration::from_millis(1500));
        jvm.send("PAUSE");
        jvm.expect_line("PAUSED", Duration::from_secs(10));
        thread::sleep(Duration::from_millis(500));
        let before = maps_count(jvm.pid).expect("JVM alive");
        let event = tracer.vma_after(Instant::now());
        if maps_count(jvm.pid) == Some(before) {
            assert_eq!(event.u64("map_count"), u64::from(before), "{}", event.json);
            compared += 1;
        }
        jvm.send("RESUME");
        jvm.expect_line("RESUMED", Duration::from_secs(10));
    }
    assert!(
        compared >= 5,
        "only {compared} of 8 pauses were quiet enough to compare"
    );
}
