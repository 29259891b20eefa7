//! The target's TCP sockets: counts per state, each socket's time in its state, and the
//! alerts of a stuck server (`close_wait_leak`), of peers that never finish closing
//! (`fin_wait2_pileup`), and of a flood of new clients (`connection_surge`).

pub mod diag;
pub mod proc;
mod procnet;
pub mod tuple;

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    net::IpAddr,
};

use tracer_common::tcp::{
    Adopted, Kind, TCP_CLOSE, TCP_CLOSE_WAIT, TCP_ESTABLISHED, TCP_FIN_WAIT2, TCP_SYN_RECV,
    TcpEvent, is_child_of_listener,
};

use crate::{
    alert::{Check, Latch, Severity},
    event::{AlertDetail, AlertKind, Clocks, Event, PROCESS_STATES, PeerCount, StateCounts},
    probes::Lost,
    units::{duration, thousands},
};
use proc::{ProcSocket, ProcSockets, state_name};
use tuple::Tuple;

/// Seconds of per-second new-connection counts kept for the surge baseline.
const BASELINE_SECS: usize = 600;
/// Seconds the surge rate is averaged over.
const SURGE_SECS: usize = 10;
/// Fewest seconds of history before a surge can be called.
const BASELINE_MIN_SECS: usize = 30;
/// Remote addresses listed in alerts and in the `sockets` event.
const TOP_PEERS: usize = 5;
/// New connections remembered for the surge alert's peer list.
const RECENT_PEERS: usize = 100_000;
/// A socket in the accept queue is checked for having been accepted this soon, then at doubling
/// intervals up to [`PROBE_MAX`] while it stays there.
const PROBE_FIRST: f64 = 0.1;
const PROBE_MAX: f64 = 5.0;
/// Sockets asked about per drain at most (5 per syscall): a burst of 100,000 connections in
/// the accept queue must not keep the agent from draining the ring buffers.
const PROBE_PER_DRAIN: usize = 1024;

/// Hashes a kernel pointer (a `struct sock *`) with one multiplication: the table is updated
/// at every transition of every socket of the target, and SipHash's resistance to chosen keys
/// buys nothing against addresses the kernel picked.
#[derive(Clone, Copy, Default)]
pub struct BuildPointerHasher;

impl std::hash::BuildHasher for BuildPointerHasher {
    type Hasher = PointerHasher;

    fn build_hasher(&self) -> PointerHasher {
        PointerHasher(0)
    }
}

/// See [`BuildPointerHasher`].
#[derive(Default)]
pub struct PointerHasher(u64);

impl std::hash::Hasher for PointerHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, value: u64) {
        // Fibonacci hashing: spreads the aligned, clustered addresses over the whole word.
        self.0 = (value ^ (value >> 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// When the socket alerts fire.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TcpThresholds {
    /// A socket in CLOSE_WAIT longer than this is leaked...
    pub close_wait_after: f64,
    /// ...and this many leaked sockets raise `close_wait_leak`.
    pub close_wait_min: u32,
    /// A socket left in FIN_WAIT2 longer than this is waiting on a peer that does not close...
    pub fin_wait2_after: f64,
    /// ...and this many raise `fin_wait2_pileup`.
    pub fin_wait2_min: u32,
    /// New connections per second above this many times the baseline are a surge...
    pub surge_factor: f64,
    /// ...when they are also at least this many per second.
    pub surge_min: f64,
}

impl Default for TcpThresholds {
    fn default() -> Self {
        Self {
            close_wait_after: 5.0,
            close_wait_min: 1,
            fin_wait2_after: 30.0,
            fin_wait2_min: 10,
            surge_factor: 5.0,
            surge_min: 100.0,
        }
    }
}

/// One socket of the target.
#[derive(Clone, Copy, Debug)]
struct Sock {
    tuple: Tuple,
    state: u8,
    /// When it entered its state, in monotonic seconds (attach time for sockets found in /proc).
    since: f64,
    /// Whether the target holds an fd for it.
    held: bool,
    /// Whether it ever did: a socket not held now was either closed (orphaned) or not yet
    /// accepted (in the accept queue).
    was_held: bool,
    /// Whether the target is its server side (it arrived on a listening port).
    server: bool,
    /// For a socket in the accept queue: when to ask the kernel next whether it was accepted,
    /// and how long to wait after that (doubling while it stays queued).
    probe_at: f64,
    probe_every: f64,
    /// Its slot of the kernel's table, from its last record (the kernel wants it back with the
    /// pointer when asked about the socket).
    slot: u16,
}

impl Sock {
    /// Whom a socket is with, for grouping: the client address and the target's port for a
    /// server-side socket, the remote service for a client-side one.
    fn peer(&self) -> (IpAddr, Option<u16>, Option<u16>) {
        if self.server {
            (self.tuple.remote(), Some(self.tuple.sport), None)
        } else {
            (self.tuple.remote(), None, Some(self.tuple.dport))
        }
    }
}

/// What a resync corrected: sockets added, removed or changed, and the counts before and
/// after (held sockets per state, and the accept queue).
#[derive(Clone, Debug, PartialEq)]
pub struct Resync {
    pub corrected: u32,
    pub before: BTreeMap<&'static str, u32>,
    pub after: BTreeMap<&'static str, u32>,
}

/// The counts of one moment, for the `sockets` event and the live view.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Census {
    pub held: StateCounts,
    pub accept_queue: StateCounts,
    pub orphaned: StateCounts,
    pub close_wait_oldest: Option<f64>,
    /// CLOSE_WAIT sockets older than the leak threshold.
    pub close_wait_leaked: u32,
    pub new_per_second: f64,
    pub baseline_per_second: f64,
    pub peers: Vec<PeerCount>,
}

/// The TCP model of one target.
pub struct TcpModel {
    pid: u32,
    thresholds: TcpThresholds,
    socks: HashMap<u64, Sock, BuildPointerHasher>,
    /// Sockets found in /proc (at attach, at a resync), by addresses, until the kernel
    /// reports them. More than one only for listeners sharing an address (SO_REUSEPORT).
    seeded: HashMap<Tuple, Vec<Sock>>,
    /// While a resync's snapshot is being taken: when it started, and the addresses of
    /// sockets that records from then on changed, which the table knows better than the
    /// snapshot. (Older records still in the ring buffer are what the snapshot supersedes.)
    touched: Option<(f64, HashSet<Tuple>)>,
    /// New connections on the listening ports per report interval, newest last.
    new_per_tick: VecDeque<u32>,
    new_this_tick: u32,
    /// Remote addresses of recent new connections, with the time they arrived.
    recent: VecDeque<(f64, IpAddr, u16)>,
    close_wait: Latch,
    fin_wait2: Latch,
    surge: Latch,
    census: Census,
}

impl TcpModel {
    pub fn new(pid: u32, thresholds: TcpThresholds) -> Self {
        Self {
            pid,
            thresholds,
            socks: HashMap::default(),
            seeded: HashMap::new(),
            touched: None,
            new_per_tick: VecDeque::new(),
            new_this_tick: 0,
            recent: VecDeque::new(),
            close_wait: Latch::default(),
            fin_wait2: Latch::default(),
            surge: Latch::default(),
            census: Census::default(),
        }
    }

