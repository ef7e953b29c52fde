//! Real `kubectl` against a lab in Kubernetes mode.
//!
//! The API emulator listens on the underlay gateway, inside the underlay namespace, so kubectl
//! runs there (`ip netns exec <underlay> kubectl ...`) with the administrator's kubeconfig that
//! [`crate::kube::start_cluster`] writes into the lab directory, and its discovery cache in the
//! lab directory too (`KUBECACHEDIR`), so nothing lands in `~/.kube` and a lab that restarts on
//! the same port never reads another lab's cache. `flannel-lab kubectl -- ARGS` is this command.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{LabError, Result};
use crate::host::require_binary;
use crate::kube_auth::ApiCredentials;

/// The kubectl binary, from `PATH` (scripts/setup installs v1.34).
pub const KUBECTL_BIN: &str = "kubectl";

/// The administrator's kubeconfig in the lab directory, named after kubeadm's
/// `/etc/kubernetes/admin.conf`.
pub const ADMIN_KUBECONFIG: &str = "admin.conf";

/// kubectl's discovery and HTTP cache in the lab directory.
pub const CACHE_DIR: &str = "kube-cache";

/// A kubeconfig for `server` named as kubeadm names admin.conf's cluster (`kubernetes`), user
/// (`kubernetes-admin`) and context (`kubernetes-admin@kubernetes`). With `creds` (a
/// production-like lab) it trusts the lab's CA and carries the administrator's token; without,
/// it carries no credentials, as the plain emulator has no authentication.
pub fn admin_kubeconfig(server: &str, creds: Option<&ApiCredentials>) -> String {
    let (ca, user) = match creds {
        Some(c) => (
            format!("    certificate-authority: {}\n", c.ca_file().display()),
            format!("\n    token: {}", c.admin_token()),
        ),
        None => (String::new(), " {}".to_string()),
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kubernetes\n  cluster:\n    server: {server}\n{ca}contexts:\n- name: kubernetes-admin@kubernetes\n  context:\n    cluster: kubernetes\n    user: kubernetes-admin\ncurrent-context: kubernetes-admin@kubernetes\npreferences: {{}}\nusers:\n- name: kubernetes-admin\n  user:{user}\n"
    )
}

/// Where the administrator's kubeconfig of the lab in `lab_dir` is.
pub fn kubeconfig_path(lab_dir: &Path) -> PathBuf {
    lab_dir.join(ADMIN_KUBECONFIG)
}

/// Writes the administrator's kubeconfig for `server` into `lab_dir` and returns its path.
pub fn write_admin_kubeconfig(
    lab_dir: &Path,
    server: &str,
    creds: Option<&ApiCredentials>,
) -> Result<PathBuf> {
    let path = kubeconfig_path(lab_dir);
    std::fs::write(&path, admin_kubeconfig(server, creds))
        .map_err(|e| LabError::io(format!("writing {}", path.display()), e))?;
    Ok(path)
}

/// `kubectl ARGS` for the lab in `lab_dir`, run in the namespace `netns` (the underlay's, which
/// reaches the emulator), with `KUBECONFIG` and `KUBECACHEDIR` set to the lab's files. The
/// caller runs it (and passes its output and exit status on).
pub fn command<I, S>(netns: &str, lab_dir: &Path, args: I) -> Result<Command>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let kubectl = require_binary(KUBECTL_BIN).map_err(|_| {
        LabError::Invalid(format!(
            "`{KUBECTL_BIN}` was not found in PATH: scripts/setup installs kubectl v1.34"
        ))
    })?;
    let ip = require_binary("ip")?;
    let mut cmd = Command::new(ip);
    cmd.args(["netns", "exec", netns])
        .arg(kubectl)
        .args(args)
        .env("KUBECONFIG", kubeconfig_path(lab_dir))
        .env("KUBECACHEDIR", lab_dir.join(CACHE_DIR));
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_kubeconfig_names_like_kubeadm() {
        let k = admin_kubeconfig("http://198.18.0.254:40000", None);
        assert!(k.contains("    server: http://198.18.0.254:40000\n"), "{k}");
        assert!(
            k.contains("current-context: kubernetes-admin@kubernetes\n"),
            "{k}"
        );
        assert!(k.contains("- name: kubernetes-admin\n  user: {}\n"), "{k}");
    }
}
