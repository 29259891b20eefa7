//! NDJSON: one event per line, written by a thread of its own so that a reader slower than
//! the events (a `jq` pipeline, a terminal, a test harness parsing every line) never stalls
//! the draining of the kernel's ring buffers: a stalled drain overflows them, and every count
//! then waits for a resync. Once more than [`BACKLOG_BYTES`] wait for the reader, `tcp_state`
//! lines are left out, counted, and announced with an `events_dropped` line when the reader
//! catches up (as `agent`'s `/events` does); every other line is always written.

use std::{
    io::Write,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};

use super::filter::Events;
use crate::event::{Event, dropped_line};

/// Bytes queued for the reader above which `tcp_state` lines are dropped: about 16,000 lines,
/// seconds of a busy broker's transitions.
const BACKLOG_BYTES: usize = 4 << 20;

pub struct JsonLines {
    /// The events written; the others are left out.
    events: Events,
    /// Reused for every batch until it is handed to the writer.
    buf: BytesMut,
    writer: Option<Writer>,
    /// `tcp_state` lines dropped since the reader last kept up.
    dropped: u64,
    backlog_limit: usize,
    drain_at_end: Duration,
}

/// The thread that writes the batches, and the bytes queued for it.
struct Writer {
    queue: mpsc::Sender<Bytes>,
    backlog: Arc<AtomicUsize>,
    thread: JoinHandle<std::io::Result<()>>,
}

impl JsonLines {
    pub fn new(out: impl Write + Send + 'static, events: Events) -> Self {
        Self::with_limits(out, events, BACKLOG_BYTES, DRAIN_AT_END)
    }

    fn with_limits(
        mut out: impl Write + Send + 'static,
        events: Events,
        backlog_limit: usize,
        drain_at_end: Duration,
    ) -> Self {
        let (queue, batches) = mpsc::channel::<Bytes>();
        let backlog = Arc::new(AtomicUsize::new(0));
        let written = Arc::clone(&backlog);
        let thread = std::thread::spawn(move || {
            while let Ok(batch) = batches.recv() {
                out.write_all(&batch)?;
                let mut bytes = batch.len();
                while let Ok(batch) = batches.try_recv() {
                    out.write_all(&batch)?;
                    bytes += batch.len();
                }
                out.flush()?;
                written.fetch_sub(bytes, Ordering::Relaxed);
            }
            Ok(())
        });
        Self {
            events,
            buf: BytesMut::with_capacity(4096),
            writer: Some(Writer {
                queue,
                backlog,
                thread,
            }),
            dropped: 0,
            backlog_limit,
            drain_at_end,
        }
    }

    /// Queues the lines of `events` for the reader; fails with the writer's error (a broken
    /// pipe: the reader went away) once it has stopped.
    pub fn events(&mut self, events: &[Event]) -> std::io::Result<()> {
        let Some(writer) = &self.writer else {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        };
        let behind = writer.backlog.load(Ordering::Relaxed) >= self.backlog_limit;
        for event in events.iter().filter(|e| self.events.admits(e)) {
            if behind && matches!(event, Event::TcpState { .. }) {
                self.dropped += 1;
                continue;
            }
            if self.dropped > 0 && !behind {
                self.buf
                    .extend_from_slice(dropped_line(self.dropped).as_bytes());
                self.dropped = 0;
            }
            event.write_line(&mut self.buf)?;
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let batch = self.buf.split().freeze();
        writer.backlog.fetch_add(batch.len(), Ordering::Relaxed);
        if writer.queue.send(batch).is_ok() {
            return Ok(());
        }
        let Writer { thread, .. } = self.writer.take().expect("checked above");
        match thread.join() {
            Ok(Err(e)) => Err(e),
            _ => Err(std::io::ErrorKind::BrokenPipe.into()),
        }
    }
}

/// How long the end of a session waits for the reader to take what is queued: a reader that
/// reads has it at once; one that never reads (a stopped pager) must not keep the tracer, told
/// to stop, from exiting.
const DRAIN_AT_END: Duration = Duration::from_secs(5);

impl Drop for JsonLines {
    /// Writes what is queued, and what was dropped, before the process goes on (to exit, most
    /// often), for at most [`DRAIN_AT_END`] (`drain_at_end`).
    fn drop(&mut self) {
        let Some(Writer { queue, thread, .. }) = self.writer.take() else {
            return;
        };
        if self.dropped > 0 {
            let _ = queue.send(Bytes::from(dropped_line(self.dropped)));
        }
        drop(queue);
        let deadline = Instant::now() + self.drain_at_end;
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if thread.is_finished() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{IpAddr, Ipv4Addr},
        sync::{Mutex, mpsc::Receiver},
    };

