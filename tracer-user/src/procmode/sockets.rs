//! The target's sockets from samples: each sample is read as at attach (`tcp::proc::read`:
//! sock_diag of the target's network namespace matched to the socket inodes of /proc/PID/fd),
//! and what differs from the previous sample becomes the records the TCP model takes from the
//! kernel, so the same model counts, ages and alerts.
//!
//! What a sample cannot tell: the transitions in between (a socket seen ESTABLISHED then gone
//! went through FIN_WAIT or CLOSE_WAIT unseen), a socket that lived less than the interval,
//! who closed it, and when within the interval a state began (ages count from the sample that
//! first saw it, so they are short by up to one interval).

use std::collections::HashMap;

use tracer_common::tcp::{Adopted, Kind, TCP_CLOSE, TCP_LISTEN, TCP_SYN_RECV, TcpEvent};

use crate::tcp::{proc::ProcSockets, tuple::Tuple};

/// A socket as the previous sample saw it.
#[derive(Clone, Copy, Debug)]
struct Seen {
    /// The identity the model knows it by (the kernel's records use the `struct sock *`).
    id: u64,
    state: u8,
    held: bool,
    /// Its socket inode, 0 while it has no file (in the accept queue, or closed by the
    /// target and still finishing).
    inode: u64,
}

/// Turns successive samples of the target's sockets into TCP records.
pub struct SocketDiff {
    /// The previous sample's sockets by addresses: a list, since SO_REUSEPORT listeners share
    /// one tuple and are told apart by their inodes.
    seen: HashMap<Tuple, Vec<Seen>>,
    next_id: u64,
}

/// Takes from `seen` the socket that `inode` continues: the one with that inode, else one
/// that had or now has no file (a socket's inode is 0 until accepted and after its fd
/// closes, and its own number in between).
fn take(seen: &mut HashMap<Tuple, Vec<Seen>>, tuple: &Tuple, inode: u64) -> Option<Seen> {
    let socks = seen.get_mut(tuple)?;
    let at = socks
        .iter()
        .position(|s| s.inode == inode)
        .or_else(|| socks.iter().position(|s| s.inode == 0 || inode == 0))?;
    let found = socks.swap_remove(at);
    if socks.is_empty() {
        seen.remove(tuple);
    }
    Some(found)
}

