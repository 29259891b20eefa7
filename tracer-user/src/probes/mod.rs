//! The kernel side as the agent holds it: the embedded eBPF object, loaded once with its
//! load-time globals, its programs attached, and handles on its maps; the targets are entries
//! of its `TARGETS` map, each with a number its records and entries carry.
//!
//! Everything is owned by [`Probes`]: dropping it detaches the programs and frees the maps, so
//! nothing is left attached when the agent exits, by any path. [`shared`] shares it among the
//! sessions and hands each its own records.

mod clock;
mod numbers;
mod order;
pub mod shared;

use std::{
    fmt,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, FEntry, RawTracePoint, RawTracePointRunOptions, TestRun as _},
};
use tracer_common::{
    config::{
        ABSENT, KERNEL_LAYOUT_GLOBAL, KernelLayout, PidNamespace, TARGET_PIDNS_GLOBAL,
        TICK_CLOCK_GLOBAL, TickClock, target_index, tgid_filter_slot,
    },
    lost::{LOST_SLOTS, LOST_TASK, LOST_TCP, LOST_VMA, UNTRACKED_TCP, UNTRACKED_THREADS},
    task::{ProcessExit, TaskEvent, ThreadSched},
    tcp::{
        HELD_PROBE_BATCH, KNOWN_SLOTS, ListenKey, Owned, PortUse, SLOT_LIMIT_GLOBAL, TcpEvent,
        TupleKey,
    },
    vma::{HIGH_WATER, REGISTER, VmaEvent, VmaRegister, state_index},
};

use crate::{
    btf::{Btf, BtfError},
    vma::source::VmaSource,
};
use numbers::Numbers;

/// The eBPF object built by `build.rs`, embedded so `tracer` is one self-contained file.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf.o"));

/// Resolves where the programs' kernel fields are in the running kernel, from its BTF.
pub fn kernel_layout(btf: &Btf) -> Result<KernelLayout, BtfError> {
    let sock_common = |field: &str| btf.member_offset("sock_common", field);
    Ok(KernelLayout {
        task_mm: btf.member_offset("task_struct", "mm")?,
        mm_map_count: btf.member_offset("mm_struct", "map_count")?,
        skc_family: sock_common("skc_family")?,
        skc_state: sock_common("skc_state")?,
        skc_num: sock_common("skc_num")?,
        skc_dport: sock_common("skc_dport")?,
        skc_rcv_saddr: sock_common("skc_rcv_saddr")?,
        skc_daddr: sock_common("skc_daddr")?,
        skc_v6_rcv_saddr: sock_common("skc_v6_rcv_saddr")?,
        skc_v6_daddr: sock_common("skc_v6_daddr")?,
        skc_net: btf.field_offset("sock_common", &["skc_net", "net"])?,
        net_ns_inum: btf.field_offset("net", &["ns", "inum"])?,
        sk_protocol: btf.member_offset("sock", "sk_protocol")?,
        sk_socket: btf.member_offset("sock", "sk_socket")?,
        // A bitfield before 6.4: then held sockets are told from closed ones by sk_socket alone.
        sk_shutdown: match btf.member_offset("sock", "sk_shutdown") {
            Err(BtfError::Bitfield { .. }) => ABSENT,
            other => other?,
        },
        task_pid: btf.member_offset("task_struct", "pid")?,
        // sched_switch passes prev_state since 5.18 (4 arguments); before, the programs read
        // it from the task: `__state` since 5.14, `state` before.
        task_state: if btf.tracepoint_arity("sched_switch") == Some(4) {
            ABSENT
        } else {
            btf.member_offset("task_struct", "__state")
                .or_else(|_| btf.member_offset("task_struct", "state"))?
        },
        task_thread_pid: btf.member_offset("task_struct", "thread_pid")?,
        pid_level: btf.member_offset("pid", "level")?,
        pid_numbers_nr: btf.member_offset("pid", "numbers")? + btf.member_offset("upid", "nr")?,
        upid_size: btf.struct_size("upid")?,
        task_signal: btf.member_offset("task_struct", "signal")?,
        signal_live: btf.member_offset("signal_struct", "live")?,
        task_exit_code: btf.member_offset("task_struct", "exit_code")?,
        mark_victim_task: match btf.tracepoint_arity("mark_victim") {
            Some(1) => 0,
            Some(_) => 1,
            None => ABSENT,
        },
        task_run_delay: btf
            .field_offset("task_struct", &["sched_info", "run_delay"])
            .unwrap_or(ABSENT),
        pad: 0,
    })
}

/// How `max_sockets` sockets are kept: in the slots of `TCP_KNOWN` below the first number
/// returned (half of `max_sockets`, or all 8,192 slots), which a socket takes when its slot is
/// free, and in `TCP_SOCKETS`, whose capacity is the second: never more than `max_sockets`
/// sockets between them.
fn socket_capacity(max_sockets: u32) -> (u32, u32) {
    let slots = KNOWN_SLOTS.min(max_sockets / 2);
    (slots, max_sockets - slots)
}

