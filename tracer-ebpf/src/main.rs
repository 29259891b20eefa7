//! Kernel programs of tracer. Each returns at once for anything but the target's memory map or
//! sockets; decisions and arithmetic live in userspace.
#![no_std]
#![no_main]

mod kernel;
mod lost;
mod target;
mod task;
mod tcp;
mod vma;

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

/// `mmap_lock:mmap_lock_released`: every release of a process's memory-map lock; for the
/// target's, publishes its VMA count when it changed.
#[raw_tracepoint(tracepoint = "mmap_lock_released")]
pub fn tracer_mmaplock(ctx: RawTracePointContext) -> i32 {
    let _ = vma::on_lock_released(&ctx);
    0
}

/// `sched:sched_process_exec`: a program replaced; for the target, a new memory map.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn tracer_exec(_ctx: RawTracePointContext) -> i32 {
    let _ = vma::on_exec();
    0
}

/// `sock:inet_sock_set_state`: every TCP (and SCTP, MPTCP) state change on the machine, often
/// in softirq context; follows the target's sockets.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn tracer_tcpstate(ctx: RawTracePointContext) -> i32 {
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

/// `sched:sched_switch`: every context switch; for the target's threads, time on CPU and
/// asleep, aggregated in the kernel.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn tracer_switch(ctx: RawTracePointContext) -> i32 {
    let _ = task::on_switch(&ctx);
    0
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
