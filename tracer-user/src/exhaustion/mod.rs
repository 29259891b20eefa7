//! A count growing toward a hard limit that kills the process when reached: mappings against
//! `vm.max_map_count`, file descriptors against `RLIMIT_NOFILE`, memory against the cgroup's
//! limit. One model for all of them: the trend of the count (Theil–Sen over a window), the
//! time until it reaches the limit, and a warning and a critical alert on either the time
//! left or the share of the limit used, raised once and resolved with hysteresis.

pub mod rate;

use crate::alert::{Change, Check, Latch, Severity};
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

/// A raised alert clears only when the usage is this much below its threshold...
const USAGE_HYSTERESIS: f64 = 0.02;
/// ...and the time to exhaustion this many times above its threshold (or unknown).
const ETA_HYSTERESIS: f64 = 1.25;

/// One evaluation of the count against its limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reading {
    /// `count / limit`; 0 without a limit.
    pub usage: f64,
    pub trend: Option<Trend>,
    /// Seconds until the trend reaches the limit; `None` when it does not grow, its growth
    /// does not persist, or there is no limit.
    pub eta_secs: Option<f64>,
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
    /// empty otherwise. `rate` words the growth per second.
    pub fn growth_clause(&self, rate: impl Fn(f64) -> String) -> String {
        match (self.trend, self.eta_secs) {
            (Some(trend), Some(eta)) => format!(
                ", growing {}/min: limit reached in {}",
                rate(trend.per_sec),
                crate::vma::duration(eta)
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
    warning: Latch,
    critical: Latch,
}

impl Exhaustion {
    pub fn new(thresholds: Thresholds, window_secs: f64) -> Self {
        Self {
            thresholds,
            window: RateWindow::new(window_secs),
            trend: None,
            warning: Latch::default(),
            critical: Latch::default(),
        }
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
        self.trend = self.window.trend();
        let reading = Reading {
            step,
            ..self.reading(count, limit)
        };
        let t = self.thresholds;
        let check = |latch: &mut Latch, eta_limit: f64, usage_limit: f64| {
            latch.update(Check {
                firing: reading.usage >= usage_limit
                    || reading.eta_secs.is_some_and(|e| e <= eta_limit),
                cleared: reading.usage < usage_limit - USAGE_HYSTERESIS
                    && reading
                        .eta_secs
                        .is_none_or(|e| e > eta_limit * ETA_HYSTERESIS),
            })
        };
        let changes = [
            (
                Severity::Warning,
                check(&mut self.warning, t.warn_eta_secs, t.warn_usage),
            ),
            (
                Severity::Critical,
                check(&mut self.critical, t.crit_eta_secs, t.crit_usage),
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
                eta_secs: None,
                step: None,
            };
        };
        // The fitted level smooths churn, but never report more headroom than the count has.
        let eta_secs = self.trend.and_then(|trend| {
            Trend {
                level: trend.level.max(count),
                ..trend
            }
            .eta_secs(limit)
        });
        Reading {
            usage: count / limit,
            trend: self.trend,
            eta_secs,
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
