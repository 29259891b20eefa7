//! A count growing toward a hard limit that kills the process when reached: mappings against
//! `vm.max_map_count`, file descriptors against `RLIMIT_NOFILE`, memory against the cgroup's
//! limit. One model for all of them: the trend of the count (Theil–Sen over a window), the
//! time until it reaches the limit, and a warning and a critical alert on either the time
//! left or the share of the limit used, raised once and resolved with hysteresis.

pub mod rate;

use crate::{
    alert::{Change, Check, Latch, Severity},
    units::{duration, rate_per_min},
};
use rate::{RateWindow, Step, Trend};

/// When an exhaustion alert fires, per severity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    /// Warn when the time to exhaustion is below this many seconds...
    pub warn_eta_secs: f64,
    /// ...or the count is above this fraction of the limit.
    pub warn_usage: f64,
    pub crit_eta_secs: f64,
    pub crit_usage: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            warn_eta_secs: 6.0 * 3600.0,
            warn_usage: 0.80,
            crit_eta_secs: 30.0 * 60.0,
            crit_usage: 0.95,
        }
    }
}

/// The long trends beside the short one: (window, seconds between samples). 6 h of one sample
/// every 5 minutes and 7 d of one an hour (72 and 168 samples, thinned to 120 per estimate,
/// estimated when a sample is taken): growth of a few hundred segments a day, invisible in 10
/// minutes of jitter, shows there.
const LONG: [(f64, f64); 2] = [(6.0 * 3600.0, 300.0), (7.0 * 86_400.0, 3600.0)];

/// One long trend: its window, when it takes its next sample, its last estimate.
struct Long {
    window: RateWindow,
    every: f64,
    next: f64,
    trend: Option<Trend>,
}

/// A raised alert clears only when the usage is this much below its threshold...
const USAGE_HYSTERESIS: f64 = 0.02;
/// ...and the time to exhaustion this many times above its threshold (or unknown).
const ETA_HYSTERESIS: f64 = 1.25;
/// ...and not within this many seconds of a step: the trend restarted there has not seen
/// enough to say the danger is over (Kafka's staircase would resolve and raise again).
const CLEAR_AFTER_STEP_SECS: f64 = 60.0;

/// A projection holding below the limit by at least this share of it suppresses the alerts on
/// the time left (the climb toward it is not a death)...
const HOLD_MARGIN: f64 = 0.10;
/// ...while the count is not above the projection by more than this share of it (above, the
/// projection is wrong: new partitions, other settings).
const HOLD_TOLERANCE: f64 = 0.10;

/// Where the count is projected to level off (a Kafka broker's steady state), and the seconds
/// until it crosses the limit on its way there (`None` when it does not).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hold {
    pub level: f64,
    pub crossing_secs: Option<f64>,
}

/// One evaluation of the count against its limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reading {
    /// `count / limit`; 0 without a limit.
    pub usage: f64,
    pub trend: Option<Trend>,
    /// The trends over 6 hours and 7 days ([`LONG`]).
    pub long: [Option<Trend>; 2],
    /// Seconds until the trend (or the projected hold on its way) reaches the limit; `None`
    /// when it does not grow, its growth does not persist, the count is projected to hold
    /// below the limit with margin, or there is no limit.
    pub eta_secs: Option<f64>,
    /// The same at the trends' slopes whether or not their growth persists: a raised alert
    /// clears only when this is far enough off too, so a pause in a climb does not resolve it
    /// only to raise it again.
    pub growing_eta_secs: Option<f64>,
    /// Whether the projected hold is over the limit: a warning whatever the trend.
    pub hold_over: bool,
    /// The one-time jump this sample completed; the trend restarted at it.
    pub step: Option<Step>,
}

/// A count against its limit, for the live view.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Status {
    pub count: f64,
    pub limit: Option<f64>,
    /// Growth per second; `None` while measuring.
    pub per_sec: Option<f64>,
    pub eta_secs: Option<f64>,
    pub alert: Option<Severity>,
}

impl Reading {
    /// ", growing +12/min: limit reached in 3m 20s" while the count grows toward its limit;
    /// empty otherwise.
    pub fn growth_clause(&self) -> String {
        match (self.trend, self.eta_secs) {
            (Some(trend), Some(eta)) => format!(
                ", growing {}/min: limit reached in {}",
                rate_per_min(trend.per_sec),
                duration(eta)
            ),
            _ => String::new(),
        }
    }
}

/// The trend and alert state of one count.
pub struct Exhaustion {
    thresholds: Thresholds,
    window: RateWindow,
    trend: Option<Trend>,
    long: [Long; 2],
    hold: Option<Hold>,
    /// When the last step restarted the short trend.
    last_step: Option<f64>,
    warning: Latch,
    critical: Latch,
}

