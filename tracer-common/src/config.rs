//! Load-time configuration of the kernel programs.
//!
//! The agent reads these values from the running kernel's BTF and hands them to the programs as
//! read-only globals (`EbpfLoader::override_global`), so one binary runs on other kernels
//! without offsets compiled in for a single one.

/// Targets one loaded object follows at once at most (the `TARGETS` map).
pub const MAX_TARGETS: u32 = 256;

/// A target's number, given by the agent when it attaches to the target, is below this: it is
/// carried in the target's records and map entries, and names the target's entries of the
/// per-target arrays ([`target_index`]). The agent gives a number out again only after all
/// others: a record or an entry left behind by a target that is gone (a socket it passed to
/// another process) is not taken for a newer target's.
pub const TARGET_NUMBERS: u32 = 65_536;

/// Entries of the filters in front of the programs' lookups of targets (`TGID_FILTER`,
/// `MM_FILTER`): each counts the targets whose thread-group id (or `mm`) falls in it, so that a
/// task whose entry counts none is dismissed by one array read, where a hash lookup costs about
/// 100 instructions (the programs' first check, on every context switch and many syscalls of
/// every process).
pub const FILTER_SLOTS: u32 = 1024;

/// The `TGID_FILTER` entry of thread-group id `tgid`.
#[inline]
pub const fn tgid_filter_slot(tgid: u32) -> u32 {
    tgid % FILTER_SLOTS
}

/// The `MM_FILTER` entry of a `struct mm_struct *` (Fibonacci hashing: the top bits of a
/// product by 2^64 / phi depend on every bit of the pointer).
#[inline]
pub const fn mm_filter_slot(mm: u64) -> u32 {
    (mm.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - FILTER_SLOTS.trailing_zeros())) as u32
}

/// The index of `target`'s entries in the per-target arrays. The agent never gives out two
/// numbers with the same index at once.
#[inline]
pub const fn target_index(target: u32) -> u32 {
    target % MAX_TARGETS
}

/// Name of the global holding the [`PidNamespace`] the targets' ids are in.
pub const TARGET_PIDNS_GLOBAL: &str = "TARGET_PIDNS";

/// The pid namespace of the agent, when it is not the host's (a container, a Kubernetes pod
/// with `shareProcessNamespace`): the programs then compare `bpf_get_ns_current_pid_tgid` in
/// it instead of the kernel's own ids. All zero in the host's namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PidNamespace {
    /// `st_dev` and `st_ino` of `/proc/self/ns/pid`.
    pub dev: u64,
    pub ino: u64,
    /// Its depth below the host's (`pid_namespace.level`): the index of the agent's ids in a
    /// task's `pid.numbers[]`, so the programs number other tasks as the agent's /proc does.
    pub level: u32,
    /// Explicit padding; always zero.
    pub pad: u32,
}

/// Name of the global holding [`TickClock`].
pub const TICK_CLOCK_GLOBAL: &str = "TICK_CLOCK";

/// How the socket probe turns the kernel's tick count (`jiffies_64`, which the verifier reads
/// in one inlined load) into `CLOCK_MONOTONIC` nanoseconds for its records, where
/// `bpf_ktime_get_ns` costs a helper call (with return-stack mitigations, the most expensive
/// part of the program). Measured by the agent before it loads the probes: one tick began at
/// or before `base_ns`, when the count became `base_jiffies`; every tick lasts `tick_ns`. All
/// zero: the probe reads `bpf_ktime_get_ns` instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TickClock {
    pub base_ns: u64,
    pub base_jiffies: u64,
    pub tick_ns: u64,
}

impl TickClock {
    /// The time of an event that happened while the tick count was `jiffies`, rounded up to
    /// the end of that tick: never before the event, and less than one tick (plus how late
    /// `base_ns` was measured) after it.
    #[inline]
    pub const fn at(&self, jiffies: u64) -> u64 {
        let ticks = jiffies.wrapping_sub(self.base_jiffies).wrapping_add(1);
        self.base_ns.wrapping_add(ticks.wrapping_mul(self.tick_ns))
    }
}

/// Name of the global holding [`KernelLayout`].
pub const KERNEL_LAYOUT_GLOBAL: &str = "KERNEL_LAYOUT";

/// An offset that this kernel does not have (an optional field).
pub const ABSENT: u32 = u32::MAX;

