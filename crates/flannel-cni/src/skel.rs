//! The plugin side of the CNI protocol: dispatch of one invocation to the command handlers,
//! the VERSION answer, and printing a result or an error (what Go's `pkg/skel` does for
//! upstream).
//!
//! Hand-written on `std` rather than taken from a crate: the only Rust skel (rscni-plugin)
//! does not accept CNI 0.1.0/0.2.0, which upstream supports. With [`crate::request`] (reading
//! and validating the invocation) it is about 490 lines plus tests, with no dependency beyond
//! serde_json. Its checks and messages follow libcni 1.3 so runtimes and operators see
//! what they see with upstream, with spec error codes instead of libcni's catch-all where the
//! spec has one.
//!
//! The skel knows nothing about what the commands do: like libcni's `PluginMainFuncs`, it is
//! given a [`PluginFuncs`] of handlers, and answers VERSION itself.

use std::io::{Read, Write};

use crate::error::{CniError, INVALID_NETNS};
use crate::request::{CURRENT_VERSION, Command, Request, SUPPORTED_VERSIONS, parse_request};

/// The command handlers a plugin gives [`main_with`] (libcni's `CNIFuncs`).
///
/// Each gets the validated [`Request`]; ADD returns the result to print, the others print
/// nothing on success.
#[derive(Debug, Clone, Copy)]
pub struct PluginFuncs {
    /// ADD: attach the container, return its result.
    pub add: fn(&Request) -> Result<Vec<u8>, CniError>,
    /// DEL: detach the container; nothing to detach is success.
    pub del: fn(&Request) -> Result<(), CniError>,
    /// CHECK (0.4.0+): verify the attachment.
    pub check: fn(&Request) -> Result<(), CniError>,
    /// GC (1.1.0+): remove state of attachments the runtime no longer knows.
    pub gc: fn(&Request) -> Result<(), CniError>,
    /// STATUS (1.1.0+): whether an ADD could succeed now.
    pub status: fn(&Request) -> Result<(), CniError>,
}

/// Refuses a `CNI_NETNS` that is the plugin's own network namespace (libcni's `CheckNetNS`,
/// skipped with `CNI_NETNS_OVERRIDE`): wiring "the container" would rewire the host.
/// A path that cannot be read is not refused (DEL after the namespace is gone).
pub fn check_netns_is_not_ours(netns: &str, override_var: Option<String>) -> Result<(), CniError> {
    use std::os::unix::fs::MetadataExt;
    let overridden = override_var.is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    if netns.is_empty() || overridden {
        return Ok(());
    }
    // Theirs first: when it is gone there is no need to look up our own.
    let Ok(theirs) = std::fs::metadata(netns) else {
        return Ok(());
    };
    let Ok(ours) = std::fs::metadata("/proc/thread-self/ns/net") else {
        return Ok(());
    };
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        return Err(CniError::new(
            INVALID_NETNS,
            "plugin's netns and netns from CNI_NETNS should not be the same",
        ));
    }
    Ok(())
}

/// The VERSION answer, byte-equal to libcni's (including the trailing newline). The only place
/// VERSION is answered.
pub fn version_json() -> String {
    let list: Vec<String> = SUPPORTED_VERSIONS
        .iter()
        .map(|v| format!("\"{v}\""))
        .collect();
    format!(
        "{{\"cniVersion\":\"{CURRENT_VERSION}\",\"supportedVersions\":[{}]}}\n",
        list.join(",")
    )
}

/// What is printed on stderr when the plugin is run without `CNI_COMMAND` (by a human).
pub fn about() -> String {
    format!(
        "CNI Plugin flannel version v{} (flannel-rs, {}/{})\nCNI protocol versions supported: {}",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH,
        SUPPORTED_VERSIONS.join(", ")
    )
}

