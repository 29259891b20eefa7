//! Where the VMA count comes from on this kernel, chosen by what the kernel has (its BTF), not
//! by its version: the cheapest exact source for other processes first.

use crate::btf::Btf;

/// A way of reading the target's `mm->map_count` after each change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmaSource {
    /// `mmap_lock:mmap_lock_released`, read under the lock: exact and ordered, and misses
    /// nothing (every change takes the lock). Chosen only where the event is cheap: where it
    /// carries a cgroup id (6.18) rather than building the memcg path string for every lock
    /// release of every process (5.11 to 6.1 and 6.12, where before 6.4 each page fault takes
    /// the lock too).
    MmapLock,
    /// fentry programs (BPF trampolines) on the x86-64 entry functions of the syscalls that
    /// change memory maps: the cost falls on those syscalls alone, filtered by the target first.
    /// Each reads the count the previous change left; the agent's heal reads the last one.
    SyscallFentry,
    /// `raw_syscalls:sys_exit`, filtered by the target first: every task's syscalls take the
    /// kernel's slower tracing path while it is attached.
    SyscallTracepoint,
}

impl VmaSource {
    pub const ALL: [Self; 3] = [Self::MmapLock, Self::SyscallFentry, Self::SyscallTracepoint];

    /// The name events, the live view and metrics carry.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MmapLock => "mmap_lock",
            Self::SyscallFentry => "syscall_fentry",
            Self::SyscallTracepoint => "syscall_tracepoint",
        }
    }
}

/// What the kernel offers for the VMA count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// `mmap_lock:mmap_lock_released` exists (not on 5.10).
    pub mmap_lock: bool,
    /// Its event builds a memcg path string (`trace_event_raw_mmap_lock.__data_loc_memcg_path`).
    pub mmap_lock_builds_path: bool,
    /// The running kernel's own BTF is there (trampolines attach by its type ids) and has the
    /// syscall functions.
    pub syscall_functions: bool,
}

impl Features {
    pub fn of(btf: &Btf, running_kernel_btf: bool) -> Self {
        Self {
            mmap_lock: btf.tracepoint_arity("mmap_lock_released").is_some(),
            mmap_lock_builds_path: btf
                .has_member("trace_event_raw_mmap_lock", "__data_loc_memcg_path"),
            syscall_functions: running_kernel_btf && btf.has_function("__x64_sys_mmap"),
        }
    }
}

/// The sources to try, best first: the agent attaches the first that loads. A costly
/// `mmap_lock` comes last, behind the syscall tracepoint that exists on every kernel.
pub fn candidates(features: Features) -> Vec<VmaSource> {
    let mut sources = Vec::with_capacity(3);
    let cheap_lock = features.mmap_lock && !features.mmap_lock_builds_path;
    if cheap_lock {
        sources.push(VmaSource::MmapLock);
    }
    if features.syscall_functions {
        sources.push(VmaSource::SyscallFentry);
    }
    sources.push(VmaSource::SyscallTracepoint);
    if features.mmap_lock && !cheap_lock {
        sources.push(VmaSource::MmapLock);
    }
    sources
}

#[cfg(test)]
mod tests {
    use super::*;
    use VmaSource::{MmapLock, SyscallFentry, SyscallTracepoint};

    #[test]
    fn picks_per_kernel() {
        // 6.18: the event carries a cgroup id; trampolines are not relied upon there.
        let k6_18 = Features {
            mmap_lock: true,
            mmap_lock_builds_path: false,
            syscall_functions: true,
        };
        assert_eq!(
            candidates(k6_18),
            [MmapLock, SyscallFentry, SyscallTracepoint]
        );
        // 6.1, 6.12: a path string per lock release of every process.
        let k6_1 = Features {
            mmap_lock_builds_path: true,
            ..k6_18
        };
        assert_eq!(
            candidates(k6_1),
            [SyscallFentry, SyscallTracepoint, MmapLock]
        );
        // 5.10: no mmap_lock tracepoints.
        let k5_10 = Features {
            mmap_lock: false,
            mmap_lock_builds_path: false,
            syscall_functions: true,
        };
        assert_eq!(candidates(k5_10), [SyscallFentry, SyscallTracepoint]);
        // A BTFHub file instead of the kernel's own BTF: no trampolines.
        assert_eq!(candidates(Features::default()), [SyscallTracepoint]);
    }
}
