//! `cargo xtask`: the project's own commands. Each one installs what it needs first, so a
//! fresh machine goes from clone to result with one command.
//!
//! - `cargo xtask setup`: nightly rust-src, bpf-linker (built against nightly's LLVM), and the
//!   Debian packages the tests use.
//! - `cargo xtask build`: setup, then `target/release/tracer` with the eBPF object embedded.
//! - `cargo xtask demo`: build, then `tracer demo` (as root).
//! - `cargo xtask test`: build, then unit tests, the integration tests (as root), one tiny
//!   round of the benchmarks (`bench --smoke`, to a temp file) so that they keep running, and
//!   the kernel matrix (`vm-test`).
//! - `cargo xtask vm-test`: build, then the kernel matrix (Debian 5.10, 6.1, 6.12 under qemu,
//!   and this machine's kernel), also run by `cargo xtask test`.
//! - `cargo xtask vm-bench`: the matrix's part of `bench` alone (tables on stdout), with
//!   table (d), program run time per hit, on each kernel.
//! - `cargo xtask vm-run --kernel 6.1 [--tracer PATH] -- CMD...`: boots a Debian kernel of the
//!   matrix under qemu with tracer and the static workloads in /bin and runs CMD there.
//! - `cargo xtask bench`: build, then the side-by-side benchmarks into BENCHMARKS.md (as root).

mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Set up, build, demo and test tracer")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain pieces and packages the build and the tests need.
    Setup,
    /// Build target/release/tracer (one file, eBPF object embedded).
    Build,
    /// Build, then run the tracer on its built-in demo workload.
    Demo {
        /// Arguments passed to `tracer demo` (e.g. -- --duration 60).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build, then run every test: unit tests, then the integration tests against real
    /// processes (needs root).
    Test {
        /// Only integration tests whose name contains this.
        filter: Option<String>,
    },
    /// Build, then measure tracer against no tracing and against bpftrace, side by side, and
    /// write BENCHMARKS.md (needs root; about ten minutes).
    Bench {
        /// One short round of each, to check that the benchmarks run (written to --out).
        #[arg(long)]
        smoke: bool,
        /// Where to write the report.
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: PathBuf,
    },
    /// Build, then run the kernel matrix: Debian's 5.10, 6.1 and 6.12 under qemu, and this
    /// machine's kernel, each checking tracer against the kernel's own view (needs root).
    VmTest {
        /// Only these kernel series (repeatable; default: all of the matrix).
        #[arg(long)]
        kernel: Vec<String>,
        /// Test this tracer binary instead of building one.
        #[arg(long)]
        tracer: Option<PathBuf>,
        /// Guests booted at once.
        #[arg(long, default_value_t = VM_JOBS)]
        jobs: usize,
        /// Skip the checks on this machine's kernel.
        #[arg(long)]
        no_host: bool,
    },
    /// Only the kernel matrix's part of the benchmarks (`bench` includes it): a table per
    /// kernel under qemu -icount, printed as markdown.
    VmBench {
        /// Only these kernel series (repeatable; default: all of the matrix).
        #[arg(long)]
        kernel: Vec<String>,
        /// Measure this tracer binary instead of building one.
        #[arg(long)]
        tracer: Option<PathBuf>,
        /// One short round on one kernel, to check that it runs.
        #[arg(long)]
        smoke: bool,
    },
    /// Boot a Debian kernel of the matrix under qemu (TCG) with a tracer binary, the static
    /// workloads of tests/native and busybox in /bin, and run a command there as root.
    VmRun {
        /// The kernel series: 5.10, 6.1 or 6.12 (the newest Debian package of it).
        #[arg(long)]
        kernel: String,
        /// The tracer binary to put in the guest's /bin (default: target/release/tracer).
        #[arg(long)]
        tracer: Option<PathBuf>,
        /// More binaries for the guest's /bin (their shared libraries come along).
        #[arg(long)]
        file: Vec<PathBuf>,
        /// Seconds before the guest is killed.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// The command, run by the guest's shell (one argument: a whole script line).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    match cli.command {
        Task::Setup => setup::run(),
        Task::Build => build(&root).map(|_| ()),
        Task::Demo { args } => {
            let tracer = build(&root)?;
            let mut command = as_root(&tracer);
            command.arg("demo").args(args);
            check(&mut command)
        }
        Task::Test { filter } => test(&root, filter.as_deref()),
        Task::Bench { smoke, out } => bench(&root, smoke, &out),
        Task::VmTest {
            kernel,
            tracer,
            jobs,
            no_host,
        } => {
            let tracer = given_or_built(&root, tracer)?;
            vm_test(&root, &tracer, &kernel, jobs, !no_host)
        }
        Task::VmBench {
            kernel,
            tracer,
            smoke,
        } => {
            let tracer = given_or_built(&root, tracer)?;
            let bencher = test_binary(&root, "vm-bench")?;
            let tables = vm::bench(&root, &tracer, &bencher, &kernel, smoke, true)?;
            print!("{tables}");
            Ok(())
        }
        Task::VmRun {
            kernel,
            tracer,
            file,
            timeout,
            command,
        } => {
            let tracer = tracer.unwrap_or_else(|| root.join("target/release/tracer"));
            if !tracer.is_file() {
                bail!(
                    "{} is missing: run `cargo xtask build` or pass --tracer PATH",
                    tracer.display()
                );
            }
            let status = vm::run(
                &root,
                &kernel,
                &tracer,
                &file,
                std::time::Duration::from_secs(timeout),
                &command,
            )?;
            std::process::exit(status);
        }
    }
}

