//! Reads of kernel memory at offsets handed in at load time, atomic counts in map values, the
//! clock of the socket records, and the ring-buffer wakeup policy every program shares.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use tracer_common::config::TickClock;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel, generated::bpf_jiffies64},
    macros::map,
    maps::{PerCpuArray, RingBuf},
};

/// Reads a `T` at `base + offset` with `bpf_probe_read_kernel`, which checks the address.
#[inline(always)]
pub fn read<T>(base: *const u8, offset: u32) -> Option<T> {
    // SAFETY: the helper faults safely on a bad address and reports it as an error.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()).ok() }
}

/// Adds `step` (1 or -1) to a count in a map value, atomically (other CPUs update it too): the
/// BPF target has no compare-and-swap, so core offers no `AtomicU32::fetch_add` there, but the
/// kernel's atomic add exists on every kernel, as long as the old value is not wanted.
///
/// # Safety
/// `count` points into a map value, valid and aligned for the program's run.
#[inline(always)]
pub unsafe fn atomic_add(count: *mut u32, step: i32) {
    // SAFETY: the caller's.
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(count, step as u32) };
}

/// The agent's measure of the kernel's ticks (`TICK_CLOCK_GLOBAL`).
#[unsafe(no_mangle)]
pub static TICK_CLOCK: TickClock = TickClock {
    base_ns: 0,
    base_jiffies: 0,
    tick_ns: 0,
};

/// CLOCK_MONOTONIC nanoseconds now, rounded up to the end of the current tick ([`TickClock`]):
/// `bpf_jiffies64` (5.5+), which the verifier inlines as a load on 64-bit kernels, where
/// `bpf_ktime_get_ns` is a helper call through the clock source. `bpf_ktime_get_ns` where the
/// agent could not measure the ticks.
#[inline(always)]
pub fn tick_time() -> u64 {
    // SAFETY: a volatile read of a global the loader has written.
    let clock = unsafe { core::ptr::read_volatile(&raw const TICK_CLOCK) };
    if clock.tick_ns == 0 {
        // SAFETY: the helper has no preconditions.
        return unsafe { bpf_ktime_get_ns() };
    }
    clock.at(jiffies())
}

/// The kernel's tick count, `jiffies_64`.
#[inline(always)]
pub fn jiffies() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_jiffies64() }
}

/// How a program reads a field of a kernel structure at an offset handed in at load time.
pub trait Fields {
    /// The `T` at `base + offset`.
    fn get<T: Copy>(base: *const u8, offset: u32) -> Option<T>;
}

/// With `bpf_probe_read_kernel` ([`read`]): in any program, one helper call per field.
pub struct Probed;

impl Fields for Probed {
    #[inline(always)]
    fn get<T: Copy>(base: *const u8, offset: u32) -> Option<T> {
        read(base, offset)
    }
}

/// By plain loads from a pointer whose type the verifier knows from the kernel's BTF (the
/// arguments of a BTF-enabled tracepoint, 5.5+, and the pointers read from them): no helper
/// call. The verifier checks each load against the type at its offset, which it sees as a
/// constant (the offsets are read from the frozen read-only globals), and a load that faults
/// reads 0.
pub struct Direct;

impl Fields for Direct {
    #[inline(always)]
    fn get<T: Copy>(base: *const u8, offset: u32) -> Option<T> {
        // SAFETY: the kernel turns a faulting load from a BTF pointer into 0 (PROBE_MEM).
        Some(unsafe { core::ptr::read_volatile(base.wrapping_add(offset as usize).cast::<T>()) })
    }
}

/// The ring buffers, as slots of [`WAKEUP_WRITTEN`].
#[derive(Clone, Copy)]
pub enum Ring {
    Vma = 0,
    Tcp = 1,
    Task = 2,
}

/// Per CPU and ring ([`Ring`]), the bytes this CPU wrote to the ring since it last looked at
/// the backlog. One entry each, updated by each record.
#[map]
static WAKEUP_WRITTEN: PerCpuArray<u64> = PerCpuArray::with_max_entries(3, 0);

/// Each CPU looks at a ring's backlog once per this share of its wakeup threshold written.
const LOOKS_PER_THRESHOLD: u64 = 8;

/// Submit flags for a record of `size` bytes: no wakeup until `threshold` bytes are pending,
/// so the agent wakes once per batch (it also drains on a short timer); then a forced wakeup.
/// The backlog is looked at (a helper call) once per `threshold / 8` bytes a CPU writes, not
/// with every record: a forced wakeup is an interrupt the CPU sends itself (on a VM, a trap to
/// the hypervisor costing microseconds), and forcing one with every record until the agent
/// has drained cost more than the rest of the program. The agent is then woken by the time
/// `threshold + CPUs * threshold / 8` bytes wait.
#[inline(always)]
pub fn wakeup_flags(ring: &RingBuf, threshold: u64, slot: Ring, size: usize) -> u64 {
    let Some(written) = WAKEUP_WRITTEN.get_ptr_mut(slot as u32) else {
        return u64::from(BPF_RB_NO_WAKEUP);
    };
    // A record takes its size and an 8-byte header, rounded up to 8.
    let bytes = (size as u64 + 8).next_multiple_of(8);
    // SAFETY: this CPU's entry of a per-CPU array, valid for the program's run; a run nested
    // in this one can at worst make one more check or one fewer.
    unsafe {
        if *written + bytes < threshold / LOOKS_PER_THRESHOLD {
            *written += bytes;
            return u64::from(BPF_RB_NO_WAKEUP);
        }
        *written = 0;
    }
    let flags = if ring.query(u64::from(BPF_RB_AVAIL_DATA)) >= threshold {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    u64::from(flags)
}
