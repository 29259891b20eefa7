//! The VMA count from /proc/PID/maps: its lines, less a `[vsyscall]` line (the one mapping
//! the kernel shows but does not count in `mm->map_count`).
//!
//! Reading the file takes the target's mmap lock for reading, chunk by chunk, for as long as
//! the kernel takes to print every mapping: at 65,000 mappings that is milliseconds of the
//! target's own time, during which its threads cannot map or unmap. So the count is read no
//! more often than once per sample interval, nor than [`COST_FACTOR`] times the previous read's
//! cost (the rule the breakdown in `session.rs` follows).

use std::{
    fs::File,
    io::{self, Read as _},
    time::{Duration, Instant},
};

use crate::vma::maps::Breakdown;

/// A read of /proc/PID/maps is repeated no sooner than this many times its cost after the
/// previous one: the target's memory map is locked at most 1/50 of the time.
pub const COST_FACTOR: u32 = 50;

/// The count of a maps text: its lines, less `[vsyscall]` (always the last line, where the
/// kernel has it).
pub fn count(text: &[u8]) -> u32 {
    let lines = memchr::memchr_iter(b'\n', text).count();
    let last = text.trim_ascii_end().rsplit(|&b| b == b'\n').next();
    Breakdown {
        lines: u32::try_from(lines).unwrap_or(u32::MAX),
        vsyscall: last.is_some_and(|line| line.ends_with(b"[vsyscall]")),
        ..Breakdown::default()
    }
    .map_count()
}

/// Reads the count when it is due, reusing its buffer.
pub struct CountReader {
    pid: u32,
    buf: Vec<u8>,
    /// When the last read started and how long it took.
    last: Option<(Instant, Duration)>,
    interval: Duration,
}

impl CountReader {
    pub fn new(pid: u32, interval: Duration) -> Self {
        Self {
            pid,
            buf: Vec::new(),
            last: None,
            interval,
        }
    }

    /// The time between two reads: the sample interval, or more when a read costs more.
    pub fn period(&self) -> Duration {
        self.last.map_or(self.interval, |(_, cost)| {
            self.interval.max(cost * COST_FACTOR)
        })
    }

    /// The count, when a read is due; `None` when it is not yet.
    pub fn read_if_due(&mut self) -> io::Result<Option<u32>> {
        if self
            .last
            .is_some_and(|(at, _)| at.elapsed() < self.period())
        {
            return Ok(None);
        }
        let started = Instant::now();
        self.buf.clear();
        File::open(format!("/proc/{}/maps", self.pid))?.read_to_end(&mut self.buf)?;
        self.last = Some((started, started.elapsed()));
        Ok(Some(count(&self.buf)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_less_vsyscall() {
        let two = "55d4c0a00000-55d4c0a01000 r--p 00000000 fd:01 1 /usr/bin/sleep\n\
            7ffd1b7e0000-7ffd1b801000 rw-p 00000000 00:00 0 [stack]\n";
        let vsyscall = "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]\n";
        assert_eq!(count(two.as_bytes()), 2);
        assert_eq!(count(format!("{two}{vsyscall}").as_bytes()), 2);
        assert_eq!(count(b""), 0);
    }

    #[test]
    fn own_count_matches_the_breakdown() {
        let mut reader = CountReader::new(std::process::id(), Duration::from_secs(1));
        let first = reader
            .read_if_due()
            .unwrap()
            .expect("the first read is due");
        let breakdown = crate::vma::maps::MapsReader::new()
            .read(std::process::id())
            .unwrap();
        // The test harness's threads may map meanwhile: only roughly equal.
        assert!(first.abs_diff(breakdown.map_count()) < 64, "{first}");
        assert_eq!(reader.read_if_due().unwrap(), None, "not due again at once");
        assert!(reader.period() >= Duration::from_secs(1));
    }
}
