//! The target's TCP sockets: which sockets are its (see `tracer_common::tcp` for the rules),
//! and every state transition of those, whoever's context it runs in.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::bpf_ktime_get_ns,
    helpers::bpf_probe_read_kernel_buf,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf, ring_buf::RingBufEntry},
    programs::RawTracePointContext,
};
use tracer_common::{
    config::ABSENT,
    lost::{LOST_TCP, UNTRACKED_TCP},
    tcp::{
        AF_INET6, Adopted, HELD_PROBE_BATCH, IPPROTO_TCP, Kind, ListenKey, PortUse, SHUTDOWN_MASK,
        SOCK_COMMON_BYTES, TCP_CLOSE, TCP_LISTEN, TcpEvent, TupleKey, is_child_of_listener,
        is_owner_transition,
    },
    vma::WAKEUP_BYTES,
};

use crate::{
    kernel::{Ring, read, wakeup_flags},
    lost,
    target::{self, layout},
};

/// Default capacity of the socket maps; the agent sets it at load (`--max-sockets`).
const MAX_SOCKETS: u32 = 131_072;

/// The target's sockets, by `struct sock *`, each with its local port while it listens (the
/// kernel zeroes the port before it reports the listener's close). Entries go at TCP_CLOSE.
/// Not preallocated: memory follows the number of sockets, up to the capacity; a full map
/// counts the socket in `UNTRACKED_TCP`.
#[map]
static TCP_SOCKETS: HashMap<u64, u32> = HashMap::with_max_entries(MAX_SOCKETS, BPF_F_NO_PREALLOC);

/// Per local port, how many listeners and seeds of the target use it ([`PortUse`]): one array
/// lookup (the verifier inlines it) dismisses a transition on any other port.
#[map]
static TCP_PORTS: Array<PortUse> = Array::with_max_entries(65_536, 0);

/// The target's listening addresses ([`ListenKey`]: namespace, port, family, address), each
/// with how many of its sockets listen there (`SO_REUSEPORT`): a connection is its when it
/// arrives at one of them. Updated by the target's own listen and close calls (process
/// context, rarely two at once: the counts are not atomic).
#[map]
static TCP_LISTENERS: HashMap<ListenKey, u32> = HashMap::with_max_entries(4096, 0);

/// Sockets the agent found in /proc at attach, by addresses, with how many have them (more
/// than one only for listeners sharing an address), until their transitions adopt them.
#[map]
static TCP_SEED: HashMap<TupleKey, u32> = HashMap::with_max_entries(MAX_SOCKETS, BPF_F_NO_PREALLOC);

/// Transitions of the target's sockets, one `TcpEvent` each. 1 MiB holds 14,000 records.
#[map]
static TCP_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Per-CPU room for the copy of a socket's `sock_common` ([`Common`]): 128 bytes that, on the
/// stack beside the rest, would take a call chain past the 512 bytes that verifiers before
/// 6.13 allow, and that the programs index at offsets known only at load (a map value may be
/// read at a bounded variable offset on every kernel; the stack only since 5.12). One entry,
/// overwritten by each run on the CPU. (Records are built in place in the ring buffer instead,
/// so a run nested in another on the same CPU, a softirq interrupting a process-context run,
/// can at worst hand the outer run the inner socket's addresses, never a torn record.)
#[map]
static TCP_SCRATCH: PerCpuArray<Common> = PerCpuArray::with_max_entries(1, 0);

/// `sock:inet_sock_set_state` (`TP_PROTO(const struct sock *sk, const int oldstate, const int
/// newstate)`).
pub fn on_set_state(ctx: &RawTracePointContext) -> Option<()> {
    let sk: *const u8 = ctx.arg(0);
    let old = ctx.arg::<i32>(1) as u8;
    let new = ctx.arg::<i32>(2) as u8;
    let adopted = track(sk, || adopt(sk, old, new))?;
    // A child socket starts as a clone of its listener: LISTEN -> SYN_RECV is not the
    // listener closing.
    if new == TCP_LISTEN || (old == TCP_LISTEN && new == TCP_CLOSE) {
        let _ = listener_changed(sk, new == TCP_LISTEN);
    }
    if new == TCP_CLOSE {
        let _ = TCP_SOCKETS.remove(&(sk as u64));
    }
    let Some(mut entry) = TCP_EVENTS.reserve::<TcpEvent>(0) else {
        lost::count(LOST_TCP);
        return None;
    };
    if describe(sk, Kind::Transition, (old, new), adopted, &mut entry).is_some() {
        entry.submit(wakeup_flags(&TCP_EVENTS, WAKEUP_BYTES, Ring::Tcp));
    } else {
        entry.discard(0);
    }
    Some(())
}

