//! Where a session's reports go: NDJSON for machines, a live view for a person at a terminal,
//! plain lines for a pipe or a log.

pub mod filter;
pub mod json;
pub mod lines;
pub mod live;

use std::io::IsTerminal as _;

use crate::{
    cli::OutputArgs,
    event::Event,
    session::{Frame, Sink},
};

/// The output `attach` and `demo` write to stdout.
pub enum Output {
    Json(json::JsonLines),
    Live(live::LiveView),
    Lines(lines::Lines),
}

impl Output {
    /// NDJSON when asked (the `--events` chosen), the live view on a terminal, plain lines
    /// otherwise.
    pub fn for_stdout(output: OutputArgs) -> Self {
        if output.json {
            Self::Json(json::JsonLines::new(std::io::stdout(), output.events))
        } else if std::io::stdout().is_terminal() {
            Self::Live(live::LiveView::new())
        } else {
            Self::Lines(lines::Lines::new())
        }
    }
}

impl Sink for Output {
    fn events(&mut self, events: &[Event]) -> std::io::Result<()> {
        match self {
            Self::Json(out) => out.events(events),
            Self::Live(out) => {
                out.events(events);
                Ok(())
            }
            Self::Lines(_) => lines::events(events),
        }
    }

    fn frame(&mut self, frame: &Frame<'_>) -> std::io::Result<()> {
        match self {
            Self::Json(_) => Ok(()),
            Self::Live(out) => out.frame(frame),
            Self::Lines(out) => out.frame(frame),
        }
    }
}
