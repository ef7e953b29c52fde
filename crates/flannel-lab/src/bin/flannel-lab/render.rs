//! What `up`, `status` and `check` print: plain aligned tables a person reads at a glance.

use std::fmt::Write as _;

use flannel_lab::state::{LabState, NodeStatus, Phase};
use flannel_lab::{Matrix, throughput::Throughput};

/// Marks used in the matrix: Unicode on a UTF-8 locale, ASCII otherwise.
#[derive(Debug, Clone, Copy)]
pub struct Marks {
    ok: &'static str,
    fail: &'static str,
    same: &'static str,
}

impl Marks {
    /// `✓ ✗ ·` or `ok XX -`.
    pub fn new(unicode: bool) -> Marks {
        if unicode {
            Marks {
                ok: "✓",
                fail: "✗",
                same: "·",
            }
        } else {
            Marks {
                ok: "ok",
                fail: "XX",
                same: "-",
            }
        }
    }
}

/// Whether the locale asks for UTF-8 (`LC_ALL`, then `LC_CTYPE`, then `LANG`, as setlocale
/// resolves them).
pub fn utf8_locale() -> bool {
    ["LC_ALL", "LC_CTYPE", "LANG"]
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .find(|v| !v.is_empty())
        .is_some_and(|v| {
            let v = v.to_ascii_lowercase();
            v.contains("utf-8") || v.contains("utf8")
        })
}

/// Left-aligned columns separated by two spaces; the first row is the header.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line += cell;
            } else {
                let pad = widths[c] - cell.chars().count();
                line += cell;
                line += &" ".repeat(pad + 2);
            }
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}

/// The one-paragraph summary above the tables.
pub fn header(state: &LabState) -> String {
    let mut out = String::new();
    let c = &state.net_config;
    let backend = c
        .pointer("/Backend/Type")
        .and_then(|v| v.as_str())
        .unwrap_or("?");
    let mut extras = Vec::new();
    if c.pointer("/Backend/DirectRouting")
        .and_then(|v| v.as_bool())
        == Some(true)
    {
        extras.push("DirectRouting");
    }
    if c.get("EnableNFTables").and_then(|v| v.as_bool()) == Some(true) {
        extras.push("nftables");
    } else {
        extras.push("iptables");
    }
    let network = c.get("Network").and_then(|v| v.as_str()).unwrap_or("?");
    let phase = match state.phase {
        Phase::Running => "running",
        Phase::Starting if state.creator_alive() => "starting",
        Phase::Starting => "INCOMPLETE (its `up` was interrupted; run `flannel-lab down`)",
    };
    let _ = writeln!(
        out,
        "Lab {} ({phase}): {} nodes, {} pods, backend {backend} ({}), network {network}",
        state.stem,
        state.nodes.len(),
        state.pods.len(),
        extras.join(", ")
    );
    if let Some(ep) = &state.endpoint {
        let pid = state
            .processes
            .iter()
            .find(|p| !p.role.starts_with("flanneld"))
            .map(|p| {
                if p.is_running() {
                    format!("pid {}", p.pid)
                } else {
                    format!("pid {} NOT RUNNING", p.pid)
                }
            })
            .unwrap_or_default();
        let _ = writeln!(out, "{}: {ep} ({pid})", state.datastore);
    }
    let _ = writeln!(
        out,
        "state: {}   logs: {}",
        LabState::file(&state.state_dir).display(),
        state.lab_dir.join("logs").display()
    );
    out
}

/// Nodes: subnet, public IP, VTEP MAC, MTU, flanneld.
pub fn nodes(nodes: &[NodeStatus]) -> String {
    let mut rows = vec![
        ["NODE", "PUBLIC IP", "SUBNET", "VTEP MAC", "MTU", "FLANNELD"]
            .map(String::from)
            .to_vec(),
    ];
    for n in nodes {
        rows.push(vec![
            n.name.clone(),
            n.public_ip.to_string(),
            n.subnet.map_or("-".into(), |s| s.to_string()),
            n.vtep_mac.clone().unwrap_or_else(|| "-".into()),
            n.mtu.map_or("-".into(), |m| m.to_string()),
            match (n.flanneld_pid, n.flanneld_running) {
                (Some(pid), true) => format!("running (pid {pid})"),
                (Some(pid), false) => format!("NOT RUNNING (was pid {pid})"),
                (None, _) => "-".into(),
            },
        ]);
    }
    table(&rows)
}

/// Pods: node and address.
pub fn pods(state: &LabState) -> String {
    let mut rows = vec![["POD", "NODE", "IP"].map(String::from).to_vec()];
    for p in &state.pods {
        rows.push(vec![p.id(), p.node.clone(), p.ip.to_string()]);
    }
    table(&rows)
}

