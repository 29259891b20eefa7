//! The kernel side as the agent holds it: the embedded eBPF object, loaded for one target with
//! its load-time globals, its programs attached, and handles on its maps.
//!
//! Everything is owned by [`Probes`]: dropping it detaches the programs and frees the maps, so
//! nothing is left attached when the agent exits, by any path.

use std::fmt;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::RawTracePoint,
};
use tracer_common::{
    config::{KERNEL_OFFSETS_GLOBAL, KernelOffsets, TARGET_TGID_GLOBAL},
    lost::{LOST_SLOTS, LOST_VMA},
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

/// Resolves the kernel field offsets the programs need from the running kernel's BTF.
pub fn kernel_offsets(btf: &Btf) -> Result<KernelOffsets, BtfError> {
    Ok(KernelOffsets {
        task_mm: btf.member_offset("task_struct", "mm")?,
        mm_map_count: btf.member_offset("mm_struct", "map_count")?,
        regs_syscall_nr: btf.member_offset("pt_regs", REGS_SYSCALL_NR)?,
        pad: 0,
    })
}

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
    lost: PerCpuArray<MapData, u64>,
}

impl Probes {
    /// Loads the embedded object for `tgid` and attaches every program.
    pub fn attach(tgid: u32, offsets: &KernelOffsets) -> Result<Self, ProbeError> {
        let mut ebpf = EbpfLoader::new()
            // No CO-RE relocations in the object; skip parsing the kernel's BTF a second time.
            .btf(None)
            .override_global(TARGET_TGID_GLOBAL, &tgid, true)
            .override_global(KERNEL_OFFSETS_GLOBAL, offsets, true)
            .load(OBJECT)
            .map_err(|e| classify("loading the eBPF object", &e))?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                log::debug!("no eBPF logger: {e}");
                None
            }
        };
        let program: &mut RawTracePoint = ebpf
            .program_mut("vma_sys_exit")
            .ok_or_else(|| ProbeError::Other("the object has no vma_sys_exit program".into()))?
            .try_into()
            .map_err(|e| classify("vma_sys_exit", &e))?;
        program
            .load()
            .map_err(|e| classify("loading vma_sys_exit", &e))?;
        program
            .attach("sys_exit")
            .map_err(|e| classify("attaching vma_sys_exit to raw tracepoint sys_exit", &e))?;

        let vma_state = take(&mut ebpf, "VMA_STATE")?;
        let vma_events = take(&mut ebpf, "VMA_EVENTS")?;
        let lost = take(&mut ebpf, "LOST")?;
        Ok(Self {
            _ebpf: ebpf,
            logger,
            vma_state,
            vma_events: Some(vma_events),
            lost,
        })
    }

    /// The kernel's register of the newest VMA count reading.
    pub fn vma_register(&self) -> Result<VmaRegister, aya::maps::MapError> {
        self.vma_state.get(&0, 0)
    }

    /// Hands out the ring buffer of VMA change records (once), for the drain loop.
    pub fn take_vma_events(&mut self) -> Option<RingBuf<MapData>> {
        self.vma_events.take()
    }

    /// Records dropped because `VMA_EVENTS` was full, summed over CPUs.
    pub fn vma_lost(&self) -> Result<u64, aya::maps::MapError> {
        self.lost_in(LOST_VMA)
    }

    fn lost_in(&self, slot: u32) -> Result<u64, aya::maps::MapError> {
        debug_assert!(slot < LOST_SLOTS);
        Ok(self.lost.get(&slot, 0)?.iter().sum())
    }

    /// Forwards pending kernel-side log lines.
    pub fn flush_log(&mut self) {
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
    }
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

/// Decodes one `VMA_EVENTS` record: length first, then an unaligned read.
pub fn decode_vma_event(bytes: &[u8]) -> Option<VmaEvent> {
    if bytes.len() < size_of::<VmaEvent>() {
        return None;
    }
    // SAFETY: the length is checked; VmaEvent is repr(C) plain data valid for any bytes.
    Some(unsafe { bytes.as_ptr().cast::<VmaEvent>().read_unaligned() })
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
        assert_eq!(decode_vma_event(&shifted[1..]), Some(event));
        assert_eq!(decode_vma_event(&bytes[..55]), None);
    }
}
