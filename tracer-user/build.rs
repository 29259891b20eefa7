//! Builds the eBPF object (`tracer-ebpf`, nightly, `bpfel-unknown-none`) so that `main.rs` can
//! embed it with `include_bytes_aligned!`: the `tracer` binary is one self-contained file.
//!
//! This is aya-build's nested `cargo build` with one addition it cannot express:
//! `-C target-cpu=v3`, so that LLVM uses the 32-bit ALU and jump instructions (kernel 5.1+;
//! the ring buffers already need 5.8): shorter programs on the hot tracepoints.
use std::{env, ffi::OsString, fs, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

const EBPF_PACKAGE: &str = "tracer-ebpf";
const EBPF_BIN: &str = "tracer";

fn main() -> anyhow::Result<()> {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .context("tracer-user has no parent directory")?;
    for input in [
        "tracer-ebpf/src",
        "tracer-ebpf/Cargo.toml",
        "tracer-common/src",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(input).display());
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR")?);
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH")?;
    let target = match env::var("CARGO_CFG_TARGET_ENDIAN").as_deref() {
        Ok("little") => "bpfel-unknown-none",
        Ok("big") => "bpfeb-unknown-none",
        other => bail!("unsupported target endianness {other:?}"),
    };
    let bpf_linker = which("bpf-linker")
        .context("bpf-linker is not on PATH - run `cargo xtask setup` (it builds bpf-linker against the nightly toolchain's LLVM)")?;
    println!("cargo:rerun-if-changed={}", bpf_linker.display());

    let target_dir = out_dir.join("ebpf-target");
    let flags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
        "-Ctarget-cpu=v3".to_owned(),
    ]
    .join("\x1f");
    let mut cargo = Command::new("rustup");
    cargo
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--package",
            EBPF_PACKAGE,
            "--bins",
            "--release",
        ])
        .args(["--target", target, "-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir)
        .current_dir(workspace)
        .env("CARGO_ENCODED_RUSTFLAGS", flags);
    // The outer build's compiler and flags are for the host, not for BPF.
    for key in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
    ] {
        cargo.env_remove(key);
    }
    let status = cargo
        .status()
        .context("running `rustup run nightly cargo` failed - run `cargo xtask setup`")?;
    if !status.success() {
        bail!(
            "building the eBPF object failed ({status}) - run `cargo xtask setup` to install the nightly rust-src component and bpf-linker"
        );
    }
    let object = target_dir.join(target).join("release").join(EBPF_BIN);
    fs::copy(&object, out_dir.join("tracer-ebpf.o"))
        .with_context(|| format!("copying {}", object.display()))?;
    Ok(())
}

fn which(program: &str) -> Option<PathBuf> {
    let path: OsString = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