/// A record being built in the ring buffer, read back.
#[inline(always)]
fn entry_ref(entry: &RingBufEntry<TcpEvent>) -> &TcpEvent {
    // SAFETY: `describe` wrote every field.
    unsafe { entry.assume_init_ref() }
}

/// One of the target's sockets started (`listens`) or stopped listening: its address enters
/// or leaves [`TCP_LISTENERS`] and its port [`TCP_PORTS`]. A call of its own, like [`key_of`].
#[inline(never)]
fn listener_changed(sk: *const u8, listens: bool) -> Option<()> {
    let mut tuple = TupleKey::default();
    key_of(sk, &mut tuple)?;
    let known = TCP_SOCKETS.get_ptr_mut(&(sk as u64))?;
    // SAFETY: a value of a hash map, used at once.
    unsafe {
        if listens {
            *known = u32::from(tuple.sport);
        } else if tuple.sport == 0 {
            tuple.sport = *known as u16;
        }
    }
    let key = ListenKey {
        netns: tuple.netns,
        port: tuple.sport,
        family: tuple.family,
        addr: tuple.saddr,
    };
    let ports = TCP_PORTS.get_ptr_mut(u32::from(tuple.sport))?;
    // SAFETY: values of maps, used at once (see TCP_LISTENERS on why not atomically).
    unsafe {
        match TCP_LISTENERS.get_ptr_mut(&key) {
            Some(count) if listens => *count += 1,
            Some(count) if *count > 1 => *count -= 1,
            Some(_) => {
                let _ = TCP_LISTENERS.remove(&key);
            }
            None if listens => TCP_LISTENERS.insert(&key, &1, 0).ok()?,
            None => return None,
        }
        (*ports).listeners = if listens {
            (*ports).listeners + 1
        } else {
            (*ports).listeners.saturating_sub(1)
        };
    }
    Some(())
}

/// Run by the agent (`BPF_PROG_TEST_RUN`, never attached) with up to [`HELD_PROBE_BATCH`]
/// socket pointers as `(count, sk...)`: each of the target's sockets that has a file by now
/// (the target accepted it) is reported in an `Accepted` record.
pub fn on_probe_held(ctx: &RawTracePointContext) -> Option<()> {
    let count = ctx.arg::<u64>(0);
    // The context may only be read at constant offsets: copy the arguments out first.
    let sockets: [u64; HELD_PROBE_BATCH] = [
        ctx.arg(1),
        ctx.arg(2),
        ctx.arg(3),
        ctx.arg(4),
        ctx.arg(5),
        ctx.arg(6),
        ctx.arg(7),
        ctx.arg(8),
        ctx.arg(9),
        ctx.arg(10),
        ctx.arg(11),
    ];
    for (index, &sk) in sockets.iter().enumerate() {
        if index as u64 >= count {
            break;
        }
        report_if_held(sk as *const u8);
    }
    Some(())
}

/// One socket of [`on_probe_held`]: a call of its own, so that the unrolled loop does not
/// multiply its stack.
#[inline(never)]
fn report_if_held(sk: *const u8) {
    if TCP_SOCKETS.get_ptr(&(sk as u64)).is_none() {
        return;
    }
    // Most probed sockets are still queued, with no file: they take no room in the ring (a
    // reserved and discarded slot would crowd out real records, and count as lost when full).
    if read::<u64>(sk, layout!(sk_socket)).is_none_or(|socket| socket == 0) {
        return;
    }
    let Some(state) = read::<u8>(sk, layout!(skc_state)) else {
        return;
    };
    let Some(mut entry) = TCP_EVENTS.reserve::<TcpEvent>(0) else {
        lost::count(LOST_TCP);
        return;
    };
    if describe(
        sk,
        Kind::Accepted,
        (state, state),
        Adopted::Known,
        &mut entry,
    )
    .is_some()
        && entry_ref(&entry).held != 0
    {
        entry.submit(wakeup_flags(&TCP_EVENTS, WAKEUP_BYTES, Ring::Tcp));
    } else {
        entry.discard(0);
    }
}

