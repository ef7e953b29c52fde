//! Cleanup guarantees: a panicking test leaves nothing behind, and leftovers of a SIGKILLed run
//! are reaped by the next lab.

use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use flannel_lab::{Lab, Netns, netns_exists, pid_alive, reap_stale};

#[test]
fn panic_inside_a_test_still_cleans_up() -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<(Vec<String>, u32, std::path::PathBuf)>();
    let handle = std::thread::spawn(move || {
        let lab = Lab::builder().nodes(2).build().expect("lab builds");
        let mut sleep = Command::new("sleep");
        sleep.arg("300");
        let child = lab
            .spawn_in(lab.node(1).netns(), sleep)
            .expect("sleep starts");
        tx.send((lab.netns_names(), child.pid(), lab.dir().to_path_buf()))
            .expect("receiver alive");
        panic!("deliberate panic with a lab and a process alive");
    });
    let joined = handle.join();
    assert!(joined.is_err(), "the thread was supposed to panic");
    let (names, pid, dir) = rx.recv_timeout(Duration::from_secs(5))?;
    assert_eq!(names.len(), 3);
    for n in &names {
        assert!(!netns_exists(n), "{n} survived the panic");
    }
    assert!(!pid_alive(pid), "process {pid} survived the panic");
    assert!(!dir.exists(), "{} survived the panic", dir.display());
    Ok(())
}

/// Finds a pid that no process has: one of a child we already reaped.
fn dead_pid() -> anyhow::Result<u32> {
    for _ in 0..20 {
        let mut c = Command::new("true").spawn()?;
        let pid = c.id();
        c.wait()?;
        if !pid_alive(pid) {
            return Ok(pid);
        }
    }
    anyhow::bail!("could not find a free pid")
}

#[test]
fn stale_namespaces_of_dead_runs_are_reaped_by_the_next_lab() -> anyhow::Result<()> {
    let ip = flannel_lab::require_binary("ip")?;
    let pid = dead_pid()?;
    // What a SIGKILLed run leaves: a namespace with our naming scheme and a process inside.
    let stale = format!("flab-{pid}-0-n1");
    let status = Command::new(&ip).args(["netns", "add", &stale]).status()?;
    assert!(status.success());
    let mut squatter = Command::new(&ip)
        .args(["netns", "exec", &stale, "sleep", "300"])
        .spawn()?;
    let stale_tmp =
        std::env::temp_dir().join(format!("{}{pid}-0-lab-XXXXXX", flannel_lab::TEMP_PREFIX));
    std::fs::create_dir_all(stale_tmp.join("n1"))?;

    // A namespace of a live process (ours) must survive the reaper.
    let live = Netns::new("keep")?;
    // And names outside the scheme are never touched.
    let foreign = format!("flabx-{pid}-0-n1");
    assert!(
        Command::new(&ip)
            .args(["netns", "add", &foreign])
            .status()?
            .success()
    );

    let lab = Lab::builder().nodes(1).build()?;
    let gone = !netns_exists(&stale);
    let squatter_status = squatter.wait_timeout_bounded();
    let foreign_kept = netns_exists(&foreign);
    let _ = Command::new(&ip).args(["netns", "del", &foreign]).status();

    assert!(gone, "stale namespace {stale} was not reaped");
    assert!(
        squatter_status.is_some(),
        "process inside the stale namespace was not killed"
    );
    assert!(
        !stale_tmp.exists(),
        "stale temp dir {} was not reaped",
        stale_tmp.display()
    );
    assert!(
        netns_exists(live.name()),
        "a live process's namespace was reaped"
    );
    assert!(
        foreign_kept,
        "a namespace outside the naming scheme was touched"
    );
    // Nothing stale left now; running the reaper again finds nothing of ours to do.
    assert!(!reap_stale()?.contains(&stale));
    drop(lab);
    Ok(())
}

trait WaitBounded {
    fn wait_timeout_bounded(&mut self) -> Option<std::process::ExitStatus>;
}

impl WaitBounded for std::process::Child {
    fn wait_timeout_bounded(&mut self) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match self.try_wait() {
                Ok(Some(s)) => return Some(s),
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.kill();
                    let _ = self.wait();
                    return None;
                }
            }
        }
    }
}
