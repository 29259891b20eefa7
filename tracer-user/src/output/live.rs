//! The live view: one screen, redrawn in place every second, that a person on call can read
//! at a glance: count against the limit, growth, time to exhaustion, what the mappings are,
//! which threads add them, and the alerts so far.

use std::{collections::VecDeque, fmt::Write as _, io::Write as _};

use crate::{
    alert::Severity,
    event::{Event, now_ms},
    session::Frame,
    units::{duration, human_bytes, rate_per_min, thousands},
};

const RED: &str = "\x1b[1;31m";
const YELLOW: &str = "\x1b[1;33m";
const GREEN: &str = "\x1b[32m";
const DIM: &str = "\x1b[2m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

/// Alert lines kept on screen.
const ALERT_LINES: usize = 6;
/// Mapping groups shown.
const GROUP_LINES: usize = 8;
/// Width of the usage bar.
const BAR: usize = 40;

pub struct LiveView {
    alerts: VecDeque<String>,
    screen: String,
    started: bool,
}

impl LiveView {
    pub fn new() -> Self {
        Self {
            alerts: VecDeque::new(),
            screen: String::new(),
            started: false,
        }
    }

    pub fn events(&mut self, events: &[Event]) {
        for event in events {
            let line = match event {
                Event::Alert {
                    ts,
                    severity,
                    kind,
                    message,
                    ..
                } => {
                    let color = if *severity == Severity::Critical {
                        RED
                    } else {
                        YELLOW
                    };
                    format!(
                        "{} {color}{} {}{RESET} {}",
                        clock(*ts),
                        severity.as_str().to_uppercase(),
                        kind.as_str(),
                        headline(message)
                    )
                }
                Event::AlertResolved {
                    ts,
                    severity,
                    kind,
                    message,
                    ..
                } => format!(
                    "{} {GREEN}resolved {} {}{RESET} {}",
                    clock(*ts),
                    severity.as_str(),
                    kind.as_str(),
                    headline(message)
                ),
                Event::TargetExit { ts, pid, death } => format!(
                    "{} {BOLD}process {pid} exited{RESET}: {}",
                    clock(*ts),
                    death.reason
                ),
                Event::Resynced { ts, .. } => match event.resync_line() {
                    Some(line) => format!("{} {DIM}{line}{RESET}", clock(*ts)),
                    None => continue,
                },
                _ => continue,
            };
            if self.alerts.len() == ALERT_LINES {
                self.alerts.pop_front();
            }
            self.alerts.push_back(line);
        }
    }

    pub fn frame(&mut self, frame: &Frame<'_>) -> std::io::Result<()> {
        let mut screen = Screen {
            text: std::mem::take(&mut self.screen),
            width: terminal_width(),
        };
        screen.text.clear();
        screen.line(&format!(
            "{BOLD}tracer{RESET}  pid {} {BOLD}{}{RESET}  attached {}  {}{DIM}{}{RESET}",
            frame.target.pid,
            frame.target.comm,
            duration(frame.attached.elapsed().as_secs_f64()),
            frame.sampled.map_or_else(String::new, |every| format!(
                "{YELLOW}sampled from /proc every {} s, not exact{RESET}  ",
                every.as_secs_f64().ceil()
            )),
            frame.target.cmdline
        ));
        screen.line("");
        vma_panel(&mut screen, frame);
        sockets_panel(&mut screen, frame);
        resources_panel(&mut screen, frame);
        threads_panel(&mut screen, frame);
        mappings_panel(&mut screen, frame);
        screen.line(&format!("{BOLD}Alerts{RESET}"));
        if self.alerts.is_empty() {
            screen.line(&format!("  {DIM}none{RESET}"));
        }
        for alert in &self.alerts {
            screen.line(&format!("  {alert}"));
        }
        screen.line("");
        screen.line(&format!(
            "{DIM}Ctrl-C detaches; the process is not affected.{RESET}"
        ));

        let mut out = std::io::stdout().lock();
        if !self.started {
            self.started = true;
            // Clear once and hide the cursor; later frames overwrite in place.
            out.write_all(b"\x1b[?25l\x1b[H\x1b[2J")?;
        }
        out.write_all(b"\x1b[H")?;
        out.write_all(screen.text.as_bytes())?;
        out.write_all(b"\x1b[J")?;
        out.flush()?;
        self.screen = screen.text;
        Ok(())
    }
}

