//! The targets' TCP sockets: which sockets are whose (see `tracer_common::tcp` for the rules),
//! and every state transition of those, whoever's context it runs in.

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_RB_NO_WAKEUP},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use tracer_common::{
    config::ABSENT,
    lost::{LOST_TCP, UNTRACKED_TCP},
    tcp::{
        AF_INET6, Adopted, HELD_PROBE_BATCH, IPPROTO_TCP, KNOWN_SLOTS, Kind, ListenKey, Owned,
        PortUse, SHUTDOWN_MASK, STAGED_RECORDS, SocketEntry, TCP_CLOSE, TCP_LISTEN, TcpEvent,
        TupleKey, is_child_of_listener, is_owner_transition,
    },
    vma::WAKEUP_BYTES,
};

use crate::{
    kernel::{Direct, Fields, Probed, Ring, atomic_add, tick_time, wakeup_flags},
    lost,
    target::{self, layout},
};

/// Default capacity of the socket maps; the agent sets it at load (`--max-sockets`).
const MAX_SOCKETS: u32 = 131_072;

/// The targets' sockets that [`TCP_KNOWN`] has no room for (their slot holds another), by
/// `struct sock *`, each with its target's number and its local port while it listens
/// ([`SocketEntry`]). Entries go at TCP_CLOSE.
/// Preallocated (bpftool shows 10 MiB of kernel memory at the default capacity, where without
/// preallocation the empty table took 2 MiB): a table without preallocation allocates each
/// entry on insert and frees it after an RCU grace period, on the target's transitions. A full
/// map counts the socket in `UNTRACKED_TCP`.
#[map]
static TCP_SOCKETS: HashMap<u64, SocketEntry> = HashMap::with_max_entries(MAX_SOCKETS, 0);

/// The targets' sockets, one per slot of a hash of the `struct sock *`, in one array lookup
/// (the verifier inlines it): a socket enters its slot when the slot is free, and [`TCP_SOCKETS`]
/// only when another socket holds it. Every transition looks at its socket's slot: its own
/// socket there is the target's, with no hash lookup (a walk of a bucket array of 2 MiB at the
/// default capacity, missing the caches) and no hash update at entry and exit (each takes the
/// bucket's lock); a slot that counts no entry in `TCP_SOCKETS` dismisses another process's
/// socket. Only sockets whose slot is held by another take the hash table.
/// [`KNOWN_SLOTS`] of 24 bytes: 192 KiB, small enough to stay in the CPU's caches.
#[map]
static TCP_KNOWN: Array<KnownSlot> = Array::with_max_entries(KNOWN_SLOTS, 0);

/// Sockets take only the slots below this (`SLOT_LIMIT_GLOBAL`): the agent keeps the slots and
/// [`TCP_SOCKETS`] together within `--max-sockets`.
#[unsafe(no_mangle)]
static TCP_SLOT_LIMIT: u32 = KNOWN_SLOTS;

/// A slot of [`TCP_KNOWN`].
#[repr(C)]
struct KnownSlot {
    /// The `struct sock *` whose entry this slot holds, 0 while it holds none. Written by the
    /// holder alone: when it takes the slot (after `entry`) and when it leaves it (before it
    /// gives its claim back). A socket's own transitions, which alone take and leave its slot,
    /// do not run at once.
    holder: u64,
    /// Claims on the slot: 1 while a socket holds it, and a socket that wants it adds one
    /// atomically, then reads the count: 1 means no one else holds or wants it (in the order
    /// of the count's updates, its own add is then the only one not given back), and it takes
    /// the slot; more, and it gives its claim back and goes to [`TCP_SOCKETS`] instead. (No
    /// compare-and-swap before 5.12; an add is on every kernel.) The holder's write of `holder`
    /// is seen before its claim goes back (x86's stores are not reordered with a locked add).
    claims: u32,
    /// Entries of [`TCP_SOCKETS`] whose socket hashes here, updated atomically (softirqs on
    /// other CPUs update it too) around each insert and removal, so that it is never below the
    /// table's own count.
    count: u32,
    /// The holder's entry.
    entry: SocketEntry,
    /// Transitions of the sockets that hash here, as they are recorded: each record adds one
    /// atomically, then reads the count into its `seq`. One socket's transitions do not run at
    /// once, so its records' counts rise strictly in the order they happened, however other
    /// sockets of the slot add in between (no fetch-and-add before 5.12: the read after the add
    /// may see theirs too, which only makes gaps). It persists while sockets come and go, so a
    /// socket that reuses a closed one's pointer (and so its slot) counts on from it.
    seq: u32,
}

