//! The kernel side as the agent holds it: the embedded eBPF object, loaded for one target with
//! its load-time globals, its programs attached, and handles on its maps.
//!
//! Everything is owned by [`Probes`]: dropping it detaches the programs and frees the maps, so
//! nothing is left attached when the agent exits, by any path.

use std::fmt;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::RawTracePoint,
};
use tracer_common::{
    config::{
        ABSENT, KERNEL_LAYOUT_GLOBAL, KernelLayout, PidNamespace, TARGET_PIDNS_GLOBAL,
        TARGET_TGID_GLOBAL,
    },
    lost::{LOST_SLOTS, LOST_TCP, LOST_VMA, UNTRACKED_TCP},
    tcp::{ListenKey, TcpEvent, TupleKey},
    vma::{VmaEvent, VmaRegister},
};

use crate::btf::{Btf, BtfError};

/// The eBPF object built by `build.rs`, embedded so `tracer` is one self-contained file.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf.o"));

/// `pt_regs` member holding the syscall number on this architecture.
#[cfg(target_arch = "x86_64")]
const REGS_SYSCALL_NR: &str = "orig_ax";
#[cfg(target_arch = "aarch64")]
const REGS_SYSCALL_NR: &str = "syscallno";

/// Resolves where the programs' kernel fields are in the running kernel, from its BTF.
pub fn kernel_layout(btf: &Btf) -> Result<KernelLayout, BtfError> {
    let sock_common = |field: &str| btf.member_offset("sock_common", field);
    Ok(KernelLayout {
        task_mm: btf.member_offset("task_struct", "mm")?,
        mm_map_count: btf.member_offset("mm_struct", "map_count")?,
        regs_syscall_nr: btf.member_offset("pt_regs", REGS_SYSCALL_NR)?,
        task_files: btf.member_offset("task_struct", "files")?,
        files_fdt: btf.member_offset("files_struct", "fdt")?,
        fdtable_fd: btf.member_offset("fdtable", "fd")?,
        file_private_data: btf.member_offset("file", "private_data")?,
        socket_sk: btf.member_offset("socket", "sk")?,
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
        nr_accept: SYS_ACCEPT,
        nr_accept4: SYS_ACCEPT4,
    })
}

const SYS_ACCEPT: u32 = libc::SYS_accept as u32;
const SYS_ACCEPT4: u32 = libc::SYS_accept4 as u32;

/// Why the programs could not be loaded or attached; the caller words the fix.
#[derive(Debug)]
pub enum ProbeError {
    /// Creating the maps or loading a program was refused for lack of privilege or memlock.
    Permission(String),
    /// The kernel's verifier rejected a program (an old or unusual kernel).
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
        verifier |= message.contains("verifier");
        text.push_str(": ");
        text.push_str(&message);
        source = e.source();
    }
    if permission {
        ProbeError::Permission(text)
    } else if verifier {
        ProbeError::Rejected(text)
    } else {
        ProbeError::Other(text)
    }
}

/// The loaded and attached kernel side for one target.
pub struct Probes {
    /// Owns the programs and their links; kept for as long as the probes live.
    _ebpf: Ebpf,
    /// Forwards the programs' aya-log diagnostics to `log`; closing it would break later loads.
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    vma_state: Array<MapData, VmaRegister>,
    vma_events: Option<RingBuf<MapData>>,
    tcp_events: Option<RingBuf<MapData>>,
    tcp_listen: HashMap<MapData, ListenKey, u8>,
    tcp_seed: HashMap<MapData, TupleKey, u8>,
    tcp_seed_left: Array<MapData, u64>,
    lost: PerCpuArray<MapData, u64>,
}

/// The programs and the tracepoints they attach to.
const PROGRAMS: [(&str, &str); 2] = [
    ("tracer_sysexit", "sys_exit"),
    ("tracer_tcpstate", "inet_sock_set_state"),
];

impl Probes {
    /// Loads the embedded object for `tgid` (a pid in `pidns`) and attaches every program.
    /// `max_sockets` bounds
    /// the kernel's table of the target's sockets.
    pub fn attach(
        tgid: u32,
        pidns: &PidNamespace,
        layout: &KernelLayout,
        max_sockets: u32,
    ) -> Result<Self, ProbeError> {
        let mut ebpf = EbpfLoader::new()
            // No CO-RE relocations in the object; skip parsing the kernel's BTF a second time.
            .btf(None)
            .override_global(TARGET_TGID_GLOBAL, &tgid, true)
            .override_global(TARGET_PIDNS_GLOBAL, pidns, true)
            .override_global(KERNEL_LAYOUT_GLOBAL, layout, true)
            .map_max_entries("TCP_SOCKETS", max_sockets)
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
            program.attach(tracepoint).map_err(|e| {
                classify(
                    &format!("attaching {name} to raw tracepoint {tracepoint}"),
                    &e,
                )
            })?;
        }

        Ok(Self {
            vma_state: take(&mut ebpf, "VMA_STATE")?,
            vma_events: Some(take(&mut ebpf, "VMA_EVENTS")?),
            tcp_events: Some(take(&mut ebpf, "TCP_EVENTS")?),
            tcp_listen: take(&mut ebpf, "TCP_LISTENERS")?,
            tcp_seed: take(&mut ebpf, "TCP_SEED")?,
            tcp_seed_left: take(&mut ebpf, "TCP_SEED_LEFT")?,
            lost: take(&mut ebpf, "LOST")?,
            _ebpf: ebpf,
            logger,
        })
    }

    /// Hands the kernel the target's sockets found in /proc: its listening ports, and the
    /// sockets to adopt at their first transition. Returns how many did not fit.
    pub fn seed_tcp(
        &mut self,
        listen: &[ListenKey],
        sockets: &[TupleKey],
    ) -> Result<u64, aya::maps::MapError> {
        for key in listen {
            self.tcp_listen.insert(key, 0, 0)?;
        }
        let mut seeded = 0;
        for key in sockets {
            if self.tcp_seed.insert(key, 0, 0).is_ok() {
                seeded += 1;
            }
        }
        self.tcp_seed_left.set(0, seeded, 0)?;
        Ok(sockets.len() as u64 - seeded)
    }

    /// The kernel's register of the newest VMA count reading.
    pub fn vma_register(&self) -> Result<VmaRegister, aya::maps::MapError> {
        self.vma_state.get(&0, 0)
    }

    /// Hands out the ring buffers (once each), for the drain loop.
    pub fn take_rings(&mut self) -> Option<(RingBuf<MapData>, RingBuf<MapData>)> {
        Some((self.vma_events.take()?, self.tcp_events.take()?))
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
        })
    }

    /// Forwards pending kernel-side log lines.
    pub fn flush_log(&mut self) {
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
    }
}

/// Counts of what the kernel side dropped (see `tracer_common::lost`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lost {
    pub vma_records: u64,
    pub tcp_records: u64,
    pub tcp_untracked: u64,
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
    fn records_round_trip_through_bytes() {
        let event = VmaEvent {
            ts_ns: 1,
            ticket: 2,
            ret: -12,
            tid: 3,
            map_count: 65_530,
            syscall_nr: 9,
            pad: 0,
            comm: *b"kafka-log-clean\0",
        };
        // SAFETY: reading the bytes of a repr(C) value with no padding holes.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const event).cast::<u8>(), size_of::<VmaEvent>())
        };
        let mut shifted = vec![0u8; 1];
        shifted.extend_from_slice(bytes);
        assert_eq!(decode::<VmaEvent>(&shifted[1..]), Some(event));
        assert_eq!(decode::<VmaEvent>(&bytes[..55]), None);
    }
}
