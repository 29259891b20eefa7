//! Time the hypervisor stole from this machine's CPUs. On a virtual machine with paravirtual
//! steal accounting (`CONFIG_PARAVIRT_TIME_ACCOUNTING`, on in Debian's, Amazon Linux's and
//! RHEL's kernels; KVM and Xen guests), the scheduler's task clock leaves out the time a vCPU
//! was not running on the host, so a thread's `schedstat` CPU time (and `stat`'s utime + stime)
//! falls short of the wall time it held its CPU by the stolen share: a saturated pool on a host
//! with 10% steal would look 10% idle. The proc sampler scales CPU time by the share of the
//! machine's busy time stolen since its previous sample (/proc/stat's first line: the machine's,
//! not each CPU's, which is as close as a sample of /proc gets).

/// The machine's steal and busy time at the previous reading.
#[derive(Default)]
pub struct StealClock {
    last: Option<CpuTimes>,
}

/// Clock ticks from /proc/stat's `cpu` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CpuTimes {
    steal: u64,
    /// user + nice + system + irq + softirq + steal: every tick a CPU was not idle.
    busy: u64,
}

/// Stolen shares above this are taken as this (a sample over a host that starved the guest
/// would otherwise scale CPU time without bound).
const MAX_STOLEN: f64 = 0.5;

impl StealClock {
    /// What CPU time since the previous call is multiplied by to be the wall time the threads
    /// held their CPUs: 1 / (1 - stolen share); 1 at the first call, without steal, or when
    /// /proc/stat cannot be read.
    pub fn factor(&mut self) -> f64 {
        let now = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|stat| parse(&stat));
        let before = std::mem::replace(&mut self.last, now);
        match (before, now) {
            (Some(before), Some(now)) => factor(before, now),
            _ => 1.0,
        }
    }
}

fn factor(before: CpuTimes, now: CpuTimes) -> f64 {
    let busy = now.busy.saturating_sub(before.busy);
    if busy == 0 {
        return 1.0;
    }
    let stolen = (now.steal.saturating_sub(before.steal) as f64 / busy as f64).min(MAX_STOLEN);
    1.0 / (1.0 - stolen)
}

/// The first line of /proc/stat: `cpu  user nice system idle iowait irq softirq steal ...`
/// (proc_stat(5); steal since 2.6.11).
fn parse(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_ascii_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let &[user, nice, system, _idle, _iowait, irq, softirq, steal, ..] = ticks.as_slice() else {
        return None;
    };
    Some(CpuTimes {
        steal,
        busy: user + nice + system + irq + softirq + steal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_line_gives_steal_and_busy_ticks() {
        let stat =
            "cpu  1911282 51093 457188 1524277 7478 0 40976 135103 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(
            parse(stat),
            Some(CpuTimes {
                steal: 135_103,
                busy: 1_911_282 + 51_093 + 457_188 + 40_976 + 135_103,
            })
        );
        assert_eq!(parse("cpu0 1 2 3\n"), None);
        assert_eq!(parse("cpu  1 2 3\n"), None);
    }

    #[test]
    fn cpu_time_is_scaled_by_the_stolen_share_of_busy_time() {
        let at = |steal, busy| CpuTimes { steal, busy };
        // 20 of 200 busy ticks stolen: CPU time is 0.9 of the wall time held.
        assert!((factor(at(100, 1000), at(120, 1200)) - 1.0 / 0.9).abs() < 1e-9);
        // No steal, an idle machine, or counters that went back: as read.
        let near = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(near(factor(at(100, 1000), at(100, 1200)), 1.0));
        assert!(near(factor(at(100, 1000), at(100, 1000)), 1.0));
        assert!(near(factor(at(100, 1000), at(90, 900)), 1.0));
        // A starved guest is capped.
        assert!(near(factor(at(0, 0), at(100, 100)), 2.0));
    }
}
