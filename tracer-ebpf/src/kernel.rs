//! Reads of kernel memory at offsets handed in at load time, and the ring-buffer wakeup policy
//! every program shares.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_PROD_POS},
    helpers::bpf_probe_read_kernel,
    macros::map,
    maps::{PerCpuArray, RingBuf},
};

/// Reads a `T` at `base + offset` with `bpf_probe_read_kernel`, which checks the address.
#[inline(always)]
pub fn read<T>(base: *const u8, offset: u32) -> Option<T> {
    // SAFETY: the helper faults safely on a bad address and reports it as an error.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()).ok() }
}

/// The ring buffers, as slots of [`WAKEUP_STRETCH`].
#[derive(Clone, Copy)]
pub enum Ring {
    Vma = 0,
    Tcp = 1,
    Task = 2,
}

/// Per CPU and ring ([`Ring`]), the stretch of the ring (its producer position divided by the
/// wakeup threshold) in which this CPU last looked at the backlog. One entry each, overwritten
/// by each check.
#[map]
static WAKEUP_STRETCH: PerCpuArray<u64> = PerCpuArray::with_max_entries(3, 0);

/// Submit flags: no wakeup until `threshold` bytes are pending, so the agent wakes once per
/// batch (it also drains on a short timer); then a forced wakeup. The backlog is looked at
/// once per CPU per `threshold` bytes written: a forced wakeup is an interrupt the CPU sends
/// itself (on a VM, a trap to the hypervisor costing microseconds), and forcing one with every
/// record until the agent has drained cost more than the rest of the program. The agent is
/// then woken by the time `2 * threshold` bytes wait.
#[inline(always)]
pub fn wakeup_flags(ring: &RingBuf, threshold: u64, slot: Ring) -> u64 {
    let stretch = ring.query(u64::from(BPF_RB_PROD_POS)) / threshold;
    let Some(last) = WAKEUP_STRETCH.get_ptr_mut(slot as u32) else {
        return u64::from(BPF_RB_NO_WAKEUP);
    };
    // SAFETY: this CPU's entry of a per-CPU array, valid for the program's run; a run nested
    // in this one can at worst make one more check.
    unsafe {
        if *last == stretch {
            return u64::from(BPF_RB_NO_WAKEUP);
        }
        *last = stretch;
    }
    let flags = if ring.query(u64::from(BPF_RB_AVAIL_DATA)) >= threshold {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    u64::from(flags)
}
