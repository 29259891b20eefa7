//! The event schema: every record `attach --json` writes, one JSON object per line. The
//! README documents it; fields are only ever added, never renamed or removed.

use serde::Serialize;

use crate::alert::Severity;

/// Milliseconds since the Unix epoch, the `ts` of every event.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One line of the NDJSON stream.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The probes are attached to `pid` and its state is seeded from /proc.
    TargetAttached { ts: u64, pid: u32, cmdline: String },
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
        eta_seconds: Option<u64>,
    },
    /// A condition raised earlier has cleared.
    AlertResolved {
        ts: u64,
        pid: u32,
        kind: AlertKind,
        severity: Severity,
        message: String,
    },
    /// The target exited; `attach` ends after this.
    TargetExit { ts: u64, pid: u32 },
}

/// The conditions alerts are raised for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// The VMA count will reach `vm.max_map_count` soon, or is close to it.
    VmaExhaustion,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VmaExhaustion => "vma_exhaustion",
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

#[cfg(test)]
mod tests {
    use super::*;

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
        };
        assert_eq!(
            serde_json::to_string(&event).unwrap(),
            r#"{"type":"vma","ts":1700000000000,"pid":42,"map_count":1000,"peak":1002,"max_map_count":65530,"usage":0.015,"growth_per_min":12.5,"eta_seconds":null,"events_lost":0}"#
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
        };
        assert_eq!(
            serde_json::to_string(&event).unwrap(),
            r#"{"type":"alert_resolved","ts":1,"pid":2,"kind":"vma_exhaustion","severity":"critical","message":"ok"}"#
        );
        let exit = Event::TargetExit { ts: 1, pid: 2 };
        assert_eq!(
            serde_json::to_string(&exit).unwrap(),
            r#"{"type":"target_exit","ts":1,"pid":2}"#
        );
    }
}
