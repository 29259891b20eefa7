//! Each target's VMA count (`mm->map_count`), read where the kernel changes it. Which programs
//! feed it depends on the kernel (`tracer_common::vma::VmaSource`, chosen by the agent):
//! - `mmap_lock`: at every release of the target's `mmap_lock` (see `tracer_common::vma` for
//!   why that is exact);
//! - `syscall_fentry`: at the entry of each syscall that changes memory maps (BPF trampolines),
//!   so a reading is the count the previous change left;
//! - `syscall_tracepoint`: at the exit of every syscall of the target (`raw_syscalls:sys_exit`).
//!
//! The syscall sources read without the lock, so two threads can publish their readings out of
//! order, and `syscall_fentry` sees the last change before a pause only at the next syscall;
//! `heal` (run by the agent every report) puts the current count back.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_get_current_task,
    macros::map,
    maps::{Array, HashMap, RingBuf},
    programs::RawTracePointContext,
};
use tracer_common::{
    config::{FILTER_SLOTS, MAX_TARGETS, mm_filter_slot},
    lost::LOST_VMA,
    vma::{HIGH_WATER, RECORD_EVERY, REGISTER, VmaEvent, VmaRegister, WAKEUP_BYTES, state_index},
};

use crate::{
    kernel::{Ring, atomic_add, read, wakeup_flags},
    lost,
    target::{self, Current, layout},
};

/// Per target, two entries ([`state_index`]): its `mm` and the latest reading of its
/// count (`REGISTER`), and the high water mark since the agent last looked (`HIGH_WATER`, its
/// `count` alone). The agent resets a pair when it gives its index to a target.
#[map]
static VMA_STATE: Array<VmaRegister> = Array::with_max_entries(2 * MAX_TARGETS, 0);

/// The targets' `struct mm_struct *`, to their numbers, once learned (every thread of a process
/// shares its mm, so a task's `mm` says whose it is): the one lookup by which the lock probe
/// and the scheduler probe tell a target's mm from anyone else's. Entered by the programs
/// when they learn a target's mm, removed at its exec and by the agent when it detaches from the target.
#[map]
static TARGET_MMS: HashMap<u64, u32> = HashMap::with_max_entries(MAX_TARGETS, 0);

/// Per `mm_filter_slot`, how many of [`TARGET_MMS`]'s mms fall there: an mm whose entry is 0 is
/// no target's, told by one array read before the hash lookup. Counted up (atomically) before
/// an mm enters `TARGET_MMS` and down after it leaves, by the programs; where the agent takes
/// entries out of `TARGET_MMS` (a target it stops following while it lives) the count stays
/// up, which costs a lookup, never a miss.
#[map]
static MM_FILTER: Array<u32> = Array::with_max_entries(FILTER_SLOTS, 0);

/// Entry 0: how many targets' mm is not known yet, as the agent last counted (at each report
/// and each change of targets), less those learned since. While it is 0, a lock release of an
/// mm not in [`TARGET_MMS`] is dismissed at once; otherwise the releasing task is looked up.
#[map]
static UNLEARNED: Array<u32> = Array::with_max_entries(1, 0);

/// Changes of the targets' counts, one `VmaEvent` each, for the agent. 1 MiB holds 43,000
/// records (with the ring buffer's 8-byte header each).
#[map]
static VMA_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// `mmap_lock:mmap_lock_released` (5.10 has none; 5.11-6.x: `TP_PROTO(struct mm_struct *mm,
/// [const char *memcg_path,] bool write)`, the path gone in 6.14+): every release of any
/// process's mmap_lock, just before it is let go. Only `mm`, the first argument, is read.
pub fn on_lock_released(ctx: &RawTracePointContext) -> Option<()> {
    let mm: u64 = ctx.arg(0);
    let target = match target_of_mm(mm) {
        Some(target) => target,
        // Another process's lock, the common case: one lookup. Until a target's mm is known
        // (after attach, after an exec), its own thread releasing its own mm tells.
        None => {
            if unlearned() == 0 {
                return None;
            }
            let (current, own) = current_thread_mm()?;
            if own != mm {
                return None;
            }
            learn(current.target, register(current.target)?, mm);
            current.target
        }
    };
    publish(target, register(target)?, read_count(mm)?, || {
        current_tid(target)
    });
    Some(())
}