    /// Takes the sockets found in /proc at attach; their age counts from `now`.
    pub fn seed(&mut self, found: &ProcSockets, now: f64) {
        for s in &found.sockets {
            self.seed_one(s, &found.listen_ports, now);
        }
    }

    fn seed_one(&mut self, s: &ProcSocket, listen_ports: &[u16], now: f64) {
        self.seeded.entry(s.tuple).or_default().push(Sock {
            tuple: s.tuple,
            state: s.state,
            since: now,
            held: s.held,
            was_held: s.held,
            server: listen_ports.contains(&s.tuple.sport),
            probe_at: now,
            probe_every: PROBE_FIRST,
            slot: 0,
        });
    }

    /// Starts a resync at `now` (monotonic seconds): from then until [`Self::resync`],
    /// sockets that records change are remembered, so that a snapshot taken meanwhile does
    /// not undo what they say.
    pub fn begin_resync(&mut self, now: f64) {
        self.touched = Some((now, HashSet::new()));
    }

    /// Rebuilds the table from `found`, the kernel's view (sock_diag and /proc/PID/fd) taken
    /// since [`Self::begin_resync`]: sockets the kernel no longer has go, states and fds are
    /// corrected, sockets the table missed are seeded (the kernel still follows them, and
    /// their next record is matched by addresses). Returns what it had to correct.
    pub fn resync(&mut self, found: &ProcSockets, now: f64) -> Resync {
        let (_, touched) = self.touched.take().unwrap_or_default();
        let before = self.counts(now);
        let mut kernel: HashMap<Tuple, Vec<&ProcSocket>> = HashMap::new();
        for s in &found.sockets {
            kernel.entry(s.tuple).or_default().push(s);
        }
        let unowned: HashMap<Tuple, u8> = found.unowned.iter().copied().collect();
        let mut corrected = 0;
        let mut check = |sock: &mut Sock| -> bool {
            if touched.contains(&sock.tuple) {
                kernel.remove(&sock.tuple);
                return true;
            }
            let seen = kernel.get_mut(&sock.tuple).and_then(Vec::pop);
            let (state, held) = match seen {
                Some(s) => (s.state, s.held),
                // A socket the target closed, still finishing.
                None => match unowned.get(&sock.tuple) {
                    Some(&state) if sock.was_held => (state, false),
                    _ => {
                        corrected += 1;
                        return false;
                    }
                },
            };
            if (state, held) != (sock.state, sock.held) {
                corrected += 1;
                if state != sock.state {
                    sock.state = state;
                    sock.since = now;
                }
                sock.held = held;
                sock.was_held |= held;
            }
            true
        };
        self.socks.retain(|_, sock| check(sock));
        for socks in self.seeded.values_mut() {
            socks.retain_mut(|sock| check(sock));
        }
        self.seeded.retain(|_, socks| !socks.is_empty());
        for (tuple, missed) in kernel {
            if touched.contains(&tuple) {
                continue;
            }
            for s in missed {
                corrected += 1;
                self.seed_one(s, &found.listen_ports, now);
            }
        }
        Resync {
            corrected,
            before,
            after: self.counts(now),
        }
    }

    /// The counts a resync reports: held sockets per state, and the accept queue.
    fn counts(&self, now: f64) -> BTreeMap<&'static str, u32> {
        let census = self.count(now);
        let mut counts: BTreeMap<&'static str, u32> = PROCESS_STATES
            .iter()
            .map(|&state| (state_name(state), census.held.get(state)))
            .filter(|&(_, n)| n > 0)
            .collect();
        counts.insert("accept_queue", census.accept_queue.total());
        counts
    }

