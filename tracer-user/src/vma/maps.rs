//! What the mappings of a process are: `/proc/PID/maps`, classified and grouped.
//!
//! The VMA count alone says a broker is near `vm.max_map_count`; the breakdown says why, e.g.
//! "58,112 mappings of *.index under /data/kafka". Files are grouped by extension (versioned
//! shared libraries count as `*.so`, Kafka's `*.index.deleted` keeps its inner extension),
//! anonymous memory by permissions (`---p` is JVM reservations/guards and glibc arena
//! reservations), and the rest by the kernel's own name (`[heap]`, `[vdso]`, `[anon:name]`…).
//! The same pass counts glibc malloc arenas by their shape (see [`Breakdown::arenas`]).
//!
//! The parser works on bytes and stays cheap at 65,000+ lines: per line it only splits fields
//! in place, builds the group key in one reused scratch buffer and looks it up in a hash map;
//! it allocates when a new group appears (and when the per-group set of distinct files grows).
//! [`MapsReader`] keeps its read buffer between refreshes.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};

use crate::units::{human_bytes, thousands};

/// What kind of mapping a group holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// A mapped file (libraries, jars, Kafka segments and indexes).
    File,
    /// A mapped file that has since been unlinked (`… (deleted)`).
    DeletedFile,
    /// POSIX shared memory (`/dev/shm`), System V segments, memfds, shared anonymous memory.
    SharedMemory,
    /// Anonymous memory without a name (Java heap, thread stacks, malloc arenas, reservations).
    Anonymous,
    /// Anonymous memory named with `PR_SET_VMA_ANON_NAME` (`[anon:name]`).
    NamedAnonymous,
    /// The brk heap, `[heap]`.
    Heap,
    /// The main thread's stack, `[stack]`.
    Stack,
    /// Special kernel mappings: `[vdso]`, `[vvar]`, `[vsyscall]`, `anon_inode:…`.
    Kernel,
}

impl Class {
    /// A stable lower-case name, for JSON and logs.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Class::File => "file",
            Class::DeletedFile => "deleted_file",
            Class::SharedMemory => "shared_memory",
            Class::Anonymous => "anonymous",
            Class::NamedAnonymous => "named_anonymous",
            Class::Heap => "heap",
            Class::Stack => "stack",
            Class::Kernel => "kernel",
        }
    }
}

/// One group of mappings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub class: Class,
    /// For `File`/`DeletedFile`: the extension pattern like "*.index", or the file name when
    /// it has no usable extension (e.g. "modules", "libjvm.so" -> "*.so"). For `Anonymous`:
    /// the permissions, e.g. "rw-p" or "---p". For `NamedAnonymous`: the name inside
    /// `[anon:...]`. For `Heap`/`Stack`/`Kernel`: "[heap]", "[stack]", "[vdso]",
    /// "`anon_inode:[io_uring]`" etc. For `SharedMemory`: "/dev/shm/*", "SYSV", "memfd:*",
    /// "/dev/zero", "`anon_hugepage`", "`[anon_shmem:name]`".
    pub pattern: String,
    /// Longest common directory of the member paths (`File`, `DeletedFile`), e.g.
    /// "/data/kafka" for files spread over `/data/kafka/topic-N/`; empty for other classes.
    pub dir: String,
    /// Number of mappings (lines) in the group.
    pub mappings: u32,
    /// Number of distinct files (by inode + dev) for `File`/`DeletedFile`; 0 otherwise.
    pub files: u32,
    /// Total virtual size in bytes of the group's mappings.
    pub bytes: u64,
}

impl Group {
    /// One line for humans, e.g. "58,112 mappings of *.index under /data/kafka (29,056 files,
    /// 1.1 GiB)" or "1,203 anonymous rw-p mappings (812.0 MiB)".
    #[must_use]
    pub fn describe(&self) -> String {
        let n = thousands(u64::from(self.mappings));
        let mappings = if self.mappings == 1 {
            "mapping"
        } else {
            "mappings"
        };
        let size = human_bytes(self.bytes);
        match self.class {
            Class::File | Class::DeletedFile => {
                let deleted = if self.class == Class::DeletedFile {
                    "deleted "
                } else {
                    ""
                };
                let (under, dir) = if self.dir.is_empty() {
                    ("", "")
                } else {
                    (" under ", self.dir.as_str())
                };
                let files = if self.files == 1 { "file" } else { "files" };
                format!(
                    "{n} {mappings} of {deleted}{}{under}{dir} ({} {files}, {size})",
                    self.pattern,
                    thousands(u64::from(self.files)),
                )
            }
            Class::Anonymous => format!("{n} anonymous {} {mappings} ({size})", self.pattern),
            Class::NamedAnonymous => format!("{n} {mappings} of [anon:{}] ({size})", self.pattern),
            Class::SharedMemory => {
                format!("{n} shared memory {mappings} of {} ({size})", self.pattern)
            }
            Class::Heap | Class::Stack | Class::Kernel => {
                format!("{n} {} {mappings} ({size})", self.pattern)
            }
        }
    }
}

/// The classified mappings of one process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Breakdown {
    /// Lines in /proc/PID/maps.
    pub lines: u32,
    /// Whether a `[vsyscall]` line was present: the kernel's `mm->map_count` does not count
    /// it, so `map_count == lines - 1` then.
    pub vsyscall: bool,
    /// Groups, most mappings first (ties: by pattern).
    pub groups: Vec<Group>,
    /// glibc malloc heaps of non-main arenas: 64 MiB reservations ([`ARENA_SIZE`]) aligned to
    /// 64 MiB, seen as an anonymous `rw-p` head at the aligned address followed without a gap
    /// by a `---p` rest, together exactly 64 MiB (or one fully grown `rw-p` of 64 MiB); the
    /// head may be split in several lines (under `glibc.mem.decorate_maps` its first part is
    /// named `[anon: glibc: malloc arena]`). An arena grown past 64 MiB chains further heaps
    /// and counts once per heap. The main
    /// arena (`[heap]`, brk) is not counted. Other 64 MiB-aligned reservations of exactly
    /// 64 MiB with a writable head (rare; e.g. a JVM metaspace node) count too.
    pub arenas: u32,
    /// The `rw-p` bytes of those heaps: the part that can be resident.
    pub arena_bytes: u64,
}

