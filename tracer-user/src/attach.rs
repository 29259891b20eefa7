//! `tracer attach --pid N`: one target, watched until it exits, the time is up, or Ctrl-C.

use std::time::Duration;

use anyhow::Context as _;

use crate::{
    cli::{AttachArgs, OutputArgs, WatchArgs},
    output::Output,
    procmode,
    session::{End, Loader, Session},
    target::Target,
};

pub async fn run(args: AttachArgs) -> anyhow::Result<()> {
    let target = Target::open(args.pid)?;
    if let Some(thread) = target.given_thread {
        eprintln!(
            "tracer: {thread} is a thread of process {} ({}); watching the process",
            target.pid, target.comm
        );
    }
    watch(target, &args.watch, args.output).await.map(|_| ())
}

/// Checks the machine, attaches to `target` and reports to stdout until the session ends.
pub async fn watch(target: Target, watch: &WatchArgs, output: OutputArgs) -> anyhow::Result<End> {
    let options = watch.options()?;
    let source = procmode::source(options.mode, watch.btf.as_deref(), watch.vma_source)?;
    let session = Session::attach(target, &mut Loader::new(source, &options), &options)?;
    let mut sink = Output::for_stdout(output);
    match session.run(&mut sink, stop_signal(output.duration)).await {
        // The reader of stdout went away (`| head`): a normal way to stop.
        Err(e) if is_broken_pipe(&e) => Ok(End::Stopped),
        other => other,
    }
}

/// Resolves on Ctrl-C, SIGTERM, or after `duration`.
pub async fn stop_signal(duration: Option<Duration>) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")
    {
        Ok(term) => term,
        Err(e) => {
            log::warn!("{e:#}");
            return std::future::pending().await;
        }
    };
    let timeout = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        () = timeout => {}
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}
