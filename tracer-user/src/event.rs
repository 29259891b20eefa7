//! The event schema: every record `attach --json` writes, one JSON object per line. The
//! README documents it; fields are only ever added, never renamed or removed.

use std::{collections::BTreeMap, net::IpAddr};

use bytes::{BufMut as _, BytesMut};

use serde::Serialize;

use crate::{
    alert::{Change, Severity},
    death::Death,
    tcp::proc::state_name,
};

/// Milliseconds since the Unix epoch, the `ts` of every event.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The line that tells an NDJSON reader it missed `count` events for reading too slowly
/// (`agent`'s `/events`; `tcp_state` lines of `attach --json`).
pub fn dropped_line(count: u64) -> String {
    format!(
        "{{\"type\":\"events_dropped\",\"ts\":{},\"count\":{count}}}\n",
        now_ms()
    )
}

/// Seconds of CLOCK_MONOTONIC: the clock of the kernel's `bpf_ktime_get_ns`, so kernel
/// timestamps and the agent's own can be compared.
pub fn monotonic() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Both clocks read at one moment, to give kernel timestamps (monotonic) their `ts`; read once
/// per batch of records rather than twice per record.
#[derive(Clone, Copy, Debug)]
pub struct Clocks {
    monotonic: f64,
    ms: u64,
}

impl Clocks {
    pub fn now() -> Self {
        Self {
            monotonic: monotonic(),
            ms: now_ms(),
        }
    }

    /// The `ts` of something that happened at `at` seconds of [`monotonic`] time.
    pub fn ms_at(self, at: f64) -> u64 {
        let ago = (self.monotonic - at).max(0.0);
        self.ms.saturating_sub((ago * 1000.0) as u64)
    }
}

