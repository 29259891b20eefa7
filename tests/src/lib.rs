//! Helpers for the integration tests: run the real `tracer` binary against real processes
//! and compare what it reports with what the kernel shows in /proc.
//!
//! The tests need root (they load BPF programs) and run one at a time; `cargo xtask test`
//! does both. They panic with a message on any failure, as aya's own integration tests do.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod bpf;

/// The tracer binary under test: `$TRACER_BIN`, or the workspace's release build.
pub fn tracer_bin() -> PathBuf {
    let path = std::env::var_os("TRACER_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/tracer"),
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "{} is missing: run the integration tests with `cargo xtask test`",
        path.display()
    );
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the integration tests load BPF programs: run them as root (`cargo xtask test`)"
    );
    path
}

/// `tracer` as user nobody with only the capabilities `caps` (setpriv's `+bpf,...`; none:
/// `-all`), stdin closed; the caller adds the arguments.
pub fn tracer_as_nobody(caps: &str) -> Command {
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps={caps}"))
        .arg(format!("--ambient-caps={caps}"))
        .arg(tracer_bin())
        .stdin(Stdio::null());
    command
}

/// A directory under the system temp dir, removed when dropped.
pub struct TempDir {
    path: PathBuf,
    mounted: bool,
}

impl TempDir {
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("tracer-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self {
            path,
            mounted: false,
        }
    }

    /// A temp dir with a tmpfs of its own: creating tens of thousands of files is fast there
    /// (on ext4 it slows to a few hundred per second next to recently deleted inodes), and
    /// unmounting frees everything at once.
    pub fn tmpfs(name: &str) -> Self {
        let mut dir = Self::new(name);
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2g", "tracer-test"])
            .arg(&dir.path)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount tmpfs on {}", dir.path.display());
        dir.mounted = true;
        dir
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount")
                .arg("--lazy")
                .arg(&self.path)
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A free loopback port (closed again: whoever needs it binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Waits until something listens on loopback `port`.
pub fn wait_for_listener(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A Redis server (Debian's) on a free loopback port, with its files in `dir`.
pub fn start_redis(dir: &TempDir) -> (Process, u16) {
    let port = free_port();
    let redis = Process::spawn(
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path()),
    );
    wait_for_listener(port, "redis-server");
    (redis, port)
}

/// The body of `GET path` on loopback `port`, which must answer 200.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    body.to_owned()
}

/// Compiles `tests/java/<class>.java` into `out`.
pub fn compile_java(class: &str, out: &Path) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("java")
        .join(format!("{class}.java"));
    let status = Command::new("javac")
        .arg("-d")
        .arg(out)
        .arg(&source)
        .status()
        .expect("run javac (cargo xtask setup installs a JDK)");
    assert!(status.success(), "javac {} failed", source.display());
}

/// A small, quiet JVM running `class` from `classes`, as the tests run them.
pub fn java(classes: &Path, class: &str) -> Command {
    let mut command = Command::new("java");
    command
        .args([
            "-Xmx64m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-XX:-UsePerfData",
        ])
        .arg("-cp")
        .arg(classes)
        .arg(class);
    command
}

/// The `port=N` of a READY line.
pub fn port_of(ready: &str) -> u16 {
    ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("port="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {ready:?}"))
}

/// A memory cgroup with a limit, made for a test and removed when dropped: v1's memory
/// hierarchy where it is mounted (hybrid machines), the unified v2 hierarchy otherwise.
pub struct MemoryCgroup {
    pub dir: PathBuf,
}

impl MemoryCgroup {
    pub fn new(name: &str, limit_bytes: u64) -> Self {
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let (dir, limit_file) = if v1.join("memory.limit_in_bytes").exists() {
            (
                v1.join(format!("tracer-test-{name}-{}", std::process::id())),
                "memory.limit_in_bytes",
            )
        } else {
            let root = Path::new("/sys/fs/cgroup");
            // Let children of the root use the memory controller (idempotent).
            let _ = std::fs::write(root.join("cgroup.subtree_control"), "+memory");
            (
                root.join(format!("tracer-test-{name}-{}", std::process::id())),
                "memory.max",
            )
        };
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        std::fs::write(dir.join(limit_file), limit_bytes.to_string())
            .unwrap_or_else(|e| panic!("setting the limit of {}: {e}", dir.display()));
        Self { dir }
    }

    /// `command`, started inside this cgroup: a shell moves itself in, then execs it.
    pub fn wrap(&self, command: &Command) -> Command {
        let mut line = String::from("echo $$ > \"$0\"/cgroup.procs && exec");
        for word in std::iter::once(command.get_program()).chain(command.get_args()) {
            line.push_str(" '");
            line.push_str(&word.to_string_lossy().replace('\'', "'\\''"));
            line.push('\'');
        }
        let mut shell = Command::new("sh");
        shell.arg("-c").arg(line).arg(&self.dir);
        shell
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // The processes in it are gone by now (the tests kill theirs); retry while the kernel
        // finishes tearing them down.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Compiles `tests/native/<name>.c` into `out/<name>`.
pub fn compile_c(name: &str, out: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("native")
        .join(format!("{name}.c"));
    let binary = out.join(name);
    let status = Command::new("gcc")
        .args(["-O2", "-pthread", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .expect("run gcc");
    assert!(status.success(), "gcc {} failed", source.display());
    binary
}

/// `mm->map_count` as /proc shows it: lines of /proc/PID/maps less `[vsyscall]`; `None`
/// once the process is gone.
pub fn maps_count(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    if text.is_empty() {
        return None;
    }
    let count = text
        .lines()
        .filter(|line| !line.ends_with("[vsyscall]"))
        .count();
    Some(u32::try_from(count).expect("fewer than 2^32 mappings"))
}

/// Whether every BPF program named `prefix...` is gone within two seconds: the kernel frees a
/// program after an RCU grace period once its last fd closes, so it can outlive the tracer's
/// exit by a moment.
pub fn programs_unloaded(prefix: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while loaded_programs(prefix) > 0 {
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
    true
}

/// The target's TCP sockets per state as `ss -tanp` shows them (sockets with `pid=PID` among
/// their users), in state names as the tracer spells them. `netns` runs `ss` inside a named
/// network namespace.
pub fn ss_states(pid: u32, netns: Option<&Netns>) -> std::collections::BTreeMap<String, u64> {
    let mut command = match netns {
        Some(ns) => ns.exec(Path::new("ss")),
        None => Command::new("ss"),
    };
    let out = command.arg("-tanpH").output().expect("run ss (iproute2)");
    assert!(
        out.status.success(),
        "ss failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let needle = format!("pid={pid},");
    let mut states = std::collections::BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&needle))
    {
        let state = match line.split_whitespace().next().unwrap_or_default() {
            "ESTAB" => "ESTABLISHED".to_owned(),
            "UNCONN" | "CLOSED" => "CLOSE".to_owned(),
            other => other.replace("WAIT-", "WAIT").replace('-', "_"),
        };
        *states.entry(state).or_insert(0) += 1;
    }
    states
}

/// The target's TCP sockets per state as the kernel's own tables show them: the lines of
/// /proc/PID/net/tcp and tcp6 whose inode is one of the sockets in /proc/PID/fd, with the
/// state numbers of include/net/tcp_states.h in the tracer's spelling. Needs no `ss`
/// (a bare guest has none).
pub fn proc_tcp_states(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let inodes: std::collections::BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| {
            link.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    let mut states = std::collections::BTreeMap::new();
    for table in ["tcp", "tcp6"] {
        // tcp6 is absent when IPv6 is off.
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(state), Some(inode)) = (fields.get(3), fields.get(9)) else {
                continue;
            };
            if !inode.parse().is_ok_and(|i| inodes.contains(&i)) {
                continue;
            }
            let name = match u8::from_str_radix(state, 16) {
                Ok(1) => "ESTABLISHED",
                Ok(2) => "SYN_SENT",
                Ok(3) => "SYN_RECV",
                Ok(4) => "FIN_WAIT1",
                Ok(5) => "FIN_WAIT2",
                Ok(6) => "TIME_WAIT",
                Ok(7) => "CLOSE",
                Ok(8) => "CLOSE_WAIT",
                Ok(9) => "LAST_ACK",
                Ok(10) => "LISTEN",
                Ok(11) => "CLOSING",
                _ => panic!("unknown TCP state {state} in /proc/{pid}/net/{table}: {line}"),
            };
            *states.entry(name.to_owned()).or_insert(0) += 1;
        }
    }
    states
}

/// A network namespace of the test's own, with loopback up; removed on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let netns = Self {
            name: format!("tracer-{tag}-{}", std::process::id()),
        };
        ip(&["netns", "add", &netns.name]);
        ip(&["-n", &netns.name, "link", "set", "lo", "up"]);
        netns
    }

    /// `program` run inside the namespace.
    pub fn exec(&self, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Sets a sysctl of the namespace (net.* sysctls are per namespace).
    pub fn sysctl(&self, name: &str, value: &str) {
        let status = self
            .exec(Path::new("sysctl"))
            .args(["-q", "-w", &format!("{name}={value}")])
            .status()
            .expect("run sysctl");
        assert!(status.success(), "sysctl {name}={value} in {}", self.name);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .expect("run ip (iproute2)");
    assert!(status.success(), "ip {args:?} failed");
}

/// Two network namespaces joined by a veth pair: a small network of the test's own, with
/// [`VethPair::A_ADDR`] on side `a` and [`VethPair::B_ADDR`] on side `b`.
pub struct VethPair {
    pub a: Netns,
    pub b: Netns,
}

impl VethPair {
    pub const A_ADDR: &str = "192.0.2.1";
    pub const B_ADDR: &str = "192.0.2.2";

    #[expect(
        clippy::new_without_default,
        reason = "it creates namespaces: not a default value"
    )]
    pub fn new() -> Self {
        let pair = Self {
            a: Netns::new("a"),
            b: Netns::new("b"),
        };
        let id = std::process::id();
        let (va, vb) = (format!("tra{id}"), format!("trb{id}"));
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        for (ns, dev, addr) in [(&pair.a, &va, Self::A_ADDR), (&pair.b, &vb, Self::B_ADDR)] {
            ip(&["link", "set", dev, "netns", &ns.name]);
            ip(&[
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                dev,
            ]);
            ip(&["-n", &ns.name, "link", "set", dev, "up"]);
        }
        pair
    }
}

/// A number field of /proc/PID/status (`VmRSS`, `VmHWM` in KiB; `Threads`).
pub fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The threads of `pid` named `comm` (as /proc/PID/task/TID/comm shows it): tid and directory.
pub fn tasks_named(pid: u32, comm: &str) -> Vec<(u32, PathBuf)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("/proc/PID/task")
        .filter_map(Result::ok)
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == comm)
        })
        .filter_map(|t| Some((t.file_name().to_str()?.parse().ok()?, t.path())))
        .collect()
}