fn bench(root: &Path, smoke: bool, out: &Path) -> anyhow::Result<()> {
    let tracer = build(root)?;
    run_bench(root, &tracer, smoke, out)
}

/// The benchmarks against the `tracer` binary already built.
fn run_bench(root: &Path, tracer: &Path, smoke: bool, out: &Path) -> anyhow::Result<()> {
    let out = if out.is_absolute() {
        out.to_path_buf()
    } else {
        root.join(out)
    };
    let mut command = cargo(root);
    command.args([
        "run",
        "--release",
        "--package",
        "tracer-tests",
        "--bin",
        "bench",
        "--",
    ]);
    if smoke {
        command.arg("--smoke");
    }
    command.arg(&out).env("TRACER_BIN", tracer);
    check(&mut as_root_command(command))?;
    // The smoke round (`cargo xtask test`) leaves out table (d), which needs six more
    // attaches per kernel: `cargo xtask vm-bench --smoke` checks that it runs.
    let tables = vm::bench(
        root,
        tracer,
        &test_binary(root, "vm-bench")?,
        &[],
        smoke,
        !smoke,
    )?;
    let mut report =
        std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
    report.push_str(&tables);
    std::fs::write(&out, report).with_context(|| format!("writing {}", out.display()))
}

/// `tracer` when given, else the release binary built now.
fn given_or_built(root: &Path, tracer: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    tracer.map_or_else(|| build(root), Ok)
}

/// Sets up, then builds the release binary; returns its path.
fn build(root: &Path) -> anyhow::Result<PathBuf> {
    setup::run()?;
    check(cargo(root).args(["build", "--release", "--package", "tracer"]))?;
    let tracer = root.join("target/release/tracer");
    if !tracer.is_file() {
        bail!("the build left no {}", tracer.display());
    }
    Ok(tracer)
}

fn test(root: &Path, filter: Option<&str>) -> anyhow::Result<()> {
    let tracer = build(root)?;
    check(cargo(root).args([
        "test",
        "--workspace",
        "--exclude",
        "tracer-tests",
        "--exclude",
        "tracer-ebpf",
    ]))?;
    let mut integration = cargo(root);
    // Every test file runs even when one fails, so one run shows every failure.
    integration
        .args([
            "test",
            "--release",
            "--no-fail-fast",
            "--package",
            "tracer-tests",
            "--",
        ])
        .arg("--test-threads=1");
    if let Some(filter) = filter {
        integration.arg(filter);
    }
    integration.env("TRACER_BIN", &tracer);
    check(&mut as_root_command(integration))?;
    if filter.is_none() {
        // The benchmarks are not tests, but they must keep running: one tiny round of each.
        let smoke = std::env::temp_dir().join("tracer-bench-smoke.md");
        run_bench(root, &tracer, true, &smoke)?;
        // The integration tests above cover this machine's kernel already.
        vm_test(root, &tracer, &[], VM_JOBS, false)?;
    }
    Ok(())
}

/// Guests `vm-test` boots at once by default.
const VM_JOBS: usize = 1;

/// The kernel matrix against `tracer`, with the checker built here.
fn vm_test(
    root: &Path,
    tracer: &Path,
    series: &[String],
    jobs: usize,
    host: bool,
) -> anyhow::Result<()> {
    let checker = test_binary(root, "vm-checks")?;
    vm::test(root, tracer, &checker, series, jobs, host)
}

/// Builds the tests crate's binary `name` (release); returns its path.
fn test_binary(root: &Path, name: &str) -> anyhow::Result<PathBuf> {
    check(cargo(root).args([
        "build",
        "--release",
        "--package",
        "tracer-tests",
        "--bin",
        name,
    ]))?;
    Ok(root.join("target/release").join(name))
}

fn cargo(root: &Path) -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command
        .current_dir(root)
        .env("PATH", setup::path_with_cargo_bin());
    command
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `program` run as root: directly when we are root, through sudo otherwise.
fn as_root(program: &Path) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut command = Command::new("sudo");
        command
            .arg("--preserve-env=TRACER_BIN,PATH,RUST_LOG")
            .arg(program);
        command
    }
}

pub fn as_root_command(command: Command) -> Command {
    if is_root() {
        return command;
    }
    let mut sudo = Command::new("sudo");
    sudo.arg("--preserve-env=TRACER_BIN,PATH,RUST_LOG,CARGO_HOME,RUSTUP_HOME,RUSTUP_TOOLCHAIN");
    if let Some(dir) = command.get_current_dir() {
        sudo.current_dir(dir);
    }
    for (key, value) in command.get_envs() {
        if let Some(value) = value {
            sudo.env(key, value);
        }
    }
    sudo.arg(command.get_program()).args(command.get_args());
    sudo
}

/// Runs `command`, failing with its command line when it fails.
pub fn check(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .context("xtask has no parent directory")
}