    /// The addresses of a record's socket.
    fn tuple_of(&self, e: &TcpEvent) -> Tuple {
        let mut tuple = Tuple {
            family: e.family,
            saddr: e.saddr,
            sport: e.sport,
            daddr: e.daddr,
            dport: e.dport,
        };
        // The kernel gives the local port back (`inet_put_port` zeroes `skc_num`) before it
        // reports the move to CLOSE: the table still knows it.
        if tuple.sport == 0
            && let Some(known) = self.socks.get(&e.sk)
        {
            tuple.sport = known.tuple.sport;
        }
        tuple
    }

    /// A record not applied yet (held back until the records before it are in): a resync
    /// under way leaves its socket as the records will have it.
    pub fn touch(&mut self, e: &TcpEvent) {
        let tuple = self.tuple_of(e);
        let known = self.socks.get(&e.sk).map(|sock| sock.tuple);
        if let Some((since, touched)) = &mut self.touched
            && e.ts_ns as f64 / 1e9 >= *since
        {
            touched.insert(tuple);
            touched.extend(known);
        }
    }

    /// Applies one kernel record; a transition also becomes a `tcp_state` event.
    pub fn record(&mut self, e: &TcpEvent, clocks: Clocks, out: &mut Vec<Event>) {
        let tuple = self.tuple_of(e);
        let at = e.ts_ns as f64 / 1e9;
        let held = e.held != 0;
        if let Some((since, touched)) = &mut self.touched
            && at >= *since
        {
            touched.insert(tuple);
        }
        // A socket known from /proc is the same socket whichever way the kernel adopted it.
        // A new child of a listener is no socket from before, whatever addresses it shows yet.
        let seeded = if self.seeded.is_empty()
            || self.socks.contains_key(&e.sk)
            || is_child_of_listener(e.old, e.new)
        {
            None
        } else {
            self.take_seeded(&tuple)
        };
        let sock = self.socks.entry(e.sk).or_insert_with(|| {
            seeded.unwrap_or(Sock {
                tuple,
                state: e.old,
                since: at,
                held,
                was_held: held,
                server: e.adopted == Adopted::OnListenPort as u8,
                probe_at: at,
                probe_every: PROBE_FIRST,
                slot: e.slot,
            })
        });
        if let Some((since, touched)) = &mut self.touched
            && at >= *since
        {
            touched.insert(sock.tuple);
        }
        sock.tuple = tuple;
        sock.slot = e.slot;
        sock.held = held;
        sock.was_held |= held;
        if e.kind == Kind::Accepted as u8 {
            return;
        }
        if sock.state != e.new {
            sock.state = e.new;
            sock.since = at;
        }
        if e.adopted == Adopted::OnListenPort as u8 && e.new == TCP_SYN_RECV {
            self.new_this_tick += 1;
            if self.recent.len() == RECENT_PEERS {
                self.recent.pop_front();
            }
            self.recent.push_back((at, tuple.remote(), tuple.sport));
        }
        if e.new == TCP_CLOSE {
            self.socks.remove(&e.sk);
        }
        out.push(Event::TcpState {
            ts: clocks.ms_at(at),
            pid: self.pid,
            family: e.family,
            saddr: tuple.local(),
            sport: tuple.sport,
            daddr: tuple.remote(),
            dport: e.dport,
            old: state_name(e.old),
            new: state_name(e.new),
        });
    }

    /// Counts the sockets at `now` (monotonic seconds), raises or resolves the socket alerts,
    /// and appends the `sockets` event and any alerts to `out`.
    pub fn tick(&mut self, now: f64, ts: u64, lost: &Lost, out: &mut Vec<Event>) {
        self.new_per_tick
            .push_back(std::mem::take(&mut self.new_this_tick));
        if self.new_per_tick.len() > BASELINE_SECS + SURGE_SECS {
            self.new_per_tick.pop_front();
        }
        while self
            .recent
            .front()
            .is_some_and(|&(t, _, _)| now - t > SURGE_SECS as f64)
        {
            self.recent.pop_front();
        }
        self.census = self.count(now);
        let leaked = self.stuck(TCP_CLOSE_WAIT, self.thresholds.close_wait_after, now, false);
        self.census.close_wait_leaked = leaked.0;
        let c = &self.census;
        out.push(Event::Sockets {
            ts,
            pid: self.pid,
            states: c.held.clone(),
            accept_queue: c.accept_queue.clone(),
            orphaned: c.orphaned.clone(),
            close_wait_oldest_seconds: c.close_wait_oldest.map(round_tenths),
            close_wait_leaked: c.close_wait_leaked,
            new_connections_per_second: round_tenths(c.new_per_second),
            peers: c.peers.clone(),
            events_lost: lost.tcp_records,
            untracked: lost.tcp_untracked,
        });
        self.check_close_wait(leaked, ts, out);
        self.check_fin_wait2(now, ts, out);
        self.check_surge(ts, out);
    }

    pub fn census(&self) -> &Census {
        &self.census
    }

    /// Sockets in the accept queue due for asking the kernel whether the target has accepted
    /// them by now (the answer comes as `Accepted` records), each pointer with its slot.
    pub fn due_for_probe(&mut self, now: f64) -> Vec<(u64, u16)> {
        let mut due = Vec::new();
        for (&sk, sock) in &mut self.socks {
            if due.len() == PROBE_PER_DRAIN {
                break;
            }
            if !sock.held && !sock.was_held && sock.probe_at <= now {
                due.push((sk, sock.slot));
                sock.probe_at = now + sock.probe_every;
                sock.probe_every = (sock.probe_every * 2.0).min(PROBE_MAX);
            }
        }
        due
    }