impl SocketDiff {
    /// Starts from the sockets the model was seeded with at attach.
    pub fn new(seed: &ProcSockets) -> Self {
        let mut diff = Self {
            seen: HashMap::new(),
            next_id: 1,
        };
        for s in &seed.sockets {
            let id = diff.id();
            diff.seen.entry(s.tuple).or_default().push(Seen {
                id,
                state: s.state,
                held: s.held,
                inode: s.inode,
            });
        }
        diff
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The records that take the model from the previous sample to `found`, stamped `ts_ns`
    /// (CLOSE_WAIT's clock): a changed state is a transition, a socket that got an fd is
    /// accepted, a vanished one is closed, and a new one on a listening port is a new
    /// connection (passing through SYN_RECV, which is what the surge alert counts).
    pub fn update(&mut self, found: &ProcSockets, ts_ns: u64, out: &mut Vec<TcpEvent>) {
        let record = |sk: u64,
                      tuple: &Tuple,
                      kind: Kind,
                      (old, new): (u8, u8),
                      held: bool,
                      adopted: Adopted| {
            TcpEvent {
                ts_ns,
                sk,
                netns: found.netns,
                target: 0,
                kind: kind as u8,
                old,
                new,
                family: tuple.family,
                held: u8::from(held),
                adopted: adopted as u8,
                sport: tuple.sport,
                dport: tuple.dport,
                slot: 0,
                seq: 0,
                saddr: tuple.saddr,
                daddr: tuple.daddr,
            }
        };
        let mut gone = std::mem::take(&mut self.seen);
        for s in &found.sockets {
            let (t, state, held, inode) = (&s.tuple, s.state, s.held, s.inode);
            let rec = |sk, kind, states, adopted| record(sk, t, kind, states, held, adopted);
            let seen = if let Some(before) = take(&mut gone, t, inode) {
                let id = before.id;
                if before.state != state {
                    out.push(rec(
                        id,
                        Kind::Transition,
                        (before.state, state),
                        Adopted::Known,
                    ));
                } else if before.held != held {
                    out.push(rec(id, Kind::Accepted, (state, state), Adopted::Known));
                }
                Seen {
                    id,
                    state,
                    held,
                    inode,
                }
            } else {
                let id = self.id();
                if state != TCP_LISTEN && found.listen_ports.contains(&t.sport) {
                    let arrived = (TCP_LISTEN, TCP_SYN_RECV);
                    out.push(rec(id, Kind::Transition, arrived, Adopted::OnListenPort));
                    if state != TCP_SYN_RECV {
                        out.push(rec(
                            id,
                            Kind::Transition,
                            (TCP_SYN_RECV, state),
                            Adopted::Known,
                        ));
                    }
                } else {
                    out.push(rec(
                        id,
                        Kind::Transition,
                        (TCP_CLOSE, state),
                        Adopted::ByOwner,
                    ));
                }
                Seen {
                    id,
                    state,
                    held,
                    inode,
                }
            };
            self.seen.entry(*t).or_default().push(seen);
        }
        for (t, before) in gone
            .into_iter()
            .flat_map(|(t, v)| v.into_iter().map(move |b| (t, b)))
        {
            let states = (before.state, TCP_CLOSE);
            out.push(record(
                before.id,
                &t,
                Kind::Transition,
                states,
                before.held,
                Adopted::Known,
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::tcp::{TCP_CLOSE_WAIT, TCP_ESTABLISHED};

    use super::*;
    use crate::{
        event::{Clocks, Event},
        probes::Lost,
        tcp::{TcpModel, TcpThresholds, proc::ProcSocket},
    };

    fn sock(sport: u16, dport: u16, state: u8, held: bool) -> ProcSocket {
        ProcSocket {
            tuple: Tuple {
                family: 4,
                saddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                sport,
                daddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                dport,
            },
            state,
            inode: u64::from(held),
            held,
            rx_queue: 0,
        }
    }

    fn sample(sockets: Vec<ProcSocket>) -> ProcSockets {
        ProcSockets {
            netns: 7,
            sockets,
            listen_ports: vec![9092],
            unowned: Vec::new(),
        }
    }

    /// Feeds `samples` one second apart to a model seeded with the first, as a session does.
    fn run(samples: &[ProcSockets]) -> (TcpModel, Vec<Event>) {
        let mut model = TcpModel::new(1, TcpThresholds::default());
        model.seed(&samples[0], 0.0);
        let mut diff = SocketDiff::new(&samples[0]);
        let mut events = Vec::new();
        for (i, s) in samples.iter().enumerate() {
            let now = i as f64;
            let mut records = Vec::new();
            diff.update(s, (now * 1e9) as u64, &mut records);
            for r in &records {
                model.record(r, Clocks::now(), &mut events);
            }
            model.tick(now, 0, &Lost::default(), &mut events);
        }
        (model, events)
    }

    #[test]
    fn samples_drive_the_model_to_a_close_wait_leak_and_back() {
        let listener = sock(9092, 0, TCP_LISTEN, true);
        let conn = |port, state| sock(9092, port, state, true);
        let mut samples = vec![sample(vec![listener])];
        samples.push(sample(vec![
            listener,
            conn(40_001, TCP_ESTABLISHED),
            conn(40_002, TCP_ESTABLISHED),
        ]));
        for _ in 0..7 {
            samples.push(sample(vec![
                listener,
                conn(40_001, TCP_CLOSE_WAIT),
                conn(40_002, TCP_CLOSE_WAIT),
            ]));
        }
        let (model, events) = run(&samples);
        let census = model.census();
        assert_eq!(census.held.get(TCP_CLOSE_WAIT), 2);
        assert_eq!(census.held.get(TCP_LISTEN), 1);
        assert_eq!(
            census.close_wait_leaked, 2,
            "older than 5 s by the last sample"
        );
        let alerts: Vec<_> = events
            .iter()
            .filter(|e| matches!(e, Event::Alert { .. }))
            .collect();
        assert_eq!(alerts.len(), 1, "{alerts:?}");

        // The server closes them: the alert resolves and only the listener is left.
        samples.push(sample(vec![listener]));
        samples.push(sample(vec![listener]));
        let (model, events) = run(&samples);
        assert_eq!(model.census().held.total(), 1);
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::AlertResolved { .. }))
        );
    }

    #[test]
    fn new_connections_count_and_closed_ones_become_orphans() {
        let listener = sock(9092, 0, TCP_LISTEN, true);
        let (model, _) = run(&[
            sample(vec![listener]),
            sample(vec![
                listener,
                sock(9092, 40_001, TCP_ESTABLISHED, false),
                sock(9092, 40_002, TCP_ESTABLISHED, true),
            ]),
        ]);
        let census = model.census();
        assert_eq!(census.accept_queue.get(TCP_ESTABLISHED), 1);
        assert_eq!(census.held.get(TCP_ESTABLISHED), 1);
        // Two new connections in the second of two reports.
        assert!((census.new_per_second - 1.0).abs() < 1e-9, "{census:?}");

        // Held, then without its fd (closed by the target, still finishing): orphaned.
        let (model, _) = run(&[
            sample(vec![listener, sock(9092, 40_002, TCP_ESTABLISHED, true)]),
            sample(vec![listener, sock(9092, 40_002, 9, false)]),
        ]);
        assert_eq!(model.census().orphaned.get(9), 1);
        assert_eq!(model.census().accept_queue.total(), 0);
    }

    #[test]
    fn reuseport_twins_stay_two_listeners() {
        let twin = |inode| ProcSocket {
            inode,
            ..sock(9092, 0, TCP_LISTEN, true)
        };
        let both = sample(vec![twin(11), twin(12)]);
        let mut diff = SocketDiff::new(&both);
        let mut records = Vec::new();
        for i in 0..20 {
            // The kernel lists twins in either order.
            let s = if i % 2 == 0 {
                both.clone()
            } else {
                sample(vec![twin(12), twin(11)])
            };
            diff.update(&s, i, &mut records);
        }
        assert!(records.is_empty(), "{records:?}");

        // One twin closes: one CLOSE, and the other is still the listener it was.
        diff.update(&sample(vec![twin(12)]), 20, &mut records);
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!((records[0].old, records[0].new), (TCP_LISTEN, TCP_CLOSE));

        let mut samples = vec![both.clone(); 20];
        samples.push(sample(vec![twin(12)]));
        let (model, _) = run(&samples);
        assert_eq!(model.census().held.get(TCP_LISTEN), 1);
        let (model, _) = run(&samples[..20]);
        assert_eq!(model.census().held.get(TCP_LISTEN), 2);
    }

    #[test]
    fn unchanged_samples_make_no_records() {
        let s = sample(vec![
            sock(9092, 0, TCP_LISTEN, true),
            sock(50_000, 9092, TCP_ESTABLISHED, true),
        ]);
        let mut diff = SocketDiff::new(&s);
        let mut records = Vec::new();
        diff.update(&s, 1, &mut records);
        assert!(records.is_empty(), "{records:?}");
        diff.update(&sample(vec![]), 2, &mut records);
        assert_eq!(records.len(), 2);
        assert!(records.iter().all(|r| r.new == TCP_CLOSE));
    }
}
