//! The agent's settings: built-in defaults, then the TOML file (`--config`), then the flags
//! given on the command line, each overriding the one before. A bad file fails at start with
//! its line and field named.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use clap::{ArgMatches, parser::ValueSource};
use regex::Regex;
use serde::{Deserialize, Deserializer};

use crate::{
    cli::{AgentArgs, WatchArgs, parse_duration, parse_percent},
    output::filter::Events,
};

/// What the agent watches.
#[derive(Clone, Debug)]
pub enum Spec {
    /// One process; not replaced when it exits.
    Pid { pid: u32 },
    /// Every process whose command line matches, now and later; `name` labels its metrics.
    Match { name: String, regex: Regex },
}

/// Everything the agent runs with.
#[derive(Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub allow_remote: bool,
    pub webhook: Option<String>,
    pub webhook_ca: Option<PathBuf>,
    /// Clients of GET /events at most, and how long one may take nothing before it is cut.
    pub events_clients: usize,
    pub events_idle: Duration,
    /// What stdout carries, and /events by default.
    pub events: Events,
    pub quiet: bool,
    pub duration: Option<Duration>,
    pub watch: WatchArgs,
    pub targets: Vec<Spec>,
}

/// The TOML file, e.g.:
///
/// ```toml
/// listen = "127.0.0.1:9745"
/// webhook = "https://oncall.example.com/hooks/tracer"
/// webhook_ca = "/etc/tracer/oncall-ca.pem"
/// scrub_words = ["jaas"]
///
/// [thresholds]
/// warn_eta = "6h"
/// close_wait_after = "5s"
///
/// [[target]]
/// name = "kafka"
/// match = 'kafka\.Kafka'
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<SocketAddr>,
    allow_remote: Option<bool>,
    webhook: Option<String>,
    webhook_ca: Option<PathBuf>,
    /// Words added to the secret names masked in command lines (`--scrub-words`).
    #[serde(default)]
    scrub_words: Vec<String>,
    #[serde(default)]
    thresholds: Thresholds,
    #[serde(default, rename = "target")]
    targets: Vec<Target>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Thresholds {
    max_map_count: Option<u32>,
    #[serde(default, deserialize_with = "duration")]
    warn_eta: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    crit_eta: Option<Duration>,
    #[serde(default, deserialize_with = "percent")]
    warn_usage: Option<f64>,
    #[serde(default, deserialize_with = "percent")]
    crit_usage: Option<f64>,
    #[serde(default, deserialize_with = "duration")]
    rate_window: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    close_wait_after: Option<Duration>,
    close_wait_min: Option<u32>,
    #[serde(default, deserialize_with = "duration")]
    fin_wait2_after: Option<Duration>,
    fin_wait2_min: Option<u32>,
    surge_factor: Option<f64>,
    surge_min: Option<f64>,
    max_sockets: Option<u32>,
    thread_leak_min: Option<u32>,
    #[serde(default, deserialize_with = "duration")]
    thread_leak_window: Option<Duration>,
    #[serde(default, deserialize_with = "percent")]
    saturated_busy: Option<f64>,
    #[serde(default, deserialize_with = "duration")]
    saturation_window: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    stall_after: Option<Duration>,
    stall_threads: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Target {
    name: Option<String>,
    #[serde(rename = "match")]
    pattern: Option<toml::Spanned<String>>,
    pid: Option<u32>,
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn percent<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let text = String::deserialize(d)?;
    parse_percent(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

impl Settings {
    /// Merges defaults, the file and the command line; `matches` tells which flags were given.
    pub fn load(args: &AgentArgs, matches: &ArgMatches) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => (File::default(), Vec::new()),
        };
        let (file, file_targets) = file;
        let given = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
        let mut watch = args.watch.clone();
        let t = &file.thresholds;
        // A value from the file, unless the flag was given.
        macro_rules! from_file {
            ($($field:ident),*) => {$(
                if !given(stringify!($field)) {
                    if let Some(value) = t.$field.clone() {
                        watch.$field = value;
                    }
                }
            )*};
        }
        from_file!(
            warn_eta,
            crit_eta,
            warn_usage,
            crit_usage,
            rate_window,
            close_wait_after,
            close_wait_min,
            fin_wait2_after,
            fin_wait2_min,
            surge_factor,
            surge_min,
            max_sockets,
            thread_leak_min,
            thread_leak_window,
            saturated_busy,
            saturation_window,
            stall_after,
            stall_threads
        );
        if !given("max_map_count") && t.max_map_count.is_some() {
            watch.max_map_count = t.max_map_count;
        }
        // Words from both: a secret named in either stays masked.
        watch.scrub_words.extend(file.scrub_words.iter().cloned());
        watch.options()?;

        let mut targets: Vec<Spec> = args.pids.iter().map(|&pid| Spec::Pid { pid }).collect();
        for text in &args.matches {
            targets.push(parse_match(text).with_context(|| format!("--match {text}"))?);
        }
        // Targets on the command line replace the file's.
        if targets.is_empty() {
            targets = file_targets;
        }
        if targets.is_empty() {
            bail!(
                "no target - name one with --pid PID or --match REGEX (e.g. --match kafka=kafka\\.Kafka), or in the --config file"
            );
        }
        let listen = if given("listen") {
            args.listen
        } else {
            file.listen.unwrap_or(args.listen)
        };
        Ok(Self {
            listen,
            allow_remote: args.allow_remote || file.allow_remote.unwrap_or(false),
            webhook: args.webhook.clone().or(file.webhook),
            webhook_ca: args.webhook_ca.clone().or(file.webhook_ca),
            events_clients: args.events_clients as usize,
            events_idle: args.events_idle,
            events: args.events,
            quiet: args.quiet,
            duration: args.duration,
            watch,
            targets,
        })
    }
}

/// `NAME=REGEX` or `REGEX` (named after itself).
fn parse_match(text: &str) -> anyhow::Result<Spec> {
    let (name, pattern) = match text.split_once('=') {
        Some((name, pattern))
            if !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
        {
            (name.to_owned(), pattern)
        }
        _ => (text.to_owned(), text),
    };
    let regex = Regex::new(pattern).map_err(|e| anyhow!("invalid regex: {e}"))?;
    Ok(Spec::Match { name, regex })
}

/// Reads and checks the file; errors name the file, the line and the field.
fn read_file(path: &Path) -> anyhow::Result<(File, Vec<Spec>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut file: File = toml::from_str(&text).map_err(|e| {
        let line = e.span().map_or(0, |span| line_of(&text, span.start));
        anyhow!("{} line {line}: {}", path.display(), e.message())
    })?;
    let mut specs = Vec::new();
    for (index, target) in std::mem::take(&mut file.targets).into_iter().enumerate() {
        let spec = match (target.pid, target.pattern) {
            (Some(pid), None) => Spec::Pid { pid },
            (None, Some(pattern)) => {
                let line = line_of(&text, pattern.span().start);
                let regex = Regex::new(pattern.get_ref()).map_err(|e| {
                    anyhow!(
                        "{} line {line}: target.match: invalid regex: {e}",
                        path.display()
                    )
                })?;
                Spec::Match {
                    name: target.name.unwrap_or_else(|| pattern.get_ref().clone()),
                    regex,
                }
            }
            _ => bail!(
                "{}: target #{}: give exactly one of `pid` or `match`",
                path.display(),
                index + 1
            ),
        };
        specs.push(spec);
    }
    Ok((file, specs))
}

/// 1-based line number of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, FromArgMatches as _};

    use super::*;
    use crate::cli::{Cli, Command};

    fn settings(file: Option<&str>, flags: &[&str]) -> anyhow::Result<Settings> {
        let dir = std::env::temp_dir().join(format!(
            "tracer-config-test-{}-{}",
            std::process::id(),
            flags.len()
        ));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("agent-{:x}.toml", file.map_or(0, str::len)));
        let mut command_line = vec!["tracer", "agent"];
        if let Some(text) = file {
            std::fs::write(&path, text)?;
            command_line.extend(["--config", path.to_str().expect("utf-8")]);
        }
        command_line.extend(flags);
        let parsed = Cli::command().try_get_matches_from(command_line)?;
        let Command::Agent(args) = Cli::from_arg_matches(&parsed)?.command else {
            panic!()
        };
        let (_, sub) = parsed.subcommand().expect("agent");
        Settings::load(&args, sub)
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let file = "listen = \"127.0.0.1:9999\"\n[thresholds]\nclose_wait_after = \"9s\"\nwarn_eta = \"2h\"\n\n[[target]]\nname = \"kafka\"\nmatch = 'kafka\\.Kafka'\n";
        let s = settings(Some(file), &["--warn-eta", "3h"]).unwrap();
        assert_eq!(s.listen, "127.0.0.1:9999".parse().unwrap());
        assert_eq!(s.watch.close_wait_after, Duration::from_secs(9));
        assert_eq!(s.watch.warn_eta, Duration::from_hours(3));
        assert_eq!(s.watch.crit_eta, Duration::from_mins(30), "the default");
        let [Spec::Match { name, regex }] = &s.targets[..] else {
            panic!("{:?}", s.targets)
        };
        assert_eq!(name, "kafka");
        assert!(regex.is_match("java -cp libs/* kafka.Kafka config/server.properties"));
        let s = settings(
            Some("scrub_words = [\"jaas\"]\n"),
            &["--pid", "1", "--scrub-words", "pin"],
        )
        .unwrap();
        assert_eq!(
            s.watch
                .options()
                .unwrap()
                .scrub
                .command_line("-Da.jaas=x -Dpin=y -Dp=z"),
            "-Da.jaas=******** -Dpin=******** -Dp=z",
            "the file's words and the flag's"
        );
        let s = settings(Some(file), &["--pid", "42"]).unwrap();
        assert!(
            matches!(s.targets[..], [Spec::Pid { pid: 42 }]),
            "flags replace the file's targets"
        );
    }

    #[test]
    fn bad_files_name_the_line_and_the_field() {
        let unknown = settings(
            Some("[[target]]\nmatch = 'x'\n\n[thresholds]\nclose_wait = \"5s\"\n"),
            &[],
        )
        .unwrap_err();
        let text = format!("{unknown:#}");
        assert!(
            text.contains("line 5") && text.contains("close_wait"),
            "{text}"
        );
        let duration =
            settings(Some("[thresholds]\nwarn_eta = \"soon\"\n"), &["--pid", "1"]).unwrap_err();
        let text = format!("{duration:#}");
        assert!(
            text.contains("line 2") && text.contains("'soon' is not a duration"),
            "{text}"
        );
        let regex =
            settings(Some("[[target]]\nname = \"k\"\nmatch = 'kafka('\n"), &[]).unwrap_err();
        let text = format!("{regex:#}");
        assert!(
            text.contains("line 3") && text.contains("invalid regex"),
            "{text}"
        );
        let both = settings(Some("[[target]]\nmatch = 'k'\npid = 3\n"), &[]).unwrap_err();
        assert!(format!("{both:#}").contains("exactly one of"), "{both:#}");
    }

    #[test]
    fn targets_are_required_and_named() {
        let none = settings(None, &[]).unwrap_err();
        assert!(none.to_string().contains("--match REGEX"), "{none}");
        let s = settings(
            None,
            &["--match", "kafka=kafka\\.Kafka", "--match", "zookeeper"],
        )
        .unwrap();
        let names: Vec<&str> = s
            .targets
            .iter()
            .map(|t| match t {
                Spec::Match { name, .. } => name.as_str(),
                Spec::Pid { .. } => "pid",
            })
            .collect();
        assert_eq!(names, ["kafka", "zookeeper"]);
        assert!(settings(None, &["--match", "x=("]).is_err());
    }
}
