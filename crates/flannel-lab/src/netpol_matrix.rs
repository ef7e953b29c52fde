//! Reachability truth tables: every server pod probed from every other, per port and protocol,
//! as the Kubernetes e2e NetworkPolicy suite builds them (`flannel-lab netpol-matrix`, and the
//! conformance tests that compare an observed table with the one a policy implies).
//!
//! Tables print as the suite prints them (tab-separated, `.` allowed, `X` denied, header row
//! starting with `-`), except that a pod's row-column crossing with itself is `-`: the suite
//! ignores loopback, and the lab does not probe it.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use crate::probe::{PortProto, SERVED, probe_addr};
use crate::state::{LabState, PodRecord};

/// How many probes `flannel-lab netpol-matrix` runs at once by default: each is a thread that
/// mostly waits (a denied probe waits out its timeout).
pub const DEFAULT_PARALLEL: u16 = 32;

/// A pod as the prober sees it: its name in tables, its namespace and the address probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    /// `NS/NAME`.
    pub id: String,
    /// Its network namespace's path (probes *from* it run there).
    pub netns: PathBuf,
    /// The address probes *to* it use.
    pub ip: IpAddr,
}

/// One port/protocol's table: `cells[from][to]`, `None` on the diagonal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruthTable {
    /// Whether `pods[from]` reached `pods[to]`.
    pub cells: Vec<Vec<Option<bool>>>,
}

/// Reachability of every ordered pod pair for every port/protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reachability {
    /// Pod ids (`NS/NAME`), the rows and columns of every table, in this order.
    pub pods: Vec<String>,
    /// One table per port/protocol, in the order probed.
    pub tables: Vec<(PortProto, TruthTable)>,
}

/// A cell where an observed table differs from the expected one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// Source pod.
    pub from: String,
    /// Destination pod.
    pub to: String,
    /// Port and protocol.
    pub target: PortProto,
    /// What was expected.
    pub expected: bool,
    /// What was observed.
    pub observed: bool,
}

/// The result of [`Reachability::compare`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    /// Cells that agree.
    pub correct: usize,
    /// Cells that differ, in table order.
    pub mismatches: Vec<Mismatch>,
    /// Per port/protocol, `.` where the tables agree and `X` where they differ.
    pub table: Reachability,
}

impl Comparison {
    /// Whether every cell agrees.
    pub fn ok(&self) -> bool {
        self.mismatches.is_empty()
    }

    /// The suite's summary line: `correct:N, incorrect:M, result=BOOL`.
    pub fn summary(&self) -> String {
        format!(
            "correct:{}, incorrect:{}, result={}",
            self.correct,
            self.mismatches.len(),
            self.ok()
        )
    }
}

impl Reachability {
    /// The table `allowed(from, to, target)` describes, for building the expected side.
    pub fn expected(
        pods: &[String],
        targets: &[PortProto],
        allowed: impl Fn(&str, &str, PortProto) -> bool,
    ) -> Reachability {
        let tables = targets
            .iter()
            .map(|t| {
                let cells = pods
                    .iter()
                    .enumerate()
                    .map(|(i, from)| {
                        pods.iter()
                            .enumerate()
                            .map(|(j, to)| (i != j).then(|| allowed(from, to, *t)))
                            .collect()
                    })
                    .collect();
                (*t, TruthTable { cells })
            })
            .collect();
        Reachability {
            pods: pods.to_vec(),
            tables,
        }
    }

    /// The cell `from -> to` on `target` (`None` on the diagonal or for unknown names).
    pub fn get(&self, from: &str, to: &str, target: PortProto) -> Option<bool> {
        let i = self.pods.iter().position(|p| p == from)?;
        let j = self.pods.iter().position(|p| p == to)?;
        let (_, t) = self.tables.iter().find(|(pp, _)| *pp == target)?;
        t.cells.get(i)?.get(j).copied().flatten()
    }

