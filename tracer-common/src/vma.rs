//! The target's VMA count (`mm->map_count`), as the kernel programs publish it.
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

/// Value of the one-entry `VMA_STATE` array map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmaRegister {
    /// The target's `struct mm_struct *`, learned at the first lock release in the target's own
    /// context; reset to 0 when the target execs (a new mm), to be learned again.
    pub mm: u64,
    /// The latest reading of `mm->map_count`.
    pub count: u32,
    /// 1 once `count` holds a reading.
    pub valid: u32,
}

const _: () = assert!(size_of::<VmaRegister>() == 16);

/// One change of the target's VMA count, written to the `VMA_EVENTS` ring buffer. Kept to
/// the minimum, as the fastest mapping loops change the count a million times a second: the
/// agent names the thread from /proc itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmaEvent {
    /// Thread that released the lock: the one that changed the map (or a reader after it).
    pub tid: u32,
    /// `mm->map_count` after the change.
    pub map_count: u32,
}

const _: () = assert!(size_of::<VmaEvent>() == 8);

/// Bytes waiting in a ring buffer above which a producer wakes the agent at once. Below it
/// records are submitted with `BPF_RB_NO_WAKEUP` and the agent drains on its own short timer:
/// one wakeup per batch instead of one per record.
pub const WAKEUP_BYTES: u64 = 64 * 1024;
