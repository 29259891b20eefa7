//! The target's memory against its cgroup's limit: the process's own figures from
//! `/proc/PID/status`, and its memory cgroup's usage and limit ([`cgroup`]).

pub mod cgroup;

use std::{fmt::Write as _, io};

use crate::{
    alert::Change,
    event::{AlertDetail, AlertKind, Event},
    exhaustion::{Exhaustion, Status, Thresholds},
    units::{duration, human_bytes},
};
use cgroup::MemoryCgroup;

/// The memory figures of one process, from `/proc/PID/status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcMemory {
    /// Resident set size (`VmRSS`): anonymous, file-backed and shared memory in RAM.
    pub rss_bytes: u64,
    /// The anonymous part of it (`RssAnon`): heap, stacks, malloc arenas, the Java heap.
    pub anon_bytes: u64,
    /// Threads of the process (`Threads`).
    pub threads: u32,
}

/// Reads `/proc/{pid}/status`.
///
/// # Errors
///
/// When the file cannot be read (the process has exited: `NotFound`), or lacks one of the
/// fields (`InvalidData`): a zombie or a kernel thread has no memory lines, and kernels before
/// 4.5 have no `RssAnon`.
pub fn read_status(pid: u32) -> io::Result<ProcMemory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status(&text).map_err(|field| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no {field} in /proc/{pid}/status"),
        )
    })
}

/// Parses the text of a `/proc/PID/status` file; on failure, names the missing (or
/// unparsable) field.
fn parse_status(text: &str) -> Result<ProcMemory, &'static str> {
    let field = |name: &'static str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|value| value.split_whitespace().next()?.parse::<u64>().ok())
            .ok_or(name)
    };
    let kib = |name| field(name).map(|kb| kb.saturating_mul(1024));
    Ok(ProcMemory {
        rss_bytes: kib("VmRSS")?,
        anon_bytes: kib("RssAnon")?,
        threads: u32::try_from(field("Threads")?).map_err(|_| "Threads")?,
    })
}

/// The memory of one target for the live view.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryStatus {
    /// The working set of the cgroup (the RSS without one) against the cgroup's limit.
    pub status: Status,
    /// `v1` or `v2`; `None` without a readable memory cgroup.
    pub cgroup: Option<&'static str>,
    pub rss_bytes: u64,
    pub anon_bytes: u64,
    pub arenas: u32,
}

/// The memory model of one target: what the OOM killer compares against the cgroup's limit,
/// its trend, and `memory_limit`.
pub struct MemoryModel {
    pid: u32,
    cgroup: Option<MemoryCgroup>,
    exhaustion: Exhaustion,
    status: Option<MemoryStatus>,
}

impl MemoryModel {
    /// A model for `pid`, in the memory cgroup it is in now (a process does not change
    /// cgroups in practice; the agent re-attaches to a restarted one).
    pub fn new(pid: u32, thresholds: Thresholds, window_secs: f64) -> Self {
        let cgroup = match MemoryCgroup::find(pid) {
            Ok(cgroup) => cgroup,
            Err(e) => {
                log::warn!("finding the memory cgroup of {pid}: {e}; following its RSS only");
                None
            }
        };
        Self {
            pid,
            cgroup,
            exhaustion: Exhaustion::new(thresholds, window_secs),
            status: None,
        }
    }

