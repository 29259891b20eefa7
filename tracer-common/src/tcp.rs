//! The target's TCP sockets, as the kernel programs follow them.
//!
//! `sock:inet_sock_set_state` fires for every TCP state change on the machine, often in softirq
//! context where `current` is some other task, so ownership follows the socket, not the pid. A
//! socket becomes the target's when (see [`Adopted`]) the target itself listens or connects or
//! closes it (transitions that only happen in the owner's process context), when it arrives on
//! one of the target's listening ports (an accepted connection), when it is one the agent found
//! in /proc at attach. From then on every transition of that socket reaches the agent, whoever's
//! context it runs in. Accepting a connection changes no state: the agent asks the kernel, with
//! the `tracer_tcpheld` program, whether sockets waiting in the accept queue have a file yet.

/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u16 = 6;
/// `AF_INET` and `AF_INET6`.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Kernel TCP states (`include/net/tcp_states.h`).
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_SENT: u8 = 2;
pub const TCP_SYN_RECV: u8 = 3;
pub const TCP_FIN_WAIT1: u8 = 4;
pub const TCP_FIN_WAIT2: u8 = 5;
pub const TCP_TIME_WAIT: u8 = 6;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_CLOSE_WAIT: u8 = 8;
pub const TCP_LAST_ACK: u8 = 9;
pub const TCP_LISTEN: u8 = 10;
pub const TCP_CLOSING: u8 = 11;
/// A request socket (a connection before its SYN_RECV child exists), 4.4+.
pub const TCP_NEW_SYN_RECV: u8 = 12;

/// `sk_shutdown` when both directions are shut: what `close()` sets before the socket loses
/// its file.
pub const SHUTDOWN_MASK: u8 = 3;

/// Whether a transition is a new connection's socket being cloned from its listener. Before
/// 6.13 or so the kernel reports it before it gives the clone its own addresses: the record
/// then carries the listener's (no remote port), so it is recognised by the transition alone.
#[inline]
pub const fn is_child_of_listener(old: u8, new: u8) -> bool {
    old == TCP_LISTEN && new == TCP_SYN_RECV
}

/// Whether a transition only ever runs in the socket owner's own process context (listen,
/// connect, close, shutdown), so that `current` there is the owner.
#[inline]
pub const fn is_owner_transition(old: u8, new: u8) -> bool {
    matches!(
        (old, new),
        (TCP_CLOSE, TCP_LISTEN | TCP_SYN_SENT)
            | (TCP_ESTABLISHED, TCP_FIN_WAIT1)
            | (TCP_CLOSE_WAIT, TCP_LAST_ACK)
    )
}

/// Why a record was written.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A state transition of one of the target's sockets.
    Transition = 0,
    /// The target accepted the socket (it now holds an fd for it); the state did not change.
    Accepted = 1,
}

/// How a socket became the target's, in the record that adopted it (0 in later records).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adopted {
    /// Already known.
    Known = 0,
    /// The target listened, connected, closed or shut it down, in its own context.
    ByOwner = 1,
    /// It arrived on one of the target's listening ports.
    OnListenPort = 2,
    /// It was in /proc when the agent attached.
    FromProc = 3,
}

/// Bytes at the start of `struct sock` (its `sock_common`) that the programs read in one go; the
/// agent checks at load that every `skc_*` field it uses lies within them.
pub const SOCK_COMMON_BYTES: usize = 128;

/// Sockets `tracer_tcpheld` checks per run: its arguments are the count, then each socket's
/// pointer and its slot of `TCP_KNOWN` (`TcpEvent::slot`), and a raw tracepoint program takes
/// at most 12.
pub const HELD_PROBE_BATCH: usize = 5;

/// Slots of `TCP_KNOWN`, where the targets' sockets are kept one per slot of a hash of their
/// pointer (others go to `TCP_SOCKETS`).
pub const KNOWN_SLOTS: u32 = 8192;

/// Name of the global holding how many of the [`KNOWN_SLOTS`] sockets may take (those below
/// it), so that the slots and `TCP_SOCKETS` together hold at most `--max-sockets`.
pub const SLOT_LIMIT_GLOBAL: &str = "TCP_SLOT_LIMIT";

/// Records a CPU stages before it writes them to `TCP_EVENTS` in one ring record: the ring's
/// reserve and commit are paid once per batch. A write costs about the same whatever its size
/// (the ring's lock and positions are cache lines the other CPUs and the agent write): 32 per
/// write took the socket probe from about 165 to 129 ns per target transition, 64 gained
/// nothing more (BENCHMARKS.md (d)).
/// A CPU's stage is then 2,312 bytes.
pub const STAGED_RECORDS: usize = 32;