/// The object loaded for programs the agent runs before it loads the probes, with its socket
/// tables at one entry (its maps are created, none of its programs loaded).
fn load_for_runs(layout: &KernelLayout) -> Result<Ebpf, ProbeError> {
    EbpfLoader::new()
        .btf(None)
        .override_global(KERNEL_LAYOUT_GLOBAL, layout, true)
        .map_max_entries("TCP_SOCKETS", 1)
        .map_max_entries("TCP_SEED", 1)
        .load(OBJECT)
        .map_err(|e| classify("loading the eBPF object", &e))
}

/// The level of the agent's pid namespace (0: the host's), which the kernel alone can tell
/// from inside a container: a program run in the agent's own context reads it. Needs
/// BPF_PROG_TEST_RUN of raw tracepoints (5.10).
pub fn pid_level(layout: &KernelLayout) -> Result<u32, ProbeError> {
    let mut ebpf = load_for_runs(layout)?;
    let result = loaded(&mut ebpf, LEVEL_PROBE)?
        .test_run(RawTracePointRunOptions::new())
        .map_err(|e| classify(&format!("running {LEVEL_PROBE}"), &e))?;
    match result.return_value {
        // The program's -1: the fields were not readable.
        u32::MAX => Err(ProbeError::Other(format!(
            "{LEVEL_PROBE} could not read the pid namespace's level"
        ))),
        level => Ok(level),
    }
}

/// The socket records' clock ([`TickClock`]), measured by running a program that reads the
/// kernel's tick count (BPF_PROG_TEST_RUN of raw tracepoints, 5.10). Takes up to two ticks
/// (8 ms at `CONFIG_HZ=250`).
pub fn tick_clock(layout: &KernelLayout) -> Result<TickClock, ProbeError> {
    let mut ebpf = load_for_runs(layout)?;
    let program = loaded(&mut ebpf, JIFFIES_PROBE)?;
    let half = |high: u64| {
        let mut options = RawTracePointRunOptions::new();
        options.args[0] = high;
        program
            .test_run(options)
            .map(|result| u64::from(result.return_value))
            .map_err(|e| classify(&format!("running {JIFFIES_PROBE}"), &e).to_string())
    };
    let jiffies = || loop {
        let high = half(1)?;
        let low = half(0)?;
        if half(1)? == high {
            return Ok(high << 32 | low);
        }
    };
    clock::measure(jiffies, || (crate::event::monotonic() * 1e9) as u64).map_err(ProbeError::Other)
}

/// The raw tracepoint program `name` of `ebpf`, loaded (to be run, not attached).
fn loaded<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut RawTracePoint, ProbeError> {
    let program: &mut RawTracePoint = program(ebpf, name)?;
    program
        .load()
        .map_err(|e| classify(&format!("loading {name}"), &e))?;
    Ok(program)
}

/// Removes the entries of `map` that `picked` chooses, and returns those it removed.
fn remove_where<K: Pod, V: Pod>(
    map: &mut HashMap<MapData, K, V>,
    picked: impl Fn(&K, &V) -> bool,
) -> Vec<(K, V)> {
    let chosen: Vec<(K, V)> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(key, value)| picked(key, value))
        .collect();
    chosen
        .into_iter()
        .filter(|(key, _)| map.remove(key).is_ok())
        .collect()
}