impl Breakdown {
    /// The count the kernel keeps in `mm->map_count`: lines, less `[vsyscall]`.
    #[must_use]
    pub fn map_count(&self) -> u32 {
        self.lines.saturating_sub(u32::from(self.vsyscall))
    }

    /// Parses the full text of a maps file.
    #[must_use]
    pub fn parse(text: &[u8]) -> Breakdown {
        let mut acc = Accumulator::default();
        for line in text.split(|&b| b == b'\n') {
            if !line.is_empty() {
                acc.add(&Line::parse(line));
            }
        }
        acc.finish()
    }
}

/// glibc's `HEAP_MAX_SIZE` on 64-bit (2 x `DEFAULT_MMAP_THRESHOLD_MAX`): the size and the
/// alignment of every heap of a non-main malloc arena.
pub const ARENA_SIZE: u64 = 64 << 20;

/// Reads and classifies /proc/PID/maps, reusing its buffer between calls.
#[derive(Default)]
pub struct MapsReader {
    buf: Vec<u8>,
}

impl MapsReader {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads `/proc/{pid}/maps` in one go (`read_to_end` into the reused buffer) and parses it.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened or read: the process has exited (`NotFound`), or we may
    /// not read it (`PermissionDenied`).
    pub fn read(&mut self, pid: u32) -> io::Result<Breakdown> {
        self.buf.clear();
        File::open(format!("/proc/{pid}/maps"))?.read_to_end(&mut self.buf)?;
        Ok(Breakdown::parse(&self.buf))
    }

    /// The text of the last read.
    #[must_use]
    pub fn text(&self) -> &[u8] {
        &self.buf
    }
}

/// The fields of one maps line, borrowed from the text.
struct Line<'a> {
    start: u64,
    size: u64,
    perms: &'a [u8],
    dev: u64,
    inode: u64,
    path: &'a [u8],
}

impl<'a> Line<'a> {
    /// Splits `start-end perms offset dev inode   pathname`. Lenient: a missing or malformed
    /// field reads as empty or 0, so every line still counts.
    fn parse(line: &'a [u8]) -> Self {
        let mut rest = line;
        let range = next_field(&mut rest);
        let perms = next_field(&mut rest);
        let _offset = next_field(&mut rest);
        let dev = next_field(&mut rest);
        let inode = next_field(&mut rest);
        let path = trim_start_spaces(rest);

        let (start, end) = match range.iter().position(|&b| b == b'-') {
            Some(dash) => (parse_hex(&range[..dash]), parse_hex(&range[dash + 1..])),
            None => (0, 0),
        };
        let dev = match dev.iter().position(|&b| b == b':') {
            Some(colon) => (parse_hex(&dev[..colon]) << 32) | parse_hex(&dev[colon + 1..]),
            None => parse_hex(dev),
        };
        Line {
            start,
            size: end.saturating_sub(start),
            perms,
            dev,
            inode: parse_dec(inode),
            path,
        }
    }
}

fn trim_start_spaces(s: &[u8]) -> &[u8] {
    let skip = s.iter().take_while(|&&b| b == b' ').count();
    &s[skip..]
}

/// The next space-separated field; advances `rest` past it.
fn next_field<'a>(rest: &mut &'a [u8]) -> &'a [u8] {
    let s = trim_start_spaces(rest);
    let len = s.iter().position(|&b| b == b' ').unwrap_or(s.len());
    let (field, tail) = s.split_at(len);
    *rest = tail;
    field
}

fn parse_hex(s: &[u8]) -> u64 {
    let mut n: u64 = 0;
    for &b in s {
        let Some(d) = char::from(b).to_digit(16) else {
            return 0;
        };
        n = n.wrapping_shl(4) | u64::from(d);
    }
    n
}

fn parse_dec(s: &[u8]) -> u64 {
    let mut n: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return 0;
        }
        n = n.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
    }
    n
}

/// A group while parsing: bytes, not yet strings.
struct Acc {
    class: Class,
    pattern: Vec<u8>,
    dir: Vec<u8>,
    mappings: u32,
    bytes: u64,
    /// Distinct (dev, inode) of File/DeletedFile members.
    files: HashSet<(u64, u64)>,
    /// The last member's (dev, inode): a file's mappings are usually adjacent lines.
    last_file: Option<(u64, u64)>,
}

/// A possible arena heap while parsing: its writable head so far.
#[derive(Clone, Copy)]
struct ArenaHead {
    /// The 64 MiB-aligned start.
    start: u64,
    /// Where the head ends: the next line must start here to belong to the heap.
    end: u64,
    /// `rw-p` bytes so far.
    rw_bytes: u64,
}

#[derive(Default)]
struct Accumulator {
    lines: u32,
    vsyscall: bool,
    groups: Vec<Acc>,
    /// Key: class byte followed by the pattern bytes.
    index: HashMap<Vec<u8>, usize>,
    /// Reused buffer for building the key of each line.
    key: Vec<u8>,
    /// The arena heap the previous lines may have started.
    arena: Option<ArenaHead>,
    arenas: u32,
    arena_bytes: u64,
}