/// One record of the `TCP_EVENTS` ring buffer (a ring record holds one or more of them, up
/// to [`STAGED_RECORDS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpEvent {
    /// CLOCK_MONOTONIC of the event, from the tick count and rounded up to the end of its
    /// tick (`config::TickClock`), or `bpf_ktime_get_ns()` where the agent could not measure
    /// the ticks.
    pub ts_ns: u64,
    /// The `struct sock *`: the socket's identity while it lives.
    pub sk: u64,
    /// Inode of the socket's network namespace, in the record that adopted it (0 in later
    /// ones: it does not change, and reading it costs a helper call per record).
    pub netns: u32,
    /// The number of the target the socket is one of (`config::TARGET_NUMBERS`). (No task
    /// id: transitions often run in softirq, in whatever task was on the CPU, so it would say
    /// nothing.)
    pub target: u32,
    /// [`Kind`] as a byte.
    pub kind: u8,
    /// States before and after (equal for [`Kind::Accepted`]).
    pub old: u8,
    pub new: u8,
    /// 4 or 6.
    pub family: u8,
    /// Whether the target still holds the socket through an fd.
    pub held: u8,
    /// [`Adopted`] as a byte.
    pub adopted: u8,
    /// Local and remote port, host order.
    pub sport: u16,
    pub dport: u16,
    /// The socket's slot of `TCP_KNOWN`, which the agent hands back to `tracer_tcpheld` (which
    /// cannot hash a pointer it is given as a number the way it hashes the tracepoint's).
    pub slot: u16,
    /// The slot's count of its sockets' transitions (`KnownSlot::seq` in the kernel program)
    /// when the record was written. Records are staged per CPU and reach the ring in batches
    /// ([`STAGED_RECORDS`]), so one socket's records can arrive out of order; in the order of
    /// (`ts_ns`, `seq`) they are in the order they happened (see `probes::order`).
    pub seq: u32,
    /// Local and remote address; IPv4 in the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

const _: () = assert!(size_of::<TcpEvent>() == 72);
const _: () = assert!(core::mem::offset_of!(TcpEvent, saddr) == 40);

/// Key of `TCP_SEED`: a socket found in /proc at attach, by its addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TupleKey {
    pub netns: u32,
    /// 4 or 6.
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    /// Explicit padding; always zero.
    pub pad: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

const _: () = assert!(size_of::<TupleKey>() == 44);

/// Key of `TCP_LISTENERS`: one of the target's listening addresses. Connections are its when
/// their local address is one it listens on, in its network namespace: another process may
/// listen on the same port at another address (or in another namespace), and one process may
/// listen on a port with IPv4 and IPv6 sockets, or with several (`SO_REUSEPORT`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenKey {
    pub netns: u32,
    pub port: u16,
    /// 4 or 6.
    pub family: u16,
    /// The bound address; all zero for the wildcard (which, for IPv6, also serves IPv4
    /// clients, whose sockets are then IPv6 ones with v4-mapped addresses).
    pub addr: [u8; 16],
}

const _: () = assert!(size_of::<ListenKey>() == 24);

/// Value of `TCP_PORTS`, per local port: how many of the target's listening sockets and of the
/// sockets left to adopt from /proc (`TCP_SEED`) use it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortUse {
    pub listeners: u32,
    pub seeds: u32,
}

const _: () = assert!(size_of::<PortUse>() == 8);

/// Per socket of a target: its entry in its slot of `TCP_KNOWN`, or the value of `TCP_SOCKETS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketEntry {
    /// The target's number (`config::TARGET_NUMBERS`).
    pub target: u16,
    /// Its local port while it listens (the kernel zeroes the port before it reports the
    /// listener's close); else 0.
    pub port: u16,
}

const _: () = assert!(size_of::<SocketEntry>() == 4);

/// Value of `TCP_LISTENERS` and `TCP_SEED`: whose the address is, and how many sockets have it
/// (more than one for listeners sharing an address, `SO_REUSEPORT`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owned {
    /// The target's number (`config::TARGET_NUMBERS`); the first's, if two targets share an
    /// address.
    pub target: u32,
    pub count: u32,
}

const _: () = assert!(size_of::<Owned>() == 8);

impl ListenKey {
    /// The same port and family, any address.
    #[must_use]
    pub const fn wildcard(self) -> Self {
        Self {
            addr: [0; 16],
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_process_context_transitions_adopt_by_owner() {
        assert!(is_owner_transition(TCP_CLOSE, TCP_LISTEN));
        assert!(is_owner_transition(TCP_CLOSE, TCP_SYN_SENT));
        assert!(is_owner_transition(TCP_ESTABLISHED, TCP_FIN_WAIT1));
        assert!(is_owner_transition(TCP_CLOSE_WAIT, TCP_LAST_ACK));
        // These run in softirq, where `current` is whoever was on the CPU.
        assert!(!is_owner_transition(TCP_ESTABLISHED, TCP_CLOSE_WAIT));
        assert!(!is_owner_transition(TCP_SYN_SENT, TCP_ESTABLISHED));
        assert!(!is_owner_transition(TCP_LISTEN, 3));
        assert!(!is_owner_transition(TCP_LAST_ACK, TCP_CLOSE));
    }

    #[test]
    fn only_the_clone_of_a_listener_is_its_child() {
        assert!(is_child_of_listener(TCP_LISTEN, TCP_SYN_RECV));
        assert!(!is_child_of_listener(TCP_LISTEN, TCP_CLOSE));
        assert!(!is_child_of_listener(TCP_SYN_RECV, TCP_ESTABLISHED));
    }
}
