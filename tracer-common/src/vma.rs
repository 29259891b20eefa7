//! The target's VMA count (`current->mm->map_count`), as the kernel programs publish it.
//!
//! Every syscall exit of the target reads the exact count. Many threads of a JVM map and unmap
//! at once, so two exits can read the count in one order and publish it in the other. To make
//! the published value the newest one, each reader takes a ticket (`VmaRegister::next_ticket`,
//! an atomic fetch-add) *before* it reads the count, and the register keeps the reading with the
//! highest ticket (a compare-and-swap that never replaces a newer ticket). Any change to the
//! count is followed by the changing thread's own syscall exit, whose ticket is newer than the
//! change, so once the target rests the register holds the exact count. The agent polls the
//! register; ring-buffer records report each change in between.

/// Value of the one-entry `VMA_STATE` array map, shared by all CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmaRegister {
    /// Tickets handed out so far; the next reader's ticket is `next_ticket + 1`.
    pub next_ticket: u64,
    /// The newest reading: [`pack`]ed low 32 bits of its ticket and the count. Zero until the
    /// target's first syscall exit after attach.
    pub latest: u64,
}

const _: () = assert!(size_of::<VmaRegister>() == 16);

/// One change of the target's VMA count, written to the `VMA_EVENTS` ring buffer by the
/// syscall-exit program when its reading replaced a different count in the register.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmaEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the count was read.
    pub ts_ns: u64,
    /// The reader's ticket; the highest ticket holds the newest count.
    pub ticket: u64,
    /// Return value of the syscall (an address for mmap, 0 or -errno for most others).
    pub ret: i64,
    /// Thread id that made the syscall.
    pub tid: u32,
    /// `mm->map_count` at the syscall's exit.
    pub map_count: u32,
    /// Syscall number of the architecture the agent runs on.
    pub syscall_nr: u32,
    /// Explicit padding; always zero.
    pub pad: u32,
    /// `comm` of the thread (its name), NUL-padded.
    pub comm: [u8; 16],
}

const _: () = assert!(size_of::<VmaEvent>() == 56);
const _: () = assert!(core::mem::offset_of!(VmaEvent, comm) == 40);

/// Packs a ticket and a count into the register's `latest` word.
#[inline]
pub const fn pack(ticket: u64, count: u32) -> u64 {
    (ticket << 32) | count as u64
}

/// The low 32 bits of the ticket stored in a `latest` word.
#[inline]
pub const fn packed_ticket(latest: u64) -> u32 {
    (latest >> 32) as u32
}

/// The count stored in a `latest` word.
#[inline]
pub const fn packed_count(latest: u64) -> u32 {
    latest as u32
}

/// Whether `ticket` is newer than the ticket packed in `latest`. Tickets are compared as
/// wrapping 32-bit sequence numbers (RFC 1982), which is exact while fewer than 2^31 syscall
/// exits run concurrently.
#[inline]
pub const fn is_newer(ticket: u64, latest: u64) -> bool {
    (ticket as u32)
        .wrapping_sub(packed_ticket(latest))
        .cast_signed()
        > 0
}

/// Whether a reader that found `count` may skip taking a ticket: the register already holds
/// that count, and no ticket was handed out after its writer's, so no older reading can still
/// replace it.
#[inline]
pub const fn is_settled(register: &VmaRegister, count: u32) -> bool {
    register.latest != 0
        && packed_count(register.latest) == count
        && register.next_ticket as u32 == packed_ticket(register.latest)
}

/// Bytes waiting in a ring buffer above which a producer wakes the agent at once. Below it
/// records are submitted with `BPF_RB_NO_WAKEUP` and the agent drains on its own short timer:
/// one wakeup per batch instead of one per record.
pub const WAKEUP_BYTES: u64 = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trips() {
        let latest = pack(0x1_2345_6789, 65_530);
        assert_eq!(packed_ticket(latest), 0x2345_6789);
        assert_eq!(packed_count(latest), 65_530);
    }

    #[test]
    fn newer_tickets_win_across_wraparound() {
        assert!(is_newer(2, pack(1, 10)));
        assert!(!is_newer(1, pack(2, 10)));
        assert!(!is_newer(5, pack(5, 10)));
        // Ticket 2^32 + 1 is newer than 2^32 - 1 although its low bits are smaller.
        assert!(is_newer((1 << 32) + 1, pack(u64::from(u32::MAX), 10)));
        assert!(!is_newer(u64::from(u32::MAX), pack((1 << 32) + 1, 10)));
    }

    #[test]
    fn settled_only_when_no_later_ticket_was_taken() {
        let register = VmaRegister {
            next_ticket: 7,
            latest: pack(7, 100),
        };
        assert!(is_settled(&register, 100));
        assert!(!is_settled(&register, 101));
        let in_flight = VmaRegister {
            next_ticket: 8,
            ..register
        };
        assert!(!is_settled(&in_flight, 100));
        assert!(!is_settled(&VmaRegister::default(), 0));
    }
}