/// Runs the handler of `req`'s command; returns what to print on stdout.
fn dispatch(
    funcs: &PluginFuncs,
    req: &Request,
    getenv: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<u8>, CniError> {
    let netns_is_not_ours = || check_netns_is_not_ours(&req.netns, getenv("CNI_NETNS_OVERRIDE"));
    match req.command {
        Command::Version => Ok(version_json().into_bytes()),
        Command::Add => netns_is_not_ours().and_then(|()| (funcs.add)(req)),
        Command::Del => netns_is_not_ours().and_then(|()| (funcs.del)(req).map(|()| Vec::new())),
        Command::Check => (funcs.check)(req).map(|()| Vec::new()),
        Command::Gc => (funcs.gc)(req).map(|()| Vec::new()),
        Command::Status => (funcs.status)(req).map(|()| Vec::new()),
    }
}

/// Runs one invocation end to end with `funcs` and returns the exit code: 0 with the result
/// (if any) on `stdout`, 1 with an error object on `stdout`.
pub fn main_with(
    funcs: &PluginFuncs,
    getenv: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    let req = match parse_request(getenv, stdin) {
        Ok(r) => r,
        Err(e) => {
            if getenv("CNI_COMMAND").unwrap_or_default().is_empty() {
                let _ = stderr.write_all(format!("{}\n", about()).as_bytes());
            }
            return fail(stdout, stderr, &e, CURRENT_VERSION);
        }
    };
    match dispatch(funcs, &req, getenv) {
        Ok(out) => {
            if stdout
                .write_all(&out)
                .and_then(|()| stdout.flush())
                .is_err()
            {
                return 1;
            }
            0
        }
        Err(e) => fail(stdout, stderr, &e, &req.cni_version),
    }
}

/// Logs `e` on stderr and prints its error object on stdout (each in one write); returns the
/// exit code 1.
fn fail(stdout: &mut dyn Write, stderr: &mut dyn Write, e: &CniError, version: &str) -> i32 {
    let _ = stderr.write_all(format!("flannel: error {}: {e}\n", e.code).as_bytes());
    let _ = stdout.write_all(format!("{}\n", e.to_json(version)).as_bytes());
    let _ = stdout.flush();
    1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    thread_local! {
        static CALLS: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
    }

    fn record(name: &'static str) {
        CALLS.with(|c| c.borrow_mut().push(name));
    }

    /// Handlers that record their name; DEL fails with a delegate-style error.
    const FAKE: PluginFuncs = PluginFuncs {
        add: |_| {
            record("add");
            Ok(b"{\"cniVersion\":\"1.1.0\"}".to_vec())
        },
        del: |_| {
            record("del");
            Err(CniError::with_details(11, "busy", "later"))
        },
        check: |_| {
            record("check");
            Ok(())
        },
        gc: |_| {
            record("gc");
            Ok(())
        },
        status: |_| {
            record("status");
            Ok(())
        },
    };

    /// Runs `main_with(FAKE)`; returns (exit code, stdout, stderr, handlers called).
    fn run(env: &[(&str, &str)], stdin: &str) -> (i32, String, String, Vec<&'static str>) {
        let map: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CALLS.with(|c| c.borrow_mut().clear());
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = main_with(
            &FAKE,
            &|k| map.get(k).cloned(),
            &mut stdin.as_bytes(),
            &mut out,
            &mut err,
        );
        let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
        let calls = CALLS.with(|c| c.borrow().clone());
        (code, text(out), text(err), calls)
    }

    const CONF: &str = r#"{"cniVersion":"1.1.0","name":"cbr0","type":"flannel"}"#;

    fn env(command: &str) -> Vec<(&str, &str)> {
        vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/nonexistent/netns"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ]
    }

    #[test]
    fn each_command_reaches_its_handler() {
        let (code, out, _, calls) = run(&env("ADD"), CONF);
        assert_eq!((code, out.as_str()), (0, "{\"cniVersion\":\"1.1.0\"}"));
        assert_eq!(calls, ["add"]);
        for (command, handler) in [("CHECK", "check"), ("GC", "gc"), ("STATUS", "status")] {
            let (code, out, _, calls) = run(&env(command), CONF);
            assert_eq!((code, out.as_str()), (0, ""), "{command}");
            assert_eq!(calls, [handler]);
        }
        // A handler's error is printed with the config's version and logged.
        let (code, out, err, calls) = run(&env("DEL"), CONF);
        assert_eq!(calls, ["del"]);
        assert_eq!(code, 1);
        assert_eq!(
            out,
            "{\"cniVersion\":\"1.1.0\",\"code\":11,\"msg\":\"busy\",\"details\":\"later\"}\n"
        );
        assert_eq!(err, "flannel: error 11: busy; later\n");
    }

    #[test]
    fn version_is_answered_by_the_skel_alone() {
        assert_eq!(
            version_json(),
            "{\"cniVersion\":\"1.1.0\",\"supportedVersions\":[\"0.1.0\",\"0.2.0\",\"0.3.0\",\"0.3.1\",\"0.4.0\",\"1.0.0\",\"1.1.0\"]}\n"
        );
        let (code, out, _, calls) = run(&[("CNI_COMMAND", "VERSION")], "ignored");
        assert_eq!((code, out), (0, version_json()));
        assert!(calls.is_empty());
    }

    #[test]
    fn no_command_prints_about_and_an_error() {
        let (code, out, err, calls) = run(&[], "");
        assert_eq!(code, 1);
        assert_eq!(
            out,
            "{\"cniVersion\":\"1.1.0\",\"code\":4,\"msg\":\"required env variables [CNI_COMMAND] missing\"}\n"
        );
        assert!(err.starts_with("CNI Plugin flannel version v"), "{err}");
        assert!(calls.is_empty());
    }

    #[test]
    fn own_netns_is_refused_before_add_and_del() {
        let e = check_netns_is_not_ours("/proc/self/ns/net", None).unwrap_err();
        assert_eq!(e.code, INVALID_NETNS);
        assert!(check_netns_is_not_ours("/proc/self/ns/net", Some("true".into())).is_ok());
        assert!(check_netns_is_not_ours("/nonexistent", None).is_ok());
        assert!(check_netns_is_not_ours("", None).is_ok());
        for command in ["ADD", "DEL"] {
            let mut e = env(command);
            e.retain(|(k, _)| *k != "CNI_NETNS");
            e.push(("CNI_NETNS", "/proc/self/ns/net"));
            let (code, out, _, calls) = run(&e, CONF);
            assert_eq!(code, 1);
            assert!(out.contains("\"code\":8"), "{out}");
            assert!(calls.is_empty(), "{command}: {calls:?}");
        }
    }
}
