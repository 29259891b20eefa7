//! BPF programs of the benches' own: empty programs (`r0 = 0; exit`) on a hook, whose run
//! count with `kernel.bpf_stats_enabled` counts the hook's hits and whose run time is what any
//! program costs there, and every loaded program's statistics.

use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use aya::{Btf, programs::loaded_programs};
use aya_obj::btf::BtfKind;

/// Where an empty program goes.
#[derive(Clone, Copy, Debug)]
pub enum Hook {
    /// A raw tracepoint, by name.
    RawTracepoint(&'static str),
    /// fentry of a kernel function, by name (its BTF id comes from the running kernel).
    Fentry(&'static str),
}

/// One program's bpf_stats.
pub struct Stats {
    pub id: u32,
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// Every loaded program's statistics (`kernel.bpf_stats_enabled` makes them count).
pub fn program_stats() -> Vec<Stats> {
    loaded_programs()
        .map(|info| {
            let info = info.expect("program info");
            Stats {
                id: info.id(),
                name: info.name_as_str().unwrap_or_default().to_owned(),
                run_time_ns: u64::try_from(info.run_time().as_nanos()).expect("run time in u64"),
                run_cnt: info.run_count(),
            }
        })
        .collect()
}

/// An empty program (`r0 = 0; exit`) attached to a hook, loaded with the bpf syscall (aya
/// loads programs from an object only); detached when dropped.
pub struct Empty {
    pub id: u32,
    _program: OwnedFd,
    _link: OwnedFd,
}

/// `union bpf_attr` for BPF_PROG_LOAD, up to `attach_prog_fd` (5.5): the kernel reads what it
/// knows of the size given.
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_prog_fd: u32,
    /// Explicit, so that it is zero, as the kernel checks.
    padding: u32,
}

/// `union bpf_attr` for BPF_RAW_TRACEPOINT_OPEN (5.5+ for fentry, whose name is null).
#[repr(C)]
struct RawTracepointOpen {
    name: u64,
    prog_fd: u32,
    padding: u32,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_FENTRY: u32 = 24;
/// `mov64 r0, 0` and `exit`.
const EMPTY: [u64; 2] = [0xb7, 0x95];

/// The bpf syscall with `attr` for a command that returns a new fd.
fn bpf<T>(command: libc::c_long, attr: &mut T) -> Result<OwnedFd, std::io::Error> {
    // SAFETY: `attr` is a `union bpf_attr` prefix of the size given, living across the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            std::ptr::from_mut(attr),
            size_of::<T>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd, which nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).expect("an fd")) })
}

impl Empty {
    pub fn attach(hook: Hook) -> Self {
        let license = c"GPL";
        let mut log = vec![0u8; 4096];
        let mut load = ProgLoad {
            insn_cnt: 2,
            insns: EMPTY.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 1,
            log_size: 4096,
            log_buf: log.as_mut_ptr() as u64,
            ..ProgLoad::default()
        };
        load.prog_name[..5].copy_from_slice(b"empty");
        let name = match hook {
            Hook::RawTracepoint(name) => {
                load.prog_type = BPF_PROG_TYPE_RAW_TRACEPOINT;
                Some(CString::new(name).expect("a tracepoint name"))
            }
            Hook::Fentry(function) => {
                load.prog_type = BPF_PROG_TYPE_TRACING;
                load.expected_attach_type = BPF_TRACE_FENTRY;
                load.attach_btf_id = Btf::from_sys_fs()
                    .expect("the kernel's BTF")
                    .id_by_type_name_kind(function, BtfKind::Func)
                    .unwrap_or_else(|e| panic!("{function} in BTF: {e}"));
                None
            }
        };
        let program = bpf(BPF_PROG_LOAD, &mut load).unwrap_or_else(|e| {
            let log = String::from_utf8_lossy(&log);
            panic!(
                "loading an empty program for {hook:?}: {e}: {}",
                log.trim_end_matches('\0')
            )
        });
        let fd = program.as_raw_fd();
        let mut open = RawTracepointOpen {
            name: name.as_ref().map_or(0, |n| n.as_ptr() as u64),
            prog_fd: u32::try_from(fd).expect("an fd"),
            padding: 0,
        };
        let link = bpf(BPF_RAW_TRACEPOINT_OPEN, &mut open)
            .unwrap_or_else(|e| panic!("attaching an empty program to {hook:?}: {e}"));
        let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).expect("fdinfo");
        let id = fdinfo
            .lines()
            .find_map(|l| l.strip_prefix("prog_id:")?.trim().parse().ok())
            .expect("prog_id in fdinfo");
        Self {
            id,
            _program: program,
            _link: link,
        }
    }
}
