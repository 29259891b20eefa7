//! Indices of the per-CPU `LOST` counters: one slot per ring buffer, bumped by the kernel
//! programs whenever `bpf_ringbuf_reserve` fails because userspace fell behind. The agent sums
//! the slots over CPUs and reports the totals; no loss is ever silent.

/// Records of [`crate::vma::VmaEvent`] that did not fit into `VMA_EVENTS`.
pub const LOST_VMA: u32 = 0;

/// Number of slots in the `LOST` map.
pub const LOST_SLOTS: u32 = 1;