/// `Known` for a socket in the table already; otherwise `adopt`'s verdict, and then a TCP
/// socket is entered (or counted as untracked when the table is full).
#[inline(always)]
fn track(sk: *const u8, adopt: impl FnOnce() -> Option<Adopted>) -> Option<Adopted> {
    let key = sk as u64;
    if TCP_SOCKETS.get_ptr(&key).is_some() {
        return Some(Adopted::Known);
    }
    let how = adopt()?;
    if read::<u16>(sk, layout!(sk_protocol))? != IPPROTO_TCP {
        return None;
    }
    if TCP_SOCKETS.insert(&key, &0, 0).is_err() {
        lost::count(UNTRACKED_TCP);
        return None;
    }
    Some(how)
}

/// Whether an unknown socket is the target's, and why. Most sockets on a host are not, and
/// are dismissed after one field read and one array lookup.
#[inline(always)]
fn adopt(sk: *const u8, old: u8, new: u8) -> Option<Adopted> {
    // The pure check first: the helper call only for owner transitions.
    if is_owner_transition(old, new) && target::is_current() {
        return Some(Adopted::ByOwner);
    }
    let sport = read::<u16>(sk, layout!(skc_num))?;
    let ports = TCP_PORTS.get_ptr_mut(u32::from(sport))?;
    // SAFETY: an entry of an array map, valid for the program's run.
    let PortUse { listeners, seeds } = unsafe { *ports };
    if listeners == 0 && seeds == 0 {
        return None;
    }
    let mut tuple = TupleKey::default();
    key_of(sk, &mut tuple)?;
    // A connection on a listening address, not the listener itself (which has no remote port).
    let child = is_child_of_listener(old, new);
    if listeners != 0 && (child || tuple.dport != 0) {
        let key = ListenKey {
            netns: tuple.netns,
            port: sport,
            family: tuple.family,
            addr: tuple.saddr,
        };
        if TCP_LISTENERS.get_ptr(&key).is_some() || TCP_LISTENERS.get_ptr(&key.wildcard()).is_some()
        {
            return Some(Adopted::OnListenPort);
        }
    }
    // A new child may still carry its listener's addresses: never a seed.
    if seeds == 0 || child {
        return None;
    }
    let left = TCP_SEED.get_ptr_mut(&tuple)?;
    // SAFETY: values of maps, used at once. A racing update only makes a later lookup happen
    // needlessly.
    unsafe {
        if *left > 1 {
            *left -= 1;
        } else {
            let _ = TCP_SEED.remove(&tuple);
        }
        (*ports).seeds = seeds.saturating_sub(1);
    }
    Some(Adopted::FromProc)
}

/// The start of a `struct sock` (its `sock_common`: addresses, ports, family, state, network
/// namespace), read in one go instead of field by field, into [`TCP_SCRATCH`].
#[repr(C)]
pub struct Common([u8; SOCK_COMMON_BYTES]);

impl Common {
    /// Copies `sk`'s block into this CPU's scratch entry.
    #[inline(always)]
    fn read(sk: *const u8) -> Option<&'static Self> {
        let scratch = TCP_SCRATCH.get_ptr_mut(0)?;
        // SAFETY: an entry of a per-CPU array, valid for the program's run; the helper checks
        // the kernel address.
        unsafe {
            bpf_probe_read_kernel_buf(sk, &mut (*scratch).0).ok()?;
            Some(&*scratch)
        }
    }

    /// `N` bytes at a field offset (the agent checked that they lie within the block).
    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: u32) -> Option<[u8; N]> {
        let start = offset as usize;
        self.0.get(start..start + N)?.try_into().ok()
    }

    #[inline(always)]
    fn u16(&self, offset: u32) -> Option<u16> {
        self.bytes(offset).map(u16::from_ne_bytes)
    }
}

