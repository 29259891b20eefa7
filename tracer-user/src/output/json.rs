//! NDJSON: one event per line, flushed after every batch so a consumer sees each event as it
//! happens.

use std::io::Write;

use bytes::{BufMut as _, BytesMut};

use super::filter::Events;
use crate::event::Event;

pub struct JsonLines<W: Write> {
    out: W,
    /// The events written; the others are left out.
    events: Events,
    /// Reused for every batch: no allocation per event once warmed up.
    buf: BytesMut,
}

impl<W: Write> JsonLines<W> {
    pub fn new(out: W, events: Events) -> Self {
        Self {
            out,
            events,
            buf: BytesMut::with_capacity(4096),
        }
    }

    pub fn events(&mut self, events: &[Event]) -> std::io::Result<()> {
        self.buf.clear();
        let mut writer = (&mut self.buf).writer();
        for event in events.iter().filter(|e| self.events.admits(e)) {
            serde_json::to_writer(&mut writer, event)?;
            writer.write_all(b"\n")?;
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        self.out.write_all(&self.buf)?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_object_per_line() {
        let mut out = JsonLines::new(Vec::new(), Events::All);
        out.events(&[
            Event::TargetExit {
                ts: 1,
                pid: 2,
                death: crate::death::Death::default(),
            },
            Event::TargetExit {
                ts: 3,
                pid: 2,
                death: crate::death::Death::default(),
            },
        ])
        .unwrap();
        let text = String::from_utf8(out.out).unwrap();
        assert_eq!(
            text,
            "{\"type\":\"target_exit\",\"ts\":1,\"pid\":2,\"exit_code\":null,\"signal\":null,\"oom_killed\":false,\"reason\":\"\"}\n{\"type\":\"target_exit\",\"ts\":3,\"pid\":2,\"exit_code\":null,\"signal\":null,\"oom_killed\":false,\"reason\":\"\"}\n"
        );
    }
}