    /// Probed ordered pairs over all tables, and how many of them connected.
    pub fn counts(&self) -> (usize, usize) {
        let cells = self
            .tables
            .iter()
            .flat_map(|(_, t)| t.cells.iter().flatten());
        cells.fold((0, 0), |(n, ok), c| match c {
            Some(true) => (n + 1, ok + 1),
            Some(false) => (n + 1, ok),
            None => (n, ok),
        })
    }

    /// Whether every probed pair connected.
    pub fn is_full(&self) -> bool {
        let (n, ok) = self.counts();
        n == ok
    }

    /// The tables as the e2e suite prints them, each under a `PORT/PROTO:` heading.
    pub fn pretty(&self) -> String {
        let mut out = String::new();
        for (i, (target, table)) in self.tables.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            let _ = writeln!(out, "{target}:");
            let header: Vec<&str> = std::iter::once("-")
                .chain(self.pods.iter().map(String::as_str))
                .collect();
            let _ = writeln!(out, "{}", header.join("\t"));
            for (from, row) in self.pods.iter().zip(&table.cells) {
                let marks = row.iter().map(|c| match c {
                    Some(true) => ".",
                    Some(false) => "X",
                    None => "-",
                });
                let line: Vec<&str> = std::iter::once(from.as_str()).chain(marks).collect();
                let _ = writeln!(out, "{}", line.join("\t"));
            }
        }
        out
    }

    /// A summary line: probes, connected, denied.
    pub fn summary(&self) -> String {
        let (n, ok) = self.counts();
        format!(
            "{} pods, {} port/protocols: {n} probes, {ok} connected, {} not{}",
            self.pods.len(),
            self.tables.len(),
            n - ok,
            if n == ok { " (all allowed)" } else { "" }
        )
    }

    /// Compares this (observed) with `expected`, cell by cell; pods and tables are matched
    /// by name, and a cell missing on one side counts as a mismatch against `false`.
    pub fn compare(&self, expected: &Reachability) -> Comparison {
        let mut correct = 0;
        let mut mismatches = Vec::new();
        let tables = expected
            .tables
            .iter()
            .map(|(target, table)| {
                let cells = expected
                    .pods
                    .iter()
                    .zip(&table.cells)
                    .map(|(from, row)| {
                        expected
                            .pods
                            .iter()
                            .zip(row)
                            .map(|(to, want)| {
                                let want = (*want)?;
                                let got = self.get(from, to, *target).unwrap_or(false);
                                if got == want {
                                    correct += 1;
                                } else {
                                    mismatches.push(Mismatch {
                                        from: from.clone(),
                                        to: to.clone(),
                                        target: *target,
                                        expected: want,
                                        observed: got,
                                    });
                                }
                                Some(got == want)
                            })
                            .collect()
                    })
                    .collect();
                (*target, TruthTable { cells })
            })
            .collect();
        Comparison {
            correct,
            mismatches,
            table: Reachability {
                pods: expected.pods.clone(),
                tables,
            },
        }
    }
}

/// Probes every pod from every other pod on every target, `parallel` probes at a time, each
/// with `timeout`. A probe that cannot run (a namespace gone) counts as not connected.
pub fn matrix(
    pods: &[ProbeTarget],
    targets: &[PortProto],
    timeout: Duration,
    parallel: usize,
) -> Reachability {
    let mut jobs = Vec::new();
    for (t, target) in targets.iter().enumerate() {
        for (i, from) in pods.iter().enumerate() {
            for (j, to) in pods.iter().enumerate() {
                if i != j {
                    jobs.push((t, i, j, from.netns.clone(), to.ip, *target));
                }
            }
        }
    }
    let queue = Mutex::new(jobs);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..parallel.max(1) {
            s.spawn(|| {
                loop {
                    let job = queue.lock().ok().and_then(|mut q| q.pop());
                    let Some((t, i, j, netns, ip, target)) = job else {
                        break;
                    };
                    let ok = probe_addr(&netns, ip, target, timeout).unwrap_or(false);
                    if let Ok(mut r) = results.lock() {
                        r.push((t, i, j, ok));
                    }
                }
            });
        }
    });
    let n = pods.len();
    let mut tables: Vec<(PortProto, TruthTable)> = targets
        .iter()
        .map(|t| {
            (
                *t,
                TruthTable {
                    cells: vec![vec![None; n]; n],
                },
            )
        })
        .collect();
    for (t, i, j, ok) in results.into_inner().unwrap_or_default() {
        tables[t].1.cells[i][j] = Some(ok);
    }
    Reachability {
        pods: pods.iter().map(|p| p.id.clone()).collect(),
        tables,
    }
}