/// The text of one frame, cut to the terminal's width line by line.
struct Screen {
    text: String,
    width: usize,
}

impl Screen {
    fn line(&mut self, line: &str) {
        self.text.push_str(&fit(line, self.width));
        self.text.push_str("\x1b[K\n");
    }
}

/// Count against the limit, growth, time to exhaustion, and which threads add mappings.
fn vma_panel(screen: &mut Screen, frame: &Frame<'_>) {
    let vma = &frame.vma;
    let usage = f64::from(vma.count) / f64::from(vma.limit);
    let color = severity_color(vma.alert);
    let filled = (usage.min(1.0) * BAR as f64).round() as usize;
    screen.line(&format!(
        "{BOLD}VMAs{RESET}  {color}{}{RESET} of vm.max_map_count {}  {color}{:5.1}%{RESET}  {color}{}{RESET}{DIM}{}{RESET}",
        thousands(vma.count.into()),
        thousands(vma.limit.into()),
        usage * 100.0,
        "█".repeat(filled),
        "░".repeat(BAR - filled),
    ));
    let growth = vma.trend.map_or_else(
        || "measuring...".to_owned(),
        |t| format!("{}/min", rate_per_min(t.per_sec)),
    );
    let eta = match vma.eta_secs {
        Some(e) if e <= 0.0 => format!("{RED}limit reached{RESET}"),
        Some(e) => format!(
            "{color}{}{RESET} (at {})",
            duration(e),
            clock(now_ms().saturating_add((e * 1000.0) as u64))
        ),
        None if vma.trend.is_some() => "none, not growing".to_owned(),
        None => "-".to_owned(),
    };
    screen.line(&format!(
        "      growth {growth}   time to limit {eta}   peak {} this second   {DIM}from {}{RESET}",
        thousands(vma.peak.into()),
        frame.vma_source
    ));
    if let Some((steady, crossing)) = &vma.steady_state {
        let fate = match crossing {
            Some(secs) => format!("{RED}over vm.max_map_count in ~{}{RESET}", duration(*secs)),
            None if steady.mappings > vma.limit => format!("{RED}over vm.max_map_count{RESET}"),
            None => format!(
                "{:.0}% of vm.max_map_count",
                f64::from(steady.mappings) / f64::from(vma.limit) * 100.0
            ),
        };
        screen.line(&format!("      steady state {}: {fate}", steady.describe()));
    }
    if let Some((change, secs, at)) = vma.last_step {
        screen.line(&format!(
            "      step {}{} mappings in {secs:.0} s at {} (growth shown is since)",
            if change < 0 { "-" } else { "+" },
            thousands(change.unsigned_abs()),
            clock(at)
        ));
    }
    if frame.lost.vma_records > 0 {
        screen.line(&format!(
            "      {YELLOW}{} change records lost{RESET} (the count stays exact; attribution is partial)",
            thousands(frame.lost.vma_records)
        ));
    }
    if !vma.growth_by_thread.is_empty() {
        let mut text = format!("      {DIM}change by thread (sampled), last 1-2 min:{RESET}");
        for (name, delta) in vma.growth_by_thread.iter().take(5) {
            let _ = write!(text, "  {name} {delta:+}");
        }
        screen.line(&text);
    }
    screen.line("");
}

/// File descriptors against RLIMIT_NOFILE and memory against the cgroup's limit.
fn resources_panel(screen: &mut Screen, frame: &Frame<'_>) {
    if let Some(fds) = &frame.fds {
        let limit = fds.limit.map_or_else(
            || "no limit".to_owned(),
            |l| format!("of {}", thousands(l as u64)),
        );
        screen.line(&format!(
            "{BOLD}FDs{RESET}   {}{}{RESET} {limit}  {}",
            severity_color(fds.alert),
            thousands(fds.count as u64),
            trend_text(fds, |per_sec| format!("{}/min", rate_per_min(per_sec)))
        ));
    }
    if let Some(memory) = frame.memory {
        let status = &memory.status;
        let limit = match (memory.cgroup, status.limit) {
            (Some(cgroup), Some(limit)) => {
                format!("of {} (cgroup {cgroup} limit)", human_bytes(limit as u64))
            }
            (Some(cgroup), None) => format!("(cgroup {cgroup}, no limit)"),
            (None, _) => "(RSS; no memory cgroup readable)".to_owned(),
        };
        screen.line(&format!(
            "{BOLD}Memory{RESET} {}{}{RESET} {limit}  {}",
            severity_color(status.alert),
            human_bytes(status.count as u64),
            trend_text(status, |per_sec| format!(
                "{}/min",
                signed_bytes(per_sec * 60.0)
            ))
        ));
        screen.line(&format!(
            "      {DIM}RSS {}, anonymous {}, malloc arenas {}{RESET}",
            human_bytes(memory.rss_bytes),
            human_bytes(memory.anon_bytes),
            memory.arenas
        ));
    }
    screen.line("");
}

