//! Processes in namespaces: they really run inside, their output lands in the log, and they are
//! stopped (TERM, then KILL) and reaped.

use std::process::Command;
use std::time::{Duration, Instant};

use flannel_lab::{Lab, LabError, Signal, pid_alive, run_in, run_ok, wait_until};

#[test]
fn spawned_process_runs_inside_logs_and_stops() -> anyhow::Result<()> {
    let lab = Lab::builder().nodes(1).build()?;
    let ns = lab.node(0).netns();

    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "echo hello from $LAB_GREETING; ip -o -4 addr show dev eth0; exec sleep 300",
    ])
    .env("LAB_GREETING", "the-node");
    let mut child = lab.spawn_in(ns, cmd)?;
    wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
        child.log().contains("198.18.0.1/24")
    })
    .map_err(|e| anyhow::anyhow!("{e}; log: {}", child.log()))?;
    assert!(child.log().contains("hello from the-node"));
    assert!(
        !child.log().contains("LAB_GREETING"),
        "log() must hold only the output"
    );
    assert!(
        child.log_tail(50).contains("LAB_GREETING"),
        "the tail names the command"
    );
    assert!(child.log_path().starts_with(lab.dir()));
    assert!(
        ns.pids()?.contains(&child.pid()),
        "process is not in {}",
        ns.name()
    );
    child.ensure_running()?;

    let pid = child.pid();
    let status = child.stop()?;
    assert!(!status.success());
    assert!(!pid_alive(pid));
    assert!(!child.is_running());

    // A process that ignores SIGTERM is killed after the stop timeout.
    let mut stubborn = Command::new("sh");
    stubborn.args([
        "-c",
        "trap '' TERM; echo armed-$((6*7)); while :; do sleep 1; done",
    ]);
    let mut child = lab.spawn_in(ns, stubborn)?;
    child.set_stop_timeout(Duration::from_millis(300));
    wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
        child.log().contains("armed-42")
    })?;
    let t = Instant::now();
    let status = child.stop()?;
    assert!(t.elapsed() < Duration::from_secs(5));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32));

    // An early exit is reported with the log tail.
    let mut failing = Command::new("sh");
    failing.args(["-c", "echo something broke >&2; exit 7"]);
    let mut child = lab.spawn_in(ns, failing)?;
    child.wait_timeout(Duration::from_secs(10))?;
    let err = child.ensure_running().unwrap_err().to_string();
    assert!(
        err.contains("exit status: 7") && err.contains("something broke"),
        "{err}"
    );
    Ok(())
}

#[test]
fn run_helpers_report_failures_and_missing_programs() -> anyhow::Result<()> {
    let ns = flannel_lab::Netns::new("run")?;
    let lo = run_ok(&ns, ["ip", "-o", "link", "show", "lo"])?;
    assert!(lo.contains("LOOPBACK") && lo.contains("UP"), "{lo}");
    let out = run_in(&ns, ["sh", "-c", "exit 4"])?;
    assert_eq!(out.status.code(), Some(4));
    let err = run_ok(&ns, ["ip", "route", "add", "default", "via", "203.0.113.1"]).unwrap_err();
    match &err {
        LabError::CommandFailed {
            command, stderr, ..
        } => {
            assert!(command.contains("ip netns exec"), "{command}");
            assert!(!stderr.is_empty());
        }
        other => panic!("expected CommandFailed, got {other}"),
    }
    let err = run_ok(&ns, ["etcd-not-a-real-program"]).unwrap_err();
    assert!(matches!(err, LabError::MissingBinary { .. }), "{err}");
    let lab_err = {
        let lab = Lab::builder().nodes(1).build()?;
        let r = lab.spawn_in(lab.node(0).netns(), Command::new("no-such-daemon"));
        r.map(|_| ()).unwrap_err()
    };
    assert!(
        matches!(lab_err, LabError::MissingBinary { .. }),
        "{lab_err}"
    );
    // A sysctl outside net.* is refused rather than changing the machine.
    assert!(ns.set_sysctl("kernel.pid_max", "4194304").is_err());
    Ok(())
}
