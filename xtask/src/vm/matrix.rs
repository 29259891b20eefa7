//! `cargo xtask vm-test`: the kernel matrix. Each kernel of [`MATRIX`] boots under qemu with
//! tracer, the static workloads and the checker (tests/src/bin/vm-checks.rs) in its
//! initramfs; the checker compares tracer with the guest kernel's own view and prints one
//! line per check, which are parsed here. The same checker also runs on this machine's
//! kernel. Any failed, missing or unrun check fails the run with the guest's own words.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{Guest, boot, kernels, qemu, static_workloads};

/// Printed by the checker in front of each result.
const PREFIX: &str = "vm-check ";

/// A guest that has not powered off after this long is killed (a boot takes seconds, the
/// checks about a minute under emulation).
const GUEST_TIMEOUT: Duration = Duration::from_mins(10);

/// What one kernel gave.
struct Outcome {
    kernel: String,
    seconds: f64,
    /// (check, Ok(detail) or Err(why)), in the checker's order.
    checks: Vec<(String, Result<String, String>)>,
    /// Why the run as a whole is broken (no plan, a missing check, no `done`), if it is.
    broken: Option<String>,
    log: PathBuf,
}

impl Outcome {
    fn passed(&self) -> bool {
        self.broken.is_none() && self.checks.iter().all(|(_, r)| r.is_ok())
    }
}

