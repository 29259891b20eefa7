//! Growth rate of a count (mappings, descriptors, bytes), robust to churn.
//!
//! A JVM maps and unmaps all the time (thread stacks, GC regions, JIT code, direct buffers), so
//! the count jitters and spikes around a slow trend. The estimator is Theil–Sen: the slope is
//! the median of the slopes between all pairs of samples, and the level the median of the
//! residuals. It ignores up to ~29% of samples being outliers (a burst of transient mappings),
//! needs no tuning, and for a steady trend equals least squares. Samples are kept once per
//! second over the window and thinned to at most [`MAX_POINTS`] evenly spaced points, so one
//! estimate costs at most ~7,000 pair slopes (microseconds).

use std::collections::VecDeque;

/// Most points fed to Theil–Sen per estimate.
pub const MAX_POINTS: usize = 120;

/// Fewest points and shortest span for an estimate; before that the rate is unknown.
const MIN_POINTS: usize = 5;
const MIN_SPAN_SECS: f64 = 4.0;

/// Drops the samples (oldest first, each stamped with its time in seconds) more than
/// `window_secs` older than `now`.
pub fn keep_window<T>(samples: &mut VecDeque<(f64, T)>, now: f64, window_secs: f64) {
    while samples.front().is_some_and(|(t, _)| now - t > window_secs) {
        samples.pop_front();
    }
}

/// A fitted trend: `level` at the newest sample's time, growing by `per_sec`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Trend {
    pub per_sec: f64,
    pub level: f64,
}

impl Trend {
    /// Seconds until the trend reaches `limit`: `Some(0)` at or over it, `None` when it does
    /// not grow.
    pub fn eta_secs(&self, limit: f64) -> Option<f64> {
        if self.level >= limit {
            Some(0.0)
        } else if self.per_sec > 0.0 {
            Some((limit - self.level) / self.per_sec)
        } else {
            None
        }
    }
}

/// Samples of the count over a sliding time window.
pub struct RateWindow {
    window_secs: f64,
    samples: VecDeque<(f64, f64)>,
    /// Scratch buffers reused by every estimate.
    points: Vec<(f64, f64)>,
    values: Vec<f64>,
}

impl RateWindow {
    pub fn new(window_secs: f64) -> Self {
        Self {
            window_secs,
            samples: VecDeque::new(),
            points: Vec::with_capacity(MAX_POINTS),
            values: Vec::with_capacity(MAX_POINTS * MAX_POINTS / 2),
        }
    }

    /// Adds the count seen at `t` seconds (monotonic) and drops samples older than the window.
    pub fn push(&mut self, t: f64, count: f64) {
        self.samples.push_back((t, count));
        keep_window(&mut self.samples, t, self.window_secs);
    }

    /// The Theil–Sen trend over the window, or `None` while there are too few samples.
    pub fn trend(&mut self) -> Option<Trend> {
        let n = self.samples.len();
        let (&(first, _), &(last, _)) = (self.samples.front()?, self.samples.back()?);
        if n < MIN_POINTS || last - first < MIN_SPAN_SECS {
            return None;
        }
        self.points.clear();
        let keep = n.min(MAX_POINTS);
        for i in 0..keep {
            // Evenly spaced indices that always include the first and the last sample.
            let index = if keep == 1 {
                0
            } else {
                i * (n - 1) / (keep - 1)
            };
            self.points.push(self.samples[index]);
        }

        self.values.clear();
        for (i, &(ti, yi)) in self.points.iter().enumerate() {
            for &(tj, yj) in &self.points[i + 1..] {
                if tj > ti {
                    self.values.push((yj - yi) / (tj - ti));
                }
            }
        }
        let per_sec = median(&mut self.values)?;

        self.values.clear();
        self.values
            .extend(self.points.iter().map(|&(t, y)| y - per_sec * (t - last)));
        let level = median(&mut self.values)?;
        Some(Trend { per_sec, level })
    }
}