/// Sends `signal` to `pid` (SIGSTOP a tracer to make its rings overflow, SIGCONT it after).
pub fn signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid");
    // SAFETY: kill(2) on a process of the test's own.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill {pid}");
}

/// Resident memory of a process in KiB, from /proc/PID/status.
pub fn rss_kib(pid: u32) -> u64 {
    proc_status(pid, "VmRSS")
}

/// Sets a sysctl for the life of the guard, restoring the old value on drop.
pub struct Sysctl {
    path: PathBuf,
    old: String,
}

impl Sysctl {
    pub fn set(name: &str, value: &str) -> Self {
        let path = Path::new("/proc/sys").join(name.replace('.', "/"));
        let old = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        std::fs::write(&path, value).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        Self { path, old }
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.path, self.old.trim());
    }
}

/// Number of loaded BPF programs whose name starts with `prefix` (from `bpftool`).
pub fn loaded_programs(prefix: &str) -> usize {
    let out = Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .expect("run bpftool (cargo xtask setup installs it)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| {
            line.split_whitespace()
                .skip_while(|w| *w != "name")
                .nth(1)
                .is_some_and(|n| n.starts_with(prefix))
        })
        .count()
}

/// The ids of the BPF programs `pid` holds (through program or link fds), each once, sorted:
/// from the `prog_id` lines of its /proc/PID/fdinfo.
pub fn program_ids(pid: u32) -> Vec<u64> {
    let dir = format!("/proc/{pid}/fdinfo");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}"));
    let mut ids: Vec<u64> = entries
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
        .flat_map(|info| {
            info.lines()
                .filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse().ok())
                .collect::<Vec<u64>>()
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The names of the BPF programs `pid` holds ([`program_ids`]), sorted, from `bpftool`.
pub fn programs_held(pid: u32) -> Vec<String> {
    let ids = program_ids(pid);
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .expect("run bpftool (cargo xtask setup installs it)");
    let programs: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("bpftool's JSON");
    let mut names: Vec<String> = programs
        .iter()
        .filter(|p| p["id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// The children of `pid` (its main thread's), from /proc.
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect()
}

/// The ids of `pid`'s threads in its own pid namespace (the last field of `NSpid`), as the
/// namespace's /proc/PID/task lists them, by host thread id.
pub fn namespace_tids(pid: u32) -> std::collections::BTreeMap<u32, u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("read task dir")
        .filter_map(|entry| {
            let host: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let status = std::fs::read_to_string(format!("/proc/{pid}/task/{host}/status")).ok()?;
            let nspid = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
            Some((nspid.split_whitespace().last()?.parse().ok()?, host))
        })
        .collect()
}

/// A child process whose stdout lines are read on a thread, with its stdin for commands.
pub struct Process {
    pub child: Child,
    pub pid: u32,
    stdin: Option<ChildStdin>,
    lines: Receiver<(Instant, String)>,
}

impl Process {
    pub fn spawn(command: &mut Command) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Self {
            pid: child.id(),
            stdin: child.stdin.take(),
            child,
            lines,
        }
    }

    /// Sends one line on stdin.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to child stdin");
        stdin.flush().expect("flush child stdin");
    }

    /// The next stdout line, or `None` at EOF; panics after `timeout`.
    pub fn next_line(&self, timeout: Duration) -> Option<(Instant, String)> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                panic!("no output from pid {} within {timeout:?}", self.pid)
            }
        }
    }

    /// The next stdout line if one is waiting.
    pub fn try_line(&self) -> Option<(Instant, String)> {
        self.lines.try_recv().ok()
    }

    /// Skips lines until one starts with `prefix`; returns it.
    pub fn expect_line(&self, prefix: &str, timeout: Duration) -> (Instant, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_line(left) {
                Some((at, line)) if line.starts_with(prefix) => return (at, line),
                Some(_) => {}
                None => panic!("pid {} ended before printing {prefix:?}", self.pid),
            }
        }
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "pid {} still running after {timeout:?}",
                self.pid
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tracer attach --pid PID --json ARGS...`, its NDJSON parsed line by line.
pub struct Tracer {
    pub process: Process,
    /// Every event read so far, in order.
    history: std::cell::RefCell<Vec<Event>>,
}

/// One event from the tracer, with the time the test read it.
#[derive(Clone, Debug)]
pub struct Event {
    pub at: Instant,
    pub json: Value,
}

impl Event {
    pub fn kind(&self) -> &str {
        self.json["type"].as_str().unwrap_or_default()
    }

    /// The non-zero `states` of a `sockets` event, as [`ss_states`] gives them.
    pub fn states(&self) -> std::collections::BTreeMap<String, u64> {
        self.json["states"]
            .as_object()
            .unwrap_or_else(|| panic!("no states in {}", self.json))
            .iter()
            .filter_map(|(state, n)| Some((state.clone(), n.as_u64()?)).filter(|(_, n)| *n > 0))
            .collect()
    }

    /// The group named `name` of a `threads` event.
    pub fn group(&self, name: &str) -> Option<&Value> {
        self.json["groups"]
            .as_array()
            .unwrap_or_else(|| panic!("no groups in {}", self.json))
            .iter()
            .find(|g| g["name"] == name)
    }

    pub fn u64(&self, field: &str) -> u64 {
        self.json[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{field} is not a number in {}", self.json))
    }
}

impl Tracer {
    pub fn attach(pid: u32, args: &[&str]) -> Self {
        Self::attach_within(pid, args, Duration::from_secs(30))
    }

    /// [`Tracer::attach`], waiting up to `timeout` for `target_attached` (an emulated guest
    /// takes longer to verify the programs).
    pub fn attach_within(pid: u32, args: &[&str], timeout: Duration) -> Self {
        let mut command = Command::new(tracer_bin());
        command
            .args(["attach", "--pid", &pid.to_string(), "--json"])
            .args(args);
        Self::spawn(&mut command, timeout)
    }

    /// A tracer started by `command` (which writes nothing else to stdout), once attached
    /// (within `timeout`).
    pub fn spawn(command: &mut Command, timeout: Duration) -> Self {
        let tracer = Self {
            process: Process::spawn(command),
            history: std::cell::RefCell::default(),
        };
        tracer.expect("target_attached", timeout);
        tracer
    }

    /// The next event; `None` when the tracer has exited.
    pub fn next(&self, timeout: Duration) -> Option<Event> {
        self.process.next_line(timeout).map(|line| self.parse(line))
    }

    /// The next event if one is waiting.
    pub fn try_next(&self) -> Option<Event> {
        self.process.try_line().map(|line| self.parse(line))
    }

    /// Every event of type `kind` read so far.
    pub fn seen(&self, kind: &str) -> Vec<Event> {
        self.history
            .borrow()
            .iter()
            .filter(|e| e.kind() == kind)
            .cloned()
            .collect()
    }

    fn parse(&self, (at, line): (Instant, String)) -> Event {
        let event = Event {
            at,
            json: serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")),
        };
        self.history.borrow_mut().push(event.clone());
        event
    }

    /// Skips events until one of type `kind`.
    pub fn expect(&self, kind: &str, timeout: Duration) -> Event {
        let deadline = Instant::now() + timeout;
        loop {
            let event = self
                .next(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|| panic!("tracer exited before a {kind} event"));
            if event.kind() == kind {
                return event;
            }
        }
    }

    /// Skips events until one of type `kind` (`alert`, `alert_resolved`) about `what`
    /// (`fd_exhaustion`, ...).
    pub fn expect_kind(&self, kind: &str, what: &str, timeout: Duration) -> Event {
        loop {
            let event = self.expect(kind, timeout);
            if event.json["kind"] == what {
                return event;
            }
        }
    }

    /// The first `vma` event read after `after`.
    pub fn vma_after(&self, after: Instant) -> Event {
        self.after("vma", after)
    }

    /// The first event of type `kind` read after `after`, within 30 s.
    pub fn after(&self, kind: &str, after: Instant) -> Event {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {kind} event within 30 s");
            let event = self
                .next(left)
                .unwrap_or_else(|| panic!("tracer exited before a {kind} event"));
            if event.kind() == kind && event.at > after {
                return event;
            }
        }
    }

    /// Connects a client to `port` every 500 ms (kept open) until a `stall` alert arrives,
    /// within 40 s; returns it and the clients.
    pub fn clients_until_stall(&self, port: u16) -> (Event, Vec<std::net::TcpStream>) {
        let started = Instant::now();
        let mut clients = Vec::new();
        loop {
            clients.push(std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"));
            thread::sleep(Duration::from_millis(500));
            let mut found = None;
            while let Some(event) = self.try_next() {
                if event.kind() == "alert" && event.json["kind"] == "stall" {
                    found = Some(event);
                }
            }
            if let Some(alert) = found {
                return (alert, clients);
            }
            assert!(
                started.elapsed() < Duration::from_secs(40),
                "no stall alert within 40 s"
            );
        }
    }

    /// The `states` of the first `sockets` event after `after`, without zeros, as
    /// [`ss_states`] gives them.
    pub fn states_after(&self, after: Instant) -> std::collections::BTreeMap<String, u64> {
        self.after("sockets", after).states()
    }
}
