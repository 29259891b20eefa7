//! Checks of the machine and of our privileges, made before anything is loaded, so each
//! problem ends in one line that names its fix.

use std::{fs, os::unix::fs::MetadataExt as _, path::Path};

use anyhow::{Context as _, anyhow, bail};

use tracer_common::config::{KernelLayout, PidNamespace, TickClock};

use crate::{
    btf::{self, Btf},
    probes,
    vma::source::{self, Features, VmaSource},
};

/// Capability bits (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// What the probes need to know about this machine, found once at start.
#[derive(Clone, Debug)]
pub struct Machine {
    /// Where the programs' kernel fields are, from the kernel's BTF.
    pub layout: KernelLayout,
    /// The pid namespace the agent's pids are in.
    pub pidns: PidNamespace,
    /// The kernel's ticks, which the socket records are stamped by.
    pub clock: TickClock,
    /// Where the VMA count can come from here, best first.
    pub vma_sources: Vec<VmaSource>,
}

/// Runs every check, raises the memlock limit, and reads what the probes need to know: field
/// offsets from the kernel's BTF, or from `btf_file` (a BTFHub file for this kernel) where the
/// kernel publishes none. `vma_source` forces one source instead of the best available.
pub fn check(btf_file: Option<&Path>, vma_source: Option<VmaSource>) -> anyhow::Result<Machine> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    check_privileges(&status)?;
    let release = kernel_release();
    check_ring_buffer(&release)?;
    let kernel_btf = Path::new(btf::VMLINUX).exists();
    let btf = match btf_file {
        Some(path) => Btf::from_file(path).with_context(|| {
            format!("reading --btf {} - give the vmlinux BTF of this kernel ({release}), e.g. from BTFHub", path.display())
        })?,
        None if kernel_btf => {
            Btf::from_kernel().with_context(|| format!("reading {}", btf::VMLINUX))?
        }
        None => bail!(
            "this kernel ({release}) publishes no BTF at {} - give tracer this kernel's BTF with --btf FILE (BTFHub has files for most distribution kernels), or use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
            btf::VMLINUX
        ),
    };
    let layout = probes::kernel_layout(&btf).map_err(|e| {
        anyhow!("{e} - this kernel ({release}) is laid out in a way tracer does not know yet, please report it")
    })?;
    // Trampolines attach by the running kernel's own type ids: a BTFHub file cannot give them.
    let features = Features::of(&btf, kernel_btf && btf_file.is_none());
    let vma_sources = match vma_source {
        Some(forced) => vec![forced],
        None => source::candidates(features),
    };
    raise_memlock_limit();
    let mut pidns = pid_namespace()?;
    if pidns.ino != 0 {
        pidns.level = probes::pid_level(&layout).map_err(|e| {
            anyhow!("{e} - in a container's pid namespace tracer asks the kernel how deep it is, which needs Linux 5.10+")
        })?;
    }
    let clock = probes::tick_clock(&layout).map_or_else(|e| {
        log::info!(
            "{e} - the socket probe stamps its records with bpf_ktime_get_ns instead, which costs more per transition"
        );
        TickClock::default()
    }, |clock| {
        log::debug!("the kernel's ticks: {} ns each, count {} at {} ns", clock.tick_ns, clock.base_jiffies, clock.base_ns);
        clock
    });
    Ok(Machine {
        layout,
        pidns,
        clock,
        vma_sources,
    })
}

/// The programs publish through BPF ring buffers (Linux 5.8): the one hard requirement.
fn check_ring_buffer(release: &str) -> anyhow::Result<()> {
    match aya::sys::is_map_supported(aya::maps::MapType::RingBuf) {
        Ok(true) => Ok(()),
        Ok(false) => bail!(
            "this kernel ({release}) has no BPF ring buffer (BPF_MAP_TYPE_RINGBUF) - tracer needs Linux 5.8 or newer with BTF"
        ),
        // Probing needs the privilege checked above; let the load say what is wrong.
        Err(e) => {
            log::debug!("probing for BPF ring buffers: {e}");
            Ok(())
        }
    }
}

/// Loading BPF programs needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN, which root has).
fn check_privileges(status: &str) -> anyhow::Result<()> {
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    bail!(
        "tracer needs root (or the capabilities CAP_BPF and CAP_PERFMON) to load its eBPF probes - run it with sudo"
    );
}

/// Inode of the initial (host) pid namespace: `PROC_PID_INIT_INO` in the kernel.
const HOST_PIDNS_INO: u64 = 0xEFFF_FFFC;

/// The pid namespace the agent sees pids in, for the probes: zero in the host's, where they
/// compare the kernel's own ids; `/proc/self/ns/pid` in a container's. (`NSpid` in
/// /proc/self/status cannot tell: a container's own /proc shows only its ids.)
fn pid_namespace() -> anyhow::Result<PidNamespace> {
    let ns = fs::metadata("/proc/self/ns/pid").context("reading /proc/self/ns/pid")?;
    Ok(in_container(ns.dev(), ns.ino()))
}

fn in_container(dev: u64, ino: u64) -> PidNamespace {
    if ino == HOST_PIDNS_INO {
        PidNamespace::default()
    } else {
        PidNamespace {
            dev,
            ino,
            ..PidNamespace::default()
        }
    }
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned())
}

/// `(major, minor)` of a kernel release string such as "6.18.44-fc-v595".
fn version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    Some((parts.next()?.ok()?, parts.next()?.ok()?))
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it where we may. Newer kernels
/// charge the memory cgroup instead and ignore it.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid pointer to an rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const unlimited) } != 0 {
        log::debug!(
            "could not lift RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Whether this kernel charges BPF maps to RLIMIT_MEMLOCK (before 5.11), for error hints.
pub fn memlock_charged() -> bool {
    version(&kernel_release()).is_some_and(|v| v < (5, 11))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privileges_come_from_the_effective_set() {
        assert!(check_privileges("CapEff:\t000001ffffffffff\n").is_ok());
        assert!(check_privileges("CapEff:\t000000c000000000\n").is_ok());
        let denied = check_privileges("CapInh:\t0000000000000000\nCapEff:\t0000004000000000\n");
        assert!(denied.unwrap_err().to_string().contains("run it with sudo"));
        assert!(check_privileges("").is_err());
    }

    #[test]
    fn pid_namespaces() {
        assert_eq!(in_container(4, HOST_PIDNS_INO), PidNamespace::default());
        assert_eq!(
            in_container(4, 4_026_532_999),
            PidNamespace {
                dev: 4,
                ino: 4_026_532_999,
                ..PidNamespace::default()
            }
        );
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(version("6.18.44-fc-v595"), Some((6, 18)));
        assert_eq!(version("5.10.0-rc1"), Some((5, 10)));
        assert_eq!(version("unknown"), None);
    }
}
