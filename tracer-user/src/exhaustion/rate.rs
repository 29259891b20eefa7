//! Growth rate of a count (mappings, descriptors, bytes), robust to churn.
//!
//! A JVM maps and unmaps all the time (thread stacks, GC regions, JIT code, direct buffers), so
//! the count jitters and spikes around a slow trend. The estimator is Theil–Sen: the slope is
//! the median of the slopes between all pairs of samples, and the level the median of the
//! residuals. It ignores up to ~29% of samples being outliers (a burst of transient mappings),
//! needs no tuning, and for a steady trend equals least squares. Samples are kept once per
//! second over the window and thinned to at most [`MAX_POINTS`] evenly spaced points, so one
//! estimate costs at most ~7,000 pair slopes (microseconds).
//!
//! Steps are not trends. A one-time jump (a partition reassignment maps 3,000 index files in
//! a second, then the count stays flat) puts about half of the pairs on either side of it, and
//! their median slope reads as fast growth. Two rules keep such a jump from becoming an ETA:
//! the window detects a step (a flat stretch, a jump within two samples, a flat stretch at the
//! new level: [`Step`]) and restarts at it, so the growth shown after it is the growth since;
//! and a time to the limit needs growth that persists: the lower 95% confidence bound of the
//! Theil–Sen slope (Sen 1968: the order statistic of the pair slopes that Kendall's S bounds)
//! above zero over the whole window and over each of its halves ([`Trend::lower_per_sec`]).
//! A jump under jitter too wide to call it a step still leaves one half flat. A staircase
//! (Kafka rolling segments in bursts) keeps its average rate: its rises are in both halves.

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

/// Samples on each side of a step that must be flat, and the samples allowed inside it.
const STEP_FLAT: usize = 5;
const STEP_INSIDE: usize = 1;
/// A step moves the count by at least this many times the spread of the flat stretches
/// around it,...
const STEP_OVER_SPREAD: f64 = 4.0;
/// ...this share of the level before it,...
const STEP_MIN_SHARE: f64 = 0.02;
/// ...and this many units.
const STEP_MIN: f64 = 16.0;
/// A step is a stair of a staircase when the count had already jumped the same way, since the
/// window began, by this share of the step or more within a step's span of samples.
const STAIRCASE_SHARE: f64 = 0.5;
/// z of the one-sided 97.5% quantile: [`Trend::lower_per_sec`] is the lower end of a 95%
/// interval.
const Z_95: f64 = 1.96;

/// A fitted trend: `level` at the newest sample's time, growing by `per_sec`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Trend {
    pub per_sec: f64,
    pub level: f64,
    /// The lowest of the lower bounds of the slope's 95% confidence interval over the window
    /// and over each half: above zero only when the growth persists through the window (a
    /// single jump leaves one half flat).
    pub lower_per_sec: f64,
}

/// A one-time jump of the count: flat before, flat after, the change within two samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Step {
    /// Time (same clock as the samples) of the first sample at the new level.
    pub at: f64,
    /// Seconds between the last sample at the old level and the first at the new one.
    pub secs: f64,
    /// The levels (medians of the flat stretches) before and after.
    pub from: f64,
    pub to: f64,
}

impl Trend {
    /// Seconds until the trend reaches `limit`: `Some(0)` at or over it, `None` when it does
    /// not grow, or its growth does not persist (`lower_per_sec` not above zero).
    pub fn eta_secs(&self, limit: f64) -> Option<f64> {
        if self.lower_per_sec > 0.0 {
            self.eta_if_growing(limit)
        } else {
            self.eta_if_growing(limit).filter(|&eta| eta == 0.0)
        }
    }

    /// Seconds until the trend reaches `limit` at its slope, whether or not the growth
    /// persists: what keeps a raised alert raised through a pause in the growth.
    pub fn eta_if_growing(&self, limit: f64) -> Option<f64> {
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
    /// Whether a step restarts the window (not for the long trends, whose growth is steps).
    steps: bool,
    samples: VecDeque<(f64, f64)>,
    /// When the last step came, and its direction: a second one the same way within the
    /// window is a staircase (Kafka rolling segments in bursts), growth, not a step.
    last_step: Option<(f64, bool)>,
    /// Scratch buffers reused by every estimate.
    points: Vec<(f64, f64)>,
    values: Vec<f64>,
}

impl RateWindow {
    pub fn new(window_secs: f64) -> Self {
        Self {
            window_secs,
            steps: true,
            samples: VecDeque::new(),
            last_step: None,
            points: Vec::with_capacity(MAX_POINTS),
            values: Vec::with_capacity(MAX_POINTS * MAX_POINTS / 2),
        }
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.samples.iter().copied()
    }

