//! The target's VMA count (`mm->map_count`), read where the kernel changes it. Which programs
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
    helpers::bpf_get_current_task,
    macros::map,
    maps::{Array, RingBuf},
    programs::RawTracePointContext,
};
use tracer_common::{
    lost::LOST_VMA,
    vma::{HIGH_WATER, RECORD_EVERY, REGISTER, VmaEvent, VmaRegister, WAKEUP_BYTES},
};

use crate::{
    kernel::{Ring, read, wakeup_flags},
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

/// `mmap_lock:mmap_lock_released` (5.10 has none; 5.11-6.x: `TP_PROTO(struct mm_struct *mm,
/// [const char *memcg_path,] bool write)`, the path gone in 6.14+): every release of any
/// process's mmap_lock, just before it is let go. Only `mm`, the first argument, is read.
pub fn on_lock_released(ctx: &RawTracePointContext) -> Option<()> {
    let mm: u64 = ctx.arg(0);
    let register = register()?;
    if mm != register.mm {
        // Another process's lock, the common case: one compare. Until the target's mm is
        // known (after attach, after an exec), its own thread releasing its own mm tells.
        if register.mm != 0 || current_mm()? != mm {
            return None;
        }
        learn(register, mm);
    }
    publish(register, read_count(mm)?, current_tid);
    Some(())
}

/// The exit of any syscall (the `syscall_tracepoint` source): when the current task is one of
/// the target's, its count as the syscall left it.
#[inline(always)]
pub fn on_syscall_exit() -> Option<()> {
    let mm = current_mm()?;
    let register = register()?;
    if mm != register.mm {
        learn(register, mm);
    }
    publish(register, read_count(mm)?, current_tid);
    Some(())
}

/// The entry of a syscall that changes memory maps (the `syscall_fentry` source): when the
/// current task is one of the target's, its count as the previous such syscall left it. That
/// change is put down to the thread that entered the previous one (`VmaRegister::tid`).
#[inline(always)]
pub fn on_syscall_entry() -> Option<()> {
    let (tid, mm) = current_thread_mm()?;
    let register = register()?;
    if mm != register.mm {
        learn(register, mm);
    }
    let changer = core::mem::replace(&mut register.tid, tid);
    publish(register, read_count(mm)?, || changer);
    Some(())
}

/// Run on demand by the agent (BPF_PROG_TEST_RUN, in the agent's context): reads the count of
/// the target's mm now, so a reading published out of order is replaced by the current one.
pub fn heal() -> Option<()> {
    let register = register()?;
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

/// The target's `struct mm_struct *`, once a probe learned it: every thread of the target
/// shares it, so comparing a task's `mm` with it says whether the task is one.
#[inline(always)]
pub fn target_mm() -> Option<u64> {
    let register = VMA_STATE.get(REGISTER)?;
    (register.mm != 0).then_some(register.mm)
}

/// Learns the target's mm from the current task, which the caller found to be one of the
/// target's, when it is not known yet (so a target that never changes its memory map still
/// gets its threads accounted, and has its count healed).
#[inline(always)]
pub fn learn_own() -> Option<()> {
    let register = register()?;
    if register.mm == 0 {
        let task = unsafe { bpf_get_current_task() } as *const u8;
        let mm = read::<u64>(task, layout!(task_mm)).filter(|&mm| mm != 0)?;
        learn(register, mm);
    }
    Some(())
}

/// `sched:sched_process_exec`: a process replaced its program, and with it its memory map.
/// When it is the target, the old mm is forgotten so the new one is learned.
pub fn on_exec() -> Option<()> {
    if !target::is_current() {
        return None;
    }
    // The exec'ing thread is the target's only one now.
    register()?.mm = 0;
    Some(())
}

#[inline(always)]
fn register() -> Option<&'static mut VmaRegister> {
    let register = VMA_STATE.get_ptr_mut(REGISTER)?;
    // SAFETY: an entry of an array map, valid for the program's run. Its writers are the
    // target's own threads and the agent's heal: a race among them leaves a stale count for
    // at most one report, until the next heal.
    Some(unsafe { &mut *register })
}

/// The current task's mm, when the current task is one of the target's.
#[inline(always)]
fn current_mm() -> Option<u64> {
    current_thread_mm().map(|(_, mm)| mm)
}

/// The current task's thread id and mm, when the current task is one of the target's.
#[inline(always)]
fn current_thread_mm() -> Option<(u32, u64)> {
    let tid = target::current_thread()?;
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let mm = read::<u64>(task, layout!(task_mm)).filter(|&mm| mm != 0)?;
    Some((tid, mm))
}

/// The thread a record of a change made in the current context is put down to: 0 when
/// another process held the lock (a reader of /proc/PID/maps).
#[inline(always)]
fn current_tid() -> u32 {
    target::current_thread().unwrap_or(0)
}

#[inline(always)]
fn learn(register: &mut VmaRegister, mm: u64) {
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

/// Stores a reading in the register; records it, with the thread `tid` names, when it is a
/// new high or one in `RECORD_EVERY` changes.
#[inline(always)]
fn publish(register: &mut VmaRegister, count: u32, tid: impl FnOnce() -> u32) {
    if register.valid != 0 && register.count == count {
        return;
    }
    register.count = count;
    register.valid = 1;
    register.changes = register.changes.wrapping_add(1);
    let Some(high) = VMA_STATE.get_ptr_mut(HIGH_WATER) else {
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
        emit(count, tid());
    }
}

#[inline(always)]
fn emit(count: u32, tid: u32) {
    let Some(mut entry) = VMA_EVENTS.reserve::<VmaEvent>(0) else {
        lost::count(LOST_VMA);
        return;
    };
    entry.write(VmaEvent {
        tid,
        map_count: count,
    });
    entry.submit(wakeup_flags(
        &VMA_EVENTS,
        WAKEUP_BYTES,
        Ring::Vma,
        size_of::<VmaEvent>(),
    ));
}