/// Why the programs could not be loaded or attached; the caller words the fix.
#[derive(Debug)]
pub enum ProbeError {
    /// Creating the maps or loading a program was refused for lack of privilege or memlock.
    Permission(String),
    /// The kernel refused a program: its verifier, or no attach point for any VMA source (an
    /// old or unusual kernel).
    Rejected(String),
    /// Anything else, with aya's own description.
    Other(String),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Permission(e) | Self::Rejected(e) | Self::Other(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for ProbeError {}

/// Sorts an aya error by the fix it needs, keeping its whole chain as text.
fn classify(context: &str, error: &(dyn std::error::Error + 'static)) -> ProbeError {
    let mut text = context.to_owned();
    let mut source = Some(error);
    let mut permission = false;
    let mut verifier = false;
    while let Some(e) = source {
        let io = e.downcast_ref::<std::io::Error>();
        permission |=
            io.is_some_and(|io| matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES)));
        let message = e.to_string();
        verifier |= message.contains("verifier") || message.contains("Verifier");
        text.push_str(": ");
        text.push_str(&message);
        source = e.source();
    }
    // The verifier's refusals come as EACCES too: they are not a matter of privilege.
    if verifier {
        ProbeError::Rejected(text)
    } else if permission {
        ProbeError::Permission(text)
    } else {
        ProbeError::Other(text)
    }
}

/// Whether a run on one CPU failed because the CPU is offline (`ENXIO`).
fn is_offline(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(e) = source {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::ENXIO))
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// The loaded and attached kernel side, for every target.
pub struct Probes {
    /// Owns the programs and their links; kept for as long as the probes live.
    ebpf: Ebpf,
    /// Forwards the programs' aya-log diagnostics to `log`; closing it would break later loads.
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    targets: HashMap<MapData, u32, u32>,
    tgid_filter: Array<MapData, u32>,
    target_mms: HashMap<MapData, u64, u32>,
    unlearned: Array<MapData, u32>,
    vma_state: Array<MapData, VmaRegister>,
    vma_events: Option<RingBuf<MapData>>,
    tcp_events: Option<RingBuf<MapData>>,
    task_events: Option<RingBuf<MapData>>,
    threads: HashMap<MapData, u32, ThreadSched>,
    tcp_listeners: HashMap<MapData, ListenKey, Owned>,
    tcp_seed: HashMap<MapData, TupleKey, Owned>,
    tcp_ports: Array<MapData, PortUse>,
    lost: PerCpuArray<MapData, u64>,
    process_exit: Array<MapData, ProcessExit>,
    /// Where the VMA count comes from on this kernel.
    vma_source: VmaSource,
    /// Whether the heal program runs here (BPF_PROG_TEST_RUN of raw tracepoints: 5.10+).
    heal: bool,
    /// How late the socket records' stamps can be: one tick of their clock, or none.
    record_tick: std::time::Duration,
    /// The CPUs whose stages the agent flushes, where the socket probe stages records (it
    /// does where the tick clock was measured); empty where it does not.
    staging_cpus: Vec<u32>,
    /// The targets' numbers, by thread-group id.
    numbers: Numbers,
}

/// The programs and the raw tracepoints they attach to; `None`: loaded, run on demand. The
/// VMA source's programs and the socket probe ([`SOCKET_PROBE`]) are attached apart.
const PROGRAMS: [(&str, Option<&str>); 7] = [
    ("tracer_exec", Some("sched_process_exec")),
    ("tracer_newtask", Some("task_newtask")),
    ("tracer_rename", Some("task_rename")),
    ("tracer_taskexit", Some("sched_process_exit")),
    ("tracer_switch", Some("sched_switch")),
    (HELD_PROBE, None),
    (FLUSH_PROBE, None),
];

/// The program that follows the target's sockets, a BTF-enabled tracepoint (5.5+), and its
/// tracepoint.
const SOCKET_PROBE: &str = "tracer_tcpstate";
const SOCKET_TRACEPOINT: &str = "inet_sock_set_state";

/// The program that tells which queued sockets have been accepted.
const HELD_PROBE: &str = "tracer_tcpheld";

/// The program that writes a CPU's staged socket records to the ring.
const FLUSH_PROBE: &str = "tracer_tcpflush";

/// Times a flush is run again on a CPU where it interrupted a write of the stage (which takes
/// well under a microsecond) before the drain gives up ordering for once.
const FLUSH_TRIES: usize = 1000;

/// The program that returns the level of the agent's pid namespace.
const LEVEL_PROBE: &str = "tracer_pidlevel";

/// The program that returns half of the kernel's tick count.
const JIFFIES_PROBE: &str = "tracer_jiffies";

/// The program that reads the target's current VMA count into the register, run on demand.
const HEAL_PROBE: &str = "tracer_vmaheal";

/// Prefix of the `syscall_fentry` programs: `tracer_fe_NAME` attaches to `__x64_sys_NAME`.
const FENTRY_PREFIX: &str = "tracer_fe_";

impl Probes {
    /// Loads the embedded object for targets in `pidns` and attaches every program, with the
    /// first of `vma_sources` that loads and attaches; it follows no target until
    /// [`Probes::add_target`]. `max_sockets` bounds the kernel's table of the targets' sockets.
    pub fn load(
        pidns: &PidNamespace,
        layout: &KernelLayout,
        clock: &TickClock,
        vma_sources: &[VmaSource],
        max_sockets: u32,
    ) -> Result<Self, ProbeError> {
        let (slots, hashed) = socket_capacity(max_sockets);
        let mut ebpf = EbpfLoader::new()
            // No CO-RE relocations in the object; skip parsing the kernel's BTF a second time.
            .btf(None)
            .override_global(TARGET_PIDNS_GLOBAL, pidns, true)
            .override_global(KERNEL_LAYOUT_GLOBAL, layout, true)
            .override_global(TICK_CLOCK_GLOBAL, clock, true)
            .override_global(SLOT_LIMIT_GLOBAL, &slots, true)
            .map_max_entries("TCP_SOCKETS", hashed)
            .map_max_entries("TCP_SEED", max_sockets)
            .load(OBJECT)
            .map_err(|e| classify("loading the eBPF object", &e))?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                log::debug!("no eBPF logger: {e}");
                None
            }
        };
        for (name, tracepoint) in PROGRAMS {
            let program: &mut RawTracePoint = ebpf
                .program_mut(name)
                .ok_or_else(|| ProbeError::Other(format!("the object has no program {name}")))?
                .try_into()
                .map_err(|e| classify(name, &e))?;
            program
                .load()
                .map_err(|e| classify(&format!("loading {name}"), &e))?;
            if let Some(tracepoint) = tracepoint {
                program.attach(tracepoint).map_err(|e| {
                    classify(
                        &format!("attaching {name} to raw tracepoint {tracepoint}"),
                        &e,
                    )
                })?;
            }
        }
        let btf = aya::Btf::from_sys_fs()
            .map_err(|e| classify("reading the kernel's BTF for its BTF-enabled programs", &e))?;
        let program: &mut BtfTracePoint = program(&mut ebpf, SOCKET_PROBE)?;
        program
            .load(SOCKET_TRACEPOINT, &btf)
            .map_err(|e| classify(&format!("loading {SOCKET_PROBE}"), &e))?;
        program.attach().map_err(|e| {
            classify(
                &format!("attaching {SOCKET_PROBE} to BTF tracepoint {SOCKET_TRACEPOINT}"),
                &e,
            )
        })?;
        let vma_source = attach_vma_source(&mut ebpf, vma_sources, &btf)?;
        if layout.mark_victim_task == ABSENT {
            log::warn!(
                "this kernel has no oom:mark_victim tracepoint: an OOM kill is told as a SIGKILL"
            );
        } else if let Err(e) = attach_raw(&mut ebpf, "tracer_oom", "mark_victim") {
            log::warn!("{e} - an OOM kill is told as a SIGKILL");
        }
        // A run for a number no target has yet: whether running programs on demand works.
        let heal = match heal(&mut ebpf, 0) {
            Ok(()) => true,
            Err(e) => {
                log::warn!(
                    "{e} - the VMA count is then only as fresh as the target's last change (running a program on demand needs Linux 5.10)"
                );
                false
            }
        };

