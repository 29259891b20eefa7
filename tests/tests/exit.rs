//! The target's death, told with what the kernel saw: an exit code, a signal, and every alert
//! still active resolved first; `tracer agent` raises `target_died`.

use std::{process::Command, time::Duration};

use tracer_tests::{Process, Tracer, free_port, tracer_bin};

/// A process that lives a moment, then ends with `script`.
fn short_lived(script: &str) -> Process {
    Process::spawn(Command::new("sh").args(["-c", &format!("sleep 2; {script}")]))
}

#[test]
fn an_exit_code_is_told_at_target_exit() {
    let target = short_lived("exit 3");
    let tracer = Tracer::attach(target.pid, &[]);
    let exit = tracer.expect("target_exit", Duration::from_secs(20));
    assert_eq!(exit.json["exit_code"], 3, "{}", exit.json);
    assert!(exit.json["signal"].is_null(), "{}", exit.json);
    assert_eq!(exit.json["oom_killed"], false, "{}", exit.json);
    assert_eq!(exit.json["reason"], "exit code 3", "{}", exit.json);
}

#[test]
fn a_kill_signal_is_told_and_active_alerts_are_resolved() {
    let target = short_lived("sleep 100");
    // The shell's child: the sleep that will be killed.
    let mut killer = Process::spawn(
        Command::new("sh").args(["-c", &format!("sleep 3; kill -KILL {}", target.pid)]),
    );
    // An alert that is active when it dies: a what-if limit below its VMA count.
    let tracer = Tracer::attach(target.pid, &["--max-map-count", "20"]);
    let exit = tracer.expect("target_exit", Duration::from_secs(20));
    killer.wait(Duration::from_secs(5));
    assert!(exit.json["exit_code"].is_null(), "{}", exit.json);
    assert_eq!(exit.json["signal"], "SIGKILL", "{}", exit.json);
    assert_eq!(
        exit.json["reason"]
            .as_str()
            .map(|r| r.starts_with("killed by SIGKILL")),
        Some(true),
        "{}",
        exit.json
    );
    let raised = tracer.seen("alert");
    assert!(
        raised.iter().any(|a| a.json["kind"] == "vma_exhaustion"),
        "no alert to resolve"
    );
    for alert in raised {
        assert!(
            tracer
                .seen("alert_resolved")
                .iter()
                .any(|r| r.json["kind"] == alert.json["kind"]
                    && r.json["severity"] == alert.json["severity"]),
            "{} was not resolved",
            alert.json
        );
    }
}

#[test]
fn the_agent_raises_target_died() {
    let target = short_lived("exit 1");
    let port = free_port();
    let mut agent = Process::spawn(Command::new(tracer_bin()).args([
        "agent",
        "--pid",
        &target.pid.to_string(),
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--duration",
        "8s",
    ]));
    let died = loop {
        let (_, line) = agent
            .next_line(Duration::from_secs(20))
            .expect("the agent ended without target_died");
        let event: serde_json::Value = serde_json::from_str(&line).expect("NDJSON");
        if event["type"] == "alert" && event["kind"] == "target_died" {
            break event;
        }
    };
    assert_eq!(died["severity"], "critical", "{died}");
    assert!(
        died["message"]
            .as_str()
            .is_some_and(|m| m.ends_with("died: exit code 1")),
        "{died}"
    );
    assert_eq!(died["exit_code"], 1, "{died}");
    agent.wait(Duration::from_secs(15));
}
