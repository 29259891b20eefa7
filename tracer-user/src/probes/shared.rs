//! One loaded object for every session of the process: the sessions share [`Kernel`], and
//! whichever of them finds a ring buffer readable drains it for all, each record into the inbox
//! of the target whose number it carries. All on one thread (the agent's `LocalSet`, or
//! `attach`'s single session): the shares are `Rc` and `RefCell`, borrowed only between awaits.

use std::{
    cell::{RefCell, RefMut},
    collections::HashMap,
    os::fd::{AsRawFd, RawFd},
    rc::Rc,
};

use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::Notify,
};
use tracer_common::{
    task::TaskEvent,
    tcp::{STAGED_RECORDS, TcpEvent},
    vma::VmaEvent,
};

use super::{ProbeError, Probes, Record, Rings, decode, order::Reorder};

/// A ring buffer's fd, polled for readability apart from the ring itself (which a drain borrows
/// mutably, while other sessions may be waiting on the fd).
struct RingFd(RawFd);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// The loaded object, shared by the sessions; dropped, and its programs detached, with the
/// last of them.
pub struct Kernel {
    /// The rings' fds as registered with the runtime: declared before `rings`, so that they are
    /// deregistered before the rings close their fds.
    ready: [AsyncFd<RingFd>; 3],
    rings: RefCell<Rings>,
    probes: RefCell<Probes>,
    /// Each attached target's inbox, by its number.
    inboxes: RefCell<HashMap<u32, Rc<Inbox>>>,
    /// Socket records drained and held back until those before them are in.
    reorder: RefCell<Reorder>,
    /// Whether a failed flush was told (once).
    flush_warned: std::cell::Cell<bool>,
}

/// The records of one target, drained from the rings and not yet applied, in ring order.
#[derive(Default)]
pub struct Records {
    pub vma: Vec<VmaEvent>,
    pub tcp: Vec<TcpEvent>,
    pub task: Vec<TaskEvent>,
}

impl Records {
    fn is_empty(&self) -> bool {
        self.vma.is_empty() && self.tcp.is_empty() && self.task.is_empty()
    }

    fn clear(&mut self) {
        self.vma.clear();
        self.tcp.clear();
        self.task.clear();
    }
}

/// Where a drain leaves one target's records, and the signal that it did.
#[derive(Default)]
struct Inbox {
    records: RefCell<Records>,
    arrived: Notify,
}

impl Kernel {
    /// Takes over loaded probes: their rings are registered with the runtime here.
    pub fn new(mut probes: Probes) -> Result<Rc<Self>, ProbeError> {
        let rings = probes
            .take_rings()
            .ok_or_else(|| ProbeError::Other("the ring buffers were already taken".to_owned()))?;
        let poll = |fd: RawFd, what: &str| {
            // SAFETY: the fd is the ring's, which `Kernel` closes only after this registration
            // is dropped (the order of its fields).
            unsafe { AsyncFd::register_with_interest(RingFd(fd), Interest::READABLE) }
                .map_err(|e| ProbeError::Other(format!("polling the {what} ring buffer: {e}")))
        };
        let ready = [
            poll(rings.vma.as_raw_fd(), "VMA")?,
            poll(rings.tcp.as_raw_fd(), "TCP")?,
            poll(rings.task.as_raw_fd(), "thread")?,
        ];
        Ok(Rc::new(Self {
            ready,
            rings: RefCell::new(rings),
            probes: RefCell::new(probes),
            inboxes: RefCell::default(),
            reorder: RefCell::default(),
            flush_warned: std::cell::Cell::new(false),
        }))
    }

