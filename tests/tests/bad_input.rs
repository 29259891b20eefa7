//! Bad input and unusual machines: each ends in one line on stderr that names the fix, a
//! non-zero exit, and nothing left attached. And what the tracer does not need (tracefs).

use std::{
    process::{Command, Output, Stdio},
    time::Duration,
};

use tracer_tests::{
    Process, TempDir, Tracer, compile_c, programs_unloaded, tracer_as_nobody, tracer_bin,
};

/// Runs `command`, failing the test if it hangs.
fn run(command: &mut Command) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(20));
        // SAFETY: kill on a pid we spawned; harmless if it already exited.
        unsafe { libc::kill(i32::try_from(pid).unwrap(), libc::SIGKILL) };
    });
    let output = child.wait_with_output().expect("wait");
    drop(watchdog);
    output
}

/// Asserts a clean failure: non-zero exit, exactly one line on stderr containing `needle`,
/// and no program left loaded.
fn assert_fails_with(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "expected failure, got {:?}: {stderr}",
        output.status
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line on stderr, got: {stderr}"
    );
    assert!(
        stderr.contains(needle),
        "stderr should mention {needle:?}: {stderr}"
    );
    assert!(
        output.stdout.is_empty(),
        "nothing on stdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(programs_unloaded("tracer_"), "a program was left loaded");
}

/// The arguments of `tracer attach --json --duration SECONDS --pid PID`.
fn attach_args(seconds: &str, pid: u32) -> Vec<String> {
    [
        "attach",
        "--json",
        "--duration",
        seconds,
        "--pid",
        &pid.to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

fn attach(pid: &str) -> Command {
    let mut command = Command::new(tracer_bin());
    command.args(["attach", "--json", "--duration", "3", "--pid", pid]);
    command
}

/// Runs a shell script in a private mount namespace, where mounts can be changed without
/// touching the machine's.
fn in_private_mounts(script: &str) -> Output {
    run(Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", script]))
}

fn sleeper() -> Process {
    Process::spawn(Command::new("sleep").arg("60"))
}

#[test]
fn a_pid_that_does_not_exist() {
    let output = run(&mut attach("4000000"));
    assert_fails_with(&output, "no process with pid 4000000");
    assert!(String::from_utf8_lossy(&output.stderr).contains("pgrep"));
}

#[test]
fn a_pid_given_as_text() {
    let output = run(&mut attach("kafka"));
    assert_eq!(output.status.code(), Some(2), "usage errors exit 2");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("'kafka' is not a process id"), "{stderr}");
    assert!(stderr.contains("pgrep"), "{stderr}");
}

#[test]
fn a_kernel_thread() {
    // kthreadd is pid 2 on every Linux system.
    assert_fails_with(&run(&mut attach("2")), "kernel thread");
}

#[test]
fn a_zombie() {
    // Our own child that exited and that we have not reaped.
    let child = Command::new("true").spawn().expect("spawn true");
    std::thread::sleep(Duration::from_millis(200));
    assert_fails_with(&run(&mut attach(&child.id().to_string())), "zombie");
    let mut child = child;
    child.wait().expect("reap");
}

#[test]
fn without_root() {
    let target = sleeper();
    assert_fails_with(
        &as_nobody("-all", &attach_args("2", target.pid)),
        "run it with sudo",
    );
}

/// `tracer attach` as user nobody with only the capabilities `caps`, on a root process.
fn attach_with_capabilities(caps: &str) -> Output {
    let target = sleeper();
    as_nobody(caps, &attach_args("2", target.pid))
}

/// `tracer ARGS` as user nobody with only the capabilities `caps` (none: "-all").
fn as_nobody(caps: &str, args: &[String]) -> Output {
    run(tracer_as_nobody(caps).args(args))
}

#[test]
fn least_privilege_is_enough() {
    // What the README, the systemd unit and the Kubernetes example grant: no root.
    let output = attach_with_capabilities("+bpf,+perfmon,+sys_ptrace,+dac_read_search");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("\"type\":\"vma\"") && stdout.contains("\"type\":\"sockets\""),
        "{stdout}"
    );
    // Without the two that open another user's /proc, the error names them.
    let output = attach_with_capabilities("+bpf,+perfmon");
    assert_fails_with(&output, "CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH");
}

#[test]
fn a_kernel_without_btf_fails_in_ebpf_mode_and_falls_back_to_proc() {
    // In a private mount namespace, hide /sys/kernel/btf behind an empty tmpfs.
    let target = sleeper();
    let script = |mode: &str| {
        format!(
            "mount -t tmpfs none /sys/kernel/btf && exec {} attach --json --duration 2 {mode} --pid {}",
            tracer_bin().display(),
            target.pid
        )
    };
    assert_fails_with(
        &in_private_mounts(&script("--mode ebpf")),
        "CONFIG_DEBUG_INFO_BTF",
    );
    // The default, auto, says why and watches from /proc.
    let output = in_private_mounts(&script(""));
    let stdout = assert_proc_mode(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("CONFIG_DEBUG_INFO_BTF") && stderr.contains("falling back to proc mode"),
        "{stderr}"
    );
    assert!(stdout.contains("\"type\":\"vma\""), "{stdout}");
}

#[test]
fn probe_flags_are_not_ignored_by_auto_or_proc_mode() {
    // An unreadable --btf is an error in the default mode too, not a quiet proc mode.
    let target = sleeper();
    let mut command = attach(&target.pid.to_string());
    assert_fails_with(
        &run(command.args(["--btf", "/nonexistent/vmlinux"])),
        "reading --btf /nonexistent/vmlinux",
    );
    let mut command = attach(&target.pid.to_string());
    command.args(["--mode", "proc", "--vma-source", "mmap_lock"]);
    assert_fails_with(&run(&mut command), "use --mode ebpf");
}

/// Checks that a run succeeded in proc mode (and says so); returns its stdout.
fn assert_proc_mode(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let attached = stdout.lines().next().unwrap_or_default();
    assert!(
        attached.contains("\"type\":\"target_attached\"") && attached.contains("\"mode\":\"proc\""),
        "{stdout}"
    );
    stdout
}

#[test]
fn proc_mode_needs_no_capability_for_a_process_of_its_own_user() {
    let target = Process::spawn(Command::new("setpriv").args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "sleep",
        "60",
    ]));
    // Until setpriv has exec'd sleep, the process is still root's.
    let comm = format!("/proc/{}/comm", target.pid);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(&comm).is_ok_and(|c| c != "sleep\n") {
        assert!(std::time::Instant::now() < deadline, "sleep never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let args = |mode: &[&str]| {
        let mut args = attach_args("3", target.pid);
        args.extend(mode.iter().map(|&m| m.to_owned()));
        args
    };
    let output = as_nobody("-all", &args(&["--mode", "proc"]));
    let stdout = assert_proc_mode(&output);
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let vma = stdout
        .lines()
        .rfind(|l| l.contains("\"type\":\"vma\""))
        .expect("vma events");
    let count = tracer_tests::maps_count(target.pid).expect("sleep alive");
    assert!(
        vma.contains(&format!("\"map_count\":{count},")),
        "{vma} vs /proc {count}"
    );
    for kind in ["sockets", "threads", "fds", "memory"] {
        assert!(
            stdout.contains(&format!("\"type\":\"{kind}\"")),
            "no {kind}: {stdout}"
        );
    }
    assert!(
        stdout.contains("\"name\":\"sleep\",\"threads\":1"),
        "{stdout}"
    );

    // The default falls back, and says so; --mode ebpf refuses, naming the fix.
    let output = as_nobody("-all", &args(&[]));
    assert_proc_mode(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("run it with sudo") && stderr.contains("falling back to proc mode"),
        "{stderr}"
    );
    assert_fails_with(
        &as_nobody("-all", &args(&["--mode", "ebpf"])),
        "run it with sudo",
    );
}

