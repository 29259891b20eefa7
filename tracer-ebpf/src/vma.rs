//! The target's VMA count, read at each of its syscall exits (see `tracer_common::vma` for the
//! ticket protocol that keeps the newest reading).

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns,
        bpf_probe_read_kernel,
    },
    macros::map,
    maps::{Array, RingBuf},
    programs::RawTracePointContext,
};
use aya_log_ebpf::{error, warn};
use tracer_common::{
    lost::LOST_VMA,
    vma::{VmaEvent, VmaRegister, WAKEUP_BYTES, is_newer, is_settled, pack, packed_count},
};

use crate::{atomic, kernel::wakeup_flags, lost, target::layout};

/// The register holding the newest reading of the count (one entry, shared by all CPUs).
#[map]
static VMA_STATE: Array<VmaRegister> = Array::with_max_entries(1, 0);

/// Changes of the count, one `VmaEvent` each, for the agent. 1 MiB holds about 18,000 records:
/// over a second of the fastest mmap/munmap loop this machine runs.
#[map]
static VMA_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Compare-and-swap attempts before a reader gives up (on the ticket) or emits its reading
/// anyway (on the register; safe, the agent keeps the record with the highest ticket). Races
/// are bounded by the number of the target's threads in a syscall exit at once.
const CAS_ATTEMPTS: usize = 8;

/// At each syscall exit of the target: publishes the VMA count if it changed.
pub fn on_sys_exit(ctx: &RawTracePointContext, syscall_nr: u64) -> Result<(), ()> {
    let register = VMA_STATE.get_ptr_mut(0).ok_or(())?;
    let Some(count) = read_map_count(ctx) else {
        return Ok(());
    };
    // SAFETY: `register` points into the array map's value, valid for the program's run; its
    // words are only accessed atomically.
    let (next_ticket, latest) = unsafe {
        (
            &raw mut (*register).next_ticket,
            &raw mut (*register).latest,
        )
    };
    let seen = VmaRegister {
        next_ticket: unsafe { atomic::load(next_ticket) },
        latest: unsafe { atomic::load(latest) },
    };
    if is_settled(&seen, count) {
        return Ok(());
    }

    let Some(ticket) = (unsafe { atomic::increment(next_ticket, CAS_ATTEMPTS) }) else {
        // Lost every race for a ticket: count it as a lost record. The next exit of any of
        // the target's threads publishes the count again.
        lost::count(LOST_VMA);
        warn!(
            ctx,
            "no VMA ticket after {} compare-and-swap races", CAS_ATTEMPTS
        );
        return Ok(());
    };
    let Some(count) = read_map_count(ctx) else {
        return Ok(());
    };
    let mut current = unsafe { atomic::load(latest) };
    for _ in 0..CAS_ATTEMPTS {
        if !is_newer(ticket, current) {
            return Ok(());
        }
        match unsafe { atomic::compare_exchange(latest, current, pack(ticket, count)) } {
            Ok(()) => {
                if current == 0 || packed_count(current) != count {
                    emit(ctx, ticket, count, syscall_nr);
                }
                return Ok(());
            }
            Err(now) => current = now,
        }
    }
    emit(ctx, ticket, count, syscall_nr);
    Ok(())
}

/// `current->mm->map_count`, or `None` for a task without an mm (exiting). A failed read
/// means the offsets from BTF are wrong for this kernel: logged, since nothing else would show.
#[inline(always)]
fn read_map_count(ctx: &RawTracePointContext) -> Option<u32> {
    let (task_mm, mm_map_count) = (layout!(task_mm) as usize, layout!(mm_map_count) as usize);
    // SAFETY: reads of kernel memory through bpf_probe_read_kernel, which checks the address.
    let result = unsafe {
        let task = bpf_get_current_task() as *const u8;
        match bpf_probe_read_kernel::<*const u8>(task.add(task_mm).cast()) {
            Ok(mm) if mm.is_null() => return None,
            Ok(mm) => bpf_probe_read_kernel::<i32>(mm.add(mm_map_count).cast()),
            Err(e) => Err(e),
        }
    };
    match result {
        Ok(count) => u32::try_from(count).ok(),
        Err(e) => {
            error!(
                ctx,
                "reading current->mm->map_count failed ({}): wrong BTF offsets?", e
            );
            None
        }
    }
}

#[inline(always)]
fn emit(ctx: &RawTracePointContext, ticket: u64, count: u32, syscall_nr: u64) {
    let Some(mut entry) = VMA_EVENTS.reserve::<VmaEvent>(0) else {
        lost::count(LOST_VMA);
        return;
    };
    entry.write(VmaEvent {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ticket,
        ret: ctx.arg(1),
        tid: bpf_get_current_pid_tgid() as u32,
        map_count: count,
        syscall_nr: syscall_nr as u32,
        pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
    entry.submit(wakeup_flags(&VMA_EVENTS, WAKEUP_BYTES));
}