/// The exit of any syscall (the `syscall_tracepoint` source): when the current task is one of
/// a target's, its count as the syscall left it.
#[inline(always)]
pub fn on_syscall_exit() -> Option<()> {
    let (current, mm) = current_thread_mm()?;
    let register = register(current.target)?;
    if mm != register.mm {
        learn(current.target, register, mm);
    }
    publish(current.target, register, read_count(mm)?, || current.tid);
    Some(())
}

/// The entry of a syscall that changes memory maps (the `syscall_fentry` source): when the
/// current task is one of a target's, its count as the previous such syscall left it. That
/// change is put down to the thread that entered the previous one (`VmaRegister::tid`).
#[inline(always)]
pub fn on_syscall_entry() -> Option<()> {
    let (current, mm) = current_thread_mm()?;
    let register = register(current.target)?;
    if mm != register.mm {
        learn(current.target, register, mm);
    }
    let changer = core::mem::replace(&mut register.tid, current.tid);
    publish(current.target, register, read_count(mm)?, || changer);
    Some(())
}

/// Run on demand by the agent (BPF_PROG_TEST_RUN, in the agent's context) for the target in
/// `target`: reads the count of its mm now, so a reading published out of order is replaced by
/// the current one.
pub fn heal(target: u32) -> Option<()> {
    let register = register(target)?;
    if register.mm == 0 {
        return None;
    }
    let count = read_count(register.mm)?;
    if register.valid == 0 || register.count != count {
        register.count = count;
        register.valid = 1;
    }
    Some(())
}

/// The number of the target whose `struct mm_struct *` is `mm`, once a probe learned it.
#[inline(always)]
pub fn target_of_mm(mm: u64) -> Option<u32> {
    if MM_FILTER
        .get(mm_filter_slot(mm))
        .is_none_or(|&count| count == 0)
    {
        return None;
    }
    // SAFETY: a value of a hash map, copied at once.
    unsafe { TARGET_MMS.get(&mm).copied() }
}

/// Learns the mm of the current task, a thread of the target numbered `target`, when it is not known
/// yet (so a target that never changes its memory map still gets its threads accounted, and
/// has its count healed). Returns the target's mm.
#[inline(always)]
pub fn learn_own(target: u32) -> Option<u64> {
    let register = register(target)?;
    if register.mm == 0 {
        // SAFETY: the helper has no preconditions.
        let task = unsafe { bpf_get_current_task() } as *const u8;
        let mm = read::<u64>(task, layout!(task_mm)).filter(|&mm| mm != 0)?;
        learn(target, register, mm);
    }
    Some(register.mm)
}

/// `sched:sched_process_exec`: a process replaced its program, and with it its memory map.
/// When it is a target, its old mm is forgotten so the new one is learned.
pub fn on_exec() -> Option<()> {
    let current = target::current()?;
    // The exec'ing thread is the target's only one now.
    if forget_mm(current.target) {
        add_unlearned(1);
    }
    Some(())
}

/// Takes the mm of the target numbered `target` out of [`TARGET_MMS`] (at its exec, and when
/// its last thread exits, so that a gone target's mm does not stay in the table); whether it
/// was there.
#[inline(always)]
pub fn forget_mm(target: u32) -> bool {
    let Some(register) = register(target) else {
        return false;
    };
    let mm = core::mem::replace(&mut register.mm, 0);
    if mm == 0 || TARGET_MMS.remove(&mm).is_err() {
        return false;
    }
    add_filtered(mm, -1);
    true
}

/// Adds `step` (1 or -1) to `mm`'s entry of [`MM_FILTER`], atomically.
#[inline(always)]
fn add_filtered(mm: u64, step: i32) {
    if let Some(count) = MM_FILTER.get_ptr_mut(mm_filter_slot(mm)) {
        // SAFETY: an entry of an array map, valid and aligned for the program's run.
        unsafe { atomic_add(count, step) };
    }
}

