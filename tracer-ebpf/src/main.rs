//! Kernel programs of tracer. Each returns at once for anything but the target, whose
//! thread-group id the agent sets at load time; decisions and arithmetic live in userspace.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "atomic intrinsics: the BPF target hides compare-and-swap"
)]

mod atomic;
mod kernel;
mod lost;
mod target;
mod tcp;
mod vma;

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

use crate::{kernel::read, target::layout};

/// `raw_syscalls:sys_exit` (`TP_PROTO(struct pt_regs *regs, long ret)`): every syscall exit on
/// the machine. For the target: reads its VMA count after each of its syscalls, which catches
/// every syscall that can change it (mmap, munmap, mremap, mprotect, madvise, brk, mlock,
/// shmat, execve, prctl, ioctl, ...) without a list to keep up to date; and notes the sockets
/// it accepts.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn tracer_sysexit(ctx: RawTracePointContext) -> i32 {
    if !target::is_current() {
        return 0;
    }
    let regs: *const u8 = ctx.arg(0);
    let syscall_nr = read::<u64>(regs, layout!(regs_syscall_nr)).unwrap_or(u64::MAX);
    let _ = vma::on_sys_exit(&ctx, syscall_nr);
    let _ = tcp::on_sys_exit(&ctx, syscall_nr);
    0
}

/// `sock:inet_sock_set_state`: every TCP (and SCTP, MPTCP) state change on the machine, often
/// in softirq context; follows the target's sockets.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn tracer_tcpstate(ctx: RawTracePointContext) -> i32 {
    let _ = tcp::on_set_state(&ctx);
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
