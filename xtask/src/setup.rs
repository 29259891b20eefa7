//! Installs what building and testing tracer need, skipping what is already there:
//!
//! - the nightly toolchain's `rust-src` (the eBPF crate builds `core` for bpfel-unknown-none);
//! - `bpf-linker`, built against the LLVM that ships inside the nightly toolchain, because it
//!   must match rustc's LLVM major and Debian has no LLVM that new;
//! - Debian packages: a JDK (the integration tests run a real JVM), iproute2 (`ss`, `ip netns`),
//!   gcc (the C workloads), bpftool (to check nothing stays loaded), redis-server (a real
//!   server to freeze), prometheus (promtool checks /metrics and the alerting rules), curl,
//!   bpftrace (what the benchmarks compare against), and for the kernel matrix qemu-system-x86,
//!   busybox-static, cpio, xz-utils and zstd (the guest's initramfs and its modules).

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::check;

/// The bpf-linker release the recipe is known to work with.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages and a command each provides, to test for presence.
const PACKAGES: &[(&str, &str)] = &[
    ("openjdk-17-jdk-headless", "javac"),
    ("iproute2", "ss"),
    ("gcc", "gcc"),
    ("bpftool", "bpftool"),
    ("redis-server", "redis-server"),
    ("prometheus", "promtool"),
    ("curl", "curl"),
    ("bpftrace", "bpftrace"),
    ("qemu-system-x86", "qemu-system-x86_64"),
    ("busybox-static", "busybox"),
    ("cpio", "cpio"),
    ("xz-utils", "xz"),
    ("zstd", "zstd"),
];

pub fn run() -> anyhow::Result<()> {
    rust_src()?;
    bpf_linker()?;
    packages()
}

fn rust_src() -> anyhow::Result<()> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"])).context(
        "the nightly toolchain is missing - install it with `rustup toolchain install nightly`",
    )?;
    let src = Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core");
    if src.is_dir() {
        return Ok(());
    }
    eprintln!("xtask: installing rust-src for the nightly toolchain");
    check(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker() -> anyhow::Result<()> {
    let linker = cargo_home().join("bin/bpf-linker");
    let works = Command::new(&linker)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if works {
        return Ok(());
    }
    let version = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let llvm_major = version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc +nightly -vV names no LLVM version")?
        .to_owned();
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let nightly_lib = Path::new(sysroot.trim()).join("lib");

    // A prefix whose lib/ holds the nightly toolchain's libLLVM under the names the build
    // (libLLVM.so) and the runtime loader (its soname) look for; bpf-linker's RUNPATH points
    // here.
    let prefix = cargo_home().join(format!("bpf-linker-llvm-{llvm_major}"));
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let mut found = false;
    for entry in std::fs::read_dir(&nightly_lib)
        .with_context(|| format!("reading {}", nightly_lib.display()))?
    {
        let entry = entry?;
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("libLLVM") {
            continue;
        }
        found = true;
        for link in [lib.join(&name), lib.join("libLLVM.so")] {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(entry.path(), &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
    }
    if !found {
        bail!(
            "no libLLVM in {} - reinstall the nightly toolchain",
            nightly_lib.display()
        );
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against the nightly toolchain's LLVM {llvm_major} (about a minute)"
    );
    check(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm_major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )?;
    let works = Command::new(&linker)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !works {
        bail!("the freshly built {} does not run", linker.display());
    }
    Ok(())
}

fn packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, command)| which(command).is_none())
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    let sudo = |program: &str| {
        if crate::is_root() {
            Command::new(program)
        } else {
            let mut command = Command::new("sudo");
            command.arg(program);
            command
        }
    };
    check(sudo("apt-get").arg("update").arg("-qq"))?;
    check(
        sudo("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME").map_or_else(
        || PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo"),
        PathBuf::from,
    )
}

/// PATH with `$CARGO_HOME/bin` in front, where bpf-linker is installed.
pub fn path_with_cargo_bin() -> OsString {
    let mut dirs = vec![cargo_home().join("bin")];
    if let Some(path) = env::var_os("PATH") {
        dirs.extend(env::split_paths(&path));
    }
    env::join_paths(dirs).unwrap_or_default()
}

fn which(program: &str) -> Option<PathBuf> {
    env::split_paths(&path_with_cargo_bin())
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn output(command: &mut Command) -> anyhow::Result<String> {
    let out = command
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}
