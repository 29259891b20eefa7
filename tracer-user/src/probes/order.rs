//! The socket records in the order they happened. The socket probe stages records per CPU and
//! writes them to the ring `STAGED_RECORDS` at a time, and the agent flushes each CPU's stage
//! before it drains: so a socket whose transitions ran on two CPUs can have its later record in
//! the ring before its earlier one, even a drain ahead of it (the earlier record staged on a CPU
//! already flushed, the later one on a CPU flushed after it). Each record carries its slot's
//! count of transitions (`TcpEvent::seq`), which rises with each of one socket's records, and
//! its time, never before the event. [`Reorder`] puts the records of a drain in the order of
//! (time, count), and holds back the ones too recent to be sure that every record before
//! them has arrived.

use tracer_common::tcp::TcpEvent;

/// The socket records drained and not yet handed on.
#[derive(Default)]
pub struct Reorder {
    pending: Vec<TcpEvent>,
}

/// The order of one socket's records: by time, then by the slot's count (one socket's
/// transitions can share a tick), then a transition before an `Accepted` record read at the
/// same count.
fn key(e: &TcpEvent) -> (u64, u32, u8) {
    (e.ts_ns, e.seq, e.kind)
}

impl Reorder {
    pub fn push(&mut self, record: TcpEvent) {
        self.pending.push(record);
    }

    /// Hands on, in order, every record stamped before `cutoff_ns`, and keeps the rest.
    ///
    /// A record is safe to hand on once every record before it is in: when the stages were
    /// flushed after `cutoff_ns` (plus the most a stamp can be early), a record stamped before
    /// it happened before the flushes, and so did every earlier record of its socket, whose
    /// stamps are no later. Those were then in a stage that was flushed, or in the ring.
    pub fn release(&mut self, cutoff_ns: u64, mut hand_on: impl FnMut(TcpEvent)) {
        if self.pending.is_empty() {
            return;
        }
        self.pending.sort_by_key(key);
        let ready = self.pending.partition_point(|e| e.ts_ns < cutoff_ns);
        for record in self.pending.drain(..ready) {
            hand_on(record);
        }
    }

    /// Hands on, in order, every held record of the target numbered `number`, however recent.
    pub fn release_all_of(&mut self, number: u32, mut hand_on: impl FnMut(TcpEvent)) {
        self.pending.sort_by_key(key);
        self.pending.retain(|e| {
            if e.target == number {
                hand_on(*e);
                false
            } else {
                true
            }
        });
    }

    /// The held records of the target numbered `number`.
    pub fn held(&self, number: u32) -> impl Iterator<Item = &TcpEvent> {
        self.pending.iter().filter(move |e| e.target == number)
    }

    /// Drops the held records of the target numbered `number` (it detached).
    pub fn forget(&mut self, number: u32) {
        self.pending.retain(|e| e.target != number);
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::tcp::{
        Kind, TCP_CLOSE, TCP_CLOSE_WAIT, TCP_ESTABLISHED, TCP_LAST_ACK, TCP_SYN_RECV,
    };

    use super::*;

    fn record(sk: u64, ts_ns: u64, seq: u32, (old, new): (u8, u8)) -> TcpEvent {
        TcpEvent {
            ts_ns,
            sk,
            netns: 0,
            target: 1,
            kind: Kind::Transition as u8,
            old,
            new,
            family: 4,
            held: 0,
            adopted: 0,
            sport: 9092,
            dport: 40_000,
            slot: 0,
            seq,
            saddr: [0; 16],
            daddr: [0; 16],
        }
    }

    fn released(reorder: &mut Reorder, cutoff_ns: u64) -> Vec<(u64, u8)> {
        let mut out = Vec::new();
        reorder.release(cutoff_ns, |e| out.push((e.sk, e.new)));
        out
    }

    #[test]
    fn one_sockets_records_come_out_in_the_order_they_happened_within_a_tick() {
        let mut reorder = Reorder::default();
        // Flushed from the second CPU first: the socket's later records lead the ring.
        reorder.push(record(7, 4_000, 12, (TCP_CLOSE_WAIT, TCP_LAST_ACK)));
        reorder.push(record(7, 4_000, 13, (TCP_LAST_ACK, TCP_CLOSE)));
        reorder.push(record(9, 4_000, 3, (TCP_SYN_RECV, TCP_ESTABLISHED)));
        reorder.push(record(7, 4_000, 11, (TCP_ESTABLISHED, TCP_CLOSE_WAIT)));
        let out = released(&mut reorder, 10_000);
        let of_7: Vec<u8> = out.iter().filter(|r| r.0 == 7).map(|r| r.1).collect();
        assert_eq!(of_7, [TCP_CLOSE_WAIT, TCP_LAST_ACK, TCP_CLOSE]);
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn a_record_too_recent_waits_for_the_next_drain_and_its_earlier_one() {
        let mut reorder = Reorder::default();
        // Staged on a CPU flushed late: its earlier record is still in another CPU's stage.
        reorder.push(record(7, 12_000, 21, (TCP_CLOSE_WAIT, TCP_LAST_ACK)));
        reorder.push(record(9, 4_000, 2, (TCP_SYN_RECV, TCP_ESTABLISHED)));
        assert_eq!(released(&mut reorder, 10_000), [(9, TCP_ESTABLISHED)]);
        // The next drain brings the earlier record, stamped in the same tick.
        reorder.push(record(7, 12_000, 20, (TCP_ESTABLISHED, TCP_CLOSE_WAIT)));
        assert_eq!(
            released(&mut reorder, 20_000),
            [(7, TCP_CLOSE_WAIT), (7, TCP_LAST_ACK)]
        );
        assert!(released(&mut reorder, 30_000).is_empty());
    }

    #[test]
    fn an_accepted_record_read_at_a_transitions_count_comes_after_it() {
        let mut reorder = Reorder::default();
        let mut accepted = record(7, 4_000, 5, (TCP_ESTABLISHED, TCP_ESTABLISHED));
        accepted.kind = Kind::Accepted as u8;
        reorder.push(accepted);
        reorder.push(record(7, 4_000, 5, (TCP_SYN_RECV, TCP_ESTABLISHED)));
        let mut kinds = Vec::new();
        reorder.release(10_000, |e| kinds.push(e.kind));
        assert_eq!(kinds, [Kind::Transition as u8, Kind::Accepted as u8]);
    }

    #[test]
    fn a_detached_targets_records_are_dropped_and_a_final_drain_takes_all() {
        let mut reorder = Reorder::default();
        let mut other = record(8, 50_000, 1, (TCP_SYN_RECV, TCP_ESTABLISHED));
        other.target = 2;
        reorder.push(other);
        reorder.push(record(7, 50_000, 2, (TCP_ESTABLISHED, TCP_CLOSE_WAIT)));
        reorder.push(record(7, 40_000, 1, (TCP_SYN_RECV, TCP_ESTABLISHED)));
        assert_eq!(reorder.held(1).count(), 2);
        let mut out = Vec::new();
        reorder.release_all_of(1, |e| out.push(e.new));
        assert_eq!(out, [TCP_ESTABLISHED, TCP_CLOSE_WAIT]);
        assert_eq!(reorder.held(2).count(), 1);
        reorder.forget(2);
        assert!(released(&mut reorder, u64::MAX).is_empty());
    }
}
