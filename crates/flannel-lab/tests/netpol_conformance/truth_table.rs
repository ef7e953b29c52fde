//! A square table of booleans over the model's pods, "from" rows by "to" columns, and the
//! upstream-style printout (`.` connected, `X` blocked) that makes a policy failure readable.

use std::fmt::Write as _;

use super::model::PodRef;

/// One value per (from, to) pair; `None` until set (an unobserved probe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruthTable {
    items: Vec<PodRef>,
    cells: Vec<Option<bool>>,
}

impl TruthTable {
    /// A table over `items` with every cell set to `default` (`None`: unset).
    pub fn new(items: Vec<PodRef>, default: Option<bool>) -> TruthTable {
        let n = items.len();
        TruthTable {
            items,
            cells: vec![default; n * n],
        }
    }

    /// The pods, in row and column order.
    pub fn items(&self) -> &[PodRef] {
        &self.items
    }

    fn index(&self, pod: &PodRef) -> usize {
        self.items
            .iter()
            .position(|p| p == pod)
            .unwrap_or_else(|| panic!("{pod} is not in the table {:?}", self.items))
    }

    /// Sets one cell.
    pub fn set(&mut self, from: &PodRef, to: &PodRef, value: bool) {
        let n = self.items.len();
        let (f, t) = (self.index(from), self.index(to));
        self.cells[f * n + t] = Some(value);
    }

    /// One cell; `None` when never set.
    pub fn get(&self, from: &PodRef, to: &PodRef) -> Option<bool> {
        let n = self.items.len();
        self.cells[self.index(from) * n + self.index(to)]
    }

    /// Sets the whole row of `from` (everything it sends).
    pub fn set_all_from(&mut self, from: &PodRef, value: bool) {
        for to in self.items.clone() {
            self.set(from, &to, value);
        }
    }

    /// Sets the whole column of `to` (everything it receives).
    pub fn set_all_to(&mut self, to: &PodRef, value: bool) {
        for from in self.items.clone() {
            self.set(&from, to, value);
        }
    }

    /// Every (from, to) pair in row-major order.
    pub fn pairs(&self) -> Vec<(PodRef, PodRef)> {
        let mut out = Vec::with_capacity(self.cells.len());
        for f in &self.items {
            for t in &self.items {
                out.push((f.clone(), t.clone()));
            }
        }
        out
    }

    /// Renders the table the way upstream's truth tables print: a header row of pods, then one
    /// row per "from" pod, cells separated by tabs; `cell` picks each cell's mark.
    fn render(&self, cell: impl Fn(&PodRef, &PodRef) -> &'static str) -> String {
        let mut s = String::from("-");
        for t in &self.items {
            let _ = write!(s, "\t{t}");
        }
        s.push('\n');
        for f in &self.items {
            let _ = write!(s, "{f}");
            for t in &self.items {
                let _ = write!(s, "\t{}", cell(f, t));
            }
            s.push('\n');
        }
        s
    }

    /// `.` for connected, `X` for blocked, `?` for unset.
    pub fn pretty(&self) -> String {
        self.render(|f, t| match self.get(f, t) {
            Some(true) => ".",
            Some(false) => "X",
            None => "?",
        })
    }
}

/// The cell-by-cell comparison of an expected and an observed table.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// Pairs whose observation matched.
    pub correct: usize,
    /// Pairs whose observation did not match (or was missing), self pairs excepted when ignored.
    pub wrong: Vec<(PodRef, PodRef, bool, Option<bool>)>,
    /// Self pairs left out of the verdict (upstream's `ignoreLoopback`).
    pub ignored: usize,
    table: String,
}

impl Comparison {
    /// Upstream's comparison table: `.` matched, `X` differs, `-` ignored self pair.
    pub fn pretty(&self) -> String {
        self.table.clone()
    }
}

