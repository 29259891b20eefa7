//! `tracer agent`: the long-running sidecar. It follows its targets across restarts (a session
//! per process), and publishes every event three ways: Prometheus metrics and the live stream
//! over HTTP, NDJSON on stdout for a log shipper, and alerts to an on-call webhook.

mod config;
mod http;
mod metrics;
pub mod state;
mod targets;
mod webhook;

use std::{cell::RefCell, rc::Rc, time::Duration};

use bytes::{Bytes, BytesMut};
use clap::ArgMatches;
use tokio::{
    io::AsyncWriteExt as _,
    sync::{mpsc, watch},
    task::{JoinHandle, LocalSet},
};

use crate::{
    attach::stop_signal,
    cli::AgentArgs,
    event::Event,
    output::filter::Events,
    procmode,
    session::{End, Frame, Loader, Options, Session, Sink},
    target::{Target, stat_fields},
};
use config::Settings;
use metrics::{Dropped, Metrics, TargetLabels};
use targets::{Finder, Found};

/// Lines waiting for stdout at most; a stalled reader of stdout loses lines, counted.
const STDOUT_QUEUE: usize = 8192;
/// Bytes written to stdout in one go at most.
const STDOUT_BATCH: usize = 1 << 20;
/// How often /proc is scanned while a target has no process, and otherwise.
const SCAN_FAST: Duration = Duration::from_millis(250);
const SCAN_SLOW: Duration = Duration::from_secs(5);

/// Where every event of every target goes.
pub struct Hub {
    metrics: Rc<Metrics>,
    /// Clients of GET /events.
    subscribers: RefCell<Vec<http::Subscriber>>,
    stdout: Option<mpsc::Sender<Bytes>>,
    webhook: Option<Rc<webhook::Queue>>,
    line: RefCell<BytesMut>,
    /// Clients of GET /events at most, and how long one may take nothing while lines wait.
    max_subscribers: usize,
    idle: Duration,
    /// What stdout carries, and /events unless its client asks otherwise.
    events: Events,
}

impl Hub {
    fn publish(&self, labels: &TargetLabels, events: &[Event]) {
        for event in events {
            self.metrics.observe(labels, event);
            let alert = matches!(event, Event::Alert { .. } | Event::AlertResolved { .. });
            let to_stdout = self.stdout.is_some() && self.events.admits(event);
            // The line is only written when someone will read it.
            let wanted = to_stdout
                || (alert && self.webhook.is_some())
                || self
                    .subscribers
                    .borrow()
                    .iter()
                    .any(|s| s.events.admits(event));
            if !wanted {
                continue;
            }
            let line = {
                let mut buf = self.line.borrow_mut();
                if event.write_line(&mut buf).is_err() {
                    continue;
                }
                buf.split().freeze()
            };
            let mut subscribers = self.subscribers.borrow_mut();
            let before = subscribers.len();
            subscribers.retain_mut(|subscriber| {
                if subscriber.events.admits(event) {
                    subscriber.offer(&line, self.idle, &self.metrics)
                } else {
                    true
                }
            });
            if subscribers.len() != before {
                self.metrics.clients(subscribers.len());
            }
            drop(subscribers);
            if let Some(stdout) = &self.stdout
                && to_stdout
                && stdout.try_send(line.clone()).is_err()
            {
                self.metrics.dropped(Dropped::Stdout, 1);
            }
            if let Some(webhook) = &self.webhook
                && alert
            {
                webhook.push(event, line);
            }
        }
    }
}

/// A session's reports, into the hub.
struct AgentSink {
    hub: Rc<Hub>,
    labels: TargetLabels,
}

impl Sink for AgentSink {
    fn events(&mut self, events: &[Event]) -> std::io::Result<()> {
        self.hub.publish(&self.labels, events);
        Ok(())
    }

    fn frame(&mut self, _frame: &Frame<'_>) -> std::io::Result<()> {
        Ok(())
    }
}

