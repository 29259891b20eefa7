//! The socket records' clock: the kernel's tick count, measured against `CLOCK_MONOTONIC`
//! before the probes load ([`TickClock`]), so that the socket probe stamps its records with
//! one load where `bpf_ktime_get_ns` would cost a helper call on every transition.

use std::time::Duration;

use tracer_common::config::TickClock;

/// The tick lengths a kernel can have on x86-64 (`CONFIG_HZ` 100, 250, 300 or 1000), as the
/// kernel rounds them (`TICK_NSEC`).
const TICKS_NS: [u64; 4] = [
    tick_nsec(100),
    tick_nsec(250),
    tick_nsec(300),
    tick_nsec(1000),
];

/// `TICK_NSEC` of a kernel built with `CONFIG_HZ=hz`.
const fn tick_nsec(hz: u64) -> u64 {
    (1_000_000_000 + hz / 2) / hz
}

/// How far a measured tick may be from the nearest known length and still be taken for it.
const TOLERANCE: f64 = 0.2;

/// Longest wait for the tick count to move: longer than two ticks of the slowest kernel.
const PATIENCE: Duration = Duration::from_millis(100);

/// Measures the kernel's ticks: waits for the count (`jiffies`, read in the kernel) to move
/// twice, timing each move with `now` (`CLOCK_MONOTONIC` nanoseconds). The first move starts
/// the clock's base; the time between the two is the tick, taken as the nearest length a
/// kernel can have. An error when the count does not move, or moves at no known rate.
pub fn measure(
    mut jiffies: impl FnMut() -> Result<u64, String>,
    mut now: impl FnMut() -> u64,
) -> Result<TickClock, String> {
    let deadline = now() + PATIENCE.as_nanos() as u64;
    let mut moved = || -> Result<(u64, u64), String> {
        let from = jiffies()?;
        loop {
            let count = jiffies()?;
            // Read after the count, so that the tick began at or before this time.
            let at = now();
            if count != from {
                return Ok((count, at));
            }
            if at > deadline {
                return Err(format!(
                    "the kernel's tick count stayed at {from} for {} ms",
                    PATIENCE.as_millis()
                ));
            }
        }
    };
    let (base_jiffies, base_ns) = moved()?;
    let (next, next_at) = moved()?;
    let measured = next_at.saturating_sub(base_ns) as f64 / next.wrapping_sub(base_jiffies) as f64;
    let tick_ns = nearest_tick(measured)
        .ok_or_else(|| format!("the kernel's ticks last {measured:.0} ns, no known CONFIG_HZ"))?;
    Ok(TickClock {
        base_ns,
        base_jiffies,
        tick_ns,
    })
}

/// The known tick length nearest to `measured` nanoseconds, if it is within [`TOLERANCE`].
fn nearest_tick(measured: f64) -> Option<u64> {
    TICKS_NS
        .into_iter()
        .min_by(|&a, &b| {
            (a as f64 - measured)
                .abs()
                .total_cmp(&(b as f64 - measured).abs())
        })
        .filter(|&tick| (tick as f64 - measured).abs() <= tick as f64 * TOLERANCE)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// Measures a kernel whose count is `first` at `start` ns and moves every `tick` ns, on a
    /// clock that advances `step` ns per read of either.
    fn run(first: u64, tick: u64, start: u64, step: u64) -> Result<TickClock, String> {
        let clock = Cell::new(start);
        let read = || {
            clock.set(clock.get() + step);
            clock.get()
        };
        measure(|| Ok(first + (read() - start) / tick), read)
    }

    #[test]
    fn every_hz_is_told_apart_and_times_are_never_early() {
        for hz in [100, 250, 300, 1000] {
            let tick = tick_nsec(hz);
            let start = 7_000_000_123;
            let clock = run(4_294_000_000, tick, start, 1_500).expect("measured");
            assert_eq!(clock.tick_ns, tick, "HZ={hz}");
            // An event at any time while the count is some later value j (here up to a year
            // on) is stamped after it happened, and at most a tick and three reads after the
            // tick began.
            for ticks_later in [0, 1, 1_000, 365 * 86_400 * hz] {
                let j = clock.base_jiffies + ticks_later;
                let began = start + (j - 4_294_000_000) * tick;
                let stamped = clock.at(j);
                assert!(stamped > began + tick - 1, "HZ={hz} j={j}");
                assert!(stamped <= began + tick + 3 * 1_500, "HZ={hz} j={j}");
            }
        }
    }

    #[test]
    fn a_count_that_does_not_move_or_moves_oddly_is_an_error() {
        let e = measure(|| Ok(5), {
            let clock = Cell::new(0);
            move || {
                clock.set(clock.get() + 1_000_000);
                clock.get()
            }
        })
        .expect_err("stuck");
        assert!(e.contains("stayed at 5"), "{e}");
        let e = run(0, 2_000_000, 0, 1_000).expect_err("500 Hz");
        assert!(e.contains("no known CONFIG_HZ"), "{e}");
        let e = measure(|| Err("no test runs".to_owned()), || 0).expect_err("no runs");
        assert_eq!(e, "no test runs");
    }
}