    use super::*;

    /// A reader that takes what it is given into a shared buffer, each write only once the
    /// test allows it (`gate`), or at once without one.
    #[derive(Clone)]
    struct Reader {
        text: Arc<Mutex<Vec<u8>>>,
        gate: Option<Arc<Mutex<Receiver<()>>>>,
    }

    impl Write for Reader {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Some(gate) = &self.gate {
                gate.lock().unwrap().recv().ok();
            }
            self.text.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn exit(ts: u64) -> Event {
        Event::TargetExit {
            ts,
            pid: 2,
            death: crate::death::Death::default(),
        }
    }

    fn transition() -> Event {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        Event::TcpState {
            ts: 0,
            pid: 2,
            family: 4,
            saddr: ip,
            sport: 9092,
            daddr: ip,
            dport: 40_000,
            old: "SYN_RECV",
            new: "ESTABLISHED",
        }
    }

    #[test]
    fn one_object_per_line() {
        let reader = Reader {
            text: Arc::default(),
            gate: None,
        };
        let mut out = JsonLines::new(reader.clone(), Events::All);
        out.events(&[exit(1), exit(3)]).unwrap();
        drop(out);
        let text = String::from_utf8(reader.text.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "{\"type\":\"target_exit\",\"ts\":1,\"pid\":2,\"exit_code\":null,\"signal\":null,\"oom_killed\":false,\"reason\":\"\"}\n{\"type\":\"target_exit\",\"ts\":3,\"pid\":2,\"exit_code\":null,\"signal\":null,\"oom_killed\":false,\"reason\":\"\"}\n"
        );
    }

    #[test]
    fn a_reader_behind_loses_transitions_only_and_is_told_how_many() {
        let (open, gate) = mpsc::channel();
        let reader = Reader {
            text: Arc::default(),
            gate: Some(Arc::new(Mutex::new(gate))),
        };
        // The reader takes nothing until the gate opens: once the first batch waits for it,
        // the writer is behind.
        let mut out = JsonLines::with_limits(reader.clone(), Events::All, 1, DRAIN_AT_END);
        out.events(&[transition(), transition(), transition()])
            .unwrap();
        for ts in 0..10 {
            out.events(&[transition(), transition(), exit(ts)]).unwrap();
        }
        for _ in 0..100 {
            open.send(()).unwrap();
        }
        // Caught up: the next batch announces what was left out.
        while out.writer.as_ref().unwrap().backlog.load(Ordering::Relaxed) > 0 {
            std::thread::yield_now();
        }
        out.events(&[transition()]).unwrap();
        drop(open);
        drop(out);
        let text = String::from_utf8(reader.text.lock().unwrap().clone()).unwrap();
        let kinds: Vec<&str> = text
            .lines()
            .map(|l| l.split('"').nth(3).unwrap_or_default())
            .collect();
        let count = |kind: &str| kinds.iter().filter(|&&k| k == kind).count();
        assert_eq!(count("target_exit"), 10, "{text}");
        assert_eq!(count("tcp_state"), 3 + 1, "{text}");
        let note = text
            .lines()
            .find(|l| l.contains("events_dropped"))
            .expect("an events_dropped line");
        assert!(note.ends_with(",\"count\":20}"), "{note}");
    }

    #[test]
    fn the_end_does_not_wait_for_a_reader_that_never_reads_and_announces_what_was_dropped() {
        let (open, gate) = mpsc::channel();
        let reader = Reader {
            text: Arc::default(),
            gate: Some(Arc::new(Mutex::new(gate))),
        };
        let mut out =
            JsonLines::with_limits(reader.clone(), Events::All, 1, Duration::from_millis(50));
        out.events(&[exit(1)]).unwrap();
        out.events(&[transition(), transition()]).unwrap();
        // The reader has taken nothing: the end gives up on it instead of hanging...
        drop(out);
        assert!(reader.text.lock().unwrap().is_empty());
        // ...and what it queued, the count of the dropped lines last, is there for it if it
        // reads after all.
        drop(open);
        let deadline = Instant::now() + Duration::from_secs(10);
        let text = loop {
            let text = String::from_utf8(reader.text.lock().unwrap().clone()).unwrap();
            if text.lines().count() == 2 || Instant::now() > deadline {
                break text;
            }
            std::thread::yield_now();
        };
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("target_exit"), "{text}");
        assert!(
            lines[1].contains("events_dropped") && lines[1].ends_with(",\"count\":2}"),
            "{text}"
        );
    }
}
