//! The cost side of the kernel matrix, for `cargo xtask bench`: each kernel boots with a
//! clock that counts instructions (qemu `-icount`), runs tests/src/bin/vm-bench.rs, and its
//! lines become one markdown table per kernel.

use std::{fmt::Write as _, path::Path, time::Duration};

use super::{Guest, boot, kernels, qemu};

const PREFIX: &str = "vm-bench ";
/// Table (d)'s lines: `<program> | target or others | ns per hit | empty program's | hits per
/// iteration`.
const RUN_TIME: &str = "vm-run-time ";

/// Markdown: a table per kernel of the matrix (or of `only`), and with `run_time` table (d)
/// (program run time per hit) per kernel too. `smoke` runs one short round, on one kernel
/// unless `only` names others.
pub fn run(
    root: &Path,
    tracer: &Path,
    bencher: &Path,
    only: &[String],
    smoke: bool,
    run_time: bool,
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
        let started = std::time::Instant::now();
        let kernel = kernels::fetch(s)?;
        let log = logs.join(format!("bench-{}.log", kernel.package));
        eprintln!(
            "xtask: bench: {} under -icount (console in {})",
            kernel.package,
            log.display()
        );
        let script = format!(
            "TRACER_BIN=/bin/tracer vm-bench /bin {seconds} {rounds}{}",
            if run_time { " run-time" } else { "" }
        );
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
        if run_time {
            run_time_table(&mut md, s, seconds, &console.lines)?;
        }
        eprintln!(
            "xtask: bench: {} took {:.0} s",
            kernel.package,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(md)
}

/// Table (d) on kernel series `s`, from the console's `vm-run-time` lines: a row per program,
/// its target and others' cells side by side.
fn run_time_table(md: &mut String, s: &str, seconds: &str, lines: &[String]) -> anyhow::Result<()> {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    for line in lines {
        let Some((_, rest)) = line.split_once(RUN_TIME) else {
            continue;
        };
        let (program, figures) = run_time_cells(rest, line)?;
        match rows.iter_mut().find(|(p, _)| *p == program) {
            Some((_, cells)) => cells.extend(figures),
            None => rows.push((program, figures)),
        }
    }
    let _ = writeln!(
        md,
        "\nProgram run time per hit on {s} (table (d), ns of guest time: 2 per instruction), over {seconds} s of guest \
         time: target hits while the loop is watched, others' while it runs beside a watched idle process.\n\n\
         | program | target hits | empty program, same hits | body, target | hits per iteration | others' hits | empty program, same hits | body, others | hits per iteration |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for (program, cells) in &rows {
        let _ = writeln!(md, "| {program} | {} |", cells.join(" | "));
    }
    Ok(())
}

/// A `vm-run-time` line's program and its four cells (run time, the empty program's, the
/// body, hits per iteration); the figures as text when the guest gave a reason instead.
fn run_time_cells(rest: &str, line: &str) -> anyhow::Result<(String, Vec<String>)> {
    let fields: Vec<&str> = rest.split(" | ").map(str::trim).collect();
    match fields.as_slice() {
        [program, _side, ours, empty, hits] => {
            let (ours, empty) = (ours.parse::<f64>()?, empty.parse::<f64>()?);
            Ok((
                (*program).to_owned(),
                vec![
                    format!("{ours:.1} ns"),
                    format!("{empty:.1} ns"),
                    format!("**{:.1} ns**", ours - empty),
                    format!("{:.2}", hits.parse::<f64>()?),
                ],
            ))
        }
        [program, _side, why] => Ok(((*program).to_owned(), vec![(*why).to_owned(); 4])),
        _ => anyhow::bail!("a vm-run-time line of other shape: {line}"),
    }
}

#[cfg(test)]
mod tests {
    use super::run_time_cells;

    #[test]
    fn run_time_cells_give_the_body_as_the_difference() {
        let line = "vm-run-time tracer_tcpstate | target | 2591.5 | 92.2 | 9.963";
        let (program, cells) = run_time_cells(&line["vm-run-time ".len()..], line).unwrap();
        assert_eq!(program, "tracer_tcpstate");
        assert_eq!(cells, ["2591.5 ns", "92.2 ns", "**2499.3 ns**", "9.96"]);
    }

    #[test]
    fn run_time_cells_carry_the_guests_reason() {
        let line = "vm-run-time tracer_switch | others | tracer did not attach";
        let (_, cells) = run_time_cells(&line["vm-run-time ".len()..], line).unwrap();
        assert_eq!(cells, ["tracer did not attach"; 4]);
        assert!(run_time_cells("a | b", "a | b").is_err());
    }
}
