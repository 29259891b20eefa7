//! The target's file descriptors against its limit: the count of `/proc/PID/fd` and the soft
//! `RLIMIT_NOFILE` from `/proc/PID/limits`.
//!
//! A broker that runs out of descriptors fails with "Too many open files" on accept and on
//! segment roll alike; the count and the limit say how close it is.

use std::{
    io,
    time::{Duration, Instant},
};

use crate::{
    alert::Change,
    event::{AlertDetail, AlertKind, Event},
    exhaustion::{Exhaustion, Status, Thresholds},
    units::thousands,
};

/// The number of open file descriptors of `pid`: the entries of `/proc/{pid}/fd`, what
/// `ls /proc/PID/fd | wc -l` prints.
///
/// # Errors
///
/// When the directory cannot be read: the process has exited (`NotFound`), or we may not
/// read it (`PermissionDenied`).
pub fn count(pid: u32) -> io::Result<u32> {
    let mut n: u32 = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        entry?;
        n = n.saturating_add(1);
    }
    Ok(n)
}

/// The soft limit on open files (`RLIMIT_NOFILE`) of `pid`, from `/proc/{pid}/limits`; `None`
/// when unlimited.
///
/// # Errors
///
/// When the file cannot be read, or has no parsable "Max open files" line (`InvalidData`).
pub fn limit(pid: u32) -> io::Result<Option<u64>> {
    let path = format!("/proc/{pid}/limits");
    parse_limit(&std::fs::read_to_string(&path)?, "Max open files")
        .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))
}

/// The soft limit named `name` ("Max open files", "Max processes"…) in the text of a
/// `/proc/PID/limits` file; `None` when "unlimited".
///
/// The name column is padded with spaces and names can hold spaces, so the line is matched by
/// its prefix: the name followed by at least two spaces (the kernel pads to 26 columns, and
/// the longest name, "Max realtime timeout", leaves six).
///
/// # Errors
///
/// `InvalidData` when the line is missing or its soft value is neither a number nor
/// "unlimited".
pub(crate) fn parse_limit(text: &str, name: &str) -> io::Result<Option<u64>> {
    let soft = text
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix("  "))
        .and_then(|rest| rest.split_whitespace().next());
    match soft {
        Some("unlimited") => Ok(None),
        Some(soft) => soft.parse().map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("limit {name:?} is {soft:?}: {e}"),
            )
        }),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no limit {name:?}"),
        )),
    }
}

/// The fd model of one target: the count against the limit, its trend, `fd_exhaustion`.
pub struct FdModel {
    pid: u32,
    exhaustion: Exhaustion,
    count: Option<u32>,
    limit: Option<u64>,
    /// When /proc/PID/fd was last read and what that took: a process with 100,000 fds is not
    /// listed every second.
    read_at: Option<Instant>,
    cost: Duration,
}

/// The count is read again no sooner than this many times its last read's cost.
const READ_COST_FACTOR: u32 = 50;

impl FdModel {
    pub fn new(pid: u32, thresholds: Thresholds, window_secs: f64) -> Self {
        Self {
            pid,
            exhaustion: Exhaustion::new(thresholds, window_secs),
            count: None,
            limit: None,
            read_at: None,
            cost: Duration::ZERO,
        }
    }