/// Where things are in the running kernel: byte offsets of the structure fields the programs
/// read with `bpf_probe_read_kernel` (rustc emits no CO-RE relocations, so these come from
/// `/sys/kernel/btf/vmlinux` at load time).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLayout {
    /// `task_struct.mm` (`struct mm_struct *`).
    pub task_mm: u32,
    /// `mm_struct.map_count` (`int`); on 6.x kernels it sits in an anonymous struct.
    pub mm_map_count: u32,
    /// `sock_common` fields (at the start of `struct sock`).
    pub skc_family: u32,
    pub skc_state: u32,
    pub skc_num: u32,
    pub skc_dport: u32,
    pub skc_rcv_saddr: u32,
    pub skc_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub skc_v6_daddr: u32,
    /// `sock_common.skc_net.net` (`struct net *`) and `net.ns.inum`: the socket's network
    /// namespace, as `stat /proc/PID/ns/net` shows its inode.
    pub skc_net: u32,
    pub net_ns_inum: u32,
    /// `sock.sk_protocol` (`u16` since 5.6).
    pub sk_protocol: u32,
    /// `sock.sk_socket`: NULL once the socket has no file (closed, or not yet accepted).
    pub sk_socket: u32,
    /// `sock.sk_shutdown` (`u8` since 6.4; [`ABSENT`] where it is a bitfield).
    pub sk_shutdown: u32,
    /// `task_struct.pid` (`pid_t`): a thread's id, as the kernel numbers it.
    pub task_pid: u32,
    /// `task_struct.__state` (5.14+) or `.state` (before): the state of a task switched out,
    /// read only where `sched_switch` does not pass it (before 5.18); [`ABSENT`] where it does.
    pub task_state: u32,
    /// `task_struct.thread_pid` (`struct pid *`, 4.19+), `pid.level`, the offset of
    /// `pid.numbers[0].nr` and the size of a `struct upid`: a task's id in a pid namespace is
    /// `thread_pid->numbers[level].nr`.
    pub task_thread_pid: u32,
    pub pid_level: u32,
    pub pid_numbers_nr: u32,
    pub upid_size: u32,
    /// `task_struct.signal`, `signal_struct.live` (threads not yet exited) and
    /// `task_struct.exit_code`: the exit status of the target's last thread.
    pub task_signal: u32,
    pub signal_live: u32,
    pub task_exit_code: u32,
    /// How `oom:mark_victim` names its victim: 1 where it passes `struct task_struct *task`
    /// (6.x: `TP_PROTO(struct task_struct *task, uid_t uid)`), 0 where a host pid (5.10:
    /// `TP_PROTO(int pid)`), [`ABSENT`] where it does not exist.
    pub mark_victim_task: u32,
    /// `task_struct.sched_info.run_delay` (`CONFIG_SCHED_INFO`, on in distribution kernels;
    /// the second field of /proc/PID/task/TID/schedstat): nanoseconds the task has waited on
    /// a run queue, added up when it gets a CPU. [`ABSENT`] without it.
    pub task_run_delay: u32,
    /// Explicit padding; always zero.
    pub pad: u32,
}

const _: () = assert!(size_of::<KernelLayout>() == 27 * 4);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_slots_are_in_range_and_spread_slab_neighbours() {
        // mm_structs come from a slab: neighbours 1 KiB or so apart, the low bits all zero.
        let base: u64 = 0xffff_8881_0a2c_0000;
        let mut slots = [0u32; 64];
        for (i, slot) in slots.iter_mut().enumerate() {
            *slot = mm_filter_slot(base + i as u64 * 1088);
        }
        assert!(slots.iter().all(|&slot| slot < FILTER_SLOTS));
        slots.sort_unstable();
        let distinct = 1 + slots.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(distinct >= 60, "{distinct} of 64 distinct");
        assert_eq!(tgid_filter_slot(4242), 4242 % FILTER_SLOTS);
        assert!(tgid_filter_slot(u32::MAX) < FILTER_SLOTS);
    }

    #[test]
    fn numbers_with_one_index_are_a_whole_round_apart() {
        assert_eq!(TARGET_NUMBERS % MAX_TARGETS, 0);
        assert_eq!(target_index(7), target_index(7 + MAX_TARGETS));
        assert_ne!(target_index(7), target_index(8));
    }
}