    fn all(&self) -> impl Iterator<Item = &Sock> {
        self.socks.values().chain(self.seeded.values().flatten())
    }

    /// The seeded socket with these addresses, if any, now known by its pointer.
    fn take_seeded(&mut self, tuple: &Tuple) -> Option<Sock> {
        let socks = self.seeded.get_mut(tuple)?;
        let sock = socks.pop();
        if socks.is_empty() {
            self.seeded.remove(tuple);
        }
        sock
    }

    fn count(&self, now: f64) -> Census {
        let mut census = Census {
            held: StateCounts {
                all: true,
                ..StateCounts::default()
            },
            ..Census::default()
        };
        let mut by_peer: HashMap<IpAddr, u32> = HashMap::new();
        for sock in self.all() {
            let counts = match (sock.held, sock.was_held) {
                (true, _) => &mut census.held,
                (false, false) => &mut census.accept_queue,
                (false, true) => &mut census.orphaned,
            };
            counts.add(sock.state);
            if sock.state == TCP_CLOSE_WAIT && (sock.held || !sock.was_held) {
                let age = now - sock.since;
                census.close_wait_oldest =
                    Some(census.close_wait_oldest.map_or(age, |a: f64| a.max(age)));
            }
            if sock.state == TCP_ESTABLISHED {
                *by_peer.entry(sock.tuple.remote()).or_default() += 1;
            }
        }
        census.peers = top(by_peer.into_iter().map(|(addr, count)| PeerCount {
            addr,
            local_port: None,
            remote_port: None,
            count,
        }));
        let ticks = self.new_per_tick.len();
        let recent = &self
            .new_per_tick
            .range(ticks.saturating_sub(SURGE_SECS)..)
            .collect::<Vec<_>>();
        census.new_per_second =
            recent.iter().map(|&&n| f64::from(n)).sum::<f64>() / recent.len().max(1) as f64;
        let mut history: Vec<u32> = self
            .new_per_tick
            .range(..ticks.saturating_sub(SURGE_SECS))
            .copied()
            .collect();
        if history.len() >= BASELINE_MIN_SECS {
            let mid = history.len() / 2;
            census.baseline_per_second = f64::from(*history.select_nth_unstable(mid).1);
        } else {
            census.baseline_per_second = f64::NAN;
        }
        census
    }

    /// Sockets in `state` (held, or not yet accepted when `queued`, or orphaned when
    /// `orphans`) for longer than `after`: their count, the oldest age, and their peers by
    /// address and local port.
    fn stuck(&self, state: u8, after: f64, now: f64, orphans: bool) -> (u32, f64, Vec<PeerCount>) {
        let mut count = 0;
        let mut oldest = 0.0_f64;
        let mut by_peer: HashMap<(IpAddr, Option<u16>, Option<u16>), u32> = HashMap::new();
        for sock in self.all() {
            let mine = sock.held
                || if orphans {
                    sock.was_held
                } else {
                    !sock.was_held
                };
            if sock.state != state || !mine || now - sock.since < after {
                continue;
            }
            count += 1;
            oldest = oldest.max(now - sock.since);
            *by_peer.entry(sock.peer()).or_default() += 1;
        }
        let peers = top(by_peer
            .into_iter()
            .map(|((addr, local_port, remote_port), count)| PeerCount {
                addr,
                local_port,
                remote_port,
                count,
            }));
        (count, oldest, peers)
    }

    fn check_close_wait(
        &mut self,
        (count, oldest, peers): (u32, f64, Vec<PeerCount>),
        ts: u64,
        out: &mut Vec<Event>,
    ) {
        let t = self.thresholds;
        let check = Check {
            firing: count >= t.close_wait_min,
            cleared: count == 0,
        };
        let Some(change) = self.close_wait.update(check) else {
            return;
        };
        let message = if count > 0 {
            format!(
                "{} sockets stuck in CLOSE_WAIT for over {} (oldest {}), from {}: their peers closed but the process does not close them - a stuck or deadlocked server? Take a thread dump now (jstack {pid} or jcmd {pid} Thread.print)",
                thousands(count.into()),
                duration(t.close_wait_after),
                duration(oldest),
                describe_peers(&peers),
                pid = self.pid,
            )
        } else {
            "no socket left in CLOSE_WAIT".to_owned()
        };
        let detail = AlertDetail::Sockets {
            count,
            oldest_seconds: round_tenths(oldest),
            peers,
        };
        out.push(Event::alert_change(
            self.pid,
            ts,
            (AlertKind::CloseWaitLeak, Severity::Warning),
            change,
            message,
            detail,
        ));
    }

    fn check_fin_wait2(&mut self, now: f64, ts: u64, out: &mut Vec<Event>) {
        let t = self.thresholds;
        let (count, oldest, peers) = self.stuck(TCP_FIN_WAIT2, t.fin_wait2_after, now, true);
        let check = Check {
            firing: count >= t.fin_wait2_min,
            cleared: count <= t.fin_wait2_min / 2,
        };
        let Some(change) = self.fin_wait2.update(check) else {
            return;
        };
        let message = format!(
            "{} sockets closed by the process wait in FIN_WAIT2 for over {} (oldest {}), on {}: the peers do not finish closing - are they stuck?",
            thousands(count.into()),
            duration(t.fin_wait2_after),
            duration(oldest),
            describe_peers(&peers),
        );
        let detail = AlertDetail::Sockets {
            count,
            oldest_seconds: round_tenths(oldest),
            peers,
        };
        out.push(Event::alert_change(
            self.pid,
            ts,
            (AlertKind::FinWait2Pileup, Severity::Warning),
            change,
            message,
            detail,
        ));
    }