/// The reachability matrix, rows pinging columns, with a summary line.
pub fn matrix(m: &Matrix, marks: Marks) -> String {
    let mut out = String::new();
    let pairs = m.pairs();
    let _ = writeln!(
        out,
        "REACHABILITY (ping from row to column): {}/{} pairs{}",
        m.reachable(),
        pairs,
        if pairs == 0 {
            " (a single pod has no pairs)"
        } else if m.is_full() {
            ", full"
        } else {
            ", NOT FULL"
        }
    );
    let mut rows = vec![
        std::iter::once(String::new())
            .chain(m.pods.iter().cloned())
            .collect::<Vec<_>>(),
    ];
    for (i, row) in m.cells.iter().enumerate() {
        let mut r = vec![m.pods[i].clone()];
        for cell in row {
            r.push(
                match cell {
                    None => marks.same,
                    Some(true) => marks.ok,
                    Some(false) => marks.fail,
                }
                .to_string(),
            );
        }
        rows.push(r);
    }
    // Centre marks under their column names.
    let width = m.pods.iter().map(|p| p.chars().count()).max().unwrap_or(1);
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .enumerate()
        .map(|(ri, r)| {
            r.into_iter()
                .enumerate()
                .map(|(ci, c)| {
                    if ri == 0 || ci == 0 {
                        c
                    } else {
                        let len = c.chars().count();
                        let left = width.saturating_sub(len) / 2;
                        format!("{}{c}", " ".repeat(left))
                    }
                })
                .collect()
        })
        .collect();
    out += &table(&rows);
    for (a, b) in m.failures() {
        let _ = writeln!(out, "  {a} cannot reach {b}");
    }
    out
}

/// One measured (or skipped) path.
pub struct PathResult {
    /// What path it is.
    pub path: &'static str,
    /// From and to, with addresses.
    pub between: String,
    /// The measurement, or why there is none.
    pub result: Result<Throughput, String>,
}

/// The iperf3 table, each path also as a ratio to the underlay.
pub fn throughput(results: &[PathResult], secs: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "THROUGHPUT (iperf3, 1 TCP stream, {secs} s per path; ratios matter, not absolutes: client, server and softirq share the CPUs)"
    );
    let underlay = results
        .iter()
        .find(|r| r.path.starts_with("underlay"))
        .and_then(|r| r.result.as_ref().ok())
        .map(|t| t.bits_per_second);
    let mut rows = vec![
        ["PATH", "FROM -> TO", "Gbit/s", "VS UNDERLAY"]
            .map(String::from)
            .to_vec(),
    ];
    for r in results {
        match &r.result {
            Ok(t) => rows.push(vec![
                r.path.to_string(),
                r.between.clone(),
                format!("{:.2}", t.gbits()),
                underlay
                    .filter(|u| *u > 0.0)
                    .map_or("-".into(), |u| format!("{:.2}x", t.bits_per_second / u)),
            ]),
            Err(why) => rows.push(vec![
                r.path.to_string(),
                r.between.clone(),
                "-".into(),
                why.clone(),
            ]),
        }
    }
    out += &table(&rows);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(&[
            vec!["A".into(), "BB".into(), "C".into()],
            vec!["long".into(), "x".into(), "y".into()],
        ]);
        assert_eq!(t, "A     BB  C\nlong  x   y\n");
    }

    #[test]
    fn matrix_shows_every_pair_and_failures() {
        let m = Matrix {
            pods: vec!["n1-p1".into(), "n2-p1".into()],
            cells: vec![vec![None, Some(true)], vec![Some(false), None]],
        };
        let text = matrix(&m, Marks::new(true));
        assert!(text.contains("1/2 pairs, NOT FULL"), "{text}");
        assert!(text.contains("n2-p1 cannot reach n1-p1"), "{text}");
        assert_eq!(text.matches('✓').count(), 1);
        assert_eq!(text.matches('✗').count(), 1);
        let ascii = matrix(&m, Marks::new(false));
        assert!(ascii.is_ascii(), "{ascii}");
        assert!(ascii.contains("XX"));
    }

    #[test]
    fn throughput_ratios_are_against_the_underlay() {
        let t = |g: f64| {
            Ok(Throughput {
                bits_per_second: g * 1e9,
                retransmits: None,
            })
        };
        let text = throughput(
            &[
                PathResult {
                    path: "underlay, node to node",
                    between: "n1 -> n2".into(),
                    result: t(10.0),
                },
                PathResult {
                    path: "pod to pod, cross node",
                    between: "a -> b".into(),
                    result: t(8.0),
                },
                PathResult {
                    path: "pod to pod, same node",
                    between: "-".into(),
                    result: Err("needs 2 pods on a node".into()),
                },
            ],
            10,
        );
        let row = |path: &str| -> Vec<String> {
            let line = text.lines().find(|l| l.starts_with(path)).unwrap();
            line[path.len()..]
                .split_whitespace()
                .map(String::from)
                .collect()
        };
        assert_eq!(
            row("underlay, node to node"),
            ["n1", "->", "n2", "10.00", "1.00x"]
        );
        assert_eq!(
            row("pod to pod, cross node"),
            ["a", "->", "b", "8.00", "0.80x"]
        );
        assert!(text.contains("needs 2 pods on a node"), "{text}");
    }
}