/// One line of the NDJSON stream.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The probes are attached to `pid` (or, `mode` "proc", its /proc is sampled) and its
    /// state is seeded from /proc.
    TargetAttached {
        ts: u64,
        pid: u32,
        cmdline: String,
        /// "ebpf" or "proc".
        mode: &'static str,
        /// Where the VMA count comes from on this kernel: `mmap_lock`, `syscall_fentry` or
        /// `syscall_tracepoint` (README: what each can miss).
        vma_source: &'static str,
    },
    /// The VMA count, at least once per second.
    Vma {
        ts: u64,
        pid: u32,
        /// `mm->map_count`: lines of /proc/PID/maps less `[vsyscall]`.
        map_count: u32,
        /// Highest count seen since the previous `vma` event (transient spikes included).
        peak: u32,
        /// `vm.max_map_count`, or the `--max-map-count` what-if value.
        max_map_count: u32,
        /// `map_count / max_map_count`.
        usage: f64,
        /// Trend of the count in mappings per minute; null until 5 s of samples exist.
        growth_per_min: Option<f64>,
        /// Seconds until the trend reaches the limit; null when the count is not growing.
        eta_seconds: Option<u64>,
        /// Ring-buffer records dropped since attach (the count itself stays exact).
        events_lost: u64,
        /// Where the count will hold: a Kafka broker's steady state from its retention, roll
        /// cadence and partitions; null when unknown (not a broker, unlimited retention).
        steady_state: Option<u32>,
        /// Seconds until the count crosses `max_map_count` on its way to the steady state;
        /// null when the steady state is under the limit or unknown.
        steady_state_crossing_seconds: Option<u64>,
        /// The trend over 6 hours (a sample every 5 minutes), mappings per hour; null for its
        /// first 20 minutes.
        growth_per_hour_6h: Option<f64>,
        /// The trend over 7 days (a sample an hour), mappings per day; null for its first 4 hours.
        growth_per_day_7d: Option<f64>,
    },
    /// A one-time jump of the VMA count (flat before and after, the change within two
    /// seconds): reported as what it is rather than as a trend; the growth after it is the
    /// growth since.
    VmaStep {
        /// When the count reached its new level.
        ts: u64,
        pid: u32,
        /// The levels before and after (medians of the flat seconds around the jump).
        from: u32,
        to: u32,
        /// `to - from`.
        change: i64,
        /// Seconds the jump took (1 when it fell between two samples).
        seconds: f64,
    },
    /// What the mappings are, from /proc/PID/maps; on attach and when the count moved.
    VmaBreakdown {
        ts: u64,
        pid: u32,
        /// Lines of /proc/PID/maps at the time of the read, less `[vsyscall]`.
        map_count: u32,
        /// Time the read and classification took.
        read_ms: f64,
        groups: Vec<MappingGroup>,
    },
    /// A condition started; sent once until it is resolved.
    Alert {
        ts: u64,
        pid: u32,
        kind: AlertKind,
        severity: Severity,
        message: String,
        #[serde(flatten)]
        detail: AlertDetail,
    },
    /// A condition raised earlier has cleared.
    AlertResolved {
        ts: u64,
        pid: u32,
        kind: AlertKind,
        severity: Severity,
        message: String,
        /// The thread group of a `thread_leak`, `threads_saturated` or `stall`.
        #[serde(skip_serializing_if = "Option::is_none")]
        group: Option<String>,
    },
    /// A state transition of one of the target's TCP sockets.
    TcpState {
        ts: u64,
        pid: u32,
        family: u8,
        saddr: IpAddr,
        sport: u16,
        daddr: IpAddr,
        dport: u16,
        old: &'static str,
        new: &'static str,
    },
    /// The target's TCP sockets, at least once per second.
    Sockets {
        ts: u64,
        pid: u32,
        /// Sockets the target holds an fd for, per state: what `ss -tanp` shows with its pid.
        states: StateCounts,
        /// Connections on its listening ports it has not accepted yet, per state.
        accept_queue: StateCounts,
        /// Sockets it closed that the kernel is still finishing, per state.
        orphaned: StateCounts,
        /// Age of the oldest CLOSE_WAIT socket (held or queued); null when there is none.
        close_wait_oldest_seconds: Option<f64>,
        /// CLOSE_WAIT sockets older than `--close-wait-after`: the leak.
        close_wait_leaked: u32,
        /// New connections per second on its listening ports, over the last 10 s.
        new_connections_per_second: f64,
        /// Remote addresses with the most ESTABLISHED connections to it.
        peers: Vec<PeerCount>,
        /// Transition records dropped because the ring buffer was full.
        events_lost: u64,
        /// Sockets not followed because the kernel's socket table (`--max-sockets`) was full.
        untracked: u64,
    },
    /// The target's open file descriptors against its `RLIMIT_NOFILE`, at least once per
    /// second.
    Fds {
        ts: u64,
        pid: u32,
        /// Entries of /proc/PID/fd.
        count: u32,
        /// The soft `RLIMIT_NOFILE` (`Max open files` of /proc/PID/limits); null if unlimited.
        limit: Option<u64>,
        /// `count / limit` (0 without a limit).
        usage: f64,
        /// Trend of the count per minute; null until 5 s of samples exist.
        growth_per_min: Option<f64>,
        /// Seconds until the trend reaches the limit; null when not growing.
        eta_seconds: Option<u64>,
    },
    /// The target's memory against the memory limit of its cgroup, at least once per second.
    Memory {
        ts: u64,
        pid: u32,
        /// `VmRSS` and `RssAnon` of /proc/PID/status.
        rss_bytes: u64,
        anon_bytes: u64,
        /// `v1` or `v2`; null when the memory cgroup cannot be read.
        cgroup: Option<&'static str>,
        /// The cgroup's usage less its inactive file cache: what the OOM killer cannot
        /// reclaim (what Kubernetes calls the working set); null without a cgroup.
        working_set_bytes: Option<u64>,
        /// The lowest memory limit of the cgroup and its ancestors; null when unlimited.
        limit_bytes: Option<u64>,
        /// `working_set_bytes / limit_bytes` (0 without a limit).
        usage: f64,
        /// Trend of the working set (the RSS without a cgroup) in bytes per minute.
        growth_per_min: Option<f64>,
        /// Seconds until the trend reaches the limit; null when not growing or unlimited.
        eta_seconds: Option<u64>,
        /// glibc malloc arenas (64 MiB reservations) in /proc/PID/maps at its last read.
        malloc_arenas: u32,
    },
    /// The target's threads, grouped by name, at least once per second.
    Threads {
        ts: u64,
        pid: u32,
        /// Threads alive: what /proc/PID/status `Threads:` says.
        count: u32,
        /// Largest groups first.
        groups: Vec<ThreadGroup>,
        /// Thread records dropped because the ring buffer was full (counts are then re-read
        /// from /proc).
        events_lost: u64,
        /// Threads whose time is not accounted because the kernel's table was full.
        untracked: u64,
    },
    /// A table rebuilt from the kernel's own view: after a ring buffer dropped records (the
    /// counts would stay wrong otherwise), or when the periodic audit of the socket counts
    /// against sock_diag found a difference.
    Resynced {
        ts: u64,
        pid: u32,
        /// `sockets` (from sock_diag and /proc/PID/fd) or `threads` (from /proc/PID/task).
        table: &'static str,
        /// `records_lost`, `missed_runs` (socket-probe runs the kernel skipped, a resync
        /// told only when it corrected something) or `audit`.
        reason: &'static str,
        /// Entries added, removed or changed.
        corrected: u32,
        /// The counts before and after: for sockets the held ones per state (as `states`
        /// of `sockets`) and `accept_queue`; for threads `threads`.
        before: BTreeMap<&'static str, u32>,
        after: BTreeMap<&'static str, u32>,
    },
    /// The target exited; `attach` ends after this. Every alert still active was resolved
    /// just before.
    TargetExit {
        ts: u64,
        pid: u32,
        #[serde(flatten)]
        death: Death,
    },
}

