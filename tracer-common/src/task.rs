//! The target's threads: their births, names and deaths (`TaskEvent` records), and how each
//! spends its time (`ThreadSched`, kept per thread in the kernel and read by the agent).
//!
//! Thread counts come from events; time accounting comes from `sched:sched_switch`, the
//! hottest tracepoint there is, so it is aggregated in the kernel: one map update per context
//! switch of a target thread, no record, and the agent reads the totals once a second.

/// Value of the `THREADS` hash map, keyed by thread id: one target thread's scheduling
/// account, updated at each of its context switches.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadSched {
    /// Nanoseconds on a CPU, over completed runs (the current run is `now - since`).
    pub on_cpu_ns: u64,
    /// Nanoseconds switched out asleep (blocked by its own choice: a read, a futex, a poll),
    /// over completed sleeps. Time switched out while still runnable (preempted, waiting for a
    /// CPU) is not sleep: for a thread pool that time is busy, not idle. Nor is the wait for a
    /// CPU once woken: a sleep ends at the wakeup, taken off at the next switch out, when the
    /// kernel has added that wait to the thread's `run_delay`.
    pub asleep_ns: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the last switch in or out.
    pub since_ns: u64,
    /// The thread's `sched_info.run_delay` at its last switch out (0 before the first, or
    /// where the kernel has none).
    pub run_delay_ns: u64,
    /// [`RUNNING`], [`PREEMPTED`] or [`ASLEEP`] since `since_ns`.
    pub state: u32,
    /// 1 while the thread runs after a sleep (its wait for a CPU is still in `asleep_ns`).
    pub woke: u32,
    /// The number of the target the thread is one of (`config::TARGET_NUMBERS`).
    pub target: u32,
    /// Explicit padding; always zero.
    pub pad: u32,
}

const _: () = assert!(size_of::<ThreadSched>() == 48);

/// On a CPU.
pub const RUNNING: u32 = 0;
/// Switched out while runnable: waiting for a CPU.
pub const PREEMPTED: u32 = 1;
/// Switched out asleep.
pub const ASLEEP: u32 = 2;

/// Capacity of `THREADS`. The agent removes the entries of threads that exited; a JVM with more
/// live threads than this has its extra threads' time unaccounted (and counted as lost).
pub const MAX_THREADS: u32 = 16_384;

/// What happened to a thread of the target.
pub const TASK_NEW: u16 = 0;
pub const TASK_RENAME: u16 = 1;
pub const TASK_EXIT: u16 = 2;

/// A thread of the target was created, renamed or exited; a record of the `TASK_EVENTS` ring
/// buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskEvent {
    /// [`TASK_NEW`], [`TASK_RENAME`] or [`TASK_EXIT`].
    pub kind: u16,
    /// The target's number (`config::TARGET_NUMBERS`).
    pub target: u16,
    /// The thread's id (as /proc/PID/task lists it).
    pub tid: u32,
    /// Its name, NUL-padded: the creator's name for a new thread (it inherits it), the new
    /// name for a rename, empty for an exit.
    pub comm: [u8; 16],
}

const _: () = assert!(size_of::<TaskEvent>() == 24);

/// Bytes waiting in `TASK_EVENTS` above which a producer wakes the agent at once (a burst of
/// thread creation); below it the agent's 100 ms drain picks records up.
pub const TASK_WAKEUP_BYTES: u64 = 16 * 1024;

/// How a target ended, as the kernel saw it: its entry of the `PROCESS_EXIT` array map
/// (`config::target_index`), written by the kernel only, read by the agent once the target is
/// gone.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessExit {
    /// 1 once the target's last thread exited.
    pub exited: u32,
    /// That thread's `task_struct.exit_code`: a wait status (`code << 8`, or the signal in the
    /// low 7 bits, 0x80 for a core dump).
    pub exit_code: u32,
    /// 1 when the OOM killer chose the target (`oom:mark_victim`).
    pub oom_killed: u32,
    /// Explicit padding; always zero.
    pub pad: u32,
}

const _: () = assert!(size_of::<ProcessExit>() == 16);