impl Accumulator {
    fn add(&mut self, line: &Line<'_>) {
        self.lines = self.lines.saturating_add(1);
        if line.path == b"[vsyscall]" {
            self.vsyscall = true;
        }
        self.track_arena(line);

        self.key.clear();
        self.key.push(0); // class, filled in below
        let (class, dir) = classify(line, &mut self.key);
        self.key[0] = class as u8;

        let i = if let Some(&i) = self.index.get(self.key.as_slice()) {
            i
        } else {
            let i = self.groups.len();
            self.groups.push(Acc {
                class,
                pattern: self.key[1..].to_vec(),
                dir: dir.map(<[u8]>::to_vec).unwrap_or_default(),
                mappings: 0,
                bytes: 0,
                files: HashSet::new(),
                last_file: None,
            });
            self.index.insert(self.key.clone(), i);
            i
        };

        let g = &mut self.groups[i];
        g.mappings = g.mappings.saturating_add(1);
        g.bytes = g.bytes.saturating_add(line.size);
        if let Some(dir) = dir {
            common_dir(&mut g.dir, dir);
            let file = (line.dev, line.inode);
            if g.last_file != Some(file) {
                g.files.insert(file);
                g.last_file = Some(file);
            }
        }
    }

    /// Follows the shape of an arena heap across lines: a `rw-p` head at a 64 MiB-aligned
    /// address (one or more lines: glibc grows the heap with `mprotect`, and with
    /// `glibc.mem.decorate_maps` only the first part is named), then at most one `---p`
    /// line, ending exactly [`ARENA_SIZE`] after the start.
    fn track_arena(&mut self, line: &Line<'_>) {
        let end = line.start.saturating_add(line.size);
        let writable = line.perms == b"rw-p";
        if let Some(mut head) = self.arena.take()
            && line.start == head.end
            && line.path.is_empty()
        {
            let heap_end = head.start.saturating_add(ARENA_SIZE);
            if writable && end < heap_end {
                head.end = end;
                head.rw_bytes += line.size;
                self.arena = Some(head);
            } else if (writable || line.perms == b"---p") && end == heap_end {
                let rw_bytes = head.rw_bytes + if writable { line.size } else { 0 };
                self.arenas = self.arenas.saturating_add(1);
                self.arena_bytes = self.arena_bytes.saturating_add(rw_bytes);
            }
            return;
        }
        let arena_named = line.path.is_empty() || is_arena_name(line.path);
        if !(writable && arena_named && line.size > 0 && line.start.is_multiple_of(ARENA_SIZE)) {
            return;
        }
        if line.size == ARENA_SIZE {
            self.arenas = self.arenas.saturating_add(1);
            self.arena_bytes = self.arena_bytes.saturating_add(ARENA_SIZE);
        } else if line.size < ARENA_SIZE {
            self.arena = Some(ArenaHead {
                start: line.start,
                end,
                rw_bytes: line.size,
            });
        }
    }

    fn finish(self) -> Breakdown {
        let mut groups: Vec<Group> = self
            .groups
            .into_iter()
            .map(|g| Group {
                class: g.class,
                pattern: String::from_utf8_lossy(&g.pattern).into_owned(),
                dir: String::from_utf8_lossy(&g.dir).into_owned(),
                mappings: g.mappings,
                files: u32::try_from(g.files.len()).unwrap_or(u32::MAX),
                bytes: g.bytes,
            })
            .collect();
        groups.sort_unstable_by(|a, b| {
            b.mappings
                .cmp(&a.mappings)
                .then_with(|| a.pattern.cmp(&b.pattern))
                .then_with(|| a.class.cmp(&b.class))
        });
        Breakdown {
            lines: self.lines,
            vsyscall: self.vsyscall,
            groups,
            arenas: self.arenas,
            arena_bytes: self.arena_bytes,
        }
    }
}

/// The name glibc gives an arena heap's first part under `glibc.mem.decorate_maps=1`:
/// `[anon: glibc: malloc arena]`.
fn is_arena_name(path: &[u8]) -> bool {
    path.strip_prefix(b"[anon:")
        .is_some_and(|name| trim_start_spaces(name) == b"glibc: malloc arena]")
}

/// Classifies a line, appending its pattern to `key`; returns the class and, for
/// File/DeletedFile with an absolute path, the parent directory.
fn classify<'a>(line: &Line<'a>, key: &mut Vec<u8>) -> (Class, Option<&'a [u8]>) {
    let path = line.path;
    if path.is_empty() {
        key.extend_from_slice(line.perms);
        return (Class::Anonymous, None);
    }
    if path.starts_with(b"[") {
        let inner = path.strip_suffix(b"]").unwrap_or(path);
        if path == b"[heap]" {
            key.extend_from_slice(path);
            return (Class::Heap, None);
        }
        if path.starts_with(b"[stack") {
            // Old kernels wrote thread stacks as [stack:TID].
            key.extend_from_slice(b"[stack]");
            return (Class::Stack, None);
        }
        if let Some(name) = inner.strip_prefix(b"[anon:") {
            key.extend_from_slice(name);
            return (Class::NamedAnonymous, None);
        }
        key.extend_from_slice(path);
        if path.starts_with(b"[anon_shmem:") {
            return (Class::SharedMemory, None);
        }
        return (Class::Kernel, None);
    }
    if !path.starts_with(b"/") {
        // anon_inode:[io_uring], anon_inode:bpf-map, anon_inode:[perf_event]...
        key.extend_from_slice(path);
        return (Class::Kernel, None);
    }

    let (path, deleted) = match path.strip_suffix(b" (deleted)") {
        Some(p) => (p, true),
        None => (path, false),
    };
    if path.starts_with(b"/dev/shm/") {
        key.extend_from_slice(b"/dev/shm/*");
        return (Class::SharedMemory, None);
    }
    if path.starts_with(b"/SYSV") {
        key.extend_from_slice(b"SYSV");
        return (Class::SharedMemory, None);
    }
    if path.starts_with(b"/memfd:") {
        key.extend_from_slice(b"memfd:*");
        return (Class::SharedMemory, None);
    }
    if deleted && (path == b"/dev/zero" || path == b"/anon_hugepage") {
        // Shared anonymous memory (MAP_SHARED | MAP_ANONYMOUS), plain or hugetlb.
        key.extend_from_slice(if path == b"/dev/zero" {
            path
        } else {
            &path[1..]
        });
        return (Class::SharedMemory, None);
    }

    let slash = path.iter().rposition(|&b| b == b'/').unwrap_or(0);
    let (parent, name) = (&path[..slash], &path[slash + 1..]);
    let parent = if parent.is_empty() {
        &path[..1]
    } else {
        parent
    };
    file_pattern(name, key);
    let class = if deleted {
        Class::DeletedFile
    } else {
        Class::File
    };
    (class, Some(parent))
}