/// Per local port, how many listeners and seeds of the targets use it ([`PortUse`]): one array
/// lookup (the verifier inlines it) dismisses a transition on any other port.
#[map]
static TCP_PORTS: Array<PortUse> = Array::with_max_entries(65_536, 0);

/// The targets' listening addresses ([`ListenKey`]: namespace, port, family, address), each
/// with its target's number and how many of its sockets listen there (`SO_REUSEPORT`): a
/// connection is the target's when it arrives at one of them. Updated by the targets' own
/// listen and close calls (process context, rarely two at once: the counts are not atomic).
#[map]
static TCP_LISTENERS: HashMap<ListenKey, Owned> = HashMap::with_max_entries(4096, 0);

/// Sockets the agent found in /proc at attach, by addresses, with their target's number and how
/// many have them (more than one only for listeners sharing an address), until their
/// transitions adopt them.
#[map]
static TCP_SEED: HashMap<TupleKey, Owned> =
    HashMap::with_max_entries(MAX_SOCKETS, BPF_F_NO_PREALLOC);

/// Transitions of the targets' sockets, one or more `TcpEvent`s per ring record ([`Stage`]).
/// 1 MiB holds 14,000 records.
#[map]
static TCP_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Per CPU, the transitions recorded and not yet written to [`TCP_EVENTS`]: one entry.
#[map]
static TCP_STAGE: PerCpuArray<Stage> = PerCpuArray::with_max_entries(1, 0);

/// A CPU's staged records ([`TCP_STAGE`]). When [`STAGED_RECORDS`] are staged, the program
/// that staged the last writes them all to the ring in one record; the agent runs
/// `tracer_tcpflush` ([`flush`]) on each CPU before it drains the ring, so that no record
/// waits longer than a drain. Records are staged only where the agent measured the tick clock
/// (`TICK_CLOCK.tick_ns` not 0): that takes runs on demand (5.10+), which the flush needs too.
#[repr(C)]
struct Stage {
    /// 1 while a program writes the stage. The socket probe and the flush can interrupt each
    /// other on one CPU (a flush run from another CPU comes as an interrupt; a softirq's
    /// transition can run while the agent's own CPU flushes): the probe then writes its record
    /// straight to the ring, the flush returns [`STAGE_BUSY`] and the agent runs it again.
    busy: u32,
    /// Records staged, below [`STAGED_RECORDS`] between runs.
    count: u32,
    records: [TcpEvent; STAGED_RECORDS],
}

/// [`flush`]'s return value when the stage was being written.
const STAGE_BUSY: u32 = 1;

/// `sock:inet_sock_set_state` (`TP_PROTO(const struct sock *sk, const int oldstate, const int
/// newstate)`), as a BTF-enabled tracepoint: `sk` is a pointer the verifier knows the type of,
/// whose fields are read by plain loads ([`Direct`]).
pub fn on_set_state(ctx: &BtfTracePointContext) -> Option<()> {
    let sk: *const u8 = ctx.arg(0);
    let old = ctx.arg::<i32>(1) as u8;
    let new = ctx.arg::<i32>(2) as u8;
    let slot = known_slot(sk);
    let (adopted, target) = track(sk, slot, || adopt(sk, old, new))?;
    // A child socket starts as a clone of its listener: LISTEN -> SYN_RECV is not the
    // listener closing.
    if new == TCP_LISTEN || (old == TCP_LISTEN && new == TCP_CLOSE) {
        let _ = listener_changed(sk, new == TCP_LISTEN);
    }
    if new == TCP_CLOSE {
        forget(sk, slot);
    }
    let seq = next_seq(slot)?;
    if tick_staging() {
        stage_transition(sk, (slot, seq), (old, new), (adopted, target))
    } else {
        publish_transition(sk, (slot, seq), (old, new), (adopted, target))
    }
}

