//! The guest's whole userland, as an initramfs: busybox-static, the tracer binary with the
//! shared libraries it links (found with ldd), the static workloads of tests/native and any
//! other binaries, the inet_diag/tcp_diag modules of the booted kernel (decompressed), and an /init
//! that mounts what tracer needs, runs one shell script and powers the guest off.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use super::kernels::Kernel;

/// Printed by /init before powering off; the host reads the script's exit status from it.
pub const EXIT_MARKER: &str = "vm: exit status ";

/// The modules tracer's socket seeding (sock_diag) needs, in load order.
const MODULES: &[&str] = &["net/ipv4/inet_diag", "net/ipv4/tcp_diag"];

/// Mounts, modules, the script, then power off; `set -x` is not used so that the console
/// carries only what the script prints.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /root
/bin/busybox --install -s /bin
export PATH=/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
for module in $(cat /modules/order); do insmod /modules/$module || echo "vm: insmod $module failed"; done
echo "vm: kernel $(uname -r) up"
sh /script
echo "vm: exit status $?"
sync
poweroff -f
"#;

/// Everything that goes into one initramfs besides busybox and /init.
pub struct Contents<'a> {
    /// Put at /bin/tracer, with its shared libraries.
    pub tracer: &'a Path,
    /// Put at /bin/<file name>, with their shared libraries.
    pub binaries: Vec<PathBuf>,
    /// The shell script /init runs.
    pub script: String,
    pub kernel: &'a Kernel,
}

/// Builds `out` (an uncompressed newc cpio archive) from `contents`, staging in `stage`.
pub fn build(contents: &Contents<'_>, stage: &Path, out: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(stage);
    for dir in ["bin", "modules"] {
        std::fs::create_dir_all(stage.join(dir))?;
    }
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        bail!("/bin/busybox is missing: install busybox-static (cargo xtask setup does)");
    }
    copy(busybox, &stage.join("bin/busybox"))?;
    copy(contents.tracer, &stage.join("bin/tracer"))?;
    let mut libraries: BTreeSet<PathBuf> = shared_libraries(contents.tracer)?.into_iter().collect();
    for binary in &contents.binaries {
        let name = binary
            .file_name()
            .with_context(|| format!("{} has no file name", binary.display()))?;
        copy(binary, &stage.join("bin").join(name))?;
        libraries.extend(shared_libraries(binary)?);
    }
    for library in &libraries {
        copy(library, &under(stage, library))?;
    }
    let mut order = String::new();
    for module in MODULES {
        let name = module.rsplit('/').next().unwrap_or(module);
        let base = contents.kernel.modules.join("kernel").join(module);
        let target = stage.join("modules").join(format!("{name}.ko"));
        decompress_module(&base, &target)?;
        order.push_str(name);
        order.push_str(".ko\n");
    }
    std::fs::write(stage.join("modules/order"), order)?;
    write_executable(&stage.join("init"), INIT)?;
    write_executable(&stage.join("script"), &contents.script)?;
    cpio(stage, out)
}

/// Copies `from` to `to`, creating `to`'s directory.
fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// `path` (absolute) re-rooted under `root`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn write_executable(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The shared libraries `binary` loads, as ldd resolves them (none for a static binary).
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    // ldd exits 1 with "not a dynamic executable" for static binaries.
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, resolved)) => resolved.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// `<base>.ko`, `.ko.xz` or `.ko.zst` of the package, written uncompressed to `target`
/// (busybox's insmod loads only plain modules).
fn decompress_module(base: &Path, target: &Path) -> anyhow::Result<()> {
    let with = |ext: &str| PathBuf::from(format!("{}.{ext}", base.display()));
    let plain = with("ko");
    if plain.is_file() {
        return copy(&plain, target);
    }
    for (ext, tool) in [("ko.xz", "xz"), ("ko.zst", "zstd")] {
        let packed = with(ext);
        if packed.is_file() {
            let out = std::fs::File::create(target)?;
            let status = Command::new(tool)
                .arg("-dc")
                .arg(&packed)
                .stdout(out)
                .status()
                .with_context(|| format!("running {tool} (cargo xtask setup installs it)"))?;
            if !status.success() {
                bail!("{tool} -dc {} failed", packed.display());
            }
            return Ok(());
        }
    }
    bail!(
        "the kernel package has no {}.ko{{,.xz,.zst}}",
        base.display()
    )
}

/// Packs `stage` into a newc cpio archive owned by root.
fn cpio(stage: &Path, out: &Path) -> anyhow::Result<()> {
    let mut paths = Vec::new();
    walk(stage, stage, &mut paths)?;
    let archive = std::fs::File::create(out)?;
    let mut child = Command::new("cpio")
        .args(["-o", "-H", "newc", "-R", "0:0", "--quiet"])
        .current_dir(stage)
        .stdin(Stdio::piped())
        .stdout(archive)
        .spawn()
        .context("running cpio (cargo xtask setup installs it)")?;
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().context("cpio stdin")?;
        for path in &paths {
            writeln!(stdin, "{}", path.display())?;
        }
    }
    if !child.wait()?.success() {
        bail!("cpio failed packing {}", stage.display());
    }
    Ok(())
}

/// Every path under `dir`, relative to `root`, directories before their contents.
fn walk(root: &Path, dir: &Path, paths: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        paths.push(path.strip_prefix(root)?.to_path_buf());
        if entry.file_type()?.is_dir() {
            walk(root, &path, paths)?;
        }
    }
    Ok(())
}
