//! Where a Kafka broker's VMA count will hold: its steady state, from its own settings and
//! its log directories.
//!
//! Each partition keeps its segments for `log.retention.*` and starts a new one every
//! `log.roll.*` (or sooner, when `log.segment.bytes` fill), and each segment maps its
//! `.index` and `.timeindex`. So a partition holds about `retention / roll + 1` segments (the
//! active one and those younger than the retention), two mappings each, and the count of a
//! broker levels off at that times its partitions plus the JVM's own mappings. That end state
//! is known the day the broker starts with its settings, days before the count gets there.
//!
//! Inputs: the broker's `server.properties` (found on its command line as `kafka.Kafka` takes
//! it, read through `/proc/PID/root` so a sidecar sees the broker's file, `--override`s
//! applied), the index mappings of /proc/PID/maps grouped by partition directory
//! (`<topic>-<N>` under a log dir), and the segment files of each partition: their names (the
//! base offsets: a partition whose oldest segment does not start at 0 has deleted segments
//! already, so what it keeps is observed, per-topic overrides included) and modification times
//! (the cadence at which they really roll).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::SystemTime,
};

use crate::units::thousands;

/// The main class of a broker (`kafka-server-start.sh` runs `kafka.Kafka server.properties`).
const MAIN_CLASS: &str = "kafka.Kafka";
/// Kafka's defaults: `log.roll.hours=168`, `log.retention.hours=168`, `log.dirs=/tmp/kafka-logs`.
const DEFAULT_ROLL_MS: f64 = 168.0 * 3_600_000.0;
const DEFAULT_RETENTION_MS: f64 = 168.0 * 3_600_000.0;
const DEFAULT_LOG_DIR: &str = "/tmp/kafka-logs";
const DEFAULT_SEGMENT_BYTES: u64 = 1 << 30;

/// The log settings of a broker that decide how many segments it keeps.
#[derive(Clone, Debug, PartialEq)]
pub struct LogConfig {
    /// The properties file, as the broker sees it.
    pub file: PathBuf,
    pub log_dirs: Vec<String>,
    /// `log.roll.ms`, else `log.roll.hours`.
    pub roll_ms: f64,
    /// `log.retention.ms`, else `.minutes`, else `.hours`; `None` for unlimited (-1).
    pub retention_ms: Option<f64>,
    pub segment_bytes: u64,
}

impl LogConfig {
    /// The settings from the properties `props`, with Kafka's precedence and defaults.
    pub fn from_properties(file: PathBuf, props: &HashMap<String, String>) -> Result<Self, String> {
        let number = |key: &str| -> Result<Option<f64>, String> {
            props
                .get(key)
                .map(|v| {
                    v.trim()
                        .parse::<f64>()
                        .map_err(|_| format!("{key}={v} in {} is not a number", file.display()))
                })
                .transpose()
        };
        let roll_ms = match (number("log.roll.ms")?, number("log.roll.hours")?) {
            (Some(ms), _) => ms,
            (None, Some(hours)) => hours * 3_600_000.0,
            (None, None) => DEFAULT_ROLL_MS,
        };
        let retention_ms = match (
            number("log.retention.ms")?,
            number("log.retention.minutes")?,
            number("log.retention.hours")?,
        ) {
            (Some(ms), _, _) => ms,
            (None, Some(minutes), _) => minutes * 60_000.0,
            (None, None, Some(hours)) => hours * 3_600_000.0,
            (None, None, None) => DEFAULT_RETENTION_MS,
        };
        let dirs = props
            .get("log.dirs")
            .or_else(|| props.get("log.dir"))
            .map_or(DEFAULT_LOG_DIR, String::as_str);
        Ok(Self {
            log_dirs: dirs
                .split(',')
                .map(|d| d.trim().trim_end_matches('/').to_owned())
                .filter(|d| !d.is_empty())
                .collect(),
            roll_ms,
            retention_ms: (retention_ms >= 0.0).then_some(retention_ms),
            segment_bytes: number("log.segment.bytes")?.map_or(DEFAULT_SEGMENT_BYTES, |b| b as u64),
            file,
        })
    }