#[test]
fn proc_mode_on_another_users_process_needs_ptrace_and_dac_read_search() {
    let target = sleeper();
    let mut args = attach_args("2", target.pid);
    args.extend(["--mode".to_owned(), "proc".to_owned()]);
    assert_fails_with(
        &as_nobody("-all", &args),
        "CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH",
    );
    assert_proc_mode(&as_nobody("+sys_ptrace,+dac_read_search", &args));
}

#[test]
fn tracefs_is_not_needed() {
    // Raw tracepoints attach by name: the tracer works with tracefs unmounted, as on a fresh
    // machine.
    let target = sleeper();
    let script = format!(
        "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug 2>/dev/null; \
         grep -q tracefs /proc/self/mounts && exit 99; \
         exec {} attach --json --duration 2 --pid {}",
        tracer_bin().display(),
        target.pid
    );
    let output = in_private_mounts(&script);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout
            .lines()
            .filter(|l| l.contains("\"type\":\"vma\""))
            .count()
            >= 2,
        "{stdout}"
    );
}

#[test]
fn a_thread_id_means_its_process() {
    let dir = TempDir::new("tid");
    let churn = compile_c("churn", dir.path());
    let mut workload = Process::spawn(Command::new(&churn).args(["2", "20"]));
    workload.expect_line("READY", Duration::from_secs(5));
    workload.send("GO");
    std::thread::sleep(Duration::from_millis(300));
    let thread = std::fs::read_dir(format!("/proc/{}/task", workload.pid))
        .expect("task dir")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|&tid| tid != workload.pid)
        .expect("a second thread");
    let tracer = Tracer::attach(thread, &["--duration", "2"]);
    let vma = tracer.expect("vma", Duration::from_secs(5));
    assert_eq!(vma.u64("pid"), u64::from(workload.pid));
}

#[test]
fn duration_ends_attach_cleanly() {
    let target = sleeper();
    let output = run(Command::new(tracer_bin()).args(attach_args("2", target.pid)));
    assert!(output.status.success(), "{:?}", output.status);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let vma_lines = stdout
        .lines()
        .filter(|l| l.contains("\"type\":\"vma\""))
        .count();
    assert!(
        (2..=4).contains(&vma_lines),
        "a vma event per second for 2 s, got {vma_lines}: {stdout}"
    );
    assert!(programs_unloaded("tracer_"));
}
