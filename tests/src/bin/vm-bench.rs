//! vm-bench: the cost side of the kernel matrix (`cargo xtask bench`), run inside a guest
//! whose clock counts instructions (qemu `-icount`), so that a ratio with and without tracer
//! repeats whatever the host does. Prints one line per loop, which the host turns into a table:
//!
//! ```text
//! vm-bench <loop> | <untraced per second> | <with tracer per second, or why there is none>
//! vm-bench done
//! ```
//!
//! Usage: `vm-bench WORKLOADS SECONDS ROUNDS` with `TRACER_BIN` naming the tracer. Loops
//! (tests/native/loops.c): `mm` and `tcp` watched by tracer themselves; `fault`, `mm` and
//! `null` in an unrelated process placed in a cgroup as deep as a Kubernetes pod's
//! container, while tracer watches another process. Medians of ROUNDS runs of SECONDS per
//! side, the sides taking turns after a warm-up run of each.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use tracer_tests::{Process, Tracer};

/// A container's cgroup on a Kubernetes node (cgroup v2, systemd driver): the depth at which
/// 6.1's and 6.12's `mmap_lock` events build the memory cgroup's path for every event.
const POD_CGROUP: &str =
    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-1.scope";
const ATTACH_TIMEOUT: Duration = Duration::from_mins(2);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [workloads, seconds, rounds] = args.as_slice() else {
        eprintln!("usage: vm-bench WORKLOADS SECONDS ROUNDS   (TRACER_BIN names the tracer)");
        std::process::exit(2);
    };
    let bench = Bench {
        loops: Path::new(workloads).join("loops"),
        seconds: seconds.clone(),
        rounds: rounds.parse().expect("ROUNDS is a number"),
        cgroup: pod_cgroup(),
    };
    for (name, mode, watched) in [
        ("watched mm", "mm", true),
        ("watched tcp", "tcp", true),
        ("others' page faults (pod cgroup)", "fault", false),
        ("others' mm (pod cgroup)", "mm", false),
        ("others' getppid (pod cgroup)", "null", false),
    ] {
        let (untraced, traced) = bench.medians(mode, watched);
        let text = |rate: Result<f64, String>| rate.map_or_else(|why| why, |r| format!("{r:.0}"));
        println!("vm-bench {name} | {} | {}", text(untraced), text(traced));
    }
    println!("vm-bench done");
}

struct Bench {
    loops: PathBuf,
    seconds: String,
    rounds: usize,
    cgroup: PathBuf,
}

impl Bench {
    /// The median rates of `mode` without and with tracer, which watches the loop itself
    /// (`watched`) or an idle process beside it. The sides take turns, after one discarded
    /// run of each, so that what the guest kernel warms up over time (caches, the maple
    /// tree's nodes) favours neither.
    fn medians(&self, mode: &str, watched: bool) -> (Result<f64, String>, Result<f64, String>) {
        let mut without = Vec::new();
        let mut with = Vec::new();
        for round in 0..=self.rounds {
            let bare = self.once(mode, watched, false);
            let traced = self.once(mode, watched, true);
            let failed = traced.is_err();
            if round > 0 || failed {
                without.push(bare);
                with.push(traced);
            }
            if failed {
                break;
            }
        }
        (median(without), median(with))
    }

    fn once(&self, mode: &str, watched: bool, traced: bool) -> Result<f64, String> {
        let mut looping = Process::spawn(Command::new(&self.loops).args([mode, &self.seconds]));
        looping.expect_line("READY", Duration::from_secs(30));
        let idle = (!watched).then(|| {
            let idle = Process::spawn(Command::new(&self.loops).args(["idle", "3600"]));
            idle.expect_line("READY", Duration::from_secs(30));
            std::fs::write(self.cgroup.join("cgroup.procs"), looping.pid.to_string())
                .expect("move the loop into the pod cgroup");
            idle
        });
        let session = if traced {
            let target = idle.as_ref().map_or(looping.pid, |idle| idle.pid);
            Some(attach(target)?)
        } else {
            None
        };
        looping.send("GO");
        let (_, result) = looping.expect_line("RESULT", Duration::from_mins(10));
        drop(session);
        drop(idle);
        result
            .split_whitespace()
            .find_map(|field| field.strip_prefix("rate="))
            .and_then(|rate| rate.parse().ok())
            .ok_or_else(|| format!("no rate in {result:?}"))
    }
}

fn median(rates: Vec<Result<f64, String>>) -> Result<f64, String> {
    let mut rates = rates.into_iter().collect::<Result<Vec<f64>, String>>()?;
    rates.sort_by(f64::total_cmp);
    Ok(rates[rates.len() / 2])
}

/// tracer attached to `pid`, or tracer's failure as text.
fn attach(pid: u32) -> Result<Tracer, String> {
    std::panic::catch_unwind(|| Tracer::attach_within(pid, &[], ATTACH_TIMEOUT))
        .map_err(|_| "tracer did not attach".to_owned())
}

/// Creates the pod-deep cgroup with the memory controller enabled on the way down.
fn pod_cgroup() -> PathBuf {
    let mut dir = PathBuf::from("/sys/fs/cgroup");
    for part in POD_CGROUP.split('/') {
        std::fs::write(dir.join("cgroup.subtree_control"), "+memory")
            .unwrap_or_else(|e| panic!("enable memory in {}: {e}", dir.display()));
        dir.push(part);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    }
    dir
}
