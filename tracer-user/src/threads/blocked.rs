//! What a blocked thread is waiting in, from /proc/PID/task/TID/{syscall,wchan}: enough to tell
//! a lock wait (`futex`) from an idle poll (`epoll_wait`) without a debugger.

/// The syscall the thread is in (by name where known, `syscall 123` otherwise) and the kernel
/// function it sleeps in; `None` for what cannot be read (the thread is gone, or running).
pub fn read(pid: u32, tid: u32) -> (Option<String>, Option<String>) {
    let file = |name: &str| std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/{name}")).ok();
    let syscall = file("syscall").and_then(|text| syscall_name(&text));
    let wchan = file("wchan")
        .map(|w| w.trim().to_owned())
        .filter(|w| !w.is_empty() && w != "0");
    (syscall, wchan)
}

/// Parses /proc/PID/task/TID/syscall: `202 0x7f.. ...` while blocked, `running` or `-1 ...`
/// otherwise.
fn syscall_name(text: &str) -> Option<String> {
    let number: i64 = text.split_whitespace().next()?.parse().ok()?;
    if number < 0 {
        return None;
    }
    Some(
        NAMES
            .iter()
            .find(|&&(n, _)| n == number)
            .map_or_else(|| format!("syscall {number}"), |&(_, name)| name.to_owned()),
    )
}

/// The syscalls a server's thread blocks in, by number on this architecture.
#[cfg(target_arch = "x86_64")]
const NAMES: &[(i64, &str)] = &[
    (0, "read"),
    (1, "write"),
    (7, "poll"),
    (23, "select"),
    (35, "nanosleep"),
    (43, "accept"),
    (45, "recvfrom"),
    (47, "recvmsg"),
    (61, "wait4"),
    (74, "fsync"),
    (202, "futex"),
    (230, "clock_nanosleep"),
    (232, "epoll_wait"),
    (270, "pselect6"),
    (271, "ppoll"),
    (281, "epoll_pwait"),
    (288, "accept4"),
    (441, "epoll_pwait2"),
];

#[cfg(target_arch = "aarch64")]
const NAMES: &[(i64, &str)] = &[
    (22, "epoll_pwait"),
    (63, "read"),
    (64, "write"),
    (72, "pselect6"),
    (73, "ppoll"),
    (82, "fsync"),
    (98, "futex"),
    (101, "nanosleep"),
    (115, "clock_nanosleep"),
    (202, "accept"),
    (207, "recvfrom"),
    (212, "recvmsg"),
    (242, "accept4"),
    (260, "wait4"),
    (441, "epoll_pwait2"),
];

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const NAMES: &[(i64, &str)] = &[];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn names_the_syscall_a_thread_waits_in() {
        assert_eq!(
            syscall_name("202 0x7f3a2c0a0b54 0x80 0x0 0x0 0x0 0x0 0x7f3a0f5fe7c0 0x7f3a2c9c1f2d\n")
                .as_deref(),
            Some("futex")
        );
        assert_eq!(syscall_name("999 0x0\n").as_deref(), Some("syscall 999"));
        assert_eq!(syscall_name("running\n"), None);
        assert_eq!(syscall_name("-1 0x7ffd 0x0\n"), None);
    }

    #[test]
    fn reads_a_sleeping_thread_of_this_process() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let sleeper = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tid_tx.send(unsafe { libc::gettid() } as u32).unwrap();
            let _ = rx.recv();
        });
        let tid = tid_rx.recv().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (syscall, _) = read(std::process::id(), tid);
        assert_eq!(syscall.as_deref(), Some("futex"));
        drop(tx);
        sleeper.join().unwrap();
    }
}