pub async fn run(args: AgentArgs, matches: &ArgMatches) -> anyhow::Result<()> {
    let settings = Settings::load(&args, matches)?;
    let mut options = settings.watch.options()?;
    options.alert_on_death = true;
    // Fail on a busy port or a bad address before anything is attached.
    let listener = http::bind(settings.listen, settings.allow_remote).await?;
    let source = procmode::source(
        options.mode,
        settings.watch.btf.as_deref(),
        settings.watch.vma_source,
    )?;
    let state_dir = args.state_dir.clone();
    // One loaded object for all targets, while any is watched.
    let loader = Loader::new(source, &options);
    LocalSet::new()
        .run_until(supervise(settings, options, state_dir, loader, listener))
        .await
}

async fn supervise(
    settings: Settings,
    options: Options,
    state_dir: Option<std::path::PathBuf>,
    mut loader: Loader,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<()> {
    let metrics = Rc::new(Metrics::new());
    let webhook = settings
        .webhook
        .as_deref()
        .map(|url| webhook::start(url, settings.webhook_ca.as_deref(), Rc::clone(&metrics)))
        .transpose()?;
    let stdout = (!settings.quiet).then(|| {
        let (tx, rx) = mpsc::channel(STDOUT_QUEUE);
        tokio::task::spawn_local(write_stdout(rx));
        tx
    });
    let hub = Rc::new(Hub {
        metrics: Rc::clone(&metrics),
        subscribers: RefCell::default(),
        stdout,
        webhook,
        line: RefCell::new(BytesMut::with_capacity(4096)),
        max_subscribers: settings.events_clients,
        idle: settings.events_idle,
        events: settings.events,
    });
    let server = tokio::task::spawn_local(http::serve(listener, Rc::clone(&hub)));
    let usage = tokio::task::spawn_local(agent_usage(Rc::clone(&metrics)));
    log::info!(
        "serving /metrics, /events and /healthz on http://{}",
        settings.listen
    );

    // Pid targets must exist at start: a typo fails now, not silently later.
    for spec in &settings.targets {
        if let config::Spec::Pid { pid } = spec {
            Target::open(*pid)?;
        }
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<u32>();
    let mut finder = Finder::new(settings.targets);
    let mut sessions: Vec<(u32, JoinHandle<()>)> = Vec::new();
    let stop = stop_signal(settings.duration);
    tokio::pin!(stop);
    loop {
        for found in finder.scan() {
            // Each target keeps its long trends in its own state file.
            let options = Options {
                state_file: state_dir
                    .as_deref()
                    .map(|dir| state::path(dir, &found.name)),
                ..options.clone()
            };
            match start_session(&found, &mut loader, &options, &hub, &stop_rx, &ended_tx) {
                Ok(handle) => sessions.push((found.pid, handle)),
                Err(e) => {
                    log::warn!("attaching to {} (pid {}): {e:#}", found.name, found.pid);
                    finder.detached(found.pid);
                }
            }
        }
        if finder.finished() {
            log::info!("every --pid target has exited; nothing left to watch");
            break;
        }
        let wait = if finder.waiting() {
            SCAN_FAST
        } else {
            SCAN_SLOW
        };
        tokio::select! {
            () = &mut stop => break,
            Some(pid) = ended_rx.recv() => {
                finder.detached(pid);
                sessions.retain(|(p, _)| *p != pid);
            }
            () = tokio::time::sleep(wait) => {}
        }
    }

    // Detach everything: each session drops its probes as it ends.
    let _ = stop_tx.send(true);
    for (_, session) in sessions {
        let _ = session.await;
    }
    server.abort();
    usage.abort();
    Ok(())
}

/// Attaches to one process and runs its session on its own task.
fn start_session(
    found: &Found,
    loader: &mut Loader,
    options: &Options,
    hub: &Rc<Hub>,
    stop: &watch::Receiver<bool>,
    ended: &mpsc::UnboundedSender<u32>,
) -> anyhow::Result<JoinHandle<()>> {
    let target = Target::open(found.pid)?;
    let session = Session::attach(target, loader, options)?;
    let mut sink = AgentSink {
        hub: Rc::clone(hub),
        labels: TargetLabels {
            target: found.name.clone(),
            pid: found.pid.to_string(),
        },
    };
    let mut stop = stop.clone();
    let ended = ended.clone();
    let (pid, name) = (found.pid, found.name.clone());
    Ok(tokio::task::spawn_local(async move {
        let stopped = async move {
            let _ = stop.wait_for(|&stop| stop).await;
        };
        match session.run(&mut sink, stopped).await {
            // The target_exit event took its series away.
            Ok(End::TargetExited) => log::info!("{name} (pid {pid}) exited"),
            Ok(End::Stopped) => sink.hub.metrics.forget(&sink.labels),
            Err(e) => {
                log::warn!("watching {name} (pid {pid}): {e:#}");
                sink.hub.metrics.forget(&sink.labels);
            }
        }
        let _ = ended.send(pid);
    }))
}

/// Copies the event stream to stdout, so a log shipper can collect it; lines that are
/// waiting are written together.
async fn write_stdout(mut lines: mpsc::Receiver<Bytes>) {
    let mut stdout = tokio::io::stdout();
    let mut batch = Vec::with_capacity(64 * 1024);
    while let Some(line) = lines.recv().await {
        batch.clear();
        batch.extend_from_slice(&line);
        while batch.len() < STDOUT_BATCH
            && let Ok(line) = lines.try_recv()
        {
            batch.extend_from_slice(&line);
        }
        if stdout.write_all(&batch).await.is_err() || stdout.flush().await.is_err() {
            break;
        }
    }
}

/// Keeps the agent's own CPU time and resident memory current in the metrics.
async fn agent_usage(metrics: Rc<Metrics>) {
    // SAFETY: sysconf has no preconditions.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        let cpu = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|stat| {
                // utime and stime: fields 14 and 15 of stat, the 12th and 13th from the state on.
                let mut fields = stat_fields(&stat)?.skip(11);
                let used =
                    fields.next()?.parse::<f64>().ok()? + fields.next()?.parse::<f64>().ok()?;
                Some(used / ticks as f64)
            });
        let rss = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map(|pages| pages * page as u64);
        if let (Some(cpu), Some(rss)) = (cpu, rss) {
            metrics.agent_usage(cpu, rss);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdout_lines_are_ndjson() {
        let (tx, mut rx) = mpsc::channel(4);
        let hub = Hub {
            metrics: Rc::new(Metrics::new()),
            subscribers: RefCell::default(),
            stdout: Some(tx),
            webhook: None,
            line: RefCell::new(BytesMut::new()),
            max_subscribers: 1,
            idle: Duration::from_secs(1),
            events: Events::All,
        };
        let labels = TargetLabels {
            target: "t".into(),
            pid: "1".into(),
        };
        hub.publish(
            &labels,
            &[
                Event::TargetExit {
                    ts: 5,
                    pid: 1,
                    death: crate::death::Death::default(),
                },
                Event::TargetExit {
                    ts: 6,
                    pid: 1,
                    death: crate::death::Death::default(),
                },
            ],
        );
        assert_eq!(
            rx.try_recv().unwrap(),
            Bytes::from(
                "{\"type\":\"target_exit\",\"ts\":5,\"pid\":1,\"exit_code\":null,\"signal\":null,\"oom_killed\":false,\"reason\":\"\"}\n"
            )
        );
        assert_eq!(
            rx.try_recv().unwrap(),
            Bytes::from(
                "{\"type\":\"target_exit\",\"ts\":6,\"pid\":1,\"exit_code\":null,\"signal\":null,\"oom_killed\":false,\"reason\":\"\"}\n"
            )
        );
    }
}
