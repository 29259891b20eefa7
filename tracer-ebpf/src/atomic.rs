//! Atomic operations on map values. The `bpfel-unknown-none` target declares no
//! compare-and-swap, so `core::sync::atomic` hides it; the intrinsics reach LLVM as atomic IR,
//! which bpf-linker lowers to BPF_ATOMIC instructions (kernel 5.12+).

use core::intrinsics::{self, AtomicOrdering::Relaxed};

/// Loads `*ptr` in one instruction. An aligned 64-bit BPF load is single-copy atomic; LLVM's
/// atomic load needs `-mcpu=v4`, which the generic target of bpf-linker does not select.
///
/// # Safety
/// `ptr` must be valid and aligned, as a map value pointer is.
#[inline(always)]
pub unsafe fn load(ptr: *const u64) -> u64 {
    unsafe { ptr.read_volatile() }
}

/// Atomically adds one to `*ptr` and returns the new value, or `None` if `attempts`
/// compare-and-swaps all lost a race.
///
/// Built on compare-and-swap: LLVM 22 turns BPF_ADD | BPF_FETCH into a plain BPF_ADD when it
/// wrongly finds the result unused (seen here with bpf-linker 0.13, `-mcpu=v3`), which would
/// hand every caller the same value.
///
/// # Safety
/// As for [`load`].
#[inline(always)]
pub unsafe fn increment(ptr: *mut u64, attempts: usize) -> Option<u64> {
    let mut current = unsafe { load(ptr) };
    for _ in 0..attempts {
        match unsafe { compare_exchange(ptr, current, current + 1) } {
            Ok(()) => return Some(current + 1),
            Err(found) => current = found,
        }
    }
    None
}

/// Replaces `*ptr` with `new` if it still holds `current` (BPF_CMPXCHG); on failure returns
/// the value found.
///
/// # Safety
/// As for [`load`].
#[inline(always)]
pub unsafe fn compare_exchange(ptr: *mut u64, current: u64, new: u64) -> Result<(), u64> {
    let (found, ok) =
        unsafe { intrinsics::atomic_cxchg::<u64, { Relaxed }, { Relaxed }>(ptr, current, new) };
    if ok { Ok(()) } else { Err(found) }
}