/// Compares `observed` against `expected`. With `ignore_loopback`, self pairs do not count:
/// upstream does the same because policy semantics for a pod talking to itself are undefined.
pub fn compare(expected: &TruthTable, observed: &TruthTable, ignore_loopback: bool) -> Comparison {
    assert_eq!(
        expected.items, observed.items,
        "expected and observed tables cover different pods"
    );
    let mut correct = 0;
    let mut ignored = 0;
    let mut wrong = Vec::new();
    for (f, t) in expected.pairs() {
        if ignore_loopback && f == t {
            ignored += 1;
            continue;
        }
        let want = expected
            .get(&f, &t)
            .expect("expected tables are complete (built from a default)");
        let got = observed.get(&f, &t);
        if got == Some(want) {
            correct += 1;
        } else {
            wrong.push((f, t, want, got));
        }
    }
    let table = expected.render(|f, t| {
        if ignore_loopback && f == t {
            "-"
        } else if wrong.iter().any(|(wf, wt, _, _)| wf == f && wt == t) {
            "X"
        } else {
            "."
        }
    });
    Comparison {
        correct,
        wrong,
        ignored,
        table,
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::{Model, pod};
    use super::*;

    fn table(default: Option<bool>) -> TruthTable {
        TruthTable::new(Model::standard().all_pods(), default)
    }

    #[test]
    fn rows_and_columns_are_set_independently() {
        let mut t = table(Some(true));
        t.set_all_to(&pod("x/a"), false);
        t.set(&pod("x/b"), &pod("x/a"), true);
        t.set_all_from(&pod("z/c"), false);
        assert_eq!(t.get(&pod("y/a"), &pod("x/a")), Some(false));
        assert_eq!(t.get(&pod("x/b"), &pod("x/a")), Some(true));
        assert_eq!(t.get(&pod("x/a"), &pod("y/a")), Some(true));
        assert_eq!(t.get(&pod("z/c"), &pod("x/b")), Some(false));
        assert_eq!(t.get(&pod("z/b"), &pod("z/c")), Some(true));
    }

    #[test]
    fn pretty_prints_upstream_layout() {
        let mut t = table(Some(true));
        t.set_all_to(&pod("x/a"), false);
        let text = t.pretty();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 10);
        assert_eq!(lines[0], "-\tx/a\tx/b\tx/c\ty/a\ty/b\ty/c\tz/a\tz/b\tz/c");
        assert_eq!(lines[4], "y/a\tX\t.\t.\t.\t.\t.\t.\t.\t.");
        assert!(table(None).pretty().contains("?\t?"));
    }

    #[test]
    fn comparison_counts_and_marks_differences_and_ignores_loopback() {
        let mut expected = table(Some(true));
        expected.set_all_to(&pod("x/a"), false);
        let mut observed = expected.clone();
        // A self pair that differs is ignored; one real difference and one missing cell count.
        observed.set(&pod("x/a"), &pod("x/a"), true);
        observed.set(&pod("y/b"), &pod("x/a"), true);
        observed.cells[1] = None; // x/a -> x/b unobserved
        let c = compare(&expected, &observed, true);
        assert_eq!(c.ignored, 9);
        assert_eq!(c.correct, 72 - 2);
        assert_eq!(c.wrong.len(), 2);
        assert!(
            c.wrong
                .contains(&(pod("y/b"), pod("x/a"), false, Some(true)))
        );
        assert!(c.wrong.contains(&(pod("x/a"), pod("x/b"), true, None)));
        let lines: Vec<String> = c.pretty().lines().map(String::from).collect();
        assert_eq!(lines[1], "x/a\t-\tX\t.\t.\t.\t.\t.\t.\t.");
        assert_eq!(lines[5], "y/b\tX\t.\t.\t.\t-\t.\t.\t.\t.");
        // Without ignoring loopback the self pair counts as wrong too.
        assert_eq!(compare(&expected, &observed, false).wrong.len(), 3);
    }
}
