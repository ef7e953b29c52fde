//! Label selectors (`metav1.LabelSelector`) as NetworkPolicy uses them.
//!
//! A selector is `matchLabels` AND every `matchExpressions` requirement (`In`, `NotIn`,
//! `Exists`, `DoesNotExist`). An empty selector matches everything, which is how
//! `podSelector: {}` selects every pod of a namespace and `namespaceSelector: {}` every
//! namespace. A selector the API server would refuse (unknown operator, `In` without values,
//! `Exists` with values) becomes a [`SelectorError`] value, never a panic: the caller decides
//! how to fail closed.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// One `matchExpressions` operator with its values.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Requirement {
    /// The label is present and its value is one of these.
    In(BTreeSet<String>),
    /// The label is absent, or present with none of these values.
    NotIn(BTreeSet<String>),
    /// The label is present (any value).
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// A validated label selector.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    /// `matchLabels`: every key must carry exactly this value.
    pub labels: BTreeMap<String, String>,
    /// `matchExpressions` by key, all of which must hold.
    pub expressions: Vec<(String, Requirement)>,
}

/// Why a selector was refused: names the expression and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The operator is not one of In, NotIn, Exists, DoesNotExist.
    #[error("matchExpressions[{index}].operator: {operator:?} is not a valid selector operator")]
    UnknownOperator {
        /// Position in `matchExpressions`.
        index: usize,
        /// The operator given.
        operator: String,
    },
    /// `In`/`NotIn` need at least one value.
    #[error("matchExpressions[{index}].values: must be non-empty for operator {operator}")]
    MissingValues {
        /// Position in `matchExpressions`.
        index: usize,
        /// `In` or `NotIn`.
        operator: &'static str,
    },
    /// `Exists`/`DoesNotExist` take no values.
    #[error("matchExpressions[{index}].values: must be empty for operator {operator}")]
    UnexpectedValues {
        /// Position in `matchExpressions`.
        index: usize,
        /// `Exists` or `DoesNotExist`.
        operator: &'static str,
    },
}

impl Selector {
    /// The selector that matches every label set (`{}`).
    pub fn everything() -> Selector {
        Selector::default()
    }

    /// Validates an API selector.
    pub fn from_api(api: &LabelSelector) -> Result<Selector, SelectorError> {
        let mut expressions = Vec::new();
        for (index, e) in api.match_expressions.iter().flatten().enumerate() {
            let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
            let requirement = match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(SelectorError::MissingValues {
                        index,
                        operator: if e.operator == "In" { "In" } else { "NotIn" },
                    });
                }
                "In" => Requirement::In(values),
                "NotIn" => Requirement::NotIn(values),
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(SelectorError::UnexpectedValues {
                        index,
                        operator: if e.operator == "Exists" {
                            "Exists"
                        } else {
                            "DoesNotExist"
                        },
                    });
                }
                "Exists" => Requirement::Exists,
                "DoesNotExist" => Requirement::DoesNotExist,
                other => {
                    return Err(SelectorError::UnknownOperator {
                        index,
                        operator: other.to_string(),
                    });
                }
            };
            expressions.push((e.key.clone(), requirement));
        }
        Ok(Selector {
            labels: api.match_labels.clone().unwrap_or_default(),
            expressions,
        })
    }

    /// Whether a label set satisfies every part of the selector.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self
                .expressions
                .iter()
                .all(|(key, req)| match (req, labels.get(key)) {
                    (Requirement::In(values), Some(v)) => values.contains(v),
                    (Requirement::In(_), None) => false,
                    (Requirement::NotIn(values), Some(v)) => !values.contains(v),
                    (Requirement::NotIn(_), None) => true,
                    (Requirement::Exists, found) => found.is_some(),
                    (Requirement::DoesNotExist, found) => found.is_none(),
                })
    }

    /// True for `{}`, which matches everything.
    pub fn is_everything(&self) -> bool {
        self.labels.is_empty() && self.expressions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: if values.is_empty() {
                None
            } else {
                Some(values.iter().map(|s| s.to_string()).collect())
            },
        }
    }

    fn sel(match_labels: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_labels: Some(labels(match_labels)),
            match_expressions: Some(exprs),
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s = Selector::from_api(&LabelSelector::default()).unwrap();
        assert!(s.is_everything());
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let s = Selector::from_api(&sel(
            &[("app", "web")],
            vec![
                expr("tier", "In", &["front", "edge"]),
                expr("env", "NotIn", &["prod"]),
                expr("team", "Exists", &[]),
                expr("legacy", "DoesNotExist", &[]),
            ],
        ))
        .unwrap();
        let ok = labels(&[("app", "web"), ("tier", "edge"), ("team", "x")]);
        assert!(s.matches(&ok));
        let mut l = ok.clone();
        l.insert("env".into(), "dev".into());
        assert!(s.matches(&l), "NotIn with another value matches");
        l.insert("env".into(), "prod".into());
        assert!(!s.matches(&l), "NotIn value excluded");
        let mut l = ok.clone();
        l.insert("legacy".into(), "".into());
        assert!(!s.matches(&l), "DoesNotExist fails when present");
        let mut l = ok.clone();
        l.remove("team");
        assert!(!s.matches(&l), "Exists fails when absent");
        let mut l = ok.clone();
        l.insert("tier".into(), "back".into());
        assert!(!s.matches(&l), "In fails on other value");
        l.remove("tier");
        assert!(!s.matches(&l), "In fails when absent");
        let mut l = ok;
        l.insert("app".into(), "db".into());
        assert!(!s.matches(&l), "matchLabels value differs");
    }

    #[test]
    fn invalid_selectors_are_errors_naming_the_expression() {
        let e = Selector::from_api(&sel(
            &[],
            vec![expr("a", "Exists", &[]), expr("b", "Gt", &["1"])],
        ))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "matchExpressions[1].operator: \"Gt\" is not a valid selector operator"
        );
        let e = Selector::from_api(&sel(&[], vec![expr("a", "In", &[])])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "matchExpressions[0].values: must be non-empty for operator In"
        );
        let e = Selector::from_api(&sel(&[], vec![expr("a", "DoesNotExist", &["x"])])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "matchExpressions[0].values: must be empty for operator DoesNotExist"
        );
    }
}
