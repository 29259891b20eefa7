//! The traced process: checked once at attach, then watched for exit through a pidfd, which
//! names the process itself (a pid reused after exit cannot be mistaken for it). Kernels
//! before 5.3 have no pidfd (RHEL 8's 4.18, where proc mode runs): there the process is
//! polled, and told from a later one with its pid by its start time.

use std::{
    fmt, fs,
    os::fd::{FromRawFd, OwnedFd},
};

use tokio::io::{Interest, unix::AsyncFd};

/// `PF_KTHREAD` in the flags field of /proc/PID/stat.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Why a pid cannot be traced; each names the fix.
#[derive(Debug, PartialEq, Eq)]
pub enum TargetError {
    NoSuchProcess(u32),
    KernelThread { pid: u32, comm: String },
    Zombie { pid: u32, comm: String },
    Itself(u32),
    Unreadable { pid: u32, error: String },
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchProcess(pid) => write!(
                f,
                "no process with pid {pid} - check the pid with `ps -p {pid}` or find the broker with `pgrep -f kafka.Kafka`"
            ),
            Self::KernelThread { pid, comm } => write!(
                f,
                "pid {pid} ({comm}) is a kernel thread, which has no memory map or sockets of its own - pass the pid of a user-space server process"
            ),
            Self::Zombie { pid, comm } => write!(
                f,
                "pid {pid} ({comm}) has already exited (zombie, not yet reaped by its parent) - pass the pid of a running process"
            ),
            Self::Itself(pid) => write!(
                f,
                "pid {pid} is tracer itself - pass the pid of the server process to watch"
            ),
            Self::Unreadable { pid, error } => write!(
                f,
                "cannot read /proc/{pid}: {error} - run tracer as root, or give it CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH to watch another user's process"
            ),
        }
    }
}

impl std::error::Error for TargetError {}

/// A live process, held by a pidfd.
pub struct Target {
    /// The thread-group id: the pid `ps` shows, which the kernel programs filter on.
    pub pid: u32,
    pub comm: String,
    pub cmdline: String,
    /// Set when the pid given was one of the process's threads, not the process itself.
    pub given_thread: Option<u32>,
    /// `None` before Linux 5.3: the exit is polled for.
    pidfd: Option<AsyncFd<OwnedFd>>,
    /// Start time (clock ticks after boot, field 22 of /proc/PID/stat).
    start: u64,
}

/// How often a process without a pidfd is checked for having exited.
const EXIT_POLL: std::time::Duration = std::time::Duration::from_millis(250);

impl Target {
    /// Checks `pid` and opens a pidfd on its process. Must run inside a tokio runtime.
    pub fn open(pid: u32) -> Result<Self, TargetError> {
        if pid == std::process::id() {
            return Err(TargetError::Itself(pid));
        }
        let status = read_proc(pid, "status")?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_default()
                .to_owned()
        };
        let comm = field("Name:");
        let tgid: u32 = field("Tgid:")
            .parse()
            .map_err(|_| TargetError::NoSuchProcess(pid))?;
        let stat = read_proc(tgid, "stat")?;
        let (state, flags) = parse_stat(&stat).ok_or(TargetError::NoSuchProcess(pid))?;
        if flags & PF_KTHREAD != 0 {
            return Err(TargetError::KernelThread { pid, comm });
        }
        if state == 'Z' || state == 'X' {
            return Err(TargetError::Zombie { pid, comm });
        }
        if tgid == std::process::id() {
            return Err(TargetError::Itself(pid));
        }
        let pidfd = match pidfd_open(tgid) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => None,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                return Err(TargetError::NoSuchProcess(pid));
            }
            Err(e) => {
                return Err(TargetError::Unreadable {
                    pid,
                    error: e.to_string(),
                });
            }
            // SAFETY: the OwnedFd stays open for as long as the AsyncFd that owns it.
            Ok(fd) => Some(
                unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(
                    |e| TargetError::Unreadable {
                        pid,
                        error: e.to_string(),
                    },
                )?,
            ),
        };
        let started = start_time(&stat).ok_or(TargetError::NoSuchProcess(pid))?;
        let cmdline = read_proc(tgid, "cmdline")
            .map(|raw| raw.trim_end_matches('\0').replace('\0', " "))
            .unwrap_or_default();
        Ok(Self {
            pid: tgid,
            comm,
            cmdline,
            given_thread: (tgid != pid).then_some(pid),
            pidfd,
            start: started,
        })
    }

    /// Resolves when the process has exited.
    pub async fn exited(&self) {
        let Some(pidfd) = &self.pidfd else {
            // Gone, a zombie, or another process with its pid.
            while fs::read_to_string(format!("/proc/{}/stat", self.pid)).is_ok_and(|stat| {
                parse_stat(&stat).is_some_and(|(state, _)| state != 'Z' && state != 'X')
                    && start_time(&stat) == Some(self.start)
            }) {
                tokio::time::sleep(EXIT_POLL).await;
            }
            return;
        };
        // A pidfd becomes readable when its process exits.
        if let Ok(mut guard) = pidfd.readable().await {
            guard.retain_ready();
        }
    }
}