/// Writes a record of `sk` as it is now, with the given kind and states, into `entry`.
#[inline(always)]
fn describe(
    sk: *const u8,
    kind: Kind,
    (old, new): (u8, u8),
    adopted: Adopted,
    entry: &mut RingBufEntry<TcpEvent>,
) -> Option<()> {
    entry.write(TcpEvent {
        ts_ns: 0,
        sk: sk as u64,
        reserved: 0,
        netns: 0,
        kind: kind as u8,
        old,
        new,
        family: 0,
        held: 0,
        adopted: adopted as u8,
        sport: 0,
        dport: 0,
        pad: [0; 6],
        saddr: [0; 16],
        daddr: [0; 16],
    });
    // SAFETY: written just above.
    fill(sk, unsafe { entry.assume_init_mut() })
}

/// Fills in what the socket is now: addresses, ports, whether it has a file, and, in the
/// record that adopts it, its namespace. Every helper call counts on this path (each returns
/// through the CPU's return-stack mitigations): `sk_shutdown` is read only while the socket
/// has a file, the namespace only once per socket. Inlined: the stack it needs (the block is
/// in the per-CPU scratch, the record in the ring) fits beside its callers'.
#[inline(always)]
fn fill(sk: *const u8, event: &mut TcpEvent) -> Option<()> {
    let common = Common::read(sk)?;
    let family = common.u16(layout!(skc_family))?;
    let socket: u64 = read(sk, layout!(sk_socket))?;
    let shutdown_offset = layout!(sk_shutdown);
    let closed = socket != 0
        && shutdown_offset != ABSENT
        && read::<u8>(sk, shutdown_offset)? == SHUTDOWN_MASK;
    if event.adopted != Adopted::Known as u8 {
        let net = u64::from_ne_bytes(common.bytes(layout!(skc_net))?) as *const u8;
        event.netns = read(net, layout!(net_ns_inum))?;
    }
    event.ts_ns = unsafe { bpf_ktime_get_ns() };
    event.family = if family == AF_INET6 { 6 } else { 4 };
    event.held = u8::from(socket != 0 && !closed);
    event.sport = common.u16(layout!(skc_num))?;
    event.dport = u16::from_be(common.u16(layout!(skc_dport))?);
    copy_addresses(common, family, &mut event.saddr, &mut event.daddr)
}

/// The namespace, family, ports and addresses of `sk`, as a seed's key. A call of its own, so
/// that its stack is needed once however many callers it has.
#[inline(never)]
fn key_of(sk: *const u8, tuple: &mut TupleKey) -> Option<()> {
    let common = Common::read(sk)?;
    let family = common.u16(layout!(skc_family))?;
    let net = u64::from_ne_bytes(common.bytes(layout!(skc_net))?) as *const u8;
    tuple.netns = read(net, layout!(net_ns_inum))?;
    tuple.family = if family == AF_INET6 { 6 } else { 4 };
    tuple.sport = common.u16(layout!(skc_num))?;
    tuple.dport = u16::from_be(common.u16(layout!(skc_dport))?);
    copy_addresses(common, family, &mut tuple.saddr, &mut tuple.daddr)
}

/// Local and remote address out of the block; IPv4 in the first 4 bytes.
#[inline(always)]
fn copy_addresses(
    common: &Common,
    family: u16,
    saddr: &mut [u8; 16],
    daddr: &mut [u8; 16],
) -> Option<()> {
    if family == AF_INET6 {
        *saddr = common.bytes(layout!(skc_v6_rcv_saddr))?;
        *daddr = common.bytes(layout!(skc_v6_daddr))?;
    } else {
        saddr[..4].copy_from_slice(&common.bytes::<4>(layout!(skc_rcv_saddr))?);
        daddr[..4].copy_from_slice(&common.bytes::<4>(layout!(skc_daddr))?);
    }
    Some(())
}
