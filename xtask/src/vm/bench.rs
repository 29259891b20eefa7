//! The cost side of the kernel matrix, for `cargo xtask bench`: each kernel boots with a
//! clock that counts instructions (qemu `-icount`), runs tests/src/bin/vm-bench.rs, and its
//! lines become one markdown table per kernel.

use std::{fmt::Write as _, path::Path, time::Duration};

use super::{Guest, boot, kernels, qemu};

const PREFIX: &str = "vm-bench ";

/// Markdown: a table per kernel of the matrix (or of `only`). `smoke` runs one short round,
/// on one kernel unless `only` names others.
pub fn run(
    root: &Path,
    tracer: &Path,
    bencher: &Path,
    only: &[String],
    smoke: bool,
) -> anyhow::Result<String> {
    let (seconds, rounds) = if smoke { ("0.2", 1) } else { ("1", 3) };
    let series: Vec<&str> = match (only, smoke) {
        ([], true) => vec![kernels::MATRIX[1].0],
        ([], false) => kernels::MATRIX.iter().map(|(s, _)| *s).collect(),
        (only, _) => only.iter().map(String::as_str).collect(),
    };
    let logs = root.join("target/vm/logs");
    std::fs::create_dir_all(&logs)?;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n## On the kernels of the matrix (qemu `-icount`)\n\n\
         Each kernel boots under `qemu-system-x86_64 -accel tcg,thread=single -icount shift=1,sleep=on -smp 1`: \
         guest time counts instructions, so the host's own load does not enter a ratio (two runs on 6.12 agreed within 2%). \
         `watched`: the loop is tracer's target. `others'`: an unrelated loop in a cgroup as deep as a Kubernetes \
         pod's container (`kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-1.scope`, \
         memory controller on), while tracer watches an idle process (`loops idle`). \
         `page faults`: one fault per iteration; `mm`: mmap, mprotect, munmap; `getppid`: the cheapest syscall. \
         Medians of {rounds} runs of {seconds} s of guest time per side, the sides taking turns after a warm-up run of each (`cargo xtask bench`; consoles in target/vm/logs).\n"
    );
    for s in series {
        let kernel = kernels::fetch(s)?;
        let log = logs.join(format!("bench-{}.log", kernel.package));
        eprintln!(
            "xtask: bench: {} under -icount (console in {})",
            kernel.package,
            log.display()
        );
        let script = format!("TRACER_BIN=/bin/tracer vm-bench /bin {seconds} {rounds}");
        let console = boot(
            root,
            &Guest {
                kernel: &kernel,
                tracer,
                binaries: &[bencher.to_path_buf()],
                script: &script,
                cpu: qemu::Cpu::Counted,
                timeout: Duration::from_mins(30),
            },
            &log,
            false,
        )?;
        let _ = writeln!(
            md,
            "\n### {} (`{}`)\n\n| loop | untraced | tracer | tracer / untraced |\n| --- | --- | --- | --- |",
            s, kernel.package
        );
        let mut done = false;
        for line in &console.lines {
            let Some((_, rest)) = line.split_once(PREFIX) else {
                continue;
            };
            if rest.trim() == "done" {
                done = true;
                continue;
            }
            let fields: Vec<&str> = rest.split(" | ").collect();
            let [name, without, with] = fields.as_slice() else {
                anyhow::bail!("a vm-bench line of other shape: {line}");
            };
            let ratio = match (without.parse::<f64>(), with.parse::<f64>()) {
                (Ok(without), Ok(with)) => format!("{:.3}", with / without),
                _ => format!("(console: {})", log.display()),
            };
            let rate = |r: &str| {
                if r.parse::<f64>().is_ok() {
                    format!("{r}/s")
                } else {
                    r.to_owned()
                }
            };
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {ratio} |",
                rate(without),
                rate(with)
            );
        }
        if !done {
            anyhow::bail!(
                "the benchmark in {} did not finish: see {}",
                kernel.package,
                log.display()
            );
        }
    }
    Ok(md)
}
