//! Everything `up` runs, checked before anything is built, with the package that provides it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use flannel_lab::{LabError, bin_dir, package_for, require_binary};

/// The CNI plugins the conflist chains (flannel delegates to bridge + host-local; portmap
/// follows) and the Debian directory that holds them.
const CNI_PLUGINS: &[&str] = &["bridge", "host-local", "portmap", "loopback"];

/// Fails with "run it with sudo" unless root.
pub fn require_root(command: &str) -> anyhow::Result<()> {
    if nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    bail!(
        "flannel-lab {command} needs root: it creates and inspects network namespaces, veth pairs and bridges.\n\
         Run it with sudo (`sudo flannel-lab {command} ...`), or use scripts/lab, which builds as you and then calls sudo."
    )
}

/// The programs `up` needs: fails on the first missing one, naming its Debian package.
pub fn check_programs(nftables: bool, throughput: bool, image: bool) -> anyhow::Result<()> {
    let mut programs = vec!["ip", "setsid", "etcd", "etcdctl", "ping"];
    if image {
        // The containers; the node's runtime runs the CNI plugins with the node's /run.
        programs.extend(["podman", "unshare", "mount"]);
    }
    // flanneld applies its masquerade/forward rules with these.
    programs.push(if nftables { "nft" } else { "iptables-restore" });
    if throughput {
        programs.push("iperf3");
    }
    for p in programs {
        require_binary(p).map_err(hint)?;
    }
    for plugin in CNI_PLUGINS {
        let path = Path::new(flannel_lab::cni::DEBIAN_CNI_DIR).join(plugin);
        if !path.is_file() {
            let pkg = package_for(&path.to_string_lossy()).unwrap_or("containernetworking-plugins");
            bail!(
                "the CNI plugin {} is missing: install the Debian package `{pkg}` (apt-get install {pkg}); \
                 scripts/setup installs everything the lab needs",
                path.display()
            );
        }
    }
    Ok(())
}

fn hint(e: LabError) -> anyhow::Error {
    anyhow::Error::new(e).context(
        "a program the lab runs is missing (scripts/setup installs everything the lab needs)",
    )
}

/// Where `flanneld` and the `flannel` CNI plugin are: [`bin_dir`] (`FLANNEL_RS_BIN_DIR`, or the
/// directory of this executable).
///
/// `cargo run -p flannel-lab` builds only this package, so when started by cargo (which sets
/// `CARGO`) without `FLANNEL_RS_BIN_DIR`, the two companions are built first, with the same
/// cargo, profile and target directory; `on_build` is called before that build starts (a
/// progress line). Elsewhere they must already be there (scripts/lab builds them).
pub fn workspace_bins(on_build: impl FnOnce()) -> anyhow::Result<PathBuf> {
    if std::env::var_os("FLANNEL_RS_BIN_DIR").is_none()
        && let Some(cargo) = std::env::var_os("CARGO")
    {
        let exe = std::env::current_exe().context("locating the flannel-lab executable")?;
        if let Some(dir) = exe.parent()
            && let Some(target) = dir.parent()
            && let Some(profile) = dir.file_name().and_then(|n| n.to_str())
        {
            on_build();
            let profile = if profile == "debug" { "dev" } else { profile };
            let out = Command::new(&cargo)
                .args([
                    "build",
                    "--quiet",
                    "--bins",
                    "-p",
                    "flanneld",
                    "-p",
                    "flannel-cni",
                    "-p",
                    "flannel-kube-emu",
                    "-p",
                    "flannel-netpol",
                ])
                .args(["--profile", profile])
                .env("CARGO_TARGET_DIR", target)
                .output()
                .with_context(|| format!("running {}", Path::new(&cargo).display()))?;
            if !out.status.success() {
                bail!(
                    "building flanneld and the flannel CNI plugin failed ({}):\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim_end()
                );
            }
        }
    }
    bin_dir().map_err(|e| {
        anyhow::anyhow!(
            "{e}\nFrom a clone, `scripts/lab up` builds everything and starts the lab; \
             or `cargo build --release --workspace --bins` first."
        )
    })
}