        let staging_cpus = if clock.tick_ns == 0 {
            Vec::new()
        } else {
            aya::util::online_cpus()
                .map_err(|(what, e)| ProbeError::Other(format!("reading {what}: {e}")))?
        };
        Ok(Self {
            targets: take(&mut ebpf, "TARGETS")?,
            tgid_filter: take(&mut ebpf, "TGID_FILTER")?,
            target_mms: take(&mut ebpf, "TARGET_MMS")?,
            unlearned: take(&mut ebpf, "UNLEARNED")?,
            vma_state: take(&mut ebpf, "VMA_STATE")?,
            vma_events: Some(take(&mut ebpf, "VMA_EVENTS")?),
            tcp_events: Some(take(&mut ebpf, "TCP_EVENTS")?),
            task_events: Some(take(&mut ebpf, "TASK_EVENTS")?),
            threads: take(&mut ebpf, "THREADS")?,
            tcp_listeners: take(&mut ebpf, "TCP_LISTENERS")?,
            tcp_seed: take(&mut ebpf, "TCP_SEED")?,
            tcp_ports: take(&mut ebpf, "TCP_PORTS")?,
            lost: take(&mut ebpf, "LOST")?,
            process_exit: take(&mut ebpf, "PROCESS_EXIT")?,
            ebpf,
            logger,
            vma_source,
            heal,
            record_tick: std::time::Duration::from_nanos(clock.tick_ns),
            staging_cpus,
            numbers: Numbers::default(),
        })
    }

    /// Starts following the process `tgid` (in the agent's pid namespace): its entries of the
    /// per-target arrays are reset, then it enters `TARGETS`. Returns its number, which its
    /// records carry.
    pub fn add_target(&mut self, tgid: u32) -> Result<u32, ProbeError> {
        let number = self.numbers.give(tgid).ok_or_else(|| {
            ProbeError::Other(format!(
                "tracer follows at most {} processes at once",
                tracer_common::config::MAX_TARGETS
            ))
        })?;
        if let Err(e) = self.enter(tgid, number) {
            self.numbers.take_back(number);
            return Err(classify("entering the target in the kernel's maps", &e));
        }
        self.count_unlearned();
        Ok(number)
    }

    /// Resets the per-target entries of `number`, then enters `tgid` in `TARGETS` (counted in
    /// `TGID_FILTER` before it can be found).
    fn enter(&mut self, tgid: u32, number: u32) -> Result<(), aya::maps::MapError> {
        for which in [REGISTER, HIGH_WATER] {
            self.vma_state
                .set(state_index(number, which), VmaRegister::default(), 0)?;
        }
        self.process_exit
            .set(target_index(number), ProcessExit::default(), 0)?;
        self.count_filtered(tgid, 1)?;
        if let Err(e) = self.targets.insert(tgid, number, 0) {
            self.count_filtered(tgid, -1)?;
            return Err(e);
        }
        Ok(())
    }

    /// Adds `step` to the count of `tgid`'s entry of `TGID_FILTER` (the kernel only reads it).
    fn count_filtered(&mut self, tgid: u32, step: i32) -> Result<(), aya::maps::MapError> {
        let slot = tgid_filter_slot(tgid);
        let count = self.tgid_filter.get(&slot, 0)?;
        self.tgid_filter
            .set(slot, count.saturating_add_signed(step), 0)
    }

    /// Stops following the target numbered `number`: it leaves `TARGETS`, and its entries of
    /// the kernel's tables go (its mm, its threads, its listening addresses and the sockets
    /// left to adopt). Its sockets the kernel still follows (until they close: one passed to
    /// another process) keep its number, which no other target has for 65,536 attaches.
    pub fn remove_target(&mut self, number: u32) {
        let Some(tgid) = self.numbers.take_back(number) else {
            return;
        };
        if self.targets.remove(&tgid).is_ok()
            && let Err(e) = self.count_filtered(tgid, -1)
        {
            log::debug!("TGID_FILTER: {e}");
        }
        remove_where(&mut self.target_mms, |_, &owner| owner == number);
        remove_where(&mut self.threads, |_, account| account.target == number);
        let listeners = remove_where(&mut self.tcp_listeners, |_, owned| owned.target == number);
        let seeds = remove_where(&mut self.tcp_seed, |_, owned| owned.target == number);
        let mut per_port: std::collections::HashMap<u16, PortUse> =
            std::collections::HashMap::new();
        for (key, owned) in listeners {
            per_port.entry(key.port).or_default().listeners += owned.count;
        }
        for (key, owned) in seeds {
            per_port.entry(key.sport).or_default().seeds += owned.count;
        }
        for (port, gone) in per_port {
            if let Ok(uses) = self.tcp_ports.get(&u32::from(port), 0) {
                let left = PortUse {
                    listeners: uses.listeners.saturating_sub(gone.listeners),
                    seeds: uses.seeds.saturating_sub(gone.seeds),
                };
                let _ = self.tcp_ports.set(u32::from(port), left, 0);
            }
        }
        self.count_unlearned();
    }

    /// Tells the kernel how many targets' mm it has not learned yet (`UNLEARNED`): while
    /// none, the lock probe dismisses every other process's lock at once.
    fn count_unlearned(&mut self) {
        let unlearned = self
            .numbers
            .given()
            .filter(|&number| {
                self.vma_state
                    .get(&state_index(number, REGISTER), 0)
                    .is_ok_and(|register| register.mm == 0)
            })
            .count() as u32;
        if let Err(e) = self.unlearned.set(0, unlearned, 0) {
            log::debug!("writing UNLEARNED: {e}");
        }
    }

    /// How the target numbered `number` ended, once its last thread exited (or the OOM killer
    /// chose it).
    pub fn process_exit(&self, number: u32) -> Option<ProcessExit> {
        self.process_exit.get(&target_index(number), 0).ok()
    }

    /// How late a socket record's `ts_ns` can be after the event (`TickClock`): one tick, or
    /// zero where the probe reads `bpf_ktime_get_ns`.
    pub fn record_tick(&self) -> std::time::Duration {
        self.record_tick
    }

    /// Where the VMA count comes from.
    pub fn vma_source(&self) -> VmaSource {
        self.vma_source
    }

    /// Writes every CPU's staged socket records to the ring ([`FLUSH_PROBE`] on each CPU).
    /// `Ok(false)` when a CPU's stage stayed busy (its records may not be in yet); a CPU
    /// that went offline is skipped, with its records.
    pub fn flush_tcp(&mut self) -> Result<bool, ProbeError> {
        let program: &mut RawTracePoint = program(&mut self.ebpf, FLUSH_PROBE)?;
        let mut complete = true;
        for &cpu in &self.staging_cpus {
            let mut tries = 0;
            loop {
                let mut options = RawTracePointRunOptions::new();
                options.cpu = Some(cpu);
                match program.test_run(options) {
                    Ok(result) if result.return_value == 0 => break,
                    Ok(_) if tries < FLUSH_TRIES => tries += 1,
                    Ok(_) => {
                        complete = false;
                        break;
                    }
                    Err(e) if is_offline(&e) => break,
                    Err(e) => return Err(classify(&format!("running {FLUSH_PROBE}"), &e)),
                }
            }
        }
        Ok(complete)
    }

    /// The most a socket record's stamp can be early: the tick count can lag the clock on a
    /// busy or virtual machine, by less than two ticks.
    pub fn record_margin(&self) -> std::time::Duration {
        2 * self.record_tick
    }

    /// Asks the kernel which of `sockets` (pointers from earlier records, each with its slot)
    /// now have a file: the answers arrive as `Accepted` records in the TCP ring buffer.
    pub fn probe_held(&mut self, sockets: &[(u64, u16)]) -> Result<(), ProbeError> {
        let program: &mut RawTracePoint = self
            .ebpf
            .program_mut(HELD_PROBE)
            .ok_or_else(|| ProbeError::Other(format!("the object has no program {HELD_PROBE}")))?
            .try_into()
            .map_err(|e| classify(HELD_PROBE, &e))?;
        for batch in sockets.chunks(HELD_PROBE_BATCH) {
            let mut options = RawTracePointRunOptions::new();
            options.args[0] = batch.len() as u64;
            for (pair, &(sk, slot)) in options.args[1..].chunks_exact_mut(2).zip(batch) {
                pair.copy_from_slice(&[sk, u64::from(slot)]);
            }
            program
                .test_run(options)
                .map_err(|e| classify(HELD_PROBE, &e))?;
        }
        Ok(())
    }

    /// Hands the kernel the sockets of the target numbered `number` found at attach: its
    /// listening addresses (one entry per listening socket), and the sockets to adopt at their
    /// first transition. Returns how many of those did not fit.
    pub fn seed_tcp(
        &mut self,
        number: u32,
        listeners: &[ListenKey],
        sockets: &[TupleKey],
    ) -> Result<u64, aya::maps::MapError> {
        let mut per_address: std::collections::HashMap<ListenKey, u32> =
            std::collections::HashMap::new();
        let mut per_port: std::collections::HashMap<u16, PortUse> =
            std::collections::HashMap::new();
        for &key in listeners {
            *per_address.entry(key).or_default() += 1;
            per_port.entry(key.port).or_default().listeners += 1;
        }
        for (key, count) in per_address {
            let owned = Owned {
                target: number,
                count,
            };
            self.tcp_listeners.insert(key, owned, 0)?;
        }
        let mut per_tuple: std::collections::HashMap<TupleKey, u32> =
            std::collections::HashMap::new();
        for &key in sockets {
            *per_tuple.entry(key).or_default() += 1;
        }
        let mut seeded = 0;
        for (key, count) in per_tuple {
            let owned = Owned {
                target: number,
                count,
            };
            if self.tcp_seed.insert(key, owned, 0).is_ok() {
                per_port.entry(key.sport).or_default().seeds += count;
                seeded += u64::from(count);
            }
        }
        // Other targets may use the same ports.
        for (port, uses) in per_port {
            let before = self.tcp_ports.get(&u32::from(port), 0)?;
            let after = PortUse {
                listeners: before.listeners + uses.listeners,
                seeds: before.seeds + uses.seeds,
            };
            self.tcp_ports.set(u32::from(port), after, 0)?;
        }
        Ok(sockets.len() as u64 - seeded)
    }

    /// The kernel's register of the newest VMA count reading of the target numbered
    /// `number`, and the highest count since the previous call (whose mark this resets).
    /// The count is first read anew from the target's mm, so a reading published out of order
    /// (the syscall sources read after the lock is dropped) is healed within one report.
    /// When not `alive` (the target has exited: its mm may be freed) the register is read as
    /// the probes left it.
    pub fn vma_register(
        &mut self,
        number: u32,
        alive: bool,
    ) -> Result<(VmaRegister, u32), aya::maps::MapError> {
        if alive
            && self.heal
            && let Err(e) = heal(&mut self.ebpf, number)
        {
            log::debug!("{e}");
        }
        let register = self.vma_state.get(&state_index(number, REGISTER), 0)?;
        let high_water = state_index(number, HIGH_WATER);
        let high = self.vma_state.get(&high_water, 0)?.count;
        self.vma_state.set(high_water, VmaRegister::default(), 0)?;
        if register.mm == 0 {
            self.count_unlearned();
        }
        Ok((register, high))
    }

    /// Hands out the ring buffers (once each), for the drain loop.
    pub fn take_rings(&mut self) -> Option<Rings> {
        Some(Rings {
            vma: self.vma_events.take()?,
            tcp: self.tcp_events.take()?,
            task: self.task_events.take()?,
        })
    }

    /// The scheduling account of every thread of the target numbered `number` the kernel
    /// keeps, into `out`.
    pub fn thread_accounts(&self, number: u32, out: &mut Vec<(u32, ThreadSched)>) {
        out.clear();
        out.extend(
            self.threads
                .iter()
                .filter_map(Result::ok)
                .filter(|(_, account)| account.target == number),
        );
    }

    /// Drops the account of a thread that is gone (one the kernel did not see exit).
    pub fn forget_thread(&mut self, tid: u32) {
        let _ = self.threads.remove(&tid);
    }

    /// What the kernel had to drop so far, summed over CPUs.
    pub fn lost(&self) -> Result<Lost, aya::maps::MapError> {
        let slot = |slot: u32| -> Result<u64, aya::maps::MapError> {
            debug_assert!(slot < LOST_SLOTS);
            Ok(self.lost.get(&slot, 0)?.iter().sum())
        };
        Ok(Lost {
            vma_records: slot(LOST_VMA)?,
            tcp_records: slot(LOST_TCP)?,
            tcp_untracked: slot(UNTRACKED_TCP)?,
            task_records: slot(LOST_TASK)?,
            threads_untracked: slot(UNTRACKED_THREADS)?,
            tcp_missed_runs: self.socket_probe_misses(),
        })
    }

    /// Runs of the socket probe the kernel skipped because it was already running on that CPU
    /// (a transition in a softirq that interrupted the probe's run for another): the program's
    /// `recursion_misses`. They may be anyone's sockets; a missed one of the target's leaves
    /// its count wrong until a resync, which a rise starts. 0 where the kernel does not count
    /// them (before 5.12).
    pub fn socket_probe_misses(&self) -> u64 {
        self.ebpf
            .program(SOCKET_PROBE)
            .and_then(|program| program.fd().ok())
            .map_or(0, |fd| recursion_misses(fd.as_fd().as_raw_fd()))
    }

    /// Forwards pending kernel-side log lines.
    pub fn flush_log(&mut self) {
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
    }
}

