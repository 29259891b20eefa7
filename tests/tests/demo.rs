//! `tracer demo` leaves nothing behind: its workload's files go however it ends (its time up,
//! Ctrl-C, SIGTERM, SIGHUP, a signal while the probes are still loading), and so does its
//! workload.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tracer_tests::{Process, TempDir, tracer_bin};

/// Entries of `dir`.
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read temp dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

/// The files under `dir`: what the demo's workload has made so far.
fn workload_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| {
                let path = e.path();
                if path.is_dir() {
                    workload_files(&path)
                } else {
                    1
                }
            })
            .sum()
    })
}

/// Pids of processes whose command line mentions `dir` (the workload's --dir).
fn workloads_in(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .collect()
}

/// Runs `tracer demo --json` with its temp dir in `temp`, sends `signal` once the workload
/// has made `files` files (0: as soon as its directory exists, while the probes load), and
/// checks that the demo exits and leaves `temp` empty.
fn ends_clean(name: &str, signal: Option<i32>, files: usize) {
    let temp = TempDir::new(name);
    let mut command = Command::new(tracer_bin());
    command
        .args(["demo", "--json", "--rate", "2000", "--duration", "20"])
        .env("TMPDIR", temp.path())
        .stderr(Stdio::null());
    let mut demo = Process::spawn(&mut command);
    let deadline = Instant::now() + Duration::from_secs(15);
    while entries(temp.path()).is_empty() || workload_files(temp.path()) < files {
        assert!(Instant::now() < deadline, "{name}: the demo made no files");
        std::thread::sleep(Duration::from_millis(5));
    }
    if files > 0 {
        demo.expect_line("{\"type\":\"vma\"", Duration::from_secs(10));
    }
    let made = workload_files(temp.path());
    if let Some(signal) = signal {
        // SAFETY: a signal to a child we spawned.
        assert_eq!(
            unsafe { libc::kill(i32::try_from(demo.pid).expect("pid"), signal) },
            0
        );
    }
    let status = demo.wait(Duration::from_secs(25));
    let left = entries(temp.path());
    assert!(
        left.is_empty(),
        "{name}: {left:?} left in {} ({made} files made, {status:?})",
        temp.path().display()
    );
    assert!(
        workloads_in(temp.path()).is_empty(),
        "{name}: the workload is still running"
    );
}

#[test]
fn the_demo_removes_its_files_however_it_ends() {
    ends_clean("demo-int", Some(libc::SIGINT), 200);
    ends_clean("demo-term", Some(libc::SIGTERM), 200);
    ends_clean("demo-hup", Some(libc::SIGHUP), 200);
    ends_clean("demo-int-early", Some(libc::SIGINT), 0);
}

/// Runs `tracer demo` for `seconds` with its temp dir in `temp`; checks that it leaves `temp`
/// empty.
fn runs_clean(temp: &TempDir, seconds: &str) {
    let status = Command::new(tracer_bin())
        .args(["demo", "--json", "--duration", seconds])
        .env("TMPDIR", temp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run the demo");
    assert!(status.success());
    let left = entries(temp.path());
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn the_demo_removes_its_files_when_its_time_is_up() {
    runs_clean(&TempDir::new("demo-duration"), "2");
}

#[test]
fn a_killed_demos_files_go_with_the_next_demo() {
    // SIGKILL cannot be caught: the next demo removes what a dead one left.
    let temp = TempDir::new("demo-orphan");
    let orphan = temp.path().join("tracer-demo-4194303");
    std::fs::create_dir_all(orphan.join("demo-topic-0")).expect("mkdir");
    std::fs::write(
        orphan.join("demo-topic-0/00000000000000000000.index"),
        [0; 64],
    )
    .expect("write");
    runs_clean(&temp, "1");
}
