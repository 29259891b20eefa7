//! The target's VMA count against `vm.max_map_count`: live count, growth trend, time to
//! exhaustion, and the `vma_exhaustion` alerts.

pub mod kafka;
pub mod maps;
#[cfg(test)]
pub mod replay;
pub mod source;

use std::{collections::HashMap, fmt::Write as _};

use tracer_common::vma::{VmaEvent, VmaRegister};

use crate::{
    alert::{Change, Severity},
    event::{AlertDetail, AlertKind, Event},
    exhaustion::{Exhaustion, Hold, Thresholds, rate::Trend},
    units::{duration, thousands},
};
use kafka::SteadyState;

/// Where the kernel's limit lives.
pub const MAX_MAP_COUNT: &str = "/proc/sys/vm/max_map_count";

/// Reads `vm.max_map_count`.
pub fn read_max_map_count() -> std::io::Result<u32> {
    let text = std::fs::read_to_string(MAX_MAP_COUNT)?;
    text.trim()
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Threads tracked for attribution per minute; further threads count as "other".
const MAX_THREADS: usize = 1024;
/// The key under which changes by threads beyond [`MAX_THREADS`] are counted.
const OTHER_THREADS: u32 = 0;

/// The live state, for the terminal view.
#[derive(Clone, Debug, PartialEq)]
pub struct VmaStatus {
    pub count: u32,
    pub limit: u32,
    pub peak: u32,
    pub trend: Option<Trend>,
    pub eta_secs: Option<f64>,
    pub alert: Option<Severity>,
    /// Net change of the count per thread name over the last one to two minutes, largest
    /// growth first.
    pub growth_by_thread: Vec<(String, i64)>,
    /// The latest one-time jump: change, seconds it took, `ts` it ended.
    pub last_step: Option<(i64, f64, u64)>,
    /// Where a Kafka broker's count will hold, and the seconds until it crosses the limit on
    /// its way there.
    pub steady_state: Option<(SteadyState, Option<f64>)>,
}

/// The VMA model of one target.
pub struct VmaModel {
    pid: u32,
    limit: u32,
    count: u32,
    /// Count of the previous record applied, for per-thread attribution.
    last_record_count: u32,
    peak: u32,
    exhaustion: Exhaustion,
    /// Net change per thread id in the current and the previous minute.
    growth: [HashMap<u32, i64>; 2],
    growth_minute: u64,
    /// Names of the threads seen, from /proc/PID/task/TID/comm (threads rarely rename).
    names: HashMap<u32, String>,
    last_step: Option<(i64, f64, u64)>,
    steady_state: Option<SteadyState>,
}

impl VmaModel {
    /// A model seeded with the count read from /proc/PID/maps at attach.
    pub fn new(pid: u32, seed: u32, limit: u32, thresholds: Thresholds, window_secs: f64) -> Self {
        Self {
            pid,
            limit,
            count: seed,
            last_record_count: seed,
            peak: seed,
            exhaustion: Exhaustion::new(thresholds, window_secs),
            growth: [HashMap::new(), HashMap::new()],
            growth_minute: 0,
            names: HashMap::new(),
            last_step: None,
            steady_state: None,
        }
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn set_limit(&mut self, limit: u32) {
        self.limit = limit;
    }

    /// The samples of the long trends, for the state file.
    pub fn history(&self, now: f64, now_ms: u64) -> Vec<Vec<(u64, f64)>> {
        self.exhaustion.history(now, now_ms)
    }

    /// Restores the samples of a state file.
    pub fn restore(&mut self, history: &[Vec<(u64, f64)>], now: f64, now_ms: u64) {
        self.exhaustion.restore(history, now, now_ms);
    }

    /// Sets (or clears) the projected steady state of a Kafka broker.
    pub fn set_steady_state(&mut self, steady_state: Option<SteadyState>) {
        self.steady_state = steady_state;
    }

    /// Seconds until the count crosses the limit on its way to the steady state.
    fn crossing_secs(&self) -> Option<f64> {
        self.steady_state
            .as_ref()?
            .crossing_secs(self.count, self.limit)
    }

    /// Applies one ring-buffer record. Records come in the order of the changes (they are
    /// written under the target's mmap_lock), so the last one holds the newest count. They
    /// are coalesced (`tracer_common::vma::RECORD_EVERY`): the change since the previous
    /// record is put down to the thread of this one, which is exact for growth and a sample
    /// of churn.
    pub fn record(&mut self, event: VmaEvent) {
        self.peak = self.peak.max(event.map_count);
        let delta = i64::from(event.map_count) - i64::from(self.last_record_count);
        self.last_record_count = event.map_count;
        let threads = &mut self.growth[0];
        let key = if threads.len() < MAX_THREADS || threads.contains_key(&event.tid) {
            event.tid
        } else {
            OTHER_THREADS
        };
        *threads.entry(key).or_default() += delta;
        self.count = event.map_count;
    }

    /// Applies the kernel's register, which holds the newest reading of all (exact even when
    /// ring-buffer records were lost), and the highest count since the previous report.
    pub fn register(&mut self, register: &VmaRegister, high: u32) {
        if register.valid != 0 {
            self.count = register.count;
            self.peak = self.peak.max(self.count).max(high);
        }
    }

    /// Samples the count at `t_secs` (monotonic), refreshes the trend, raises or resolves
    /// alerts, and appends the events of this tick to `out`.
    pub fn tick(&mut self, t_secs: f64, ts: u64, events_lost: u64, out: &mut Vec<Event>) {
        let crossing = self.crossing_secs();
        self.exhaustion
            .set_hold(self.steady_state.as_ref().map(|steady| Hold {
                level: f64::from(steady.mappings),
                crossing_secs: crossing,
            }));
        let (reading, changes) =
            self.exhaustion
                .tick(t_secs, f64::from(self.count), Some(f64::from(self.limit)));
        let (usage, eta) = (reading.usage, reading.eta_secs);

        out.push(Event::Vma {
            ts,
            pid: self.pid,
            map_count: self.count,
            peak: self.peak,
            max_map_count: self.limit,
            usage: (usage * 10_000.0).round() / 10_000.0,
            growth_per_min: reading.trend.map(|t| (t.per_sec * 600.0).round() / 10.0),
            eta_seconds: eta.map(round_secs),
            events_lost,
            steady_state: self.steady_state.as_ref().map(|s| s.mappings),
            steady_state_crossing_seconds: crossing.map(round_secs),
            growth_per_hour_6h: reading.long[0].map(|t| (t.per_sec * 36_000.0).round() / 10.0),
            growth_per_day_7d: reading.long[1].map(|t| (t.per_sec * 864_000.0).round() / 10.0),
        });
        self.peak = self.count;
        if let Some(step) = reading.step {
            let at = ts.saturating_sub(((t_secs - step.at).max(0.0) * 1000.0) as u64);
            let change = (step.to - step.from).round() as i64;
            self.last_step = Some((change, step.secs, at));
            out.push(Event::VmaStep {
                ts: at,
                pid: self.pid,
                from: step.from.round() as u32,
                to: step.to.round() as u32,
                change,
                seconds: step.secs,
            });
        }

        for (severity, change) in changes {
            match change {
                Some(Change::Raise) => out.push(Event::Alert {
                    ts,
                    pid: self.pid,
                    kind: AlertKind::VmaExhaustion,
                    severity,
                    message: self.describe(),
                    detail: AlertDetail::Eta {
                        eta_seconds: eta.map(round_secs),
                    },
                }),
                Some(Change::Resolve) => out.push(Event::AlertResolved {
                    ts,
                    pid: self.pid,
                    kind: AlertKind::VmaExhaustion,
                    severity,
                    group: None,
                    message: format!(
                        "VMA count back to {} of {} ({:.1}%){}",
                        thousands(self.count.into()),
                        thousands(self.limit.into()),
                        usage * 100.0,
                        eta.map_or_else(String::new, |e| format!(
                            ", exhaustion in {}",
                            duration(e)
                        ))
                    ),
                }),
                None => {}
            }
        }

        let minute = (t_secs / 60.0) as u64;
        if minute != self.growth_minute {
            self.growth_minute = minute;
            self.growth.swap(0, 1);
            self.growth[0].clear();
        }
    }

    /// Seconds until the trend reaches the limit.
    pub fn eta_secs(&self) -> Option<f64> {
        self.reading().eta_secs
    }

    fn reading(&self) -> crate::exhaustion::Reading {
        self.exhaustion
            .reading(f64::from(self.count), Some(f64::from(self.limit)))
    }

    pub fn status(&mut self) -> VmaStatus {
        let mut by_thread: HashMap<u32, i64> = HashMap::new();
        for minute in &self.growth {
            for (&tid, delta) in minute {
                *by_thread.entry(tid).or_default() += delta;
            }
        }
        let mut by_name: HashMap<String, i64> = HashMap::new();
        for (tid, delta) in by_thread {
            *by_name.entry(self.thread_name(tid)).or_default() += delta;
        }
        let mut growth_by_thread: Vec<(String, i64)> = by_name
            .into_iter()
            .filter(|&(_, delta)| delta != 0)
            .collect();
        growth_by_thread.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        VmaStatus {
            count: self.count,
            limit: self.limit,
            peak: self.peak,
            trend: self.reading().trend,
            eta_secs: self.eta_secs(),
            alert: self.exhaustion.severity(),
            growth_by_thread,
            last_step: self.last_step,
            steady_state: self
                .steady_state
                .clone()
                .map(|steady| (steady, self.crossing_secs())),
        }
    }

    /// A thread's name, as the process named it ("kafka-log-clean", truncated to 15 bytes by
    /// the kernel), remembered once read.
    fn thread_name(&mut self, tid: u32) -> String {
        if tid == OTHER_THREADS {
            return "(other threads)".to_owned();
        }
        let pid = self.pid;
        self.names
            .entry(tid)
            .or_insert_with(|| {
                std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).map_or_else(
                    |_| format!("thread {tid}"),
                    |name| name.trim_end().to_owned(),
                )
            })
            .clone()
    }

    /// The alert text: what, how fast, when, and what to do about it.
    fn describe(&self) -> String {
        let usage = f64::from(self.count) / f64::from(self.limit) * 100.0;
        let mut message = format!(
            "VMA count {} of vm.max_map_count {} ({usage:.1}%)",
            thousands(self.count.into()),
            thousands(self.limit.into()),
        );
        message.push_str(&self.reading().growth_clause());
        if let Some(steady) = self
            .steady_state
            .as_ref()
            .filter(|s| s.mappings > self.limit)
        {
            let when = self.crossing_secs().map_or_else(String::new, |secs| {
                format!(", the count crosses it in ~{}", duration(secs))
            });
            let _ = write!(
                message,
                "; Kafka steady state {} is over the limit{when}; mmap will fail (\"Map failed\") - \
                 raise vm.max_map_count to at least {} (2x the steady state), or raise \
                 log.segment.bytes, use fewer partitions or shorten retention",
                steady.describe(),
                thousands(u64::from(steady.mappings) * 2),
            );
            return message;
        }
        message.push_str(
            "; mmap will fail (Kafka: \"Map failed\") - raise it (sysctl -w vm.max_map_count=262144) \
             or cut mapped segments (fewer partitions, larger segment.bytes, shorter retention)",
        );
        message
    }
}

fn round_secs(secs: f64) -> u64 {
    secs.round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(map_count: u32, tid: u32) -> VmaEvent {
        VmaEvent {
            tid,
            map_count,
            target: 0,
            pad: 0,
        }
    }

    fn register(count: u32) -> VmaRegister {
        VmaRegister {
            mm: 1,
            count,
            changes: 1,
            valid: 1,
            tid: 0,
        }
    }

    fn alerts(events: &[Event]) -> Vec<(&'static str, Severity)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Alert { severity, .. } => Some(("alert", *severity)),
                Event::AlertResolved { severity, .. } => Some(("resolved", *severity)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_last_record_wins_and_the_register_is_final() {
        let mut model = VmaModel::new(1, 100, 65530, Thresholds::default(), 600.0);
        model.record(record(110, 1));
        model.record(record(105, 2));
        assert_eq!(model.count(), 105);
        model.register(&register(111), 113);
        assert_eq!(model.count(), 111);
        // An empty register (the target has not touched its map since attach) keeps the seed.
        let mut fresh = VmaModel::new(1, 100, 65530, Thresholds::default(), 600.0);
        fresh.register(&VmaRegister::default(), 0);
        assert_eq!(fresh.count(), 100);
    }

    #[test]
    fn growth_is_attributed_to_thread_names() {
        // The test's own threads: this one, and a second one with a name of our choosing.
        let me = std::process::id();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let helper = std::thread::Builder::new()
            .name("log-cleaner".into())
            .spawn(move || {
                // SAFETY: gettid has no preconditions.
                tid_tx.send(unsafe { libc::gettid() } as u32).unwrap();
                done_rx.recv().ok();
            })
            .unwrap();
        let cleaner = tid_rx.recv().unwrap();
        let mut model = VmaModel::new(me, 100, 65530, Thresholds::default(), 600.0);
        model.record(record(102, cleaner));
        model.record(record(101, 4_000_000));
        model.record(record(105, cleaner));
        let status = model.status();
        done_tx.send(()).unwrap();
        helper.join().unwrap();
        assert_eq!(
            status.growth_by_thread,
            vec![
                ("log-cleaner".to_owned(), 6),
                ("thread 4000000".to_owned(), -1)
            ]
        );
        assert_eq!(status.peak, 105);
    }

    #[test]
    fn steady_growth_warns_then_goes_critical_with_a_true_eta() {
        let thresholds = Thresholds::default();
        let mut model = VmaModel::new(7, 10_000, 65_530, thresholds, 600.0);
        let mut events = Vec::new();
        let mut first_eta = None;
        // 1,000 mappings a minute.
        for t in 0..3000u32 {
            let count = 10_000 + t * 1000 / 60;
            model.register(&register(count), count);
            let before = events.len();
            model.tick(f64::from(t), u64::from(t) * 1000, 0, &mut events);
            if first_eta.is_none()
                && let Some(Event::Vma {
                    eta_seconds: Some(eta),
                    ..
                }) = events.get(before)
            {
                first_eta = Some((t, *eta));
            }
        }
        let (t0, eta) = first_eta.unwrap();
        let true_eta = f64::from(65_530 - (10_000 + t0 * 1000 / 60)) * 60.0 / 1000.0;
        // Counts are whole numbers, so the first seconds of samples give the rate to ~1%.
        assert!(
            (eta as f64 - true_eta).abs() < true_eta * 0.01,
            "eta {eta} vs {true_eta}"
        );
        // 55,530 of headroom at 1,000/min: ETA < 6h at once, < 30 min after ~25 min.
        assert_eq!(
            alerts(&events),
            vec![("alert", Severity::Warning), ("alert", Severity::Critical)]
        );
        assert_eq!(model.status().alert, Some(Severity::Critical));
    }

    #[test]
    fn a_burst_is_a_step_event_not_an_alert() {
        let mut model = VmaModel::new(7, 40_000, 65_530, Thresholds::default(), 600.0);
        let mut events = Vec::new();
        for t in 0..300u32 {
            let count = if t < 60 { 40_000 } else { 43_000 };
            model.register(&register(count), count);
            model.tick(
                f64::from(t),
                1_000_000 + u64::from(t) * 1000,
                0,
                &mut events,
            );
        }
        assert_eq!(alerts(&events), vec![]);
        let steps: Vec<_> = events
            .iter()
            .filter(|e| matches!(e, Event::VmaStep { .. }))
            .collect();
        assert_eq!(
            steps,
            vec![&Event::VmaStep {
                ts: 1_060_000,
                pid: 7,
                from: 40_000,
                to: 43_000,
                change: 3000,
                seconds: 1.0,
            }]
        );
        let status = model.status();
        assert_eq!(status.last_step, Some((3000, 1.0, 1_060_000)));
        assert_eq!(status.trend.map(|t| t.per_sec), Some(0.0));
    }

    #[test]
    fn a_steady_state_over_the_limit_warns_at_once_with_the_fix() {
        let mut model = VmaModel::new(7, 11_060, 65_530, Thresholds::default(), 600.0);
        model.set_steady_state(Some(SteadyState {
            mappings: 80_220,
            partitions: 4940,
            segments: 8.0,
            per_segment: 2.0,
            other: 1180,
            observed: 0,
            growth_per_sec: 9880.0 / 86_400.0,
        }));
        let mut events = Vec::new();
        model.tick(0.0, 0, 0, &mut events);
        assert_eq!(alerts(&events), vec![("alert", Severity::Warning)]);
        let Event::Vma {
            steady_state,
            steady_state_crossing_seconds,
            ..
        } = &events[0]
        else {
            panic!("{:?}", events[0])
        };
        assert_eq!(*steady_state, Some(80_220));
        // 54,470 of headroom at 9,880 a day: 5 days 12 h.
        assert_eq!(*steady_state_crossing_seconds, Some(476_337));
        let Some(Event::Alert { message, .. }) = events.get(1) else {
            panic!("{events:?}")
        };
        assert!(
            message.contains(
                "Kafka steady state 80,220 = 4,940 partitions x 8 segments x 2 + 1,180 is over \
                 the limit, the count crosses it in ~5d 12h"
            ),
            "{message}"
        );
        assert!(
            message.contains("at least 160,440 (2x the steady state)"),
            "{message}"
        );
    }

    #[test]
    fn usage_alerts_resolve_with_hysteresis_when_the_limit_is_raised() {
        let mut model = VmaModel::new(7, 60_000, 65_530, Thresholds::default(), 600.0);
        let mut events = Vec::new();
        model.tick(0.0, 0, 0, &mut events);
        assert_eq!(alerts(&events), vec![("alert", Severity::Warning)]);
        // 91.6% of a slightly higher limit: still above warning - nothing new.
        model.set_limit(65_500);
        model.tick(1.0, 1000, 0, &mut events);
        assert_eq!(alerts(&events).len(), 1);
        // sysctl -w vm.max_map_count=262144: the warning clears exactly once.
        model.set_limit(262_144);
        model.tick(2.0, 2000, 0, &mut events);
        model.tick(3.0, 3000, 0, &mut events);
        assert_eq!(
            alerts(&events),
            vec![
                ("alert", Severity::Warning),
                ("resolved", Severity::Warning)
            ]
        );
        let Some(Event::Alert { message, .. }) =
            events.iter().find(|e| matches!(e, Event::Alert { .. }))
        else {
            panic!("no alert")
        };
        assert!(
            message.contains("60,000 of vm.max_map_count 65,530 (91.6%)"),
            "{message}"
        );
        assert!(message.contains("sysctl -w vm.max_map_count"), "{message}");
    }

    #[test]
    fn vma_events_report_unknown_rates_as_null() {
        let mut model = VmaModel::new(3, 500, 65_530, Thresholds::default(), 600.0);
        let mut events = Vec::new();
        model.tick(0.0, 1, 2, &mut events);
        assert_eq!(
            events[0],
            Event::Vma {
                ts: 1,
                pid: 3,
                map_count: 500,
                peak: 500,
                max_map_count: 65_530,
                usage: 0.0076,
                growth_per_min: None,
                eta_seconds: None,
                events_lost: 2,
                steady_state: None,
                steady_state_crossing_seconds: None,
                growth_per_hour_6h: None,
                growth_per_day_7d: None,
            }
        );
    }
}