/// Whether records are staged ([`Stage`]): where the agent measured the tick clock.
#[inline(always)]
fn tick_staging() -> bool {
    // SAFETY: a volatile read of a global the loader has written.
    unsafe { core::ptr::read_volatile(&raw const crate::kernel::TICK_CLOCK.tick_ns) != 0 }
}

/// The `seq` of a new record of a socket whose slot of [`TCP_KNOWN`] is `index` (see
/// [`KnownSlot::seq`]).
#[inline(always)]
fn next_seq(index: u32) -> Option<u32> {
    let slot = TCP_KNOWN.get_ptr_mut(index)?;
    // SAFETY: an entry of an array map, valid and aligned for the run.
    unsafe {
        atomic_add(&raw mut (*slot).seq, 1);
        Some(core::ptr::read_volatile(&raw const (*slot).seq))
    }
}

/// Writes a transition's record into this CPU's [`Stage`], and the stage to the ring when it
/// is full; straight to the ring when a flush is writing the stage. A stage write and a
/// ring write of [`STAGED_RECORDS`] records in one cost less than one reserve and commit
/// (BENCHMARKS.md (d)).
#[inline(always)]
fn stage_transition(
    sk: *const u8,
    (slot, seq): (u32, u32),
    states: (u8, u8),
    adopted: (Adopted, u32),
) -> Option<()> {
    let stage = TCP_STAGE.get_ptr_mut(0)?;
    // SAFETY: this CPU's entry of a per-CPU array, valid and aligned for the run; `busy` keeps
    // the runs that can interrupt each other on this CPU apart (volatile: in program order).
    unsafe {
        if core::ptr::read_volatile(&raw const (*stage).busy) != 0 {
            return publish_transition(sk, (slot, seq), states, adopted);
        }
        core::ptr::write_volatile(&raw mut (*stage).busy, 1);
        let count = (*stage).count as usize;
        if count < STAGED_RECORDS {
            let event = (&raw mut (*stage).records).cast::<TcpEvent>().add(count);
            let kind = (Kind::Transition, slot, seq);
            if describe::<Direct>(sk, kind, states, adopted, event).is_some() {
                (*stage).count = count as u32 + 1;
            }
        }
        if (*stage).count as usize >= STAGED_RECORDS {
            write_stage(stage, true);
        }
        core::ptr::write_volatile(&raw mut (*stage).busy, 0);
    }
    Some(())
}

/// Run by the agent on each CPU (`BPF_PROG_TEST_RUN` with `BPF_F_TEST_RUN_ON_CPU`, 5.10+,
/// never attached) before it drains [`TCP_EVENTS`]: writes the CPU's staged records to the
/// ring. Returns 0, or [`STAGE_BUSY`] when it interrupted a write of the stage.
pub fn flush() -> u32 {
    let Some(stage) = TCP_STAGE.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: as in `stage_transition`.
    unsafe {
        if core::ptr::read_volatile(&raw const (*stage).busy) != 0 {
            return STAGE_BUSY;
        }
        core::ptr::write_volatile(&raw mut (*stage).busy, 1);
        write_stage(stage, false);
        core::ptr::write_volatile(&raw mut (*stage).busy, 0);
    }
    0
}