/// The register of the target numbered `target`.
#[inline(always)]
fn register(target: u32) -> Option<&'static mut VmaRegister> {
    let register = VMA_STATE.get_ptr_mut(state_index(target, REGISTER))?;
    // SAFETY: an entry of an array map, valid for the program's run. Its writers are the
    // target's own threads and the agent's heal: a race among them leaves a stale count for
    // at most one report, until the next heal.
    Some(unsafe { &mut *register })
}

/// [`UNLEARNED`]'s count.
#[inline(always)]
fn unlearned() -> u32 {
    UNLEARNED.get(0).copied().unwrap_or(0)
}

/// Adds `step` (1 or -1) to [`UNLEARNED`]'s count, atomically.
#[inline(always)]
fn add_unlearned(step: i32) {
    if let Some(count) = UNLEARNED.get_ptr_mut(0) {
        // SAFETY: an entry of an array map, valid and aligned for the program's run.
        unsafe { atomic_add(count, step) };
    }
}

/// The current task and its mm, when the current task is one of a target's.
#[inline(always)]
fn current_thread_mm() -> Option<(Current, u64)> {
    let current = target::current()?;
    // SAFETY: the helper has no preconditions.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let mm = read::<u64>(task, layout!(task_mm)).filter(|&mm| mm != 0)?;
    Some((current, mm))
}

/// The thread a record of a change made in the current context is put down to: 0 when
/// another process held the lock (a reader of /proc/PID/maps).
#[inline(always)]
fn current_tid(target: u32) -> u32 {
    target::current()
        .filter(|current| current.target == target)
        .map_or(0, |current| current.tid)
}

/// Makes `mm` the target's in `target`: entered in [`TARGET_MMS`] (where an exec's new mm
/// replaces the old), its register to be read anew. The first of two threads learning it at
/// once takes the count off [`UNLEARNED`].
#[inline(always)]
fn learn(target: u32, register: &mut VmaRegister, mm: u64) {
    if register.mm != 0 && register.mm != mm && TARGET_MMS.remove(&register.mm).is_ok() {
        add_filtered(register.mm, -1);
    }
    // Counted before it can be found, uncounted after it cannot.
    add_filtered(mm, 1);
    if TARGET_MMS
        .insert(&mm, &target, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        if register.mm == 0 {
            add_unlearned(-1);
        }
    } else {
        // Another thread entered it first (or the table is full).
        add_filtered(mm, -1);
    }
    register.mm = mm;
    register.valid = 0;
}

#[inline(always)]
fn read_count(mm: u64) -> Option<u32> {
    match read::<i32>(mm as *const u8, layout!(mm_map_count)) {
        Some(count) => u32::try_from(count).ok(),
        None => None,
    }
}

/// Stores a reading in the register of the target numbered `target`; records it, with the thread
/// `tid` names, when it is a new high or one in `RECORD_EVERY` changes.
#[inline(always)]
fn publish(target: u32, register: &mut VmaRegister, count: u32, tid: impl FnOnce() -> u32) {
    if register.valid != 0 && register.count == count {
        return;
    }
    register.count = count;
    register.valid = 1;
    register.changes = register.changes.wrapping_add(1);
    let Some(high) = VMA_STATE.get_ptr_mut(state_index(target, HIGH_WATER)) else {
        return;
    };
    // SAFETY: as in `register`; the agent may reset it meanwhile, and then a spike of that
    // instant is only seen in the register.
    let high = unsafe { &mut (*high).count };
    let new_high = count > *high;
    if new_high {
        *high = count;
    }
    if new_high || register.changes % RECORD_EVERY == 0 {
        emit(target, count, tid());
    }
}

#[inline(always)]
fn emit(target: u32, count: u32, tid: u32) {
    let Some(mut entry) = VMA_EVENTS.reserve::<VmaEvent>(0) else {
        lost::count(LOST_VMA);
        return;
    };
    entry.write(VmaEvent {
        tid,
        map_count: count,
        target,
        pad: 0,
    });
    entry.submit(wakeup_flags(
        &VMA_EVENTS,
        WAKEUP_BYTES,
        Ring::Vma,
        size_of::<VmaEvent>(),
    ));
}