    /// The broker settings of `pid`: `None` when it is not a Kafka broker (no `kafka.Kafka`
    /// on its command line), an error naming the file when they cannot be read.
    pub fn discover(pid: u32) -> Option<Result<Self, String>> {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let main = args.iter().position(|a| a == MAIN_CLASS)?;
        Some(Self::read(pid, &args[main + 1..]))
    }

    /// Reads the properties file named in `args` (the broker's arguments after its main
    /// class) and applies the `--override key=value` pairs after it.
    fn read(pid: u32, args: &[String]) -> Result<Self, String> {
        let at = args
            .iter()
            .position(|a| a.ends_with(".properties"))
            .ok_or("kafka.Kafka without a .properties argument")?;
        let named = Path::new(&args[at]);
        let file = if named.is_absolute() {
            named.to_path_buf()
        } else {
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))
                .map_err(|e| format!("reading /proc/{pid}/cwd: {e}"))?;
            cwd.join(named)
        };
        let seen =
            Path::new(&format!("/proc/{pid}/root")).join(file.strip_prefix("/").unwrap_or(&file));
        let text =
            std::fs::File::open(&seen).map_err(|e| format!("reading {}: {e}", seen.display()))?;
        let mut props = java_properties::read(std::io::BufReader::new(text))
            .map_err(|e| format!("parsing {}: {e}", file.display()))?;
        let mut rest = args[at + 1..].iter();
        while let Some(arg) = rest.next() {
            if arg == "--override"
                && let Some((key, value)) = rest.next().and_then(|kv| kv.split_once('='))
            {
                props.insert(key.to_owned(), value.to_owned());
            }
        }
        Self::from_properties(file, &props)
    }
}

/// The index mappings of one partition directory, from /proc/PID/maps.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mapped {
    /// `.index` and `.timeindex` mappings.
    pub mappings: u32,
    /// Distinct `.index` files mapped: the segments.
    pub segments: u32,
}

#[expect(
    clippy::case_sensitive_file_extension_comparisons,
    reason = "Kafka names its files in lower case"
)]
/// The index mappings of the text of /proc/PID/maps, by partition directory (`<topic>-<N>`
/// directly under one of `log_dirs`), and the total of them.
pub fn mapped_partitions(maps: &[u8], log_dirs: &[String]) -> HashMap<String, Mapped> {
    let mut partitions: HashMap<String, Mapped> = HashMap::new();
    for line in maps.split(|&b| b == b'\n') {
        // The path is the sixth field; it may contain spaces.
        let Some(start) = line.iter().position(|&b| b == b'/') else {
            continue;
        };
        let Ok(path) = std::str::from_utf8(&line[start..]) else {
            continue;
        };
        let is_index = path.ends_with(".index");
        if !is_index && !path.ends_with(".timeindex") {
            continue;
        }
        let Some((dir, _)) = path.rsplit_once('/') else {
            continue;
        };
        let Some((parent, name)) = dir.rsplit_once('/') else {
            continue;
        };
        let partition = name
            .rsplit_once('-')
            .is_some_and(|(topic, n)| !topic.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !partition || !log_dirs.iter().any(|d| d == parent) {
            continue;
        }
        let entry = partitions.entry(dir.to_owned()).or_default();
        entry.mappings += 1;
        entry.segments += u32::from(is_index);
    }
    partitions
}

/// A partition's segment files on disk.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Segments {
    /// Whether the oldest segment's base offset is above 0: retention has deleted some.
    pub deleted: bool,
    /// Median seconds between the modification times of consecutive closed segments (the
    /// cadence at which the partition rolls); `None` with fewer than two closed segments.
    pub cadence_secs: Option<f64>,
}