/// Writes the staged records of `stage` (held busy by the caller) to [`TCP_EVENTS`] as one
/// ring record, or counts them lost when the ring is full; the stage is then empty. `wake`:
/// whether the write may wake the agent (not when the agent flushes, about to drain).
///
/// # Safety
/// `stage` is this CPU's entry of [`TCP_STAGE`], and the caller set its `busy`.
#[inline(always)]
unsafe fn write_stage(stage: *mut Stage, wake: bool) {
    // SAFETY: the caller's.
    let count = unsafe { (*stage).count } as usize;
    if count == 0 {
        return;
    }
    let count = count.min(STAGED_RECORDS);
    let bytes = count * size_of::<TcpEvent>();
    let flags = if wake {
        wakeup_flags(&TCP_EVENTS, WAKEUP_BYTES, Ring::Tcp, bytes)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    };
    // SAFETY: the first `count` records are written ([`stage_transition`]).
    let staged = unsafe {
        core::slice::from_raw_parts((&raw const (*stage).records).cast::<TcpEvent>(), count)
    };
    if TCP_EVENTS.output::<[TcpEvent]>(staged, flags).is_err() {
        lost::count_many(LOST_TCP, count as u64);
    }
    // SAFETY: the caller's.
    unsafe { (*stage).count = 0 };
}

/// Writes a transition's record straight into a slot of [`TCP_EVENTS`] (reserve, fill,
/// submit), or counts it lost when the ring is full: where records are not staged, or the
/// stage is busy. Two helper calls, where building it on the
/// stack and copying it in takes one (`bpf_ringbuf_output`), but no zeroing and no copy: 20 ns
/// (8%) less per target transition, the median of 52 interleaved pairs of `bench --run-time`
/// on a shared 2-CPU VM (36 of them faster; a small gain, within one run's noise). The slot is not zeroed first (that took two calls of
/// a byte-by-byte `memset`): [`describe`] writes every byte.
#[inline(always)]
fn publish_transition(
    sk: *const u8,
    (slot, seq): (u32, u32),
    states: (u8, u8),
    adopted: (Adopted, u32),
) -> Option<()> {
    let flags = wakeup_flags(&TCP_EVENTS, WAKEUP_BYTES, Ring::Tcp, size_of::<TcpEvent>());
    let Some(mut entry) = TCP_EVENTS.reserve::<TcpEvent>(0) else {
        lost::count(LOST_TCP);
        return None;
    };
    let kind = (Kind::Transition, slot, seq);
    if describe::<Direct>(sk, kind, states, adopted, entry.as_mut_ptr()).is_some() {
        entry.submit(flags);
        Some(())
    } else {
        entry.discard(u64::from(BPF_RB_NO_WAKEUP));
        None
    }
}

/// Copies a record built on the stack into [`TCP_EVENTS`] (one helper call), or counts it lost
/// when the ring is full.
#[inline(always)]
fn publish(event: &TcpEvent) {
    let flags = wakeup_flags(&TCP_EVENTS, WAKEUP_BYTES, Ring::Tcp, size_of::<TcpEvent>());
    if TCP_EVENTS.output::<TcpEvent>(event, flags).is_err() {
        lost::count(LOST_TCP);
    }
}

