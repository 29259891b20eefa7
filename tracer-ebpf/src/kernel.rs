//! Reads of kernel memory at offsets handed in at load time, and the ring-buffer wakeup policy
//! every program shares.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::bpf_probe_read_kernel,
    maps::RingBuf,
};

/// Reads a `T` at `base + offset` with `bpf_probe_read_kernel`, which checks the address.
#[inline(always)]
pub fn read<T>(base: *const u8, offset: u32) -> Option<T> {
    // SAFETY: the helper faults safely on a bad address and reports it as an error.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()).ok() }
}

/// Submit flags: no wakeup until `threshold` bytes are pending, so the agent wakes once per
/// batch (it also drains on a short timer); then a forced wakeup.
#[inline(always)]
pub fn wakeup_flags(ring: &RingBuf, threshold: u64) -> u64 {
    let flags = if ring.query(u64::from(BPF_RB_AVAIL_DATA)) >= threshold {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    u64::from(flags)
}