/// The `<base offset>.log` files of `dir` as the broker `pid` sees it.
pub fn segments(pid: u32, dir: &str) -> Segments {
    let seen = Path::new(&format!("/proc/{pid}/root")).join(dir.trim_start_matches('/'));
    let Ok(entries) = std::fs::read_dir(seen) else {
        return Segments::default();
    };
    let mut files: Vec<(u64, SystemTime)> = entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name();
            let offset = name.to_str()?.strip_suffix(".log")?.parse().ok()?;
            Some((offset, entry.metadata().ok()?.modified().ok()?))
        })
        .collect();
    files.sort_unstable();
    let mut gaps: Vec<f64> = files
        .windows(2)
        .take(files.len().saturating_sub(2))
        .filter_map(|w| w[1].1.duration_since(w[0].1).ok().map(|d| d.as_secs_f64()))
        .collect();
    gaps.sort_unstable_by(f64::total_cmp);
    Segments {
        deleted: files.first().is_some_and(|&(offset, _)| offset > 0),
        cadence_secs: gaps.get(gaps.len() / 2).copied(),
    }
}

/// One partition as the projection sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Partition {
    pub mapped: Mapped,
    pub files: Segments,
}

/// Where the count will hold.
#[derive(Clone, Debug, PartialEq)]
pub struct SteadyState {
    /// The projected count.
    pub mappings: u32,
    pub partitions: u32,
    /// Segments kept per partition, on average.
    pub segments: f64,
    /// Index mappings per segment, on average (2: `.index` and `.timeindex`).
    pub per_segment: f64,
    /// Mappings that are not partition indexes (the JVM's own), as counted now.
    pub other: u32,
    /// Partitions whose kept segments are observed (they have deleted some already).
    pub observed: u32,
    /// Mappings per second the count gains while partitions fill up to what they keep.
    pub growth_per_sec: f64,
}

impl SteadyState {
    /// Seconds until the count, from `count`, crosses `limit` on its way to the steady state;
    /// `None` when the steady state is at or under the limit (or nothing grows).
    pub fn crossing_secs(&self, count: u32, limit: u32) -> Option<f64> {
        if self.mappings <= limit {
            return None;
        }
        if count >= limit {
            return Some(0.0);
        }
        (self.growth_per_sec > 0.0).then(|| f64::from(limit - count) / self.growth_per_sec)
    }

    /// "70,340 = 4,940 partitions x 8 segments x 2 + 1,180".
    pub fn describe(&self) -> String {
        let number = |x: f64| {
            if (x - x.round()).abs() < 0.05 {
                format!("{x:.0}")
            } else {
                format!("{x:.1}")
            }
        };
        format!(
            "{} = {} partitions x {} segments x {} + {}",
            thousands(self.mappings.into()),
            thousands(self.partitions.into()),
            number(self.segments),
            number(self.per_segment),
            thousands(self.other.into()),
        )
    }
}

/// The steady state of a broker with `config` whose partitions are `partitions` and whose
/// count is `count` now; `None` without partitions or with unlimited retention.
pub fn project(config: &LogConfig, partitions: &[Partition], count: u32) -> Option<SteadyState> {
    if partitions.is_empty() {
        return None;
    }
    let (mut kept_mappings, mut kept_segments, mut indexes) = (0.0, 0.0, 0u32);
    let (mut observed, mut growth_per_sec) = (0, 0.0);
    for p in partitions {
        let now = f64::from(p.mapped.segments.max(1));
        let per_segment = f64::from(p.mapped.mappings) / now;
        indexes += p.mapped.mappings;
        let kept = if p.files.deleted {
            observed += 1;
            now
        } else {
            let retention_secs = config.retention_ms? / 1000.0;
            let cadence = p
                .files
                .cadence_secs
                .unwrap_or(config.roll_ms / 1000.0)
                .max(1e-3);
            let kept = ((retention_secs / cadence).ceil() + 1.0).max(now);
            if kept > now {
                growth_per_sec += per_segment / cadence;
            }
            kept
        };
        kept_segments += kept;
        kept_mappings += kept * per_segment;
    }
    let n = partitions.len() as f64;
    let other = count.saturating_sub(indexes);
    Some(SteadyState {
        mappings: (kept_mappings.round() as u32).saturating_add(other),
        partitions: partitions.len() as u32,
        segments: kept_segments / n,
        per_segment: kept_mappings / kept_segments.max(1.0),
        other,
        observed,
        growth_per_sec,
    })
}