/// One of a target's sockets started (`listens`) or stopped listening: its address enters
/// or leaves [`TCP_LISTENERS`] and its port [`TCP_PORTS`]. A call of its own, like [`key_of`].
#[inline(never)]
fn listener_changed(sk: *const u8, listens: bool) -> Option<()> {
    let mut tuple = TupleKey::default();
    key_of(sk, &mut tuple)?;
    let known = entry_in(known_slot(sk), sk as u64)?;
    // SAFETY: a socket's entry in a map, used at once.
    let target = unsafe {
        if listens {
            (*known).port = tuple.sport;
        } else if tuple.sport == 0 {
            tuple.sport = (*known).port;
        }
        (*known).target
    };
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
            Some(owned) if listens => (*owned).count += 1,
            Some(owned) if (*owned).count > 1 => (*owned).count -= 1,
            Some(_) => {
                let _ = TCP_LISTENERS.remove(&key);
            }
            None if listens => {
                let owned = Owned {
                    target: u32::from(target),
                    count: 1,
                };
                TCP_LISTENERS.insert(&key, &owned, 0).ok()?;
            }
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
/// sockets as `(count, sk, slot, ...)`, each pointer with its slot of [`TCP_KNOWN`] from its
/// records: each of the targets' sockets that has a file by now
/// (its target accepted it) is reported in an `Accepted` record.
pub fn on_probe_held(ctx: &RawTracePointContext) -> Option<()> {
    let count = ctx.arg::<u64>(0);
    // The context may only be read at constant offsets: copy the arguments out first.
    let sockets: [(u64, u64); HELD_PROBE_BATCH] = [
        (ctx.arg(1), ctx.arg(2)),
        (ctx.arg(3), ctx.arg(4)),
        (ctx.arg(5), ctx.arg(6)),
        (ctx.arg(7), ctx.arg(8)),
        (ctx.arg(9), ctx.arg(10)),
    ];
    for (index, &(sk, slot)) in sockets.iter().enumerate() {
        if index as u64 >= count {
            break;
        }
        report_if_held(sk as *const u8, slot as u32);
    }
    Some(())
}

/// One socket of [`on_probe_held`]: a call of its own, so that the unrolled loop does not
/// multiply its stack.
#[inline(never)]
fn report_if_held(sk: *const u8, slot: u32) {
    // SAFETY: a socket's entry in a map, copied at once.
    let Some(entry) = entry_in(slot, sk as u64).map(|entry| unsafe { *entry }) else {
        return;
    };
    // Read before the state: the record sorts before any transition that may come after.
    let seq = TCP_KNOWN.get(slot).map_or(0, |known| known.seq);
    // Most probed sockets are still queued, with no file: they take no room in the ring (a
    // reserved and discarded slot would crowd out real records, and count as lost when full).
    if Probed::get::<u64>(sk, layout!(sk_socket)).is_none_or(|socket| socket == 0) {
        return;
    }
    let Some(state) = Probed::get::<u8>(sk, layout!(skc_state)) else {
        return;
    };
    let known = (Adopted::Known, u32::from(entry.target));
    let mut event = MaybeUninit::<TcpEvent>::uninit();
    if describe::<Probed>(
        sk,
        (Kind::Accepted, slot, seq),
        (state, state),
        known,
        event.as_mut_ptr(),
    )
    .is_some()
    {
        // SAFETY: `describe` wrote every byte.
        let event = unsafe { event.assume_init_ref() };
        if event.held != 0 {
            publish(event);
        }
    }
}

/// The entry of the socket `key` whose slot of [`TCP_KNOWN`] is `index`, in the slot or in
/// [`TCP_SOCKETS`], if it is a target's.
#[inline(always)]
fn entry_in(index: u32, key: u64) -> Option<*mut SocketEntry> {
    let slot = TCP_KNOWN.get_ptr_mut(index)?;
    // SAFETY: an entry of an array map, valid and aligned for the run.
    unsafe {
        if core::ptr::read_volatile(&raw const (*slot).holder) == key {
            return Some(&raw mut (*slot).entry);
        }
        if (*slot).count == 0 {
            return None;
        }
    }
    TCP_SOCKETS.get_ptr_mut(&key)
}

/// `Known` for a socket in the table already (its slot of [`TCP_KNOWN`] is `index`), with its
/// target's number; otherwise `adopt`'s verdict, and then a TCP socket is entered (or counted
/// as untracked when the table is full).
#[inline(always)]
fn track(
    sk: *const u8,
    index: u32,
    adopt: impl FnOnce() -> Option<(Adopted, u32)>,
) -> Option<(Adopted, u32)> {
    let key = sk as u64;
    if let Some(entry) = entry_in(index, key) {
        // SAFETY: a socket's entry in a map, read at once.
        return Some((Adopted::Known, u32::from(unsafe { (*entry).target })));
    }
    let (how, target) = adopt()?;
    if Direct::get::<u16>(sk, layout!(sk_protocol))? != IPPROTO_TCP {
        return None;
    }
    let entry = SocketEntry {
        target: target as u16,
        port: 0,
    };
    let slot = TCP_KNOWN.get_ptr_mut(index)?;
    if take_slot(slot, index, key, entry) {
        return Some((how, target));
    }
    // Counted before it can be found, uncounted after it cannot.
    // SAFETY (here and below): an entry of an array map, valid and aligned for the run.
    unsafe { atomic_add(&raw mut (*slot).count, 1) };
    if TCP_SOCKETS.insert(&key, &entry, 0).is_err() {
        // SAFETY: as above.
        unsafe { atomic_add(&raw mut (*slot).count, -1) };
        lost::count(UNTRACKED_TCP);
        return None;
    }
    Some((how, target))
}

/// Enters `key` with `entry` in `slot` (number `index`) if no other socket holds or wants it
/// (see [`KnownSlot::claims`]) and the slot is below [`TCP_SLOT_LIMIT`].
#[inline(always)]
fn take_slot(slot: *mut KnownSlot, index: u32, key: u64, entry: SocketEntry) -> bool {
    // SAFETY: a volatile read of a global the loader has written.
    if index >= unsafe { core::ptr::read_volatile(&raw const TCP_SLOT_LIMIT) } {
        return false;
    }
    // SAFETY: an entry of an array map, valid and aligned for the run.
    unsafe {
        atomic_add(&raw mut (*slot).claims, 1);
        if core::ptr::read_volatile(&raw const (*slot).claims) == 1
            && core::ptr::read_volatile(&raw const (*slot).holder) == 0
        {
            (*slot).entry = entry;
            core::ptr::write_volatile(&raw mut (*slot).holder, key);
            return true;
        }
        atomic_add(&raw mut (*slot).claims, -1);
    }
    false
}

/// Takes a closed socket (its slot of [`TCP_KNOWN`] is `index`) out of the slot or
/// [`TCP_SOCKETS`].
#[inline(always)]
fn forget(sk: *const u8, index: u32) {
    let key = sk as u64;
    let Some(slot) = TCP_KNOWN.get_ptr_mut(index) else {
        return;
    };
    // SAFETY: an entry of an array map, valid and aligned for the run.
    unsafe {
        if core::ptr::read_volatile(&raw const (*slot).holder) == key {
            core::ptr::write_volatile(&raw mut (*slot).holder, 0);
            atomic_add(&raw mut (*slot).claims, -1);
            return;
        }
    }
    if TCP_SOCKETS.remove(&key).is_ok() {
        // SAFETY: as above.
        unsafe { atomic_add(&raw mut (*slot).count, -1) };
    }
}

/// `sk`'s slot of [`TCP_KNOWN`] (Fibonacci hashing: the top bits of a product by 2^64 / phi
/// depend on every bit of the pointer). The verifier allows no arithmetic but adding and
/// subtracting on a BTF pointer: the distance from a fixed address (a global's), a number to
/// it, stands in for the pointer.
#[inline(always)]
fn known_slot(sk: *const u8) -> u32 {
    let anchor = (&raw const target::KERNEL_LAYOUT).addr() as u64;
    ((sk as u64)
        .wrapping_sub(anchor)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        >> (64 - KNOWN_SLOTS.trailing_zeros())) as u32
}

/// Whether an unknown socket is a target's, and why, with the target's number. Most sockets on
/// a host are not, and are dismissed after one field read and one array lookup.
#[inline(always)]
fn adopt(sk: *const u8, old: u8, new: u8) -> Option<(Adopted, u32)> {
    // The pure check first: the helper call only for owner transitions.
    if is_owner_transition(old, new)
        && let Some(current) = target::current()
    {
        return Some((Adopted::ByOwner, current.target));
    }
    let sport = Direct::get::<u16>(sk, layout!(skc_num))?;
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
        // SAFETY: values of a hash map, copied at once.
        let owner = unsafe {
            TCP_LISTENERS
                .get(&key)
                .or_else(|| TCP_LISTENERS.get(&key.wildcard()))
                .copied()
        };
        if let Some(owner) = owner {
            return Some((Adopted::OnListenPort, owner.target));
        }
    }
    // A new child may still carry its listener's addresses: never a seed.
    if seeds == 0 || child {
        return None;
    }
    let left = TCP_SEED.get_ptr_mut(&tuple)?;
    // SAFETY: values of maps, used at once. A racing update only makes a later lookup happen
    // needlessly.
    let target = unsafe {
        let target = (*left).target;
        if (*left).count > 1 {
            (*left).count -= 1;
        } else {
            let _ = TCP_SEED.remove(&tuple);
        }
        (*ports).seeds = seeds.saturating_sub(1);
        target
    };
    Some((Adopted::FromProc, target))
}

