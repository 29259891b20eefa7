//! Boots a kernel of the matrix with an initramfs under qemu's TCG (KVM cannot run these
//! kernels on our machines) and hands back what the guest printed on its serial console.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::initramfs::EXIT_MARKER;

/// How the guest's CPU is emulated.
#[derive(Clone, Copy)]
pub enum Cpu {
    /// Two vCPUs taking turns on one host thread, for correctness checks. Not
    /// `thread=multi`: with QEMU 7.2 a multi-threaded guest now and then oopses on an `int3`
    /// that the kernel's live patching (static keys, tracepoints being enabled) had already
    /// removed, as at boot in `sched_clock_cpu` (2 of 7 boots of 6.12 here); one host thread
    /// never runs stale code, lets two guests run at once on two cores, and runs the churn
    /// no slower.
    Fast,
    /// One vCPU, guest time counting instructions: cost ratios repeat to 0.1%.
    Counted,
}

pub struct Boot<'a> {
    pub vmlinuz: &'a Path,
    pub initramfs: &'a Path,
    pub cpu: Cpu,
    pub memory_mib: u32,
    pub timeout: Duration,
    /// Where the whole console output is written.
    pub log: PathBuf,
    /// Also copy the console to our stdout as it arrives.
    pub echo: bool,
}

/// What one boot gave.
pub struct Console {
    /// Every line the guest printed.
    pub lines: Vec<String>,
    /// The guest script's exit status; `None` when the guest never got to print it (panic,
    /// timeout).
    pub status: Option<i32>,
    pub elapsed: Duration,
}

pub fn boot(boot: &Boot<'_>) -> anyhow::Result<Console> {
    let accel: &[&str] = match boot.cpu {
        Cpu::Fast => &["-accel", "tcg,thread=single", "-cpu", "max", "-smp", "2"],
        Cpu::Counted => &[
            "-accel",
            "tcg,thread=single",
            "-icount",
            "shift=1,sleep=on",
            "-cpu",
            "max",
            "-smp",
            "1",
        ],
    };
    let started = Instant::now();
    let mut command = Command::new("qemu-system-x86_64");
    // SAFETY: prctl is async-signal-safe; the guest dies with us (Ctrl-C, a killed run).
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = command
        .args(accel)
        .args(["-m", &boot.memory_mib.to_string()])
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(boot.vmlinuz)
        .arg("-initrd")
        .arg(boot.initramfs)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("running qemu-system-x86_64 (cargo xtask setup installs qemu-system-x86)")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_owned();
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = std::fs::File::create(&boot.log)
        .with_context(|| format!("creating {}", boot.log.display()))?;
    let deadline = started + boot.timeout;
    let mut lines = Vec::new();
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                writeln!(log, "{line}")?;
                if boot.echo {
                    println!("{line}");
                }
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                let _ = child.kill();
                break;
            }
        }
    }
    let exit = child.wait()?;
    let elapsed = started.elapsed();
    let status = lines
        .iter()
        .rev()
        .find_map(|l| l.split_once(EXIT_MARKER)?.1.trim().parse().ok());
    if timed_out {
        writeln!(log, "xtask: killed qemu after {:?}", boot.timeout)?;
    } else if !exit.success() && status.is_none() {
        bail!("qemu failed ({exit}); console in {}", boot.log.display());
    }
    Ok(Console {
        lines,
        status,
        elapsed,
    })
}