    /// Reads the count and the limit when due, samples them at `t_secs` (monotonic), raises or
    /// resolves `fd_exhaustion`, and appends the `fds` event.
    pub fn tick(&mut self, t_secs: f64, ts: u64, out: &mut Vec<Event>) {
        if self
            .read_at
            .is_none_or(|at| at.elapsed() >= self.cost * READ_COST_FACTOR)
        {
            let started = Instant::now();
            // The process may be gone: it is then reported by the session, not here.
            if let (Ok(count), Ok(limit)) = (count(self.pid), limit(self.pid)) {
                self.count = Some(count);
                self.limit = limit;
            }
            self.cost = started.elapsed();
            self.read_at = Some(started);
        }
        let Some(count) = self.count else {
            return;
        };
        let limit = self.limit.map(|l| l as f64);
        let (reading, changes) = self.exhaustion.tick(t_secs, f64::from(count), limit);
        let eta_seconds = reading.eta_secs.map(|e| e.round() as u64);
        out.push(Event::Fds {
            ts,
            pid: self.pid,
            count,
            limit: self.limit,
            usage: (reading.usage * 10_000.0).round() / 10_000.0,
            growth_per_min: reading.trend.map(|t| (t.per_sec * 600.0).round() / 10.0),
            eta_seconds,
        });
        for (severity, change) in changes {
            let Some(change) = change else { continue };
            let of = self.limit.map_or_else(
                || "no limit".to_owned(),
                |l| format!("{} ({:.1}%)", thousands(l), reading.usage * 100.0),
            );
            let message = match change {
                Change::Raise => {
                    let mut message = format!(
                        "{} open file descriptors of RLIMIT_NOFILE {of}{}",
                        thousands(count.into()),
                        reading.growth_clause()
                    );
                    message.push_str(
                        "; accept() and new files will fail with \"Too many open files\" - find what leaks \
                         (ls -l /proc/PID/fd, lsof -p PID), raise LimitNOFILE / ulimit -n",
                    );
                    message.replace("PID", &self.pid.to_string())
                }
                Change::Resolve => format!(
                    "{} open file descriptors of {of}, no longer near the limit",
                    thousands(count.into())
                ),
            };
            out.push(Event::alert_change(
                self.pid,
                ts,
                (AlertKind::FdExhaustion, severity),
                change,
                message,
                AlertDetail::Eta { eta_seconds },
            ));
        }
    }

    pub fn status(&self) -> Option<Status> {
        let count = f64::from(self.count?);
        Some(self.exhaustion.status(count, self.limit.map(|l| l as f64)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Kafka broker's limits under systemd (`LimitNOFILE=100000`), kernel 6.x.
    const LIMITS: &str = "\
Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max file size             unlimited            unlimited            bytes     
Max data size             unlimited            unlimited            bytes     
Max stack size            8388608              unlimited            bytes     
Max core file size        0                    unlimited            bytes     
Max resident set          unlimited            unlimited            bytes     
Max processes             63704                63704                processes 
Max open files            100000               524288               files     
Max locked memory         8388608              8388608              bytes     
Max address space         unlimited            unlimited            bytes     
Max file locks            unlimited            unlimited            locks     
Max pending signals       63704                63704                signals   
Max msgqueue size         819200               819200               bytes     
Max nice priority         0                    0                    
Max realtime priority     0                    0                    
Max realtime timeout      unlimited            unlimited            us        
";

    #[test]
    fn limits() {
        let soft = |text: &str, name: &str| parse_limit(text, name).ok();
        assert_eq!(soft(LIMITS, "Max open files"), Some(Some(100_000)));
        assert_eq!(soft(LIMITS, "Max processes"), Some(Some(63_704)));
        assert_eq!(soft(LIMITS, "Max address space"), Some(None));
        assert_eq!(soft(LIMITS, "Max realtime timeout"), Some(None));
        assert_eq!(soft(LIMITS, "Max nice priority"), Some(Some(0)));
        assert_eq!(
            soft(
                "Max open files  unlimited   unlimited  files",
                "Max open files"
            ),
            Some(None)
        );
        // A name is matched whole: "Max file" is neither "Max file size" nor "Max file locks".
        let err = parse_limit(LIMITS, "Max file").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(err.to_string(), "no limit \"Max file\"");
        assert_eq!(soft(LIMITS, "Max open file"), None);
        assert_eq!(soft("", "Max open files"), None);
        let err = parse_limit("Max open files  lots  lots  files\n", "Max open files").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.to_string()
                .starts_with("limit \"Max open files\" is \"lots\"")
        );
    }

    #[test]
    fn own_limit() {
        let mut rlimit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we own.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut rlimit) },
            0
        );
        let expected = (rlimit.rlim_cur != libc::RLIM_INFINITY).then_some(rlimit.rlim_cur);
        assert_eq!(limit(std::process::id()).unwrap(), expected);
        assert_eq!(limit(u32::MAX).unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn own_count() {
        let pid = std::process::id();
        // Other tests open and close files concurrently: retry until a quiet moment. Both
        // listings see their own directory descriptor.
        let agrees = (0..100).any(|_| {
            let listed = std::fs::read_dir("/proc/self/fd").unwrap().count();
            count(pid).unwrap() as usize == listed
        });
        assert!(agrees);
        let grew_by_one = (0..100).any(|_| {
            let before = count(pid).unwrap();
            let file = std::fs::File::open("/proc/self/limits").unwrap();
            let after = count(pid).unwrap();
            drop(file);
            after == before + 1
        });
        assert!(grew_by_one);
        assert!(count(u32::MAX).is_err());
    }
}
