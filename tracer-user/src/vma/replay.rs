//! Days in seconds: the real VMA model (trend, steps, steady state, alerts) driven by a
//! simulated clock, from a synthetic series or from a recorded `attach --json` stream.
//!
//! The model takes its time as an argument ([`VmaModel::tick`]), so a week of samples runs in
//! the time the arithmetic takes: the tests replay the incidents the tracer exists for at
//! their real scale and check what it would have said, and when.

use std::io::BufRead;

use tracer_common::vma::VmaRegister;

use super::{VmaModel, kafka::SteadyState};
use crate::{event::Event, exhaustion::Thresholds};

/// The pid the replayed events carry.
const REPLAY_PID: u32 = 0;

/// A [`VmaModel`] on a simulated clock that starts at `ts` `start_ms`.
pub struct Replay {
    model: VmaModel,
    start_ms: u64,
    /// Every event the model emitted, in order.
    pub events: Vec<Event>,
}

impl Replay {
    pub fn new(
        count: u32,
        limit: u32,
        thresholds: Thresholds,
        window_secs: f64,
        start_ms: u64,
    ) -> Self {
        Self {
            model: VmaModel::new(REPLAY_PID, count, limit, thresholds, window_secs),
            start_ms,
            events: Vec::new(),
        }
    }

    pub fn set_steady_state(&mut self, steady_state: Option<SteadyState>) {
        self.model.set_steady_state(steady_state);
    }

    /// The count is `count` and the limit `limit` at `t_secs` of simulated time.
    pub fn tick(&mut self, t_secs: f64, count: u32, limit: u32) {
        self.model.set_limit(limit);
        let register = VmaRegister {
            mm: 1,
            count,
            changes: 1,
            valid: 1,
            tid: 0,
        };
        self.model.register(&register, count);
        let ts = self.start_ms + (t_secs * 1000.0) as u64;
        self.model.tick(t_secs, ts, 0, &mut self.events);
    }