fn read_proc(pid: u32, file: &str) -> Result<String, TargetError> {
    fs::read_to_string(format!("/proc/{pid}/{file}")).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => TargetError::NoSuchProcess(pid),
        _ if e.raw_os_error() == Some(libc::ESRCH) => TargetError::NoSuchProcess(pid),
        _ => TargetError::Unreadable {
            pid,
            error: e.to_string(),
        },
    })
}

/// The fields of /proc/PID/stat after the comm, from field 3 (the state) on. The comm may
/// hold spaces and parentheses, so they start after the last ')'.
pub fn stat_fields(stat: &str) -> Option<std::str::SplitAsciiWhitespace<'_>> {
    Some(stat[stat.rfind(')')? + 1..].split_ascii_whitespace())
}

/// State letter and flags from /proc/PID/stat.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let mut fields = stat_fields(stat)?;
    let state = fields.next()?.chars().next()?;
    // After the state: ppid, pgrp, session, tty_nr, tpgid, then flags.
    let flags = fields.nth(5)?.parse().ok()?;
    Some((state, flags))
}

/// Start time from /proc/PID/stat (field 22: clock ticks after boot).
fn start_time(stat: &str) -> Option<u64> {
    // Field 3 is the first after the comm.
    stat_fields(stat)?.nth(22 - 3)?.parse().ok()
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).map_err(std::io::Error::other)?) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_comm() {
        let stat = "1234 (java (main) x) S 1 1234 1234 0 -1 4194560 100 0 0 0";
        assert_eq!(parse_stat(stat), Some(('S', 4_194_560)));
        let own = fs::read_to_string("/proc/self/stat").unwrap();
        assert!(start_time(&own).is_some_and(|t| t > 0), "{own}");
        let kthread = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0";
        let (_, flags) = parse_stat(kthread).unwrap();
        assert_ne!(flags & PF_KTHREAD, 0);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn checks_pids_before_tracing_them() {
        assert_eq!(
            Target::open(std::process::id()).err(),
            Some(TargetError::Itself(std::process::id()))
        );
        assert!(matches!(
            Target::open(2),
            Err(TargetError::KernelThread { pid: 2, .. })
        ));
        assert!(matches!(
            Target::open(u32::MAX),
            Err(TargetError::NoSuchProcess(_))
        ));

        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // Until the child has exec'd, its cmdline is the test binary's (or empty).
        let comm = format!("/proc/{}/comm", child.id());
        while fs::read_to_string(&comm).is_ok_and(|c| c != "sleep\n") {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let target = Target::open(child.id()).unwrap();
        assert_eq!(target.pid, child.id());
        assert_eq!(target.cmdline, "sleep 30");
        let still_running =
            tokio::time::timeout(std::time::Duration::from_millis(100), target.exited()).await;
        assert!(
            still_running.is_err(),
            "a running process must not look exited"
        );
        child.kill().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), target.exited())
            .await
            .expect("the pidfd reports the exit");
        child.wait().unwrap();
    }

    /// Without a pidfd (kernels before 5.3) the exit is polled for.
    #[tokio::test(flavor = "current_thread")]
    async fn exit_is_polled_without_a_pidfd() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let mut target = Target::open(child.id()).unwrap();
        target.pidfd = None;
        let still_running =
            tokio::time::timeout(std::time::Duration::from_millis(600), target.exited()).await;
        assert!(
            still_running.is_err(),
            "a running process must not look exited"
        );
        child.kill().unwrap();
        // Killed but not reaped: a zombie is an exited process.
        tokio::time::timeout(std::time::Duration::from_secs(5), target.exited())
            .await
            .expect("polling sees the exit");
        child.wait().unwrap();
    }
}