impl LabState {
    /// The pods with servers (`pod add`), as probe targets, in the order they were added.
    pub fn serving_pods(&self) -> Vec<ProbeTarget> {
        self.pods
            .iter()
            .filter(|p| p.serves)
            .map(probe_target)
            .collect()
    }

    /// Probes `to`'s servers on `target` from pod `from` (both `NS/NAME`, or a name in
    /// `default`): whether the TCP connection was accepted or the UDP request answered within
    /// `timeout`. Errors only for unknown pods or a vanished namespace.
    pub fn probe(
        &self,
        from: &str,
        to: &str,
        target: PortProto,
        timeout: Duration,
    ) -> crate::Result<bool> {
        let from = probe_target(self.pod_record(from)?);
        let to = probe_target(self.pod_record(to)?);
        probe_addr(&from.netns, to.ip, target, timeout)
    }

    /// [`matrix`] over [`LabState::serving_pods`] and the served ports (80, 81 × TCP, UDP).
    pub fn netpol_matrix(&self, timeout: Duration, parallel: usize) -> Reachability {
        matrix(&self.serving_pods(), &SERVED, timeout, parallel)
    }
}

fn probe_target(p: &PodRecord) -> ProbeTarget {
    ProbeTarget {
        id: format!("{}/{}", p.namespace, p.name),
        netns: PathBuf::from(crate::NETNS_DIR).join(&p.netns),
        ip: p.ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::Proto;

    fn pods() -> Vec<String> {
        ["x/a", "x/b", "y/a"].map(String::from).to_vec()
    }

    #[test]
    fn expected_tables_print_like_the_e2e_suite() {
        let tcp = PortProto::new(80, Proto::Tcp);
        let r = Reachability::expected(&pods(), &[tcp], |_, to, _| to != "x/b");
        assert_eq!(
            r.pretty(),
            "80/TCP:\n-\tx/a\tx/b\ty/a\nx/a\t-\tX\t.\nx/b\t.\t-\t.\ny/a\t.\tX\t-\n"
        );
        assert_eq!(r.counts(), (6, 4));
        assert!(!r.is_full());
        assert_eq!(r.get("x/a", "y/a", tcp), Some(true));
        assert_eq!(r.get("x/a", "x/a", tcp), None);
    }

    #[test]
    fn comparison_finds_every_differing_cell() {
        let targets = [
            PortProto::new(80, Proto::Tcp),
            PortProto::new(81, Proto::Udp),
        ];
        let want = Reachability::expected(&pods(), &targets, |_, _, _| true);
        let got = Reachability::expected(&pods(), &targets, |from, to, t| {
            !(from == "y/a" && to == "x/a" && t.proto == Proto::Udp)
        });
        let c = got.compare(&want);
        assert!(!c.ok());
        assert_eq!(c.correct, 11);
        assert_eq!(
            c.mismatches,
            vec![Mismatch {
                from: "y/a".into(),
                to: "x/a".into(),
                target: targets[1],
                expected: true,
                observed: false,
            }]
        );
        assert_eq!(c.summary(), "correct:11, incorrect:1, result=false");
        assert!(c.table.pretty().contains("y/a\tX\t.\t-"));
        assert!(want.compare(&want).ok());
    }
}
