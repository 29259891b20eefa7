//! Which processes are traced (the `TARGETS` map), and the read-only globals that say which pid
//! namespace their ids are in and where to find kernel fields.

use aya_ebpf::{
    bindings::bpf_pidns_info,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, generated::bpf_get_ns_current_pid_tgid,
    },
    macros::map,
    maps::{Array, HashMap},
};
use tracer_common::config::{
    FILTER_SLOTS, KernelLayout, MAX_TARGETS, PidNamespace, tgid_filter_slot,
};

use crate::kernel::read;

/// The targets: thread-group id (in the agent's pid namespace, as its /proc numbers it) to the
/// target's number (`tracer_common::config::TARGET_NUMBERS`), which its records carry and which
/// names its entries of the per-target maps. Written by the agent as it attaches to and
/// detaches from targets; one lookup, after the current task's ids, tells every program whether
/// the task is a target's. One object serves every target: a target more adds no program run
/// per event.
#[map]
static TARGETS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_TARGETS, 0);

/// Per `tgid_filter_slot`, how many of [`TARGETS`]'s thread-group ids fall there: a task whose
/// entry is 0 is no target's, told by one array read (the verifier inlines it) before the hash
/// lookup. Written by the agent only, before an entry enters `TARGETS` and after it leaves.
#[map]
static TGID_FILTER: Array<u32> = Array::with_max_entries(FILTER_SLOTS, 0);

/// The agent's pid namespace, which the targets' ids are in; zero for the host's
/// (`TARGET_PIDNS_GLOBAL`).
#[unsafe(no_mangle)]
static TARGET_PIDNS: PidNamespace = PidNamespace {
    dev: 0,
    ino: 0,
    level: 0,
    pad: 0,
};

/// Field offsets of the running kernel (`KERNEL_LAYOUT_GLOBAL`).
#[unsafe(no_mangle)]
pub static KERNEL_LAYOUT: KernelLayout = KernelLayout {
    task_mm: 0,
    mm_map_count: 0,
    skc_family: 0,
    skc_state: 0,
    skc_num: 0,
    skc_dport: 0,
    skc_rcv_saddr: 0,
    skc_daddr: 0,
    skc_v6_rcv_saddr: 0,
    skc_v6_daddr: 0,
    skc_net: 0,
    net_ns_inum: 0,
    sk_protocol: 0,
    sk_socket: 0,
    sk_shutdown: 0,
    task_pid: 0,
    task_state: 0,
    task_thread_pid: 0,
    pid_level: 0,
    pid_numbers_nr: 0,
    upid_size: 0,
    task_signal: 0,
    signal_live: 0,
    task_exit_code: 0,
    mark_victim_task: 0,
    task_run_delay: 0,
    pad: 0,
};

/// One field of [`KERNEL_LAYOUT`], read so the compiler cannot fold the load-time value.
macro_rules! layout {
    ($field:ident) => {
        // SAFETY: a volatile read of a global the loader has written.
        unsafe { core::ptr::read_volatile(&raw const $crate::target::KERNEL_LAYOUT.$field) }
    };
}
pub(crate) use layout;

/// A task of one of the targets.
#[derive(Clone, Copy)]
pub struct Current {
    /// The target's number (see [`TARGETS`]).
    pub target: u32,
    /// The task's thread id, as the agent's /proc numbers it.
    pub tid: u32,
}

/// The current task, when it is one of a target's: one helper call and one lookup, the first
/// thing every program does. In a container's pid namespace the helper that sees ids in that
/// namespace is used instead; it fails for tasks outside it.
#[inline(always)]
pub fn current() -> Option<Current> {
    // SAFETY: a volatile read keeps the compiler from folding the load-time value to 0.
    let pidns = unsafe { core::ptr::read_volatile(&raw const TARGET_PIDNS) };
    let (tgid, tid) = if pidns.ino == 0 {
        let pid_tgid = bpf_get_current_pid_tgid();
        ((pid_tgid >> 32) as u32, pid_tgid as u32)
    } else {
        let mut ids = bpf_pidns_info { pid: 0, tgid: 0 };
        // SAFETY: the helper writes at most `size` bytes into `ids`.
        let ret = unsafe {
            bpf_get_ns_current_pid_tgid(
                pidns.dev,
                pidns.ino,
                &raw mut ids,
                size_of::<bpf_pidns_info>() as u32,
            )
        };
        // On failure (a task outside the namespace) the helper leaves `ids` zeroed, and no
        // target has id 0. No early return: inlined into the scheduler probe, that path left
        // a stack slot holding an unwritten register, which the verifier refuses.
        if ret != 0 {
            (0, 0)
        } else {
            (ids.tgid, ids.pid)
        }
    };
    number_of(tgid).map(|target| Current { target, tid })
}

/// The number of the target whose thread-group id (in the agent's namespace) is `tgid`.
#[inline(always)]
fn number_of(tgid: u32) -> Option<u32> {
    if TGID_FILTER
        .get(tgid_filter_slot(tgid))
        .is_none_or(|&count| count == 0)
    {
        return None;
    }
    // SAFETY: a value of a hash map, copied at once.
    unsafe { TARGETS.get(&tgid).copied() }
}

/// The id of `task` (not the current one: a new thread, the thread switched in), as the
/// agent's /proc numbers it: `task_struct.pid` in the host's pid namespace, else
/// `task->thread_pid->numbers[level].nr`. `None` for a task outside the agent's namespace.
#[inline(always)]
pub fn task_tid(task: *const u8) -> Option<u32> {
    // SAFETY: a volatile read of a global the loader has written.
    let pidns = unsafe { core::ptr::read_volatile(&raw const TARGET_PIDNS) };
    if pidns.ino == 0 {
        return read::<i32>(task, layout!(task_pid)).map(|tid| tid as u32);
    }
    let pid: *const u8 = read(task, layout!(task_thread_pid))?;
    if read::<u32>(pid, layout!(pid_level))? < pidns.level {
        return None;
    }
    let nr: i32 = read(
        pid,
        layout!(pid_numbers_nr) + pidns.level * layout!(upid_size),
    )?;
    Some(nr as u32)
}

/// The number of the target whose host pid is `pid`, where the agent is in the host's pid
/// namespace; in a container's it cannot be told.
#[inline(always)]
pub fn host_target(pid: u32) -> Option<u32> {
    // SAFETY: a volatile read of a global the loader has written.
    let pidns = unsafe { core::ptr::read_volatile(&raw const TARGET_PIDNS) };
    if pidns.ino != 0 {
        return None;
    }
    number_of(pid)
}

/// `current->thread_pid->level`: how deep the current task's pid namespace is.
#[inline(always)]
pub fn current_pid_level() -> Option<u32> {
    // SAFETY: the helper has no preconditions.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let pid: *const u8 = read(task, layout!(task_thread_pid))?;
    read(pid, layout!(pid_level))
}
