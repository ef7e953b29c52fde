//! Table and chain comments read from `nft list table`, for the nft versions whose JSON leaves
//! them out.
//!
//! nft 1.0.6 (Debian 12) prints no `"comment"` for tables and chains in `nft -j` output, while
//! flannel's tables and chains always carry one, and a table that lost its comment must be
//! rebuilt (the kernel cannot set it in place). When the JSON shows no table comment, the text
//! listing is read for the comments alone: the table's `comment "..."` line and the one that opens
//! each chain's body. Everything else still comes from the JSON.

use super::model::Table;

/// The comments found in a text listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Comments {
    /// The table comment.
    pub(crate) table: Option<String>,
    /// `(chain, comment)` for every chain that has one.
    pub(crate) chains: Vec<(String, String)>,
}

impl Comments {
    /// Sets the comments of `table` and its chains to these.
    pub(crate) fn fill(self, table: &mut Table) {
        table.comment = self.table;
        for chain in &mut table.chains {
            chain.comment = self
                .chains
                .iter()
                .find(|(name, _)| *name == chain.name)
                .map(|(_, comment)| comment.clone());
        }
    }
}

/// `{` minus `}` outside double-quoted strings.
fn brace_balance(line: &str) -> i32 {
    let mut quoted = false;
    let mut depth = 0;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            '{' if !quoted => depth += 1,
            '}' if !quoted => depth -= 1,
            _ => {}
        }
    }
    depth
}

/// The text of a `comment "..."` line.
fn comment(line: &str) -> Option<String> {
    let rest = line.strip_prefix("comment ")?.trim();
    Some(rest.trim_matches('"').to_string())
}

/// Reads the comments of `nft list table <family> <name>`; what it does not recognise is skipped.
pub(crate) fn read(text: &str) -> Comments {
    let mut found = Comments::default();
    let mut depth = 0;
    // The chain whose body starts on the next line.
    let mut opened: Option<String> = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(chain) = opened.take()
            && depth == 2
            && let Some(text) = comment(line)
        {
            found.chains.push((chain, text));
        }
        if depth == 1 {
            if let Some(text) = comment(line) {
                found.table = Some(text);
            } else if let Some(name) = line
                .strip_prefix("chain ")
                .and_then(|rest| rest.strip_suffix('{'))
            {
                opened = Some(name.trim().to_string());
            }
        }
        depth += brace_balance(line);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nftables::model::Chain;

    #[test]
    fn reads_table_and_chain_comments() {
        let c = read(include_str!("testdata/listed_v4.nft"));
        assert_eq!(c.table.as_deref(), Some("rules for flannel-ipv4"));
        assert_eq!(
            c.chains,
            [
                (
                    "postrtg".to_string(),
                    "chain to manage traffic masquerading by flannel".to_string()
                ),
                (
                    "forward".to_string(),
                    "chain to accept flannel traffic".to_string()
                ),
            ]
        );
    }

    #[test]
    fn multi_line_objects_and_chains_without_comments_are_skipped() {
        let c = read(include_str!("testdata/foreign.nft"));
        assert_eq!(c.table.as_deref(), Some("rules for flannel-ipv4"));
        assert!(c.chains.is_empty(), "{c:?}");
        // A rule that mentions `comment` is not a chain comment.
        let text =
            "table ip t {\n\tchain a {\n\t\tip saddr 10.0.0.1 accept comment \"x\"\n\t}\n}\n";
        assert_eq!(read(text), Comments::default());
    }

    #[test]
    fn fill_sets_every_comment() {
        let mut table = Table {
            comment: Some("stale".into()),
            chains: vec![
                Chain {
                    name: "a".into(),
                    ..Chain::default()
                },
                Chain {
                    name: "b".into(),
                    comment: Some("stale".into()),
                    ..Chain::default()
                },
            ],
            other_objects: 0,
        };
        Comments {
            table: None,
            chains: vec![("a".into(), "x".into())],
        }
        .fill(&mut table);
        assert_eq!(table.comment, None);
        assert_eq!(table.chains[0].comment.as_deref(), Some("x"));
        assert_eq!(table.chains[1].comment, None);
    }
}