/// Writes a record of `sk` as it is now, with the given kind, slot, sequence number and states,
/// into `event` (a slot of the ring or the stage, or a local): addresses, ports, whether it has a file, and, in the record that
/// adopts it, its namespace. `sk_shutdown` is read only while the socket has a file, the
/// namespace only once per socket. Every byte is written, as the nine 64-bit words of the
/// record (a reserved slot holds whatever was there before; field by field, the compiler
/// zeroes the padding with a byte-by-byte `memset`). `None` when a read failed (only
/// [`Probed`] reads can), with `event` partly written.
#[inline(always)]
fn describe<F: Fields>(
    sk: *const u8,
    (kind, slot, seq): (Kind, u32, u32),
    (old, new): (u8, u8),
    (adopted, target): (Adopted, u32),
    event: *mut TcpEvent,
) -> Option<()> {
    let family: u16 = F::get(sk, layout!(skc_family))?;
    let socket: u64 = F::get(sk, layout!(sk_socket))?;
    let shutdown_offset = layout!(sk_shutdown);
    let closed = socket != 0
        && shutdown_offset != ABSENT
        && F::get::<u8>(sk, shutdown_offset)? == SHUTDOWN_MASK;
    let netns = if adopted == Adopted::Known {
        0
    } else {
        netns_of::<F>(sk)?
    };
    let sport: u16 = F::get(sk, layout!(skc_num))?;
    let dport = u16::from_be(F::get(sk, layout!(skc_dport))?);
    let six = family == AF_INET6;
    let words = event.cast::<u64>();
    // SAFETY: `event` is valid for a `TcpEvent`, aligned to 8; the words are its fields as laid
    // out in `tracer_common::tcp` (asserted below), each built from its bytes in memory order.
    unsafe {
        *words = tick_time();
        *words.add(1) = sk as u64;
        let ([n0, n1, n2, n3], [t0, t1, t2, t3]) = (netns.to_ne_bytes(), target.to_ne_bytes());
        let ([s0, s1], [d0, d1]) = (sport.to_ne_bytes(), dport.to_ne_bytes());
        // `netns`, `target`.
        *words.add(2) = u64::from_ne_bytes([n0, n1, n2, n3, t0, t1, t2, t3]);
        let version = if six { 6 } else { 4 };
        let held = u8::from(socket != 0 && !closed);
        let bytes = [kind as u8, old, new, version, held, adopted as u8, s0, s1];
        *words.add(3) = u64::from_ne_bytes(bytes);
        // `dport`, `slot`, `seq`.
        let [l0, l1] = (slot as u16).to_ne_bytes();
        let [q0, q1, q2, q3] = seq.to_ne_bytes();
        *words.add(4) = u64::from_ne_bytes([d0, d1, l0, l1, q0, q1, q2, q3]);
        if !six {
            // After an IPv4 address, 12 zero bytes (a 32-bit and a 64-bit word) each.
            for field in [
                core::ptr::addr_of_mut!((*event).saddr),
                core::ptr::addr_of_mut!((*event).daddr),
            ] {
                let field = field.cast::<u32>();
                *field.add(1) = 0;
                *field.add(2).cast::<u64>() = 0;
            }
        }
        copy_addresses::<F>(sk, family, &mut (*event).saddr, &mut (*event).daddr)?;
    }
    Some(())
}

