//! The command line: `tracer attach`, `tracer demo`, and the flags they share.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    exhaustion::Thresholds, output::filter::Events, procmode::Mode, scrub::Scrubber,
    session::Options, tcp::TcpThresholds, threads::ThreadThresholds, vma::source::VmaSource,
};

#[derive(Debug, Parser)]
#[command(
    name = "tracer",
    version,
    about = "Watches one server process (a Kafka broker, any mmap-heavy JVM) for the slow failures that take it down, and warns before they do",
    after_help = "Needs root (or CAP_BPF and CAP_PERFMON). Example: sudo tracer attach --pid $(pgrep -f kafka.Kafka)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log the agent's own diagnostics (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to a running process and show its VMA count, growth and time to exhaustion live.
    Attach(AttachArgs),
    /// Run the tracer on a built-in workload whose mappings grow like a Kafka broker's.
    Demo(DemoArgs),
    /// Run as a long-lived agent next to the server: follows targets across restarts, serves
    /// Prometheus metrics and the event stream over HTTP, sends alerts to a webhook.
    Agent(AgentArgs),
    /// The demo's workload (started by `tracer demo`).
    #[command(hide = true)]
    DemoWorkload(WorkloadArgs),
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Process to watch (a thread id is taken as its process).
    #[arg(long, value_parser = parse_pid)]
    pub pid: u32,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub watch: WatchArgs,
}

/// Where `attach` and `demo` report, and for how long.
#[derive(Clone, Copy, Debug, Args)]
pub struct OutputArgs {
    /// Write NDJSON events to stdout instead of the live view (schema in the README).
    #[arg(long)]
    pub json: bool,
    /// Which events --json writes: all, summary (no per-transition tcp_state lines) or alerts
    /// (alerts, resolutions, attach and exit). Needs --json: the live view shows everything.
    #[arg(long, value_enum, default_value_t = Events::All, requires = "json")]
    pub events: Events,
    /// Stop after this long (e.g. 90s, 10m, 2h; a bare number is seconds).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
}

/// Default address of the agent's HTTP endpoints.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9745";

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// A process to watch (repeatable). It is not replaced when it exits.
    #[arg(long = "pid", value_parser = parse_pid)]
    pub pids: Vec<u32>,
    /// Watch every process whose command line matches REGEX, and the next one when it exits
    /// (repeatable; NAME=REGEX names the target in metrics, e.g. kafka=kafka\.Kafka).
    #[arg(long = "match", value_name = "[NAME=]REGEX")]
    pub matches: Vec<String>,
    /// TOML file with targets and thresholds; flags given on the command line win.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address of GET /metrics, /events and /healthz.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: std::net::SocketAddr,
    /// Allow --listen on an address other hosts can reach (metrics and events are not
    /// authenticated).
    #[arg(long)]
    pub allow_remote: bool,
    /// POST every alert and resolution as JSON to this http:// or https:// URL, with retries.
    #[arg(long)]
    pub webhook: Option<String>,
    /// PEM file of the CA that signed the webhook's certificate (a private CA), trusted
    /// instead of the public roots.
    #[arg(long, value_name = "FILE")]
    pub webhook_ca: Option<PathBuf>,
    /// Clients of GET /events at most; the next is refused with 503.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub events_clients: u32,
    /// An /events client that has taken nothing for this long while lines wait for it is
    /// disconnected.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub events_idle: Duration,
    /// Do not copy the event stream to stdout.
    #[arg(long)]
    pub quiet: bool,
    /// Which events stdout and /events carry: all, summary (no per-transition tcp_state lines:
    /// what on-call needs) or alerts; a client of /events may ask with ?events=.
    #[arg(long, value_enum, default_value_t = Events::Summary)]
    pub events: Events,
    /// Stop after this long (for tests and soak runs; normally until SIGTERM).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Keep each target's long trends (6 h, 7 d) in DIR/NAME.json, so a restart of the agent
    /// or of the broker keeps days of history (e.g. /var/lib/tracer).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub watch: WatchArgs,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Mappings the workload adds per second.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rate: u32,
    /// The workload stops growing at this many mappings [default: 45% of the limit].
    #[arg(long)]
    pub stop_at: Option<u32>,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub watch: WatchArgs,
}

