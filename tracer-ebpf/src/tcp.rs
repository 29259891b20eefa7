//! The target's TCP sockets: which sockets are its (see `tracer_common::tcp` for the rules),
//! and every state transition of those, whoever's context it runs in.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, RingBuf},
    programs::RawTracePointContext,
};
use tracer_common::{
    config::ABSENT,
    lost::{LOST_TCP, UNTRACKED_TCP},
    tcp::{
        AF_INET6, Adopted, IPPROTO_TCP, Kind, ListenKey, SHUTDOWN_MASK, TCP_CLOSE, TCP_LISTEN,
        TcpEvent, TupleKey, WAKEUP_BYTES, is_owner_transition,
    },
};

use crate::{
    kernel::{read, wakeup_flags},
    lost,
    target::{self, layout},
};

/// Default capacity of the socket maps; the agent sets it at load (`--max-sockets`).
const MAX_SOCKETS: u32 = 131_072;

/// The target's sockets, by `struct sock *`. Entries go at TCP_CLOSE. Not preallocated:
/// memory follows the number of sockets, up to the capacity; a full map counts the socket in
/// `UNTRACKED_TCP`.
#[map]
static TCP_SOCKETS: HashMap<u64, u8> = HashMap::with_max_entries(MAX_SOCKETS, BPF_F_NO_PREALLOC);

/// The target's listening ports, per network namespace: connections arriving on them are its.
#[map]
static TCP_LISTENERS: HashMap<ListenKey, u8> = HashMap::with_max_entries(4096, 0);

/// Sockets the agent found in /proc at attach, by addresses, until their first transition
/// adopts them.
#[map]
static TCP_SEED: HashMap<TupleKey, u8> = HashMap::with_max_entries(MAX_SOCKETS, BPF_F_NO_PREALLOC);

/// Entries left in `TCP_SEED` (one entry): lookups are skipped once it is empty.
#[map]
static TCP_SEED_LEFT: Array<u64> = Array::with_max_entries(1, 0);

/// Transitions of the target's sockets, one `TcpEvent` each. 1 MiB holds 14,000 records.
#[map]
static TCP_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// `sock:inet_sock_set_state` (`TP_PROTO(const struct sock *sk, const int oldstate, const int
/// newstate)`).
pub fn on_set_state(ctx: &RawTracePointContext) -> Option<()> {
    let sk: *const u8 = ctx.arg(0);
    let old = ctx.arg::<i32>(1) as u8;
    let new = ctx.arg::<i32>(2) as u8;
    let adopted = track(sk, || adopt(sk, old, new))?;
    let key = sk as u64;
    let event = describe(sk, Kind::Transition, old, new, adopted)?;
    let listen = ListenKey {
        netns: event.netns,
        port: event.sport,
        pad: 0,
    };
    // A child socket starts as a clone of its listener: LISTEN -> SYN_RECV is not the
    // listener closing.
    if new == TCP_LISTEN {
        let _ = TCP_LISTENERS.insert(&listen, &0, 0);
    } else if old == TCP_LISTEN && new == TCP_CLOSE {
        let _ = TCP_LISTENERS.remove(&listen);
    }
    if new == TCP_CLOSE {
        let _ = TCP_SOCKETS.remove(&key);
    }
    emit(&event);
    Some(())
}

/// At each syscall exit of the target: an fd returned by accept or accept4 is a socket the
/// target now holds.
pub fn on_sys_exit(ctx: &RawTracePointContext, syscall_nr: u64) -> Option<()> {
    if syscall_nr != u64::from(layout!(nr_accept)) && syscall_nr != u64::from(layout!(nr_accept4)) {
        return None;
    }
    let fd = u64::try_from(ctx.arg::<i64>(1)).ok()?;
    // task->files->fdt->fd[fd]->private_data (struct socket *)->sk
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let files: *const u8 = read(task, layout!(task_files))?;
    let fdt: *const u8 = read(files, layout!(files_fdt))?;
    let fds: *const *const u8 = read(fdt, layout!(fdtable_fd))?;
    let file: *const u8 = read(fds.wrapping_add(fd as usize).cast(), 0)?;
    let socket: *const u8 = read(file, layout!(file_private_data))?;
    let sk: *const u8 = read(socket, layout!(socket_sk))?;
    let adopted = track(sk, || Some(Adopted::ByAccept))?;
    let state = read::<u8>(sk, layout!(skc_state))?;
    let mut event = describe(sk, Kind::Accepted, state, state, adopted)?;
    event.held = 1;
    emit(&event);
    Some(())
}