/// `BPF_OBJ_GET_INFO_BY_FD` of `enum bpf_cmd` (include/uapi/linux/bpf.h, 4.13+).
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// `bpf_prog_info.recursion_misses` of the program `fd` (5.12+); 0 where the kernel fills in
/// less of the struct, or the call fails.
fn recursion_misses(fd: std::os::fd::RawFd) -> u64 {
    // SAFETY (both): all-zero is a valid value of these plain C structs.
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr: aya_obj::generated::bpf_attr = unsafe { std::mem::zeroed() };
    attr.info.bpf_fd = fd as u32;
    attr.info.info_len = size_of_val(&info) as u32;
    attr.info.info = (&raw mut info) as u64;
    // SAFETY: the kernel writes at most `info_len` bytes to `info`, which outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &raw mut attr,
            size_of_val(&attr),
        )
    };
    if ret == 0 { info.recursion_misses } else { 0 }
}

/// Counts of what the kernel side dropped (see `tracer_common::lost`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lost {
    pub vma_records: u64,
    pub tcp_records: u64,
    pub tcp_untracked: u64,
    pub task_records: u64,
    pub threads_untracked: u64,
    /// Socket-probe runs the kernel skipped (`Probes::socket_probe_misses`), anyone's.
    pub tcp_missed_runs: u64,
}