/// Thread groups: count, how idle, how many stalled.
fn threads_panel(screen: &mut Screen, frame: &Frame<'_>) {
    let threads = frame.threads;
    let mut text = format!("{BOLD}Threads{RESET} {}", thousands(threads.count.into()));
    for group in threads.groups.iter().take(6) {
        let _ = write!(text, "  {} x{}", group.name, group.threads);
    }
    screen.line(&text);
    let mut busy: Vec<_> = threads
        .groups
        .iter()
        .filter(|g| g.threads >= 2 || g.stalled > 0)
        .filter_map(|g| g.idle_ratio.map(|idle| (g, idle)))
        .collect();
    busy.sort_by(|a, b| a.1.total_cmp(&b.1));
    let stalled = threads.groups.iter().filter(|g| g.stalled > 0);
    if busy.is_empty() && stalled.clone().next().is_none() {
        screen.line("");
        return;
    }
    let mut text = format!("      {DIM}idle ratio, busiest groups:{RESET}");
    for (group, idle) in busy.iter().take(4) {
        let color = if *idle <= 0.1 { RED } else { "" };
        let _ = write!(text, "  {color}{} {idle:.2}{RESET}", group.name);
    }
    for group in threads.groups.iter().filter(|g| g.stalled > 0) {
        let _ = write!(
            text,
            "  {RED}{} stalled {}{RESET}",
            group.name, group.stalled
        );
    }
    screen.line(&text);
    screen.line("");
}

fn severity_color(alert: Option<Severity>) -> &'static str {
    match alert {
        Some(Severity::Critical) => RED,
        Some(Severity::Warning) => YELLOW,
        None => GREEN,
    }
}

/// "growth +12/min, limit in 3m 20s", or what is known so far.
fn trend_text(status: &crate::exhaustion::Status, rate: impl Fn(f64) -> String) -> String {
    let Some(per_sec) = status.per_sec else {
        return "growth measuring...".to_owned();
    };
    let eta = match status.eta_secs {
        Some(e) => format!(
            "   time to limit {}{}{RESET}",
            severity_color(status.alert),
            duration(e)
        ),
        None => String::new(),
    };
    format!("growth {}{eta}", rate(per_sec))
}

/// Bytes with a sign: "+12.0 MiB", "-3.0 KiB".
fn signed_bytes(n: f64) -> String {
    let sign = if n < 0.0 { "-" } else { "+" };
    format!("{sign}{}", human_bytes(n.abs() as u64))
}

