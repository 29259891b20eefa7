//! The read-only globals that say which process is traced and where to find kernel fields.

use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use tracer_common::config::KernelOffsets;

/// The target's thread-group id; set by the agent at load time (`TARGET_TGID_GLOBAL`).
#[unsafe(no_mangle)]
static TARGET_TGID: u32 = 0;

/// Offsets of kernel structure fields, from the running kernel's BTF (`KERNEL_OFFSETS_GLOBAL`).
#[unsafe(no_mangle)]
static KERNEL_OFFSETS: KernelOffsets = KernelOffsets {
    task_mm: 0,
    mm_map_count: 0,
    regs_syscall_nr: 0,
    pad: 0,
};

/// Whether the current task belongs to the target: one helper call and one compare, the first
/// thing every program does.
#[inline(always)]
pub fn is_current() -> bool {
    // SAFETY: a volatile read keeps the compiler from folding the load-time value to 0.
    let target = unsafe { core::ptr::read_volatile(&raw const TARGET_TGID) };
    (bpf_get_current_pid_tgid() >> 32) as u32 == target
}

/// The kernel field offsets handed in at load time.
#[inline(always)]
pub fn offsets() -> KernelOffsets {
    // SAFETY: as above, the value is set at load time and must not be constant-folded.
    unsafe { core::ptr::read_volatile(&raw const KERNEL_OFFSETS) }
}