#[derive(Debug, Args)]
pub struct WorkloadArgs {
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long)]
    pub rate: u32,
    #[arg(long)]
    pub stop_at: u32,
}

/// How a target is watched and when alerts fire.
#[derive(Clone, Debug, Args)]
pub struct WatchArgs {
    /// How the target is watched: eBPF probes (exact), samples of /proc (no capability needed
    /// for a process of your own user; not exact), or eBPF with a fall back to /proc when the
    /// probes cannot load.
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    pub mode: Mode,
    /// Predict against this limit instead of vm.max_map_count ("what if the limit were N").
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_map_count: Option<u32>,
    /// Warn when the VMA count will reach the limit within this time.
    #[arg(long, default_value = "6h", value_parser = parse_duration)]
    pub warn_eta: Duration,
    /// Raise a critical alert when the limit will be reached within this time.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub crit_eta: Duration,
    /// Warn when the VMA count passes this share of the limit.
    #[arg(long, default_value = "80%", value_parser = parse_percent)]
    pub warn_usage: f64,
    /// Raise a critical alert when the VMA count passes this share of the limit.
    #[arg(long, default_value = "95%", value_parser = parse_percent)]
    pub crit_usage: f64,
    /// Time window over which the growth rate is estimated.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub rate_window: Duration,
    /// A socket in CLOSE_WAIT longer than this is leaked (its peer closed, the process did not).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub close_wait_after: Duration,
    /// Leaked CLOSE_WAIT sockets that raise close_wait_leak.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub close_wait_min: u32,
    /// A socket the process closed that waits in FIN_WAIT2 longer than this is stuck on its peer.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub fin_wait2_after: Duration,
    /// Stuck FIN_WAIT2 sockets that raise fin_wait2_pileup.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub fin_wait2_min: u32,
    /// New connections per second above this many times the usual rate are a surge...
    #[arg(long, default_value_t = 5.0)]
    pub surge_factor: f64,
    /// ...when there are also at least this many per second.
    #[arg(long, default_value_t = 100.0)]
    pub surge_min: f64,
    /// Sockets of the target the kernel follows at most (its table is preallocated at load,
    /// about 80 bytes a socket: 10 MiB at the default); more are counted as untracked.
    #[arg(long, default_value_t = 131_072, value_parser = clap::value_parser!(u32).range(16..=1_048_576))]
    pub max_sockets: u32,
    /// A group of threads (same name, less its number) that grew by this many threads within
    /// --thread-leak-window raises thread_leak.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(2..))]
    pub thread_leak_min: u32,
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub thread_leak_window: Duration,
    /// A group of two or more threads busy (not asleep) this share of --saturation-window
    /// raises threads_saturated.
    #[arg(long, default_value = "90%", value_parser = parse_percent)]
    pub saturated_busy: f64,
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub saturation_window: Duration,
    /// Request threads (--stall-threads) that have not run for this long while connections
    /// keep arriving raise stall.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub stall_after: Duration,
    /// Name prefixes of the request-handling threads, comma-separated, as the kernel shows them
    /// (15 bytes: cat /proc/PID/task/*/comm).
    #[arg(
        long,
        default_value = "kafka-request-h,data-plane-kafk",
        value_delimiter = ','
    )]
    pub stall_threads: Vec<String>,
    /// More words that make a command-line name secret, comma-separated (case-insensitive; added
    /// to password, secret, token, credential, key): `-DNAME=value`, `NAME=value` and the
    /// argument after `--NAME` are masked before any output.
    #[arg(long, value_delimiter = ',', value_name = "WORD")]
    pub scrub_words: Vec<String>,
    /// The kernel's BTF (a vmlinux BTF file, e.g. from BTFHub), for kernels that publish none
    /// at /sys/kernel/btf/vmlinux.
    #[arg(long, value_name = "FILE")]
    pub btf: Option<PathBuf>,
    /// Where the VMA count comes from [default: the cheapest exact source this kernel offers].
    #[arg(long, value_parser = parse_vma_source)]
    pub vma_source: Option<VmaSource>,
}