/// The target's TCP sockets per state, the oldest CLOSE_WAIT, new connections and peers.
fn sockets_panel(screen: &mut Screen, frame: &Frame<'_>) {
    let tcp = frame.tcp;
    let mut states = String::new();
    for (state, count) in [
        (1, "ESTABLISHED"),
        (8, "CLOSE_WAIT"),
        (10, "LISTEN"),
        (5, "FIN_WAIT2"),
        (2, "SYN_SENT"),
        (3, "SYN_RECV"),
        (4, "FIN_WAIT1"),
        (9, "LAST_ACK"),
        (11, "CLOSING"),
    ]
    .map(|(state, name)| (name, tcp.held.get(state)))
    {
        if count > 0 || state == "ESTABLISHED" || state == "CLOSE_WAIT" {
            let color = if state == "CLOSE_WAIT" && count > 0 {
                YELLOW
            } else {
                ""
            };
            let _ = write!(
                states,
                "  {color}{state} {}{RESET}",
                thousands(count.into())
            );
        }
    }
    screen.line(&format!("{BOLD}Sockets{RESET}{states}"));
    let mut detail = String::from("     ");
    if let Some(oldest) = tcp.close_wait_oldest {
        let _ = write!(
            detail,
            " {YELLOW}oldest CLOSE_WAIT {}{RESET} ",
            duration(oldest)
        );
    }
    let _ = write!(
        detail,
        " accept queue {}  orphaned {}  new {:.1}/s",
        tcp.accept_queue.total(),
        tcp.orphaned.total(),
        tcp.new_per_second
    );
    if !tcp.baseline_per_second.is_nan() {
        let _ = write!(detail, " (usual {:.1}/s)", tcp.baseline_per_second);
    }
    screen.line(&detail);
    if !tcp.peers.is_empty() {
        let mut peers = format!("      {DIM}top peers:{RESET}");
        for peer in &tcp.peers {
            let _ = write!(peers, "  {} x{}", peer.addr, thousands(peer.count.into()));
        }
        screen.line(&peers);
    }
    if frame.lost.tcp_records + frame.lost.tcp_untracked > 0 {
        screen.line(&format!(
            "      {YELLOW}{} transition records lost, {} sockets not followed (--max-sockets){RESET}",
            thousands(frame.lost.tcp_records),
            thousands(frame.lost.tcp_untracked)
        ));
    }
    screen.line("");
}

/// What the mappings are, from the latest read of /proc/PID/maps.
fn mappings_panel(screen: &mut Screen, frame: &Frame<'_>) {
    let Some(report) = frame.breakdown else {
        return;
    };
    screen.line(&format!(
        "{BOLD}Mappings{RESET} {DIM}from /proc/{}/maps, {} ago, read in {:.1} ms{RESET}",
        frame.target.pid,
        duration(report.read_at.elapsed().as_secs_f64()),
        report.cost.as_secs_f64() * 1000.0
    ));
    let groups = &report.breakdown.groups;
    for group in groups.iter().take(GROUP_LINES) {
        screen.line(&format!("  {}", group.describe()));
    }
    let rest = &groups[groups.len().min(GROUP_LINES)..];
    if !rest.is_empty() {
        let mappings: u64 = rest.iter().map(|g| u64::from(g.mappings)).sum();
        let bytes = rest.iter().map(|g| g.bytes).sum();
        screen.line(&format!(
            "  {DIM}{} more mappings in {} smaller groups ({}){RESET}",
            thousands(mappings),
            rest.len(),
            human_bytes(bytes)
        ));
    }
    screen.line("");
}

/// The first clause of an alert message: what happened, without the advice.
fn headline(message: &str) -> &str {
    message.split(';').next().unwrap_or(message)
}

impl Drop for LiveView {
    fn drop(&mut self) {
        if self.started {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(b"\x1b[?25h");
            let _ = out.flush();
        }
    }
}

/// Cuts `text` to `width` visible columns, keeping ANSI escapes intact.
fn fit(text: &str, width: usize) -> String {
    let mut out = String::with_capacity(text.len());
    let mut visible = 0;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            out.push(c);
            for c in chars.by_ref() {
                out.push(c);
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else if visible < width {
            out.push(c);
            visible += 1;
        }
    }
    if visible >= width {
        out.push_str(RESET);
    }
    out
}

fn terminal_width() -> usize {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills a winsize; failure leaves it zeroed.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &raw mut size) } == 0;
    if ok && size.ws_col > 0 {
        usize::from(size.ws_col)
    } else {
        120
    }
}

/// Local wall-clock time of a unix-milliseconds timestamp, "HH:MM:SS".
pub fn clock(ts_ms: u64) -> String {
    let secs = libc::time_t::try_from(ts_ms / 1000).unwrap_or_default();
    // SAFETY: localtime_r fills the tm it is given.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&raw const secs, &raw mut tm) }.is_null() {
        return "--:--:--".to_owned();
    }
    format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_counts_visible_columns_only() {
        assert_eq!(fit("abc", 10), "abc");
        assert_eq!(
            fit(&format!("{RED}abcdef{RESET}"), 3),
            format!("{RED}abc{RESET}{RESET}")
        );
        assert_eq!(fit("█░█░", 2), format!("█░{RESET}"));
    }
}
