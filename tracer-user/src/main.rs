//! `tracer`: an eBPF tracer that watches one server process (typically a Kafka broker) for the
//! slow-building failures that take it down, and warns before they do.

mod agent;
mod alert;
mod attach;
mod btf;
mod cli;
mod death;
mod demo;
mod event;
mod exhaustion;
mod fd;
mod memory;
mod output;
mod preflight;
mod probes;
mod procmode;
mod scrub;
mod session;
mod target;
mod tcp;
mod threads;
mod units;
mod vma;

use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _};

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let level = match cli.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .parse_default_env()
        .init();

    let result = match cli.command {
        Command::DemoWorkload(args) => demo::workload(&args),
        command => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| {
                runtime.block_on(async {
                    match command {
                        Command::Attach(args) => attach::run(args).await,
                        Command::Demo(args) => demo::run(args).await,
                        Command::Agent(args) => {
                            let (_, agent) = matches.subcommand().expect("a subcommand was parsed");
                            agent::run(args, agent).await
                        }
                        Command::DemoWorkload(_) => unreachable!("handled above"),
                    }
                })
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tracer: {e:#}");
            ExitCode::FAILURE
        }
    }
}