// The layout `describe` writes: each group of fields one 64-bit word.
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(TcpEvent, ts_ns) == 0 && offset_of!(TcpEvent, sk) == 8);
    assert!(offset_of!(TcpEvent, netns) == 16 && offset_of!(TcpEvent, target) == 20);
    assert!(offset_of!(TcpEvent, kind) == 24 && offset_of!(TcpEvent, old) == 25);
    assert!(offset_of!(TcpEvent, new) == 26 && offset_of!(TcpEvent, family) == 27);
    assert!(offset_of!(TcpEvent, held) == 28 && offset_of!(TcpEvent, adopted) == 29);
    assert!(offset_of!(TcpEvent, sport) == 30 && offset_of!(TcpEvent, dport) == 32);
    assert!(offset_of!(TcpEvent, slot) == 34 && offset_of!(TcpEvent, seq) == 36);
    assert!(offset_of!(TcpEvent, saddr) == 40 && offset_of!(TcpEvent, daddr) == 56);
    assert!(size_of::<TcpEvent>() == 72 && align_of::<TcpEvent>() == 8);
};

/// The inode of `sk`'s network namespace (`sk->__sk_common.skc_net.net->ns.inum`).
#[inline(always)]
fn netns_of<F: Fields>(sk: *const u8) -> Option<u32> {
    let net: *const u8 = F::get(sk, layout!(skc_net))?;
    F::get(net, layout!(net_ns_inum))
}