/// The ring buffers, one per kind of record.
pub struct Rings {
    pub vma: RingBuf<MapData>,
    pub tcp: RingBuf<MapData>,
    pub task: RingBuf<MapData>,
}

/// Loads and attaches the programs of the first source of `sources` that works here; the
/// reasons the others did not are logged, and all of them make the error when none works.
fn attach_vma_source(
    ebpf: &mut Ebpf,
    sources: &[VmaSource],
    btf: &aya::Btf,
) -> Result<VmaSource, ProbeError> {
    let mut failures = Vec::new();
    for &source in sources {
        match attach_source(ebpf, source, btf) {
            Ok(()) => return Ok(source),
            Err(e) => {
                log::info!("VMA source {}: {e}", source.as_str());
                failures.push((source, e));
            }
        }
    }
    Err(none_works(&failures))
}

/// The error when no VMA source works: the kernel refused them all (so `--mode auto` falls
/// back to proc mode), or refused one for lack of privilege (the fix is a capability or the
/// memlock limit, as for any other program).
fn none_works(failures: &[(VmaSource, ProbeError)]) -> ProbeError {
    let reasons: Vec<String> = failures
        .iter()
        .map(|(source, e)| format!("{}: {e}", source.as_str()))
        .collect();
    let text = format!(
        "no way to read the VMA count works on this kernel ({})",
        reasons.join("; ")
    );
    if failures
        .iter()
        .any(|(_, e)| matches!(e, ProbeError::Permission(_)))
    {
        ProbeError::Permission(text)
    } else {
        ProbeError::Rejected(text)
    }
}