    /// Reads /proc/PID/status and the cgroup, samples at `t_secs` (monotonic), raises or
    /// resolves `memory_limit`, and appends the `memory` event. `arenas` is the malloc-arena
    /// count of the latest /proc/PID/maps read.
    pub fn tick(&mut self, t_secs: f64, ts: u64, arenas: u32, out: &mut Vec<Event>) {
        let Ok(process) = read_status(self.pid) else {
            return;
        };
        let cgroup = self.cgroup.as_ref().and_then(|c| c.read().ok());
        let (count, limit) = match &cgroup {
            Some(memory) => (memory.working_set_bytes, memory.limit_bytes),
            None => (process.rss_bytes, None),
        };
        let (reading, changes) =
            self.exhaustion
                .tick(t_secs, count as f64, limit.map(|l| l as f64));
        let eta_seconds = reading.eta_secs.map(|e| e.round() as u64);
        let version = cgroup
            .as_ref()
            .and(self.cgroup.as_ref())
            .map(|c| c.version.as_str());
        out.push(Event::Memory {
            ts,
            pid: self.pid,
            rss_bytes: process.rss_bytes,
            anon_bytes: process.anon_bytes,
            cgroup: version,
            working_set_bytes: cgroup.as_ref().map(|c| c.working_set_bytes),
            limit_bytes: limit,
            usage: (reading.usage * 10_000.0).round() / 10_000.0,
            growth_per_min: reading.trend.map(|t| (t.per_sec * 60.0).round()),
            eta_seconds,
            malloc_arenas: arenas,
        });
        for (severity, change) in changes {
            let Some(change) = change else { continue };
            let of = limit.map_or_else(String::new, |l| {
                format!(
                    " of the cgroup's limit {} ({:.1}%)",
                    human_bytes(l),
                    reading.usage * 100.0
                )
            });
            let message = match change {
                Change::Raise => {
                    let mut message = format!("memory {}{of}", human_bytes(count));
                    if let (Some(trend), Some(eta)) = (reading.trend, reading.eta_secs) {
                        let _ = write!(
                            message,
                            ", growing {}/min: the OOM killer ends the process in {}",
                            human_bytes((trend.per_sec * 60.0).max(0.0) as u64),
                            duration(eta)
                        );
                    }
                    let _ = write!(
                        message,
                        "; a kill, not a Java OutOfMemoryError, so no heap dump: native memory (RSS {}, {} threads, {arenas} malloc arenas) - \
                         look for a thread leak, cap arenas with MALLOC_ARENA_MAX=2, or raise the limit",
                        human_bytes(process.rss_bytes),
                        process.threads
                    );
                    message
                }
                Change::Resolve => format!(
                    "memory {}{of}, no longer near the limit",
                    human_bytes(count)
                ),
            };
            out.push(Event::alert_change(
                self.pid,
                ts,
                (AlertKind::MemoryLimit, severity),
                change,
                message,
                AlertDetail::Eta { eta_seconds },
            ));
        }
        self.status = Some(MemoryStatus {
            status: self
                .exhaustion
                .status(count as f64, limit.map(|l| l as f64)),
            cgroup: version,
            rss_bytes: process.rss_bytes,
            anon_bytes: process.anon_bytes,
            arenas,
        });
    }

    pub fn status(&self) -> Option<&MemoryStatus> {
        self.status.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Kafka broker (JDK 21, 4 GiB heap) on kernel 6.x, trimmed after the memory lines.
    const STATUS: &str = "\
Name:\tjava
Umask:\t0022
State:\tS (sleeping)
Tgid:\t48213
Ngid:\t0
Pid:\t48213
PPid:\t1
TracerPid:\t0
Uid:\t996\t996\t996\t996
Gid:\t994\t994\t994\t994
FDSize:\t4096
Groups:\t994 
NStgid:\t48213
NSpid:\t48213
NSpgid:\t48213
NSsid:\t48213
Kthread:\t0
VmPeak:\t 9876544 kB
VmSize:\t 9812345 kB
VmLck:\t       0 kB
VmPin:\t       0 kB
VmHWM:\t 5123456 kB
VmRSS:\t 4980736 kB
RssAnon:\t 4456448 kB
RssFile:\t  520192 kB
RssShmem:\t    4096 kB
VmData:\t 5345678 kB
VmStk:\t     132 kB
VmExe:\t       4 kB
VmLib:\t   23456 kB
VmPTE:\t   10240 kB
VmSwap:\t       0 kB
HugetlbPages:\t       0 kB
CoreDumping:\t0
THP_enabled:\t1
Threads:\t187
SigQ:\t0/63704
";

    #[test]
    fn status() {
        assert_eq!(
            parse_status(STATUS),
            Ok(ProcMemory {
                rss_bytes: 4_980_736 * 1024,
                anon_bytes: 4_456_448 * 1024,
                threads: 187,
            })
        );
    }

    #[test]
    fn status_without_memory() {
        // A zombie keeps its name and threads but loses its memory lines.
        let zombie = "Name:\tjava\nState:\tZ (zombie)\nThreads:\t1\n";
        assert_eq!(parse_status(zombie), Err("VmRSS"));
        // Before 4.5: no RssAnon.
        let old = "VmRSS:\t    1756 kB\nThreads:\t1\n";
        assert_eq!(parse_status(old), Err("RssAnon"));
        let odd = "VmRSS:\t1 kB\nRssAnon:\t1 kB\nThreads:\t99999999999\n";
        assert_eq!(parse_status(odd), Err("Threads"));
        // "VmRSS" is not a prefix match of a longer name.
        let longer = "VmRSSx:\t1 kB\nRssAnon:\t1 kB\nThreads:\t1\n";
        assert_eq!(parse_status(longer), Err("VmRSS"));
    }

    #[test]
    fn own_status() {
        let own = read_status(std::process::id()).unwrap();
        assert!(own.rss_bytes >= own.anon_bytes);
        assert!(own.anon_bytes > 0);
        assert!(own.threads >= 1);
        let err = read_status(u32::MAX).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
