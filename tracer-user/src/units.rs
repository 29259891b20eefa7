//! Numbers as a person on call reads them, in alert messages, log lines and the live view:
//! counts with thousands separators, bytes in binary units, growth per minute, durations.
//! Every model words its numbers with these, so the same quantity reads the same everywhere.
//!
//! Hand-written rather than from a crate: `humantime` prints every unit of a duration
//! ("3h 20m 5s", "4days 4h") where two are what a glance needs, and `bytesize` picks the unit
//! before rounding ("1024.0 KiB" for a byte short of 1 MiB).

/// 65530 -> "65,530".
#[must_use]
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes for humans: "812.0 MiB", "1.1 GiB", "4.0 KiB", "12 B".
#[must_use]
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    // Integer tenths, rounded half up; move to the next unit when rounding reaches 1024.0.
    let n = u128::from(n);
    let mut div: u128 = 1024;
    let mut unit = 0;
    loop {
        let tenths = (n * 10 + div / 2) / div;
        if tenths < 10_240 || unit == UNITS.len() - 1 {
            return format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit]);
        }
        div *= 1024;
        unit += 1;
    }
}

/// A growth rate for humans: "+1,203", "+2.5", "-40".
pub fn rate_per_min(per_sec: f64) -> String {
    let per_min = per_sec * 60.0;
    if per_min.abs() >= 100.0 {
        let sign = if per_min < 0.0 { "-" } else { "+" };
        format!("{sign}{}", thousands(per_min.abs().round() as u64))
    } else {
        format!("{per_min:+.1}")
    }
}

/// Seconds for humans: "45s", "12m 5s", "3h 20m", "4d 2h".
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_and_bytes() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(65_530), "65,530");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(u64::MAX), "18,446,744,073,709,551,615");

        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(4096), "4.0 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes((1 << 20) - 1), "1.0 MiB");
        assert_eq!(human_bytes(812 << 20), "812.0 MiB");
        assert_eq!(human_bytes(1_181_116_006), "1.1 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn rates_for_humans() {
        assert_eq!(rate_per_min(20.05), "+1,203");
        assert_eq!(rate_per_min(-1.0), "-60.0");
        assert_eq!(rate_per_min(-10.0), "-600");
        assert_eq!(rate_per_min(0.0), "+0.0");
    }

    #[test]
    fn durations_for_humans() {
        assert_eq!(duration(44.6), "45s");
        assert_eq!(duration(725.0), "12m 5s");
        assert_eq!(duration(12_000.0), "3h 20m");
        assert_eq!(duration(360_000.0), "4d 4h");
    }
}