impl WatchArgs {
    /// `--mode`, where `--btf` or `--vma-source` (choices of how the probes load) make `auto`
    /// mean `ebpf`: a probe that cannot load as asked is an error, not a silent proc mode.
    fn mode(&self) -> anyhow::Result<Mode> {
        let probe_flags = self.btf.is_some() || self.vma_source.is_some();
        match self.mode {
            Mode::Proc if probe_flags => anyhow::bail!(
                "--btf and --vma-source choose how the probes load, and --mode proc loads none: drop them, or use --mode ebpf"
            ),
            Mode::Auto if probe_flags => Ok(Mode::Ebpf),
            mode => Ok(mode),
        }
    }

    /// Checks that the flags agree with each other and turns them into session options.
    pub fn options(&self) -> anyhow::Result<Options> {
        if self.crit_usage <= self.warn_usage {
            anyhow::bail!(
                "--crit-usage ({:.0}%) must be above --warn-usage ({:.0}%)",
                self.crit_usage * 100.0,
                self.warn_usage * 100.0
            );
        }
        if self.crit_eta >= self.warn_eta {
            anyhow::bail!("--crit-eta must be shorter than --warn-eta");
        }
        if self.rate_window < Duration::from_secs(10) {
            anyhow::bail!("--rate-window must be at least 10s");
        }
        if self.surge_factor.is_nan() || self.surge_factor <= 1.0 {
            anyhow::bail!("--surge-factor must be above 1");
        }
        if self.saturation_window < Duration::from_secs(2)
            || self.stall_after < Duration::from_secs(2)
        {
            anyhow::bail!("--saturation-window and --stall-after must be at least 2s");
        }
        if self.thread_leak_window < Duration::from_secs(10) {
            anyhow::bail!("--thread-leak-window must be at least 10s");
        }
        if self
            .stall_threads
            .iter()
            .any(|p| p.is_empty() || p.len() > 15)
        {
            anyhow::bail!(
                "--stall-threads takes thread-name prefixes of 1 to 15 bytes, comma-separated (see cat /proc/PID/task/*/comm)"
            );
        }
        Ok(Options {
            mode: self.mode()?,
            max_map_count: self.max_map_count,
            thresholds: Thresholds {
                warn_eta_secs: self.warn_eta.as_secs_f64(),
                warn_usage: self.warn_usage,
                crit_eta_secs: self.crit_eta.as_secs_f64(),
                crit_usage: self.crit_usage,
            },
            rate_window: self.rate_window,
            tcp: TcpThresholds {
                close_wait_after: self.close_wait_after.as_secs_f64(),
                close_wait_min: self.close_wait_min,
                fin_wait2_after: self.fin_wait2_after.as_secs_f64(),
                fin_wait2_min: self.fin_wait2_min,
                surge_factor: self.surge_factor,
                surge_min: self.surge_min,
            },
            max_sockets: self.max_sockets,
            state_file: None,
            threads: ThreadThresholds {
                leak_min: self.thread_leak_min,
                leak_window_secs: self.thread_leak_window.as_secs_f64(),
                busy: self.saturated_busy,
                saturation_window_secs: self.saturation_window.as_secs_f64(),
                stall_after_secs: self.stall_after.as_secs_f64(),
                stall_groups: self.stall_threads.clone(),
            },
            scrub: Scrubber::new(&self.scrub_words),
            alert_on_death: false,
        })
    }
}

fn parse_pid(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(0) => Err("0 is not a process id; pass the pid of the server process".to_owned()),
        Ok(pid) => Ok(pid),
        Err(_) => Err(format!(
            "'{text}' is not a process id; pass a number, e.g. --pid $(pgrep -f kafka.Kafka)"
        )),
    }
}

fn parse_vma_source(text: &str) -> Result<VmaSource, String> {
    VmaSource::ALL
        .into_iter()
        .find(|s| s.as_str() == text)
        .ok_or_else(|| {
            let names: Vec<_> = VmaSource::ALL.iter().map(|s| s.as_str()).collect();
            format!(
                "'{text}' is not a VMA source; use one of {}",
                names.join(", ")
            )
        })
}

