//! Indices of the per-CPU `LOST` counters, bumped by the kernel programs whenever a record or a
//! socket had to be dropped: a ring buffer was full because userspace fell behind, or a bounded
//! map was full. The agent sums the slots over CPUs and reports the totals; no loss is ever
//! silent.

/// Records of [`crate::vma::VmaEvent`] that did not fit into `VMA_EVENTS`.
pub const LOST_VMA: u32 = 0;

/// Records of [`crate::tcp::TcpEvent`] that did not fit into `TCP_EVENTS`.
pub const LOST_TCP: u32 = 1;

/// Sockets of the target not followed because `TCP_SOCKETS` was full: their transitions are
/// not seen at all.
pub const UNTRACKED_TCP: u32 = 2;

/// Records of [`crate::task::TaskEvent`] that did not fit into `TASK_EVENTS`.
pub const LOST_TASK: u32 = 3;

/// Threads of the target whose time is not accounted because `THREADS` was full.
pub const UNTRACKED_THREADS: u32 = 4;

/// Number of slots in the `LOST` map.
pub const LOST_SLOTS: u32 = 5;