impl Exhaustion {
    pub fn new(thresholds: Thresholds, window_secs: f64) -> Self {
        Self {
            thresholds,
            window: RateWindow::new(window_secs),
            trend: None,
            long: LONG.map(|(window_secs, every)| Long {
                window: RateWindow::keeping_steps(window_secs),
                every,
                next: f64::MIN,
                trend: None,
            }),
            hold: None,
            last_step: None,
            warning: Latch::default(),
            critical: Latch::default(),
        }
    }

    /// The samples of the long trends, stamped with Unix ms (`now` and `now_ms` are one moment
    /// on both clocks): what a restart must not lose.
    pub fn history(&self, now: f64, now_ms: u64) -> Vec<Vec<(u64, f64)>> {
        self.long
            .iter()
            .map(|long| {
                long.window
                    .samples()
                    .map(|(t, y)| {
                        (
                            now_ms.saturating_sub(((now - t) * 1000.0).round() as u64),
                            y,
                        )
                    })
                    .collect()
            })
            .collect()
    }

    /// Restores samples saved by [`Exhaustion::history`] (those beyond their window drop out
    /// at the next sample).
    pub fn restore(&mut self, history: &[Vec<(u64, f64)>], now: f64, now_ms: u64) {
        for (long, samples) in self.long.iter_mut().zip(history) {
            for &(ms, y) in samples.iter().filter(|s| s.0 <= now_ms) {
                let t = now - (now_ms - ms) as f64 / 1000.0;
                long.window.push(t, y);
                long.next = t + long.every;
            }
            long.trend = long.window.trend();
        }
    }

    /// Sets (or clears) where the count is projected to hold.
    pub fn set_hold(&mut self, hold: Option<Hold>) {
        self.hold = hold;
    }

    /// Samples `count` at `t_secs` (monotonic) against `limit` (`None`: unlimited), and
    /// returns the reading with the alert changes it causes, warning first.
    pub fn tick(
        &mut self,
        t_secs: f64,
        count: f64,
        limit: Option<f64>,
    ) -> (Reading, [(Severity, Option<Change>); 2]) {
        let step = self.window.push(t_secs, count);
        if step.is_some() {
            self.last_step = Some(t_secs);
        }
        let settled = self
            .last_step
            .is_none_or(|at| t_secs - at >= CLEAR_AFTER_STEP_SECS);
        self.trend = self.window.trend();
        for long in &mut self.long {
            if t_secs >= long.next {
                long.next = t_secs + long.every;
                long.window.push(t_secs, count);
                long.trend = long.window.trend();
            }
        }
        let reading = Reading {
            step,
            ..self.reading(count, limit)
        };
        let t = self.thresholds;
        let check = |latch: &mut Latch, eta_limit: f64, usage_limit: f64, hold_over: bool| {
            latch.update(Check {
                firing: reading.usage >= usage_limit
                    || hold_over
                    || reading.eta_secs.is_some_and(|e| e <= eta_limit),
                cleared: reading.usage < usage_limit - USAGE_HYSTERESIS
                    && !hold_over
                    && settled
                    && reading
                        .growing_eta_secs
                        .is_none_or(|e| e > eta_limit * ETA_HYSTERESIS),
            })
        };
        let changes = [
            (
                Severity::Warning,
                check(
                    &mut self.warning,
                    t.warn_eta_secs,
                    t.warn_usage,
                    reading.hold_over,
                ),
            ),
            (
                Severity::Critical,
                check(&mut self.critical, t.crit_eta_secs, t.crit_usage, false),
            ),
        ];
        (reading, changes)
    }

    /// The reading for `count` with the current trend, without sampling it.
    pub fn reading(&self, count: f64, limit: Option<f64>) -> Reading {
        let Some(limit) = limit.filter(|&l| l > 0.0) else {
            return Reading {
                usage: 0.0,
                trend: self.trend,
                long: self.long.each_ref().map(|l| l.trend),
                eta_secs: None,
                growing_eta_secs: None,
                hold_over: false,
                step: None,
            };
        };
        // The fitted level smooths churn, but never report more headroom than the count has.
        // The soonest of the short and the long trends' times to the limit.
        let soonest = |eta: fn(&Trend, f64) -> Option<f64>| {
            std::iter::once(self.trend)
                .chain(self.long.iter().map(|l| l.trend))
                .flatten()
                .filter_map(|trend| {
                    let trend = Trend {
                        level: trend.level.max(count),
                        ..trend
                    };
                    eta(&trend, limit)
                })
                .min_by(f64::total_cmp)
        };
        let trend_eta = soonest(Trend::eta_secs);
        let growing_eta = soonest(Trend::eta_if_growing);
        let hold_over = self.hold.is_some_and(|h| h.level > limit);
        let holds_below = self.hold.is_some_and(|h| {
            h.level <= limit * (1.0 - HOLD_MARGIN) && count <= h.level * (1.0 + HOLD_TOLERANCE)
        });
        let with_crossing = |trend_eta: Option<f64>| {
            if holds_below {
                return None;
            }
            let crossing = self.hold.and_then(|h| h.crossing_secs);
            match (trend_eta, crossing) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };
        let eta_secs = with_crossing(trend_eta);
        let growing_eta_secs = with_crossing(growing_eta);
        Reading {
            usage: count / limit,
            trend: self.trend,
            long: self.long.each_ref().map(|l| l.trend),
            eta_secs,
            growing_eta_secs,
            hold_over,
            step: None,
        }
    }

