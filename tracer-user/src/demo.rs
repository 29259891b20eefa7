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
    let limit = match args.watch.max_map_count {
        Some(limit) => limit,
        None => vma::read_max_map_count().context("reading vm.max_map_count")?,
    };
    let stop_at = args.stop_at.unwrap_or(limit / 100 * 45);
    let dir = std::env::temp_dir().join(format!("tracer-demo-{}", std::process::id()));
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
    let target = Target::open(child.id()).context("watching the demo workload");
    let result = match target {
        Ok(target) => attach::watch(target, &args.watch, args.output)
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    let _ = child.kill();
    let _ = child.wait();
    result
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
