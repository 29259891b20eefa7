//! Load-time configuration of the kernel programs.
//!
//! The agent reads these values from the running kernel's BTF and hands them to the programs as
//! read-only globals (`EbpfLoader::override_global`), so one binary runs on other kernels
//! without offsets compiled in for a single one.

/// Name of the global holding the target's thread-group id (its pid as `ps` shows it, in the
/// initial pid namespace). The programs return at once for every other process.
pub const TARGET_TGID_GLOBAL: &str = "TARGET_TGID";

/// Name of the global holding [`KernelOffsets`].
pub const KERNEL_OFFSETS_GLOBAL: &str = "KERNEL_OFFSETS";

/// Byte offsets of the kernel structure fields the programs read with
/// `bpf_probe_read_kernel`. rustc emits no CO-RE relocations, so these come from
/// `/sys/kernel/btf/vmlinux` at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `struct task_struct` -> `mm` (`struct mm_struct *`).
    pub task_mm: u32,
    /// `struct mm_struct` -> `map_count` (`int`); on 6.x kernels it sits in an anonymous struct.
    pub mm_map_count: u32,
    /// `struct pt_regs` -> the syscall number (`orig_ax` on x86-64, `syscallno` on arm64).
    pub regs_syscall_nr: u32,
    /// Explicit padding; always zero.
    pub pad: u32,
}

const _: () = assert!(size_of::<KernelOffsets>() == 16);
