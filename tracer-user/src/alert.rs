//! Alert de-duplication: one `alert` per condition until it clears, then one
//! `alert_resolved`. Conditions clear on a stricter test than the one that raised them
//! (hysteresis), so a value hovering at a threshold does not flap.

use serde::Serialize;

/// How urgent an alert is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

/// What a condition's evaluation asks of the alert that tracks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Raise,
    Resolve,
}

/// A condition as evaluated now: whether it should fire, and whether it has cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Check {
    pub firing: bool,
    pub cleared: bool,
}

/// The raised/resolved state of one condition (a kind at a severity).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latch {
    active: bool,
}

impl Latch {
    pub fn is_active(self) -> bool {
        self.active
    }

    /// Feeds one evaluation; returns the change to report, if any.
    pub fn update(&mut self, check: Check) -> Option<Change> {
        match (self.active, check.firing, check.cleared) {
            (false, true, _) => {
                self.active = true;
                Some(Change::Raise)
            }
            (true, false, true) => {
                self.active = false;
                Some(Change::Resolve)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRING: Check = Check {
        firing: true,
        cleared: false,
    };
    const BETWEEN: Check = Check {
        firing: false,
        cleared: false,
    };
    const CLEAR: Check = Check {
        firing: false,
        cleared: true,
    };

    #[test]
    fn raises_once_and_resolves_once() {
        let mut latch = Latch::default();
        assert_eq!(latch.update(BETWEEN), None);
        assert_eq!(latch.update(FIRING), Some(Change::Raise));
        assert_eq!(latch.update(FIRING), None);
        assert!(latch.is_active());
        // Below the raise threshold but not yet clear: stays raised.
        assert_eq!(latch.update(BETWEEN), None);
        assert_eq!(latch.update(CLEAR), Some(Change::Resolve));
        assert_eq!(latch.update(CLEAR), None);
        assert!(!latch.is_active());
        assert_eq!(latch.update(FIRING), Some(Change::Raise));
    }
}