/// Median by selection (O(n)); `None` for no values.
fn median(values: &mut [f64]) -> Option<f64> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let (_, &mut upper, _) = values.select_nth_unstable_by(n / 2, f64::total_cmp);
    if n % 2 == 1 {
        return Some(upper);
    }
    let lower = values[..n / 2]
        .iter()
        .copied()
        .max_by(f64::total_cmp)
        .unwrap_or(upper);
    Some(f64::midpoint(lower, upper))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window_of(samples: impl IntoIterator<Item = (f64, f64)>) -> RateWindow {
        let mut window = RateWindow::new(600.0);
        for (t, y) in samples {
            window.push(t, y);
        }
        window
    }

    #[test]
    fn unknown_until_enough_samples() {
        let mut window = window_of((0..4).map(|t| (f64::from(t), 100.0)));
        assert_eq!(window.trend(), None);
        window.push(4.0, 100.0);
        assert_eq!(
            window.trend(),
            Some(Trend {
                per_sec: 0.0,
                level: 100.0
            })
        );
    }

    #[test]
    fn steady_growth_gives_exact_rate_and_eta() {
        let mut window = window_of((0..60).map(|t| (f64::from(t), 1000.0 + 10.0 * f64::from(t))));
        let trend = window.trend().unwrap();
        assert!((trend.per_sec - 10.0).abs() < 1e-9);
        assert!((trend.level - 1590.0).abs() < 1e-9);
        assert!((trend.eta_secs(2590.0).unwrap() - 100.0).abs() < 1e-9);
    }

    #[test]
    fn churn_spikes_do_not_move_the_trend() {
        // 2 mappings/s of growth under +-40 of jitter and a 25% share of +3,000 spikes (a burst
        // of thread stacks or transient direct buffers).
        let samples = (0..300).map(|t| {
            let t = f64::from(t);
            let jitter = 40.0 * (t * 1.7).sin();
            let spike = if (t as u32) % 4 == 1 { 3000.0 } else { 0.0 };
            (t, 5000.0 + 2.0 * t + jitter + spike)
        });
        let trend = window_of(samples).trend().unwrap();
        assert!((trend.per_sec - 2.0).abs() < 0.2, "{trend:?}");
        assert!(
            (trend.level - (5000.0 + 2.0 * 299.0)).abs() < 60.0,
            "{trend:?}"
        );
    }

    #[test]
    fn staircase_growth_gives_the_average_rate() {
        // Kafka-like: 4 s of mapping at 500/s, then a 3 s pause: 2000 per 7 s on average.
        let samples = (0..140).map(|t| {
            let (period, phase) = (t / 7, t % 7);
            let y = 2000.0 * f64::from(period) + 500.0 * f64::from(phase.min(4));
            (f64::from(t), y)
        });
        let trend = window_of(samples).trend().unwrap();
        let average = 2000.0 / 7.0;
        assert!(
            (trend.per_sec - average).abs() / average < 0.05,
            "{trend:?}"
        );
    }

    #[test]
    fn shrinking_or_flat_counts_have_no_eta() {
        let mut window = window_of((0..30).map(|t| (f64::from(t), 9000.0 - f64::from(t))));
        let trend = window.trend().unwrap();
        assert!(trend.per_sec < 0.0);
        assert_eq!(trend.eta_secs(65530.0), None);
        assert_eq!(
            Trend {
                per_sec: 0.0,
                level: 70_000.0
            }
            .eta_secs(65530.0),
            Some(0.0)
        );
    }

    #[test]
    fn old_samples_leave_the_window() {
        let mut window = RateWindow::new(60.0);
        // Fast growth long ago, flat for the last minute.
        for t in 0..100 {
            window.push(f64::from(t), 100.0 * f64::from(t));
        }
        for t in 100..200 {
            window.push(f64::from(t), 10_000.0);
        }
        assert!(window.trend().unwrap().per_sec.abs() < 1e-12);
    }

    #[test]
    fn thinning_keeps_large_windows_cheap_and_accurate() {
        let mut window = RateWindow::new(3600.0);
        for t in 0..3600 {
            window.push(f64::from(t), 0.5 * f64::from(t));
        }
        let trend = window.trend().unwrap();
        assert!((trend.per_sec - 0.5).abs() < 1e-9);
        assert!(window.values.capacity() >= MAX_POINTS);
    }

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }
}