    /// A window whose trend keeps its steps: over hours and days Kafka's segment rolls are
    /// steps, and they are the growth.
    pub fn keeping_steps(window_secs: f64) -> Self {
        Self {
            steps: false,
            ..Self::new(window_secs)
        }
    }

    /// Adds the count seen at `t` seconds (monotonic) and drops samples older than the window.
    /// When the newest samples complete a step, the window restarts at it (the trend is the
    /// growth since) and the step is returned; unless a step the same way came within the
    /// window before it: then the two are a staircase, and the window keeps both.
    pub fn push(&mut self, t: f64, count: f64) -> Option<Step> {
        self.samples.push_back((t, count));
        keep_window(&mut self.samples, t, self.window_secs);
        if !self.steps {
            return None;
        }
        let step = self.step()?;
        let up = step.to > step.from;
        let staircase = self.climbed_before(&step)
            || self
                .last_step
                .is_some_and(|(at, was_up)| was_up == up && step.at - at <= self.window_secs);
        self.last_step = Some((step.at, up));
        if staircase {
            return None;
        }
        while self.samples.front().is_some_and(|&(t, _)| t < step.at) {
            self.samples.pop_front();
        }
        Some(step)
    }

    /// Whether the count had already jumped the way `step` goes, since the window began: by
    /// [`STAIRCASE_SHARE`] of the step within a step's span of samples (flat stretch and
    /// inside), an earlier stair. Slow steady growth before a jump is no stair: the jump stays
    /// a step, and the growth after it is the growth since.
    fn climbed_before(&self, step: &Step) -> bool {
        let span = STEP_FLAT + STEP_INSIDE;
        let size = step.to - step.from;
        let before = self
            .samples
            .iter()
            .take_while(|&&(t, _)| t < step.at - step.secs)
            .count();
        (span..before).any(|i| {
            (self.samples[i].1 - self.samples[i - span].1) * size.signum()
                >= STAIRCASE_SHARE * size.abs()
        })
    }

    /// A step ending with the newest [`STEP_FLAT`] samples, if there is one.
    fn step(&mut self) -> Option<Step> {
        let n = self.samples.len();
        let post_start = n.checked_sub(STEP_FLAT)?;
        let post = self.flat(post_start..n)?;
        // The jump may straddle a sample: try it between two samples, then across one.
        (0..=STEP_INSIDE).find_map(|inside| {
            let pre_end = post_start.checked_sub(inside)?;
            let pre = self.flat(pre_end.checked_sub(STEP_FLAT)?..pre_end)?;
            let size = (post.0 - pre.0).abs();
            let big = size >= STEP_MIN
                && size >= STEP_MIN_SHARE * pre.0.abs()
                && size >= STEP_OVER_SPREAD * (pre.1 + post.1);
            big.then(|| Step {
                at: self.samples[post_start].0,
                secs: self.samples[post_start].0 - self.samples[pre_end - 1].0,
                from: pre.0,
                to: post.0,
            })
        })
    }

    /// The median and the spread (max - min) of the samples in `range`.
    fn flat(&mut self, range: std::ops::Range<usize>) -> Option<(f64, f64)> {
        self.values.clear();
        self.values
            .extend(self.samples.range(range).map(|&(_, y)| y));
        let (lo, hi) = self
            .values
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &y| (lo.min(y), hi.max(y)));
        Some((median(&mut self.values)?, hi - lo))
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

        // Growth persists when it is there in each half of the window as well as in the whole.
        let half = keep / 2;
        let mut lower_per_sec = f64::INFINITY;
        for range in [0..half, half..keep] {
            pair_slopes(&self.points[range.clone()], &mut self.values);
            lower_per_sec = lower_per_sec.min(lower_bound(&mut self.values, range.len()));
        }
        pair_slopes(&self.points, &mut self.values);
        let per_sec = median(&mut self.values)?;
        lower_per_sec = lower_per_sec.min(lower_bound(&mut self.values, keep));

