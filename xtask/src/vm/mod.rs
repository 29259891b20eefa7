//! Booting Debian's kernels under qemu with tracer inside: `cargo xtask vm-run` (one kernel,
//! any command), `cargo xtask vm-test` (the kernel matrix and its checks) and the matrix's
//! tables of `cargo xtask bench`.

mod bench;
mod initramfs;
mod kernels;
mod matrix;
mod qemu;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};

pub use bench::run as bench;
pub use matrix::run as test;
use qemu::Cpu;

/// `cargo xtask vm-run`: boots `series` with `tracer` and the static workloads in /bin, runs
/// `command` (one shell script line, or words quoted for the shell), and returns the
/// script's exit status.
pub fn run(
    root: &Path,
    series: &str,
    tracer: &Path,
    files: &[PathBuf],
    timeout: Duration,
    command: &[String],
) -> anyhow::Result<i32> {
    let kernel = kernels::fetch(series)?;
    let script = match command {
        [] => bail!("nothing to run: give a command after --"),
        [line] => line.clone(),
        words => words
            .iter()
            .map(|w| shell_quote(w))
            .collect::<Vec<_>>()
            .join(" "),
    };
    let log = std::env::temp_dir().join(format!("vm-{series}-{}.log", std::process::id()));
    eprintln!(
        "xtask: booting {} ({}) under qemu TCG; console also in {}",
        kernel.package,
        kernel.vmlinuz.display(),
        log.display()
    );
    let console = boot(
        root,
        &Guest {
            kernel: &kernel,
            tracer,
            binaries: files,
            script: &script,
            cpu: Cpu::Fast,
            timeout,
        },
        &log,
        true,
    )?;
    eprintln!(
        "xtask: guest {} after {:.1} s; console in {}",
        console.status.map_or_else(
            || "never finished its script".to_owned(),
            |s| format!("exited {s}")
        ),
        console.elapsed.as_secs_f64(),
        log.display()
    );
    console.status.with_context(|| {
        format!(
            "the guest did not finish (timeout {timeout:?} or panic): see {}",
            log.display()
        )
    })
}

/// One guest: what it boots and runs.
struct Guest<'a> {
    kernel: &'a kernels::Kernel,
    /// Becomes /bin/tracer.
    tracer: &'a Path,
    /// More binaries for /bin, besides the static workloads.
    binaries: &'a [PathBuf],
    /// The shell script the guest runs before powering off.
    script: &'a str,
    cpu: Cpu,
    timeout: Duration,
}

/// Builds the guest's initramfs (in a scratch directory of its own) and boots it, writing the
/// console to `log` (and to stdout with `echo`).
fn boot(root: &Path, guest: &Guest<'_>, log: &Path, echo: bool) -> anyhow::Result<qemu::Console> {
    let work = Work::new(root, &guest.kernel.package)?;
    let mut binaries = static_workloads(root)?;
    binaries.extend(guest.binaries.iter().cloned());
    let contents = initramfs::Contents {
        tracer: guest.tracer,
        binaries,
        script: format!("{}\n", guest.script),
        kernel: guest.kernel,
    };
    let image = work.dir.join("initramfs.cpio");
    initramfs::build(&contents, &work.dir.join("root"), &image)?;
    qemu::boot(&qemu::Boot {
        vmlinuz: &guest.kernel.vmlinuz,
        initramfs: &image,
        cpu: guest.cpu,
        memory_mib: 1024,
        timeout: guest.timeout,
        log: log.to_path_buf(),
        echo,
    })
}

/// A scratch directory under target/vm, one per run so that runs can overlap.
struct Work {
    dir: PathBuf,
}

impl Work {
    fn new(root: &Path, name: &str) -> anyhow::Result<Self> {
        let dir = root
            .join("target/vm")
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self { dir })
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The C workloads of tests/native, built static (`gcc -static`) into target/vm/native,
/// rebuilt when their source is newer.
fn static_workloads(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let sources = root.join("tests/native");
    let out = root.join("target/vm/native");
    std::fs::create_dir_all(&out)?;
    let mut binaries = Vec::new();
    for entry in std::fs::read_dir(&sources)? {
        let source = entry?.path();
        if source.extension().is_none_or(|e| e != "c") {
            continue;
        }
        let name = source.file_stem().context("source name")?;
        let binary = out.join(name);
        let stale = match (std::fs::metadata(&binary), std::fs::metadata(&source)) {
            (Ok(b), Ok(s)) => b.modified()? < s.modified()?,
            _ => true,
        };
        if stale {
            // Built under a temporary name: runs that overlap never see half a binary.
            let partial = out.join(format!("{}.{}", name.to_string_lossy(), std::process::id()));
            crate::check(
                Command::new("gcc")
                    .args(["-static", "-O2", "-pthread", "-o"])
                    .arg(&partial)
                    .arg(&source),
            )?;
            std::fs::rename(&partial, &binary)?;
        }
        binaries.push(binary);
    }
    binaries.sort();
    Ok(binaries)
}

fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}