    /// The state of `count` against `limit`, for the live view.
    pub fn status(&self, count: f64, limit: Option<f64>) -> Status {
        let reading = self.reading(count, limit);
        Status {
            count,
            limit,
            per_sec: reading.trend.map(|t| t.per_sec),
            eta_secs: reading.eta_secs,
            alert: self.severity(),
        }
    }

    /// The most severe alert raised and not resolved.
    pub fn severity(&self) -> Option<Severity> {
        if self.critical.is_active() {
            Some(Severity::Critical)
        } else if self.warning.is_active() {
            Some(Severity::Warning)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_leak_warns_then_goes_critical_and_resolves_when_it_stops() {
        let mut model = Exhaustion::new(Thresholds::default(), 600.0);
        let limit = Some(10_000.0);
        let mut raised = Vec::new();
        // +2 per second from 1,000: 4,500 s (75 min) to the limit, under the 6 h warning.
        for s in 0..10 {
            let (_, changes) = model.tick(f64::from(s), 1000.0 + 2.0 * f64::from(s), limit);
            raised.extend(
                changes
                    .iter()
                    .filter(|c| c.1 == Some(Change::Raise))
                    .map(|c| c.0),
            );
        }
        assert_eq!(raised, vec![Severity::Warning]);
        assert_eq!(model.severity(), Some(Severity::Warning));
        let reading = model.reading(1018.0, limit);
        let eta = reading.eta_secs.expect("growing");
        assert!((eta - 4491.0).abs() < 5.0, "{eta}");
        // Past 95%: critical whatever the trend.
        let (_, changes) = model.tick(10.0, 9_600.0, limit);
        assert_eq!(changes[1], (Severity::Critical, Some(Change::Raise)));
        // Flat far below the limit for a whole window: both resolve.
        let mut resolved = Vec::new();
        for s in 700..720 {
            let (_, changes) = model.tick(f64::from(s), 1000.0, limit);
            resolved.extend(
                changes
                    .iter()
                    .filter(|c| c.1 == Some(Change::Resolve))
                    .map(|c| c.0),
            );
        }
        assert_eq!(resolved, vec![Severity::Warning, Severity::Critical]);
        assert_eq!(model.severity(), None);
    }

    #[test]
    fn a_step_in_a_climb_keeps_the_alert_raised() {
        // +40 a second for 30 s (raised), 15 s flat, +3,000 at once (a step: the short trend
        // restarts), 15 s flat, then the climb again. Raised once, never resolved between:
        // while the trend is measured anew nothing says the danger is over.
        let mut model = Exhaustion::new(Thresholds::default(), 600.0);
        let limit = Some(65_530.0);
        let (mut count, mut raised, mut resolved, mut steps) = (40_000.0, 0, 0, 0);
        for s in 0..120 {
            match s {
                0..30 | 61.. => count += 40.0,
                45 => count += 3000.0,
                _ => {}
            }
            let (reading, changes) = model.tick(f64::from(s), count, limit);
            steps += usize::from(reading.step.is_some());
            for (severity, change) in changes {
                if severity == Severity::Warning {
                    raised += usize::from(change == Some(Change::Raise));
                    resolved += usize::from(change == Some(Change::Resolve));
                }
            }
        }
        assert_eq!(steps, 1, "the jump is a step");
        assert_eq!((raised, resolved), (1, 0));
    }

    #[test]
    fn a_burst_that_stays_flat_raises_nothing() {
        // Issue 12: 40,000 mappings, +3,000 in one second, flat for ten minutes after.
        let mut model = Exhaustion::new(Thresholds::default(), 600.0);
        let limit = Some(65_530.0);
        let mut steps = Vec::new();
        for s in 0..720 {
            let count = if s < 60 { 40_000.0 } else { 43_000.0 };
            let (reading, changes) = model.tick(f64::from(s), count, limit);
            assert!(changes.iter().all(|c| c.1.is_none()), "at {s}: {reading:?}");
            assert_eq!(reading.eta_secs, None, "at {s}");
            steps.extend(reading.step);
        }
        assert_eq!(steps.len(), 1);
        assert_eq!(model.severity(), None);
    }

    #[test]
    fn a_hold_under_the_limit_silences_the_climb_and_one_over_it_warns_at_once() {
        let limit = Some(14_000.0);
        let climb = |model: &mut Exhaustion| {
            // +667/s from 2,700 to 10,200: 11 s to the limit at the start.
            (0..12)
                .flat_map(|s| {
                    let count = (2700.0 + 667.0 * f64::from(s)).min(10_200.0);
                    model.tick(f64::from(s), count, limit).1
                })
                .filter_map(|(severity, change)| {
                    (change == Some(Change::Raise)).then_some(severity)
                })
                .collect::<Vec<_>>()
        };
        let mut unprojected = Exhaustion::new(Thresholds::default(), 600.0);
        assert_eq!(
            climb(&mut unprojected),
            vec![Severity::Warning, Severity::Critical]
        );
        let mut below = Exhaustion::new(Thresholds::default(), 600.0);
        below.set_hold(Some(Hold {
            level: 10_500.0,
            crossing_secs: None,
        }));
        assert_eq!(climb(&mut below), vec![]);
        assert_eq!(below.reading(10_200.0, limit).eta_secs, None);
        // Usage thresholds still apply: 95% of the limit is critical whatever the projection.
        assert_eq!(
            below.tick(12.0, 13_400.0, limit).1[1],
            (Severity::Critical, Some(Change::Raise))
        );
        let mut over = Exhaustion::new(Thresholds::default(), 600.0);
        over.set_hold(Some(Hold {
            level: 15_000.0,
            crossing_secs: Some(20_000.0),
        }));
        let (reading, changes) = over.tick(0.0, 2700.0, limit);
        assert_eq!(changes[0], (Severity::Warning, Some(Change::Raise)));
        assert_eq!(changes[1].1, None);
        assert_eq!(reading.eta_secs, Some(20_000.0));
    }

    #[test]
    fn slow_growth_under_jitter_shows_in_the_long_trend() {
        // +2,000 a day (1,000 segments) under +-100 of jitter: nothing in 10 minutes, an ETA
        // from the hours: 4.8 days from 56,000 of 65,530.
        let mut model = Exhaustion::new(Thresholds::default(), 600.0);
        let limit = Some(65_530.0);
        let mut reading = None;
        for s in (0..12 * 3600).step_by(10) {
            let t = f64::from(s);
            let jitter = 100.0 * (t * 0.37).sin();
            reading = Some(
                model
                    .tick(t, 55_000.0 + t * 2000.0 / 86_400.0 + jitter, limit)
                    .0,
            );
        }
        let reading = reading.unwrap();
        let six_hours = reading.long[0].expect("a 6 h trend");
        assert!(
            (six_hours.per_sec * 86_400.0 - 2000.0).abs() < 200.0,
            "{six_hours:?}"
        );
        let eta = reading.eta_secs.expect("an ETA from the long trend");
        let true_eta = (65_530.0 - 56_000.0) / (2000.0 / 86_400.0);
        assert!(
            (eta - true_eta).abs() < 0.2 * true_eta,
            "{eta} vs {true_eta}"
        );
        assert!(reading.long[1].is_some(), "7 d: 12 samples of an hour");
    }

    #[test]
    fn the_long_trends_survive_a_restart() {
        let limit = Some(65_530.0);
        let mut before = Exhaustion::new(Thresholds::default(), 600.0);
        for s in (0..12 * 3600).step_by(60) {
            before.tick(f64::from(s), 40_000.0 + f64::from(s) * 0.1, limit);
        }
        // Saved at monotonic 43,200 s = Unix 1,800,000,000,000 ms; restored 2 minutes later
        // by a process whose monotonic clock reads 50.
        let saved = before.history(43_200.0, 1_800_000_000_000);
        let mut after = Exhaustion::new(Thresholds::default(), 600.0);
        after.restore(&saved, 50.0, 1_800_000_120_000);
        let reading = after.reading(44_320.0, limit);
        assert_eq!(reading.trend, None, "the short trend starts again");
        let six_hours = reading.long[0].expect("6 h of history restored");
        assert!((six_hours.per_sec - 0.1).abs() < 1e-9, "{six_hours:?}");
        assert!(reading.eta_secs.is_some());
        assert_eq!(saved[0].len(), 73, "6 h of 5-minute samples, both ends");
    }

    #[test]
    fn no_limit_means_no_eta_and_no_alert() {
        let mut model = Exhaustion::new(Thresholds::default(), 600.0);
        for s in 0..10 {
            let (reading, changes) = model.tick(f64::from(s), 1e9 * f64::from(s), None);
            assert_eq!(reading.eta_secs, None);
            assert!(changes.iter().all(|c| c.1.is_none()));
        }
        assert!(model.reading(1.0, None).trend.is_some());
    }
}