/// For a TCP socket: `Known` when it is in the table already, otherwise `adopt`'s verdict, and
/// then it is entered (or counted as untracked when the table is full).
#[inline(always)]
fn track(sk: *const u8, adopt: impl FnOnce() -> Option<Adopted>) -> Option<Adopted> {
    if read::<u16>(sk, layout!(sk_protocol))? != IPPROTO_TCP {
        return None;
    }
    let key = sk as u64;
    if TCP_SOCKETS.get_ptr(&key).is_some() {
        return Some(Adopted::Known);
    }
    let how = adopt()?;
    if TCP_SOCKETS.insert(&key, &0, 0).is_err() {
        lost::count(UNTRACKED_TCP);
        return None;
    }
    Some(how)
}

/// Whether an unknown socket is the target's, and why.
#[inline(always)]
fn adopt(sk: *const u8, old: u8, new: u8) -> Option<Adopted> {
    if target::is_current() && is_owner_transition(old, new) {
        return Some(Adopted::ByOwner);
    }
    let netns = netns(sk)?;
    let sport = read::<u16>(sk, layout!(skc_num))?;
    let dport = u16::from_be(read::<u16>(sk, layout!(skc_dport))?);
    if dport != 0
        && TCP_LISTENERS
            .get_ptr(&ListenKey {
                netns,
                port: sport,
                pad: 0,
            })
            .is_some()
    {
        return Some(Adopted::OnListenPort);
    }
    let left = TCP_SEED_LEFT.get_ptr_mut(0)?;
    // SAFETY: the one entry of an array map, valid for the program's run.
    if unsafe { *left } == 0 {
        return None;
    }
    let family = read::<u16>(sk, layout!(skc_family))?;
    let mut tuple = TupleKey {
        netns,
        family: if family == AF_INET6 { 6 } else { 4 },
        sport,
        dport,
        pad: 0,
        saddr: [0; 16],
        daddr: [0; 16],
    };
    read_addresses(sk, family, &mut tuple.saddr, &mut tuple.daddr)?;
    TCP_SEED.get_ptr(&tuple)?;
    let _ = TCP_SEED.remove(&tuple);
    // SAFETY: as above; a racing decrement only makes a later lookup happen needlessly.
    unsafe { *left = (*left).saturating_sub(1) };
    Some(Adopted::FromProc)
}

/// A record of `sk` as it is now.
#[inline(always)]
fn describe(sk: *const u8, kind: Kind, old: u8, new: u8, adopted: Adopted) -> Option<TcpEvent> {
    let family = read::<u16>(sk, layout!(skc_family))?;
    let socket: u64 = read(sk, layout!(sk_socket))?;
    let shutdown_offset = layout!(sk_shutdown);
    let closed = shutdown_offset != ABSENT && read::<u8>(sk, shutdown_offset)? == SHUTDOWN_MASK;
    let mut event = TcpEvent {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        sk: sk as u64,
        tid: bpf_get_current_pid_tgid() as u32,
        netns: netns(sk)?,
        kind: kind as u8,
        old,
        new,
        family: if family == AF_INET6 { 6 } else { 4 },
        held: u8::from(socket != 0 && !closed),
        adopted: adopted as u8,
        sport: read(sk, layout!(skc_num))?,
        dport: u16::from_be(read(sk, layout!(skc_dport))?),
        pad: [0; 6],
        saddr: [0; 16],
        daddr: [0; 16],
    };
    read_addresses(sk, family, &mut event.saddr, &mut event.daddr)?;
    Some(event)
}

/// Local and remote addresses: 4 bytes for IPv4, 16 for IPv6 (v4-mapped included).
#[inline(always)]
fn read_addresses(
    sk: *const u8,
    family: u16,
    saddr: &mut [u8; 16],
    daddr: &mut [u8; 16],
) -> Option<()> {
    if family == AF_INET6 {
        *saddr = read(sk, layout!(skc_v6_rcv_saddr))?;
        *daddr = read(sk, layout!(skc_v6_daddr))?;
    } else {
        let local: [u8; 4] = read(sk, layout!(skc_rcv_saddr))?;
        let remote: [u8; 4] = read(sk, layout!(skc_daddr))?;
        saddr[..4].copy_from_slice(&local);
        daddr[..4].copy_from_slice(&remote);
    }
    Some(())
}

/// Inode of the socket's network namespace: `sk->__sk_common.skc_net.net->ns.inum`.
#[inline(always)]
fn netns(sk: *const u8) -> Option<u32> {
    let net: *const u8 = read(sk, layout!(skc_net))?;
    read(net, layout!(net_ns_inum))
}

#[inline(always)]
fn emit(event: &TcpEvent) {
    match TCP_EVENTS.output::<TcpEvent>(event, wakeup_flags(&TCP_EVENTS, WAKEUP_BYTES)) {
        Ok(()) => {}
        Err(_) => lost::count(LOST_TCP),
    }
}