/// Loads program `name` and attaches it to the raw tracepoint `tracepoint`.
fn attach_raw(ebpf: &mut Ebpf, name: &str, tracepoint: &str) -> Result<(), ProbeError> {
    let program: &mut RawTracePoint = program(ebpf, name)?;
    program
        .load()
        .map_err(|e| classify(&format!("loading {name}"), &e))?;
    program.attach(tracepoint).map(drop).map_err(|e| {
        classify(
            &format!("attaching {name} to raw tracepoint {tracepoint}"),
            &e,
        )
    })
}

fn attach_source(ebpf: &mut Ebpf, source: VmaSource, btf: &aya::Btf) -> Result<(), ProbeError> {
    match source {
        VmaSource::MmapLock => attach_raw(ebpf, "tracer_mmaplock", "mmap_lock_released"),
        VmaSource::SyscallTracepoint => attach_raw(ebpf, "tracer_sysexit", "sys_exit"),
        VmaSource::SyscallFentry => {
            let names: Vec<String> = ebpf
                .programs()
                .filter_map(|(name, _)| name.strip_prefix(FENTRY_PREFIX).map(str::to_owned))
                .collect();
            let result = names.iter().try_for_each(|syscall| {
                let function = format!("__x64_sys_{syscall}");
                let name = format!("{FENTRY_PREFIX}{syscall}");
                let program: &mut FEntry = program(ebpf, &name)?;
                match program.load(&function, btf) {
                    // A syscall this kernel does not have (mseal before 6.10).
                    Err(aya::programs::ProgramError::Btf(aya::BtfError::UnknownBtfTypeName {
                        ..
                    })) => return Ok(()),
                    other => other.map_err(|e| classify(&format!("loading {name}"), &e))?,
                }
                program
                    .attach()
                    .map(drop)
                    .map_err(|e| classify(&format!("attaching {name} to fentry of {function}"), &e))
            });
            if result.is_err() {
                // Detach what did attach: a source runs whole or not at all.
                for syscall in &names {
                    if let Ok(program) =
                        program::<FEntry>(ebpf, &format!("{FENTRY_PREFIX}{syscall}"))
                    {
                        let _ = program.unload();
                    }
                }
            }
            result
        }
    }
}

