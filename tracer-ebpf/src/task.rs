//! The targets' threads: creation, renaming and exit as records, and each thread's time on
//! and off CPU accounted at its context switches (see `tracer_common::task`).

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_comm, bpf_get_current_task, bpf_ktime_get_ns,
        bpf_probe_read_kernel_str_bytes,
    },
    macros::map,
    maps::{Array, HashMap, RingBuf},
    programs::RawTracePointContext,
};
use tracer_common::{
    config::{ABSENT, MAX_TARGETS, target_index},
    lost::{LOST_TASK, UNTRACKED_THREADS},
    task::{
        ASLEEP, MAX_THREADS, PREEMPTED, ProcessExit, RUNNING, TASK_EXIT, TASK_NEW, TASK_RENAME,
        TASK_WAKEUP_BYTES, TaskEvent, ThreadSched,
    },
};

use crate::{
    kernel::{Ring, read, wakeup_flags},
    lost,
    target::{self, Current, layout},
    vma,
};

/// `CLONE_THREAD`: the new task is a thread of its creator's process.
const CLONE_THREAD: u64 = 0x0001_0000;

/// `TASK_DEAD` in `task_struct.__state`: set by an exiting thread for its last switch out.
const TASK_DEAD: u32 = 0x0080;

/// Each target thread's scheduling account (with its target's number), by thread id; entries are
/// made at a thread's first switch after attach and removed when it exits, or by the agent when
/// it detaches from the target.
#[map]
static THREADS: HashMap<u32, ThreadSched> = HashMap::with_max_entries(MAX_THREADS, 0);

/// Threads created, renamed and exited, one `TaskEvent` each. 256 KiB hold 8,000 records.
#[map]
static TASK_EVENTS: RingBuf = RingBuf::with_byte_size(256 << 10, 0);

/// `task:task_newtask` (`TP_PROTO(struct task_struct *task, u64 clone_flags)`), in the
/// creator's context: a new thread of a target.
pub fn on_new_task(ctx: &RawTracePointContext) -> Option<()> {
    let flags: u64 = ctx.arg(1);
    if flags & CLONE_THREAD == 0 {
        return None;
    }
    let current = target::current()?;
    let task: *const u8 = ctx.arg(0);
    let tid = target::task_tid(task)?;
    emit(
        TASK_NEW,
        current.target,
        tid,
        bpf_get_current_comm().unwrap_or_default(),
    );
    Some(())
}

/// `task:task_rename` (`TP_PROTO(struct task_struct *task, const char *comm)`): a thread of
/// a target names itself (`prctl(PR_SET_NAME)`, `pthread_setname_np`; the JVM does it for
/// every Java thread it starts).
pub fn on_rename(ctx: &RawTracePointContext) -> Option<()> {
    let current = target::current()?;
    let task: *const u8 = ctx.arg(0);
    let tid = target::task_tid(task)?;
    let name: *const u8 = ctx.arg(1);
    let mut comm = [0u8; 16];
    // SAFETY: the helper reads at most comm.len() bytes and faults safely.
    unsafe { bpf_probe_read_kernel_str_bytes(name, &mut comm) }.ok()?;
    emit(TASK_RENAME, current.target, tid, comm);
    Some(())
}

/// How each target ended (its entry, at `target_index`, a `ProcessExit`): its last thread's
/// exit status, and whether the OOM killer chose it. The agent resets the entry when it gives
/// the index to a target.
#[map]
static PROCESS_EXIT: Array<ProcessExit> = Array::with_max_entries(MAX_TARGETS, 0);

/// `sched:sched_process_exit` (`TP_PROTO(struct task_struct *p[, bool group_dead])`), in the
/// exiting thread's context: a thread gone. (Its account goes at its last context switch,
/// which comes after this.) The last thread (`signal->live` already 0) records its exit status.
pub fn on_exit() -> Option<()> {
    let current = target::current()?;
    emit(TASK_EXIT, current.target, current.tid, [0; 16]);
    // SAFETY: the helper has no preconditions.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let signal: *const u8 = read(task, layout!(task_signal))?;
    if read::<i32>(signal, layout!(signal_live))? == 0 {
        // The process is gone with this thread: its mm leaves the table.
        vma::forget_mm(current.target);
        let exit = PROCESS_EXIT.get_ptr_mut(target_index(current.target))?;
        // SAFETY: an entry of an array map; the last thread of the target writes it once.
        unsafe {
            (*exit).exit_code = read(task, layout!(task_exit_code))?;
            (*exit).exited = 1;
        }
    }
    Some(())
}

/// `oom:mark_victim`, in the OOM killer's context: the task it chose to kill. 6.x pass the
/// task (its `mm` says whether it is a target's); 5.10 a host pid, which names a target only
/// where the agent is in the host's pid namespace.
pub fn on_mark_victim(ctx: &RawTracePointContext) -> Option<()> {
    let target = match layout!(mark_victim_task) {
        1 => {
            let task: *const u8 = ctx.arg(0);
            vma::target_of_mm(read::<u64>(task, layout!(task_mm))?)?
        }
        _ => target::host_target(ctx.arg::<u64>(0) as u32)?,
    };
    let exit = PROCESS_EXIT.get_ptr_mut(target_index(target))?;
    // SAFETY: as in `on_exit`.
    unsafe { (*exit).oom_killed = 1 };
    Some(())
}