/// Suffixes Kafka appends to a segment file it is about to delete, clean or swap in: the
/// pattern keeps the inner extension, `*.index.deleted`.
const KAFKA_SUFFIXES: [&[u8]; 3] = [b"deleted", b"cleaned", b"swap"];

/// Appends the file name's pattern: "*.so" for shared libraries (also versioned), "*.EXT",
/// "*.EXT.deleted" for Kafka's renamed segments, else the name itself.
fn file_pattern(name: &[u8], key: &mut Vec<u8>) {
    if is_shared_library(name) {
        key.extend_from_slice(b"*.so");
        return;
    }
    let Some((stem, ext)) = split_ext(name) else {
        key.extend_from_slice(if name.is_empty() { b"/" } else { name });
        return;
    };
    key.extend_from_slice(b"*.");
    if KAFKA_SUFFIXES.contains(&ext)
        && let Some((_, inner)) = split_ext(stem)
    {
        key.extend_from_slice(inner);
        key.push(b'.');
    }
    key.extend_from_slice(ext);
}

/// Splits "name.ext" at the last '.', when the extension is usable: 1..=12 characters of
/// `[A-Za-z0-9_-]`, and the name does not start with that '.'.
fn split_ext(name: &[u8]) -> Option<(&[u8], &[u8])> {
    let dot = name.iter().rposition(|&b| b == b'.')?;
    let ext = &name[dot + 1..];
    let usable = dot > 0
        && (1..=12).contains(&ext.len())
        && ext
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    usable.then_some((&name[..dot], ext))
}

/// "libjvm.so", "libc.so.6", "libstdc++.so.6.0.30": ".so" at the end or followed by
/// ".<digits>[.<digits>...]".
fn is_shared_library(name: &[u8]) -> bool {
    (1..name.len().saturating_sub(2)).any(|i| {
        if &name[i..i + 3] != b".so" {
            return false;
        }
        let rest = &name[i + 3..];
        rest.is_empty()
            || (rest.len() >= 2
                && rest[0] == b'.'
                && rest[1].is_ascii_digit()
                && rest.iter().all(|&b| b == b'.' || b.is_ascii_digit()))
    })
}

