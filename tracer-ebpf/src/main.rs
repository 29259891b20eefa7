//! Kernel programs of tracer. Each returns at once for any process but the target, whose
//! thread-group id the agent sets at load time; decisions and arithmetic live in userspace.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "atomic intrinsics: the BPF target hides compare-and-swap"
)]

mod atomic;
mod lost;
mod target;
mod vma;

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

/// `raw_syscalls:sys_exit` (`TP_PROTO(struct pt_regs *regs, long ret)`): every syscall exit on
/// the machine. Reads the target's VMA count after each of its syscalls, which catches every
/// syscall that can change it (mmap, munmap, mremap, mprotect, madvise, brk, mlock, shmat,
/// execve, prctl, ioctl, ...) without a list to keep up to date.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn vma_sys_exit(ctx: RawTracePointContext) -> i32 {
    if !target::is_current() {
        return 0;
    }
    match vma::try_sys_exit(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
