//! The agent's state file: what a target's models learned over hours and days (the samples of
//! the VMA count's 6 h and 7 d trends), kept per target name in `--state-dir`, so that a
//! restart of the agent or of the broker does not lose days of history.
//!
//! One JSON file per target, `<dir>/<name>.json`, e.g.
//! `{"version":1,"saved_ms":1795237185125,"vma":[[[1795230000000,41000.0],...],[...]]}`: each
//! sample is (Unix time in ms, count), since the monotonic clock does not survive a reboot.
//! Written atomically (a temporary file in the same directory, synced, then renamed over the
//! old one). A file that cannot be parsed, or of another version, is reported and ignored: the
//! models start empty and the next save replaces it.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// The version of the file's layout; a file of another version is ignored.
pub const VERSION: u32 = 1;

/// What is kept of one target.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// When it was written, Unix ms.
    pub saved_ms: u64,
    /// The samples of the VMA count's long trends, one list per trend, oldest first.
    pub vma: Vec<Vec<(u64, f64)>>,
}

/// The state file of the target named `name` in `dir` (characters other than letters, digits,
/// `-`, `_` and `.` become `_`, so a name cannot leave the directory).
pub fn path(dir: &Path, name: &str) -> PathBuf {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("{}.json", safe.trim_start_matches('.')))
}

/// Reads a state file: `Ok(None)` when there is none, `Err` naming the file and what is wrong
/// with it when it cannot be used.
pub fn load(path: &Path) -> Result<Option<State>, String> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading the state file {}: {e}", path.display())),
    };
    let state: State = serde_json::from_slice(&text)
        .map_err(|e| format!("the state file {} is corrupt ({e})", path.display()))?;
    if state.version != VERSION {
        return Err(format!(
            "the state file {} has version {}, this tracer writes {VERSION}",
            path.display(),
            state.version
        ));
    }
    Ok(Some(state))
}

/// Writes `state` to `path` atomically: a reader (or a crash) sees the old file or the new
/// one, never a part.
///
/// # Errors
///
/// When the directory cannot be written.
pub fn save(path: &Path, state: &State) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(&serde_json::to_vec(state).map_err(std::io::Error::other)?)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tracer-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_saved_state_loads_back_and_replaces_the_old_one() {
        let dir = dir("roundtrip");
        let path = path(&dir, "kafka");
        assert_eq!(load(&path), Ok(None));
        let state = State {
            version: VERSION,
            saved_ms: 1_795_237_185_125,
            vma: vec![vec![(1_795_230_000_000, 41_000.0)], vec![]],
        };
        save(&path, &state).unwrap();
        let newer = State {
            saved_ms: state.saved_ms + 60_000,
            ..state.clone()
        };
        save(&path, &newer).unwrap();
        assert_eq!(load(&path), Ok(Some(newer)));
        // Nothing but the file itself is left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_and_foreign_files_are_reported() {
        let dir = dir("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        let path = path(&dir, "kafka");
        std::fs::write(&path, b"{\"version\":1,\"saved_ms\":").unwrap();
        let error = load(&path).unwrap_err();
        assert!(error.contains("is corrupt"), "{error}");
        std::fs::write(&path, b"{\"version\":9,\"saved_ms\":0,\"vma\":[]}").unwrap();
        let error = load(&path).unwrap_err();
        assert!(
            error.ends_with("has version 9, this tracer writes 1"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn target_names_stay_in_the_directory() {
        let dir = Path::new("/var/lib/tracer");
        assert_eq!(path(dir, "kafka"), dir.join("kafka.json"));
        assert_eq!(path(dir, "../etc/x"), dir.join("_etc_x.json"));
    }
}