    /// Replays the `vma` events of a recorded NDJSON stream (other lines are skipped): their
    /// counts, limits and steady states, at their own times. Returns what the model says now.
    ///
    /// # Errors
    ///
    /// A line that cannot be read, or a `vma` line without its fields.
    pub fn ndjson(
        reader: impl BufRead,
        thresholds: Thresholds,
        window_secs: f64,
    ) -> Result<Vec<Event>, String> {
        let mut replay: Option<Replay> = None;
        for (n, line) in reader.lines().enumerate() {
            let line = line.map_err(|e| format!("reading line {}: {e}", n + 1))?;
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if value["type"] != "vma" {
                continue;
            }
            let field = |name: &str| {
                value[name]
                    .as_u64()
                    .ok_or_else(|| format!("line {}: vma without {name}", n + 1))
            };
            let (ts, count, limit) = (field("ts")?, field("map_count")?, field("max_map_count")?);
            let (count, limit) = (count as u32, limit as u32);
            let replay = replay
                .get_or_insert_with(|| Replay::new(count, limit, thresholds, window_secs, ts));
            // A recorded steady state carries its count and its crossing: the growth on the
            // way there is the headroom over the time to the crossing.
            let steady = value["steady_state"].as_u64().map(|mappings| {
                let crossing = value["steady_state_crossing_seconds"].as_f64();
                SteadyState {
                    mappings: mappings as u32,
                    partitions: 0,
                    segments: 0.0,
                    per_segment: 0.0,
                    other: 0,
                    observed: 0,
                    growth_per_sec: crossing
                        .filter(|&c| c > 0.0)
                        .map_or(0.0, |c| f64::from(limit.saturating_sub(count)) / c),
                }
            });
            replay.set_steady_state(steady);
            replay.tick((ts - replay.start_ms) as f64 / 1000.0, count, limit);
        }
        Ok(replay.map(|r| r.events).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        alert::Severity,
        event::AlertKind,
        vma::kafka::{LogConfig, Mapped, Partition, Segments, project},
    };

    const DAY: f64 = 86_400.0;
    const LIMIT: u32 = 65_530;

    /// Deterministic JVM jitter in [-100, 100].
    fn jitter(i: u64) -> i64 {
        (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40).cast_signed() % 201 - 100
    }

    fn vma_alerts(events: &[Event]) -> Vec<(u64, Severity)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Alert {
                    ts,
                    kind: AlertKind::VmaExhaustion,
                    severity,
                    ..
                } => Some((*ts, *severity)),
                _ => None,
            })
            .collect()
    }

    /// The incident: 247 topics x 20 partitions restarted with log.roll.hours=24 and 7 days of
    /// retention, each partition rolling once a day at its own time (rolls follow appends),
    /// 1,180 mappings of the JVM's own with +-100 of jitter, sampled every 30 s for a week.
    #[test]
    fn the_incident_at_real_scale_warns_days_ahead_with_a_true_eta() {
        let partitions = 4940u32;
        let config = LogConfig::from_properties(
            "server.properties".into(),
            &[("log.roll.hours", "24"), ("log.retention.hours", "168")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into(),
        )
        .unwrap();
        // Rolls so far at t: partition p rolls at (p + 1) / N of each day.
        let segments = |t: f64| f64::from(partitions) + (t * f64::from(partitions) / DAY).floor();
        let count = |t: f64, i: u64| (1180.0 + 2.0 * segments(t)) as i64 + jitter(i);
        let mut replay = Replay::new(count(0.0, 0) as u32, LIMIT, Thresholds::default(), 600.0, 0);
        let (mut crossed, mut at_half) = (None, None);
        let half = u32::midpoint(count(0.0, 0) as u32, LIMIT);
        for i in 0..(7 * 86_400 / 30) {
            let t = i as f64 * 30.0;
            // The breakdown is read again as the count moves: here, hourly.
            if i % 120 == 0 {
                let per_partition = segments(t) / f64::from(partitions);
                let state: Vec<Partition> = (0..partitions)
                    .map(|p| {
                        let segs = per_partition.floor() as u32
                            + u32::from(
                                f64::from(p) < per_partition.fract() * f64::from(partitions),
                            );
                        Partition {
                            mapped: Mapped {
                                mappings: 2 * segs,
                                segments: segs,
                            },
                            files: Segments {
                                deleted: false,
                                cadence_secs: (segs >= 3).then_some(DAY),
                            },
                        }
                    })
                    .collect();
                replay.set_steady_state(project(&config, &state, count(t, i) as u32));
            }
            let n = count(t, i) as u32;
            replay.tick(t, n, LIMIT);
            if crossed.is_none() && n >= LIMIT {
                crossed = Some(t);
            }
            if at_half.is_none() && n >= half {
                at_half = replay.events.iter().rev().find_map(|e| match e {
                    Event::Vma { eta_seconds, .. } => Some((t, *eta_seconds)),
                    _ => None,
                });
            }
        }
        let crossed = crossed.expect("the count crosses the limit within the week");
        let alerts = vma_alerts(&replay.events);
        let (warned_ms, severity) = alerts[0];
        assert_eq!(severity, Severity::Warning);
        let ahead = crossed - warned_ms as f64 / 1000.0;
        let (t_half, eta) = at_half.unwrap();
        let eta = eta.expect("an ETA at half the headroom") as f64;
        let actual = crossed - t_half;
        println!(
            "warned {:.1} days ahead; ETA {:.2} days at half headroom, crossed {:.2} days later; alerts {alerts:?}",
            ahead / DAY,
            eta / DAY,
            actual / DAY
        );
        assert!(
            ahead >= 3.0 * DAY,
            "warned only {:.2} days ahead",
            ahead / DAY
        );
        assert!(
            (eta - actual).abs() <= 0.15 * actual,
            "ETA {eta} vs {actual}"
        );
        // Critical once, at 95% of the limit (8 h ahead at this pace), before the crossing.
        let critical: Vec<_> = alerts
            .iter()
            .filter(|a| a.1 == Severity::Critical)
            .collect();
        assert_eq!(critical.len(), 1, "{alerts:?}");
        assert!((critical[0].0 as f64 / 1000.0) < crossed, "{alerts:?}");
    }

    /// A month at 70% of the limit with +-100 of jitter, sampled every minute: nothing to say.
    #[test]
    fn a_month_holding_at_seventy_percent_raises_nothing() {
        let hold = (f64::from(LIMIT) * 0.7) as i64;
        let mut replay = Replay::new(hold as u32, LIMIT, Thresholds::default(), 600.0, 0);
        for i in 0..(30 * 86_400 / 60) {
            replay.tick(i as f64 * 60.0, (hold + jitter(i)) as u32, LIMIT);
        }
        let alerts: Vec<_> = replay
            .events
            .iter()
            .filter(|e| matches!(e, Event::Alert { .. }))
            .collect();
        assert!(alerts.is_empty(), "{alerts:?}");
    }

    #[test]
    fn a_recorded_stream_replays_to_the_same_alerts() {
        // A recorded climb of 1,000 mappings a minute, with another event type in between.
        let mut recorded = Replay::new(
            10_000,
            LIMIT,
            Thresholds::default(),
            600.0,
            1_700_000_000_000,
        );
        for t in 0..120u32 {
            recorded.tick(f64::from(t), 10_000 + t * 1000 / 60, LIMIT);
        }
        let mut text =
            String::from("{\"type\":\"target_attached\",\"ts\":0,\"pid\":0,\"cmdline\":\"x\"}\n");
        for event in &recorded.events {
            text.push_str(&serde_json::to_string(event).unwrap());
            text.push('\n');
        }
        let replayed = Replay::ndjson(text.as_bytes(), Thresholds::default(), 600.0).unwrap();
        assert_eq!(vma_alerts(&replayed), vma_alerts(&recorded.events));
        assert_eq!(vma_alerts(&replayed).len(), 1);
        let bad = Replay::ndjson(
            &b"{\"type\":\"vma\",\"ts\":1}\n"[..],
            Thresholds::default(),
            600.0,
        );
        assert_eq!(bad.unwrap_err(), "line 1: vma without map_count");
    }
}
