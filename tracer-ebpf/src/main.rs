//! Kernel programs of tracer. Each returns at once for anything but the targets' memory maps,
//! threads or sockets; decisions and arithmetic live in userspace.
#![no_std]
#![no_main]
// Atomic adds to map values (`kernel::atomic_add`).
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "core_intrinsics, for atomic adds (see above)"
)]

mod kernel;
mod lost;
mod target;
mod task;
mod tcp;
mod vma;

use aya_ebpf::{
    macros::{btf_tracepoint, fentry, raw_tracepoint},
    programs::{BtfTracePointContext, FEntryContext, RawTracePointContext},
};

/// `mmap_lock:mmap_lock_released` (VMA source `mmap_lock`): every release of a process's
/// memory-map lock; for the target's, publishes its VMA count when it changed.
#[raw_tracepoint(tracepoint = "mmap_lock_released")]
pub fn tracer_mmaplock(ctx: RawTracePointContext) -> i32 {
    let _ = vma::on_lock_released(&ctx);
    0
}

/// One fentry program per syscall that can change the number of VMAs (VMA source
/// `syscall_fentry`), on its x86-64 entry function `__x64_sys_NAME`. The agent loads those the
/// kernel's BTF has (`mseal` since 6.10) and derives the function from the program's name
/// (`tracer_fe_NAME`). fentry rather than fexit: a trampoline that need not call the function
/// itself costs other processes' calls of it less (BENCHMARKS.md table (g)).
macro_rules! vma_syscalls {
    ($($program:ident => $function:literal,)*) => {$(
        #[doc = concat!("fentry of `", $function, "`: the target's VMA count before the syscall.")]
        #[fentry(function = $function)]
        pub fn $program(_ctx: FEntryContext) -> i32 {
            let _ = vma::on_syscall_entry();
            0
        }
    )*};
}

vma_syscalls! {
    tracer_fe_mmap => "__x64_sys_mmap",
    tracer_fe_munmap => "__x64_sys_munmap",
    tracer_fe_mremap => "__x64_sys_mremap",
    tracer_fe_mprotect => "__x64_sys_mprotect",
    tracer_fe_pkey_mprotect => "__x64_sys_pkey_mprotect",
    tracer_fe_brk => "__x64_sys_brk",
    tracer_fe_madvise => "__x64_sys_madvise",
    tracer_fe_mlock => "__x64_sys_mlock",
    tracer_fe_mlock2 => "__x64_sys_mlock2",
    tracer_fe_munlock => "__x64_sys_munlock",
    tracer_fe_mlockall => "__x64_sys_mlockall",
    tracer_fe_munlockall => "__x64_sys_munlockall",
    tracer_fe_mbind => "__x64_sys_mbind",
    tracer_fe_shmat => "__x64_sys_shmat",
    tracer_fe_shmdt => "__x64_sys_shmdt",
    tracer_fe_remap_file_pages => "__x64_sys_remap_file_pages",
    tracer_fe_mseal => "__x64_sys_mseal",
    tracer_fe_prctl => "__x64_sys_prctl",
    tracer_fe_execve => "__x64_sys_execve",
    tracer_fe_execveat => "__x64_sys_execveat",
}

/// `raw_syscalls:sys_exit` (VMA source `syscall_tracepoint`, where neither of the above
/// works): the exit of every syscall of every task; for the target's, its VMA count.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn tracer_sysexit(_ctx: RawTracePointContext) -> i32 {
    let _ = vma::on_syscall_exit();
    0
}

/// Not attached: the agent runs it once, in its own context, to learn the level of its pid
/// namespace (the return value). Written out as `#[raw_tracepoint]` expands, because that
/// wrapper returns 0 whatever the function returns.
#[unsafe(no_mangle)]
#[unsafe(link_section = "raw_tp/tracer_pidlevel")]
pub fn tracer_pidlevel(_ctx: *mut core::ffi::c_void) -> u32 {
    target::current_pid_level().unwrap_or(u32::MAX)
}

/// Not attached: the agent runs it to measure the kernel's ticks (`TickClock`). Returns the
/// low 32 bits of `jiffies_64`, or with a first argument of 1 the high 32 bits. Written out
/// like [`tracer_pidlevel`], for its return value.
#[unsafe(no_mangle)]
#[unsafe(link_section = "raw_tp/tracer_jiffies")]
pub fn tracer_jiffies(ctx: *mut core::ffi::c_void) -> u32 {
    let jiffies = kernel::jiffies();
    let high = RawTracePointContext::new(ctx).arg::<u64>(0) == 1;
    (if high { jiffies >> 32 } else { jiffies }) as u32
}

/// Not attached: the agent runs it on demand, with a target's slot as its argument, to put
/// that target's current VMA count in its register (readings taken after the lock is dropped
/// can arrive out of order).
#[raw_tracepoint(tracepoint = "tracer_vmaheal")]
pub fn tracer_vmaheal(ctx: RawTracePointContext) -> i32 {
    let _ = vma::heal(ctx.arg::<u64>(0) as u32);
    0
}

/// `sched:sched_process_exec`: a program replaced; for the target, a new memory map.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn tracer_exec(_ctx: RawTracePointContext) -> i32 {
    let _ = vma::on_exec();
    0
}

/// `sock:inet_sock_set_state`: every TCP (and SCTP, MPTCP) state change on the machine, often
/// in softirq context; follows the target's sockets. BTF-enabled (5.5+), so that the socket's
/// fields are plain loads rather than helper calls.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn tracer_tcpstate(ctx: BtfTracePointContext) -> i32 {
    let _ = tcp::on_set_state(&ctx);
    0
}

/// `task:task_newtask`: a task created; for the target, a new thread.
#[raw_tracepoint(tracepoint = "task_newtask")]
pub fn tracer_newtask(ctx: RawTracePointContext) -> i32 {
    let _ = task::on_new_task(&ctx);
    0
}

/// `task:task_rename`: a task renamed; for the target, a thread's name (its group).
#[raw_tracepoint(tracepoint = "task_rename")]
pub fn tracer_rename(ctx: RawTracePointContext) -> i32 {
    let _ = task::on_rename(&ctx);
    0
}

/// `sched:sched_process_exit`: a task exiting; for the target, a thread gone.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn tracer_taskexit(_ctx: RawTracePointContext) -> i32 {
    let _ = task::on_exit();
    0
}

/// `oom:mark_victim`: the OOM killer chose a task; for the target, how it ends.
#[raw_tracepoint(tracepoint = "mark_victim")]
pub fn tracer_oom(ctx: RawTracePointContext) -> i32 {
    let _ = task::on_mark_victim(&ctx);
    0
}

/// `sched:sched_switch`: every context switch; for the target's threads, time on CPU and
/// asleep, aggregated in the kernel.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn tracer_switch(ctx: RawTracePointContext) -> i32 {
    let _ = task::on_switch(&ctx);
    0
}

/// Not attached: the agent runs it on each CPU before it drains the socket ring, to write the
/// CPU's staged records there (`tcp::flush`). Returns 1 when it must run again. Written out
/// like [`tracer_pidlevel`], for its return value.
#[unsafe(no_mangle)]
#[unsafe(link_section = "raw_tp/tracer_tcpflush")]
pub fn tracer_tcpflush(_ctx: *mut core::ffi::c_void) -> u32 {
    tcp::flush()
}

/// Not attached: the agent runs it on demand to learn which queued sockets were accepted.
#[raw_tracepoint(tracepoint = "tracer_tcpheld")]
pub fn tracer_tcpheld(ctx: RawTracePointContext) -> i32 {
    let _ = tcp::on_probe_held(&ctx);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