/// Runs the matrix (`series`, all of it when empty) with `tracer` and the checker
/// `checker`, `jobs` guests at once, then the checker on this machine's kernel.
pub fn run(
    root: &Path,
    tracer: &Path,
    checker: &Path,
    series: &[String],
    jobs: usize,
    host: bool,
) -> anyhow::Result<()> {
    let series: Vec<String> = if series.is_empty() {
        kernels::MATRIX
            .iter()
            .map(|(s, _)| (*s).to_owned())
            .collect()
    } else {
        series.to_vec()
    };
    let workloads = static_workloads(root)?;
    let logs = root.join("target/vm/logs");
    std::fs::create_dir_all(&logs)?;
    let kernels = series
        .iter()
        .map(|s| kernels::fetch(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for batch in kernels.chunks(jobs.max(1)) {
        let results = std::thread::scope(|scope| {
            let handles: Vec<_> = batch
                .iter()
                .map(|kernel| {
                    let logs = &logs;
                    scope.spawn(move || guest(root, kernel, tracer, checker, logs))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("guest thread"))
                .collect::<Vec<_>>()
        });
        for result in results {
            outcomes.push(result?);
        }
    }
    let matrix_seconds = started.elapsed().as_secs_f64();
    if host {
        outcomes.push(on_host(tracer, checker, &workloads, &logs)?);
    }
    report(&outcomes, matrix_seconds, jobs)
}

/// The VMA source tracer must pick on every kernel of the matrix: none has an `mmap_lock`
/// event without the memcg path string (only 6.14+ do), and all have BPF trampolines and
/// the `__x64_sys_*` functions in their BTF.
const GUEST_VMA_SOURCE: &str = "syscall_fentry";

/// One kernel: initramfs, boot, parse.
fn guest(
    root: &Path,
    kernel: &kernels::Kernel,
    tracer: &Path,
    checker: &Path,
    logs: &Path,
) -> anyhow::Result<Outcome> {
    let log = logs.join(format!("{}.log", kernel.package));
    eprintln!(
        "xtask: vm-test: booting {} (console in {})",
        kernel.package,
        log.display()
    );
    let console = boot(
        root,
        &Guest {
            kernel,
            tracer,
            binaries: &[checker.to_path_buf()],
            script: &format!(
                "TRACER_BIN=/bin/tracer vm-checks /bin --exclusive --vma-source {GUEST_VMA_SOURCE}"
            ),
            cpu: qemu::Cpu::Fast,
            timeout: GUEST_TIMEOUT,
        },
        &log,
        false,
    )?;
    let label = format!("{} ({})", kernel.series, kernel.package);
    let mut outcome = parse(&label, &console.lines, log);
    outcome.seconds = console.elapsed.as_secs_f64();
    if outcome.broken.is_some() && console.status.is_none() {
        let tail: Vec<&str> = console
            .lines
            .iter()
            .rev()
            .take(15)
            .rev()
            .map(String::as_str)
            .collect();
        outcome.broken = outcome.broken.map(|why| {
            format!("{why}; the guest never finished (timeout {GUEST_TIMEOUT:?} or panic), its last lines: {}", tail.join(" | "))
        });
    }
    eprintln!(
        "xtask: vm-test: {} done in {:.0} s",
        kernel.package, outcome.seconds
    );
    Ok(outcome)
}

/// The checker on this machine's kernel (other processes may load BPF here meanwhile, so
/// the unload check is limited to what tracer itself held).
fn on_host(
    tracer: &Path,
    checker: &Path,
    workloads: &[PathBuf],
    logs: &Path,
) -> anyhow::Result<Outcome> {
    let dir = workloads
        .first()
        .and_then(|w| w.parent())
        .context("no workloads")?;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let label = format!("this machine ({})", release.trim());
    let log = logs.join("host.log");
    eprintln!("xtask: vm-test: the checks on {label}");
    let started = Instant::now();
    let out = crate::as_root_command({
        let mut command = Command::new(checker);
        command.arg(dir).env("TRACER_BIN", tracer);
        command
    })
    .output()
    .with_context(|| format!("running {}", checker.display()))?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    std::fs::write(&log, &text)?;
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut outcome = parse(&label, &lines, log);
    outcome.seconds = started.elapsed().as_secs_f64();
    Ok(outcome)
}

/// The checker's lines among a console's.
fn parse(kernel: &str, lines: &[String], log: PathBuf) -> Outcome {
    let mut plan: Option<Vec<String>> = None;
    let mut checks = Vec::new();
    let mut done = false;
    for line in lines {
        let Some((_, rest)) = line.split_once(PREFIX) else {
            continue;
        };
        if let Some(names) = rest.strip_prefix("plan ") {
            plan = Some(names.split_whitespace().map(str::to_owned).collect());
        } else if rest.trim() == "done" {
            done = true;
        } else if let Some((name, detail)) = rest.split_once(" ok: ") {
            checks.push((name.to_owned(), Ok(detail.to_owned())));
        } else if let Some((name, why)) = rest.split_once(" FAIL: ") {
            checks.push((name.to_owned(), Err(why.to_owned())));
        }
    }
    let broken = match &plan {
        None => Some("the checker never started".to_owned()),
        Some(plan) => {
            let missing: Vec<&str> = plan
                .iter()
                .filter(|name| !checks.iter().any(|(n, _)| n == *name))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                Some(format!("no result for {}", missing.join(", ")))
            } else if !done {
                Some("the checker did not finish".to_owned())
            } else {
                None
            }
        }
    };
    Outcome {
        kernel: kernel.to_owned(),
        seconds: 0.0,
        checks,
        broken,
        log,
    }
}

fn report(outcomes: &[Outcome], matrix_seconds: f64, jobs: usize) -> anyhow::Result<()> {
    println!("\nkernel matrix ({jobs} guest(s) at a time, {matrix_seconds:.0} s for the guests):");
    for outcome in outcomes {
        let verdict = if outcome.passed() { "ok" } else { "FAILED" };
        println!("  {} ({:.0} s): {verdict}", outcome.kernel, outcome.seconds);
        for (name, result) in &outcome.checks {
            match result {
                Ok(detail) => println!("    {name}: ok: {detail}"),
                Err(why) => println!("    {name}: FAIL: {why}"),
            }
        }
        if let Some(why) = &outcome.broken {
            println!("    {why}");
        }
        if !outcome.passed() {
            println!("    console: {}", outcome.log.display());
        }
    }
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.passed())
        .map(|o| {
            let first = o
                .checks
                .iter()
                .find_map(|(name, r)| r.as_ref().err().map(|why| format!("{name}: {why}")))
                .or_else(|| o.broken.clone())
                .unwrap_or_default();
            format!("{}: {first}", o.kernel)
        })
        .collect();
    if !failed.is_empty() {
        bail!(
            "the kernel matrix failed on {} of {} kernels:\n  {}",
            failed.len(),
            outcomes.len(),
            failed.join("\n  ")
        );
    }
    Ok(())
}
