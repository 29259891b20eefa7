//! Counters of what the programs had to drop: records that found a ring buffer full, and
//! sockets or threads that found their table full.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use tracer_common::lost::LOST_SLOTS;

/// Per-CPU counts of drops, one slot per kind (`tracer_common::lost`). Per-CPU so that counting a drop never contends.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_SLOTS, 0);

/// Counts one dropped record in `slot`.
#[inline(always)]
pub fn count(slot: u32) {
    if let Some(counter) = LOST.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot; the program cannot be preempted by itself on this CPU.
        unsafe { *counter += 1 };
    }
}

/// Counts `records` dropped records in `slot` (a batch that found its ring full).
#[inline(always)]
pub fn count_many(slot: u32, records: u64) {
    if let Some(counter) = LOST.get_ptr_mut(slot) {
        // SAFETY: as in `count`.
        unsafe { *counter += records };
    }
}