/// "90", "90s", "15m", "6h", "2d".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration; use e.g. 90s, 15m, 6h or 2d"))?;
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => {
            return Err(format!(
                "unknown unit '{unit}' in '{text}'; use ms, s, m, h or d"
            ));
        }
    };
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("'{text}': {e}"))
}

/// "80%" or "80" -> 0.8.
pub fn parse_percent(text: &str) -> Result<f64, String> {
    let number = text.trim().trim_end_matches('%');
    match number.parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 100.0 => Ok(p / 100.0),
        _ => Err(format!(
            "'{text}' is not a percentage between 0 and 100, e.g. 80%"
        )),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn pids_must_be_numbers() {
        assert_eq!(parse_pid("1234"), Ok(1234));
        assert!(parse_pid("kafka").unwrap_err().contains("pgrep"));
        assert!(parse_pid("0").is_err());
        assert!(parse_pid("-5").is_err());
        let error = Cli::try_parse_from(["tracer", "attach", "--pid", "abc"]).unwrap_err();
        assert!(error.to_string().contains("'abc' is not a process id"));
    }

    #[test]
    fn events_needs_json() {
        for command in [["attach", "--pid", "1"].as_slice(), &["demo"]] {
            let args = |extra: &[&'static str]| {
                ["tracer"]
                    .into_iter()
                    .chain(command.iter().copied())
                    .chain(extra.iter().copied())
                    .collect::<Vec<_>>()
            };
            let error = Cli::try_parse_from(args(&["--events", "alerts"])).unwrap_err();
            assert!(error.to_string().contains("--json"), "{error}");
            Cli::try_parse_from(args(&["--json", "--events", "alerts"])).unwrap();
            Cli::try_parse_from(args(&[])).unwrap();
        }
        // The agent's --events picks what stdout and /events carry: no --json there.
        Cli::try_parse_from(["tracer", "agent", "--pid", "1", "--events", "alerts"]).unwrap();
    }

    #[test]
    fn durations_and_percentages() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_mins(15)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_mins(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5y").unwrap_err().contains("unknown unit"));
        assert_eq!(parse_percent("80%"), Ok(0.8));
        assert_eq!(parse_percent("95"), Ok(0.95));
        assert!(parse_percent("120%").is_err());
    }

    #[test]
    fn thresholds_must_be_ordered() {
        let cli = Cli::try_parse_from([
            "tracer",
            "attach",
            "--pid",
            "1",
            "--warn-usage",
            "90%",
            "--crit-usage",
            "85%",
        ])
        .unwrap();
        let Command::Attach(args) = cli.command else {
            panic!()
        };
        assert!(
            args.watch
                .options()
                .unwrap_err()
                .to_string()
                .contains("--crit-usage (85%)")
        );
        let cli = Cli::try_parse_from(["tracer", "attach", "--pid", "1"]).unwrap();
        let Command::Attach(args) = cli.command else {
            panic!()
        };
        assert_eq!(
            args.watch.options().unwrap().thresholds,
            Thresholds::default()
        );
    }

    /// The options of `tracer attach --pid 1 ARGS`.
    fn options(args: &[&str]) -> anyhow::Result<Options> {
        let cli =
            Cli::try_parse_from([["tracer", "attach", "--pid", "1"].as_slice(), args].concat())
                .unwrap();
        let Command::Attach(args) = cli.command else {
            panic!()
        };
        args.watch.options()
    }

    #[test]
    fn probe_flags_make_auto_mean_ebpf_and_refuse_proc() {
        let mode = |args: &[&str]| options(args).map(|o| o.mode);
        assert_eq!(mode(&[]).unwrap(), Mode::Auto);
        assert_eq!(mode(&["--btf", "/x"]).unwrap(), Mode::Ebpf);
        assert_eq!(mode(&["--vma-source", "mmap_lock"]).unwrap(), Mode::Ebpf);
        assert_eq!(mode(&["--mode", "proc"]).unwrap(), Mode::Proc);
        let refused = mode(&["--mode", "proc", "--vma-source", "mmap_lock"]).unwrap_err();
        assert!(refused.to_string().contains("use --mode ebpf"), "{refused}");
        assert!(mode(&["--mode", "proc", "--btf", "/x"]).is_err());
    }
}
