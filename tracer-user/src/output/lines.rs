//! Plain text for a pipe or a log file: a line per alert, and the count every ten seconds.

use std::io::Write as _;

use crate::{
    event::Event,
    output::live::clock,
    session::Frame,
    units::{duration, human_bytes, rate_per_min, thousands},
};

/// Frames between two status lines.
const STATUS_EVERY: u32 = 10;

pub struct Lines {
    frames: u32,
}

/// One line per event a person reading a log wants: attach, alerts, exit.
pub fn events(events: &[Event]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for event in events {
        match event {
            Event::TargetAttached {
                ts,
                pid,
                cmdline,
                mode,
                vma_source,
            } => {
                writeln!(
                    out,
                    "{} attached to {pid} ({mode} mode, VMA count from {vma_source}): {cmdline}",
                    clock(*ts)
                )?;
            }
            Event::Alert {
                ts,
                pid,
                kind,
                severity,
                message,
                ..
            }
            | Event::AlertResolved {
                ts,
                pid,
                kind,
                severity,
                message,
                ..
            } => {
                let what = if matches!(event, Event::Alert { .. }) {
                    "ALERT"
                } else {
                    "resolved"
                };
                writeln!(
                    out,
                    "{} {pid} {what} {} {}: {message}",
                    clock(*ts),
                    severity.as_str(),
                    kind.as_str()
                )?;
            }
            Event::TargetExit { ts, pid, death } => {
                writeln!(out, "{} {pid} exited: {}", clock(*ts), death.reason)?;
            }
            Event::VmaStep {
                ts,
                pid,
                to,
                change,
                seconds,
                ..
            } => writeln!(
                out,
                "{} {pid} step {change:+} mappings in {seconds:.0} s, to {to} (a jump, not a trend)",
                clock(*ts)
            )?,
            Event::Resynced { ts, pid, .. } => {
                if let Some(line) = event.resync_line() {
                    writeln!(out, "{} {pid} {line}", clock(*ts))?;
                }
            }
            Event::Vma { .. }
            | Event::VmaBreakdown { .. }
            | Event::TcpState { .. }
            | Event::Sockets { .. }
            | Event::Fds { .. }
            | Event::Memory { .. }
            | Event::Threads { .. } => {}
        }
    }
    out.flush()
}

impl Lines {
    pub fn new() -> Self {
        Self { frames: 0 }
    }

    pub fn frame(&mut self, frame: &Frame<'_>) -> std::io::Result<()> {
        self.frames += 1;
        if self.frames % STATUS_EVERY != 1 {
            return Ok(());
        }
        let vma = &frame.vma;
        let growth = vma
            .trend
            .map_or_else(|| "?".to_owned(), |t| rate_per_min(t.per_sec));
        let eta = vma.eta_secs.map_or_else(|| "none".to_owned(), duration);
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "{} {} vma {}/{} ({:.1}%) growth {growth}/min exhaustion in {eta} lost {}",
            clock(crate::event::now_ms()),
            frame.target.pid,
            thousands(vma.count.into()),
            thousands(vma.limit.into()),
            f64::from(vma.count) / f64::from(vma.limit) * 100.0,
            frame.lost.vma_records
        )?;
        let fds = frame.fds.map_or_else(
            || "?".to_owned(),
            |f| {
                let limit = f
                    .limit
                    .map_or_else(|| "unlimited".to_owned(), |l| thousands(l as u64));
                format!("{}/{limit}", thousands(f.count as u64))
            },
        );
        let memory = frame.memory.map_or_else(
            || "?".to_owned(),
            |m| {
                let limit = m
                    .status
                    .limit
                    .map_or_else(|| "no limit".to_owned(), |l| human_bytes(l as u64));
                format!("{}/{limit}", human_bytes(m.status.count as u64))
            },
        );
        writeln!(
            out,
            "{} {} fds {fds} memory {memory} threads {}",
            clock(crate::event::now_ms()),
            frame.target.pid,
            thousands(frame.threads.count.into()),
        )?;
        out.flush()
    }
}