/// Reads what the projection needs of broker `pid` from the text of its /proc/PID/maps and its
/// log directories, and projects its steady state.
pub fn steady_state(pid: u32, config: &LogConfig, maps: &[u8], count: u32) -> Option<SteadyState> {
    let partitions: Vec<Partition> = mapped_partitions(maps, &config.log_dirs)
        .into_iter()
        .map(|(dir, mapped)| Partition {
            files: segments(pid, &dir),
            mapped,
        })
        .collect();
    project(config, &partitions, count)
}

#[cfg(test)]
#[expect(clippy::float_cmp, reason = "the settings are exact in binary")]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn config(pairs: &[(&str, &str)]) -> LogConfig {
        LogConfig::from_properties(PathBuf::from("/etc/kafka/server.properties"), &props(pairs))
            .unwrap()
    }

    #[test]
    fn settings_follow_kafkas_precedence_and_defaults() {
        let defaults = config(&[]);
        assert_eq!(defaults.roll_ms, 168.0 * 3_600_000.0);
        assert_eq!(defaults.retention_ms, Some(168.0 * 3_600_000.0));
        assert_eq!(defaults.log_dirs, vec!["/tmp/kafka-logs"]);
        let c = config(&[
            ("log.roll.hours", "24"),
            ("log.retention.hours", "1"),
            ("log.retention.minutes", "30"),
            ("log.dirs", "/data/a/, /data/b"),
            ("log.dir", "/ignored"),
        ]);
        assert_eq!(c.roll_ms, 24.0 * 3_600_000.0);
        assert_eq!(c.retention_ms, Some(30.0 * 60_000.0));
        assert_eq!(c.log_dirs, vec!["/data/a", "/data/b"]);
        let c = config(&[
            ("log.roll.ms", "3000"),
            ("log.roll.hours", "24"),
            ("log.retention.ms", "12000"),
            ("log.retention.minutes", "30"),
        ]);
        assert_eq!((c.roll_ms, c.retention_ms), (3000.0, Some(12_000.0)));
        assert_eq!(config(&[("log.retention.ms", "-1")]).retention_ms, None);
        let bad = LogConfig::from_properties(
            PathBuf::from("/s.properties"),
            &props(&[("log.roll.ms", "soon")]),
        );
        assert_eq!(
            bad.unwrap_err(),
            "log.roll.ms=soon in /s.properties is not a number"
        );
    }

    #[test]
    fn index_mappings_are_grouped_by_partition_under_the_log_dirs() {
        let maps =
            b"7f00-7f01 rw-s 00000000 00:2a 11 /data/kafka/orders-0/00000000000000000000.index
7f01-7f02 rw-s 00000000 00:2a 12 /data/kafka/orders-0/00000000000000000000.timeindex
7f02-7f03 rw-s 00000000 00:2a 13 /data/kafka/orders-0/00000000000000001000.index
7f03-7f04 rw-s 00000000 00:2a 14 /data/kafka/orders-0/00000000000000001000.timeindex
7f04-7f05 rw-s 00000000 00:2a 15 /data/kafka/my topic-12/00000000000000000000.index
7f05-7f06 rw-s 00000000 00:2a 16 /elsewhere/orders-0/00000000000000000000.index
7f06-7f07 rw-s 00000000 00:2a 17 /data/kafka/orders-0/00000000000000000000.log
7f07-7f08 rw-s 00000000 00:2a 18 /data/kafka/__cluster_metadata/00000000000000000000.index
7f08-7f09 r--p 00000000 00:00 0
";
        let found = mapped_partitions(maps, &["/data/kafka".to_owned()]);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(
            found["/data/kafka/orders-0"],
            Mapped {
                mappings: 4,
                segments: 2
            }
        );
        assert_eq!(
            found["/data/kafka/my topic-12"],
            Mapped {
                mappings: 1,
                segments: 1
            }
        );
    }

    fn partition(segments: u32, deleted: bool, cadence_secs: Option<f64>) -> Partition {
        Partition {
            mapped: Mapped {
                mappings: 2 * segments,
                segments,
            },
            files: Segments {
                deleted,
                cadence_secs,
            },
        }
    }

    #[test]
    fn the_incident_projects_over_the_limit_days_ahead() {
        // 247 topics x 20 partitions, log.roll.hours 168 -> 24, 7-day retention, restarted:
        // one segment each, 1,180 mappings of the JVM's own.
        let c = config(&[("log.roll.hours", "24"), ("log.retention.hours", "168")]);
        let partitions = vec![partition(1, false, None); 4940];
        let count = 4940 * 2 + 1180;
        let steady = project(&c, &partitions, count).unwrap();
        assert_eq!(steady.mappings, 4940 * 8 * 2 + 1180);
        assert_eq!(
            steady.describe(),
            "80,220 = 4,940 partitions x 8 segments x 2 + 1,180"
        );
        // 9,880 mappings a day: the limit is crossed in ~5.5 days.
        let secs = steady.crossing_secs(count, 65_530).unwrap();
        let days = secs / 86_400.0;
        assert!(
            (days - (65_530.0 - f64::from(count)) / 9880.0).abs() < 1e-9,
            "{days}"
        );
        assert_eq!(steady.crossing_secs(count, 100_000), None);
    }

    #[test]
    fn observed_retention_and_cadence_win_over_the_settings() {
        let c = config(&[("log.roll.ms", "3000"), ("log.retention.ms", "12000")]);
        // Configured: 12 s / 3 s + 1 = 5 segments.
        let fresh = project(&c, &[partition(1, false, None)], 102).unwrap();
        assert_eq!((fresh.mappings, fresh.other), (110, 100));
        // Rolling by size every second: 13 segments.
        let fast = project(&c, &[partition(3, false, Some(1.0))], 106).unwrap();
        assert_eq!(fast.mappings, 126);
        assert!((fast.growth_per_sec - 2.0).abs() < 1e-9);
        // A partition that deleted segments keeps what it has (a per-topic override).
        let kept = project(&c, &[partition(3, true, Some(3.0))], 106).unwrap();
        assert_eq!(
            (kept.mappings, kept.observed, kept.growth_per_sec),
            (106, 1, 0.0)
        );
        // Unlimited retention has no steady state, nor has a broker without partitions.
        assert_eq!(
            project(
                &config(&[("log.retention.ms", "-1")]),
                &[partition(1, false, None)],
                2
            ),
            None
        );
        assert_eq!(project(&c, &[], 500), None);
    }

    #[test]
    fn a_brokers_own_properties_and_overrides_are_read_through_its_root() {
        // This test process as the broker: its cwd holds config/server.properties.
        let dir = std::env::temp_dir().join(format!("tracer-kafka-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("config")).unwrap();
        std::fs::write(
            dir.join("config/server.properties"),
            "# broker\nlog.dirs=/data/kafka\nlog.roll.hours=24\nlog.retention.hours = 168\n",
        )
        .unwrap();
        // A stand-in whose command line reads as a broker's: `sh -c CMD kafka.Kafka ARGS...`.
        let mut broker = std::process::Command::new("sh")
            .args([
                "-c",
                "sleep 30; :",
                "kafka.Kafka",
                "config/server.properties",
            ])
            .args(["--override", "log.retention.hours=72"])
            .current_dir(&dir)
            .spawn()
            .unwrap();
        let pid = broker.id();
        // sh has not necessarily exec'd yet: wait for its command line.
        while !std::fs::read(format!("/proc/{pid}/cmdline"))
            .unwrap()
            .starts_with(b"sh\0")
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let read = LogConfig::discover(pid).expect("a broker");
        broker.kill().unwrap();
        broker.wait().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let c = read.unwrap();
        assert_eq!(c.file, dir.join("config/server.properties"));
        assert_eq!(c.roll_ms, 24.0 * 3_600_000.0);
        assert_eq!(c.retention_ms, Some(72.0 * 3_600_000.0));
        assert_eq!(c.log_dirs, vec!["/data/kafka"]);
        let missing = LogConfig::read(
            std::process::id(),
            &["/nonexistent/x.properties".to_owned()],
        );
        assert!(
            missing.unwrap_err().starts_with("reading /proc/"),
            "not found"
        );
        // This test binary is no broker.
        assert_eq!(LogConfig::discover(std::process::id()), None);
    }
}