/// `sched:sched_switch` (`TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct
/// *next, unsigned int prev_state)` since 5.18; before, without `prev_state`, which is then read
/// from `prev` at `KernelLayout::task_state`), on every context switch of the machine: the task
/// leaving is the current one, checked as every program checks; the task arriving is a target
/// thread when its `mm` is a target's (learned by the VMA probes). A switch between two other
/// tasks costs two helper calls and two filter reads (one for a kernel thread, which has no
/// mm); one between two threads of a target, one lookup of its tgid.
pub fn on_switch(ctx: &RawTracePointContext) -> Option<()> {
    // The task switched out is the current one. A flag and a value written either way, not
    // an `Option`: LLVM spilled the unwritten payload of its `None` to the stack, and the
    // verifier refuses a store of an unwritten register (in a pid namespace, where the ids
    // come from another helper).
    let (prev_is_target, prev) = match target::current() {
        Some(prev) => (true, prev),
        None => (false, Current { target: 0, tid: 0 }),
    };
    let prev_mm = if prev_is_target {
        vma::learn_own(prev.target)
    } else {
        None
    };
    let next: *const u8 = ctx.arg(2);
    let next_mm = read::<u64>(next, layout!(task_mm))?;
    let next_target = match prev_mm {
        _ if next_mm == 0 => None,
        // A switch between two threads of one target: no second lookup.
        Some(mm) if mm == next_mm => Some(prev.target),
        _ => vma::target_of_mm(next_mm),
    };
    if !prev_is_target && next_target.is_none() {
        return None;
    }
    // SAFETY: reading the monotonic clock has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if prev_is_target {
        let preempt: u64 = ctx.arg(0);
        let prev_state = match layout!(task_state) {
            ABSENT => ctx.arg::<u64>(3) as u32,
            offset => read::<u32>(ctx.arg::<*const u8>(1), offset).unwrap_or(0),
        };
        if prev_state & TASK_DEAD != 0 {
            // The exiting thread's last switch: its account goes with it.
            let _ = THREADS.remove(&prev.tid);
        } else {
            let prev_task: *const u8 = ctx.arg(1);
            let state = if preempt & 1 != 0 || prev_state == 0 {
                PREEMPTED
            } else {
                ASLEEP
            };
            switch_out(prev_task, prev, now, state);
        }
    }
    if let Some(target) = next_target {
        let tid = target::task_tid(next)?;
        switch_in(Current { target, tid }, now);
    }
    Some(())
}

/// The thread (`task`, the current one) leaves its CPU: its run is added up, and, after a
/// sleep, the wait for a CPU since its wakeup is taken off the sleep: the kernel added that
/// wait to `sched_info.run_delay` when the thread got its CPU (after this tracepoint's run
/// that switched it in, so it is read here, at the next switch out).
#[inline(always)]
fn switch_out(task: *const u8, thread: Current, now: u64, state: u32) {
    let Some(account) = account(thread, now) else {
        return;
    };
    let run_delay = match layout!(task_run_delay) {
        ABSENT => None,
        offset => read::<u64>(task, offset),
    };
    // SAFETY: an entry of a hash map, valid for this run; a thread switches on one CPU at a
    // time, so its entry is never written by two at once.
    let account = unsafe { &mut *account };
    if account.state == RUNNING {
        account.on_cpu_ns += now.saturating_sub(account.since_ns);
    }
    if let Some(run_delay) = run_delay {
        if account.woke != 0 && account.run_delay_ns != 0 {
            let waited = run_delay.saturating_sub(account.run_delay_ns);
            account.asleep_ns = account.asleep_ns.saturating_sub(waited);
        }
        account.run_delay_ns = run_delay;
    }
    account.woke = 0;
    account.since_ns = now;
    account.state = state;
}

/// The thread gets a CPU: a sleep it comes back from is added up (less, at its next switch
/// out, the part it spent waiting for this CPU).
#[inline(always)]
fn switch_in(thread: Current, now: u64) {
    let Some(account) = account(thread, now) else {
        return;
    };
    // SAFETY: as in `switch_out`.
    let account = unsafe { &mut *account };
    if account.state == ASLEEP {
        account.asleep_ns += now.saturating_sub(account.since_ns);
        account.woke = 1;
    }
    account.since_ns = now;
    account.state = RUNNING;
}

/// The account of `thread`, opened (as running since `now`) at its first switch after attach.
#[inline(always)]
fn account(thread: Current, now: u64) -> Option<*mut ThreadSched> {
    if let Some(account) = THREADS.get_ptr_mut(&thread.tid) {
        return Some(account);
    }
    let fresh = ThreadSched {
        since_ns: now,
        target: thread.target,
        ..ThreadSched::default()
    };
    if THREADS
        .insert(&thread.tid, &fresh, u64::from(BPF_NOEXIST))
        .is_err()
    {
        lost::count(UNTRACKED_THREADS);
    }
    THREADS.get_ptr_mut(&thread.tid)
}

#[inline(always)]
fn emit(kind: u16, target: u32, tid: u32, comm: [u8; 16]) {
    let Some(mut entry) = TASK_EVENTS.reserve::<TaskEvent>(0) else {
        lost::count(LOST_TASK);
        return;
    };
    entry.write(TaskEvent {
        kind,
        target: target as u16,
        tid,
        comm,
    });
    entry.submit(wakeup_flags(
        &TASK_EVENTS,
        TASK_WAKEUP_BYTES,
        Ring::Task,
        size_of::<TaskEvent>(),
    ));
}