    fn check_surge(&mut self, ts: u64, out: &mut Vec<Event>) {
        let t = self.thresholds;
        let (rate, baseline) = (self.census.new_per_second, self.census.baseline_per_second);
        if baseline.is_nan() {
            return;
        }
        let floor = baseline.max(1.0);
        let check = Check {
            firing: rate >= t.surge_min && rate >= t.surge_factor * floor,
            cleared: rate < t.surge_min / 2.0 || rate < t.surge_factor / 2.0 * floor,
        };
        let Some(change) = self.surge.update(check) else {
            return;
        };
        let mut by_peer: HashMap<(IpAddr, u16), u32> = HashMap::new();
        for &(_, addr, port) in &self.recent {
            *by_peer.entry((addr, port)).or_default() += 1;
        }
        let peers = top(by_peer.into_iter().map(|((addr, port), count)| PeerCount {
            addr,
            local_port: Some(port),
            remote_port: None,
            count,
        }));
        let message = format!(
            "{rate:.0} new connections/s over the last {SURGE_SECS}s against a usual {baseline:.0}/s, from {}: network threads may saturate and ISR flap",
            describe_peers(&peers)
        );
        let detail = AlertDetail::Surge {
            new_connections_per_second: round_tenths(rate),
            baseline_per_second: round_tenths(baseline),
            peers,
        };
        out.push(Event::alert_change(
            self.pid,
            ts,
            (AlertKind::ConnectionSurge, Severity::Warning),
            change,
            message,
            detail,
        ));
    }
}

/// The largest groups first, at most [`TOP_PEERS`].
fn top(groups: impl Iterator<Item = PeerCount>) -> Vec<PeerCount> {
    let mut all: Vec<PeerCount> = groups.collect();
    all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.addr.cmp(&b.addr)));
    all.truncate(TOP_PEERS);
    all
}

/// "10.0.0.5 -> :9092 x8, to 10.0.0.7:9092 x4".
fn describe_peers(peers: &[PeerCount]) -> String {
    let parts: Vec<String> = peers
        .iter()
        .map(|p| match (p.local_port, p.remote_port) {
            (Some(port), _) => format!("{} -> :{port} x{}", p.addr, p.count),
            (None, Some(port)) => format!("to {}:{port} x{}", p.addr, p.count),
            (None, None) => format!("{} x{}", p.addr, p.count),
        })
        .collect();
    if parts.is_empty() {
        "no peer".to_owned()
    } else {
        parts.join(", ")
    }
}

