//! The target's VMA count, read under its `mmap_lock` at every release (see
//! `tracer_common::vma` for why that is exact, and how changes are recorded).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::map,
    maps::{Array, RingBuf},
    programs::RawTracePointContext,
};
use aya_log_ebpf::error;
use tracer_common::{
    lost::LOST_VMA,
    vma::{HIGH_WATER, RECORD_EVERY, REGISTER, VmaEvent, VmaRegister, WAKEUP_BYTES},
};

use crate::{
    kernel::{read, wakeup_flags},
    lost,
    target::{self, layout},
};

/// The target's `mm` and the latest reading of its count (entry `REGISTER`), and the high
/// water mark since the agent last looked (entry `HIGH_WATER`, its `count` alone).
#[map]
static VMA_STATE: Array<VmaRegister> = Array::with_max_entries(2, 0);

/// Changes of the count, one `VmaEvent` each, for the agent. 1 MiB holds 65,000 records (with
/// the ring buffer's 8-byte header each).
#[map]
static VMA_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// `mmap_lock:mmap_lock_released` (`TP_PROTO(struct mm_struct *mm, bool write)`): every
/// release of any process's mmap_lock, just before it is let go.
pub fn on_lock_released(ctx: &RawTracePointContext) -> Option<()> {
    let mm: u64 = ctx.arg(0);
    let register = VMA_STATE.get_ptr_mut(REGISTER)?;
    // SAFETY: an entry of an array map, valid for the program's run; it is written only under
    // the target's mmap_lock, so never by two CPUs at once.
    let register = unsafe { &mut *register };
    if mm != register.mm {
        // Another process's lock, the common case: one compare. Until the target's mm is
        // known (after attach, after an exec), its own thread releasing its own mm tells.
        if register.mm != 0 || !target::is_current() {
            return None;
        }
        let task = unsafe { bpf_get_current_task() } as *const u8;
        if read::<u64>(task, layout!(task_mm))? != mm {
            return None;
        }
        register.mm = mm;
        register.valid = 0;
    }
    let count: i32 = match read(mm as *const u8, layout!(mm_map_count)) {
        Some(count) => count,
        None => {
            error!(ctx, "reading mm->map_count failed: wrong BTF offsets?");
            return None;
        }
    };
    let count = u32::try_from(count).ok()?;
    if register.valid != 0 && register.count == count {
        return None;
    }
    register.count = count;
    register.valid = 1;
    register.changes = register.changes.wrapping_add(1);
    let high = VMA_STATE.get_ptr_mut(HIGH_WATER)?;
    // SAFETY: as above; the agent may reset it meanwhile, and then a spike of that instant is
    // only seen in the register.
    let high = unsafe { &mut (*high).count };
    let new_high = count > *high;
    if new_high {
        *high = count;
    }
    if new_high || register.changes % RECORD_EVERY == 0 {
        emit(count);
    }
    Some(())
}

/// The target's `struct mm_struct *`, once its first lock release told it: every thread of
/// the target shares it, so comparing a task's `mm` with it says whether the task is one.
#[inline(always)]
pub fn target_mm() -> Option<u64> {
    let register = VMA_STATE.get(REGISTER)?;
    (register.mm != 0).then_some(register.mm)
}

/// `sched:sched_process_exec`: a process replaced its program, and with it its memory map.
/// When it is the target, the old mm is forgotten so the new one is learned.
pub fn on_exec() -> Option<()> {
    if !target::is_current() {
        return None;
    }
    let register = VMA_STATE.get_ptr_mut(REGISTER)?;
    // SAFETY: as in `on_lock_released`; the exec'ing thread is the target's only one now.
    unsafe { (*register).mm = 0 };
    Some(())
}

#[inline(always)]
fn emit(count: u32) {
    let Some(mut entry) = VMA_EVENTS.reserve::<VmaEvent>(0) else {
        lost::count(LOST_VMA);
        return;
    };
    entry.write(VmaEvent {
        tid: bpf_get_current_pid_tgid() as u32,
        map_count: count,
    });
    entry.submit(wakeup_flags(&VMA_EVENTS, WAKEUP_BYTES));
}