/// The namespace, family, ports and addresses of `sk`, as a seed's key. A call of its own, so
/// that its stack is needed once however many callers it has.
#[inline(never)]
fn key_of(sk: *const u8, tuple: &mut TupleKey) -> Option<()> {
    let family: u16 = Direct::get(sk, layout!(skc_family))?;
    tuple.netns = netns_of::<Direct>(sk)?;
    tuple.family = if family == AF_INET6 { 6 } else { 4 };
    tuple.sport = Direct::get(sk, layout!(skc_num))?;
    tuple.dport = u16::from_be(Direct::get(sk, layout!(skc_dport))?);
    copy_addresses::<Direct>(sk, family, &mut tuple.saddr, &mut tuple.daddr)
}

/// Local and remote address of `sk` into the 16-byte fields of a record or key, which lie at
/// multiples of 4 (so that they are written a word at a time); IPv4 in the first 4 bytes, the
/// rest left as it is.
#[inline(always)]
fn copy_addresses<F: Fields>(
    sk: *const u8,
    family: u16,
    saddr: &mut [u8; 16],
    daddr: &mut [u8; 16],
) -> Option<()> {
    let (saddr, daddr) = (
        core::ptr::from_mut(saddr).cast::<u32>(),
        core::ptr::from_mut(daddr).cast::<u32>(),
    );
    // SAFETY: 16 bytes each, aligned to 4 (asserted below for the types that hold them).
    unsafe {
        if family == AF_INET6 {
            let (from_s, from_d) = (layout!(skc_v6_rcv_saddr), layout!(skc_v6_daddr));
            for i in 0..4 {
                *saddr.add(i) = F::get(sk, from_s + 4 * i as u32)?;
                *daddr.add(i) = F::get(sk, from_d + 4 * i as u32)?;
            }
        } else {
            *saddr = F::get(sk, layout!(skc_rcv_saddr))?;
            *daddr = F::get(sk, layout!(skc_daddr))?;
        }
    }
    Some(())
}

const _: () = assert!(core::mem::offset_of!(TcpEvent, saddr) % 4 == 0);
const _: () = assert!(core::mem::offset_of!(TcpEvent, daddr) % 4 == 0);
const _: () = assert!(core::mem::offset_of!(TupleKey, saddr) % 4 == 0);
const _: () = assert!(core::mem::offset_of!(TupleKey, daddr) % 4 == 0);
const _: () = assert!(align_of::<TcpEvent>() >= 4 && align_of::<TupleKey>() >= 4);
