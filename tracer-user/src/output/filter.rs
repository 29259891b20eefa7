//! Which events an NDJSON stream carries (`--events`, `/events?events=`): the firehose is a
//! choice. A busy broker's sockets make one `tcp_state` line per state change of every
//! connection; on-call needs the alerts and the per-second reports, not every transition.

use clap::ValueEnum;

use crate::event::Event;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Events {
    /// Every event, a `tcp_state` line per socket transition included.
    #[default]
    All,
    /// Every event but the per-transition `tcp_state` lines: the per-second reports, the
    /// breakdowns, alerts, attach and exit.
    Summary,
    /// Alerts and their resolutions, attach and exit only.
    Alerts,
}

impl Events {
    /// Whether `event` belongs in the stream.
    pub fn admits(self, event: &Event) -> bool {
        match self {
            Self::All => true,
            Self::Summary => !matches!(event, Event::TcpState { .. }),
            Self::Alerts => matches!(
                event,
                Event::Alert { .. }
                    | Event::AlertResolved { .. }
                    | Event::TargetAttached { .. }
                    | Event::TargetExit { .. }
            ),
        }
    }

    /// `all`, `summary` or `alerts`, as the flag takes it.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::from_str(text, true)
            .map_err(|_| format!("events={text}: give all, summary or alerts"))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    #[test]
    fn each_choice_keeps_what_it_says() {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let transition = Event::TcpState {
            ts: 0,
            pid: 1,
            family: 4,
            saddr: ip,
            sport: 9092,
            daddr: ip,
            dport: 40_000,
            old: "ESTABLISHED",
            new: "CLOSE_WAIT",
        };
        let report = Event::Fds {
            ts: 0,
            pid: 1,
            count: 10,
            limit: None,
            usage: 0.0,
            growth_per_min: None,
            eta_seconds: None,
        };
        let exit = Event::TargetExit {
            ts: 0,
            pid: 1,
            death: crate::death::Death::default(),
        };
        let admitted = |events: Events| {
            [&transition, &report, &exit]
                .iter()
                .map(|e| events.admits(e))
                .collect::<Vec<_>>()
        };
        assert_eq!(admitted(Events::All), [true, true, true]);
        assert_eq!(admitted(Events::Summary), [false, true, true]);
        assert_eq!(admitted(Events::Alerts), [false, false, true]);
        assert_eq!(Events::parse("Alerts"), Ok(Events::Alerts));
        assert!(
            Events::parse("tcp")
                .unwrap_err()
                .contains("all, summary or alerts")
        );
    }
}