/// Shortens `dir` to the longest common directory of itself and `other`, at '/' boundaries;
/// "/" when they share nothing else.
fn common_dir(dir: &mut Vec<u8>, other: &[u8]) {
    let at_boundary = |s: &[u8], n: usize| n == s.len() || s[n] == b'/';
    if other.starts_with(dir) && (dir.as_slice() == b"/" || at_boundary(other, dir.len())) {
        return;
    }
    let mut n = dir.iter().zip(other).take_while(|(a, b)| a == b).count();
    if !(at_boundary(dir, n) && at_boundary(other, n)) {
        n = dir[..n].iter().rposition(|&b| b == b'/').unwrap_or(0);
    }
    if n == 0 {
        dir.clear();
        dir.push(b'/');
    } else {
        dir.truncate(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write as _;

    fn group<'a>(b: &'a Breakdown, class: Class, pattern: &str) -> &'a Group {
        b.groups
            .iter()
            .find(|g| g.class == class && g.pattern == pattern)
            .unwrap_or_else(|| panic!("no {class:?} {pattern}: {:#?}", b.groups))
    }

    const JVM: &str = "\
55d0c8a00000-55d0c8a01000 r--p 00000000 fd:01 2097313                    /usr/lib/jvm/java-21-openjdk-amd64/bin/java
55d0c8a01000-55d0c8a02000 r-xp 00001000 fd:01 2097313                    /usr/lib/jvm/java-21-openjdk-amd64/bin/java
55d0ca0f2000-55d0ca113000 rw-p 00000000 00:00 0                          [heap]
600000000-800000000 rw-p 00000000 00:00 0 
800000000-800b5d000 rw-p 00001000 fd:01 2097400                          /usr/lib/jvm/java-21-openjdk-amd64/lib/server/classes.jsa
800b5d000-840000000 ---p 00000000 00:00 0 
7f2a10000000-7f2a10021000 rw-p 00000000 00:00 0 
7f2a10021000-7f2a14000000 ---p 00000000 00:00 0 
7f2a18000000-7f2a18021000 rw-p 00000000 00:00 0 
7f2a18021000-7f2a1c000000 ---p 00000000 00:00 0 
7f2a1c000000-7f2a1c004000 ---p 00000000 00:00 0
7f2a20000000-7f2a24000000 r--s 00000000 fd:01 2097420                    /usr/lib/jvm/java-21-openjdk-amd64/lib/modules
7f2a24000000-7f2a24200000 r--p 00000000 fd:01 2097391                    /usr/lib/jvm/java-21-openjdk-amd64/lib/server/libjvm.so
7f2a24200000-7f2a25000000 r-xp 00200000 fd:01 2097391                    /usr/lib/jvm/java-21-openjdk-amd64/lib/server/libjvm.so
7f2a25000000-7f2a25100000 rw-p 01000000 fd:01 2097391                    /usr/lib/jvm/java-21-openjdk-amd64/lib/server/libjvm.so
7f2a26000000-7f2a26028000 r--p 00000000 fd:01 1835030                    /usr/lib/x86_64-linux-gnu/libc.so.6
7f2a26028000-7f2a261bd000 r-xp 00028000 fd:01 1835030                    /usr/lib/x86_64-linux-gnu/libc.so.6
7f2a27000000-7f2a27100000 r--p 00000000 fd:01 1835100                    /usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30
7ffd1a2b0000-7ffd1a2d1000 rw-p 00000000 00:00 0                          [stack]
7ffd1a3e4000-7ffd1a3e8000 r--p 00000000 00:00 0                          [vvar]
7ffd1a3e8000-7ffd1a3ea000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    #[test]
    fn jvm_excerpt() {
        let b = Breakdown::parse(JVM.as_bytes());
        assert_eq!(b.lines, 22);
        assert!(b.vsyscall);
        assert_eq!(b.map_count(), 21);

        let so = group(&b, Class::File, "*.so");
        assert_eq!((so.mappings, so.files), (6, 3));
        assert_eq!(so.dir, "/usr/lib");
        assert_eq!(so.bytes, 0x0110_0000 + 0x001b_d000 + 0x0010_0000);

        let jsa = group(&b, Class::File, "*.jsa");
        assert_eq!(jsa.dir, "/usr/lib/jvm/java-21-openjdk-amd64/lib/server");
        assert_eq!((jsa.mappings, jsa.files, jsa.bytes), (1, 1, 0xb5_d000));

        let modules = group(&b, Class::File, "modules");
        assert_eq!(modules.dir, "/usr/lib/jvm/java-21-openjdk-amd64/lib");
        assert_eq!(modules.bytes, 64 << 20);

        let java = group(&b, Class::File, "java");
        assert_eq!((java.mappings, java.files), (2, 1));

        let reserved = group(&b, Class::Anonymous, "---p");
        assert_eq!(reserved.mappings, 4);
        assert_eq!((reserved.files, reserved.dir.as_str()), (0, ""));
        let rw = group(&b, Class::Anonymous, "rw-p");
        assert_eq!(rw.mappings, 3);
        assert_eq!(rw.bytes, 0x2_0000_0000 + 2 * 0x21000);

        assert_eq!(group(&b, Class::Heap, "[heap]").bytes, 0x21000);
        assert_eq!((b.arenas, b.arena_bytes), (2, 2 * 0x21000));
        assert_eq!(group(&b, Class::Stack, "[stack]").mappings, 1);
        for k in ["[vvar]", "[vdso]", "[vsyscall]"] {
            assert_eq!(group(&b, Class::Kernel, k).mappings, 1);
        }
        let total: u32 = b.groups.iter().map(|g| g.mappings).sum();
        assert_eq!(total, b.lines);
    }

    /// Two threads' arenas of a C program (glibc 2.36, x86_64), between a thread stack and
    /// libc: one heap grown to 132 KiB, one fully grown.
    const ARENAS: &str = "\
7f3e54000000-7f3e54021000 rw-p 00000000 00:00 0 
7f3e54021000-7f3e58000000 ---p 00000000 00:00 0 
7f3e58000000-7f3e5c000000 rw-p 00000000 00:00 0 
7f3e5c7ff000-7f3e5c800000 ---p 00000000 00:00 0 
7f3e5c800000-7f3e5d000000 rw-p 00000000 00:00 0 
7f3e5d000000-7f3e5d028000 r--p 00000000 fd:01 1835030                    /usr/lib/x86_64-linux-gnu/libc.so.6
";

    #[test]
    fn arenas() {
        let b = Breakdown::parse(ARENAS.as_bytes());
        assert_eq!(b.arenas, 2);
        assert_eq!(b.arena_bytes, 132 * 1024 + ARENA_SIZE);
        // Counting arenas changes nothing else.
        let rw = group(&b, Class::Anonymous, "rw-p");
        assert_eq!(
            (rw.mappings, rw.bytes),
            (3, 0x21000 + ARENA_SIZE + 0x80_0000)
        );
        assert_eq!(group(&b, Class::Anonymous, "---p").mappings, 2);
        assert_eq!((b.lines, b.groups.len()), (6, 3));

        // Each shape alone.
        let one = Breakdown::parse(
            ARENAS
                .lines()
                .take(2)
                .collect::<Vec<_>>()
                .join("\n")
                .as_bytes(),
        );
        assert_eq!((one.arenas, one.arena_bytes), (1, 0x21000));
        let grown = Breakdown::parse(b"7f3e58000000-7f3e5c000000 rw-p 00000000 00:00 0\n");
        assert_eq!((grown.arenas, grown.arena_bytes), (1, ARENA_SIZE));
    }

    #[test]
    fn arena_lookalikes() {
        let count = |text: &str| {
            let b = Breakdown::parse(text.as_bytes());
            (b.arenas, b.arena_bytes)
        };
        // 64 MiB of anonymous memory, not 64 MiB-aligned.
        assert_eq!(
            count("7f3e54001000-7f3e58001000 rw-p 00000000 00:00 0\n"),
            (0, 0)
        );
        assert_eq!(
            count(
                "7f3e54001000-7f3e54022000 rw-p 00000000 00:00 0 \n\
                 7f3e54022000-7f3e58001000 ---p 00000000 00:00 0 \n"
            ),
            (0, 0)
        );
        // JVM reservations: only ---p, or a committed head in a reservation larger than 64 MiB
        // (the compressed class space, 1 GiB).
        assert_eq!(
            count("7f2a1c000000-7f2a20000000 ---p 00000000 00:00 0\n"),
            (0, 0)
        );
        assert_eq!(
            count(
                "800000000-800b5d000 rw-p 00001000 fd:01 2097400 /usr/lib/jvm/lib/server/classes.jsa\n\
                 800b5d000-840000000 ---p 00000000 00:00 0 \n\
                 840000000-840120000 rw-p 00000000 00:00 0 \n\
                 840120000-880000000 ---p 00000000 00:00 0 \n"
            ),
            (0, 0)
        );
        // Head and rest not adjacent, or the rest ends short of 64 MiB.
        assert_eq!(
            count(
                "7f3e54000000-7f3e54021000 rw-p 00000000 00:00 0 \n\
                 7f3e54022000-7f3e58000000 ---p 00000000 00:00 0 \n"
            ),
            (0, 0)
        );
        assert_eq!(
            count(
                "7f3e54000000-7f3e54021000 rw-p 00000000 00:00 0 \n\
                 7f3e54021000-7f3e57fff000 ---p 00000000 00:00 0 \n\
                 7f3e57fff000-7f3e58000000 r--p 00000000 00:00 0 \n"
            ),
            (0, 0)
        );
        // An aligned file mapping with an anonymous rest.
        assert_eq!(
            count(
                "7f3e54000000-7f3e54021000 rw-p 00000000 fd:01 7 /data/x.bin\n\
                 7f3e54021000-7f3e58000000 ---p 00000000 00:00 0 \n"
            ),
            (0, 0)
        );
    }

    #[test]
    fn decorated_arenas() {
        // glibc.mem.decorate_maps=1 names the first part only; growth then splits the head.
        let b = Breakdown::parse(
            b"\
7f3e54000000-7f3e54021000 rw-p 00000000 00:00 0                          [anon: glibc: malloc arena]
7f3e54021000-7f3e54085000 rw-p 00000000 00:00 0 
7f3e54085000-7f3e58000000 ---p 00000000 00:00 0 
7f3e58000000-7f3e58021000 rw-p 00000000 00:00 0                          [anon: glibc: malloc]
7f3e58021000-7f3e5c000000 ---p 00000000 00:00 0 
",
        );
        assert_eq!((b.arenas, b.arena_bytes), (1, 0x85000));
        assert_eq!(
            group(&b, Class::NamedAnonymous, " glibc: malloc arena").mappings,
            1
        );
    }

    #[test]
    fn kafka_indexes_across_topics() {
        let mut text = String::new();
        let mut inode = 5000;
        for topic in 0..4 {
            for seg in 0..5 {
                for ext in ["index", "timeindex"] {
                    inode += 1;
                    // Two mappings of some files (e.g. a remap after resize), adjacent or not.
                    for _ in 0..if seg == 0 { 2 } else { 1 } {
                        writeln!(
                            text,
                            "7f0000000000-7f0000001000 rw-s 00000000 fd:01 {inode} \
                             /data/kafka/orders-{topic}/{:020}.{ext}",
                            seg * 1000
                        )
                        .unwrap();
                    }
                }
            }
        }
        // A re-mapping of the first file, non-adjacent: same file, not counted again.
        text.push_str(
            "7f0000000000-7f0000001000 rw-s 00000000 fd:01 5001 \
             /data/kafka/orders-0/00000000000000000000.index\n",
        );
        // The same inode on another device is another file.
        text.push_str(
            "7f0000000000-7f0000001000 rw-s 00000000 fd:02 5001 \
             /data/kafka/orders-0/00000000000000000000.index\n",
        );
        let b = Breakdown::parse(text.as_bytes());
        assert_eq!(b.groups.len(), 2);
        let index = group(&b, Class::File, "*.index");
        assert_eq!(index.dir, "/data/kafka");
        assert_eq!((index.mappings, index.files), (4 * 6 + 2, 21));
        assert_eq!(index.bytes, 26 * 4096);
        let timeindex = group(&b, Class::File, "*.timeindex");
        assert_eq!(timeindex.dir, "/data/kafka");
        assert_eq!((timeindex.mappings, timeindex.files), (24, 20));
        assert!(!b.vsyscall);
        assert_eq!(b.map_count(), 50);
    }

    #[test]
    fn kafka_segment_suffixes() {
        let text = b"\
1000-2000 rw-s 00000000 fd:01 11 /data/kafka/t-0/00000000000000000000.index.deleted (deleted)
1000-2000 rw-s 00000000 fd:01 12 /data/kafka/t-1/00000000000000000100.index.deleted
1000-2000 rw-s 00000000 fd:01 13 /data/kafka/t-1/00000000000000000100.timeindex.cleaned
1000-2000 r--s 00000000 fd:01 14 /data/kafka/t-1/00000000000000000100.log
1000-2000 r--s 00000000 fd:01 15 /data/kafka/t-1/00000000000000000100.snapshot
1000-2000 r--s 00000000 fd:01 16 /data/kafka/t-1/foo.deleted
";
        let b = Breakdown::parse(text);
        let deleted = group(&b, Class::DeletedFile, "*.index.deleted");
        assert_eq!(
            (deleted.mappings, deleted.dir.as_str()),
            (1, "/data/kafka/t-0")
        );
        let renamed = group(&b, Class::File, "*.index.deleted");
        assert_eq!(renamed.dir, "/data/kafka/t-1");
        group(&b, Class::File, "*.timeindex.cleaned");
        group(&b, Class::File, "*.log");
        group(&b, Class::File, "*.snapshot");
        group(&b, Class::File, "*.deleted");
    }

    #[test]
    fn file_patterns() {
        let pattern = |name: &str| {
            let mut key = Vec::new();
            file_pattern(name.as_bytes(), &mut key);
            String::from_utf8(key).unwrap()
        };
        assert_eq!(pattern("libjvm.so"), "*.so");
        assert_eq!(pattern("libc.so.6"), "*.so");
        assert_eq!(pattern("libstdc++.so.6.0.30"), "*.so");
        assert_eq!(pattern("ld-linux-x86-64.so.2"), "*.so");
        assert_eq!(pattern("libfoo.so.bak"), "*.bak");
        assert_eq!(pattern("libfoo.so."), "libfoo.so.");
        assert_eq!(pattern(".so"), ".so");
        assert_eq!(pattern("modules"), "modules");
        assert_eq!(pattern(".bashrc"), ".bashrc");
        assert_eq!(pattern(".hidden.txt"), "*.txt");
        assert_eq!(pattern("classes.jsa"), "*.jsa");
        assert_eq!(pattern("kafka-clients-3.7.0.jar"), "*.jar");
        assert_eq!(pattern("a.thisistoolong1"), "a.thisistoolong1");
        assert_eq!(pattern("a.b c"), "a.b c");
        assert_eq!(pattern("x.tar-gz_2"), "*.tar-gz_2");
    }

    #[test]
    fn common_dirs() {
        let common = |a: &str, b: &str| {
            let mut d = a.as_bytes().to_vec();
            common_dir(&mut d, b.as_bytes());
            String::from_utf8(d).unwrap()
        };
        assert_eq!(common("/data/kafka/t-3", "/data/kafka/t-4"), "/data/kafka");
        assert_eq!(common("/data/kafka", "/data/kafka/t-4"), "/data/kafka");
        assert_eq!(common("/data/kafka/t-4", "/data/kafka"), "/data/kafka");
        assert_eq!(common("/data/kafka", "/data/kafka2/x"), "/data");
        assert_eq!(common("/data/kafka", "/data/kafka"), "/data/kafka");
        assert_eq!(common("/data", "/usr/lib"), "/");
        assert_eq!(common("/", "/usr/lib"), "/");
        assert_eq!(common("/usr/lib", "/"), "/");
    }

    #[test]
    fn spaces_deleted_and_names() {
        let text = b"\
1000-3000 r--p 00000000 fd:01 77                         /opt/my app/data files/big file.dat
3000-4000 r--p 00000000 fd:01 78                         /opt/my app/other/x.dat (deleted)
4000-5000 rw-s 00000000 00:05 99                         /dev/shm/kafka-buffer (deleted)
5000-6000 rw-s 00000000 00:01 32768                      /SYSV00000000 (deleted)
6000-7000 rw-s 00000000 00:01 1025                       /memfd:jit-code (deleted)
7000-8000 rw-s 00000000 00:01 1026                       /dev/zero (deleted)
8000-9000 rw-p 00000000 00:00 0                          [anon:glibc: malloc arena]
9000-a000 rw-p 00000000 00:00 0                          [anon:glibc: malloc arena]
a000-b000 rw-s 00000000 00:01 1027                       [anon_shmem:ring]
b000-c000 rw-p 00000000 00:00 0                          [vvar_vclock]
c000-d000 rw-s 00000000 00:0e 1028                       anon_inode:[io_uring]
";
        let b = Breakdown::parse(text);
        assert_eq!(b.lines, 11);
        let dat = group(&b, Class::File, "*.dat");
        assert_eq!(
            (dat.dir.as_str(), dat.bytes),
            ("/opt/my app/data files", 0x2000)
        );
        let del = group(&b, Class::DeletedFile, "*.dat");
        assert_eq!((del.dir.as_str(), del.files), ("/opt/my app/other", 1));
        assert_eq!(group(&b, Class::SharedMemory, "/dev/shm/*").files, 0);
        group(&b, Class::SharedMemory, "SYSV");
        group(&b, Class::SharedMemory, "memfd:*");
        group(&b, Class::SharedMemory, "/dev/zero");
        group(&b, Class::SharedMemory, "[anon_shmem:ring]");
        let arena = group(&b, Class::NamedAnonymous, "glibc: malloc arena");
        assert_eq!((arena.mappings, arena.dir.as_str()), (2, ""));
        group(&b, Class::Kernel, "[vvar_vclock]");
        group(&b, Class::Kernel, "anon_inode:[io_uring]");
        assert_eq!(b.groups.len(), 10);
    }

    #[test]
    fn empty_and_odd_lines() {
        assert_eq!(Breakdown::parse(b""), Breakdown::default());
        assert_eq!(Breakdown::parse(b"\n").lines, 0);
        assert_eq!(Breakdown::default().map_count(), 0);

        // No pathname, no trailing space, no trailing newline.
        let b = Breakdown::parse(b"7f2a1c000000-7f2a1c021000 rw-p 00000000 00:00 0");
        assert_eq!(b.lines, 1);
        assert_eq!(b.map_count(), 1);
        let g = &b.groups[0];
        assert_eq!(
            (g.class, g.pattern.as_str(), g.bytes),
            (Class::Anonymous, "rw-p", 0x21000)
        );

        // Garbage still counts as a line.
        let b = Breakdown::parse(b"garbage\n");
        assert_eq!(b.lines, 1);
        assert_eq!(b.groups[0].bytes, 0);

        // Only [vsyscall].
        let b = Breakdown::parse(
            b"ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0  [vsyscall]\n",
        );
        assert_eq!((b.lines, b.map_count()), (1, 0));
        // Old kernels: thread stacks as [stack:TID].
        let b = Breakdown::parse(b"1000-2000 rw-p 00000000 00:00 0 [stack:1234]\n");
        assert_eq!(b.groups[0].pattern, "[stack]");
    }

    #[test]
    fn sort_order() {
        let text = b"\
1000-2000 rw-p 00000000 00:00 0 
1000-2000 ---p 00000000 00:00 0 
1000-2000 r--p 00000000 fd:01 1 /a/x.so
1000-2000 ---p 00000000 00:00 0 
1000-2000 r--p 00000000 fd:01 2 /a/y.jar
1000-2000 r--p 00000000 fd:01 1 /a/x.so
1000-2000 r--p 00000000 fd:01 1 /a/x.so
1000-2000 r--p 00000000 fd:01 1 /a/b.so (deleted)
1000-2000 r--p 00000000 fd:01 1 /a/b.so (deleted)
1000-2000 r--p 00000000 fd:01 1 /a/b.so (deleted)
";
        let b = Breakdown::parse(text);
        let order: Vec<_> = b
            .groups
            .iter()
            .map(|g| (g.mappings, g.pattern.as_str(), g.class))
            .collect();
        assert_eq!(
            order,
            [
                (3, "*.so", Class::File),
                (3, "*.so", Class::DeletedFile),
                (2, "---p", Class::Anonymous),
                (1, "*.jar", Class::File),
                (1, "rw-p", Class::Anonymous),
            ]
        );
    }

    #[test]
    fn describe() {
        let g = Group {
            class: Class::File,
            pattern: "*.index".into(),
            dir: "/data/kafka".into(),
            mappings: 58_112,
            files: 29_056,
            bytes: 1_181_116_006,
        };
        assert_eq!(
            g.describe(),
            "58,112 mappings of *.index under /data/kafka (29,056 files, 1.1 GiB)"
        );
        let g = Group {
            class: Class::DeletedFile,
            mappings: 1,
            files: 1,
            bytes: 4096,
            ..g
        };
        assert_eq!(
            g.describe(),
            "1 mapping of deleted *.index under /data/kafka (1 file, 4.0 KiB)"
        );
        let anon = |class, pattern: &str, mappings, bytes| Group {
            class,
            pattern: pattern.into(),
            dir: String::new(),
            mappings,
            files: 0,
            bytes,
        };
        assert_eq!(
            anon(Class::Anonymous, "rw-p", 1203, 812 << 20).describe(),
            "1,203 anonymous rw-p mappings (812.0 MiB)"
        );
        assert_eq!(
            anon(Class::Heap, "[heap]", 1, 135_168).describe(),
            "1 [heap] mapping (132.0 KiB)"
        );
        assert_eq!(
            anon(Class::NamedAnonymous, "glibc: malloc arena", 2, 12).describe(),
            "2 mappings of [anon:glibc: malloc arena] (12 B)"
        );
        assert_eq!(
            anon(Class::SharedMemory, "/dev/shm/*", 3, 3 << 30).describe(),
            "3 shared memory mappings of /dev/shm/* (3.0 GiB)"
        );
        assert_eq!(
            anon(Class::Kernel, "anon_inode:[io_uring]", 2, 8192).describe(),
            "2 anon_inode:[io_uring] mappings (8.0 KiB)"
        );
    }

    #[test]
    fn class_names() {
        let all = [
            Class::File,
            Class::DeletedFile,
            Class::SharedMemory,
            Class::Anonymous,
            Class::NamedAnonymous,
            Class::Heap,
            Class::Stack,
            Class::Kernel,
        ];
        let names: Vec<_> = all.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            [
                "file",
                "deleted_file",
                "shared_memory",
                "anonymous",
                "named_anonymous",
                "heap",
                "stack",
                "kernel"
            ]
        );
    }

    #[test]
    fn synthetic_65536_lines() {
        const LINES: u32 = 65_536;
        let mut text = String::with_capacity(LINES as usize * 100);
        let mut start: u64 = 0x7f00_0000_0000;
        for i in 0..LINES {
            let end = start + 0x1000;
            match i % 4 {
                0 | 1 => {
                    let ext = if i % 4 == 0 { "index" } else { "timeindex" };
                    writeln!(
                        text,
                        "{start:x}-{end:x} rw-s 00000000 fd:01 {} \
                         /data/kafka/topic-{}/{:020}.{ext}",
                        100_000 + i,
                        i % 97,
                        i
                    )
                }
                2 => writeln!(text, "{start:x}-{end:x} rw-p 00000000 00:00 0 "),
                _ => writeln!(text, "{start:x}-{end:x} ---p 00000000 00:00 0 "),
            }
            .unwrap();
            start = end;
        }
        let b = Breakdown::parse(text.as_bytes());
        assert_eq!((b.lines, b.map_count()), (LINES, LINES));
        assert_eq!(b.groups.len(), 4);
        assert_eq!(b.arenas, 0);
        for (class, pattern) in [
            (Class::File, "*.index"),
            (Class::File, "*.timeindex"),
            (Class::Anonymous, "rw-p"),
            (Class::Anonymous, "---p"),
        ] {
            let g = group(&b, class, pattern);
            assert_eq!(g.mappings, LINES / 4);
            assert_eq!(g.bytes, u64::from(LINES / 4) * 4096);
            if class == Class::File {
                assert_eq!((g.files, g.dir.as_str()), (LINES / 4, "/data/kafka"));
            }
        }
        // Ties are broken by pattern.
        let patterns: Vec<_> = b.groups.iter().map(|g| g.pattern.as_str()).collect();
        assert_eq!(patterns, ["*.index", "*.timeindex", "---p", "rw-p"]);
    }

    #[test]
    fn reads_own_maps() {
        let mut reader = MapsReader::new();
        let b = reader.read(std::process::id()).unwrap();
        assert!(b.lines > 0);
        assert_eq!(b.groups.iter().map(|g| g.mappings).sum::<u32>(), b.lines);
        let cap = reader.buf.capacity();
        assert!(cap > 0);
        reader.read(std::process::id()).unwrap();
        assert!(reader.read(u32::MAX).is_err());
    }
}