/// Runs the heal program once for the target numbered `number` (see [`Probes::vma_register`]).
fn heal(ebpf: &mut Ebpf, number: u32) -> Result<(), ProbeError> {
    let program: &mut RawTracePoint = program(ebpf, HEAL_PROBE)?;
    if program.fd().is_err() {
        program
            .load()
            .map_err(|e| classify(&format!("loading {HEAL_PROBE}"), &e))?;
    }
    let mut options = RawTracePointRunOptions::new();
    options.args[0] = u64::from(number);
    program
        .test_run(options)
        .map(drop)
        .map_err(|e| classify(&format!("running {HEAL_PROBE}"), &e))
}

/// The program `name` of the object, as its type.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| ProbeError::Other(format!("the object has no program {name}")))?
        .try_into()
        .map_err(|e| classify(name, &e))
}

fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T, ProbeError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| ProbeError::Other(format!("the object has no map {name}")))?;
    T::try_from(map).map_err(|e| classify(name, &e))
}

/// A record type of a ring buffer: plain `repr(C)` data, valid for any bytes.
pub trait Record: Copy {}
impl Record for VmaEvent {}
impl Record for TcpEvent {}
impl Record for TaskEvent {}

/// Decodes one ring-buffer record: length first, then an unaligned read.
pub fn decode<T: Record>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: the length is checked; records are repr(C) plain data valid for any bytes.
    Some(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slots_and_the_hash_table_hold_max_sockets_between_them() {
        for (max, slots) in [(16, 8), (200, 100), (16_384, 8192), (131_072, 8192)] {
            assert_eq!(socket_capacity(max), (slots, max - slots), "{max}");
        }
        assert_eq!(socket_capacity(1_048_576), (8192, 1_040_384));
    }

    #[test]
    fn no_vma_source_is_a_refusal_auto_falls_back_from() {
        let absent = || ProbeError::Other("attaching: No such file or directory".to_owned());
        let refused = ProbeError::Rejected("loading: Verifier output".to_owned());
        let e = none_works(&[
            (VmaSource::MmapLock, absent()),
            (VmaSource::SyscallFentry, refused),
        ]);
        assert!(matches!(e, ProbeError::Rejected(_)), "{e:?}");
        assert!(e.to_string().contains("mmap_lock: attaching"), "{e}");
        let e = none_works(&[(VmaSource::MmapLock, absent())]);
        assert!(matches!(e, ProbeError::Rejected(_)), "{e:?}");
        let denied = ProbeError::Permission("loading: Operation not permitted".to_owned());
        let e = none_works(&[
            (VmaSource::MmapLock, absent()),
            (VmaSource::SyscallFentry, denied),
        ]);
        assert!(matches!(e, ProbeError::Permission(_)), "{e:?}");
    }

    #[test]
    fn records_round_trip_through_bytes() {
        let event = VmaEvent {
            tid: 3,
            map_count: 65_530,
            target: 7,
            pad: 0,
        };
        // SAFETY: reading the bytes of a repr(C) value with no padding holes.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const event).cast::<u8>(), size_of::<VmaEvent>())
        };
        let mut shifted = vec![0u8; 1];
        shifted.extend_from_slice(bytes);
        assert_eq!(decode::<VmaEvent>(&shifted[1..]), Some(event));
        assert_eq!(decode::<VmaEvent>(&bytes[..15]), None);
    }
}
