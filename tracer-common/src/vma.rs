//! The target's VMA count (`mm->map_count`), as the kernel programs publish it.
//!
//! Where the kernel's `mmap_lock` tracepoints are cheap (6.18 passes a cgroup id; 6.1 and 6.12 build a
//! memcg path string for every event), the
//! count is read under the lock, as below; elsewhere at the entry of the target's syscalls that
//! change its map, or at the exit of all its syscalls (the agent picks, see
//! `tracer-user/src/vma/source.rs`).
//!
//! Every change to a process's memory map happens under its `mmap_lock` held for writing, and
//! the `mmap_lock:mmap_lock_released` tracepoint fires just before the lock is let go. Reading
//! the count there, for the target's `mm`, gives its exact value after every change, in the
//! order the changes happened: writers are serialized by the lock, and a reader's reading is
//! done before any writer can take the lock after it. So the last reading is the current count,
//! with no race to arbitrate and no list of syscalls to keep up to date (mmap, munmap, mremap,
//! mprotect, madvise, brk, mlock, shmat, execve, stack growth, another process's
//! process_madvise: all of them take the lock). And the probe costs nothing to a process that
//! does not touch its memory map: a null syscall does not take the lock.

/// Entry [`REGISTER`] of a target's pair in the `VMA_STATE` array map ([`state_index`]):
/// written by the kernel only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmaRegister {
    /// The target's `struct mm_struct *`, learned at the first lock release in the target's own
    /// context; reset to 0 when the target execs (a new mm), to be learned again.
    pub mm: u64,
    /// The latest reading of `mm->map_count`.
    pub count: u32,
    /// Changes of the count seen (wrapping); one in [`RECORD_EVERY`] is recorded.
    pub changes: u32,
    /// 1 once `count` holds a reading.
    pub valid: u32,
    /// `syscall_fentry` source: the thread that entered the latest syscall that changes memory
    /// maps, to which the change the next reading shows is put down. 0 for the other sources.
    pub tid: u32,
}

const _: () = assert!(size_of::<VmaRegister>() == 24);

/// Index of the kernel's [`VmaRegister`] in a target's pair of `VMA_STATE` entries.
pub const REGISTER: u32 = 0;

/// Index in `VMA_STATE` of the high-water mark: the highest count since the agent last looked
/// (it resets `count` to 0 each report), so a spike between two reports is never missed. Only
/// `count` of this entry is used.
pub const HIGH_WATER: u32 = 1;

/// Index in `VMA_STATE` of entry `which` ([`REGISTER`] or [`HIGH_WATER`]) of the target
/// numbered `target`: each target has two.
#[inline]
pub const fn state_index(target: u32, which: u32) -> u32 {
    crate::config::target_index(target) * 2 + which
}

/// Records of the count's changes are coalesced: a change is recorded when it sets a new high
/// water mark (a growing map is seen change by change) and otherwise once in this many (the
/// churn of a JVM, mapping and unmapping all the time, is sampled for attribution). The count
/// itself never depends on records: the register holds it.
pub const RECORD_EVERY: u32 = 64;

/// A recorded change of the target's VMA count (see [`RECORD_EVERY`]), written to the
/// `VMA_EVENTS` ring buffer. Kept to the minimum: the agent names the thread from /proc.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmaEvent {
    /// Thread that changed the map: the one that released the lock (or a reader after it), or
    /// for `syscall_fentry` the one that entered the syscall before the reading.
    pub tid: u32,
    /// `mm->map_count` after the change.
    pub map_count: u32,
    /// The target's number (`config::TARGET_NUMBERS`).
    pub target: u32,
    /// Explicit padding; always zero.
    pub pad: u32,
}

const _: () = assert!(size_of::<VmaEvent>() == 16);

/// Bytes waiting in a ring buffer above which a producer wakes the agent at once. Below it
/// records are submitted with `BPF_RB_NO_WAKEUP` and the agent drains on its own short timer:
/// one wakeup per batch instead of one per record.
pub const WAKEUP_BYTES: u64 = 64 * 1024;
