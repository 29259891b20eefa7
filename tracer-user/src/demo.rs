//! `tracer demo`: starts a child whose mappings grow the way a Kafka broker's do (an `.index`
//! and a `.timeindex` file mapped per log segment, kept mapped, plus anonymous churn) and
//! attaches to it, so a newcomer sees the live view and a time to exhaustion within seconds.

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::{
    attach,
    cli::{DemoArgs, WorkloadArgs},
    target::Target,
    vma,
};

/// Size of each demo index file (sparse: takes no disk space).
const INDEX_BYTES: usize = 64 * 1024;
/// Partition directories the segments are spread over.
const PARTITIONS: u32 = 24;

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    // Before any file exists: from here on Ctrl-C, SIGTERM and SIGHUP end the demo through
    // the removal of its files, even while the probes are still loading.
    let mut signals = Signals::install()?;
    let limit = match args.watch.max_map_count {
        Some(limit) => limit,
        None => vma::read_max_map_count().context("reading vm.max_map_count")?,
    };
    let stop_at = args.stop_at.unwrap_or(limit / 100 * 45);
    let temp = std::env::temp_dir();
    remove_orphans(&temp);
    let dir = temp.join(format!("{DIR_PREFIX}{}", std::process::id()));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _cleanup = RemoveOnDrop(dir.clone());

    let exe = std::env::current_exe().context("finding the tracer binary")?;
    let mut command = Command::new(exe);
    command
        .args([
            "demo-workload",
            "--rate",
            &args.rate.to_string(),
            "--stop-at",
            &stop_at.to_string(),
            "--dir",
        ])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // SAFETY: prctl is async-signal-safe; the workload dies with us, however we exit.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut child = command.spawn().context("starting the demo workload")?;
    let watched = async {
        let target = Target::open(child.id()).context("watching the demo workload")?;
        attach::watch(target, &args.watch, args.output)
            .await
            .map(|_| ())
    };
    // The session stops itself on SIGINT and SIGTERM; a signal that came while it was
    // attaching, or a SIGHUP, ends it here (dropping it detaches the probes).
    let result = tokio::select! {
        result = watched => result,
        () = signals.any() => Ok(()),
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// The demo's directory in the temp dir: this prefix and the tracer's pid.
const DIR_PREFIX: &str = "tracer-demo-";

/// The signals that end the demo, caught from the start.
struct Signals([Signal; 3]);

impl Signals {
    fn install() -> anyhow::Result<Self> {
        let install = |kind| signal(kind).context("installing the demo's signal handlers");
        Ok(Self([
            install(SignalKind::interrupt())?,
            install(SignalKind::terminate())?,
            install(SignalKind::hangup())?,
        ]))
    }

    /// Resolves when any of them arrives.
    async fn any(&mut self) {
        let [int, term, hup] = &mut self.0;
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
    }
}

/// Removes the directories of earlier demos whose tracer is gone (killed with SIGKILL, which
/// nothing can catch).
fn remove_orphans(temp: &Path) {
    let Ok(entries) = fs::read_dir(temp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// The workload: maps two index files per "segment" at a steady rate until `stop_at`
/// mappings, while mapping and unmapping scratch memory (the JVM's churn); then holds.
pub fn workload(args: &WorkloadArgs) -> anyhow::Result<()> {
    let scratch_len = 4 * page_size();
    let started = Instant::now();
    let mut mapped: u64 = 0;
    let mut segment: u64 = 0;
    loop {
        let due = started + Duration::from_secs_f64(mapped as f64 / f64::from(args.rate));
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        if current_map_count().unwrap_or(0) < args.stop_at {
            let partition = segment % u64::from(PARTITIONS);
            let partition_dir = args.dir.join(format!("demo-topic-{partition}"));
            fs::create_dir_all(&partition_dir)?;
            for ext in ["index", "timeindex"] {
                map_file(&partition_dir.join(format!("{:020}.{ext}", segment * 4096)))?;
            }
            segment += 1;
        }
        mapped += 2;
        churn(scratch_len);
    }
}

/// Maps `path` shared and keeps it mapped, as Kafka does with a segment's indexes.
fn map_file(path: &Path) -> anyhow::Result<()> {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.set_len(INDEX_BYTES as u64)?;
    // SAFETY: a new shared mapping of a file we own; never unmapped on purpose.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            INDEX_BYTES,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error()).context("mmap");
    }
    // SAFETY: the first byte of the mapping just created.
    unsafe { addr.cast::<u8>().write(1) };
    Ok(())
}

/// One transient anonymous mapping, split by mprotect and unmapped: +1, +2, -2.
fn churn(len: usize) {
    // SAFETY: a private anonymous mapping of our own, unmapped before returning.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if addr != libc::MAP_FAILED {
            libc::mprotect(addr, page_size(), libc::PROT_READ);
            libc::munmap(addr, len);
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// Our own VMA count: lines of /proc/self/maps, less [vsyscall].
fn current_map_count() -> std::io::Result<u32> {
    let maps = fs::read("/proc/self/maps")?;
    Ok(crate::vma::maps::Breakdown::parse(&maps).map_count())
}

/// Removes the demo's files however the demo ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
