//! `apply -f`, `delete -f`, `probe` and `netpol-matrix`: the NetworkPolicy lab's commands.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use flannel_lab::netpol_matrix::DEFAULT_PARALLEL;
use flannel_lab::probe::{PortProto, Proto};

use crate::{bins, load, out};

#[derive(Debug, Args)]
pub struct FileArgs {
    /// Multi-document YAML of Namespaces (v1) and NetworkPolicies (networking.k8s.io/v1); `-`
    /// reads stdin
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    file: PathBuf,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The pod probing, as NAMESPACE/NAME
    #[arg(value_name = "NS/FROM")]
    from: String,

    /// The pod probed, as NAMESPACE/NAME (its first address)
    #[arg(value_name = "NS/TO")]
    to: String,

    /// Port and protocol, e.g. 80/TCP or 81/udp
    #[arg(value_name = "PORT/PROTO")]
    target: PortProto,

    /// Seconds to wait for the connection or the answer
    #[arg(long, default_value_t = 1.0, value_name = "S", value_parser = parse_secs)]
    timeout: f64,
}

#[derive(Debug, Args)]
pub struct MatrixArgs {
    /// Seconds each probe waits
    #[arg(long, default_value_t = 1.0, value_name = "S", value_parser = parse_secs)]
    timeout: f64,

    /// Probes run at once
    #[arg(long, default_value_t = DEFAULT_PARALLEL, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    parallel: u16,
}

/// A timeout in seconds: positive, at most an hour.
fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 3600.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds in (0, 3600]")),
    }
}

fn read_file(file: &Path) -> anyhow::Result<String> {
    if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading stdin")?;
        return Ok(text);
    }
    std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
}

/// `apply -f` (`delete == false`) or `delete -f`: one kubectl-style line per document, errors
/// on stderr; exit 1 when a document failed.
pub fn objects(state_dir: &Path, args: &FileArgs, delete: bool) -> anyhow::Result<ExitCode> {
    let verb = if delete { "delete" } else { "apply" };
    bins::require_root(verb)?;
    let text = read_file(&args.file)?;
    let state = load(state_dir)?;
    let client = state.require_kube(&format!("`flannel-lab {verb} -f`"))?;
    let outcomes = if delete {
        flannel_lab::apply::delete(&client, &text)
    } else {
        flannel_lab::apply::apply(&client, &text)
    }
    .with_context(|| match args.file.to_str() {
        Some("-") => "stdin".to_string(),
        _ => args.file.display().to_string(),
    })?;
    let mut failed = false;
    for o in &outcomes {
        if o.result.is_ok() {
            out(&format!("{}\n", o.line()));
        } else {
            failed = true;
            eprintln!("flannel-lab: error: {}", o.line());
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub fn probe(state_dir: &Path, args: &ProbeArgs) -> anyhow::Result<ExitCode> {
    bins::require_root("probe")?;
    let state = load(state_dir)?;
    let to_ip = state.pod_record(&args.to)?.ip;
    let timeout = Duration::from_secs_f64(args.timeout);
    let ok = state.probe(&args.from, &args.to, args.target, timeout)?;
    let what = match (args.target.proto, ok) {
        (Proto::Tcp, true) => "connected".to_string(),
        (Proto::Udp, true) => "answered".to_string(),
        (Proto::Tcp, false) => format!("not connected within {}s", args.timeout),
        (Proto::Udp, false) => format!("no answer within {}s", args.timeout),
    };
    out(&format!(
        "{} -> {} {} ({to_ip}): {what}\n",
        args.from, args.to, args.target
    ));
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn matrix(state_dir: &Path, args: &MatrixArgs) -> anyhow::Result<ExitCode> {
    bins::require_root("netpol-matrix")?;
    let state = load(state_dir)?;
    if state.serving_pods().is_empty() {
        anyhow::bail!(
            "the lab has no pods with servers; add some with `flannel-lab pod add NS/NAME --node n1`"
        );
    }
    let r = state.netpol_matrix(
        Duration::from_secs_f64(args.timeout),
        usize::from(args.parallel),
    );
    out(&format!(
        "REACHABILITY (row probes column; . connected, X not, - self)\n\n{}\n{}\n",
        r.pretty(),
        r.summary()
    ));
    Ok(ExitCode::SUCCESS)
}
