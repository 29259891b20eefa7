//! Proc mode: where the eBPF probes cannot load (an old kernel, no BTF, a pod refused
//! `CAP_BPF`), the session's models are fed from samples of /proc instead: the VMA count from
//! /proc/PID/maps, the sockets from sock_diag and /proc/PID/fd, the threads from
//! /proc/PID/task. The samples become the records and readings the probes would have given,
//! so the VMA, socket, thread, fd and memory models, their trends, ETAs and alerts are the
//! same ones. What a sample cannot see: what changes and changes back between two samples
//! (a peak, a short-lived socket or thread), the transitions themselves, who closed a socket,
//! and which thread mapped what.
//!
//! It needs no capability for a target of the agent's own user, and `CAP_SYS_PTRACE` with
//! `CAP_DAC_READ_SEARCH` for another user's.

pub mod maps;
pub mod sockets;
pub mod steal;
pub mod tasks;

use std::{
    path::Path,
    sync::mpsc::{Receiver, SyncSender, sync_channel},
    time::{Duration, Instant},
};

use tracer_common::task::{TaskEvent, ThreadSched};
use tracer_common::tcp::TcpEvent;

use crate::{
    event::monotonic,
    preflight::{self, Machine},
    tcp::proc::ProcSockets,
    vma::source::VmaSource,
};
use maps::CountReader;
use sockets::SocketDiff;
use tasks::TaskSampler;

/// How a target is watched (`--mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// eBPF, or proc mode (announced) when the probes cannot load.
    #[default]
    Auto,
    /// eBPF probes: exact counts, every transition.
    Ebpf,
    /// Samples of /proc: no capability needed for a target of the same user.
    Proc,
}

impl Mode {
    /// The mode a session runs in: with probes or without.
    pub fn of(probes: bool) -> Self {
        if probes { Self::Ebpf } else { Self::Proc }
    }

    /// The name in `target_attached` and `tracer_mode` (a session runs `Ebpf` or `Proc`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Ebpf => "ebpf",
            Self::Proc => "proc",
        }
    }
}

/// How often /proc is sampled (the VMA count less often when reading it costs more).
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// What feeds a session's models, as the machine check for `--mode` found it.
#[derive(Clone, Debug)]
pub enum Source {
    /// The probes, loaded on this machine (in `auto`, proc mode still when they fail to load).
    Probes(Machine),
    /// Samples of /proc; `fell_back` says why not the probes when `--mode` was `auto`.
    Proc { fell_back: Option<String> },
}

/// What `target_attached` names as the VMA count's source in proc mode.
pub const PROC_MAPS: &str = "proc_maps";

/// The machine check for `mode`. In `auto`, a failed check means proc mode (announced by the
/// session once it has attached, so that a failure to read /proc is still one line).
pub fn source(
    mode: Mode,
    btf: Option<&Path>,
    vma_source: Option<VmaSource>,
) -> anyhow::Result<Source> {
    match mode {
        Mode::Proc => Ok(Source::Proc { fell_back: None }),
        Mode::Ebpf => preflight::check(btf, vma_source).map(Source::Probes),
        Mode::Auto => Ok(preflight::check(btf, vma_source).map_or_else(
            |e| Source::Proc {
                fell_back: Some(format!("{e:#}")),
            },
            Source::Probes,
        )),
    }
}

/// Says why the probes are not used and what is used instead.
pub fn fall_back(why: &str) {
    log::warn!(
        "{why}; falling back to proc mode: sampled from /proc every {} s, not exact (--mode ebpf makes this an error, --mode proc silences it)",
        SAMPLE_INTERVAL.as_secs()
    );
}

/// One sample of the target, as records and readings for the models.
#[derive(Debug, Default)]
pub struct Sample {
    /// The VMA count, when it was due to be read.
    pub map_count: Option<u32>,
    /// The time between two reads of the VMA count: the sample interval or, when the read
    /// costs more, [`maps::COST_FACTOR`] times its cost.
    pub maps_period: Duration,
    pub tcp: Vec<TcpEvent>,
    pub tasks: Vec<TaskEvent>,
    pub accounts: Vec<(u32, ThreadSched)>,
}

/// Samples the target on a thread of its own (reading /proc blocks, for milliseconds at
/// 65,000 mappings) and hands the samples over. Dropping it stops the thread at its next
/// sample.
pub struct Sampler {
    samples: Receiver<Sample>,
    /// How often the slowest of the samples (the VMA count) is taken.
    period: Duration,
}

impl Sampler {
    /// Starts sampling `pid`, whose sockets the TCP model was seeded with (`seed`).
    pub fn start(pid: u32, seed: &ProcSockets) -> std::io::Result<Self> {
        let (tx, samples) = sync_channel(2);
        let state = State {
            pid,
            maps: CountReader::new(pid, SAMPLE_INTERVAL),
            sockets: SocketDiff::new(seed),
            tasks: TaskSampler::new(pid),
        };
        std::thread::Builder::new()
            .name("tracer-proc".into())
            .spawn(move || state.run(&tx))?;
        Ok(Self {
            samples,
            period: SAMPLE_INTERVAL,
        })
    }

    /// The next sample taken, if any is waiting.
    pub fn try_next(&mut self) -> Option<Sample> {
        let sample = self.samples.try_recv().ok()?;
        self.period = sample.maps_period.max(SAMPLE_INTERVAL);
        Some(sample)
    }

    /// How often the counts are sampled (the VMA count, the slowest of them).
    pub fn period(&self) -> Duration {
        self.period
    }
}

struct State {
    pid: u32,
    maps: CountReader,
    sockets: SocketDiff,
    tasks: TaskSampler,
}

impl State {
    fn run(mut self, tx: &SyncSender<Sample>) {
        loop {
            let started = Instant::now();
            match self.sample() {
                Ok(sample) => {
                    if tx.send(sample).is_err() {
                        return;
                    }
                }
                // The target exited: the session sees it on its pidfd.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) => log::debug!("sampling /proc/{}: {e}", self.pid),
            }
            std::thread::sleep(SAMPLE_INTERVAL.saturating_sub(started.elapsed()));
        }
    }

    fn sample(&mut self) -> std::io::Result<Sample> {
        let mut sample = Sample {
            map_count: self.maps.read_if_due()?,
            ..Sample::default()
        };
        sample.maps_period = self.maps.period();
        let found = crate::tcp::proc::read(self.pid)?;
        // Stamped once read: a state seen is at least this old, never older (an age from a
        // stamp taken before the read could pass a threshold before the state did).
        let now_ns = (monotonic() * 1e9) as u64;
        self.sockets.update(&found, now_ns, &mut sample.tcp);
        self.tasks
            .sample(now_ns, &mut sample.tasks, &mut sample.accounts)?;
        Ok(sample)
    }
}
