//! Which processes the agent should be attached to: the `--pid`s, and every process whose
//! command line matches a `--match`, found by scanning /proc.

use std::collections::{HashMap, HashSet};

use super::config::Spec;
use crate::target::stat_fields;

/// Processes younger than this are left for the next scan: a `pgrep -f kafka.Kafka` typed by a
/// person matches its own pattern and is gone a moment later.
const MIN_AGE_SECS: f64 = 0.2;

/// A process to attach to, and the name that labels its metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub pid: u32,
    pub name: String,
}

pub struct Finder {
    specs: Vec<Spec>,
    /// Attached pids, with the spec that found them.
    attached: HashMap<u32, usize>,
    /// `--pid` targets already attached once: they are not replaced.
    done: HashSet<u32>,
}

impl Finder {
    pub fn new(specs: Vec<Spec>) -> Self {
        Self {
            specs,
            attached: HashMap::new(),
            done: HashSet::new(),
        }
    }

    /// Whether some target has no process right now (then /proc is scanned often, so that a
    /// restarted broker is found within a second).
    pub fn waiting(&self) -> bool {
        self.specs
            .iter()
            .enumerate()
            .any(|(index, spec)| match spec {
                Spec::Pid { pid } => !self.done.contains(pid),
                Spec::Match { .. } => !self.attached.values().any(|&i| i == index),
            })
    }

    /// Whether every target is a `--pid` that has come and gone: nothing is left to watch.
    pub fn finished(&self) -> bool {
        self.attached.is_empty()
            && self
                .specs
                .iter()
                .all(|spec| matches!(spec, Spec::Pid { pid } if self.done.contains(pid)))
    }

    /// New processes to attach to; they count as attached from now on.
    pub fn scan(&mut self) -> Vec<Found> {
        let mut found = Vec::new();
        for (index, spec) in self.specs.iter().enumerate() {
            if let Spec::Pid { pid } = spec
                && !self.done.contains(pid)
            {
                self.done.insert(*pid);
                self.attached.insert(*pid, index);
                found.push(Found {
                    pid: *pid,
                    name: comm(*pid).unwrap_or_else(|| format!("pid-{pid}")),
                });
            }
        }
        if !self.specs.iter().any(|s| matches!(s, Spec::Match { .. })) {
            return found;
        }
        let me = std::process::id();
        let uptime = uptime().unwrap_or(f64::MAX);
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return found;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == me || self.attached.contains_key(&pid) {
                continue;
            }
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            if raw.is_empty() {
                continue; // a kernel thread, or a zombie
            }
            let cmdline = String::from_utf8_lossy(&raw)
                .trim_end_matches('\0')
                .replace('\0', " ");
            for (index, spec) in self.specs.iter().enumerate() {
                if let Spec::Match { name, regex } = spec
                    && regex.is_match(&cmdline)
                    && age(pid, uptime).is_some_and(|a| a >= MIN_AGE_SECS)
                {
                    self.attached.insert(pid, index);
                    found.push(Found {
                        pid,
                        name: name.clone(),
                    });
                    break;
                }
            }
        }
        found
    }

    /// The process is no longer attached (it exited, or attaching failed).
    pub fn detached(&mut self, pid: u32) {
        self.attached.remove(&pid);
    }
}

fn comm(pid: u32) -> Option<String> {
    Some(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()?
            .trim()
            .to_owned(),
    )
}

/// Seconds since boot.
fn uptime() -> Option<f64> {
    std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Seconds since the process started: field 22 of /proc/PID/stat, in clock ticks since boot.
fn age(pid: u32, uptime: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let started: f64 = stat_fields(&stat)?.nth(19)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(uptime - started / ticks)
}

#[cfg(test)]
mod tests {
    use std::{os::unix::process::CommandExt as _, process::Command, time::Duration};

    use regex::Regex;

    use super::*;

    #[test]
    fn finds_matching_processes_once_and_again_after_they_go() {
        let marker = format!("tracer-finder-test-{}", std::process::id());
        let mut finder = Finder::new(vec![Spec::Match {
            name: "sleeper".into(),
            regex: Regex::new(&marker).unwrap(),
        }]);
        let mut child = Command::new("sleep")
            .arg0(&marker)
            .arg("3600")
            .spawn()
            .unwrap();
        assert!(finder.waiting());
        std::thread::sleep(Duration::from_millis(300));
        let found = finder.scan();
        assert_eq!(
            found,
            vec![Found {
                pid: child.id(),
                name: "sleeper".into()
            }]
        );
        assert!(!finder.waiting());
        assert!(finder.scan().is_empty(), "found once");
        child.kill().unwrap();
        child.wait().unwrap();
        finder.detached(found[0].pid);
        assert!(finder.waiting());
        assert!(finder.scan().is_empty());
        assert!(!finder.finished(), "a match target is never finished");
    }

    #[test]
    fn pid_targets_are_attached_once() {
        let mut finder = Finder::new(vec![Spec::Pid {
            pid: std::process::id(),
        }]);
        assert_eq!(finder.scan().len(), 1);
        assert!(finder.scan().is_empty());
        finder.detached(std::process::id());
        assert!(finder.scan().is_empty(), "not replaced");
        assert!(finder.finished());
    }
}