    /// The probes, for a call that does not await.
    pub fn probes(&self) -> RefMut<'_, Probes> {
        self.probes.borrow_mut()
    }

    /// Follows the process `pid` too; its records arrive in the returned handle's inbox.
    pub fn attach(self: &Rc<Self>, pid: u32) -> Result<Attached, ProbeError> {
        let number = self.probes().add_target(pid)?;
        let inbox = Rc::new(Inbox::default());
        self.inboxes.borrow_mut().insert(number, Rc::clone(&inbox));
        Ok(Attached {
            kernel: Rc::clone(self),
            number,
            inbox,
        })
    }

    /// Until a ring buffer is readable. Its readiness is cleared here, before the caller's
    /// drain: a record written after the drain makes it readable again.
    async fn readable(&self) -> std::io::Result<()> {
        let [vma, tcp, task] = &self.ready;
        let mut guard = tokio::select! {
            guard = vma.readable() => guard?,
            guard = tcp.readable() => guard?,
            guard = task.readable() => guard?,
        };
        guard.clear_ready();
        Ok(())
    }

    /// Moves every pending record into its target's inbox, and signals each target whose inbox
    /// holds records. Records of a number no target has (one that detached) are dropped.
    /// Socket records go in the order they happened, less the most recent ([`Reorder`]): the
    /// CPUs' stages are flushed first, and what was stamped before that is handed on.
    pub fn drain(&self) {
        let cutoff = self.flush_tcp();
        let mut rings = self.rings.borrow_mut();
        let inboxes = self.inboxes.borrow();
        drain_ring(&mut rings.vma, |r: VmaEvent| {
            route(&inboxes, r.target, |records| records.vma.push(r));
        });
        let mut reorder = self.reorder.borrow_mut();
        drain_ring(&mut rings.tcp, |r: TcpEvent| reorder.push(r));
        reorder.release(cutoff, |r| {
            route(&inboxes, r.target, |records| records.tcp.push(r));
        });
        drain_ring(&mut rings.task, |r: TaskEvent| {
            route(&inboxes, u32::from(r.target), |records| {
                records.task.push(r);
            });
        });
        for inbox in inboxes.values() {
            if !inbox.records.borrow().is_empty() {
                inbox.arrived.notify_one();
            }
        }
    }

    /// Flushes the CPUs' staged socket records to the ring, and returns the time before which
    /// records are safe to hand on (see [`Reorder::release`]): the time before the flushes,
    /// less the most a stamp can be early. 0 (hold them all) when a stage stayed busy.
    fn flush_tcp(&self) -> u64 {
        let mut probes = self.probes.borrow_mut();
        let before = (crate::event::monotonic() * 1e9) as u64;
        let margin = probes.record_margin().as_nanos() as u64;
        match probes.flush_tcp() {
            Ok(true) => before.saturating_sub(margin),
            Ok(false) => 0,
            Err(e) => {
                if !self.flush_warned.replace(true) {
                    log::warn!(
                        "{e} - socket records then wait in the CPUs' stages until \
                         {STAGED_RECORDS} are staged"
                    );
                }
                before.saturating_sub(margin)
            }
        }
    }

    /// Drains until every socket record of the target numbered `number` is handed on: the
    /// most recent wait for the clock to pass them (a few ticks), then go in any case.
    fn drain_all_of(&self, number: u32) {
        for _ in 0..FINAL_DRAINS {
            self.drain();
            if self.reorder.borrow().held(number).next().is_none() {
                return;
            }
            std::thread::sleep(self.probes().record_margin());
        }
        let inboxes = self.inboxes.borrow();
        self.reorder.borrow_mut().release_all_of(number, |r| {
            route(&inboxes, r.target, |records| records.tcp.push(r));
        });
    }
}

/// Drains a target's last records take at most, a tick's wait between each.
const FINAL_DRAINS: usize = 4;

/// Hands a record to the inbox of target `number`, if a target has that number.
#[inline]
fn route(inboxes: &HashMap<u32, Rc<Inbox>>, number: u32, push: impl FnOnce(&mut Records)) {
    if let Some(inbox) = inboxes.get(&number) {
        push(&mut inbox.records.borrow_mut());
    }
}

/// Applies `apply` to every pending record of one ring buffer, in order (a ring record can
/// hold several, one after another).
fn drain_ring<T: Record>(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    mut apply: impl FnMut(T),
) {
    while let Some(item) = ring.next() {
        for bytes in item.chunks_exact(size_of::<T>()) {
            if let Some(record) = decode(bytes) {
                apply(record);
            }
        }
    }
}

/// One session's share of the kernel: the target's number and its inbox. Dropping it detaches
/// the target (and, with the last share, the programs).
pub struct Attached {
    kernel: Rc<Kernel>,
    number: u32,
    inbox: Rc<Inbox>,
}

impl Attached {
    /// The target's number in the kernel's maps.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// The shared probes, for a call that does not await.
    pub fn probes(&self) -> RefMut<'_, Probes> {
        self.kernel.probes()
    }

    /// Drains every ring (for every target), then swaps this target's records into `records`
    /// (cleared first), whose buffers the inbox reuses.
    pub fn drain(&self, records: &mut Records) {
        self.kernel.drain();
        self.take(records);
    }

    /// Drains like [`Self::drain`], and also hands on this target's most recent socket records,
    /// for its last report.
    pub fn drain_all(&self, records: &mut Records) {
        self.kernel.drain_all_of(self.number);
        self.take(records);
    }

    /// This target's socket records held back for the next drain (see [`Reorder`]).
    pub fn held_tcp(&self) -> Vec<TcpEvent> {
        self.kernel
            .reorder
            .borrow()
            .held(self.number)
            .copied()
            .collect()
    }

    /// Swaps the records waiting in the inbox into `records` (cleared first).
    pub fn take(&self, records: &mut Records) {
        records.clear();
        std::mem::swap(records, &mut self.inbox.records.borrow_mut());
    }

    /// Until records arrive for this target: drained here when a ring is readable, or by
    /// another session's drain.
    pub async fn arrived(&self) -> std::io::Result<()> {
        loop {
            if !self.inbox.records.borrow().is_empty() {
                return Ok(());
            }
            tokio::select! {
                () = self.inbox.arrived.notified() => {}
                ready = self.kernel.readable() => {
                    ready?;
                    self.kernel.drain();
                }
            }
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        // What is in the rings goes to the other targets first: a number given again later
        // must not find this target's records.
        self.kernel.drain();
        self.kernel.inboxes.borrow_mut().remove(&self.number);
        self.kernel.reorder.borrow_mut().forget(self.number);
        self.kernel.probes().remove_target(self.number);
    }
}