fn round_tenths(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use tracer_common::tcp::TCP_LISTEN;

    use super::{proc::ProcSocket, *};

    const LISTENER: u64 = 0x1000;

    fn event(sk: u64, old: u8, new: u8, adopted: Adopted, at: f64, peer: u8) -> TcpEvent {
        let mut saddr = [0; 16];
        saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut daddr = [0; 16];
        daddr[..4].copy_from_slice(&[10, 0, 0, peer]);
        TcpEvent {
            ts_ns: (at * 1e9) as u64,
            sk,
            target: 0,
            netns: 1,
            kind: Kind::Transition as u8,
            old,
            new,
            family: 4,
            held: 1,
            adopted: adopted as u8,
            sport: 9092,
            dport: 40_000 + sk as u16,
            slot: 0,
            seq: 0,
            saddr,
            daddr,
        }
    }

    /// A server socket accepted from `peer` at `at`, and the peer closing it at `closed`.
    fn accept_then_peer_close(
        model: &mut TcpModel,
        sk: u64,
        peer: u8,
        at: f64,
        closed: f64,
        out: &mut Vec<Event>,
    ) {
        let mut syn = event(
            sk,
            TCP_LISTEN,
            TCP_SYN_RECV,
            Adopted::OnListenPort,
            at,
            peer,
        );
        syn.held = 0;
        model.record(&syn, Clocks::now(), out);
        let mut est = event(sk, TCP_SYN_RECV, TCP_ESTABLISHED, Adopted::Known, at, peer);
        est.held = 0;
        model.record(&est, Clocks::now(), out);
        let mut accepted = event(
            sk,
            TCP_ESTABLISHED,
            TCP_ESTABLISHED,
            Adopted::Known,
            at,
            peer,
        );
        accepted.kind = Kind::Accepted as u8;
        model.record(&accepted, Clocks::now(), out);
        model.record(
            &event(
                sk,
                TCP_ESTABLISHED,
                TCP_CLOSE_WAIT,
                Adopted::Known,
                closed,
                peer,
            ),
            Clocks::now(),
            out,
        );
    }

    fn alerts(events: &[Event]) -> Vec<(&'static str, AlertKind)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Alert { kind, .. } => Some(("alert", *kind)),
                Event::AlertResolved { kind, .. } => Some(("resolved", *kind)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn close_wait_leak_fires_after_the_threshold_and_resolves_when_drained() {
        let mut model = TcpModel::new(7, TcpThresholds::default());
        let mut out = Vec::new();
        model.record(
            &event(LISTENER, TCP_CLOSE, TCP_LISTEN, Adopted::ByOwner, 0.0, 0),
            Clocks::now(),
            &mut out,
        );
        for sk in 1..=3 {
            accept_then_peer_close(
                &mut model,
                sk,
                if sk == 3 { 2 } else { 1 },
                1.0,
                2.0,
                &mut out,
            );
        }
        let transitions = out
            .iter()
            .filter(|e| matches!(e, Event::TcpState { .. }))
            .count();
        assert_eq!(
            transitions,
            1 + 3 * 3,
            "one tcp_state per transition, none for accept"
        );
        out.clear();
        model.tick(6.9, 0, &Lost::default(), &mut out);
        assert!(
            alerts(&out).is_empty(),
            "4.9 s in CLOSE_WAIT is under the 5 s threshold"
        );
        assert_eq!(model.census().held.get(TCP_CLOSE_WAIT), 3);
        assert_eq!(model.census().held.get(TCP_LISTEN), 1);
        model.tick(7.1, 0, &Lost::default(), &mut out);
        let alert = out
            .iter()
            .find(|e| matches!(e, Event::Alert { .. }))
            .expect("alert");
        let Event::Alert {
            detail: AlertDetail::Sockets { count, peers, .. },
            message,
            ..
        } = alert
        else {
            panic!("{alert:?}")
        };
        assert_eq!(*count, 3);
        assert_eq!(
            peers[0],
            PeerCount {
                addr: "10.0.0.1".parse().unwrap(),
                local_port: Some(9092),
                remote_port: None,
                count: 2
            }
        );
        assert!(message.contains("jstack 7"), "{message}");
        model.tick(8.0, 0, &Lost::default(), &mut out);
        assert_eq!(
            alerts(&out),
            vec![("alert", AlertKind::CloseWaitLeak)],
            "raised once"
        );
        // The server resumes and closes: LAST_ACK, then CLOSE.
        for sk in 1..=3 {
            let mut last_ack = event(sk, TCP_CLOSE_WAIT, 9, Adopted::Known, 9.0, 1);
            last_ack.held = 0;
            model.record(&last_ack, Clocks::now(), &mut out);
            model.record(
                &event(sk, 9, TCP_CLOSE, Adopted::Known, 9.1, 1),
                Clocks::now(),
                &mut out,
            );
        }
        model.tick(9.5, 0, &Lost::default(), &mut out);
        assert_eq!(
            alerts(&out),
            vec![
                ("alert", AlertKind::CloseWaitLeak),
                ("resolved", AlertKind::CloseWaitLeak)
            ]
        );
        assert_eq!(model.census().held.total(), 1, "only the listener is left");
    }

    #[test]
    fn queued_and_orphaned_sockets_are_counted_apart() {
        let mut model = TcpModel::new(7, TcpThresholds::default());
        let mut out = Vec::new();
        // Arrived on the listening port, never accepted: the accept queue.
        let mut queued = event(1, TCP_LISTEN, TCP_SYN_RECV, Adopted::OnListenPort, 0.0, 1);
        queued.held = 0;
        model.record(&queued, Clocks::now(), &mut out);
        // The target's client socket, closed by the target: orphaned in FIN_WAIT2.
        model.record(
            &event(2, TCP_CLOSE, 2, Adopted::ByOwner, 0.0, 2),
            Clocks::now(),
            &mut out,
        );
        model.record(
            &event(2, 2, TCP_ESTABLISHED, Adopted::Known, 0.1, 2),
            Clocks::now(),
            &mut out,
        );
        model.record(
            &event(2, TCP_ESTABLISHED, 4, Adopted::Known, 0.2, 2),
            Clocks::now(),
            &mut out,
        );
        let mut fin2 = event(2, 4, TCP_FIN_WAIT2, Adopted::Known, 0.3, 2);
        fin2.held = 0;
        model.record(&fin2, Clocks::now(), &mut out);
        model.tick(1.0, 0, &Lost::default(), &mut out);
        let census = model.census();
        assert_eq!(census.held.total(), 0);
        assert_eq!(census.accept_queue.get(TCP_SYN_RECV), 1);
        assert_eq!(census.orphaned.get(TCP_FIN_WAIT2), 1);
        assert!(
            (census.new_per_second - 1.0).abs() < 1e-9,
            "one new connection in the one second observed"
        );
    }

    #[test]
    fn fin_wait2_pileup_needs_many_old_ones() {
        let thresholds = TcpThresholds {
            fin_wait2_min: 3,
            fin_wait2_after: 10.0,
            ..TcpThresholds::default()
        };
        let mut model = TcpModel::new(7, thresholds);
        let mut out = Vec::new();
        for sk in 1..=4 {
            model.record(
                &event(sk, TCP_CLOSE, 2, Adopted::ByOwner, 0.0, 3),
                Clocks::now(),
                &mut out,
            );
            model.record(
                &event(sk, 2, TCP_ESTABLISHED, Adopted::Known, 0.0, 3),
                Clocks::now(),
                &mut out,
            );
            model.record(
                &event(sk, TCP_ESTABLISHED, 4, Adopted::Known, 1.0, 3),
                Clocks::now(),
                &mut out,
            );
            model.record(
                &event(sk, 4, TCP_FIN_WAIT2, Adopted::Known, 1.0, 3),
                Clocks::now(),
                &mut out,
            );
        }
        out.clear();
        model.tick(10.0, 0, &Lost::default(), &mut out);
        assert!(alerts(&out).is_empty());
        model.tick(11.5, 0, &Lost::default(), &mut out);
        assert_eq!(alerts(&out), vec![("alert", AlertKind::FinWait2Pileup)]);
        for sk in 1..=3 {
            model.record(
                &event(sk, TCP_FIN_WAIT2, TCP_CLOSE, Adopted::Known, 12.0, 3),
                Clocks::now(),
                &mut out,
            );
        }
        model.tick(12.5, 0, &Lost::default(), &mut out);
        assert_eq!(
            alerts(&out),
            vec![
                ("alert", AlertKind::FinWait2Pileup),
                ("resolved", AlertKind::FinWait2Pileup)
            ]
        );
    }

    #[test]
    fn a_surge_is_measured_against_the_baseline() {
        let mut model = TcpModel::new(7, TcpThresholds::default());
        let mut out = Vec::new();
        let mut sk = 100;
        let mut connect = |model: &mut TcpModel, n: u32, at: f64, out: &mut Vec<Event>| {
            for _ in 0..n {
                sk += 1;
                let mut syn = event(sk, TCP_LISTEN, TCP_SYN_RECV, Adopted::OnListenPort, at, 9);
                syn.held = 0;
                model.record(&syn, Clocks::now(), out);
            }
        };
        // A minute at 10 new connections a second, then 400 a second.
        for t in 0..60 {
            connect(&mut model, 10, f64::from(t), &mut out);
            model.tick(f64::from(t) + 0.5, 0, &Lost::default(), &mut out);
        }
        assert!(alerts(&out).is_empty());
        for t in 60..70 {
            connect(&mut model, 400, f64::from(t), &mut out);
            model.tick(f64::from(t) + 0.5, 0, &Lost::default(), &mut out);
        }
        assert_eq!(alerts(&out), vec![("alert", AlertKind::ConnectionSurge)]);
        assert!((model.census().baseline_per_second - 10.0).abs() < 1e-9);
        for t in 70..90 {
            connect(&mut model, 10, f64::from(t), &mut out);
            model.tick(f64::from(t) + 0.5, 0, &Lost::default(), &mut out);
        }
        assert_eq!(
            alerts(&out),
            vec![
                ("alert", AlertKind::ConnectionSurge),
                ("resolved", AlertKind::ConnectionSurge)
            ]
        );
    }

    /// What sock_diag would say of the socket `event` builds for `sk` with `peer`.
    fn found(sk: u64, peer: u8, state: u8, held: bool) -> ProcSocket {
        let e = event(sk, state, state, Adopted::Known, 0.0, peer);
        ProcSocket {
            tuple: Tuple {
                family: 4,
                saddr: e.saddr,
                sport: e.sport,
                daddr: e.daddr,
                dport: e.dport,
            },
            state,
            inode: if held { sk } else { 0 },
            held,
            rx_queue: 0,
        }
    }

    #[test]
    fn a_resync_rebuilds_what_lost_records_left_wrong() {
        let mut model = TcpModel::new(7, TcpThresholds::default());
        let mut out = Vec::new();
        // Four accepted connections; then records were lost: 1 and 2 moved to CLOSE_WAIT,
        // 3 closed, and 5 arrived and was accepted, all unseen.
        for sk in 1..=4 {
            accept_then_peer_close(&mut model, sk, 1, 0.0, 0.5, &mut out);
            model.record(
                &event(sk, TCP_CLOSE_WAIT, TCP_ESTABLISHED, Adopted::Known, 0.6, 1),
                Clocks::now(),
                &mut out,
            );
        }
        model.begin_resync(0.9);
        // While the snapshot is taken, 4 is reported closing: the record wins over the
        // snapshot, which still has it ESTABLISHED.
        model.record(
            &event(4, TCP_ESTABLISHED, TCP_CLOSE_WAIT, Adopted::Known, 1.0, 1),
            Clocks::now(),
            &mut out,
        );
        let snapshot = ProcSockets {
            netns: 1,
            sockets: vec![
                found(1, 1, TCP_CLOSE_WAIT, true),
                found(2, 1, TCP_CLOSE_WAIT, true),
                found(4, 1, TCP_ESTABLISHED, true),
                found(5, 1, TCP_ESTABLISHED, true),
            ],
            listen_ports: vec![9092],
            unowned: Vec::new(),
        };
        let resync = model.resync(&snapshot, 2.0);
        assert_eq!(resync.corrected, 4, "1 and 2 changed, 3 gone, 5 added");
        assert_eq!(resync.before["ESTABLISHED"], 3);
        assert_eq!(resync.before["CLOSE_WAIT"], 1);
        assert_eq!(resync.after["CLOSE_WAIT"], 3);
        assert_eq!(resync.after["ESTABLISHED"], 1);
        // 5's next record finds it by its addresses: moved, not duplicated.
        model.record(
            &event(5, TCP_ESTABLISHED, TCP_CLOSE_WAIT, Adopted::Known, 3.0, 1),
            Clocks::now(),
            &mut out,
        );
        model.tick(3.5, 0, &Lost::default(), &mut out);
        assert_eq!(model.census().held.get(TCP_CLOSE_WAIT), 4);
        assert_eq!(model.census().held.total(), 4);
        // Nothing left to correct.
        model.begin_resync(0.9);
        let mut again = snapshot.clone();
        for s in &mut again.sockets {
            s.state = TCP_CLOSE_WAIT;
        }
        assert_eq!(model.resync(&again, 4.0).corrected, 0);
    }

    #[test]
    fn a_resync_keeps_closed_sockets_finishing_and_both_reuseport_listeners() {
        let mut model = TcpModel::new(7, TcpThresholds::default());
        let listener = found(0, 0, TCP_LISTEN, true);
        let mut listener = ProcSocket {
            tuple: Tuple {
                dport: 0,
                daddr: [0; 16],
                ..listener.tuple
            },
            ..listener
        };
        let mut other = listener;
        other.inode = 99;
        listener.inode = 98;
        let mut snapshot = ProcSockets {
            netns: 1,
            sockets: vec![listener, other],
            listen_ports: vec![9092],
            unowned: Vec::new(),
        };
        model.seed(&snapshot, 0.0);
        let mut out = Vec::new();
        // The target connects out and closes: orphaned in FIN_WAIT2.
        model.record(
            &event(2, TCP_CLOSE, 2, Adopted::ByOwner, 0.0, 2),
            Clocks::now(),
            &mut out,
        );
        model.record(
            &event(2, 2, TCP_ESTABLISHED, Adopted::Known, 0.1, 2),
            Clocks::now(),
            &mut out,
        );
        let mut fin = event(2, TCP_ESTABLISHED, 4, Adopted::Known, 0.2, 2);
        fin.held = 0;
        model.record(&fin, Clocks::now(), &mut out);
        let client = found(2, 2, TCP_FIN_WAIT2, false);
        snapshot.unowned.push((client.tuple, TCP_FIN_WAIT2));
        model.begin_resync(0.9);
        let resync = model.resync(&snapshot, 1.0);
        assert_eq!(resync.corrected, 1, "FIN_WAIT1 -> FIN_WAIT2, nothing else");
        assert_eq!(resync.after["LISTEN"], 2);
        model.tick(1.5, 0, &Lost::default(), &mut out);
        assert_eq!(model.census().orphaned.get(TCP_FIN_WAIT2), 1);
        assert_eq!(model.census().held.get(TCP_LISTEN), 2);
    }

    #[test]
    fn a_new_child_showing_its_listeners_addresses_does_not_take_over_the_listener() {
        let mut model = TcpModel::new(7, TcpThresholds::default());
        let listener = found(0, 0, TCP_LISTEN, true);
        let listener = ProcSocket {
            tuple: Tuple {
                dport: 0,
                daddr: [0; 16],
                ..listener.tuple
            },
            ..listener
        };
        model.seed(
            &ProcSockets {
                netns: 1,
                sockets: vec![listener],
                listen_ports: vec![9092],
                unowned: Vec::new(),
            },
            0.0,
        );
        let mut out = Vec::new();
        // 6.1 reports the clone before it has addresses of its own.
        let mut syn = event(1, TCP_LISTEN, TCP_SYN_RECV, Adopted::OnListenPort, 1.0, 0);
        syn.daddr = [0; 16];
        syn.dport = 0;
        syn.held = 0;
        model.record(&syn, Clocks::now(), &mut out);
        let mut est = event(1, TCP_SYN_RECV, TCP_ESTABLISHED, Adopted::Known, 1.0, 1);
        est.held = 0;
        model.record(&est, Clocks::now(), &mut out);
        model.tick(2.0, 0, &Lost::default(), &mut out);
        assert_eq!(model.census().held.get(TCP_LISTEN), 1);
        assert_eq!(model.census().accept_queue.get(TCP_ESTABLISHED), 1);
    }

    #[test]
    fn a_close_record_carries_the_local_port_the_kernel_already_cleared() {
        let mut model = TcpModel::new(7, TcpThresholds::default());
        let mut out = Vec::new();
        accept_then_peer_close(&mut model, 1, 1, 0.0, 1.0, &mut out);
        model.record(
            &event(1, TCP_CLOSE_WAIT, 9, Adopted::Known, 2.0, 1),
            Clocks::now(),
            &mut out,
        );
        let mut close = event(1, 9, TCP_CLOSE, Adopted::Known, 2.1, 1);
        close.sport = 0;
        out.clear();
        model.record(&close, Clocks::now(), &mut out);
        let [Event::TcpState { sport, new, .. }] = out.as_slice() else {
            panic!("{out:?}")
        };
        assert_eq!((*sport, *new), (9092, "CLOSE"));
    }

    #[test]
    fn sockets_from_proc_are_taken_over_by_their_first_record() {
        let mut model = TcpModel::new(7, TcpThresholds::default());
        let mut tuple = Tuple {
            family: 4,
            saddr: [0; 16],
            sport: 9092,
            daddr: [0; 16],
            dport: 40_001,
        };
        tuple.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        tuple.daddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        model.seed(
            &ProcSockets {
                netns: 1,
                sockets: vec![ProcSocket {
                    tuple,
                    state: TCP_ESTABLISHED,
                    inode: 5,
                    held: true,
                    rx_queue: 0,
                }],
                listen_ports: vec![9092],
                unowned: Vec::new(),
            },
            0.0,
        );
        let mut out = Vec::new();
        model.tick(1.0, 0, &Lost::default(), &mut out);
        assert_eq!(model.census().held.get(TCP_ESTABLISHED), 1);
        model.record(
            &event(
                1,
                TCP_ESTABLISHED,
                TCP_CLOSE_WAIT,
                Adopted::FromProc,
                2.0,
                1,
            ),
            Clocks::now(),
            &mut out,
        );
        model.tick(3.0, 0, &Lost::default(), &mut out);
        assert_eq!(model.census().held.get(TCP_ESTABLISHED), 0);
        assert_eq!(
            model.census().held.get(TCP_CLOSE_WAIT),
            1,
            "moved, not duplicated"
        );
        assert_eq!(model.census().close_wait_oldest, Some(1.0));
    }
}
