//! The kernel matrix: Debian's own cloud kernels of three releases, fetched with apt from
//! Debian's archive through a sources list of our own (the system's apt state is never
//! touched), and cached so that every later run, every helper and CI reuse them.
//!
//! Cache layout (`$TRACER_KERNEL_CACHE`, default /var/cache/tracer/kernels):
//! `apt/` (sources.list, lists, package cache), `debs/` (the downloaded .debs) and one
//! directory per package with the extracted `boot/vmlinuz-*` and `(usr/)lib/modules/`.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, bail};

use crate::check;

/// The kernel series of the matrix and the Debian release that ships each.
pub const MATRIX: &[(&str, &str)] = &[
    ("5.10", "bullseye"),
    ("6.1", "bookworm"),
    ("6.12", "trixie"),
];

/// How old the package lists may be before `apt-get update` runs again.
const LISTS_MAX_AGE: Duration = Duration::from_hours(24);

/// An extracted kernel package.
pub struct Kernel {
    /// The series asked for (`6.1`).
    pub series: String,
    /// The package (`linux-image-6.1.0-50-cloud-amd64`).
    pub package: String,
    pub vmlinuz: PathBuf,
    /// `(usr/)lib/modules/<release>` of the package.
    pub modules: PathBuf,
}

/// Where the kernels are cached.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("TRACER_KERNEL_CACHE")
        .map_or_else(|| PathBuf::from("/var/cache/tracer/kernels"), PathBuf::from)
}

/// The newest `linux-image-<series>*-cloud-amd64` of Debian's archive, downloaded and
/// extracted into the cache unless it is there already.
pub fn fetch(series: &str) -> anyhow::Result<Kernel> {
    if !MATRIX.iter().any(|(s, _)| *s == series) {
        let known: Vec<&str> = MATRIX.iter().map(|(s, _)| *s).collect();
        bail!(
            "kernel {series} is not in the matrix: choose one of {}",
            known.join(", ")
        );
    }
    let cache = cache_dir();
    std::fs::create_dir_all(&cache)
        .with_context(|| format!("creating the kernel cache {}", cache.display()))?;
    // One fetcher at a time: apt's own lock would make a second one fail instead of wait.
    let lock = File::create(cache.join("lock"))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!("locking {}", cache.join("lock").display());
    }
    let apt = Apt::new(&cache)?;
    let refreshed = apt.refresh();
    let package = match (apt.newest(series), refreshed) {
        (Ok(package), _) => package,
        (Err(e), Ok(())) => return Err(e),
        (Err(e), Err(update)) => return Err(e.context(update)),
    };
    let dir = cache.join(&package);
    if !dir.join("boot").is_dir() {
        let debs = cache.join("debs");
        std::fs::create_dir_all(&debs)?;
        eprintln!("xtask: downloading {package} into {}", debs.display());
        check(
            apt.command("apt-get")
                .current_dir(&debs)
                .args(["-qq", "download", &package]),
        )?;
        let deb = newest_deb(&debs, &package)?;
        let partial = cache.join(format!("{package}.partial"));
        let _ = std::fs::remove_dir_all(&partial);
        check(Command::new("dpkg").arg("-x").arg(&deb).arg(&partial))?;
        std::fs::rename(&partial, &dir)?;
    }
    let vmlinuz = last_entry(&dir.join("boot"), "vmlinuz-")?;
    // bookworm and older ship /lib/modules, trixie /usr/lib/modules.
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|sub| dir.join(sub))
        .find(|d| d.is_dir())
        .with_context(|| format!("{} has no lib/modules", dir.display()))?;
    let modules = last_entry(&modules, "")?;
    Ok(Kernel {
        series: series.to_owned(),
        package,
        vmlinuz,
        modules,
    })
}

/// apt and apt-cache pointed at the cache's own sources list, lists and status.
struct Apt {
    dir: PathBuf,
    options: Vec<String>,
}

impl Apt {
    fn new(cache: &Path) -> anyhow::Result<Self> {
        let dir = cache.join("apt");
        for sub in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let sources = MATRIX.iter().fold(String::new(), |list, (_, release)| {
            list + "deb http://deb.debian.org/debian " + release + " main\n"
        });
        std::fs::write(dir.join("sources.list"), sources)?;
        let options = [
            format!(
                "Dir::Etc::SourceList={}",
                dir.join("sources.list").display()
            ),
            "Dir::Etc::SourceParts=/dev/null".to_owned(),
            format!("Dir::State::Lists={}", dir.join("lists").display()),
            format!("Dir::Cache={}", dir.join("cache").display()),
            "Dir::State::status=/dev/null".to_owned(),
            // Only the package lists: no translations, no DEP-11 metadata.
            "Acquire::Languages=none".to_owned(),
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".to_owned(),
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".to_owned(),
            "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false".to_owned(),
            "APT::Sandbox::User=root".to_owned(),
        ]
        .into_iter()
        .flat_map(|option| ["-o".to_owned(), option])
        .collect();
        Ok(Self { dir, options })
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.args(&self.options);
        command
    }

    /// `apt-get update` unless the lists are younger than a day.
    fn refresh(&self) -> anyhow::Result<()> {
        // Beside the lists, not among them: apt-get update deletes files it does not know there.
        let stamp = self.dir.join("updated");
        let fresh = std::fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .is_ok_and(|at| {
                SystemTime::now().duration_since(at).unwrap_or_default() < LISTS_MAX_AGE
            });
        if fresh {
            return Ok(());
        }
        eprintln!(
            "xtask: apt-get update of Debian's kernel lists (own sources list, {})",
            self.dir.display()
        );
        check(self.command("apt-get").args(["-qq", "update"]))
            .context("apt-get update of Debian's archive failed")?;
        std::fs::write(&stamp, "")?;
        Ok(())
    }

    /// The newest `linux-image-<series>.*-cloud-amd64` the lists name.
    fn newest(&self, series: &str) -> anyhow::Result<String> {
        let out = self
            .command("apt-cache")
            .args(["pkgnames", "linux-image-"])
            .output()
            .context("running apt-cache")?;
        let prefix = format!("linux-image-{series}.");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|name| name.starts_with(&prefix) && name.ends_with("-cloud-amd64"))
            .max_by_key(|name| version_key(name))
            .map(str::to_owned)
            .with_context(|| {
                format!(
                    "Debian's lists in {} name no linux-image-{series}.*-cloud-amd64",
                    self.dir.display()
                )
            })
    }
}

/// The numbers of a package name in order (`linux-image-6.12.117+deb13-cloud-amd64` ->
/// 6, 12, 117, 13, 64), so that names of one series compare by version.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

fn newest_deb(dir: &Path, package: &str) -> anyhow::Result<PathBuf> {
    last_entry(dir, &format!("{package}_"))
}

/// The last by name of the entries of `dir` whose names start with `prefix`.
fn last_entry(dir: &Path, prefix: &str) -> anyhow::Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
        .pop()
        .with_context(|| format!("nothing named {prefix}* in {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::version_key;

    #[test]
    fn newer_debian_kernels_sort_higher() {
        assert!(
            version_key("linux-image-6.12.117+deb13-cloud-amd64")
                > version_key("linux-image-6.12.107+deb13-cloud-amd64")
        );
        assert!(
            version_key("linux-image-5.10.0-32-cloud-amd64")
                > version_key("linux-image-5.10.0-30-cloud-amd64")
        );
        assert!(
            version_key("linux-image-6.1.0-50-cloud-amd64")
                > version_key("linux-image-6.1.0-9-cloud-amd64")
        );
    }
}