        self.values.clear();
        self.values
            .extend(self.points.iter().map(|&(t, y)| y - per_sec * (t - last)));
        let level = median(&mut self.values)?;
        Some(Trend {
            per_sec,
            level,
            lower_per_sec,
        })
    }
}

/// The slopes between all pairs of `points` (time-ordered) into `out`.
fn pair_slopes(points: &[(f64, f64)], out: &mut Vec<f64>) {
    out.clear();
    for (i, &(ti, yi)) in points.iter().enumerate() {
        for &(tj, yj) in &points[i + 1..] {
            if tj > ti {
                out.push((yj - yi) / (tj - ti));
            }
        }
    }
}

/// The lower end of the 95% confidence interval of the Theil–Sen slope of `points` points,
/// from its pair slopes `slopes`: the slope of rank (M - z sqrt(Var S)) / 2 of the M, where
/// Var S = n (n - 1) (2n + 5) / 18 is the variance of Kendall's S without ties.
fn lower_bound(slopes: &mut [f64], points: usize) -> f64 {
    let (m, n) = (slopes.len() as f64, points as f64);
    let c = Z_95 * (n * (n - 1.0) * (2.0 * n + 5.0) / 18.0).sqrt();
    let rank = ((m - c) / 2.0).floor();
    if rank < 0.0 || slopes.is_empty() {
        return f64::NEG_INFINITY;
    }
    let (_, &mut lower, _) = slopes.select_nth_unstable_by(rank as usize, f64::total_cmp);
    lower
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
        window_and_steps(samples).0
    }

    fn window_and_steps(samples: impl IntoIterator<Item = (f64, f64)>) -> (RateWindow, Vec<Step>) {
        let mut window = RateWindow::new(600.0);
        let steps = samples
            .into_iter()
            .filter_map(|(t, y)| window.push(t, y))
            .collect();
        (window, steps)
    }

    /// Deterministic jitter in [-amplitude, amplitude] (a JVM mapping and unmapping).
    fn jitter(t: u32, amplitude: f64) -> f64 {
        let x = u64::from(t).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
        amplitude * ((x % 2001) as f64 / 1000.0 - 1.0)
    }

    #[test]
    fn a_one_time_jump_is_a_step_and_the_trend_restarts_after_it() {
        // 40,000 for a minute, +3,000 in one second at t = 60, flat since.
        let (mut window, steps) = window_and_steps(
            (0..135).map(|t| (f64::from(t), if t < 60 { 40_000.0 } else { 43_000.0 })),
        );
        assert_eq!(
            steps,
            vec![Step {
                at: 60.0,
                secs: 1.0,
                from: 40_000.0,
                to: 43_000.0
            }]
        );
        let trend = window.trend().unwrap();
        assert_eq!((trend.per_sec, trend.level), (0.0, 43_000.0));
        assert_eq!(trend.eta_secs(65_530.0), None);
    }

    #[test]
    fn steps_the_same_way_are_a_staircase_and_keep_the_trend() {
        // +8,000 in a second every 10 s, flat in between (segments rolled in bursts, sampled
        // once a second): one step, then growth at the average rate, 800 a second.
        let (mut window, steps) = window_and_steps(
            (0..60).map(|t| (f64::from(t), 40_000.0 + 8_000.0 * f64::from(t / 10))),
        );
        assert_eq!(steps.len(), 1, "{steps:?}");
        let trend = window.trend().unwrap();
        assert!((trend.per_sec - 800.0).abs() < 80.0, "{trend:?}");
        assert!(trend.eta_secs(200_000.0).is_some(), "{trend:?}");
    }

    #[test]
    fn a_climb_paused_then_jumping_is_a_staircase_not_a_step() {
        // A SegmentRoller read from /proc once a second (a run that lost its ETA): +2,000/s
        // for 4 s, flat for 6 s, again; one climb of the 4th burst lands in a single sample
        // and makes a clean flat-jump-flat. It had climbed 24,000 before: not a one-time step.
        let counts = [
            157, 2160, 4161, 6162, 8162, 8168, 8168, 8168, 8168, 8168, 8168, 10164, 12164, 14164,
            16164, 16164, 16168, 16168, 16168, 16168, 16168, 16168, 20152, 20152, 24156, 24156,
            24156, 24168, 24168, 24168, 24168, 26158, 26158, 26158, 32160, 32160, 32160, 32168,
            32168, 32168, 32168,
        ];
        let (mut window, steps) = window_and_steps(
            counts
                .iter()
                .enumerate()
                .map(|(t, &y)| (t as f64, f64::from(y))),
        );
        assert!(steps.is_empty(), "{steps:?}");
        let trend = window.trend().unwrap();
        assert!((trend.per_sec - 800.0).abs() < 100.0, "{trend:?}");
        assert!(trend.eta_secs(65_530.0).is_some(), "{trend:?}");
    }

    #[test]
    fn slow_growth_then_a_jump_is_still_a_step() {
        // +1/s for 10 minutes, +1,000 in one second, +1/s again: the climb before is no
        // stair, and the jump must not read as fast growth (a false ETA of 2.4 h, where the
        // growth since leaves 6.6 h).
        let y = |t: u32| 40_000.0 + f64::from(t) + if t >= 600 { 1000.0 } else { 0.0 };
        let (mut window, steps) = window_and_steps((0..700).map(|t| (f64::from(t), y(t))));
        assert_eq!(steps.len(), 1, "{steps:?}");
        let trend = window.trend().unwrap();
        assert!((trend.per_sec - 1.0).abs() < 0.05, "{trend:?}");
    }

    #[test]
    fn a_jump_across_a_sample_and_under_jitter_is_one_step() {
        // +-100 of JVM jitter; the burst lands half in one second, half in the next.
        let y = |t: u32| {
            let base = match t {
                0..60 => 40_000.0,
                60 => 41_500.0,
                _ => 43_000.0,
            };
            base + jitter(t, 100.0)
        };
        let (mut window, steps) = window_and_steps((0..135).map(|t| (f64::from(t), y(t))));
        assert_eq!(steps.len(), 1, "{steps:?}");
        assert_eq!((steps[0].at, steps[0].secs), (61.0, 2.0));
        assert!(
            (steps[0].to - steps[0].from - 3000.0).abs() < 200.0,
            "{steps:?}"
        );
        let trend = window.trend().unwrap();
        assert!(trend.lower_per_sec <= 0.0, "{trend:?}");
        assert_eq!(trend.eta_secs(65_530.0), None);
    }

    #[test]
    fn a_jump_without_flat_sides_is_no_eta_either() {
        // Jitter too wide for a step (+-800 around a 3,000 jump): the trend may lean, but its
        // lower bound does not clear zero, so there is no time to the limit.
        let y = |t: u32| if t < 60 { 40_000.0 } else { 43_000.0 } + jitter(t, 800.0);
        let (mut window, steps) = window_and_steps((0..135).map(|t| (f64::from(t), y(t))));
        assert!(steps.is_empty(), "{steps:?}");
        let trend = window.trend().unwrap();
        assert!(trend.lower_per_sec <= 0.0, "{trend:?}");
        assert_eq!(trend.eta_secs(65_530.0), None);
    }

    #[test]
    fn jitter_and_one_second_spikes_are_not_steps() {
        let y = |t: u32| 30_000.0 + jitter(t, 100.0) + if t % 97 == 50 { 3000.0 } else { 0.0 };
        let (mut window, steps) = window_and_steps((0..600).map(|t| (f64::from(t), y(t))));
        assert!(steps.is_empty(), "{steps:?}");
        assert_eq!(window.trend().unwrap().eta_secs(65_530.0), None);
    }

    #[test]
    fn slow_growth_under_jitter_persists() {
        // +1/s under +-100 of jitter over 10 minutes: a real leak keeps its ETA.
        let y = |t: u32| 30_000.0 + f64::from(t) + jitter(t, 100.0);
        let (mut window, steps) = window_and_steps((0..600).map(|t| (f64::from(t), y(t))));
        assert!(steps.is_empty(), "{steps:?}");
        let trend = window.trend().unwrap();
        assert!(trend.lower_per_sec > 0.5, "{trend:?}");
        assert!((trend.per_sec - 1.0).abs() < 0.1, "{trend:?}");
        assert!(trend.eta_secs(65_530.0).is_some());
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
                level: 100.0,
                // Halves of 2 and 3 points bound nothing: no ETA yet.
                lower_per_sec: f64::NEG_INFINITY,
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
        let (mut window, steps) = window_and_steps(samples);
        assert!(steps.is_empty(), "{steps:?}");
        let trend = window.trend().unwrap();
        assert!(trend.lower_per_sec > 0.0, "{trend:?}");
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
                level: 70_000.0,
                lower_per_sec: 0.0,
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
