//! How the target ended, told from what the kernel saw (its last thread's exit status, the OOM
//! killer's choice) and the last state of the models, in one line for the on-call.

use std::fmt::Write as _;

use serde::Serialize;
use tracer_common::task::ProcessExit;

use crate::units::thousands;

/// The fields `target_exit` (and the agent's `target_died` alert) carry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Death {
    /// `exit(2)` status; null when a signal killed it or the kernel's record is missing.
    pub exit_code: Option<i32>,
    /// The signal that killed it (`SIGKILL`); null when it exited.
    pub signal: Option<String>,
    /// Whether the OOM killer chose it (`oom:mark_victim`).
    pub oom_killed: bool,
    /// One line: "killed by the OOM killer at 99% of its cgroup limit", "exit code 1, at VMA
    /// count 65,528 of 65,530".
    pub reason: String,
}

/// What the models last knew, for the reason's context.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LastState {
    /// Memory against the cgroup's limit (0..1), when there is one.
    pub memory_usage: Option<f64>,
    pub vma_count: u32,
    pub vma_limit: u32,
}

/// VMA usage from which the count is worth naming in the reason.
const VMA_NOTABLE: f64 = 0.9;

impl Death {
    /// From the kernel's record (`None`: the kernel saw no exit, e.g. it was lost).
    pub fn new(exit: Option<ProcessExit>, last: LastState) -> Self {
        let exit = exit.filter(|e| e.exited != 0 || e.oom_killed != 0);
        let oom_killed = exit.is_some_and(|e| e.oom_killed != 0);
        let status = exit.filter(|e| e.exited != 0).map(|e| e.exit_code);
        // A wait status: the signal in the low 7 bits, else the code in the next 8.
        let signal = status
            .map(|s| (s & 0x7f).cast_signed())
            .filter(|&s| s != 0)
            .map(signal_name);
        let exit_code = status
            .filter(|s| s.trailing_zeros() >= 7)
            .map(|s| ((s >> 8) & 0xff).cast_signed());
        let mut reason = match (oom_killed, &signal, exit_code) {
            (true, _, _) => match last.memory_usage {
                Some(usage) => format!(
                    "killed by the OOM killer at {:.0}% of its cgroup limit",
                    usage * 100.0
                ),
                None => "killed by the OOM killer".to_owned(),
            },
            (false, Some(signal), _) => format!("killed by {signal}"),
            (false, None, Some(code)) => format!("exit code {code}"),
            (false, None, None) => "exited (the kernel's exit status was not seen)".to_owned(),
        };
        if last.vma_limit > 0
            && f64::from(last.vma_count) >= f64::from(last.vma_limit) * VMA_NOTABLE
        {
            let _ = write!(
                reason,
                ", at VMA count {} of {}",
                thousands(last.vma_count.into()),
                thousands(last.vma_limit.into())
            );
        }
        Self {
            exit_code,
            signal,
            oom_killed,
            reason,
        }
    }
}

fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("signal {signal}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(exit_code: u32, oom_killed: u32) -> ProcessExit {
        ProcessExit {
            exited: 1,
            exit_code,
            oom_killed,
            pad: 0,
        }
    }

    #[test]
    fn exit_codes_signals_and_the_oom_killer() {
        let last = LastState::default();
        let code = Death::new(Some(exited(3 << 8, 0)), last);
        assert_eq!((code.exit_code, code.signal.as_deref()), (Some(3), None));
        assert_eq!(code.reason, "exit code 3");
        let killed = Death::new(Some(exited(9, 0)), last);
        assert_eq!(
            (killed.exit_code, killed.signal.as_deref()),
            (None, Some("SIGKILL"))
        );
        assert_eq!(killed.reason, "killed by SIGKILL");
        let oom = Death::new(
            Some(exited(9, 1)),
            LastState {
                memory_usage: Some(0.991),
                ..last
            },
        );
        assert!(oom.oom_killed);
        assert_eq!(
            oom.reason,
            "killed by the OOM killer at 99% of its cgroup limit"
        );
        let near_limit = Death::new(
            Some(exited(1 << 8, 0)),
            LastState {
                memory_usage: None,
                vma_count: 65_528,
                vma_limit: 65_530,
            },
        );
        assert_eq!(
            near_limit.reason,
            "exit code 1, at VMA count 65,528 of 65,530"
        );
        assert_eq!(Death::new(None, last).exit_code, None);
    }
}