impl Event {
    /// Appends the event's NDJSON line, with its newline, to `buf`. `tcp_state`, written once
    /// per transition of the target's sockets (100,000s a second on a busy host), is written
    /// directly: through serde_json it took about 1 µs of the tracer's CPU per line, most of it
    /// escaping field names and growing the buffer a piece at a time. Both give the same bytes
    /// (tested).
    pub fn write_line(&self, buf: &mut BytesMut) -> serde_json::Result<()> {
        if let &Self::TcpState {
            ts,
            pid,
            family,
            saddr,
            sport,
            daddr,
            dport,
            old,
            new,
        } = self
        {
            let mut number = itoa::Buffer::new();
            buf.reserve(TCP_STATE_LINE);
            buf.extend_from_slice(br#"{"type":"tcp_state","ts":"#);
            buf.extend_from_slice(number.format(ts).as_bytes());
            buf.extend_from_slice(br#","pid":"#);
            buf.extend_from_slice(number.format(pid).as_bytes());
            buf.extend_from_slice(br#","family":"#);
            buf.extend_from_slice(number.format(family).as_bytes());
            buf.extend_from_slice(br#","saddr":""#);
            write_address(buf, saddr);
            buf.extend_from_slice(br#"","sport":"#);
            buf.extend_from_slice(number.format(sport).as_bytes());
            buf.extend_from_slice(br#","daddr":""#);
            write_address(buf, daddr);
            buf.extend_from_slice(br#"","dport":"#);
            buf.extend_from_slice(number.format(dport).as_bytes());
            buf.extend_from_slice(br#","old":""#);
            buf.extend_from_slice(old.as_bytes());
            buf.extend_from_slice(br#"","new":""#);
            buf.extend_from_slice(new.as_bytes());
            buf.extend_from_slice(b"\"}");
        } else {
            serde_json::to_writer((&mut *buf).writer(), self)?;
        }
        buf.put_u8(b'\n');
        Ok(())
    }

    /// The event that reports a change of a condition: an `alert` with its detail when it is
    /// raised, an `alert_resolved` when it clears.
    pub fn alert_change(
        pid: u32,
        ts: u64,
        (kind, severity): (AlertKind, Severity),
        change: Change,
        message: String,
        detail: AlertDetail,
    ) -> Self {
        match change {
            Change::Raise => Self::Alert {
                ts,
                pid,
                kind,
                severity,
                message,
                detail,
            },
            Change::Resolve => Self::AlertResolved {
                ts,
                pid,
                kind,
                severity,
                message,
                group: detail.group().map(str::to_owned),
            },
        }
    }

    /// "resynced sockets after lost records: 12 corrected (ESTABLISHED 0 -> 200, ...)" for a
    /// [`Event::Resynced`]; `None` for any other event.
    pub fn resync_line(&self) -> Option<String> {
        let Self::Resynced {
            table,
            reason,
            corrected,
            before,
            after,
            ..
        } = self
        else {
            return None;
        };
        let why = match *reason {
            "audit" => "by the audit",
            "missed_runs" => "after probe runs the kernel skipped",
            _ => "after lost records",
        };
        let changes: Vec<String> = before
            .keys()
            .chain(after.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter_map(|key| {
                let (was, is) = (before.get(key).copied(), after.get(key).copied());
                (was != is).then(|| format!("{key} {} -> {}", was.unwrap_or(0), is.unwrap_or(0)))
            })
            .collect();
        Some(format!(
            "resynced {table} {why}: {corrected} corrected{}",
            if changes.is_empty() {
                String::new()
            } else {
                format!(" ({})", changes.join(", "))
            }
        ))
    }
}

/// Threads of one name (less its number) in a [`Event::Threads`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ThreadGroup {
    /// The threads' name less a trailing number (`kafka-request-h`: the kernel keeps 15 bytes).
    pub name: String,
    pub threads: u32,
    /// Share of the group's time spent asleep (blocked by choice) over the saturation window;
    /// 1 - idle_ratio is how busy it is. Null until a report interval has passed.
    pub idle_ratio: Option<f64>,
    /// Threads not run for longer than `--stall-after`.
    pub stalled: u32,
}

/// A thread of a [`AlertDetail::Stall`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StalledThread {
    pub tid: u32,
    pub name: String,
    /// Seconds since it last ran (since attach, if it has not run since).
    pub blocked_seconds: u64,
    /// The syscall it waits in (`futex` for a lock), from /proc/PID/task/TID/syscall.
    pub syscall: Option<String>,
    /// The kernel function it sleeps in, from /proc/PID/task/TID/wchan.
    pub wchan: Option<String>,
}

/// What an alert is about, beyond its message.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum AlertDetail {
    /// A count growing toward its limit (`vma_exhaustion`, `fd_exhaustion`, `memory_limit`).
    Eta { eta_seconds: Option<u64> },
    Sockets {
        count: u32,
        oldest_seconds: f64,
        peers: Vec<PeerCount>,
    },
    Surge {
        new_connections_per_second: f64,
        baseline_per_second: f64,
        peers: Vec<PeerCount>,
    },
    Threads {
        group: String,
        threads: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        growth: Option<u32>,
        idle_ratio: Option<f64>,
    },
    Stall {
        group: String,
        threads: Vec<StalledThread>,
        /// What to run now.
        hint: String,
    },
    /// `target_died`: the fields of its `target_exit`.
    Death(Death),
}

impl AlertDetail {
    /// The thread group the alert is about, if it is about one.
    pub fn group(&self) -> Option<&str> {
        match self {
            Self::Threads { group, .. } | Self::Stall { group, .. } => Some(group),
            _ => None,
        }
    }
}

/// Connections with one remote address: to one of the target's listening ports
/// (`local_port`, where the target serves) or to one remote service (`remote_port`, where the
/// target is the client).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerCount {
    pub addr: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_port: Option<u16>,
    pub count: u32,
}

/// Socket counts per TCP state, serialized as an object keyed by state name. With `all`, every
/// state a process's socket can be in is present (zeros included), so the schema is stable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateCounts {
    pub counts: [u32; 16],
    pub all: bool,
}

/// States a socket of a process can be in (TIME_WAIT and NEW_SYN_RECV belong to none).
pub const PROCESS_STATES: [u8; 9] = [1, 2, 3, 4, 5, 8, 9, 10, 11];

impl StateCounts {
    pub fn get(&self, state: u8) -> u32 {
        self.counts.get(usize::from(state)).copied().unwrap_or(0)
    }

    pub fn add(&mut self, state: u8) {
        if let Some(count) = self.counts.get_mut(usize::from(state)) {
            *count += 1;
        }
    }

    pub fn total(&self) -> u32 {
        self.counts.iter().sum()
    }
}

impl Serialize for StateCounts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = serializer.serialize_map(None)?;
        for state in PROCESS_STATES {
            let count = self.get(state);
            if self.all || count > 0 {
                map.serialize_entry(state_name(state), &count)?;
            }
        }
        map.end()
    }
}

/// The conditions alerts are raised for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// The VMA count will reach `vm.max_map_count` soon, or is close to it.
    VmaExhaustion,
    /// Sockets the peers closed sit in CLOSE_WAIT: the process is not closing them.
    CloseWaitLeak,
    /// The process closed its side and is left waiting in FIN_WAIT2 for peers that do not.
    FinWait2Pileup,
    /// New connections arrive far faster than usual.
    ConnectionSurge,
    /// Open file descriptors will reach `RLIMIT_NOFILE` soon, or are close to it.
    FdExhaustion,
    /// A group of threads keeps growing.
    ThreadLeak,
    /// Memory will reach the cgroup's limit (the OOM killer) soon, or is close to it.
    MemoryLimit,
    /// A group of threads is busy nearly all the time.
    ThreadsSaturated,
    /// Request-handling threads stopped running while work keeps arriving.
    Stall,
    /// The target died (`tracer agent` only): how, in the message.
    TargetDied,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VmaExhaustion => "vma_exhaustion",
            Self::CloseWaitLeak => "close_wait_leak",
            Self::FinWait2Pileup => "fin_wait2_pileup",
            Self::ConnectionSurge => "connection_surge",
            Self::FdExhaustion => "fd_exhaustion",
            Self::ThreadLeak => "thread_leak",
            Self::MemoryLimit => "memory_limit",
            Self::ThreadsSaturated => "threads_saturated",
            Self::Stall => "stall",
            Self::TargetDied => "target_died",
        }
    }
}

/// One group of a [`Event::VmaBreakdown`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MappingGroup {
    /// `file`, `deleted_file`, `shared_memory`, `anonymous`, `named_anonymous`, `heap`,
    /// `stack` or `kernel`.
    pub class: &'static str,
    /// `*.index` for files, permissions for anonymous mappings, the name otherwise.
    pub pattern: String,
    /// Common directory of the group's files; empty for other classes.
    pub dir: String,
    pub mappings: u32,
    pub files: u32,
    pub bytes: u64,
}

/// Room for a `tcp_state` line with two IPv6 addresses.
const TCP_STATE_LINE: usize = 256;

/// An address as serde writes an `IpAddr` (its `Display`); IPv4, nearly every line, octet by
/// octet. Neither form has a character JSON escapes. (State names, the other strings of the
/// line, are `tcp::proc::state_name`'s: capitals and underscores.)
fn write_address(buf: &mut BytesMut, address: IpAddr) {
    match address {
        IpAddr::V4(v4) => {
            let mut number = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf.put_u8(b'.');
                }
                buf.extend_from_slice(number.format(octet).as_bytes());
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            // Writing to a BytesMut cannot fail.
            let _ = write!(buf.writer(), "{v6}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_state_lines_are_what_serde_writes() {
        let addresses: [IpAddr; 5] = [
            "127.0.0.1".parse().unwrap(),
            "0.0.0.0".parse().unwrap(),
            "255.255.10.1".parse().unwrap(),
            "::ffff:10.0.0.1".parse().unwrap(),
            "fe80::1:2:3:4".parse().unwrap(),
        ];
        let mut buf = BytesMut::new();
        for (i, (&saddr, &daddr)) in addresses.iter().zip(addresses.iter().rev()).enumerate() {
            for state in 0..=13 {
                let event = Event::TcpState {
                    ts: u64::MAX - i as u64,
                    pid: u32::MAX >> i,
                    family: if saddr.is_ipv4() { 4 } else { 6 },
                    saddr,
                    sport: 65_535 >> state,
                    daddr,
                    dport: state.into(),
                    old: state_name(state),
                    new: state_name(13 - state),
                };
                event.write_line(&mut buf).unwrap();
                let line = buf.split();
                assert_eq!(
                    std::str::from_utf8(&line).unwrap(),
                    format!("{}\n", serde_json::to_string(&event).unwrap())
                );
            }
        }
        // Every other event through serde, with its newline.
        let other = Event::TargetAttached {
            ts: 1,
            pid: 2,
            cmdline: "java -Dname=\"quoted\\\" kafka.Kafka".into(),
            mode: "ebpf",
            vma_source: "mmap_lock",
        };
        other.write_line(&mut buf).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf).unwrap(),
            format!("{}\n", serde_json::to_string(&other).unwrap())
        );
    }

    #[test]
    fn vma_event_matches_the_documented_schema() {
        let event = Event::Vma {
            ts: 1_700_000_000_000,
            pid: 42,
            map_count: 1000,
            peak: 1002,
            max_map_count: 65530,
            usage: 0.015,
            growth_per_min: Some(12.5),
            eta_seconds: None,
            events_lost: 0,
            steady_state: Some(70_340),
            steady_state_crossing_seconds: None,
            growth_per_hour_6h: Some(410.0),
            growth_per_day_7d: None,
        };
        assert_eq!(
            serde_json::to_string(&event).unwrap(),
            r#"{"type":"vma","ts":1700000000000,"pid":42,"map_count":1000,"peak":1002,"max_map_count":65530,"usage":0.015,"growth_per_min":12.5,"eta_seconds":null,"events_lost":0,"steady_state":70340,"steady_state_crossing_seconds":null,"growth_per_hour_6h":410.0,"growth_per_day_7d":null}"#
        );
    }

    #[test]
    fn socket_counts_list_every_process_state() {
        let mut states = StateCounts {
            all: true,
            ..StateCounts::default()
        };
        states.add(8);
        states.add(8);
        states.add(1);
        let json = serde_json::to_string(&states).unwrap();
        assert_eq!(
            json,
            r#"{"ESTABLISHED":1,"SYN_SENT":0,"SYN_RECV":0,"FIN_WAIT1":0,"FIN_WAIT2":0,"CLOSE_WAIT":2,"LAST_ACK":0,"LISTEN":0,"CLOSING":0}"#
        );
        let sparse = StateCounts {
            all: false,
            ..states
        };
        assert_eq!(
            serde_json::to_string(&sparse).unwrap(),
            r#"{"ESTABLISHED":1,"CLOSE_WAIT":2}"#
        );
        assert_eq!(states.total(), 3);
    }

    #[test]
    fn alert_details_are_flattened() {
        let event = Event::Alert {
            ts: 1,
            pid: 2,
            kind: AlertKind::CloseWaitLeak,
            severity: Severity::Warning,
            message: "m".into(),
            detail: AlertDetail::Sockets {
                count: 3,
                oldest_seconds: 7.5,
                peers: vec![PeerCount {
                    addr: "::ffff:127.0.0.1".parse().unwrap(),
                    local_port: Some(9092),
                    remote_port: None,
                    count: 3,
                }],
            },
        };
        assert_eq!(
            serde_json::to_string(&event).unwrap(),
            r#"{"type":"alert","ts":1,"pid":2,"kind":"close_wait_leak","severity":"warning","message":"m","count":3,"oldest_seconds":7.5,"peers":[{"addr":"::ffff:127.0.0.1","local_port":9092,"count":3}]}"#
        );
    }

    #[test]
    fn alerts_carry_kind_and_severity_as_strings() {
        let event = Event::AlertResolved {
            ts: 1,
            pid: 2,
            kind: AlertKind::VmaExhaustion,
            severity: Severity::Critical,
            message: "ok".into(),
            group: None,
        };
        assert_eq!(
            serde_json::to_string(&event).unwrap(),
            r#"{"type":"alert_resolved","ts":1,"pid":2,"kind":"vma_exhaustion","severity":"critical","message":"ok"}"#
        );
        let exit = Event::TargetExit {
            ts: 1,
            pid: 2,
            death: Death::default(),
        };
        assert_eq!(
            serde_json::to_string(&exit).unwrap(),
            r#"{"type":"target_exit","ts":1,"pid":2,"exit_code":null,"signal":null,"oom_killed":false,"reason":""}"#
        );
    }
}
